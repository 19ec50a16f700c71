"""easyfsl adapter: the 5-tuple, MMNet as a FewShotClassifier, TaskSampler and evaluate."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmnet_plugin.data import TensorFewShotDataset
from mmnet_plugin.episodes import Episode
from mmnet_plugin.evaluation import evaluate as mmnet_evaluate
from mmnet_plugin.integrations import easyfsl as adapter
from mmnet_plugin.integrations.easyfsl import EasyFSLEpisodes, episode_from_easyfsl, patch_easyfsl


def _framework(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if "1" in (os.environ.get("MMNET_REQUIRE_FRAMEWORKS"), os.environ.get("MMNET_REQUIRE_DATA")):
            pytest.fail(f"{name} is required in this environment but does not import: {exc}", pytrace=False)
        pytest.skip(f"{name} not installed ({exc})")


@pytest.fixture(scope="module", autouse=True)
def _easyfsl():
    _framework("easyfsl.samplers")
    _framework("easyfsl.utils")
    patch_easyfsl()
    yield


N_CLASSES, PER_CLASS = 8, 6


def _item_of(image: torch.Tensor) -> int:
    return int(round(float(image.reshape(-1)[0])))


@pytest.fixture(scope="module")
def dataset() -> TensorFewShotDataset:
    """Items filled with their own index (4x4), class of each a fixed shuffle."""
    n = N_CLASSES * PER_CLASS
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    targets = np.random.default_rng(3).permutation(np.repeat(np.arange(N_CLASSES), PER_CLASS))
    return TensorFewShotDataset(images, targets)


@pytest.fixture(scope="module")
def images16() -> TensorFewShotDataset:
    gen = torch.Generator().manual_seed(0)
    return TensorFewShotDataset(torch.rand(6 * 5, 1, 16, 16, generator=gen), np.repeat(np.arange(6), 5))


def _loader(dataset, ways: int, shots: int, queries: int, tasks: int) -> DataLoader:
    from easyfsl.samplers import TaskSampler

    sampler = TaskSampler(dataset, n_way=ways, n_shot=shots, n_query=queries, n_tasks=tasks)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn)


def _model(**kw):
    return adapter.MMNet(in_channels=1, image_size=16, dm=8, dr=8, **kw)


# ------------------------------------------------------------------ the 5-tuple
def test_tasksampler_tuple_becomes_episode(dataset):
    for batch in _loader(dataset, ways=3, shots=2, queries=2, tasks=5):
        ep = episode_from_easyfsl(batch)
        assert ep.n_way == 3 and ep.shots.tolist() == [2, 2, 2]
        assert ep.class_ids == list(batch[4])
        for x, y in list(zip(ep.support_x, ep.support_y)) + list(zip(ep.query_x, ep.query_y)):
            assert ep.class_ids[int(y)] == int(dataset.targets[_item_of(x)])


def test_episode_equals_the_samplers_own_draw(dataset):
    """The loader's tuple == an Episode built by hand from the indices the sampler drew."""
    from easyfsl.samplers import TaskSampler

    sampler = TaskSampler(dataset, n_way=3, n_shot=1, n_query=2, n_tasks=3)
    for indices in sampler:
        ep = episode_from_easyfsl(sampler.episodic_collate_fn([dataset[i] for i in indices]))
        blocks = np.asarray(indices).reshape(3, 1 + 2)  # class after class: shots then queries
        assert torch.equal(ep.support_x, dataset.load(blocks[:, :1].reshape(-1)))
        assert torch.equal(ep.query_x, dataset.load(blocks[:, 1:].reshape(-1)))
        for label, row in zip(ep.support_y.tolist(), blocks):
            assert ep.class_ids[label] == int(dataset.targets[row[0]])


def test_stream_for_the_trainer(dataset):
    loader = _loader(dataset, ways=2, shots=1, queries=1, tasks=6)
    assert len(EasyFSLEpisodes(loader)) == 6 and len(list(EasyFSLEpisodes(loader))) == 6
    assert len(list(EasyFSLEpisodes(loader, episodes=4))) == 4


@pytest.mark.parametrize(
    "batch, match",
    [
        ([torch.zeros(4, 1, 2, 2), torch.tensor([0, 0, 1, 1])], "collate_fn=sampler.episodic_collate_fn"),
        (
            (torch.zeros(2, 1, 2, 2), torch.tensor([1, 2]), torch.zeros(2, 1, 2, 2), torch.tensor([1, 2]), [4, 5]),
            "not 0..1",
        ),
        (
            (torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), [4, 5, 6]),
            "3 class ids for 2 ways",
        ),
        ((torch.zeros(2, 1, 2, 2), [0, 1], torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), [4, 5]), "must be a tensor"),
        (
            (torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), torch.zeros(2, 1, 2, 2), torch.tensor([0, 3]), [4, 5]),
            "query label 3 is outside",
        ),
        ("not a batch", "5-tuple"),
    ],
)
def test_bad_easyfsl_input_names_the_convention(batch, match):
    with pytest.raises(ValueError, match=match):
        episode_from_easyfsl(batch)


