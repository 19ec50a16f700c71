"""Accuracy with confidence intervals over episodes."""

import math

import numpy as np
import pytest
import torch

from mmnet_plugin.data import TensorFewShotDataset
from mmnet_plugin.episodes import EpisodeSampler
from mmnet_plugin.evaluation import confidence_interval, evaluate


def _dataset():
    # class c: constant images of value c/10 plus small noise -> nearest-mean is perfect
    g = torch.Generator().manual_seed(0)
    x = torch.arange(10).repeat_interleave(6).float().div(10).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    x = x + 0.01 * torch.randn(x.shape, generator=g)
    return TensorFewShotDataset(x.contiguous(), np.repeat(np.arange(10), 6))


def _nearest(sx, sy, qx):
    """Scores [n_query, n_way]: minus the distance to the class's nearest support image."""
    d = torch.cdist(qx.flatten(1), sx.flatten(1))
    onehot = torch.nn.functional.one_hot(sy).bool()
    return torch.stack([-d[:, onehot[:, c]].min(1).values for c in range(onehot.shape[1])], 1)


def test_confidence_interval_formula():
    acc = [0.5, 1.0, 0.75, 0.25]
    assert confidence_interval(acc) == pytest.approx(1.96 * np.std(acc) / math.sqrt(4))
    with pytest.raises(ValueError):
        confidence_interval([])


def test_evaluate_reports_mean_ci_n_queries_fingerprint():
    ds = _dataset()
    s = EpisodeSampler(ds, ways=5, shots=1, queries=3, seed=0, episodes=20)
    res = evaluate(_nearest, s)
    assert res.accuracy == 1.0 and res.ci95 == 0.0 and res.episodes == 20 and res.queries_per_class == 3
    assert res.fingerprint == s.fingerprint and len(res.per_episode) == 20
    assert "n=20 episodes" in res.summary() and s.fingerprint[:16] in res.summary()

    def chance(sx, sy, qx):
        return torch.zeros(len(qx), int(sy.max()) + 1)  # argmax is always class 0

    res = evaluate(chance, EpisodeSampler(ds, ways=5, shots=1, queries=3, seed=0, episodes=20))
    assert res.accuracy == pytest.approx(0.2) and res.ci95 == 0.0


def test_evaluate_scores_callable_and_restores_training_mode():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(1)
            self.modes = []

        def forward(self, sx, sy, qx):
            self.modes.append(self.training)
            return _nearest(sx, sy, qx)

    net = Net().train()
    ds = _dataset()
    res = evaluate(net, EpisodeSampler(ds, ways=5, shots=1, queries=2, seed=1, episodes=3))
    assert net.modes == [False] * 3 and net.training and res.accuracy == 1.0


def test_evaluate_refuses_empty_and_unlabelled():
    with pytest.raises(ValueError, match="no test episodes"):
        evaluate(_nearest, [])
    from mmnet_plugin.episodes import Episode

    ep = Episode(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="without query labels"):
        evaluate(_nearest, [ep])


def test_batched_evaluation_equals_one_by_one():
    from mmnet_plugin import MMNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MMNet(in_channels=1, image_size=28, dm=16, dr=16)
    g = torch.Generator().manual_seed(1)
    ds = TensorFewShotDataset(torch.rand(8 * 4, 1, 28, 28, generator=g), np.repeat(np.arange(8), 4))

    def run(batch):
        return evaluate(
            model, EpisodeSampler(ds, ways=(2, 5), shots=(1, 2), queries=2, seed=2, episodes=7), batch_episodes=batch
        )

    one = run(1)
    calls = []
    original = model.predict_batch
    model.predict_batch = lambda eps: calls.append(len(eps)) or original(eps)
    batched = run(3)
    del model.predict_batch
    assert calls == [3, 3, 1]  # really batched: 7 episodes in chunks of 3
    assert batched.per_episode == one.per_episode and batched.fingerprint == one.fingerprint
    assert len(set(one.per_episode)) > 1  # an untrained model: episodes differ, so the check has teeth
    with pytest.raises(ValueError, match="batch_episodes"):
        run(0)


def test_evaluate_refuses_scores_of_the_wrong_shape():
    ds = _dataset()
    with pytest.raises(ValueError, match=r"\[n_query, n_way\]"):
        evaluate(
            lambda sx, sy, qx: _nearest(sx, sy, qx).t(),
            EpisodeSampler(ds, ways=5, shots=1, queries=2, seed=1, episodes=2),
        )


def test_evaluate_refuses_scores_for_the_wrong_number_of_classes():
    ds = _dataset()

    def extra_class(sx, sy, qx):
        scores = _nearest(sx, sy, qx)
        return torch.cat([scores, scores[:, :1]], dim=1)  # [n_query, n_way + 1]: argmax still "works"

    with pytest.raises(ValueError, match=r"shape \(10, 6\) for an episode of 10 queries and 5 classes"):
        evaluate(extra_class, EpisodeSampler(ds, ways=5, shots=1, queries=2, seed=1, episodes=2))
    with pytest.raises(ValueError, match=r"\[n_query, n_way\] = \[10, 5\]"):
        evaluate(
            lambda sx, sy, qx: _nearest(sx, sy, qx)[:, :4],
            EpisodeSampler(ds, ways=5, shots=1, queries=2, seed=1, episodes=2),
        )
    with pytest.raises(ValueError, match="returned a list for an episode"):
        evaluate(lambda sx, sy, qx: [0] * len(qx), EpisodeSampler(ds, ways=5, shots=1, queries=2, seed=1, episodes=2))


def test_evaluate_refuses_easyfsl_tuples_naming_the_adapter():
    ep = EpisodeSampler(_dataset(), ways=5, shots=1, queries=2, seed=0).sample()
    five = (ep.support_x, ep.support_y, ep.query_x, ep.query_y, ep.class_ids)
    with pytest.raises(
        ValueError,
        match="evaluate got a 5-item tuple.*not an Episode.*mmnet_plugin.integrations.easyfsl.EasyFSLEpisodes",
    ):
        evaluate(_nearest, [five])
