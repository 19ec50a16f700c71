"""easyfsl adapter: MM-Net as an easyfsl ``FewShotClassifier``, and the 5-tuple as an Episode.

easyfsl's ``TaskSampler`` with ``collate_fn=sampler.episodic_collate_fn`` yields
``(support_images, support_labels, query_images, query_labels, true_class_ids)``, labels
``0..n_way-1`` and ``true_class_ids[label]`` the dataset class. :func:`episode_from_easyfsl`
turns that into an :class:`Episode` (with ``class_ids``); :class:`EasyFSLEpisodes` turns an
easyfsl loader into a stream of episodes for the trainer.

``MMNet`` here (built on first access, so importing this module does not import easyfsl)
is an easyfsl ``FewShotClassifier`` around :class:`mmnet_plugin.models.MMNet`:
``process_support_set(support_images, support_labels)`` stores the support set,
``forward(query_images)`` returns ``[n_query, n_way]`` class scores (the argmax is MM-Net's
prediction), so ``easyfsl.utils.evaluate`` and easyfsl-style training loops work unchanged.
Training with ``nn.CrossEntropyLoss()(model(query_images), query_labels)`` as easyfsl's
loops do works; :meth:`MMNet.episode_loss` gives the paper's loss (Eq. 8) instead.

**Compatibility step.** easyfsl 1.5.0's ``TaskSampler.__init__`` calls
``Sampler.__init__(data_source=None)``, an argument current torch removed (``TypeError:
object.__init__() takes exactly one argument``), so the sampler cannot even be built.
:func:`patch_easyfsl` fixes exactly that: it puts a one-line base class between
``TaskSampler`` and ``torch.utils.data.Sampler`` whose ``__init__`` accepts (and ignores)
``data_source``, as older torch did; easyfsl's own code is not changed. It applies only when
the breakage is present, is idempotent, and refuses easyfsl versions it does not know unless
``allow_unknown_version=True``. Accessing ``MMNet`` applies it too (for known versions).

easyfsl's collate lists the support set class by class; MM-Net writes its memory in the
order given, so for training build it with ``shuffle_support=True`` (the model then
shuffles the write order with its own seeded generator).

Example::

    from easyfsl.samplers import TaskSampler
    from easyfsl.utils import evaluate
    from mmnet_plugin.integrations.easyfsl import MMNet

    sampler = TaskSampler(dataset, n_way=5, n_shot=1, n_query=15, n_tasks=100)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn)
    model = MMNet(in_channels=1, image_size=28)
    accuracy = evaluate(model, loader, device="cpu")
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any, Iterator, List, Optional, Tuple

import torch

from ..episodes import Episode
from . import INSTALL_HINTS, require
from .stream import EpisodeStream

# MMNet (the classifier, easyfsl_classifier.MMNetClassifier) is imported on first access, hence F822.
__all__ = ["KNOWN_VERSIONS", "patch_easyfsl", "episode_from_easyfsl", "EasyFSLEpisodes", "MMNet"]  # noqa: F822

#: How easyfsl builds a task (named in error messages).
COLLATE = "TaskSampler.episodic_collate_fn"
_COLLATE = COLLATE

#: easyfsl versions :func:`patch_easyfsl` was written and tested against.
KNOWN_VERSIONS: Tuple[str, ...] = ("1.5.0",)

_PATCH_SAMPLER = "easyfsl.samplers.TaskSampler: base class accepting Sampler.__init__(data_source=None)"
_STATE = {"patched": False}


def _sampler_takes_data_source() -> bool:
    init = torch.utils.data.Sampler.__init__
    if init is object.__init__:
        return False
    try:
        return "data_source" in inspect.signature(init).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic builds
        return True


def patch_easyfsl(allow_unknown_version: bool = False) -> Tuple[str, ...]:
    """Make easyfsl 1.5.0's ``TaskSampler`` constructible on current torch.

    See the module docstring for what is patched and why. Idempotent: a second call
    changes nothing and returns ``()``.

    Args:
        allow_unknown_version: apply the patch to an easyfsl version other than
            :data:`KNOWN_VERSIONS` instead of refusing.

    Returns:
        What this call changed (empty when nothing was needed or it was already done).

    Raises:
        ImportError: if easyfsl is not installed (the message gives the install command).
        RuntimeError: if the installed easyfsl is not a known version and
            ``allow_unknown_version`` is false.
    """
    try:
        version = importlib.metadata.version("easyfsl")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            "this mmnet_plugin adapter needs the 'easyfsl' package, which is not installed. "
            f"Install it with: {INSTALL_HINTS['easyfsl']}"
        ) from None
    if version not in KNOWN_VERSIONS and not allow_unknown_version:
        raise RuntimeError(
            f"patch_easyfsl() knows easyfsl {', '.join(KNOWN_VERSIONS)} but easyfsl {version} is installed; "
            "it was not checked against this version. Install easyfsl==1.5.0, or call "
            "patch_easyfsl(allow_unknown_version=True) to apply the same fix anyway"
        )
    sampler_cls = require("easyfsl.samplers").TaskSampler
    applied: List[str] = []
    if not _sampler_takes_data_source() and not any(
        c.__dict__.get("_mmnet_data_source_shim", False) for c in sampler_cls.__mro__
    ):
        torch_sampler = torch.utils.data.Sampler
        if torch_sampler not in sampler_cls.__bases__:
            raise RuntimeError(
                f"easyfsl {version}'s TaskSampler does not derive from torch.utils.data.Sampler directly; "
                "patch_easyfsl() does not know how to fix this version"
            )

        class _DataSourceSampler(torch_sampler):  # type: ignore[misc, valid-type]
            """``Sampler`` whose ``__init__`` accepts the ``data_source`` argument torch removed."""

            _mmnet_data_source_shim = True

            def __init__(self, data_source: Any = None) -> None:
                pass

        _DataSourceSampler.__module__ = __name__
        sampler_cls.__bases__ = tuple(_DataSourceSampler if b is torch_sampler else b for b in sampler_cls.__bases__)
        applied.append(_PATCH_SAMPLER)
    _STATE["patched"] = True
    return tuple(applied)


def episode_from_easyfsl(batch: Any) -> Episode:
    """Turn one easyfsl task into an :class:`Episode`.

    Args:
        batch: the 5-tuple ``(support_images, support_labels, query_images, query_labels,
            true_class_ids)`` that a ``DataLoader`` with ``batch_sampler=TaskSampler(...)``
            and ``collate_fn=sampler.episodic_collate_fn`` yields (the 4-tuple without class
            ids is accepted too).

    Returns:
        The episode; ``class_ids`` are ``true_class_ids`` when they are integers.

    Raises:
        ValueError: if the batch is not that tuple (e.g. the loader lacks the episodic
            collate function), or breaks easyfsl's conventions (labels not ``0..n_way-1``,
            class ids not one per way); the message names the convention.
    """
    if not isinstance(batch, (list, tuple)) or len(batch) not in (4, 5):
        got = (
            f"a {len(batch)}-item {type(batch).__name__}" if isinstance(batch, (list, tuple)) else type(batch).__name__
        )
        raise ValueError(
            f"easyfsl task must be the 5-tuple (support_images, support_labels, query_images, "
            f"query_labels, class_ids) of {_COLLATE}; got {got}. Build the loader as "
            "DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn)"
        )
    support_x, support_y, query_x, query_y = batch[:4]
    class_ids = batch[4] if len(batch) == 5 else None
    for name, t in (("support_labels", support_y), ("query_labels", query_y)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"easyfsl task {name} must be a tensor, as {_COLLATE} gives; got {type(t).__name__}")
    if support_y.dim() != 1 or support_y.numel() == 0:
        raise ValueError(
            f"easyfsl task support_labels must be a non-empty 1-D tensor [n_way * n_shot]; got shape "
            f"{tuple(support_y.shape)}"
        )
    present = sorted(set(int(v) for v in support_y.unique().tolist()))
    if present != list(range(len(present))):
        raise ValueError(
            f"easyfsl task support_labels {present[:10]} are not 0..{len(present) - 1}: easyfsl's "
            f"convention ({_COLLATE}) is labels 0..n_way-1 with class_ids[label] the dataset class"
        )
    ids: Optional[List[int]] = None
    if class_ids is not None:
        try:
            ids = [int(c) for c in class_ids]
        except (TypeError, ValueError):
            ids = None  # non-integer class ids (e.g. names) are kept out of the episode
        if ids is not None and len(ids) != len(present):
            raise ValueError(
                f"easyfsl task has {len(ids)} class ids for {len(present)} ways; {_COLLATE} gives "
                "one dataset class id per label"
            )
    try:
        return Episode(support_x, support_y, query_x, query_y, class_ids=ids)
    except ValueError as exc:
        raise ValueError(f"easyfsl task does not make a valid episode: {exc}") from exc


class EasyFSLEpisodes(EpisodeStream):
    """An easyfsl task loader as a stream of episodes (for the trainer).

    Args:
        loader: ``DataLoader(dataset, batch_sampler=TaskSampler(...),
            collate_fn=sampler.episodic_collate_fn)`` (any iterable of 5-tuples).
        episodes: stop after this many (``None``: one pass over the loader).
        device: move each episode there (``None``: leave it where it is).

    Raises:
        ValueError: for a non-positive ``episodes``; while iterating, as
            :func:`episode_from_easyfsl`.
    """

    def __init__(self, loader: Any, episodes: Optional[int] = None, device: Optional[str] = None) -> None:
        super().__init__(loader, episodes, device)

    @property
    def loader(self) -> Any:
        """The easyfsl loader (the stream's source)."""
        return self.source

    def convert(self) -> Iterator[Episode]:
        return (episode_from_easyfsl(batch) for batch in self.source)

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.episodes is None else min(n, self.episodes)


def ensure_patched() -> None:
    """Apply :func:`patch_easyfsl` once, leaving an easyfsl version it does not know as it is
    (``patch_easyfsl`` itself says more)."""
    if not _STATE["patched"]:
        try:
            patch_easyfsl()
        except RuntimeError:
            pass


def __getattr__(name: str) -> Any:
    """``MMNet``: :class:`~mmnet_plugin.integrations.easyfsl_classifier.MMNetClassifier`, imported
    on first access so that this module (the episode adapters) does not import easyfsl."""
    if name == "MMNet":
        from .easyfsl_classifier import MMNetClassifier

        globals()["MMNet"] = MMNetClassifier
        return MMNetClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
