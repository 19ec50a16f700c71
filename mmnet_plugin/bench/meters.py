"""Meters of one job: peak memory (CUDA or the process's resident size), a CUDA-synchronised
stopwatch, and a context that silences what some libraries print on import."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from typing import Any, Iterator, Optional

import torch

__all__ = ["PeakMemory", "Stopwatch", "quiet_import", "load_average"]


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that the resident
    size at the start of a job is not inflated by what earlier jobs freed."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (``VmHWM``) to the current resident size
    (Linux >= 4.0: write 5 to ``/proc/self/clear_refs``). False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """Peak memory of one job.

    On CUDA: ``torch.cuda.max_memory_allocated`` over the job (exact). On CPU: the peak
    resident set size of the process over the job minus the resident size when the job
    started, after freed heap memory was handed back to the OS (so it counts what the job
    added, including data it was first to load). The peak is the kernel's high-water mark,
    reset at the start of the job (Linux); elsewhere a thread samples the resident size
    every 20 ms. ``None`` where neither works.
    """

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.device = device
        self.interval = interval
        self.peak_bytes: Optional[int] = None
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_increase"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._hwm = False
        self._base: Optional[int] = None
        self._peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        _release_free_memory()
        self._base = _rss_bytes()
        if self._base is None:
            return self
        self._hwm = _reset_peak_rss()
        if self._hwm:
            return self
        self._peak = self._base

        def watch() -> None:
            while not self._stop.wait(self.interval):
                now = _rss_bytes()
                if now is not None and now > self._peak:
                    self._peak = now

        self._thread = threading.Thread(target=watch, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        if self._base is None:
            return
        if self._hwm:
            peak = _status_kib("VmHWM")
            if peak is not None:
                self.peak_bytes = max(0, peak - self._base)
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        now = _rss_bytes() or 0
        self.peak_bytes = max(self._peak, now) - self._base

    @property
    def mib(self) -> Optional[float]:
        return None if self.peak_bytes is None else self.peak_bytes / 2**20


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Silence what some libraries print to stderr on import (learn2learn pulls in gym,
    which prints a deprecation notice)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(io.StringIO()):
            yield


class Stopwatch:
    """Wall time, with a CUDA synchronise at both ends when the device is CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._t0


def load_average() -> Optional[list]:
    """The machine's 1, 5 and 15-minute load averages (``None`` where unknown): a time
    budget means less compute on a machine that other jobs keep busy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None
