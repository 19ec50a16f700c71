"""The episode contract and the seeded episode sampler.

An :class:`Episode` is one C-way k-shot task: a labelled support set and a query set.
Every framework adapter, the trainer, the evaluator and the benchmark harness speak this
one type, so that training and evaluation code is written once.

The :class:`EpisodeSampler` draws episodes from any labelled image dataset with its own
``numpy.random.Generator`` (never global random state), so the same seed gives the same
episodes in every method and on every machine. Each drawn stream has a fingerprint (a
chained SHA-256 of the dataset's class ids and image indices) that proves two runs saw the
same episodes.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np
import torch

__all__ = [
    "Episode",
    "EpisodeSampler",
    "EpisodeSource",
    "IntOrRange",
    "parse_range",
    "fingerprint_episodes",
    "require_episode",
    "ImageScaleWarning",
]

IntOrRange = Union[int, Tuple[int, int]]

EMPTY_FINGERPRINT = hashlib.sha256(b"mmnet-plugin episodes v1").hexdigest()

#: What the trainer and the evaluator say when they are given something other than an Episode.
_EASYFSL_HINT = (
    "wrap an easyfsl loader with mmnet_plugin.integrations.easyfsl.EasyFSLEpisodes(loader), or "
    "convert one 5-tuple with mmnet_plugin.integrations.easyfsl.episode_from_easyfsl(batch)"
)


class ImageScaleWarning(UserWarning):
    """uint8 images were given to an :class:`Episode` and scaled from ``0..255`` to ``[0, 1]``."""


def require_episode(obj: Any, where: str) -> "Episode":
    """Return ``obj`` if it is an :class:`Episode`, else raise a ValueError that says what to do.

    Args:
        obj: one item drawn from an episode source.
        where: who asks, for the message (e.g. ``"Trainer.fit"``).

    Returns:
        ``obj`` itself.

    Raises:
        ValueError: if ``obj`` is not an Episode; a 5-item tuple or list (easyfsl's
            ``episodic_collate_fn`` output) gets the easyfsl adapter's name.
    """
    if isinstance(obj, Episode):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 5:
        raise ValueError(
            f"{where} got a {len(obj)}-item {type(obj).__name__}, easyfsl's (support_images, support_labels, "
            f"query_images, query_labels, class_ids), not an Episode; {_EASYFSL_HINT}"
        )
    raise ValueError(
        f"{where} got a {type(obj).__name__}, not an Episode; build mmnet_plugin.Episode(support_x, support_y, "
        "query_x, query_y) or use an EpisodeSampler or an adapter of mmnet_plugin.integrations"
    )


def _describe_missing(labels: torch.Tensor, n_way: int) -> Optional[int]:
    present = set(int(v) for v in labels.unique().tolist())
    for c in range(n_way):
        if c not in present:
            return c
    return None


@dataclass
class Episode:
    """One few-shot task.

    Images are floating point, conventionally in ``[0, 1]``. ``uint8`` images are taken as
    ``0..255`` pixels and scaled to ``[0, 1]`` (as :class:`~mmnet_plugin.data.TensorFewShotDataset`
    does) with an :class:`ImageScaleWarning`, because used unscaled they would be 255 times
    larger than the data MM-Net is trained on. Other integer images have no known scale and
    are refused.

    Args:
        support_x: support images ``[N_s, C, H, W]`` (floating point, finite; uint8 is scaled).
        support_y: support labels ``[N_s]``, integers in ``0..n_way-1``, every label present.
        query_x: query images ``[N_q, C, H, W]`` with the support's ``C, H, W``; ``N_q >= 1``.
        query_y: query labels ``[N_q]`` in ``0..n_way-1``, or ``None`` when unknown
            (inference).
        class_ids: optional dataset class id of each label (``class_ids[label]``), for
            reporting and fingerprints.
        support_indices: optional dataset indices of the support images (fingerprints).
        query_indices: optional dataset indices of the query images (fingerprints).

    Raises:
        ValueError: if any part breaks the contract; the message names the problem.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: Optional[torch.Tensor] = None
    class_ids: Optional[Sequence[int]] = None
    support_indices: Optional[Sequence[int]] = None
    query_indices: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        self.support_x = _as_image_tensor(self.support_x, "support_x")
        self.query_x = _as_image_tensor(self.query_x, "query_x")
        self.support_y = _as_label_tensor(self.support_y, "support_y")
        if self.query_y is not None:
            self.query_y = _as_label_tensor(self.query_y, "query_y")
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        sx, sy, qx, qy = self.support_x, self.support_y, self.query_x, self.query_y
        if sx.shape[0] == 0:
            raise ValueError("support set is empty: an episode needs at least one support image")
        if sx.shape[0] != sy.shape[0]:
            raise ValueError(
                f"support_x has {sx.shape[0]} images but support_y has {sy.shape[0]} labels; they must match one to one"
            )
        if qx.shape[0] == 0:
            raise ValueError("query set is empty: an episode needs at least one query image")
        if qy is not None and qx.shape[0] != qy.shape[0]:
            raise ValueError(
                f"query_x has {qx.shape[0]} images but query_y has {qy.shape[0]} labels; they must match one to one"
            )
        if sx.shape[1:] != qx.shape[1:]:
            raise ValueError(
                f"support images are {tuple(sx.shape[1:])} but query images are "
                f"{tuple(qx.shape[1:])}; both must be [C, H, W] of the same size"
            )
        if int(sy.min()) < 0:
            raise ValueError(
                f"support labels must be 0..C-1; got negative label {int(sy.min())} "
                "(remap dataset class ids to episode labels first)"
            )
        n_way = int(sy.max()) + 1
        missing = _describe_missing(sy, n_way)
        if missing is not None:
            raise ValueError(
                f"support labels must cover 0..{n_way - 1}; label {missing} is missing "
                "(remap labels to 0..C-1 and give every class at least one support image)"
            )
        if qy is not None and (int(qy.min()) < 0 or int(qy.max()) >= n_way):
            bad = int(qy.min()) if int(qy.min()) < 0 else int(qy.max())
            raise ValueError(f"query label {bad} is outside 0..{n_way - 1}, the labels of the support set")
        if not torch.isfinite(sx).all():
            raise ValueError("support_x contains NaN or infinite values")
        if not torch.isfinite(qx).all():
            raise ValueError("query_x contains NaN or infinite values")
        if self.class_ids is not None and len(self.class_ids) != n_way:
            raise ValueError(f"class_ids has {len(self.class_ids)} entries but the episode has {n_way} classes")

    # ------------------------------------------------------------------ properties
    @property
    def n_way(self) -> int:
        """Number of classes C."""
        return int(self.support_y.max()) + 1

    @property
    def shots(self) -> torch.Tensor:
        """Support images per class, ``[n_way]``."""
        return torch.bincount(self.support_y, minlength=self.n_way)

    @property
    def n_shot(self) -> int:
        """Support images per class k (the smallest, if classes differ)."""
        return int(self.shots.min())

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Episode":
        """A copy of this episode on ``device`` (metadata is shared)."""

        def mv(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        ep = object.__new__(Episode)
        ep.support_x, ep.support_y = mv(self.support_x), mv(self.support_y)
        ep.query_x, ep.query_y = mv(self.query_x), mv(self.query_y)
        ep.class_ids, ep.support_indices, ep.query_indices = (self.class_ids, self.support_indices, self.query_indices)
        return ep

    def fingerprint_bytes(self) -> bytes:
        """Stable bytes identifying what this episode drew (class ids and image indices).

        Falls back to the labels when the episode carries no dataset indices."""
        if self.class_ids is not None and self.support_indices is not None and self.query_indices is not None:
            return _index_fingerprint_bytes(self.class_ids, self.support_indices, self.query_indices)
        parts = []
        for name in ("class_ids", "support_indices", "query_indices"):
            v = getattr(self, name)
            if v is None:
                parts.append(np.zeros(0, dtype="<i8"))
            else:
                parts.append(np.asarray(list(v), dtype="<i8"))
        if self.support_indices is None:
            parts.append(self.support_y.detach().cpu().numpy().astype("<i8"))
        if self.query_indices is None and self.query_y is not None:
            parts.append(self.query_y.detach().cpu().numpy().astype("<i8"))
        return b"|".join(p.tobytes() for p in parts)


def _index_fingerprint_bytes(class_ids: Any, support_indices: Any, query_indices: Any) -> bytes:
    """:meth:`Episode.fingerprint_bytes` of an episode that carries all three index lists."""
    return b"|".join(np.asarray(list(v), dtype="<i8").tobytes() for v in (class_ids, support_indices, query_indices))


def _as_image_tensor(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except Exception as exc:  # pragma: no cover - message path
            raise ValueError(f"{name} must be a tensor of images [N, C, H, W]; got {type(x).__name__}") from exc
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be a 4-D tensor [N, C, H, W]; got shape {tuple(x.shape)} "
            "(add the channel dimension for grey images: x.unsqueeze(1))"
        )
    if x.dtype == torch.uint8:
        warnings.warn(
            f"{name} is uint8: scaled from 0..255 to [0, 1] (x.float() / 255); pass float images in [0, 1] "
            "to silence this",
            ImageScaleWarning,
            stacklevel=4,
        )
        return x.float().div_(255.0)
    if x.dtype == torch.bool:
        return x.float()
    if not torch.is_floating_point(x):
        raise ValueError(
            f"{name} is {str(x.dtype).replace('torch.', '')}, integer images of unknown scale; pass float images "
            "in [0, 1] (e.g. x.float() / x.max()) or uint8 pixels 0..255"
        )
    return x


def integer_labels(values: Any, name: str) -> np.ndarray:
    """``values`` as a numpy array of integer labels, or a one-line ``ValueError`` for labels
    that are not numbers (class names as strings, objects): they must be mapped to integers.

    Float and bool arrays pass through (the caller checks that floats are whole numbers).
    """
    try:
        arr = np.asarray(values)
    except Exception as exc:  # ragged lists and other shapes numpy refuses
        raise ValueError(f"{name} must be a 1-D sequence of integer labels ({type(exc).__name__})") from None
    if arr.dtype.kind not in "iubf":
        example = repr(arr.reshape(-1)[0].item() if arr.size else None)[:40]
        raise ValueError(
            f"{name} must be integer labels; got {arr.dtype.kind == 'U' and 'strings' or arr.dtype} "
            f"(e.g. {example}): map class names to integers first, "
            "e.g. np.unique(names, return_inverse=True)[1]"
        )
    return arr


def _as_label_tensor(y: Any, name: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(integer_labels(y, name))
    if y.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of labels; got shape {tuple(y.shape)}")
    if torch.is_floating_point(y) or y.dtype == torch.bool:
        if y.numel() and not torch.equal(y, y.round()):
            raise ValueError(f"{name} must hold integer class labels; got non-integer values")
    return y.long()


def fingerprint_episodes(episodes: Sequence[Episode], start: str = EMPTY_FINGERPRINT) -> str:
    """Chained SHA-256 fingerprint of a sequence of episodes (hex, 16 characters shown).

    Args:
        episodes: the episodes, in order.
        start: the fingerprint of what came before (for streams).

    Returns:
        The full hex digest; display ``[:16]``.
    """
    fp = start
    for ep in episodes:
        fp = chain_fingerprint(fp, ep.fingerprint_bytes())
    return fp


def chain_fingerprint(prev: str, data: bytes) -> str:
    return hashlib.sha256(prev.encode("ascii") + data).hexdigest()


def parse_range(value: Union[str, int, Sequence[int]], name: str = "value") -> IntOrRange:
    """Parse ``5`` or ``"2-20"`` (inclusive) into an int or an ``(lo, hi)`` tuple.

    Raises:
        ValueError: for anything else, or a range with ``lo > hi`` or values below 1.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number or a range like 2-20; got {value!r}")
    if isinstance(value, (int, np.integer)):
        lo = hi = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if "-" in text:
                a, b = text.split("-", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(text)
        except ValueError:
            raise ValueError(f"{name} must be a number or a range like 2-20; got {value!r}") from None
    else:
        try:
            lo, hi = (int(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or a (low, high) pair; got {value!r}") from None
    if lo < 1:
        raise ValueError(f"{name} must be at least 1; got {lo}")
    if lo > hi:
        raise ValueError(f"{name} range {lo}-{hi} is empty: the low end must not exceed the high end")
    return lo if lo == hi else (lo, hi)


def _bounds(v: IntOrRange) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@runtime_checkable
class EpisodeSource(Protocol):
    """What the sampler needs from a dataset.

    ``targets`` gives the class id of every item (``[n]`` integers); ``load(indices)``
    returns those items' images as one float tensor ``[len(indices), C, H, W]``. The
    datasets of :mod:`mmnet_plugin.data` provide both; any ``(image, label)`` dataset can be
    wrapped with :func:`mmnet_plugin.data.as_episode_source`.
    """

    targets: Any

    def load(self, indices: np.ndarray) -> torch.Tensor:  # pragma: no cover - protocol
        ...


class EpisodeSampler:
    """Seeded C-way k-shot episode sampler over a labelled image dataset.

    Each episode draws C classes (their order is the shuffled label assignment: the
    first drawn class gets label 0), then k support and q query images per class without
    replacement, and shuffles the order of support and of query items. ``ways`` and
    ``shots`` may be ranges (``(2, 20)``, inclusive): then every episode draws its own C and
    k uniformly (the paper's mixed training strategy).

    Args:
        dataset: an :class:`EpisodeSource` (``targets`` and ``load``).
        ways: C, or an inclusive range of C; at least 2 (a 1-way episode has nothing to
            tell apart: its loss is 0 and it trains nothing).
        shots: k, or an inclusive range of k.
        queries: query images per class.
        seed: seed of the sampler's own ``numpy.random.Generator``.
        episodes: length of one pass when iterated (``None``: endless).

    Raises:
        ValueError: if the request is impossible for this dataset (more ways than
            classes with enough images, non-positive counts).
    """

    def __init__(
        self,
        dataset: EpisodeSource,
        ways: IntOrRange = 5,
        shots: IntOrRange = 1,
        queries: int = 15,
        seed: int = 0,
        episodes: Optional[int] = None,
    ) -> None:
        if not hasattr(dataset, "targets") or not hasattr(dataset, "load"):
            raise ValueError(
                f"{type(dataset).__name__} is not an episode source: it needs `targets` and "
                "`load(indices)`; wrap an (image, label) dataset with "
                "mmnet_plugin.data.as_episode_source(dataset)"
            )
        self.dataset = dataset
        self.ways = parse_range(ways, "ways")
        if _bounds(self.ways)[0] < 2:
            raise ValueError(
                f"ways must be at least 2: a 1-way episode has nothing to tell apart (its loss is 0, it trains "
                f"nothing and scores 100%); got ways={ways!r}, ask for e.g. 5 or 2-20"
            )
        self.shots = parse_range(shots, "shots")
        if isinstance(queries, bool) or int(queries) < 1:
            raise ValueError(f"queries must be at least 1 per class; got {queries!r}")
        self.queries = int(queries)
        if episodes is not None and int(episodes) < 1:
            raise ValueError(f"episodes must be at least 1 (or None for endless); got {episodes}")
        self.episodes = None if episodes is None else int(episodes)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.drawn = 0
        self.fingerprint = EMPTY_FINGERPRINT

        targets = integer_labels(dataset.targets, "dataset.targets").astype(np.int64)
        if targets.ndim != 1 or targets.size == 0:
            raise ValueError("dataset.targets must be a non-empty 1-D sequence of class ids")
        order = np.argsort(targets, kind="stable")
        classes, starts, counts = np.unique(targets[order], return_index=True, return_counts=True)
        self._class_ids = classes
        self._members = [order[s : s + c] for s, c in zip(starts, counts)]
        w_lo, w_hi = _bounds(self.ways)
        k_lo, k_hi = _bounds(self.shots)
        need = k_hi + self.queries
        eligible = np.flatnonzero(counts >= need)
        if len(eligible) < w_hi:
            if len(classes) < w_hi:
                raise ValueError(
                    f"cannot draw {w_hi}-way episodes: the dataset has only {len(classes)} classes "
                    f"(ask for at most {len(classes)} ways)"
                )
            raise ValueError(
                f"cannot draw {w_hi}-way episodes with {k_hi} shots + {self.queries} queries: only "
                f"{len(eligible)} classes have {need} or more images (the smallest class has "
                f"{counts.min()}); lower shots or queries"
            )
        self._eligible = eligible

    # ------------------------------------------------------------------ drawing
    def sample(self) -> Episode:
        """Draw the next episode (and advance the fingerprint)."""
        return self._next(load=True)[0]

    def _next(self, load: bool) -> Tuple[Optional[Episode], bytes]:
        """Draw the next episode and its fingerprint bytes; without ``load`` its images are not read
        and the episode is ``None`` (the random stream, ``drawn`` and the fingerprint advance
        exactly as with ``load``)."""
        rng = self.rng
        w_lo, w_hi = _bounds(self.ways)
        k_lo, k_hi = _bounds(self.shots)
        n_way = int(rng.integers(w_lo, w_hi + 1)) if w_lo != w_hi else w_lo
        k = int(rng.integers(k_lo, k_hi + 1)) if k_lo != k_hi else k_lo
        q = self.queries
        picked = rng.choice(self._eligible, size=n_way, replace=False)
        sup_idx = np.empty((n_way, k), dtype=np.int64)
        qry_idx = np.empty((n_way, q), dtype=np.int64)
        for label, c in enumerate(picked):
            members = self._members[c]
            chosen = members[rng.choice(len(members), size=k + q, replace=False)]
            sup_idx[label], qry_idx[label] = chosen[:k], chosen[k:]
        sup_labels = np.repeat(np.arange(n_way), k)
        qry_labels = np.repeat(np.arange(n_way), q)
        sp = rng.permutation(n_way * k)
        qp = rng.permutation(n_way * q)
        sup_flat, qry_flat = sup_idx.reshape(-1)[sp], qry_idx.reshape(-1)[qp]
        if not load:
            data = _index_fingerprint_bytes(self._class_ids[picked], sup_flat, qry_flat)
            self.drawn += 1
            self.fingerprint = chain_fingerprint(self.fingerprint, data)
            return None, data
        images = self.dataset.load(np.concatenate([sup_flat, qry_flat]))
        episode = Episode(
            support_x=images[: len(sup_flat)],
            support_y=torch.from_numpy(sup_labels[sp]),
            query_x=images[len(sup_flat) :],
            query_y=torch.from_numpy(qry_labels[qp]),
            class_ids=[int(v) for v in self._class_ids[picked]],
            support_indices=sup_flat.tolist(),
            query_indices=qry_flat.tolist(),
        )
        data = episode.fingerprint_bytes()
        self.drawn += 1
        self.fingerprint = chain_fingerprint(self.fingerprint, data)
        return episode, data

    def sample_batch(self, n: int, keep: Optional[Sequence[int]] = None) -> list:
        """Draw ``n`` episodes (a training batch); in mixed mode each has its own C and k.

        Args:
            n: the number of episodes.
            keep: positions ``0..n-1`` of the episodes to return (``None``: all). The others are
                drawn (the random stream, :attr:`drawn` and :attr:`fingerprint` advance exactly
                as without ``keep``) but their images are never read: how a rank takes its
                share of a batch that every rank draws.

        Returns:
            The episodes (those in ``keep``, in batch order).
        """
        wanted = None if keep is None else {int(i) for i in keep}
        out = []
        for i in range(int(n)):
            ep, _ = self._next(load=wanted is None or i in wanted)
            if ep is not None:
                out.append(ep)
        return out

    def iter_shard(self, rank: int, world_size: int) -> Iterator[Tuple[Optional[Episode], bytes]]:
        """One pass, as iterating the sampler, that reads the images of one rank's share only.

        Position ``i`` of the pass is this rank's when ``i % world_size == rank`` (the strided
        :func:`~mmnet_plugin.distributed.shard`); the other episodes are drawn without reading their
        images, so the random stream, :attr:`drawn` and :attr:`fingerprint` advance exactly as in
        a plain pass.

        Args:
            rank: this rank, ``0 .. world_size - 1``.
            world_size: the number of ranks (at least 1).

        Yields:
            ``(episode, fingerprint_bytes)``: the episode for this rank's positions, ``None`` for
            the others; the bytes are :meth:`Episode.fingerprint_bytes` in both cases.

        Raises:
            ValueError: for a rank outside ``0 .. world_size - 1``.
        """
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank {rank} is outside 0..{int(world_size) - 1} (world_size {world_size})")
        i = 0
        while self.episodes is None or i < self.episodes:
            yield self._next(load=i % int(world_size) == int(rank))
            i += 1

    def __iter__(self) -> Iterator[Episode]:
        if self.episodes is None:
            while True:
                yield self.sample()
        else:
            for _ in range(self.episodes):
                yield self.sample()

    def __len__(self) -> int:
        if self.episodes is None:
            raise TypeError("an endless sampler (episodes=None) has no length")
        return self.episodes

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue the same stream (plain types only)."""
        return {
            "seed": self.seed,
            "drawn": self.drawn,
            "fingerprint": self.fingerprint,
            "bit_generator": _plain(self.rng.bit_generator.state),
            "ways": list(_bounds(self.ways)),
            "shots": list(_bounds(self.shots)),
            "queries": self.queries,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream saved by :meth:`state_dict`.

        Raises:
            ValueError: if the state belongs to a sampler with other ways, shots or queries.
        """
        try:
            spec = (list(state["ways"]), list(state["shots"]), int(state["queries"]))
            bitgen = state["bit_generator"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a sampler state: missing {exc}") from None
        mine = (list(_bounds(self.ways)), list(_bounds(self.shots)), self.queries)
        if spec != mine:
            raise ValueError(
                f"sampler state is for ways/shots/queries {spec} but this sampler draws {mine}; "
                "resume with the same settings"
            )
        self.rng.bit_generator.state = dict(bitgen)
        self.seed = int(state["seed"])
        self.drawn = int(state["drawn"])
        self.fingerprint = str(state["fingerprint"])

    @property
    def short_fingerprint(self) -> str:
        """The first 16 hex digits of :attr:`fingerprint`."""
        return self.fingerprint[:16]


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj


# the names before 0.2.0
_EMPTY_FINGERPRINT = EMPTY_FINGERPRINT
_chain = chain_fingerprint
