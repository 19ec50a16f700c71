"""torchmeta adapter and compatibility step, on torchmeta's own meta-datasets and loaders."""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections import OrderedDict
from typing import Dict

import numpy as np
import pytest
import torch

from mmnet_plugin.data import TensorFewShotDataset
from mmnet_plugin.episodes import Episode
from mmnet_plugin.integrations import torchmeta as tm_adapter
from mmnet_plugin.integrations.torchmeta import KNOWN_VERSIONS, episodes_from_torchmeta, patch_torchmeta


def _required() -> bool:
    return "1" in (os.environ.get("MMNET_REQUIRE_FRAMEWORKS"), os.environ.get("MMNET_REQUIRE_DATA"))


@pytest.fixture(scope="module", autouse=True)
def _torchmeta():
    try:
        importlib.metadata.version("torchmeta")
    except importlib.metadata.PackageNotFoundError:
        if _required():
            pytest.fail("torchmeta is required in this environment but not installed", pytrace=False)
        pytest.skip("torchmeta not installed")
    patch_torchmeta()
    yield


N_CLASSES, PER_CLASS, SIDE = 8, 7, 4


def _item_of(image: torch.Tensor) -> int:
    return int(round(float(image.reshape(-1)[0])))


@pytest.fixture(scope="module")
def dataset() -> TensorFewShotDataset:
    n = N_CLASSES * PER_CLASS
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, SIDE, SIDE).contiguous()
    targets = np.random.default_rng(2).permutation(np.repeat(np.arange(N_CLASSES), PER_CLASS))
    return TensorFewShotDataset(images, targets)


def _meta(dataset, ways: int, shots: int, queries: int, shuffle: bool = True, keys=("train", "test")):
    from torchmeta.transforms import Categorical, ClassSplitter
    from torchmeta.utils.data import CombinationMetaDataset

    split = {keys[0]: shots, keys[1]: queries}
    return CombinationMetaDataset(
        tm_adapter.FewShotClassDataset(dataset),
        num_classes_per_task=ways,
        target_transform=Categorical(ways),
        dataset_transform=ClassSplitter(shuffle=shuffle, num_samples_per_class=OrderedDict(split)),
    )


def _labels_match_classes(ep: Episode, dataset) -> Dict[int, int]:
    label_class: Dict[int, int] = {}
    items = []
    for x, y in list(zip(ep.support_x, ep.support_y)) + list(zip(ep.query_x, ep.query_y)):
        items.append(_item_of(x))
        cls = int(dataset.targets[items[-1]])
        assert label_class.setdefault(int(y), cls) == cls
    assert len(set(label_class.values())) == len(label_class) == ep.n_way
    assert len(set(items)) == len(items)
    return label_class


# ------------------------------------------------------------------ the compatibility step
# That each patched breakage is real, and that the patch leaves what is present alone, is
# checked in a fresh interpreter by tests/integrations/test_examples.py::test_fresh_interpreter.
def test_patch_is_idempotent():
    import torchvision.datasets.utils as tv_utils
    from torchmeta.utils.data.task import SubsetTask

    getitems = SubsetTask.__dict__["__getitems__"]
    token = tv_utils._get_confirm_token
    assert patch_torchmeta() == ()
    assert patch_torchmeta() == ()
    assert SubsetTask.__dict__["__getitems__"] is getitems
    assert tv_utils._get_confirm_token is token


