"""Small helpers of the benchmark harness: atomic writes, versions, git commit, seeds and
peak memory. Nothing here touches global random state."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np
import torch

from mmnet_plugin.training import CheckpointError as _PackageCheckpointError

__all__ = [
    "REPO_ROOT",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "config_key",
    "derive_seed",
    "versions",
    "git_commit",
    "device_description",
    "PeakMemory",
    "quiet_import",
    "CheckpointError",
    "safe_torch_load",
    "source_digest",
    "code_identity",
    "dataset_digest",
    "ImageDigest",
    "stream_fingerprint",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Distributions whose versions every results.json records.
_DISTRIBUTIONS = ("mmnet-plugin", "torch", "torchvision", "numpy", "easyfsl", "learn2learn",
                  "matplotlib", "tqdm")


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``, so a reader
    (or an interrupted run) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Union[str, Path], obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON (NaN written as ``null``)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
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
            "the run retrain") from None
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


def config_key(config: Dict[str, Any]) -> str:
    """A short stable hash of a configuration (16 hex digits)."""
    text = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_ROLES = {"train": 1, "test": 2, "init": 3, "mixed": 4, "val": 5}


def derive_seed(seed: int, role: str, *parts: int) -> int:
    """An independent 63-bit seed for one role (``train``, ``test``, ``init``, ``mixed``, ``val``)
    and setting, derived from the run's ``--seed`` by ``numpy.random.SeedSequence``."""
    ss = np.random.SeedSequence(entropy=int(seed) & ((1 << 63) - 1),
                                spawn_key=(_ROLES[role],) + tuple(int(p) for p in parts))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def versions() -> Dict[str, Optional[str]]:
    """Versions of python and of the libraries the harness uses (``None``: not installed).
    Read from the installed metadata, so nothing heavy is imported."""
    from importlib import metadata

    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if out.get("mmnet-plugin") is None:
        with contextlib.suppress(Exception):
            import mmnet_plugin

            out["mmnet-plugin"] = getattr(mmnet_plugin, "__version__", None)
    return out


def git_commit(root: Union[str, Path] = REPO_ROOT) -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository at ``root``."""
    def git(*args: str) -> Optional[str]:
        try:
            res = subprocess.run(["git", *args], cwd=str(root), capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": None if status is None else bool(status)}


#: the source trees whose code decides a result (the package and the harness)
_SOURCE_TREES = ("mmnet_plugin", "benchmarks")


def source_digest(root: Union[str, Path] = REPO_ROOT) -> str:
    """SHA-256 (16 hex digits) of every ``.py`` file of the package and the harness under
    ``root`` (relative path and contents, in sorted order), so that results are tied to the
    code that made them with or without git, and a dirty working tree is told apart from
    its commit.

    Args:
        root: the repository root.

    Returns:
        The digest.
    """
    root = Path(root)
    h = hashlib.sha256()
    for tree in _SOURCE_TREES:
        base = root / tree
        if not base.is_dir():
            continue
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            if "/results/" in f"/{rel}" or "__pycache__" in rel:
                continue
            try:
                data = f.read_bytes()
            except OSError:
                continue
            h.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def code_identity(root: Union[str, Path] = REPO_ROOT) -> Dict[str, Any]:
    """What code made a result: ``{"commit", "dirty", "source_sha256",
    "uncommitted_source_files"}`` (the git commit, whether the tree had uncommitted
    changes and which ``.py`` files of the package and harness they touch, ``None`` outside
    git; and :func:`source_digest`, which decides whether a stored result may be reused)."""
    info = git_commit(root)
    dirty: Optional[list] = None
    try:
        res = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *_SOURCE_TREES],
                             cwd=str(root), capture_output=True, text=True, timeout=10)
        if res.returncode == 0:
            dirty = sorted({line[3:].strip() for line in res.stdout.splitlines()
                            if line[3:].strip().endswith(".py") and "/results/" not in line})
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": info["commit"], "dirty": info["dirty"], "source_sha256": source_digest(root),
            "uncommitted_source_files": dirty}


class ImageDigest:
    """A running SHA-256 of the decoded images of a stream of episodes (support then query
    images of each episode, as float32 bytes), so a fingerprint covers the pixels as well
    as the indices."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.episodes = 0

    def update(self, episode: Any) -> None:
        for t in (episode.support_x, episode.query_x):
            a = t.detach()
            if a.device.type != "cpu":
                a = a.cpu()
            self._h.update(np.ascontiguousarray(a.numpy()).tobytes())
        self.episodes += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def stream_fingerprint(split: str, index_fingerprint: str, image_digest: str) -> str:
    """The fingerprint of a stream of episodes: SHA-256 of the split name, the sampler's
    chained fingerprint of class ids and image indices, and :class:`ImageDigest`'s digest."""
    return hashlib.sha256(f"{split}\0{index_fingerprint}\0{image_digest}".encode("utf-8")).hexdigest()


def dataset_digest(dataset: Any, split: str, probe: int = 1024) -> str:
    """A digest (16 hex digits) of a data set split: its name, size, class labels, and the
    decoded pixels of ``probe`` items spread evenly over it (all items when fewer). Cheap
    (well under a second), and it changes when the decoded images change (another
    archive, image size or decoder).

    Args:
        dataset: an episode source (``targets`` and ``load``).
        split: the split's name.
        probe: how many items to decode and hash.

    Returns:
        The digest.
    """
    targets = np.asarray(dataset.targets, dtype=np.int64)
    h = hashlib.sha256()
    h.update(f"{type(dataset).__name__}\0{split}\0{len(targets)}\0".encode("utf-8"))
    h.update(targets.tobytes())
    n = len(targets)
    if n:
        idx = np.unique(np.linspace(0, n - 1, num=min(n, int(probe))).astype(np.int64))
        for chunk in np.array_split(idx, max(1, len(idx) // 256)):
            x = dataset.load(chunk)
            h.update(np.ascontiguousarray(x.detach().cpu().numpy()).tobytes())
    return h.hexdigest()[:16]


def device_description(device: torch.device) -> Dict[str, Any]:
    """What the device is, in words and numbers, for results.json."""
    info: Dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(idx)
        info["cuda"] = torch.version.cuda
    else:
        from mmnet_plugin.runtime import cpu_allocator_state

        info["cpu_allocator"] = cpu_allocator_state()
        # the instruction set decides which oneDNN and ATen kernels run, and so their float
        # rounding: at small budgets results differ by points between AVX2 and AVX-512 CPUs
        # (README, "The bare command"); ONEDNN_MAX_CPU_ISA=AVX2 reproduces an AVX2 machine
        get_capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
        info["cpu_capability"] = get_capability() if callable(get_capability) else None
        info["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
        info["name"] = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    info["name"] = line.split(":", 1)[1].strip()
                    break
    return info


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
        return None if self.peak_bytes is None else self.peak_bytes / 2 ** 20


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
