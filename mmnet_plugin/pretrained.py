"""Pretrained MM-Net weights shipped with the package, read offline and verified.

Each name (``"omniglot"``) has a manifest, ``weights/<name>.json`` inside the package, and a
weights file beside it. The manifest states the file's SHA-256, the model configuration, the
preprocessing the weights expect (image size, channels, ink polarity, resize filter), how the
weights were trained (command, commit, steps, episodes, CPU-hours, CPU) and what they measured.
:func:`load_pretrained` (and :meth:`MMNet.pretrained <mmnet_plugin.MMNet.pretrained>`) checks the
digest before reading a byte of the file with ``torch.load(weights_only=True)``, so a damaged or
replaced file is refused, never half-used.

The weights file holds the model's state dict with its large floating-point tensors in float16
(the rest in float32), about half the size of a float32 checkpoint; they are widened to float32
on load. :func:`export_pretrained` writes both files from a training checkpoint.

Images for the Omniglot weights: ``[n, 1, 28, 28]`` float tensors in ``[0, 1]`` with **bright
ink (1.0) on a black (0.0) background**, resized from 105x105 with PIL's LANCZOS filter, as
:func:`~mmnet_plugin.load_dataset` gives them. torchvision-based loaders (learn2learn,
easyfsl, torchvision's ``Omniglot``) give dark ink on white: :func:`omniglot_transform` converts
their PIL images.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch

__all__ = [
    "available",
    "manifest",
    "load_pretrained",
    "export_pretrained",
    "omniglot_transform",
    "summarise_log",
    "InvertToUnit",
    "weights_dir",
    "WEIGHTS_FORMAT",
]

#: The ``format`` entry of a weights file written by :func:`export_pretrained`.
WEIGHTS_FORMAT = "mmnet-plugin/weights/1"
_HALF_MIN_NUMEL = 4096  # tensors at least this large are stored in float16


def weights_dir() -> Path:
    """The package folder that holds the shipped manifests and weights."""
    return Path(__file__).resolve().parent / "weights"


def available() -> List[str]:
    """Names of the shipped pretrained weights (``["omniglot"]``)."""
    folder = weights_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def manifest(name: str) -> Dict[str, Any]:
    """The manifest of the shipped weights ``name``.

    Raises:
        ValueError: if no weights of that name are shipped (the message lists those that are).
    """
    names = available()
    if not isinstance(name, str) or name not in names:
        shown = repr(name)[:60]
        raise ValueError(
            f"no pretrained weights named {shown}; available: {', '.join(names) or 'none in this installation'}"
        )
    path = weights_dir() / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"the manifest {path} cannot be read ({exc}); reinstall mmnet-plugin") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(name: str, map_location: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Build the MM-Net of the shipped weights ``name``, in ``eval()`` mode.

    Nothing is downloaded: the file is part of the package. Its SHA-256 is checked against the
    manifest before it is read with ``torch.load(weights_only=True)``.

    Args:
        name: which weights (:func:`available`).
        map_location: where to put the model (``"cpu"``, ``"cuda"``, ...).

    Returns:
        An :class:`~mmnet_plugin.MMNet` in float32, ``eval()`` mode.

    Raises:
        ValueError: if ``name`` is unknown (the available names are listed).
        CheckpointError: if the weights file is missing, fails its checksum (the message gives
            the path and both digests) or does not fit the manifest's model configuration.
    """
    from .checkpoints import CheckpointError, check_finite, load
    from .models import MMNet

    info = manifest(name)
    path = weights_dir() / str(info.get("file", ""))
    if not path.is_file():
        raise CheckpointError(f"the weights file {path} of {name!r} is missing; reinstall mmnet-plugin")
    want = str(info.get("sha256", ""))
    got = _sha256(path)
    if got != want:
        raise CheckpointError(
            f"the weights file {path} fails its checksum (sha256 {got}, the manifest says {want}); it is damaged "
            "or was replaced: reinstall mmnet-plugin"
        )
    state = load(path, what="weights file")
    if not isinstance(state, dict) or state.get("format") != WEIGHTS_FORMAT or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not an mmnet-plugin weights file ({WEIGHTS_FORMAT})")
    config = dict(info["model_config"])
    model = MMNet(**config)
    check_finite(state["model"], path)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    weights.setdefault("_extra_state", model.get_extra_state())  # the support-shuffle generator: not stored
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()[:200]
        raise CheckpointError(f"{path}: the weights do not fit the manifest's model configuration ({first})") from None
    return model.to(map_location).eval()


