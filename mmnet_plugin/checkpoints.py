"""Files this package writes and reads back: one atomic writer, one safe loader, one error.

- :func:`atomic_write` creates a file so that no reader, and no interrupted run, ever sees it
  half-written: the content goes to a temporary file in the same folder, is flushed to disk
  (``fsync``) and moved into place with :func:`os.replace`. Checkpoints, data caches and the
  harness's result files all go through it.
- :func:`load` reads a ``torch.save`` file with ``torch.load(weights_only=True)``: tensors,
  numbers, strings and plain containers only, so a planted or tampered file cannot run code.
  It needs a torch whose safe loader has no known bypass (2.6 or later, CVE-2025-32434).
- :func:`load_checkpoint` is :func:`load` for a training checkpoint (a dict with a ``model``
  entry); :func:`model_weights` finds the model's weights in any checkpoint this package
  writes (``mmnet train``, :class:`~mmnet_plugin.Trainer`, the harness).
- :class:`CheckpointError` is what all of them raise: one line that names the file and what to
  do. It is both a ``RuntimeError`` and a ``ValueError``, so code written against either of the
  two classes it replaces keeps catching it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Union

import torch

__all__ = [
    "CheckpointError",
    "atomic_write",
    "save",
    "load",
    "load_checkpoint",
    "model_weights",
    "check_finite",
    "shorten",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The longest value an error message echoes (longer ones are cut, with their length stated).
ECHO_LIMIT = 160

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint file is missing, truncated, corrupt, unsafe, not ours, or from another
    configuration. The message is one line that names the file."""


def shorten(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``value`` as one readable line for an error message: colour codes and line breaks
    removed, cut to ``limit`` characters (saying how long it was)."""
    text = _ANSI.sub("", value if isinstance(value, str) else repr(value))
    text = " ".join(text.split())
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters)"
    return text


def atomic_write(path: PathLike, content: Union[bytes, str, Callable[[Path], None]]) -> Path:
    """Create ``path`` atomically (a temporary file beside it, ``fsync``, :func:`os.replace`).

    Args:
        path: the final file; its folder is created if needed.
        content: the bytes, or text (written as UTF-8), or a function that is given the
            temporary file's path and writes the whole file there.

    Returns:
        ``path``.

    Raises:
        OSError: if the folder cannot be created or written; the temporary file is removed
            and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            fd = -1
            content(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        else:
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, buf.getvalue())


def _wants_cuda(map_location: Any) -> bool:
    if isinstance(map_location, torch.device):
        return map_location.type == "cuda"
    if isinstance(map_location, str):
        return map_location.split(":")[0] == "cuda"
    if isinstance(map_location, Mapping):
        return any(_wants_cuda(v) for v in map_location.values())
    return False


def load(path: PathLike, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Args:
        path: the file.
        map_location: as for ``torch.load`` (``"cpu"``, ``"cuda"``, a device, ...).
        what: what the file is, for the messages (``"checkpoint"``, ``"weights file"``).

    Returns:
        The loaded object.

    Raises:
        CheckpointError: if the file is missing, asks for CUDA on a machine without it, holds
            objects the safe loader refuses (unsafe, or not written by this package), or is
            truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; train first or check the path")
    if _wants_cuda(map_location) and not torch.cuda.is_available():
        raise CheckpointError(
            f"cannot load {what} {path} onto {shorten(str(map_location))}: CUDA is not available on this "
            "machine; use map_location='cpu'"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = [line for line in _ANSI.sub("", str(exc)).splitlines() if "GLOBAL" in line]
        if refused:  # a global the safe loader does not admit: code, or classes not ours
            raise CheckpointError(
                f"{what} {path} was refused as unsafe: it holds objects other than tensors and plain "
                "containers, which the safe loader (torch.load(weights_only=True)) does not run, so it is "
                f"not an mmnet-plugin checkpoint ({shorten(refused[0].strip())}); it was not loaded"
            ) from None
        error = exc
    except Exception as exc:  # truncated, not a torch file, unreadable
        error = exc
    if isinstance(error, OSError) and not isinstance(error, EOFError):
        raise CheckpointError(f"{what} {path} cannot be read ({shorten(error.strerror or error)})")
    raise CheckpointError(
        f"{what} {path} is truncated or corrupt and was not used ({type(error).__name__}: {shorten(str(error))}); "
        "delete it to start over, or point to another file"
    )


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """:func:`load` a training checkpoint: a dict whose ``model`` entry is a dict of weights.

    Raises:
        CheckpointError: as :func:`load`, or if the file is not such a dict.
    """
    state = load(path, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an mmnet-plugin checkpoint (no 'model' entry)")
    if not isinstance(state["model"], dict):
        raise CheckpointError(
            f"{path} is not a usable mmnet-plugin checkpoint: its 'model' entry is a "
            f"{type(state['model']).__name__}, not a dict of weights"
        )
    return state


def model_weights(state: Any, path: PathLike) -> Dict[str, Any]:
    """The model's weights in a loaded checkpoint of any form this package writes:
    ``{"model": weights, ...}`` (``mmnet train``, :class:`~mmnet_plugin.Trainer`) or
    ``{"state": {"model": weights}, "stats": ...}`` (the harness).

    Raises:
        CheckpointError: naming ``path`` if ``state`` is neither.
    """
    if isinstance(state, dict) and isinstance(state.get("state"), dict) and "stats" in state:
        state = state["state"]  # the harness's trained-once file
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an mmnet-plugin checkpoint (no 'model' entry)")
    weights = state["model"]
    if not isinstance(weights, dict):
        raise CheckpointError(
            f"{path} is not a usable mmnet-plugin checkpoint: its 'model' entry is a "
            f"{type(weights).__name__}, not a dict of weights"
        )
    return weights


def check_finite(weights: Mapping[str, Any], path: PathLike) -> None:
    """Refuse weights that hold NaN or infinity (a diverged or damaged model would otherwise
    score at chance without a word).

    Raises:
        CheckpointError: naming the file and the first such tensor.
    """
    for key, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{path}: the weights {shorten(key)} hold NaN or infinite values (the run diverged or the file "
                "was damaged); use an earlier checkpoint"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"{path}: the value {shorten(key)} is {value}; use an earlier checkpoint")
