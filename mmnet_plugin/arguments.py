"""The argument module shared by the ``mmnet`` command and ``benchmarks/run.py``.

One syntax for ranges (``--ways 2-20 --shots 1-5``) and settings (``5w1s,20w5s``), and the
options both command lines take: ``--dataset``, ``--data-root``, ``--queries``, ``--seed``,
``--device``.
"""

from __future__ import annotations

import argparse
import re
from typing import List, Tuple

import torch

from .data import DATASETS
from .episodes import IntOrRange, parse_range

__all__ = [
    "add_common_arguments",
    "range_arg",
    "ways_arg",
    "positive_int",
    "non_negative_int",
    "parse_settings",
    "settings_arg",
    "resolve_device",
    "format_setting",
]

_SETTING = re.compile(r"^\s*(\d+)\s*w\s*(\d+)\s*s\s*$", re.IGNORECASE)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a number of at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _int_at_least(text, 0)


#: The seeds every sampler accepts: numpy's generators take any non-negative integer, but
#: the harness hashes seeds as signed 64-bit numbers, so larger ones would alias smaller ones.
SEED_MAX = 2**63 - 1


def seed_arg(text: str) -> int:
    """argparse type: a seed in ``0 .. 2**63-1``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if not 0 <= value <= SEED_MAX:
        shown = str(value) if len(str(value)) <= 40 else str(value)[:30] + "..."
        raise argparse.ArgumentTypeError(f"a seed must be between 0 and 2**63-1 = {SEED_MAX}, got {shown}")
    return value


def dist_timeout_arg(text: str) -> float:
    """argparse type: seconds to wait for torchrun peers, a finite number above 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text[:40]!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text[:40]!r}")
    return value


def range_arg(text: str) -> IntOrRange:
    """argparse type: ``5`` or an inclusive range ``2-20``."""
    try:
        return parse_range(text, "value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ways_arg(text: str) -> IntOrRange:
    """argparse type: a number of ways ``5`` or a range ``2-20``, at least 2.

    A 1-way episode has nothing to tell apart (its loss is 0 and it trains nothing), so ``1``
    and ranges starting at 1 are refused.
    """
    value = range_arg(text)
    low = value if isinstance(value, int) else value[0]
    if low < 2:
        raise argparse.ArgumentTypeError(
            f"ways must be at least 2, got {text!r}: a 1-way episode has nothing to tell apart "
            "(loss 0, nothing learned); use e.g. 5 or 2-20"
        )
    return value


def parse_settings(text: str) -> List[Tuple[int, int]]:
    """Parse ``"5w1s,20w5s"`` into ``[(5, 1), (20, 5)]``.

    Raises:
        ValueError: for a malformed item, naming it and the expected form.
    """
    out: List[Tuple[int, int]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        m = _SETTING.match(item)
        if not m:
            raise ValueError(f"setting {item.strip()!r} is not of the form <ways>w<shots>s, e.g. 5w1s or 20w5s")
        ways, shots = int(m.group(1)), int(m.group(2))
        if ways < 2 or shots < 1:
            raise ValueError(f"setting {item.strip()!r} needs at least 2 ways and 1 shot")
        if (ways, shots) not in out:
            out.append((ways, shots))
    if not out:
        raise ValueError("no settings given; use e.g. --settings 5w1s,5w5s")
    return out


def settings_arg(text: str) -> List[Tuple[int, int]]:
    """argparse type for :func:`parse_settings`."""
    try:
        return parse_settings(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_setting(ways: int, shots: int) -> str:
    """``(5, 1) -> "5w1s"``."""
    return f"{ways}w{shots}s"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else must exist.

    Raises:
        ValueError: when the device is unknown or CUDA is asked for but absent.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
    return device


def add_common_arguments(parser: argparse.ArgumentParser, default_queries: int = 15) -> argparse.ArgumentParser:
    """Add ``--dataset --data-root --queries --seed --device --dist-timeout`` to ``parser``."""
    parser.add_argument(
        "--dataset", choices=DATASETS, default="glyphs", help="data set (default: glyphs, embedded, needs no files)"
    )
    parser.add_argument(
        "--data-root", default=None, help="folder holding omniglot/ and miniimagenet/ (default: $MMNET_DATA_ROOT)"
    )
    parser.add_argument(
        "--queries",
        type=positive_int,
        default=default_queries,
        help=f"query images per class (default {default_queries})",
    )
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of every sampler, 0 to 2**63-1 (default 0)")
    parser.add_argument(
        "--layout",
        choices=("csv", "pickle", "hdf5"),
        default=None,
        help="miniImageNet's files: csv (Ravi csv + images/), pickle (learn2learn's "
        "mini-imagenet-cache-*.pkl) or hdf5 (torchmeta's *_data.hdf5); default: the first present, in that order",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--dist-timeout",
        type=dist_timeout_arg,
        default=60.0,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for a missing or silent peer before it stops "
        "with an error (default 60)",
    )
    return parser
