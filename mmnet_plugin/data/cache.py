"""The decoded-data cache: where it lives, how its files are keyed, written and read.

Decoding image files is slow (tens of thousands of PNGs or JPEGs), so the data sets keep
their decoded ``uint8`` pixels in one ``.npz`` file per source and image size. The files
are keyed by what they were decoded from (content hashes or names, sizes and modification
times of the source files, plus the image size and the decoding method), so a changed
source never reuses a stale cache; they are written atomically (a temporary file in the
same folder, then :func:`os.replace`), so a reader never sees a half-written file, and
read without pickle, so a cache file can not run code.

The cache folder is, in this order: the ``cache_dir`` argument, ``$MMNET_CACHE_DIR``,
``$XDG_CACHE_HOME/mmnet-plugin``, ``~/.cache/mmnet-plugin``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import numpy as np

from ..checkpoints import atomic_write  # re-exported: the package's one atomic writer

__all__ = [
    "CACHE_FORMAT",
    "CacheWarning",
    "default_cache_dir",
    "hash_file",
    "hash_file_stats",
    "atomic_write",
    "save_arrays",
    "load_arrays",
    "discard",
]

#: Bumped whenever the layout of the cache files changes; part of every cache key.
CACHE_FORMAT = 1

PathLike = Union[str, "os.PathLike[str]"]


class CacheWarning(UserWarning):
    """A cache file was unreadable or inconsistent and is being rebuilt."""


def default_cache_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The folder decoded data is cached in (not created here).

    Args:
        cache_dir: an explicit folder; wins over everything else.

    Returns:
        ``cache_dir``, else ``$MMNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmnet-plugin``,
        else ``~/.cache/mmnet-plugin``.
    """
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get("MMNET_CACHE_DIR", "")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mmnet-plugin"


def hash_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's content.

    Args:
        path: the file.
        chunk_size: bytes read at a time.

    Returns:
        The hex digest.

    Raises:
        OSError: if the file can not be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def hash_file_stats(entries: Iterable[tuple]) -> str:
    """SHA-256 (hex) of ``(name, size, mtime_ns)`` records, in the given order.

    Cheap stand-in for content hashing when there are many files: a changed, added or
    removed file changes the key.

    Args:
        entries: ``(name, size, mtime_ns)`` tuples.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    for name, size, mtime in entries:
        h.update(f"{name}\0{int(size)}\0{int(mtime)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def save_arrays(path: PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` to an uncompressed ``.npz`` file atomically.

    Args:
        path: the final file.
        arrays: name -> array; no object arrays (the file is read without pickle).

    Returns:
        ``path``.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})

    return atomic_write(path, write)


def load_arrays(path: PathLike, required: Iterable[str]) -> Optional[Dict[str, np.ndarray]]:
    """Read a cache file written by :func:`save_arrays`, or ``None`` if it is unusable.

    Every array is read in full (the zip CRC of each member is checked on the way), so a
    truncated or damaged file is detected here instead of being half used. An unusable
    file gives a :class:`CacheWarning` naming it; the caller rebuilds it.

    Args:
        path: the cache file.
        required: the names the file must hold.

    Returns:
        name -> array, or ``None`` when the file is missing, damaged or lacks a name.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            missing = [k for k in required if k not in names]
            if missing:
                raise ValueError(f"missing arrays {', '.join(missing)}")
            return {k: data[k] for k in data.files}
    except Exception as exc:  # any failure to read means: rebuild, never half use
        warnings.warn(
            f"cache file {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it",
            CacheWarning,
            stacklevel=3,
        )
        return None


def discard(path: PathLike, reason: str) -> None:
    """Warn that a cache file is inconsistent and remove it (best effort).

    Args:
        path: the cache file.
        reason: what is wrong with it, for the warning.
    """
    warnings.warn(f"cache file {path} is inconsistent ({reason}); rebuilding it", CacheWarning, stacklevel=3)
    try:
        Path(path).unlink()
    except OSError:
        pass
