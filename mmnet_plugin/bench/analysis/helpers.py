"""Constants and small helpers of the analyses: atomic writes, seeds, keys, formatting,
argument types, and the record of a trained model."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from mmnet_plugin.episodes import IntOrRange

from ..files import atomic_write_bytes, atomic_write_text

PARTS = ("strategy", "dr", "tsne", "similarity", "ablations")
PIPELINE_CHECK_EPISODES = 1000  # below this many training episodes per model, the report says "not evidence"
PAPER_SCHEDULE_EPISODES = 20000 * 16  # the paper halves the learning rate every 20,000 steps of 16 episodes
ABLATION_GROUPS = ("components", "query_branch", "memory_slots", "decision", "similarity_scale", "filter_init_scale")
FORMAT = "mmnet-plugin/analysis/1"
Setting = Tuple[int, int]


# ---------------------------------------------------------------------------- small helpers
# the harness's atomic writes (temporary file in the same folder, fsync, os.replace)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Save a matplotlib figure as PNG atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def png_size(path: Path) -> Tuple[int, int]:
    """``(width, height)`` of a PNG file from its IHDR chunk.

    Raises:
        ValueError: if the file is not a PNG.
    """
    data = Path(path).read_bytes()[:33]
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def seed_for(seed: int, role: str, *parts: int) -> int:
    """A seed derived from ``seed``, a role name and integers (stable across runs)."""
    text = f"{seed}|{role}|" + "|".join(str(int(p)) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def config_key(config: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def percent(r: Dict[str, Any]) -> str:
    return f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}"


def intervals_overlap(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Whether the two 95% intervals overlap."""
    return abs(a["accuracy"] - b["accuracy"]) <= a["ci95"] + b["ci95"]


def row_standardised_contrast(sim: np.ndarray, same: np.ndarray) -> Tuple[float, float]:
    """Mean same-class and other-class similarity after standardising each query's row.

    A nearest-item decision compares similarities within a query's row only, so each row is
    set to mean 0 and standard deviation 1 first: the result is free of the model's scale and
    of each query's norm, and comparable across models.

    Args:
        sim: ``[n_query, n_support]`` similarities.
        same: boolean mask of the same shape, true where query and support share a class.

    Returns:
        ``(mean over same-class entries, mean over other-class entries)``.
    """
    z = (sim - sim.mean(axis=1, keepdims=True)) / (sim.std(axis=1, keepdims=True) + 1e-12)
    return float(z[same].mean()), float(z[~same].mean())


def setting_name(ways: IntOrRange, shots: IntOrRange) -> str:
    def f(v: IntOrRange) -> str:
        return str(v) if isinstance(v, int) else f"{v[0]}-{v[1]}"

    return f"{f(ways)}w{f(shots)}s"


def int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def one_setting(text: str) -> Setting:
    from mmnet_plugin.arguments import settings_arg

    settings = settings_arg(text)
    if len(settings) != 1:
        raise argparse.ArgumentTypeError(f"expected one setting such as 20w1s, got {text!r}")
    return settings[0]


def subset_of(choices: Sequence[str], what: str) -> Callable[[str], List[str]]:
    """An argparse type: a comma-separated, non-empty subset of ``choices``."""

    def parse(text: str) -> List[str]:
        picked = [p.strip() for p in text.split(",") if p.strip()]
        bad = [p for p in picked if p not in choices]
        if bad or not picked:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {bad or text!r}; choose from {', '.join(choices)}")
        return picked

    return parse


parts_arg = subset_of(PARTS, "part")


@dataclass
class TrainedModel:
    """A trained model of the analysis and its record."""

    name: str
    model: torch.nn.Module
    record: Dict[str, Any]
    predictor: Callable[..., torch.Tensor]
    kind: str = "mmnet"
