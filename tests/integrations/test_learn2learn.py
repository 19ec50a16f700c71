"""learn2learn adapter, on learn2learn's own TaskDataset / Taskset, transforms and samplers."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from mmnet_plugin.data import TensorFewShotDataset
from mmnet_plugin.episodes import Episode
from mmnet_plugin.integrations.learn2learn import (
    TasksetEpisodes,
    episode_from_learn2learn,
    episodes_from_learn2learn,
    meta_dataset,
)


def _framework(name: str):
    """Import a framework; skip without it, or fail where the environment must have it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if "1" in (os.environ.get("MMNET_REQUIRE_FRAMEWORKS"), os.environ.get("MMNET_REQUIRE_DATA")):
            pytest.fail(f"{name} is required in this environment but does not import: {exc}", pytrace=False)
        pytest.skip(f"{name} not installed ({exc})")


l2l = None  # set by the module fixture

# The issue asks for the classic TaskDataset; learn2learn 0.2.0 calls it deprecated (Taskset is
# the same class under its new name).
pytestmark = pytest.mark.filterwarnings("ignore:TaskDataset is deprecated")


@pytest.fixture(scope="module", autouse=True)
def _l2l():
    global l2l
    l2l = _framework("learn2learn")
    yield


N_CLASSES, PER_CLASS, SIDE = 10, 8, 4


def _item_of(image: torch.Tensor) -> int:
    """Our test images are filled with their own dataset index."""
    return int(round(float(image.reshape(-1)[0])))


@pytest.fixture(scope="module")
def dataset() -> TensorFewShotDataset:
    n = N_CLASSES * PER_CLASS
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, SIDE, SIDE).contiguous()
    # class of item i: a fixed shuffle, so classes are not contiguous in the data set
    targets = np.random.default_rng(1).permutation(np.repeat(np.arange(N_CLASSES), PER_CLASS))
    return TensorFewShotDataset(images, targets)


def _taskset(dataset, ways: int, k: int, num_tasks: int = -1, consecutive: bool = False):
    md = meta_dataset(dataset)
    tt = [
        l2l.data.transforms.NWays(md, n=ways),
        l2l.data.transforms.KShots(md, k=k),
        l2l.data.transforms.LoadData(md),
        l2l.data.transforms.RemapLabels(md),
    ]
    if consecutive:
        tt.append(l2l.data.transforms.ConsecutiveLabels(md))
    return md, l2l.data.TaskDataset(md, task_transforms=tt, num_tasks=num_tasks)


def _check_against_dataset(ep: Episode, dataset, ways: int, shots: int, queries: int) -> None:
    """Every label is one dataset class, distinct labels are distinct classes, no item twice."""
    assert ep.n_way == ways
    assert ep.shots.tolist() == [shots] * ways
    assert torch.bincount(ep.query_y, minlength=ways).tolist() == [queries] * ways
    label_class: Dict[int, int] = {}
    items: List[int] = []
    for x, y in list(zip(ep.support_x, ep.support_y)) + list(zip(ep.query_x, ep.query_y)):
        item = _item_of(x)
        items.append(item)
        cls = int(dataset.targets[item])
        assert label_class.setdefault(int(y), cls) == cls
    assert len(set(label_class.values())) == ways
    assert len(set(items)) == len(items)


def _same_episode_up_to_labels(a: Episode, b: Episode) -> None:
    """Same images in the same order, labels equal under one bijection."""
    assert torch.equal(a.support_x, b.support_x)
    assert torch.equal(a.query_x, b.query_x)
    mapping: Dict[int, int] = {}
    for ya, yb in zip(torch.cat([a.support_y, a.query_y]).tolist(), torch.cat([b.support_y, b.query_y]).tolist()):
        assert mapping.setdefault(ya, yb) == yb
    assert len(set(mapping.values())) == len(mapping)


# ------------------------------------------------------------------ the sampler's own output
def test_taskdataset_sample_becomes_episode(dataset):
    _, tasks = _taskset(dataset, ways=3, k=2 + 4)
    for _ in range(5):
        ep = episode_from_learn2learn(tasks.sample(), shots=2)
        _check_against_dataset(ep, dataset, ways=3, shots=2, queries=4)
        assert ep.class_ids is None  # RemapLabels hides the dataset classes


