"""What made a result: the code (a digest of the package's own source, and the git commit
when it runs from a checkout), the library versions and the device.

The digest covers every ``.py`` file of the ``mmnet_plugin`` package, the harness
(``mmnet_plugin.bench``) included, wherever the package lives: in a checkout or installed
from a wheel (site-packages). So the resume keys retire stored results whenever the code
changes, with or without git, and a wheel of a commit digests like that commit's checkout.
The git commit is read only from a checkout (the package's parent folder holds ``.git`` and
``setup.cfg``); an installed package records ``None``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

__all__ = [
    "PACKAGE_DIR",
    "REPO_ROOT",
    "checkout_root",
    "versions",
    "git_commit",
    "source_digest",
    "code_identity",
    "device_description",
]

#: the installed or checked-out ``mmnet_plugin`` package folder
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def checkout_root(package_dir: Union[str, Path] = PACKAGE_DIR) -> Optional[Path]:
    """The repository root when ``package_dir`` is a checkout's ``mmnet_plugin`` folder (its
    parent holds ``.git`` and ``setup.cfg``), else ``None`` (an installed package, even one
    installed into a virtual environment inside a checkout).

    Args:
        package_dir: the ``mmnet_plugin`` folder.

    Returns:
        The checkout's root, or ``None``.
    """
    parent = Path(package_dir).resolve().parent
    return parent if (parent / ".git").exists() and (parent / "setup.cfg").is_file() else None


#: the repository root when running from a checkout, else ``None``
REPO_ROOT = checkout_root()

#: Distributions whose versions every results.json records.
_DISTRIBUTIONS = ("mmnet-plugin", "torch", "torchvision", "numpy", "easyfsl", "learn2learn", "matplotlib", "tqdm")

#: the trees of a checkout whose uncommitted ``.py`` files a record lists
_SOURCE_TREES = ("mmnet_plugin", "benchmarks")


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


def git_commit(root: Union[str, Path]) -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository at ``root``.

    Args:
        root: a folder inside a git work tree.

    Returns:
        The commit and whether tracked files have uncommitted changes (``None`` both when
        git or the repository is missing).
    """

    def git(*args: str) -> Optional[str]:
        try:
            res = subprocess.run(["git", *args], cwd=str(root), capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def source_digest(package_dir: Union[str, Path] = PACKAGE_DIR) -> str:
    """SHA-256 (16 hex digits) of every ``.py`` file of the package folder (path relative to
    its parent, and contents, in sorted order; ``__pycache__`` skipped), so that results are
    tied to the code that made them, installed or checked out, with or without git.

    Args:
        package_dir: the ``mmnet_plugin`` folder (default: the one running).

    Returns:
        The digest.
    """
    base = Path(package_dir).resolve()
    h = hashlib.sha256()
    for f in sorted(base.rglob("*.py")):
        rel = f.relative_to(base.parent).as_posix()
        if "__pycache__" in rel:
            continue
        try:
            data = f.read_bytes()
        except OSError:
            continue
        h.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def code_identity(package_dir: Union[str, Path] = PACKAGE_DIR) -> Dict[str, Any]:
    """What code made a result.

    Args:
        package_dir: the ``mmnet_plugin`` folder (default: the one running).

    Returns:
        ``{"commit", "dirty", "source_sha256", "uncommitted_source_files", "source"}``: the
        git commit, whether the checkout had uncommitted changes and which ``.py`` files of
        ``mmnet_plugin/`` and ``benchmarks/`` they touch (all ``None`` for an installed
        package); :func:`source_digest`, which decides whether a stored result may be
        reused; and ``source``, ``"checkout"`` or ``"installed"``.
    """
    root = checkout_root(package_dir)
    info: Dict[str, Any] = {"commit": None, "dirty": None}
    dirty: Optional[list] = None
    if root is not None:
        info = git_commit(root)
        try:
            res = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=all", "--", *_SOURCE_TREES],
                cwd=str(root),
                capture_output=True,
                text=True,
                timeout=10,
            )
            if res.returncode == 0:
                dirty = sorted(
                    {
                        line[3:].strip()
                        for line in res.stdout.splitlines()
                        if line[3:].strip().endswith(".py") and "/results/" not in line
                    }
                )
        except (OSError, subprocess.SubprocessError):
            pass
    return {
        "commit": info["commit"],
        "dirty": info["dirty"],
        "source_sha256": source_digest(package_dir),
        "uncommitted_source_files": dirty,
        "source": "checkout" if root is not None else "installed",
    }


def device_description(device: torch.device) -> Dict[str, Any]:
    """What the device is, in words and numbers, for results.json."""
    info: Dict[str, Any] = {
        "type": device.type,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
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
