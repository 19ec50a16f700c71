"""The episode contract and the seeded sampler."""

import numpy as np
import pytest
import torch

from mmnet_plugin.data import TensorFewShotDataset, as_episode_source
from mmnet_plugin.episodes import (
    Episode,
    EpisodeSampler,
    ImageScaleWarning,
    fingerprint_episodes,
    parse_range,
    require_episode,
)


def _dataset(n_classes=12, per_class=8, size=6):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_classes * per_class, 1, size, size), generator=g, dtype=torch.uint8)
    targets = np.repeat(np.arange(n_classes), per_class)
    return TensorFewShotDataset(images, targets)


def _ep(**kw):
    base = dict(
        support_x=torch.zeros(4, 1, 5, 5),
        support_y=torch.tensor([0, 1, 2, 3]),
        query_x=torch.zeros(8, 1, 5, 5),
        query_y=torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]),
    )
    base.update(kw)
    return Episode(**base)


# ---------------------------------------------------------------- validation
def test_valid_episode_properties():
    ep = _ep(support_y=torch.tensor([0, 1, 1, 0]), query_y=torch.tensor([0, 1] * 4))
    assert ep.n_way == 2 and ep.n_shot == 2
    ep = _ep(support_y=torch.tensor([0, 1, 2, 2]), query_y=None)
    assert ep.n_way == 3 and ep.n_shot == 1 and ep.shots.tolist() == [1, 1, 2]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(support_y=torch.tensor([0, 1, 2, 4])), "label 3 is missing"),
        (dict(support_y=torch.tensor([1, 1, 2, 2])), "label 0 is missing"),
        (dict(support_y=torch.tensor([0, -1, 2, 3])), "negative label"),
        (dict(support_y=torch.tensor([0, 1, 2])), "4 images but support_y has 3"),
        (dict(query_y=torch.tensor([0, 1])), "8 images but query_y has 2"),
        (dict(query_y=torch.tensor([0, 1, 2, 3, 0, 1, 2, 7])), "query label 7 is outside 0..3"),
        (dict(support_x=torch.zeros(4, 5, 5)), "4-D tensor"),
        (
            dict(
                query_x=torch.zeros(8, 1, 6, 5),
            ),
            "same size",
        ),
        (dict(query_x=torch.zeros(0, 1, 5, 5), query_y=torch.zeros(0, dtype=torch.long)), "at least one query"),
        (dict(support_x=torch.zeros(0, 1, 5, 5), support_y=torch.zeros(0, dtype=torch.long)), "support set is empty"),
        (dict(support_x=torch.full((4, 1, 5, 5), float("nan"))), "support_x contains NaN"),
        (dict(query_x=torch.full((8, 1, 5, 5), float("inf"))), "query_x contains NaN or infinite"),
        (dict(support_y=torch.tensor([0.0, 1.5, 2.0, 3.0])), "integer class labels"),
        (dict(class_ids=[1, 2]), "class_ids has 2 entries"),
    ],
)
def test_bad_episodes_raise_value_error_naming_the_problem(kw, message):
    with pytest.raises(ValueError, match=message):
        _ep(**kw)


# ---------------------------------------------------------------- sampler
def test_same_seed_same_episodes_and_fingerprint():
    ds = _dataset()
    a = EpisodeSampler(ds, ways=5, shots=1, queries=3, seed=7)
    b = EpisodeSampler(ds, ways=5, shots=1, queries=3, seed=7)
    ea, eb = a.sample_batch(6), b.sample_batch(6)
    for x, y in zip(ea, eb):
        assert torch.equal(x.support_x, y.support_x) and torch.equal(x.query_y, y.query_y)
        assert x.class_ids == y.class_ids and x.support_indices == y.support_indices
    assert a.fingerprint == b.fingerprint == fingerprint_episodes(ea)
    c = EpisodeSampler(ds, ways=5, shots=1, queries=3, seed=8)
    c.sample_batch(6)
    assert c.fingerprint != a.fingerprint


