"""Files the harness writes and reads, through :mod:`mmnet_plugin.checkpoints`: atomic writes
(a reader or an interrupted run never sees a half-written file) of text, JSON and bytes, and
checkpoints loaded with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import numpy as np

from mmnet_plugin.checkpoints import CheckpointError, atomic_write, load, save

__all__ = [
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_bytes",
    "atomic_torch_save",
    "CheckpointError",
    "safe_torch_load",
    "jsonable",
]


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`mmnet_plugin.checkpoints.atomic_write`."""
    atomic_write(path, text)


def atomic_write_json(path: Union[str, Path], obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON (NaN written as ``null``)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` with :func:`mmnet_plugin.checkpoints.atomic_write`."""
    atomic_write(path, data)


#: ``torch.save`` through the atomic writer (kept under its old name).
atomic_torch_save = save


def safe_torch_load(path: Union[str, Path], map_location: Any = None) -> Any:
    """:func:`mmnet_plugin.checkpoints.load`: ``torch.load(path, weights_only=True)`` with
    one-line errors (a :class:`CheckpointError`, also a ``ValueError``, naming the file)."""
    return load(path, map_location=map_location)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


jsonable = _jsonable
