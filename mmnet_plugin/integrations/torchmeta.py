"""torchmeta adapter: ``BatchMetaDataLoader`` batches as episodes, and a compatibility step.

**Compatibility step.** torchmeta 1.8.0 (its last release) does not work on the torch and
torchvision this project uses, in exactly two places; :func:`patch_torchmeta` fixes those
two and nothing else, and must run before torchmeta is first imported (or used):

1. ``import torchmeta`` fails: ``torchmeta/datasets/utils.py`` imports the private helpers
   ``_get_confirm_token`` and ``_save_response_content`` from
   ``torchvision.datasets.utils``, which torchvision removed (0.10 changed their signature,
   later releases dropped them). The patch adds the two functions to that torchvision
   module, with the behaviour torchmeta's Google-Drive download expects, **only if they are
   missing**. Nothing else in torchvision is touched.
2. ``ClassSplitter`` (every ``dataset_transform`` that splits a task) fails: torchmeta's
   ``SubsetTask`` subclasses ``torch.utils.data.Subset`` and overrides ``__getitem__``, and
   current torch refuses to construct such a subclass unless it also overrides
   ``__getitems__`` (``NotImplementedError`` from ``Subset.__init__``). The patch gives
   ``SubsetTask`` the ``__getitems__`` that torch's message prescribes,
   ``[self[i] for i in indices]``, **only if it has none of its own**.

The step is idempotent (a second call changes nothing and returns ``()``), checks the
installed torchmeta version first (from the package metadata, without importing it), and
refuses versions it was not written for unless ``allow_unknown_version=True``. The patch
lives in the process that ran it: forked ``DataLoader`` workers inherit it, but workers
started by ``spawn`` or ``forkserver`` import torchmeta afresh while unpickling the data
set, before any ``worker_init_fn`` runs, so call ``patch_torchmeta()`` at the top level of
your script (outside the ``if __name__ == "__main__":`` block), where such workers run it
too.
Known leftovers, not patched because nothing here uses them: the tabular data sets ``TCGA``
and ``Bach`` use the removed ``np.int`` / ``np.float`` aliases.

**Episodes.** A ``BatchMetaDataLoader`` batch over a ``CombinationMetaDataset`` with a
``ClassSplitter`` is ``{'train': (x [B, N*K, C, H, W], y [B, N*K]), 'test': (x [B, N*Q, C, H,
W], y [B, N*Q])}`` (or ``'support'`` / ``'query'``), with targets ``0..N-1`` when the data set
has ``target_transform=Categorical(N)``; :func:`episodes_from_torchmeta` makes it a list of
``B`` episodes. :class:`FewShotClassDataset` (built on first use) turns any
:class:`~mmnet_plugin.data.FewShotDataset` (our Omniglot, glyphs, ...) into a torchmeta
``ClassDataset``, so torchmeta's own ``CombinationMetaDataset``, splitters and loaders draw
from it.

Example::

    from mmnet_plugin.integrations.torchmeta import patch_torchmeta, episodes_from_torchmeta
    patch_torchmeta()
    from torchmeta.transforms import Categorical, ClassSplitter
    from torchmeta.utils.data import BatchMetaDataLoader, CombinationMetaDataset
    from mmnet_plugin.integrations.torchmeta import FewShotClassDataset

    meta = CombinationMetaDataset(FewShotClassDataset(omniglot_train), num_classes_per_task=5,
                                  target_transform=Categorical(5),
                                  dataset_transform=ClassSplitter(num_train_per_class=1,
                                                                  num_test_per_class=15))
    for batch in BatchMetaDataLoader(meta, batch_size=16):
        loss = mmnet.loss(episodes_from_torchmeta(batch))
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..episodes import Episode
from . import INSTALL_HINTS, require
from .stream import EpisodeStream

# FewShotClassDataset subclasses torchmeta's ClassDataset, which can only be imported after
# patch_torchmeta(): it is built on first access (module __getattr__), hence F822.
__all__ = [  # noqa: F822
    "KNOWN_VERSIONS",
    "patch_torchmeta",
    "episodes_from_torchmeta",
    "TorchmetaEpisodes",
    "FewShotClassDataset",
]

#: torchmeta versions :func:`patch_torchmeta` was written and tested against.
KNOWN_VERSIONS: Tuple[str, ...] = ("1.8.0",)

_PATCH_TORCHVISION = "torchvision.datasets.utils: added "
_PATCH_SUBSET = "torchmeta.utils.data.task.SubsetTask: added __getitems__"
_STATE = {"patched": False}


# ---------------------------------------------------------------------------- the patch
def _get_confirm_token(response: Any) -> Optional[str]:
    """The Google-Drive confirmation token of ``response`` (torchvision <= 0.9 behaviour)."""
    for key, value in response.cookies.items():
        if key.startswith("download_warning"):
            return value
    return None


def _save_response_content(response: Any, destination: str, chunk_size: int = 32768) -> None:
    """Write a streamed ``requests`` response to ``destination`` (torchvision <= 0.9 behaviour)."""
    with open(destination, "wb") as fh:
        for chunk in response.iter_content(chunk_size):
            if chunk:  # skip keep-alive chunks
                fh.write(chunk)


def _subset_task_getitems(self: Any, indices: Sequence[int]) -> list:
    """``SubsetTask.__getitems__``: one ``__getitem__`` per index, as torch prescribes."""
    return [self[i] for i in indices]


def _installed_version() -> str:
    try:
        return importlib.metadata.version("torchmeta")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            "this mmnet_plugin adapter needs the 'torchmeta' package, which is not installed. "
            f"Install it with: {INSTALL_HINTS['torchmeta']}"
        ) from None


def patch_torchmeta(allow_unknown_version: bool = False) -> Tuple[str, ...]:
    """Make torchmeta 1.8.0 importable and its samplers work on current torch/torchvision.

    Patches exactly the two breakages described in the module docstring, each only when it
    is present, then imports torchmeta. Call it once before using torchmeta (calling it
    again is harmless).

    Args:
        allow_unknown_version: apply the patch to a torchmeta version other than
            :data:`KNOWN_VERSIONS` (at your own risk) instead of refusing.

    Returns:
        What this call changed (empty when everything was already in place).

    Raises:
        ImportError: if torchmeta is not installed (the message gives the install
            command), or still does not import after the patch.
        RuntimeError: if the installed torchmeta is not a known version and
            ``allow_unknown_version`` is false.
    """
    version = _installed_version()
    if version not in KNOWN_VERSIONS and not allow_unknown_version:
        raise RuntimeError(
            f"patch_torchmeta() knows torchmeta {', '.join(KNOWN_VERSIONS)} but torchmeta {version} is "
            "installed; it was not checked against this version. Install torchmeta==1.8.0 "
            f"({INSTALL_HINTS['torchmeta']}), or call patch_torchmeta(allow_unknown_version=True) "
            "to apply the same two fixes anyway"
        )
    applied: List[str] = []
    tv_utils = importlib.import_module("torchvision.datasets.utils")
    added = []
    for name, fn in (("_get_confirm_token", _get_confirm_token), ("_save_response_content", _save_response_content)):
        if not hasattr(tv_utils, name):  # present (older torchvision): leave it alone
            setattr(tv_utils, name, fn)
            added.append(name)
    if added:
        applied.append(f"{_PATCH_TORCHVISION}{', '.join(added)}")
    try:
        task_mod = importlib.import_module("torchmeta.utils.data.task")
    except ImportError as exc:
        raise ImportError(
            f"torchmeta {version} still does not import after patch_torchmeta(): {exc}. "
            f"Reinstall it as: {INSTALL_HINTS['torchmeta']}"
        ) from exc
    subset_task = task_mod.SubsetTask
    subset_base = getattr(torch.utils.data.Subset, "__getitems__", None)
    own = subset_task.__dict__.get("__getitems__")
    if own is None and subset_base is not None and getattr(subset_task, "__getitems__", None) is subset_base:
        subset_task.__getitems__ = _subset_task_getitems
        applied.append(_PATCH_SUBSET)
    try:
        importlib.import_module("torchmeta")
    except ImportError as exc:
        raise ImportError(f"torchmeta {version} still does not import after patch_torchmeta(): {exc}") from exc
    _STATE["patched"] = True
    return tuple(applied)


def _require_torchmeta() -> Any:
    """torchmeta, patched and imported (raises like :func:`patch_torchmeta`)."""
    if not _STATE["patched"]:
        patch_torchmeta()
    return require("torchmeta")


# ---------------------------------------------------------------------------- episodes
_KEY_PAIRS = (("train", "test"), ("support", "query"))


def _split_keys(batch: Mapping[str, Any], support_key: Optional[str], query_key: Optional[str]) -> Tuple[str, str]:
    keys = list(batch.keys())
    if support_key is not None or query_key is not None:
        pair = (support_key or "train", query_key or "test")
    else:
        pair = next((p for p in _KEY_PAIRS if p[0] in batch and p[1] in batch), ("train", "test"))
    missing = [k for k in pair if k not in batch]
    if missing:
        raise ValueError(
            f"torchmeta batch has keys {keys} but no {missing}: the torchmeta convention is a "
            "ClassSplitter dataset_transform (num_train_per_class=K, num_test_per_class=Q), giving "
            "batch['train'] (support) and batch['test'] (query), or 'support' / 'query' with "
            "num_support_per_class / num_query_per_class"
        )
    return pair


def _pair(batch: Mapping[str, Any], key: str) -> Tuple[torch.Tensor, torch.Tensor]:
    value = batch[key]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(
            f"torchmeta batch[{key!r}] must be (inputs, targets) as BatchMetaDataLoader collates "
            f"it; got {type(value).__name__}"
        )
    x, y = value
    if not isinstance(y, torch.Tensor):
        raise ValueError(
            f"torchmeta batch[{key!r}] targets are {type(y).__name__}, not a tensor of class labels: "
            "the torchmeta convention is target_transform=Categorical(num_ways) on the "
            "CombinationMetaDataset (without it, targets are (class, augmentation) tuples)"
        )
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"torchmeta batch[{key!r}] inputs are {type(x).__name__}, not a tensor: give the data "
            "set a transform that returns tensors (e.g. torchvision.transforms.ToTensor())"
        )
    if y.dim() != 2 or x.dim() < 2 or x.shape[:2] != y.shape:
        raise ValueError(
            f"torchmeta batch[{key!r}] has inputs {tuple(x.shape)} and targets {tuple(y.shape)}; "
            "BatchMetaDataLoader gives inputs [B, N, C, H, W] and targets [B, N]"
        )
    return x, y


def episodes_from_torchmeta(
    batch: Mapping[str, Any],
    support_key: Optional[str] = None,
    query_key: Optional[str] = None,
) -> List[Episode]:
    """Turn a ``BatchMetaDataLoader`` batch into one episode per task.

    Args:
        batch: ``{'train': (x, y), 'test': (x, y)}`` (or ``'support'`` / ``'query'``) with
            ``x [B, N, C, H, W]`` and ``y [B, N]`` in ``0..C-1``.
        support_key: the support split's key (default: ``'train'``, else ``'support'``).
        query_key: the query split's key (default: ``'test'``, else ``'query'``).

    Returns:
        ``B`` episodes, in batch order (items keep the loader's order). torchmeta batches
        carry no dataset ids, so ``class_ids`` and the indices are ``None``.

    Raises:
        ValueError: if the batch breaks a torchmeta convention (not a mapping, missing
            split keys, targets that are not ``Categorical`` labels ``0..C-1``, splits of
            different batch sizes, a query class with no support image); the message names
            the convention.
    """
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"torchmeta batch must be a mapping {{'train': (x, y), 'test': (x, y)}}, as "
            "BatchMetaDataLoader yields it for a CombinationMetaDataset with a ClassSplitter "
            f"dataset_transform; got {type(batch).__name__}"
        )
    s_key, q_key = _split_keys(batch, support_key, query_key)
    sx, sy = _pair(batch, s_key)
    qx, qy = _pair(batch, q_key)
    if sx.shape[0] != qx.shape[0]:
        raise ValueError(
            f"torchmeta batch[{s_key!r}] holds {sx.shape[0]} tasks but batch[{q_key!r}] {qx.shape[0]}; "
            "both splits come from the same tasks"
        )
    episodes = []
    for b in range(sx.shape[0]):
        ys = sy[b]
        labels = sorted(set(int(v) for v in ys.unique().tolist()))
        if labels != list(range(len(labels))):
            raise ValueError(
                f"torchmeta task {b}: support targets {labels[:10]} are not 0..{len(labels) - 1}; the "
                "torchmeta convention is target_transform=Categorical(num_ways) on the "
                "CombinationMetaDataset"
            )
        try:
            episodes.append(Episode(support_x=sx[b], support_y=ys, query_x=qx[b], query_y=qy[b]))
        except ValueError as exc:
            raise ValueError(f"torchmeta task {b} does not make a valid episode: {exc}") from exc
    return episodes


class TorchmetaEpisodes(EpisodeStream):
    """A torchmeta loader as a stream of episodes (for the trainer).

    Args:
        loader: a ``BatchMetaDataLoader`` (any iterable of torchmeta batches).
        episodes: stop after this many episodes (``None``: as long as the loader lasts).
        device: move each episode there (``None``: leave it on the loader's device).

    Raises:
        ValueError: for a non-positive ``episodes``; while iterating, as
            :func:`episodes_from_torchmeta`.
    """

    def __init__(self, loader: Any, episodes: Optional[int] = None, device: Optional[str] = None) -> None:
        super().__init__(loader, episodes, device)

    @property
    def loader(self) -> Any:
        """The torchmeta loader (the stream's source)."""
        return self.source

    def convert(self) -> Iterator[Episode]:
        for batch in self.source:
            yield from episodes_from_torchmeta(batch)


# ---------------------------------------------------------------------------- class dataset
_LAZY_CLASSES = ("FewShotClassDataset", "_FewShotClassItems")


def _build_classes() -> None:
    tm_data = importlib.import_module("torchmeta.utils.data")

    class _FewShotClassItems(tm_data.Dataset):
        """The items of one class, as torchmeta's per-class ``Dataset``."""

        def __init__(
            self,
            index: int,
            source: Any,
            items: np.ndarray,
            class_id: int,
            transform: Any = None,
            target_transform: Any = None,
        ) -> None:
            super().__init__(index, transform=transform, target_transform=target_transform)
            self.source = source
            self.items = items
            self.class_id = int(class_id)

        def __len__(self) -> int:
            return int(len(self.items))

        def __getitem__(self, i: int) -> Tuple[Any, Any]:
            image = self.source.load(np.asarray([self.items[i]], dtype=np.int64))[0]
            target: Any = self.class_id
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return image, target

    class FewShotClassDataset(tm_data.ClassDataset):
        """A :class:`~mmnet_plugin.data.FewShotDataset` as a torchmeta ``ClassDataset``.

        Item ``c`` is the data set of class ``c`` (its images in dataset order, each
        ``(image [C, H, W] float tensor, target)``), so torchmeta's
        ``CombinationMetaDataset``, ``ClassSplitter``, ``Categorical`` and
        ``BatchMetaDataLoader`` draw from it as from torchmeta's own data sets. Targets
        follow torchmeta's convention: the class index, through
        ``get_target_transform`` (``(class, augmentation)``).

        Args:
            dataset: anything with ``targets`` and ``load(indices)`` (every
                :class:`~mmnet_plugin.data.FewShotDataset`).
            meta_split: ``train``, ``val`` or ``test`` (torchmeta requires one; default:
                the data set's ``split`` if it is one of those, else ``train``).
            transform: applied to each image tensor.
            class_augmentations: torchmeta class augmentations (e.g. ``[Rotation([90])]``).

        Raises:
            ValueError: if ``dataset`` has no ``targets``/``load`` or an empty class.
        """

        def __init__(
            self,
            dataset: Any,
            meta_split: Optional[str] = None,
            transform: Any = None,
            class_augmentations: Optional[list] = None,
        ) -> None:
            if not hasattr(dataset, "targets") or not hasattr(dataset, "load"):
                raise ValueError(
                    f"{type(dataset).__name__} has no `targets` and `load(indices)`; wrap it with "
                    "mmnet_plugin.data.as_episode_source(dataset) first"
                )
            if meta_split is None:
                own = str(getattr(dataset, "split", "train"))
                meta_split = own if own in ("train", "val", "test") else "train"
            super().__init__(meta_split=meta_split, class_augmentations=class_augmentations)
            self.source = dataset
            self.transform = transform
            targets = np.asarray(dataset.targets, dtype=np.int64)
            classes, inverse = np.unique(targets, return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            counts = np.bincount(inverse, minlength=len(classes))
            self._class_ids = classes
            self._members = np.split(order, np.cumsum(counts)[:-1])

        @property
        def num_classes(self) -> int:
            return int(len(self._class_ids))

        def __getitem__(self, index: int) -> Any:
            index = int(index)
            c = index % self.num_classes
            return _FewShotClassItems(
                index,
                self.source,
                self._members[c],
                int(self._class_ids[c]),
                transform=self.get_transform(index, self.transform),
                target_transform=self.get_target_transform(index),
            )

    for cls in (_FewShotClassItems, FewShotClassDataset):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls


def __getattr__(name: str) -> Any:
    """Build the torchmeta-derived classes on first use (after patching torchmeta)."""
    if name in _LAZY_CLASSES:
        _require_torchmeta()
        _build_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