def test_episode_content_matches_dataset_and_labels():
    ds = _dataset()
    ep = EpisodeSampler(ds, ways=4, shots=2, queries=3, seed=1).sample()
    assert ep.support_x.shape == (8, 1, 6, 6) and ep.query_x.shape == (12, 1, 6, 6)
    assert sorted(ep.support_y.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    for x, y, idx in zip(ep.support_x, ep.support_y, ep.support_indices):
        assert torch.equal(x, ds.load([idx])[0])
        assert ds.targets[idx] == ep.class_ids[int(y)]
    for y, idx in zip(ep.query_y, ep.query_indices):
        assert ds.targets[idx] == ep.class_ids[int(y)]
    assert not set(ep.support_indices) & set(ep.query_indices)


def test_labels_are_shuffled_per_episode():
    ds = _dataset()
    s = EpisodeSampler(ds, ways=5, shots=1, queries=1, seed=0)
    eps = s.sample_batch(20)
    # the class that gets label 0 is not always the smallest class id
    assert any(ep.class_ids != sorted(ep.class_ids) for ep in eps)
    # and the support order is not label order
    assert any(ep.support_y.tolist() != sorted(ep.support_y.tolist()) for ep in eps)


def test_mixed_spec_covers_requested_ranges():
    ds = _dataset(n_classes=12, per_class=10)
    s = EpisodeSampler(ds, ways=(2, 6), shots=(1, 4), queries=2, seed=3)
    seen_w, seen_k = set(), set()
    for ep in s.sample_batch(200):
        seen_w.add(ep.n_way)
        seen_k.add(ep.n_shot)
        assert set(ep.shots.tolist()) == {ep.n_shot}
    assert seen_w == set(range(2, 7)) and seen_k == set(range(1, 5))


def test_impossible_requests_are_refused():
    ds = _dataset(n_classes=5, per_class=4)
    with pytest.raises(ValueError, match="only 5 classes"):
        EpisodeSampler(ds, ways=6, shots=1, queries=1)
    with pytest.raises(ValueError, match="2 shots \\+ 3 queries"):
        EpisodeSampler(ds, ways=2, shots=2, queries=3)
    with pytest.raises(ValueError, match="queries must be at least 1"):
        EpisodeSampler(ds, ways=2, shots=1, queries=0)
    with pytest.raises(ValueError, match="not an episode source"):
        EpisodeSampler([1, 2, 3], ways=2)


def test_state_save_restore_continues_the_same_stream():
    ds = _dataset()
    a = EpisodeSampler(ds, ways=(2, 5), shots=(1, 3), queries=2, seed=11)
    a.sample_batch(3)
    state = a.state_dict()
    rest_a = a.sample_batch(4)
    b = EpisodeSampler(ds, ways=(2, 5), shots=(1, 3), queries=2, seed=999)
    b.load_state_dict(state)
    rest_b = b.sample_batch(4)
    assert [e.support_indices for e in rest_a] == [e.support_indices for e in rest_b]
    assert a.fingerprint == b.fingerprint and a.drawn == b.drawn == 7
    # the state is plain data that survives torch.save/load(weights_only=True)
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    c = EpisodeSampler(ds, ways=(2, 5), shots=(1, 3), queries=2, seed=0)
    c.load_state_dict(torch.load(buf, weights_only=True))
    assert [e.support_indices for e in c.sample_batch(4)] == [e.support_indices for e in rest_a]
    with pytest.raises(ValueError, match="resume with the same settings"):
        EpisodeSampler(ds, ways=5, shots=1, queries=2).load_state_dict(state)


def test_sampler_owns_its_random_state():
    ds = _dataset()
    np.random.seed(0)
    torch.manual_seed(0)
    before = (np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    a = EpisodeSampler(ds, ways=3, shots=1, queries=1, seed=5)
    first = a.sample().support_indices
    assert np.array_equal(np.random.get_state()[1], before[0])
    assert torch.equal(torch.get_rng_state(), before[1])
    np.random.seed(123)
    assert EpisodeSampler(ds, ways=3, shots=1, queries=1, seed=5).sample().support_indices == first


def test_finite_sampler_iterates_its_length():
    ds = _dataset()
    s = EpisodeSampler(ds, ways=2, shots=1, queries=1, seed=0, episodes=5)
    assert len(s) == 5 and len(list(s)) == 5


def test_wrapped_plain_dataset():
    items = [(torch.full((1, 3, 3), float(i)), i % 3) for i in range(12)]
    src = as_episode_source(items)
    ep = EpisodeSampler(src, ways=3, shots=2, queries=2, seed=0).sample()
    for x, idx in zip(ep.support_x, ep.support_indices):
        assert float(x.mean()) == idx


@pytest.mark.parametrize("text, expected", [("5", 5), ("2-20", (2, 20)), (3, 3), ((1, 5), (1, 5)), ("4-4", 4)])
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["0", "5-2", "a", "2-x", True])
def test_parse_range_rejects(text):
    with pytest.raises(ValueError):
        parse_range(text)


# ---------------------------------------------------------------- 1-way, uint8 and non-episodes
@pytest.mark.parametrize("ways", [1, (1, 5), "1-3"])
def test_one_way_sampling_is_refused(ways):
    with pytest.raises(ValueError, match="ways must be at least 2: a 1-way episode has nothing to tell apart"):
        EpisodeSampler(_dataset(), ways=ways, shots=1, queries=1)
    assert EpisodeSampler(_dataset(), ways=(2, 5), shots=1, queries=1).sample().n_way >= 2


def test_uint8_images_are_scaled_to_unit_range_with_a_warning():
    g = torch.Generator().manual_seed(0)
    sx = torch.randint(0, 256, (4, 1, 5, 5), generator=g, dtype=torch.uint8)
    qx = torch.full((8, 1, 5, 5), 255, dtype=torch.uint8)
    with pytest.warns(ImageScaleWarning) as caught:
        ep = _ep(support_x=sx, query_x=qx)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and messages[1].startswith("support_x is uint8: scaled from 0..255 to [0, 1]")
    assert messages[0].startswith("query_x is uint8")
    assert ep.support_x.dtype == torch.float32 and torch.equal(ep.support_x, sx.float() / 255)
    assert float(ep.query_x.max()) == 1.0


def test_uint8_from_a_custom_source_reaches_the_sampler_scaled():
    class RawSource:
        """An episode source whose load returns raw uint8 pixels."""

        targets = np.repeat(np.arange(4), 3)

        def load(self, indices):
            return torch.full((len(indices), 1, 3, 3), 200, dtype=torch.uint8)

    with pytest.warns(ImageScaleWarning):
        ep = EpisodeSampler(RawSource(), ways=3, shots=1, queries=1, seed=0).sample()
    assert torch.allclose(ep.support_x, torch.full_like(ep.support_x, 200 / 255))


def test_integer_images_of_unknown_scale_are_refused():
    with pytest.raises(ValueError, match="support_x is int64, integer images of unknown scale"):
        _ep(support_x=torch.zeros(4, 1, 5, 5, dtype=torch.long))
    assert _ep(query_x=torch.ones(8, 1, 5, 5, dtype=torch.bool)).query_x.dtype == torch.float32


def test_require_episode_names_the_easyfsl_adapter():
    ep = _ep()
    assert require_episode(ep, "here") is ep
    five = (ep.support_x, ep.support_y, ep.query_x, ep.query_y, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"here got a 5-item tuple.*EasyFSLEpisodes\(loader\)"):
        require_episode(five, "here")
    with pytest.raises(ValueError, match="here got a str, not an Episode"):
        require_episode("episode", "here")