def test_split_is_partition_tasks(dataset):
    _, tasks = _taskset(dataset, ways=4, k=3 + 2, consecutive=True)
    data, labels = tasks.sample()
    ep = episode_from_learn2learn((data, labels), shots=3)
    (sx, sy), (qx, qy) = l2l.data.partition_task(data, labels, shots=3)
    for c in range(4):
        assert torch.equal(ep.support_x[ep.support_y == c], sx[sy == c])
        assert torch.equal(ep.query_x[ep.query_y == c], qx[qy == c])


def test_split_keeps_task_order_without_consecutive_labels():
    # labels interleaved: the first `shots` occurrences of each label are support
    data = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 2, 2)
    labels = torch.tensor([1, 0, 0, 1, 1, 0, 0, 1])
    ep = episode_from_learn2learn((data, labels), shots=2)
    assert [_item_of(x) for x in ep.support_x] == [0, 1, 2, 3]
    assert ep.support_y.tolist() == [1, 0, 0, 1]
    assert [_item_of(x) for x in ep.query_x] == [4, 5, 6, 7]


def test_dataloader_route_has_leading_batch_of_one(dataset):
    _, tasks = _taskset(dataset, ways=3, k=1 + 3, num_tasks=4)
    loader = torch.utils.data.DataLoader(tasks, batch_size=1, shuffle=False)
    for i, batch in enumerate(loader):
        assert batch[0].dim() == 5 and batch[0].shape[0] == 1
        ep = episode_from_learn2learn(batch, shots=1)
        # the same task through taskset[i]: the very same episode
        direct = episode_from_learn2learn(tasks[i], shots=1)
        assert torch.equal(ep.support_x, direct.support_x) and torch.equal(ep.support_y, direct.support_y)
        assert torch.equal(ep.query_x, direct.query_x) and torch.equal(ep.query_y, direct.query_y)


def test_dataloader_batch_of_many_tasks(dataset):
    _, tasks = _taskset(dataset, ways=2, k=1 + 2, num_tasks=4)
    batch = next(iter(torch.utils.data.DataLoader(tasks, batch_size=3, shuffle=False)))
    eps = episodes_from_learn2learn(batch, shots=1)
    assert len(eps) == 3
    for i, ep in enumerate(eps):
        _same_episode_up_to_labels(ep, episode_from_learn2learn(tasks[i], shots=1))
    with pytest.raises(ValueError, match="batch_size=1"):
        episode_from_learn2learn(batch, shots=1)
    # a list of tasks works too
    assert len(episodes_from_learn2learn([tasks[0], tasks[1]], shots=1)) == 2


def test_tasksetsampler_route_equals_taskset_route(dataset):
    from learn2learn.data.samplers import TasksetSampler

    # class ids 5..14, so that dataset labels are never already 0..C-1
    dataset = TensorFewShotDataset(dataset.images, dataset.targets + 5)
    md, tasks = _taskset(dataset, ways=3, k=2 + 2, num_tasks=3, consecutive=True)
    loader = torch.utils.data.DataLoader(md, batch_sampler=TasksetSampler(tasks, shuffle=False))
    for i, batch in enumerate(loader):
        assert batch[0].dim() == 4  # items collated straight from the dataset
        with pytest.raises(ValueError, match="RemapLabels"):
            episode_from_learn2learn(batch, shots=2)  # dataset labels: not remapped
        ep = episode_from_learn2learn(batch, shots=2, remap=True)
        _same_episode_up_to_labels(ep, episode_from_learn2learn(tasks[i], shots=2))
        # remap keeps the dataset classes as class_ids
        for x, y in zip(ep.support_x, ep.support_y):
            assert ep.class_ids[int(y)] == int(dataset.targets[_item_of(x)])


def test_benchmark_style_taskset_over_glyphs():
    from mmnet_plugin.data import load_dataset

    glyphs = load_dataset("glyphs", split="test", classes=12, images_per_class=6)
    md = meta_dataset(glyphs)
    tasks = l2l.data.Taskset(
        md,
        task_transforms=[
            l2l.data.transforms.FusedNWaysKShots(md, n=5, k=1 + 3),
            l2l.data.transforms.LoadData(md),
            l2l.data.transforms.RemapLabels(md),
            l2l.data.transforms.ConsecutiveLabels(md),
        ],
        num_tasks=10,
    )
    eps = list(TasksetEpisodes(tasks, shots=1, episodes=4))
    assert len(eps) == 4
    for ep in eps:
        assert ep.support_x.shape == (5, 1, 28, 28) and ep.query_x.shape == (15, 1, 28, 28)