def export_pretrained(
    checkpoint: Union[str, "os.PathLike[str]"],
    name: str,
    directory: Union[str, "os.PathLike[str]", None] = None,
    info: Optional[Dict[str, Any]] = None,
    log: Union[str, "os.PathLike[str]", None] = None,
) -> Dict[str, Any]:
    """Write compact weights and their manifest from a training checkpoint.

    Args:
        checkpoint: a checkpoint of ``mmnet train`` / :class:`~mmnet_plugin.Trainer` that holds a
            model configuration (e.g. the best-on-val ``<checkpoint>.best.pt``).
        name: the weights' name (``"omniglot"``): writes ``<name>-mmnet.pt`` and ``<name>.json``.
        directory: where to write them (default: the package's :func:`weights_dir`).
        info: more manifest entries (``preprocessing``, ``training``, ``selection``, ``test``...).
        log: the run's JSON-lines log: :func:`summarise_log` up to the checkpoint's step goes into
            the manifest's ``training`` (entries of ``info["training"]`` win).

    Returns:
        The manifest written.

    Raises:
        CheckpointError: if the checkpoint cannot be read or holds no model configuration.
    """
    from .checkpoints import atomic_write, load_checkpoint
    from .models import MMNet

    model = MMNet.from_checkpoint(checkpoint)
    state = load_checkpoint(checkpoint)
    compact = {
        k: v.half() if v.is_floating_point() and v.numel() >= _HALF_MIN_NUMEL else v.clone()
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    folder = Path(directory) if directory is not None else weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-mmnet.pt"
    buffer = io.BytesIO()
    torch.save({"format": WEIGHTS_FORMAT, "model": compact}, buffer)
    data = buffer.getvalue()
    atomic_write(target, data)
    entry: Dict[str, Any] = {
        "name": name,
        "file": target.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "storage": f"tensors of {_HALF_MIN_NUMEL}+ numbers in float16, the rest float32; widened to float32 on load",
        "model_config": model.config,
        "checkpoint_step": int(state.get("step", 0)),
        **(info or {}),
    }
    if log is not None:
        run = summarise_log(log, until_step=entry["checkpoint_step"])
        entry["training"] = {**run, **dict(entry.get("training") or {})}
    text = json.dumps(entry, indent=2) + "\n"
    atomic_write(folder / f"{name}.json", text)
    return entry


def summarise_log(path: Union[str, "os.PathLike[str]"], until_step: Optional[int] = None) -> Dict[str, Any]:
    """What a training log (``mmnet train --log``, over any number of resumed segments) says of the run.

    Args:
        path: the JSON-lines log.
        until_step: count the run only up to this step (the step of the exported weights);
            records after it are left out. ``None``: the whole log.

    Returns:
        ``{"steps", "episodes", "segments", "wall_hours", "precision", "validations": [...]}``:
        the last step, the training episodes up to it, the number of ``fit`` calls (resumes + 1),
        the wall-clock hours of training and validation summed over them, the precision of the
        segments, and every validation record (step, mean accuracy, per-setting accuracies).

    Raises:
        ValueError: if the file cannot be read or holds no training record.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"--log {path} cannot be read ({exc.strerror or exc})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"--log {path}: line {number} is not JSON") from None
        if until_step is None or int(record.get("step", 0)) <= until_step:
            records.append(record)
    starts = [r for r in records if r.get("start")]
    if not starts:
        raise ValueError(f"--log {path} holds no training start record; give the log of mmnet train")
    seconds, segment, batch, step, episodes = 0.0, 0.0, 1, 0, 0
    tally = {0: 0}  # step -> training episodes up to it, so a resume from an earlier checkpoint rolls back
    for r in records:
        if r.get("start"):
            seconds += segment
            segment = 0.0
            batch = int(r.get("batch_episodes", 1))
            step = int(r.get("step", 0))
            episodes = tally.get(step, step * batch)
        elif "loss" in r:
            episodes += (int(r["step"]) - step) * batch
            step = int(r["step"])
            tally[step] = episodes
        if "seconds" in r:
            segment = max(segment, float(r["seconds"]))
    seconds += segment
    return {
        "steps": step,
        "episodes": episodes,
        "segments": len(starts),
        "wall_hours": round(seconds / 3600.0, 3),
        "precision": sorted({"bf16 autocast" if s.get("bf16_autocast") else "float32" for s in starts}),
        "validations": [
            {"step": r["step"], "accuracy": r["val_accuracy"], "settings": r.get("settings")}
            for r in records
            if "val_accuracy" in r
        ],
    }


def omniglot_transform(image_size: int = 28) -> Callable[[Any], torch.Tensor]:
    """A torchvision transform from an Omniglot PIL image (dark ink on white, as torchvision's
    ``Omniglot``, learn2learn's ``FullOmniglot`` and easyfsl's loaders give it) to what the
    ``"omniglot"`` weights expect: ``[1, image_size, image_size]`` float in ``[0, 1]``, bright
    ink on black, resized with PIL's LANCZOS filter.

    Raises:
        ImportError: without torchvision.
    """
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Grayscale(),
            transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.LANCZOS),
            transforms.PILToTensor(),
            InvertToUnit(),
        ]
    )


class InvertToUnit:
    """``uint8`` image tensor (dark ink on white) to float ``[0, 1]`` with bright ink on black.

    A class rather than a lambda, so that transforms holding it pickle into DataLoader workers."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (255 - x.to(torch.int16)).float().div_(255.0)
