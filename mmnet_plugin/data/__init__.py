"""Data sets episodes are drawn from: real Omniglot and miniImageNet from local files, and
``glyphs``, an embedded procedurally generated data set that needs no files."""

from __future__ import annotations

import os
from typing import Any, Union

from .base import (
    DataCorruptError,
    DataNotFoundError,
    FewShotDataset,
    TensorFewShotDataset,
    as_episode_source,
    resolve_data_root,
)

__all__ = [
    "DATASETS",
    "DataCorruptError",
    "DataNotFoundError",
    "FewShotDataset",
    "TensorFewShotDataset",
    "as_episode_source",
    "load_dataset",
    "resolve_data_root",
]

DATASETS = ("glyphs", "omniglot", "miniimagenet")


def load_dataset(
    name: str,
    split: str = "train",
    data_root: Union[str, os.PathLike, None] = None,
    **kwargs: Any,
) -> FewShotDataset:
    """Load one split of a data set by name.

    Args:
        name: ``glyphs``, ``omniglot`` or ``miniimagenet``.
        split: ``train``, ``val``, ``test`` or ``trainval`` (Omniglot also takes the Lake
            split's ``background`` and ``evaluation``).
        data_root: folder holding ``omniglot/`` and ``miniimagenet/``; default
            ``$MMNET_DATA_ROOT``. Not used by ``glyphs``.
        **kwargs: passed to the data set (e.g. ``image_size``, ``cache_dir``, ``seed``;
            ``layout`` for miniImageNet: ``csv``, ``pickle`` or ``hdf5``, default detected).

    Raises:
        ValueError: for an unknown name or split.
        DataNotFoundError: when the files are missing; the message says where they are
            expected and how to get them.
    """
    key = name.lower().strip()
    layout = kwargs.pop("layout", None)
    if layout is not None and key != "miniimagenet":
        raise ValueError(f"--layout {layout} names a miniImageNet file layout; {name} has none")
    if key == "glyphs":
        from .glyphs import Glyphs

        kwargs.pop("cache_dir", None)  # generated in memory: nothing to cache on disk
        return Glyphs(split=split, **kwargs)
    if key == "omniglot":
        from .omniglot import Omniglot

        return Omniglot(root=data_root, split=split, **kwargs)
    if key == "miniimagenet":
        from .miniimagenet import MiniImageNet

        return MiniImageNet(root=data_root, split=split, layout=layout, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