# ------------------------------------------------------------------ streams and helpers
def test_taskset_episodes_stream(dataset):
    _, tasks = _taskset(dataset, ways=2, k=1 + 1)
    stream = TasksetEpisodes(tasks, shots=1, episodes=7)
    assert len(stream) == 7 and len(list(stream)) == 7
    assert len(stream.sample_batch(3)) == 3
    endless = iter(TasksetEpisodes(tasks, shots=1))
    assert all(isinstance(next(endless), Episode) for _ in range(20))
    with pytest.raises(TypeError):
        len(TasksetEpisodes(tasks, shots=1))
    # a DataLoader over the taskset is iterated once, one episode per task
    loader = torch.utils.data.DataLoader(_taskset(dataset, 2, 2, num_tasks=5)[1], batch_size=2)
    assert len(list(TasksetEpisodes(loader, shots=1))) == 5


def test_trainer_consumes_taskset_stream():
    from mmnet_plugin.models import MMNet
    from mmnet_plugin.training import TrainConfig, Trainer

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6 * 4, 1, 16, 16, generator=gen)
    ds = TensorFewShotDataset(images, np.repeat(np.arange(6), 4))
    _, tasks = _taskset(ds, ways=2, k=1 + 2)
    model = MMNet(in_channels=1, image_size=16, dm=8, dr=8)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, TrainConfig(steps=2, batch_episodes=1, progress=False, log_every=1))
    records = trainer.fit(TasksetEpisodes(tasks, shots=1))
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_meta_dataset_reads_no_item():
    class Counting(TensorFewShotDataset):
        calls = 0

        def __getitem__(self, index):
            Counting.calls += 1
            return super().__getitem__(index)

    ds = Counting(torch.zeros(12, 1, 2, 2), np.repeat(np.arange(3), 4))
    md = meta_dataset(ds)
    assert Counting.calls == 0
    assert sorted(md.labels) == [0, 1, 2]
    assert sorted(md.labels_to_indices[1]) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="one label per item|labels but"):
        meta_dataset(ds, targets=[0, 1])


# ------------------------------------------------------------------ wrong input
def _task(labels, side=2) -> Tuple[torch.Tensor, torch.Tensor]:
    labels = torch.as_tensor(labels)
    return torch.zeros(len(labels), 1, side, side), labels


@pytest.mark.parametrize(
    "task, shots, match",
    [
        (_task([3, 3, 7, 7]), 1, "RemapLabels"),  # dataset labels, not 0..C-1
        (_task([0, 0, 2, 2]), 1, "RemapLabels"),  # a gap in the labels
        (_task([0, 0, 0, 1, 1]), 1, "KShots"),  # unequal items per class
        (_task([0, 0, 1, 1]), 2, r"does not split into 2 support"),  # no query left
        ((torch.zeros(5, 1, 2, 2), torch.tensor([0, 0, 1, 1])), 1, "one to one"),
        ((torch.zeros(4, 1, 2, 2),), 1, r"\(data, labels\) pair"),
        ((torch.zeros(4, 1, 2, 2), torch.zeros(4), torch.zeros(4)), 1, r"\(data, labels\)"),
        ((torch.zeros(1, 4, 1, 2, 2), torch.tensor([[0, 0, 1, 1]])), 0, "shots must be a positive"),
        ((torch.zeros(2, 4, 1, 2, 2), torch.tensor([[0, 0, 1, 1]])), 1, "both come from the same"),
    ],
)
def test_bad_learn2learn_input_names_the_convention(task, shots, match):
    with pytest.raises(ValueError, match=match):
        episode_from_learn2learn(task, shots=shots)


def test_bad_task_in_a_batch_names_its_position():
    data = torch.zeros(2, 4, 1, 2, 2)
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="task 1 of the batch"):
        episodes_from_learn2learn((data, labels), shots=1)


def test_remap_accepts_dataset_labels():
    ep = episode_from_learn2learn(_task([7, 3, 7, 3, 7, 3]), shots=1, remap=True)
    assert ep.class_ids == [7, 3]
    assert ep.support_y.tolist() == [0, 1] and ep.query_y.tolist() == [0, 1, 0, 1]


def test_meta_dataset_without_learn2learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "learn2learn.data", None)
    with pytest.raises(ImportError, match=r"--no-build-isolation .*learn2learn==0\.2\.0"):
        meta_dataset(TensorFewShotDataset(torch.zeros(2, 1, 2, 2), [0, 1]))
