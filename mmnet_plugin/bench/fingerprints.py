"""What identifies a configuration, a seed and a stream of episodes: short configuration
hashes, seeds derived per role, and fingerprints that cover the decoded pixels as well as
the indices. Nothing here touches global random state."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict

import numpy as np

from .files import jsonable

__all__ = ["config_key", "derive_seed", "ImageDigest", "stream_fingerprint", "dataset_digest"]


def config_key(config: Dict[str, Any]) -> str:
    """A short stable hash of a configuration (16 hex digits)."""
    text = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_ROLES = {"train": 1, "test": 2, "init": 3, "mixed": 4, "val": 5}


def derive_seed(seed: int, role: str, *parts: int) -> int:
    """An independent 63-bit seed for one role (``train``, ``test``, ``init``, ``mixed``, ``val``)
    and setting, derived from the run's ``--seed`` by ``numpy.random.SeedSequence``."""
    ss = np.random.SeedSequence(
        entropy=int(seed) & ((1 << 63) - 1), spawn_key=(_ROLES[role],) + tuple(int(p) for p in parts)
    )
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


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
    layout = getattr(dataset, "layout", "csv")
    if layout != "csv":  # miniImageNet read from learn2learn's or torchmeta's files
        h.update(f"layout\0{layout}\0".encode("utf-8"))
    h.update(targets.tobytes())
    n = len(targets)
    if n:
        idx = np.unique(np.linspace(0, n - 1, num=min(n, int(probe))).astype(np.int64))
        for chunk in np.array_split(idx, max(1, len(idx) // 256)):
            x = dataset.load(chunk)
            h.update(np.ascontiguousarray(x.detach().cpu().numpy()).tobytes())
    return h.hexdigest()[:16]