def test_unknown_version_is_refused_with_a_clear_message(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.9.0" if name == "torchmeta" else real(name))
    with pytest.raises(RuntimeError, match=r"torchmeta 1\.9\.0 is installed.*allow_unknown_version=True"):
        patch_torchmeta()
    assert patch_torchmeta(allow_unknown_version=True) == ()
    assert "1.8.0" in KNOWN_VERSIONS


def test_missing_torchmeta_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(ImportError, match=r"pip install --no-deps torchmeta==1\.8\.0"):
        patch_torchmeta()


# ------------------------------------------------------------------ torchmeta's own pipeline
def test_batchmetadataloader_batch_becomes_episodes(dataset):
    from torchmeta.utils.data import BatchMetaDataLoader

    meta = _meta(dataset, ways=3, shots=2, queries=4)
    loader = BatchMetaDataLoader(meta, batch_size=4, shuffle=True, num_workers=0)
    batch = next(iter(loader))
    assert batch["train"][0].shape == (4, 3 * 2, 1, SIDE, SIDE)
    eps = episodes_from_torchmeta(batch)
    assert len(eps) == 4
    for ep in eps:
        assert ep.shots.tolist() == [2, 2, 2]
        assert torch.bincount(ep.query_y).tolist() == [4, 4, 4]
        _labels_match_classes(ep, dataset)


def test_support_query_keys(dataset):
    from torchmeta.utils.data import BatchMetaDataLoader

    meta = _meta(dataset, ways=2, shots=1, queries=3, keys=("support", "query"))
    batch = next(iter(BatchMetaDataLoader(meta, batch_size=2)))
    assert set(batch) == {"support", "query"}
    eps = episodes_from_torchmeta(batch)
    assert [ep.query_x.shape[0] for ep in eps] == [6, 6]


def test_episode_equals_the_same_draw_made_directly(dataset):
    """torchmeta's loader for given class tuples == an Episode built from the dataset by hand."""
    from torchmeta.utils.data import BatchMetaDataLoader

    meta = _meta(dataset, ways=3, shots=2, queries=3, shuffle=False)
    tuples = [(5, 0, 3), (1, 7, 2)]
    loader = BatchMetaDataLoader(meta, batch_size=2, shuffle=False, sampler=tuples)
    eps = episodes_from_torchmeta(next(iter(loader)))
    for ep, classes in zip(eps, tuples):
        label_class = _labels_match_classes(ep, dataset)
        assert sorted(label_class.values()) == sorted(classes)
        # unshuffled ClassSplitter: the first 2 items of each class (dataset order) are
        # support, the next 3 query, classes in tuple order
        members = [np.flatnonzero(dataset.targets == c) for c in classes]
        sup_items = np.concatenate([m[:2] for m in members])
        qry_items = np.concatenate([m[2:5] for m in members])
        assert torch.equal(ep.support_x, dataset.load(sup_items))
        assert torch.equal(ep.query_x, dataset.load(qry_items))


def test_torchmeta_helpers_and_class_augmentations(tmp_path):
    """torchmeta's own Omniglot helper (Resize, ToTensor, Rotation, ClassSplitter) on a tiny
    data set in its HDF5 layout."""
    h5py = pytest.importorskip("h5py")
    from torchmeta.datasets import helpers
    from torchmeta.utils.data import BatchMetaDataLoader

    folder = tmp_path / "omniglot"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [["images_background", "Alpha", f"character{i:02d}"] for i in range(1, 5)]
    with h5py.File(folder / "data.hdf5", "w") as f:
        for name in names:
            f.create_dataset("/".join(name), data=(rng.random((4, 20, 20)) * 255).astype("uint8"))
    (folder / "vinyals_train_labels.json").write_text(json.dumps(names))
    meta = helpers.omniglot(str(tmp_path), shots=1, ways=3, test_shots=2, meta_train=True)
    assert len(meta.dataset) == 4 * 4  # four rotations of four characters
    batch = next(iter(BatchMetaDataLoader(meta, batch_size=2, shuffle=True)))
    eps = episodes_from_torchmeta(batch)
    assert [tuple(ep.support_x.shape) for ep in eps] == [(3, 1, 28, 28)] * 2
    assert all(ep.n_way == 3 and ep.query_x.shape[0] == 6 for ep in eps)


def test_loader_workers_and_stream(dataset):
    from torchmeta.utils.data import BatchMetaDataLoader

    meta = _meta(dataset, ways=2, shots=1, queries=2)
    loader = BatchMetaDataLoader(meta, batch_size=3, num_workers=1)
    stream = tm_adapter.TorchmetaEpisodes(loader, episodes=5)
    eps = list(stream)
    assert len(eps) == 5 and all(isinstance(e, Episode) for e in eps)


def test_mmnet_trains_on_a_torchmeta_batch():
    from torchmeta.utils.data import BatchMetaDataLoader

    from mmnet_plugin.models import MMNet

    gen = torch.Generator().manual_seed(0)
    ds = TensorFewShotDataset(torch.rand(5 * 4, 1, 16, 16, generator=gen), np.repeat(np.arange(5), 4))
    batch = next(iter(BatchMetaDataLoader(_meta(ds, ways=2, shots=1, queries=2), batch_size=2)))
    model = MMNet(in_channels=1, image_size=16, dm=8, dr=8)
    loss = model.loss(episodes_from_torchmeta(batch))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.blocks[0][0].weight.grad is not None


# ------------------------------------------------------------------ wrong input
def _batch(sy, qy, b=1):
    sy = torch.as_tensor(sy).view(b, -1)
    qy = torch.as_tensor(qy).view(b, -1)
    return {"train": (torch.zeros(b, sy.shape[1], 1, 2, 2), sy), "test": (torch.zeros(b, qy.shape[1], 1, 2, 2), qy)}


@pytest.mark.parametrize(
    "batch, match",
    [
        ({"train": (torch.zeros(1, 2, 1, 2, 2), torch.tensor([[0, 1]]))}, "ClassSplitter"),
        ({"foo": 1, "bar": 2}, r"has keys \['foo', 'bar'\]"),
        ([torch.zeros(1)], "mapping"),
        (_batch([3, 4], [3, 4]), "Categorical"),  # labels not 0..C-1
        (_batch([0, 0], [0, 1]), "query label 1 is outside"),  # a query class with no support
        (
            {
                "train": (torch.zeros(1, 2, 1, 2, 2), [torch.tensor([[5, 6]]), torch.tensor([[0, 0]])]),
                "test": (torch.zeros(1, 2, 1, 2, 2), torch.tensor([[0, 1]])),
            },
            "Categorical",
        ),  # tuple targets
        (
            {
                "train": (torch.zeros(2, 2, 1, 2, 2), torch.tensor([[0, 1], [0, 1]])),
                "test": (torch.zeros(1, 2, 1, 2, 2), torch.tensor([[0, 1]])),
            },
            "same tasks",
        ),
        (
            {
                "train": (torch.zeros(1, 3, 1, 2, 2), torch.tensor([[0, 1]])),
                "test": (torch.zeros(1, 2, 1, 2, 2), torch.tensor([[0, 1]])),
            },
            r"\[B, N\]",
        ),
        ({"train": torch.zeros(1, 2), "test": torch.zeros(1, 2)}, r"\(inputs, targets\)"),
    ],
)
def test_bad_torchmeta_batch_names_the_convention(batch, match):
    with pytest.raises(ValueError, match=match):
        episodes_from_torchmeta(batch)


def test_unsplit_dataset_is_refused(dataset):
    """Without a ClassSplitter a torchmeta batch has no train/test keys."""
    from torchmeta.transforms import Categorical
    from torchmeta.utils.data import BatchMetaDataLoader, CombinationMetaDataset

    meta = CombinationMetaDataset(tm_adapter.FewShotClassDataset(dataset), 2, target_transform=Categorical(2))
    batch = next(iter(BatchMetaDataLoader(meta, batch_size=1)))
    with pytest.raises(ValueError, match="ClassSplitter"):
        episodes_from_torchmeta(batch)


def test_class_dataset_needs_an_episode_source():
    with pytest.raises(ValueError, match="as_episode_source"):
        tm_adapter.FewShotClassDataset([(torch.zeros(1, 2, 2), 0)])
