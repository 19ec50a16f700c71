"""learn2learn adapter: what a ``TaskDataset`` / ``Taskset`` yields, as :class:`Episode`.

A learn2learn task is ``(data, labels)``: ``data [n, C, H, W]`` and ``labels [n]``, with
the support and query items of each class mixed in one list, as
``learn2learn.data.partition_task`` expects. The split is ``partition_task``'s: for each
label, the first ``shots`` items in the order the task lists them are support, the rest are
query, and every class must have the same number of items (``KShots(dataset, k=shots +
queries)`` or ``FusedNWaysKShots(dataset, n=ways, k=shots + queries)`` gives that).
Items keep the task's order within the support and within the query set (so a task made
without ``ConsecutiveLabels`` keeps its shuffled order).

Labels must already be ``0..C-1`` (``RemapLabels(dataset)`` among the task transforms). The
``TasksetSampler`` + ``DataLoader`` route (``learn2learn.data.samplers.TasksetSampler``)
loads items straight from the dataset and so bypasses the task transforms: pass
``remap=True`` there, which maps the dataset labels to ``0..C-1`` in order of first
appearance and keeps them as the episode's ``class_ids``. A ``DataLoader(taskset,
batch_size=B)`` batch has a leading batch dimension (``data [B, n, C, H, W]``, ``labels [B,
n]``); :func:`episode_from_learn2learn` takes ``B = 1``, :func:`episodes_from_learn2learn`
any ``B``.

Example::

    import learn2learn as l2l
    from mmnet_plugin.integrations.learn2learn import episode_from_learn2learn, meta_dataset

    dataset = meta_dataset(my_few_shot_dataset)        # or l2l.data.MetaDataset(...)
    taskset = l2l.data.Taskset(dataset, task_transforms=[
        l2l.data.transforms.FusedNWaysKShots(dataset, n=5, k=1 + 15),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
    ])
    episode = episode_from_learn2learn(taskset.sample(), shots=1)
    loss = mmnet.loss(episode)

Importing this module does not import learn2learn; only :func:`meta_dataset` needs it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..episodes import Episode
from . import require
from .stream import EpisodeStream

__all__ = [
    "episode_from_learn2learn",
    "episodes_from_learn2learn",
    "TasksetEpisodes",
    "meta_dataset",
]

_FRAMEWORK = "learn2learn"


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except Exception:
        raise ValueError(
            f"learn2learn task: {what} must be a tensor; got {type(value).__name__} "
            "(a task is (data, labels) as TaskDataset.sample() returns it)"
        ) from None


def _unpack(task: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(task, dict) or not isinstance(task, (list, tuple)) or len(task) < 2:
        raise ValueError(
            f"learn2learn task must be a (data, labels) pair as TaskDataset.sample() returns it; "
            f"got {type(task).__name__}" + (f" of length {len(task)}" if isinstance(task, (list, tuple)) else "")
        )
    if len(task) > 2:
        raise ValueError(
            f"learn2learn task has {len(task)} parts; this adapter takes (data, labels), the "
            "TaskDataset convention with LoadData on an (image, label) dataset"
        )
    return _as_tensor(task[0], "data"), _as_tensor(task[1], "labels")


def _check_shots(shots: int) -> int:
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or int(shots) < 1:
        raise ValueError(f"shots must be a positive integer (support images per class); got {shots!r}")
    return int(shots)


def _split_one(data: torch.Tensor, labels: torch.Tensor, shots: int, remap: bool) -> Episode:
    if labels.dim() != 1:
        raise ValueError(f"learn2learn task labels must be 1-D [n]; got shape {tuple(labels.shape)}")
    if data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"learn2learn task has {data.shape[0]} data items but {labels.shape[0]} labels; "
            "(data, labels) must match one to one, as partition_task requires"
        )
    if torch.is_floating_point(labels):
        if not torch.equal(labels, labels.round()):
            raise ValueError("learn2learn task labels must be integer class labels; got non-integer values")
    lab = labels.detach().to("cpu", torch.long)
    # Distinct labels in order of first appearance.
    first: Dict[int, int] = {}
    for v in lab.tolist():
        if v not in first:
            first[v] = len(first)
    seen = list(first)
    class_ids: Optional[List[int]] = None
    if remap:
        class_ids = seen
        lab = torch.as_tensor([first[v] for v in lab.tolist()], dtype=torch.long)
    elif sorted(seen) != list(range(len(seen))):
        shown = sorted(seen)[:10]
        raise ValueError(
            f"learn2learn task labels {shown}{' ...' if len(seen) > 10 else ''} are not 0..{len(seen) - 1}: "
            "the learn2learn convention is to remap them with "
            "l2l.data.transforms.RemapLabels(dataset) among the task transforms; for the "
            "TasksetSampler + DataLoader route, which bypasses task transforms, pass remap=True"
        )
    n_way = len(seen)
    counts = torch.bincount(lab, minlength=n_way)
    per_class = int(counts[0])
    if not bool((counts == per_class).all()):
        raise ValueError(
            f"learn2learn task has unequal items per class ({counts.tolist()} for labels 0..{n_way - 1}); "
            "partition_task needs the same number for every class: use "
            "KShots(dataset, k=shots + queries) or FusedNWaysKShots(dataset, n=ways, k=shots + queries)"
        )
    if per_class <= shots:
        raise ValueError(
            f"learn2learn task has {per_class} items per class, which does not split into {shots} "
            f"support + at least 1 query: sample k = shots + queries per class "
            f"(KShots(dataset, k={shots} + queries)), or lower shots"
        )
    # partition_task's split: per label, the first `shots` items in task order are support.
    rank = torch.empty_like(lab)
    running = torch.zeros(n_way, dtype=torch.long)
    for i, v in enumerate(lab.tolist()):
        rank[i] = running[v]
        running[v] += 1
    is_support = rank < shots
    s_idx = torch.nonzero(is_support).view(-1)
    q_idx = torch.nonzero(~is_support).view(-1)
    dev = data.device
    try:
        return Episode(
            support_x=data[s_idx.to(dev)],
            support_y=lab[s_idx].to(dev),
            query_x=data[q_idx.to(dev)],
            query_y=lab[q_idx].to(dev),
            class_ids=class_ids,
        )
    except ValueError as exc:
        raise ValueError(f"learn2learn task does not make a valid episode: {exc}") from exc


def episode_from_learn2learn(task: Any, shots: int, remap: bool = False) -> Episode:
    """Turn one learn2learn task into an :class:`Episode`.

    Args:
        task: ``(data, labels)`` as ``TaskDataset.sample()`` / ``taskset[i]`` returns it
            (``data [n, C, H, W]``, ``labels [n]``), or a ``DataLoader(taskset,
            batch_size=1)`` batch (``[1, n, C, H, W]``, ``[1, n]``).
        shots: support images per class; the remaining items of each class are queries.
        remap: map dataset labels to ``0..C-1`` in order of first appearance (for routes
            that bypass ``RemapLabels``, such as ``TasksetSampler`` + ``DataLoader``); the
            dataset labels become the episode's ``class_ids``.

    Returns:
        The episode; images and labels stay on the task's device.

    Raises:
        ValueError: if the task breaks a learn2learn convention: not a ``(data, labels)``
            pair, labels not remapped to ``0..C-1``, unequal items per class, not more
            items per class than ``shots``, or a batch of more than one task. The message
            names the convention.
    """
    shots = _check_shots(shots)
    data, labels = _unpack(task)
    if labels.dim() == 2:
        if labels.shape[0] != 1:
            raise ValueError(
                f"learn2learn batch holds {labels.shape[0]} tasks; episode_from_learn2learn takes one "
                "(DataLoader(taskset, batch_size=1)); use episodes_from_learn2learn for a batch"
            )
        if data.shape[0] != 1:
            raise ValueError(
                f"learn2learn batch: labels have a leading batch dimension of 1 but data has "
                f"{data.shape[0]}; both come from the same DataLoader batch"
            )
        data, labels = data[0], labels[0]
    return _split_one(data, labels, shots, remap)


def episodes_from_learn2learn(batch: Any, shots: int, remap: bool = False) -> List[Episode]:
    """Turn a batch of learn2learn tasks into a list of episodes.

    Args:
        batch: a ``DataLoader(taskset, batch_size=B)`` batch (``data [B, n, C, H, W]``,
            ``labels [B, n]``), a single task ``(data [n, ...], labels [n])`` (one episode),
            or a sequence of tasks.
        shots: support images per class.
        remap: see :func:`episode_from_learn2learn`.

    Returns:
        One episode per task, in batch order.

    Raises:
        ValueError: as :func:`episode_from_learn2learn`, or if data and labels disagree on
            the batch size.
    """
    shots = _check_shots(shots)
    if isinstance(batch, (list, tuple)) and len(batch) > 0 and isinstance(batch[0], (list, tuple)):
        return [episode_from_learn2learn(t, shots, remap) for t in batch]
    data, labels = _unpack(batch)
    if labels.dim() == 1:
        return [_split_one(data, labels, shots, remap)]
    if labels.dim() != 2:
        raise ValueError(f"learn2learn batch labels must be [B, n] or [n]; got shape {tuple(labels.shape)}")
    if data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"learn2learn batch: data holds {data.shape[0]} tasks but labels {labels.shape[0]}; "
            "both must come from the same DataLoader(taskset, batch_size=B) batch"
        )
    out = []
    for b in range(labels.shape[0]):
        try:
            out.append(_split_one(data[b], labels[b], shots, remap))
        except ValueError as exc:
            raise ValueError(f"task {b} of the batch: {exc}") from exc
    return out


class TasksetEpisodes(EpisodeStream):
    """A learn2learn taskset (or loader of tasks) as a stream of episodes, for the trainer.

    With a ``TaskDataset`` / ``Taskset`` (anything with ``sample()``), each episode is
    ``episode_from_learn2learn(taskset.sample(), shots)``: endless unless ``episodes`` is
    given. Any other iterable (a ``DataLoader`` over a taskset, or over a ``MetaDataset``
    with a ``TasksetSampler``) is iterated once, each batch giving one episode per task.

    Args:
        source: the taskset, or an iterable of tasks / task batches.
        shots: support images per class.
        episodes: stop after this many episodes (``None``: as long as the source lasts).
        remap: see :func:`episode_from_learn2learn`.
        device: move each episode there (``None``: leave it where the task is).

    Raises:
        ValueError: for a non-positive ``shots`` or ``episodes``; while iterating, as
            :func:`episode_from_learn2learn` for a task that breaks a convention.
    """

    def __init__(
        self,
        source: Any,
        shots: int,
        episodes: Optional[int] = None,
        remap: bool = False,
        device: Optional[str] = None,
    ) -> None:
        self.shots = _check_shots(shots)
        super().__init__(source, episodes, device)
        self.remap = bool(remap)

    def convert(self) -> Iterator[Episode]:
        sample = getattr(self.source, "sample", None)
        if callable(sample):
            while True:
                yield episode_from_learn2learn(sample(), self.shots, self.remap)
        else:
            for batch in self.source:
                yield from episodes_from_learn2learn(batch, self.shots, self.remap)

    def __len__(self) -> int:
        if self.episodes is not None:
            return self.episodes
        raise TypeError("TasksetEpisodes without `episodes` has no length (a taskset is endless)")

    def sample_batch(self, n: int) -> List[Episode]:
        """Draw ``n`` episodes from a taskset (one ``sample()`` each).

        Raises:
            TypeError: if the source has no ``sample()``.
        """
        sample = getattr(self.source, "sample", None)
        if not callable(sample):
            raise TypeError("sample_batch needs a taskset with sample(); iterate over other sources")
        eps = [episode_from_learn2learn(sample(), self.shots, self.remap) for _ in range(int(n))]
        return eps if self.device is None else [e.to(self.device) for e in eps]


def meta_dataset(dataset: Any, targets: Optional[Sequence[int]] = None) -> Any:
    """Wrap an ``(image, label)`` dataset in ``learn2learn.data.MetaDataset`` without reading it.

    ``MetaDataset`` normally indexes every item once to learn the labels, which decodes
    every image; this passes ``labels_to_indices`` built from the dataset's ``targets``
    (every :class:`~mmnet_plugin.data.FewShotDataset` has them) instead.

    Args:
        dataset: indexable ``dataset[i] -> (image, label)``.
        targets: the label of every item; default ``dataset.targets``, else learn2learn
            reads them item by item.

    Returns:
        A ``learn2learn.data.MetaDataset``.

    Raises:
        ImportError: if learn2learn is not installed (the message gives the install command).
        ValueError: if ``targets`` does not have one label per item.
    """
    l2l_data = require("learn2learn.data")
    if targets is None:
        targets = getattr(dataset, "targets", None)
    if targets is None:
        return l2l_data.MetaDataset(dataset)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(t) != len(dataset):
        raise ValueError(f"targets has {len(t)} labels but the dataset has {len(dataset)} items")
    labels_to_indices: Dict[int, List[int]] = {}
    for i, v in enumerate(t.tolist()):
        labels_to_indices.setdefault(int(v), []).append(i)
    return l2l_data.MetaDataset(dataset, labels_to_indices=labels_to_indices)
