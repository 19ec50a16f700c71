"""Common ground of the data sets: the episode-source interface and the data root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..episodes import integer_labels

__all__ = [
    "FewShotDataset",
    "TensorFewShotDataset",
    "as_episode_source",
    "resolve_data_root",
    "DataNotFoundError",
    "DataCorruptError",
]


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not where they are expected; the message says where and how."""


class DataCorruptError(ValueError):
    """A data set's files are there but incomplete or broken; the message names the files."""


def resolve_data_root(data_root: Union[str, os.PathLike, None] = None) -> Optional[Path]:
    """The data root: the argument, else ``$MMNET_DATA_ROOT``, else ``None``."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get("MMNET_DATA_ROOT", "")
    return Path(env).expanduser() if env else None


class FewShotDataset(Dataset):
    """A labelled image data set that episodes are drawn from.

    Subclasses set ``targets`` (``np.ndarray`` of int64 class indices ``0..num_classes-1``,
    one per item) and ``class_names``, and implement :meth:`load`. Items are also available
    one by one as ``(image [C, H, W] float32, class index)``, so the data sets plug into
    learn2learn, torchmeta-style and easyfsl samplers unchanged.
    """

    targets: np.ndarray
    class_names: Sequence[str]

    def load(self, indices: np.ndarray) -> torch.Tensor:
        """Images of ``indices`` as one float32 tensor ``[n, C, H, W]`` in ``[0, 1]``."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(len(self.targets))

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if not -len(self) <= int(index) < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = int(index) % len(self)
        return self.load(np.asarray([index]))[0], int(self.targets[index])

    def get_labels(self) -> list:
        """Class index of every item (the name easyfsl's ``TaskSampler`` asks for)."""
        return self.targets.tolist()


class TensorFewShotDataset(FewShotDataset):
    """A data set held in memory as one uint8 or float tensor ``[n, C, H, W]``.

    Args:
        images: ``[n, C, H, W]``; uint8 images are scaled to ``[0, 1]`` on load.
        targets: class index per item.
        class_names: one name per class index (default: the index as text).
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int], class_names: Optional[Sequence[str]] = None):
        if images.dim() != 4:
            raise ValueError(f"images must be [n, C, H, W]; got shape {tuple(images.shape)}")
        self.images = images
        self.targets = integer_labels(targets, "targets").astype(np.int64)
        if len(self.targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(self.targets)} targets")
        n_cls = int(self.targets.max()) + 1 if len(self.targets) else 0
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(n_cls)]

    def load(self, indices: np.ndarray) -> torch.Tensor:
        x = self.images[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class _WrappedSource(FewShotDataset):
    def __init__(self, dataset: Any, targets: Sequence[int]):
        self.dataset = dataset
        self.targets = integer_labels(targets, "targets").astype(np.int64)
        self.class_names = [str(c) for c in sorted(set(self.targets.tolist()))]

    def load(self, indices: np.ndarray) -> torch.Tensor:
        images = []
        for i in np.asarray(indices).tolist():
            x = self.dataset[i][0]
            images.append(torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x)
        out = torch.stack(images)
        if out.dim() == 3:
            out = out.unsqueeze(1)
        return out.float()


def as_episode_source(dataset: Any, targets: Optional[Sequence[int]] = None) -> FewShotDataset:
    """Wrap any ``(image tensor, label)`` data set so the sampler can draw from it.

    Args:
        dataset: indexable, ``dataset[i] -> (image, label)`` with a ``[C, H, W]`` tensor.
        targets: the label of every item; read from ``dataset.targets`` or by indexing
            every item when omitted.

    Raises:
        ValueError: if the items are not ``(image, label)`` pairs.
    """
    if hasattr(dataset, "targets") and hasattr(dataset, "load"):
        return dataset
    if targets is None:
        targets = getattr(dataset, "targets", None)
    if targets is None:
        try:
            targets = [int(dataset[i][1]) for i in range(len(dataset))]
        except (TypeError, IndexError) as exc:
            raise ValueError("dataset items must be (image, label) pairs to draw episodes from them") from exc
    return _WrappedSource(dataset, [int(t) for t in targets])
