"""Process-level CPU tuning for the command-line entry points (never applied on import).

Training on the CPU allocates and frees the same large activation buffers every step (a
16-episode 5-way 1-shot MM-Net batch makes 257 MB feature maps in the first Conv-4 block).
glibc serves every allocation over 32 MB with a fresh ``mmap`` and unmaps it on free, so each
step page-faults all of that memory in again. Measured with one thread on the project's
2-core CPU (another single-threaded job on the second core; three rounds after a warm-up),
forward and backward of Conv-4 cost per image: over 1,280 28x28 images 2.9-3.1 ms with
glibc's defaults and 1.6-2.2 ms after :func:`tune_cpu_allocator`; over 80 images, whose
buffers stay small, 1.5-2.0 and 1.5-1.8 ms. In a profiled 16-episode MM-Net step the
zero-filling (max-pool's backward) went from 0.33 s to 0.04 s.

:func:`tune_cpu_allocator` asks glibc to serve large blocks from the heap and to keep freed
heap memory (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``), so a step
reuses the previous step's pages. The cost: the process keeps its peak heap resident instead
of returning it to the system between steps. ``mmnet``, ``benchmarks/run.py``,
``benchmarks/analysis.py`` and ``benchmarks/speed.py`` call it at start; a library user who
trains on the CPU may call it once from their own script. Set ``MMNET_CPU_ALLOCATOR=default``
to leave the allocator alone.

It also bounds oneDNN's primitive cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, unless already
set) at 64 kernels. oneDNN keeps a compiled kernel per convolution shape, 1,024 by default, and
mixed C-way k-shot batches change the image count, so the shape, at every step, and with the
default cache a process training on mixed batches grows by gigabytes. A smaller cache can cost
kernel recompilations; set ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` yourself to choose. The setting
takes effect when it is made before the first convolution.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

__all__ = ["tune_cpu_allocator", "cpu_allocator_state"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_BYTES = 1 << 30
_ONEDNN_CACHE = "64"
_state: Optional[str] = None


def cpu_allocator_state() -> str:
    """How the CPU allocator is set up in this process, for result records.

    Returns:
        ``"glibc: mmap off, trim at 1 GiB, oneDNN cache 64"`` after a successful :func:`tune_cpu_allocator`,
        otherwise ``"default"`` or the reason the tuning was not applied.
    """
    return _state or "default"


def tune_cpu_allocator() -> bool:
    """Keep freed large CPU buffers in the heap for reuse (glibc on Linux only).

    Idempotent; does nothing (and returns ``False``) on other C libraries or platforms, or
    when the environment variable ``MMNET_CPU_ALLOCATOR`` is ``default``.

    Returns:
        Whether glibc accepted both settings.
    """
    global _state
    if _state is not None:
        return _state.startswith("glibc")
    if os.environ.get("MMNET_CPU_ALLOCATOR", "").strip().lower() == "default":
        _state = "default (MMNET_CPU_ALLOCATOR=default)"
        return False
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", _ONEDNN_CACHE)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state = "default (not glibc)"
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _state = "default (mallopt not found)"
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES))
    cache = f", oneDNN cache {os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY')}"
    _state = ("glibc: mmap off, trim at 1 GiB" if ok else "default (mallopt refused)") + cache
    return ok