# ------------------------------------------------------------------ MMNet as a FewShotClassifier
def test_wrapper_is_a_fewshotclassifier_and_matches_mmnet(images16):
    from easyfsl.methods import FewShotClassifier

    from mmnet_plugin.models import MMNet as CoreMMNet

    core = CoreMMNet(in_channels=1, image_size=16, dm=8, dr=8).eval()
    model = adapter.MMNet(core).eval()
    assert isinstance(model, FewShotClassifier) and model.mmnet is core
    assert not model.is_transductive()
    sx, sy, qx, qy, _ = next(iter(_loader(images16, ways=3, shots=2, queries=2, tasks=1)))
    model.process_support_set(sx, sy)
    scores = model(qx)
    assert scores.shape == (6, 3)
    assert torch.equal(scores, core(sx, sy, qx))
    assert torch.equal(scores.argmax(dim=1), core.predict(sx, sy, qx))
    with torch.no_grad():
        assert torch.allclose(model.episode_loss(qx, qy), core.loss(Episode(sx, sy, qx, qy)))
    soft = adapter.MMNet(core, use_softmax=True)
    soft.process_support_set(sx, sy)
    assert torch.allclose(soft(qx).sum(dim=1), torch.ones(6))


def test_easyfsl_evaluate_agrees_with_ours(images16):
    from easyfsl.utils import evaluate

    torch.manual_seed(0)
    model = _model()
    tasks = list(_loader(images16, ways=3, shots=1, queries=2, tasks=3))  # the same draws for both
    accuracy = evaluate(model, tasks, device="cpu", use_tqdm=False)
    ours = mmnet_evaluate(model.mmnet, EasyFSLEpisodes(tasks))
    assert 0.0 <= accuracy <= 1.0
    assert accuracy == pytest.approx(ours.accuracy)  # equal-size tasks: same mean


@pytest.mark.parametrize("loss_kind", ["cross_entropy", "episode_loss"])
def test_easyfsl_training_loop_unchanged(images16, loss_kind):
    torch.manual_seed(0)
    model = _model(shuffle_support=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    for support_images, support_labels, query_images, query_labels, _ in _loader(images16, 2, 1, 2, 2):
        optimizer.zero_grad()
        model.process_support_set(support_images, support_labels)
        if loss_kind == "cross_entropy":  # easyfsl's own loops
            loss = torch.nn.CrossEntropyLoss()(model(query_images), query_labels)
        else:
            loss = model.episode_loss(query_images, query_labels)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_wrapper_refuses_bad_use(images16):
    model = _model()
    q = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match="process_support_set"):
        model(q)
    with pytest.raises(ValueError, match="episodic_collate_fn"):
        model.process_support_set(torch.zeros(2, 1, 16, 16), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="episodic_collate_fn"):
        model.process_support_set(torch.zeros(2, 1, 16, 16), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="not both"):
        adapter.MMNet(model.mmnet, dm=8)


# ------------------------------------------------------------------ compatibility step
def test_patch_easyfsl_is_idempotent_and_needed(dataset):
    from easyfsl.samplers import TaskSampler

    assert patch_easyfsl() == ()
    assert patch_easyfsl() == ()
    shims = [c for c in TaskSampler.__mro__ if c.__dict__.get("_mmnet_data_source_shim", False)]
    sampler_init = torch.utils.data.Sampler.__init__
    if sampler_init is object.__init__:  # the torch this project uses: the shim is in place, once
        assert len(shims) == 1
    assert isinstance(TaskSampler(dataset, 2, 1, 1, 1), torch.utils.data.Sampler)


def test_patch_easyfsl_refuses_unknown_versions(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "9.9" if n == "easyfsl" else real(n))
    with pytest.raises(RuntimeError, match=r"easyfsl 9\.9 is installed.*allow_unknown_version=True"):
        patch_easyfsl()
    assert patch_easyfsl(allow_unknown_version=True) == ()


def test_without_easyfsl_the_wrapper_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "easyfsl.methods", None)
    monkeypatch.delitem(sys.modules, "mmnet_plugin.integrations.easyfsl_classifier", raising=False)
    monkeypatch.delitem(vars(adapter), "MMNet", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'mmnet-plugin\[easyfsl\]'"):
        getattr(adapter, "MMNet")  # noqa: B009 (the access is what is tested)


def test_the_classifier_is_a_class_of_its_own_name():
    from mmnet_plugin.integrations.easyfsl_classifier import MMNetClassifier

    assert adapter.MMNet is MMNetClassifier and MMNetClassifier.__name__ == "MMNetClassifier"
