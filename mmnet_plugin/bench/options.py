"""The harness's options: the command-line parser, the presets (the bare command, ``--paper``)
and the defaults filled in from them. Config files (:mod:`.config`) name the same options."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from mmnet_plugin.arguments import (
    add_common_arguments,
    format_setting,
    non_negative_int,
    positive_int,
    range_arg,
    settings_arg,
)

from .config import packaged_config_names
from .methods import METHODS, resolve_method
from .published import PUBLISHED_SETTINGS
from .recipes import DEFAULT_MIN_STEPS

__all__ = [
    "HARNESS_VERSION",
    "FORMAT",
    "DEFAULT_METHODS",
    "BARE",
    "VAL_POINTS",
    "VAL_EPISODES",
    "paper_preset",
    "build_parser",
    "resolve_options",
    "check_output",
    "default_output",
    "positive_float",
]

HARNESS_VERSION = 2
FORMAT = "mmnet-plugin/benchmark/2"

#: the methods a bare command runs (mmnet-mixed is opt-in: at the bare budget its 2-20-way
#: training episodes would take as long as the other four methods together)
DEFAULT_METHODS = ("mmnet", "maml", "protonet", "matchingnet")

#: the bare command's budget (measured to fit about 3 minutes on 2 CPU cores: see README)
BARE = {"settings": [(5, 1)], "train_episodes": 160, "test_episodes": 600, "train_split": "train"}

#: validation defaults on real data (glyphs and --paper: none)
VAL_POINTS = 8
VAL_EPISODES = 100


def paper_preset(dataset: str) -> Dict[str, Any]:
    """``--paper``: the paper's settings and 500 test episodes (section 4.2), trained on
    train + validation classes with a stated budget (no validation: its classes are trained
    on). The paper gives no total number of iterations, so the budget is ours: 640,000
    episodes on Omniglot/glyphs (MM-Net: 40,000 steps of 16, two learning-rate halvings;
    MAML: 20,000 meta-steps of 32) and 160,000 on miniImageNet (MM-Net: 40,000 steps of 4)."""
    settings = PUBLISHED_SETTINGS["miniimagenet" if dataset == "miniimagenet" else "omniglot"]
    return {
        "settings": list(settings),
        "test_episodes": 500,
        "train_split": "trainval",
        "train_episodes": 160_000 if dataset == "miniimagenet" else 640_000,
    }


# ====================================================================== arguments
class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _methods_arg(text: str) -> List[str]:
    specs = [t.strip() for t in text.split(",") if t.strip()]
    if not specs:
        raise argparse.ArgumentTypeError("no methods given; e.g. --methods mmnet,maml")
    names = []
    for spec in specs:
        try:
            names.append(resolve_method(spec))  # a built-in name, module:Class or an entry point
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return list(dict.fromkeys(names))


#: The most validation points a run takes (each scores the val episodes once).
MAX_VAL_POINTS = 10_000


def _val_points(text: str) -> int:
    value = non_negative_int(text)
    if value > MAX_VAL_POINTS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_VAL_POINTS:,} validation points (each scores the val episodes), got {value:,}; "
            "use --val-every N to validate every N steps"
        )
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}; e.g. 120")
    return value


def build_parser(prog: str = "mmnet bench") -> argparse.ArgumentParser:
    """The harness's argument parser (shares ``--dataset --data-root --queries --seed
    --device`` with the ``mmnet`` command).

    Args:
        prog: the command's name in messages (``benchmarks/run.py`` from the wrapper).

    Returns:
        The parser.
    """
    p = _OneLineParser(
        prog=prog,
        description="Train and test MM-Net, MAML, ProtoNet and Matching Networks on the same episodes.",
    )
    add_common_arguments(p)
    p.add_argument(
        "--methods",
        type=_methods_arg,
        default=list(DEFAULT_METHODS),
        help=f"comma-separated, from: {', '.join(METHODS)}, or your own as module:Class or an entry point "
        f"of the group mmnet_plugin.methods (default {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--settings",
        type=settings_arg,
        default=None,
        help=f"C-way k-shot settings, e.g. 5w1s,20w5s (default {format_setting(*BARE['settings'][0])})",
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="training recipe: NAME for every method and/or METHOD=NAME items, e.g. "
        "'published' or 'published,maml=harness' (default: published on real data, harness on "
        "glyphs; see mmnet_plugin/bench/recipes.py)",
    )
    p.add_argument(
        "--train-episodes",
        type=positive_int,
        default=None,
        help=f"training episodes per method and setting, the same for every method "
        f"(default {BARE['train_episodes']}; with --budget-seconds: a cap, default none)",
    )
    p.add_argument(
        "--budget-seconds",
        type=positive_float,
        default=None,
        help="equal compute: every method trains this many seconds per setting on the same device "
        "(validation and testing not counted); steps, episodes and seconds used are recorded",
    )
    p.add_argument(
        "--min-steps",
        type=non_negative_int,
        default=DEFAULT_MIN_STEPS,
        help=f"budget rule for every method (published recipes, --budget-seconds): batches shrink so "
        f"the budget gives at least this many optimiser steps (default {DEFAULT_MIN_STEPS}; 0: off)",
    )
    p.add_argument(
        "--protonet-train-ways",
        type=positive_int,
        default=None,
        help="ProtoNet's training way under the published recipe (Snell et al.: 60 on Omniglot; "
        "default: the setting's way, on the shared stream)",
    )
    p.add_argument(
        "--val-points",
        type=_val_points,
        default=None,
        help=f"validate on the val split at this many evenly spaced points of the budget and test the "
        f"best-on-val weights (default {VAL_POINTS} on real data, 0 on glyphs and with --paper)",
    )
    p.add_argument(
        "--val-every",
        type=non_negative_int,
        default=None,
        help="validate every N optimiser steps instead (and at the end)",
    )
    p.add_argument(
        "--val-episodes",
        type=positive_int,
        default=VAL_EPISODES,
        help=f"val episodes per validation (default {VAL_EPISODES}); the same episodes every time",
    )
    p.add_argument(
        "--test-episodes",
        type=positive_int,
        default=None,
        help=f"test episodes per setting (default {BARE['test_episodes']})",
    )
    p.add_argument(
        "--train-split", default=None, help="training split: train (default), or trainval without validation (--paper)"
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's settings, 500 test episodes, train+val classes and a stated budget "
        "(640,000 training episodes on Omniglot, 160,000 on miniImageNet); explicit options win",
    )
    p.add_argument(
        "--mixed-ways",
        type=range_arg,
        default=None,
        help="C range of mmnet-mixed's training episodes (default 2-20; miniImageNet 2-5; widened to cover --settings)",
    )
    p.add_argument(
        "--mixed-shots",
        type=range_arg,
        default=None,
        help="k range of mmnet-mixed's training episodes (default 1-5, widened to cover --settings)",
    )
    p.add_argument(
        "--output",
        default=None,
        help="results folder; rerunning into it resumes (default runs/benchmark-<dataset> in the current folder)",
    )
    p.add_argument(
        "--reuse-stale",
        action="store_true",
        help="reuse finished results made by other code (same configuration); they are marked",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core); 1 is much faster "
        "on a machine that other jobs keep busy",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="also write TensorBoard curves under DIR/<setting>/<method>: training loss and val "
        "accuracy against optimiser steps, and the test accuracy (needs tensorboard: "
        'pip install "mmnet-plugin[bench]")',
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="run options from a YAML, JSON or TOML file (keys: the long option names, dashes or "
        "underscores), or the name of a packaged config ("
        + ", ".join(packaged_config_names())
        + "); options given on the command line win",
    )
    return p


def resolve_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Fill what the user left out from the preset (``--paper``) or the bare defaults."""
    preset = paper_preset(args.dataset) if args.paper else BARE
    out: Dict[str, Any] = {}
    for key in ("settings", "train_episodes", "test_episodes", "train_split"):
        v = getattr(args, key)
        out[key] = preset[key] if v is None else v
    if args.budget_seconds is not None and args.train_episodes is None:
        out["train_episodes"] = None  # seconds decide; no episode cap
    if args.val_every is not None:
        out["val_every"], out["val_points"] = args.val_every, 0
    else:
        default_points = 0 if (args.dataset == "glyphs" or args.paper) else VAL_POINTS
        out["val_every"] = 0
        out["val_points"] = default_points if args.val_points is None else args.val_points
    out["validate"] = bool(out["val_every"] or out["val_points"])
    return out


def default_output(dataset: str) -> Path:
    """``runs/benchmark-<dataset>``, relative to the current folder (no checkout assumed)."""
    return Path("runs") / f"benchmark-{dataset}"


def check_output(output: Path) -> Optional[str]:
    """``None`` when ``output`` can be created and written, else a one-line reason."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=str(output))
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return (
            f"--output {output} is not writable ({exc.strerror or type(exc).__name__}); "
            "choose a folder you can write to"
        )
    return None
