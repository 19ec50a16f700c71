"""Files the harness writes and reads: atomic writes (a reader or an interrupted run never
sees a half-written file) and checkpoints loaded with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from mmnet_plugin.training import CheckpointError as _PackageCheckpointError

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
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and ``os.replace``, so a reader
    (or an interrupted run) never sees a half-written file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Union[str, Path], obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON (NaN written as ``null``)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class CheckpointError(_PackageCheckpointError, ValueError):
    """A checkpoint file cannot be used: unreadable, truncated, or holding more than
    tensors and plain containers (which ``weights_only=True`` refuses to unpickle).
    The package's :class:`mmnet_plugin.training.CheckpointError` and a ``ValueError``
    both catch it."""


def safe_torch_load(path: Union[str, Path], map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and plain
    containers only, so a planted or tampered file cannot run code when it is loaded.

    Args:
        path: the checkpoint file.
        map_location: as for ``torch.load``.

    Returns:
        The loaded object.

    Raises:
        CheckpointError: (a ``ValueError``) naming the file and why it was refused.
    """
    import pickle

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain containers, "
            f"which torch.load(weights_only=True) does not unpickle ({first[:160]}); delete it or let "
            "the run retrain"
        ) from None
    except Exception as exc:  # truncated, not a torch file, unreadable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path} is unusable ({type(exc).__name__}: {first[:160]})") from None


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
