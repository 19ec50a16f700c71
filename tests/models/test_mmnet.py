import math

import pytest
import torch
from torch import nn

from mmnet_plugin.episodes import Episode
from mmnet_plugin.models import Conv4, MMNet


def make_episode(n_way, k, q, seed, size=28, channels=1, labelled=True):
    """Random C-way k-shot episode, support order shuffled, q queries per class."""
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(n_way).repeat_interleave(k)[torch.randperm(n_way * k, generator=g)]
    qy = torch.arange(n_way).repeat_interleave(q)[torch.randperm(n_way * q, generator=g)]
    return Episode(
        torch.rand(n_way * k, channels, size, size, generator=g),
        sy,
        torch.rand(n_way * q, channels, size, size, generator=g),
        qy if labelled else None,
    )


def tiny(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    kw.setdefault("dm", 16)
    kw.setdefault("dr", 16)
    return MMNet(**kw)


# ---------------------------------------------------------------- structure and shapes
def test_shapes_of_memory_read_and_shortcut():
    model = tiny().eval()
    eps = [make_episode(3, 2, 2, 0), make_episode(5, 1, 1, 1)]
    out = model.forward_batch(eps)
    assert out.memory.keys.shape == (2, 6, 16)
    assert out.memory.n_used.tolist()[1] == 5  # 1-shot: one slot per class
    assert out.support_embeddings.shape == (2, 6, model.dz) and model.dz == 64
    assert out.query_embeddings.shape == (2, 6, 64)
    assert out.filters.shape == (2, 64, 1, 3, 3)
    assert out.similarities.shape == (2, 6, 6)
    assert [s.shape for s in out.scores] == [(6, 3), (5, 5)]
    # g = Tc c + z differs from the plain backbone embedding z (the read is used)
    z = model.backbone(eps[0].support_x)
    g = out.support_embeddings[0, :6]
    assert not torch.allclose(g, z)
    c_part = g - z
    assert torch.linalg.matrix_rank(c_part) >= 1


@pytest.mark.parametrize("form", ["residual", "paper"])
def test_predicted_filters_and_query_embedding_follow_the_support_set(form):
    model = tiny(query_branch=form).eval()
    if form == "residual":
        with torch.no_grad():
            model.query_gate.fill_(0.5)  # the gate starts closed (tested below); open it
    a, b = make_episode(5, 1, 2, 0), make_episode(5, 1, 2, 1)
    b = Episode(b.support_x, b.support_y, a.query_x, a.query_y)  # same queries, other support
    out_a, out_b = model.forward_batch(a), model.forward_batch(b)
    assert not torch.allclose(out_a.filters, out_b.filters)
    assert not torch.allclose(out_a.query_embeddings, out_b.query_embeddings)


def test_residual_form_starts_as_the_symmetric_model():
    """Gate at 0: f = g0 exactly, so queries and supports share one embedding space."""
    torch.manual_seed(0)
    model = tiny().eval()
    assert model.query_branch == "residual" and torch.equal(model.query_gate, torch.zeros(64))
    assert model.contextual.tp.bias is None and model.contextual.norm is not None
    torch.manual_seed(0)
    plain = tiny(use_query_branch=False).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    eps = [make_episode(3, 2, 2, 0), make_episode(5, 1, 1, 1)]
    out, ref = model.forward_batch(eps), plain.forward_batch(eps)
    assert torch.allclose(out.query_embeddings[0, :6], model.backbone(eps[0].query_x), atol=1e-6)
    assert torch.allclose(out.similarities, ref.similarities, atol=1e-6)
    # in training mode too (block 4's batch norm sees supports and queries, as without the branch)
    model.train(), plain.train()
    assert torch.allclose(model.forward_batch(eps).similarities, plain.forward_batch(eps).similarities, atol=1e-5)


def test_residual_filters_depend_on_the_memory_far_more_than_the_paper_forms():
    """Between-episode spread of the predicted filters relative to their size, at init:
    the paper form's static bias and unit-norm LSTM inputs leave the support set ~0.2% of
    the filter (0.7% on Omniglot); LayerNorm'd keys and no bias give it ~20x more."""
    eps = [make_episode(5, 1, 1, s) for s in range(8)]

    def spread(form):
        with torch.no_grad():
            f = tiny(query_branch=form, dm=512, dr=512).eval().forward_batch(eps).filters.flatten(1)
        return float((f - f.mean(0)).pow(2).mean().sqrt() / f.pow(2).mean().sqrt())

    assert spread("residual") > 10 * spread("paper")


@pytest.mark.parametrize("form", ["residual", "paper"])
def test_every_parameter_gets_a_gradient(form):
    model = tiny(similarity_scale="learned", query_branch=form).train()
    loss = model.loss([make_episode(3, 2, 2, 0), make_episode(4, 1, 2, 1)])
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    parts = [
        "backbone.blocks.0.0.weight",
        "backbone.blocks.3.1.bias",
        "tz.weight",
        "tc.weight",
        "contextual.lstm.weight_hh_l0_reverse",
        "query_block.pointwise_in.weight",
        "query_block.pointwise_out.weight",
        "query_block.bn.weight",
        "log_scale",
    ]
    parts += ["query_gate", "contextual.norm.weight"] if form == "residual" else ["contextual.tp.bias"]
    for part in parts:
        assert part in names
    if form == "residual":
        # closed gate: only the gate itself learns about the branch at step 0 ...
        assert model.query_gate.grad.abs().sum() > 0
        assert model.query_block.pointwise_in.weight.grad.abs().sum() == 0
        # ... and once it opens, everything gets a gradient
        model.zero_grad()
        with torch.no_grad():
            model.query_gate.fill_(0.1)
        model.loss([make_episode(3, 2, 2, 0), make_episode(4, 1, 2, 1)]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_is_eq8_written_out():
    model = tiny().eval()
    eps = [make_episode(3, 2, 2, 5), make_episode(2, 2, 3, 6)]
    out = model.forward_batch(eps)
    per_episode = []
    for b, ep in enumerate(eps):
        sim = out.episode_similarities(b).detach()
        total = 0.0
        for q in range(len(ep.query_y)):
            denom = sum(math.exp(float(sim[q, t])) for t in range(len(ep.support_y)))
            for n in range(len(ep.support_y)):
                if int(ep.support_y[n]) == int(ep.query_y[q]):
                    total -= math.log(math.exp(float(sim[q, n])) / denom)
        per_episode.append(total / len(ep.query_y))
    assert torch.allclose(out.episode_losses(), torch.tensor(per_episode), rtol=1e-4, atol=1e-4)
    assert math.isclose(model.loss(eps).item(), sum(per_episode) / 2, rel_tol=1e-4, abs_tol=1e-4)
    # P = s * f . g
    s = float(model.similarity_scale)
    assert torch.allclose(
        out.episode_similarities(0), s * out.query_embeddings[0, :6] @ out.support_embeddings[0, :6].T, atol=1e-4
    )


def test_similarity_scale_multiplies_p():
    m1 = tiny(similarity_scale=1.0).eval()
    m2 = tiny(similarity_scale=0.25).eval()
    m2.load_state_dict(m1.state_dict())
    ep = make_episode(3, 1, 2, 0)
    assert torch.allclose(m2.forward_batch(ep).similarities, 0.25 * m1.forward_batch(ep).similarities, atol=1e-5)


# ---------------------------------------------------------------- mixed ways and shots
def test_mixed_batch_matches_episodes_one_by_one():
    model = tiny().eval()
    eps = [make_episode(2, 1, 3, 0), make_episode(20, 5, 1, 1), make_episode(7, 3, 2, 2), make_episode(5, 1, 4, 3)]
    with torch.no_grad():
        out = model.forward_batch(eps)
        losses = out.episode_losses()
        for b, ep in enumerate(eps):
            one = model.forward_batch(ep)
            assert torch.allclose(out.scores[b], one.scores[0], rtol=1e-4, atol=1e-4)
            assert torch.allclose(losses[b], one.episode_losses()[0], rtol=1e-4, atol=1e-4)
            assert torch.allclose(out.filters[b], one.filters[0], atol=1e-5)


def test_every_way_and_shot_runs_through_one_model():
    backbone = Conv4(in_channels=1, hidden=8)
    model = tiny(image_size=16, backbone=backbone, dm=8, dr=8)
    assert model.dz == 8
    eps = [make_episode(c, k, 1, 100 * c + k, size=16) for c in range(2, 21) for k in range(1, 6)]
    model.train()
    loss, acc = model.loss_and_accuracy(eps)
    assert torch.isfinite(loss) and acc.shape == (95,)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model.forward_batch(eps)
    for b, ep in enumerate(eps):
        assert out.scores[b].shape == (ep.n_way, ep.n_way)
        assert torch.isfinite(out.scores[b]).all()
        assert out.memory.n_used[b] >= ep.n_way


@pytest.mark.parametrize("decision", ["nearest", "class_mass"])
def test_scores_follow_the_decision_rule_and_predict(decision):
    model = tiny(decision=decision).eval()
    ep = make_episode(4, 3, 3, 7)
    scores = model(ep.support_x, ep.support_y, ep.query_x)
    assert scores.shape == (12, 4)
    pred = model.predict(ep.support_x, ep.support_y, ep.query_x)
    assert torch.equal(scores.argmax(dim=1), pred)
    batch_pred = model.predict_batch([ep, make_episode(2, 1, 1, 8)])
    assert torch.equal(batch_pred[0], pred)
    sim = model.forward_batch(ep).episode_similarities(0)
    onehot = torch.nn.functional.one_hot(ep.support_y, 4).bool()  # [Ns, C]
    if decision == "nearest":
        expected = torch.stack([sim[:, onehot[:, c]].max(dim=1).values for c in range(4)], dim=1)
        assert torch.equal(pred, ep.support_y[sim.argmax(dim=1)])  # label of the nearest item
    else:
        p = torch.softmax(sim, dim=1)
        expected = torch.stack([p[:, onehot[:, c]].sum(dim=1).log() for c in range(4)], dim=1)
    assert torch.allclose(scores, expected, atol=1e-4)


def test_small_memory_overflows_into_nearest():
    model = tiny(memory_slots=2).eval()
    out = model.forward_batch(make_episode(5, 2, 1, 0))
    assert out.memory.keys.shape[1] == 2
    assert int(out.memory.n_used[0]) == 2
    assert torch.isfinite(out.similarities[0]).all()


# ---------------------------------------------------------------- ablations
def test_without_contextual_learner_support_does_not_change_queries():
    model = tiny(use_contextual_learner=False).eval()
    assert model.contextual is None and isinstance(model.query_block.depthwise, nn.Parameter)
    a, b = make_episode(5, 1, 2, 0), make_episode(5, 1, 2, 1)
    b = Episode(b.support_x, b.support_y, a.query_x, a.query_y)
    out_a, out_b = model.forward_batch(a), model.forward_batch(b)
    assert out_a.filters is None
    assert torch.allclose(out_a.query_embeddings, out_b.query_embeddings)
    assert out_a.memory is not None  # the read controller still needs memory


def test_without_memory_read_g_is_z():
    model = tiny(use_memory_read=False).eval()
    assert model.tc is None
    ep = make_episode(3, 2, 1, 0)
    out = model.forward_batch(ep)
    assert torch.allclose(out.support_embeddings[0], model.backbone(ep.support_x), atol=1e-6)
    assert out.filters is not None  # the contextual learner still reads memory


def test_without_query_branch_f_is_g0():
    model = tiny(use_query_branch=False).eval()
    assert model.query_block is None and model.contextual is None
    ep = make_episode(3, 1, 2, 0)
    out = model.forward_batch(ep)
    assert torch.allclose(out.query_embeddings[0], model.backbone(ep.query_x), atol=1e-6)


def test_all_memory_ablations_remove_memory():
    model = tiny(use_memory_read=False, use_contextual_learner=False).eval()
    assert model.tz is None and model.tc is None and model.contextual is None
    out = model.forward_batch(make_episode(3, 1, 1, 0))
    assert out.memory is None


# ---------------------------------------------------------------- shuffled write order
def test_support_shuffle_uses_own_generator_and_only_in_training():
    eps = [make_episode(5, 2, 1, 0), make_episode(3, 1, 1, 1)]
    m1, m2 = tiny(shuffle_support=True, shuffle_seed=3), tiny(shuffle_support=True, shuffle_seed=3)
    rng_before = torch.get_rng_state()
    o1, o2 = m1.forward_batch(eps).write_order, m2.forward_batch(eps).write_order
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert torch.equal(o1, o2)
    assert sorted(o1[0].tolist()) == list(range(10))
    assert sorted(o1[1, :3].tolist()) == [0, 1, 2] and o1[1, 3:].tolist() == list(range(3, 10))
    # the generator state travels with the state_dict
    state = m1.state_dict()
    next1 = m1.forward_batch(eps).write_order
    m3 = tiny(shuffle_support=True, shuffle_seed=99)
    m3.load_state_dict(state)
    assert torch.equal(m3.forward_batch(eps).write_order, next1)
    assert not torch.equal(next1, o1)
    m1.eval()
    assert torch.equal(m1.forward_batch(eps).write_order[0], torch.arange(10))


# ---------------------------------------------------------------- errors
def test_bad_inputs_raise_value_errors():
    model = tiny()
    with pytest.raises(ValueError, match="image_size=16"):
        model.forward_batch(make_episode(2, 1, 1, 0, size=16))
    with pytest.raises(ValueError, match="in_channels=3"):
        model.forward_batch(make_episode(2, 1, 1, 0, channels=3))
    with pytest.raises(ValueError, match="empty"):
        model.forward_batch([])
    with pytest.raises(ValueError, match="not an Episode"):
        model.forward_batch([(torch.rand(1, 1, 28, 28), torch.zeros(1))])
    with pytest.raises(ValueError, match="query labels"):
        model.loss(make_episode(2, 1, 1, 0, labelled=False))
    with pytest.raises(ValueError):
        model(torch.rand(2, 1, 28, 28), torch.tensor([0, 2]), torch.rand(1, 1, 28, 28))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"decision": "vote"},
        {"similarity_scale": 0.0},
        {"similarity_scale": "auto"},
        {"memory_slots": 0},
        {"backbone": nn.Linear(3, 3)},
        {"image_size": 8},
        {"in_channels": 0},
    ],
)
def test_bad_settings_raise_value_errors(kwargs):
    with pytest.raises(ValueError):
        tiny(**kwargs)


# ---------------------------------------------------------------- from_checkpoint
def _save(path, model, config=None, **extra):
    torch.save({"model": model.state_dict(), "model_config": model.config if config is None else config, **extra}, path)


@pytest.mark.parametrize("form", ["residual", "paper"])
def test_from_checkpoint_round_trip(tmp_path, form):
    model = tiny(query_branch=form, decision="class_mass", memory_slots=3).eval()
    _save(tmp_path / "m.pt", model)
    loaded = MMNet.from_checkpoint(tmp_path / "m.pt")
    assert not loaded.training and loaded.config == model.config
    ep = make_episode(4, 2, 2, 0)
    assert torch.equal(loaded.forward_batch(ep).class_scores, model.forward_batch(ep).class_scores)


def test_from_checkpoint_reads_checkpoints_from_before_the_residual_form(tmp_path):
    old = tiny(query_branch="paper").eval()
    config = {k: v for k, v in old.config.items() if k in ("in_channels", "image_size", "dm", "dr")}
    _save(tmp_path / "old.pt", old, config)
    assert MMNet.from_checkpoint(tmp_path / "old.pt").query_branch == "paper"


def test_from_checkpoint_errors_name_the_file_and_the_problem(tmp_path):
    from mmnet_plugin.training import CheckpointError

    model = tiny()
    _save(tmp_path / "unknown.pt", model, dict(model.config, colour="blue"))
    with pytest.raises(CheckpointError, match=r"unknown.pt: unknown model option\(s\) colour"):
        MMNet.from_checkpoint(tmp_path / "unknown.pt")
    _save(tmp_path / "other.pt", model, dict(model.config, dm=32))  # weights of dm=16
    with pytest.raises(CheckpointError, match="other.pt: the weights do not fit"):
        MMNet.from_checkpoint(tmp_path / "other.pt")
    _save(tmp_path / "form.pt", model, dict(model.config, query_branch="paper"))
    with pytest.raises(CheckpointError, match="form.pt: the weights do not fit.*query_gate"):
        MMNet.from_checkpoint(tmp_path / "form.pt")
    _save(tmp_path / "bad.pt", model, dict(model.config, decision="vote"))
    with pytest.raises(CheckpointError, match="bad.pt: its model configuration .* invalid"):
        MMNet.from_checkpoint(tmp_path / "bad.pt")
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pt")  # the model states its configuration
    (tmp_path / "cut.pt").write_bytes((tmp_path / "bare.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut.pt is truncated or corrupt"):
        MMNet.from_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("decision", ["nearest", "class_mass"])
def test_loss_and_class_mass_are_float32_under_bf16_autocast(decision):
    model = tiny(decision=decision).train()
    eps = [make_episode(3, 2, 2, 0), make_episode(4, 1, 2, 1)]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model.forward_batch(eps)
        loss = out.episode_losses().mean()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    if decision == "class_mass":
        assert out.class_scores.dtype == torch.float32
    loss.backward()


@pytest.mark.parametrize("form", ["residual", "paper"])
def test_outputs_and_gradients_equal_those_of_the_one_step_per_item_write(monkeypatch, form):
    """The two-pass write controller changes the cost of a step, not what the model computes:
    on fixed mixed episodes (float32, training mode) the loss, the similarities and every
    parameter's gradient equal those with the one-step-per-item write to 1e-5."""
    import importlib.util
    from pathlib import Path

    import mmnet_plugin.models.mmnet as mmnet_module

    spec = importlib.util.spec_from_file_location("memory_reference", Path(__file__).with_name("test_memory.py"))
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    _write_per_item = reference._write_per_item

    episodes = [make_episode(w, k, 3, seed) for seed, (w, k) in enumerate([(5, 1), (7, 3), (2, 5), (10, 2)])]

    def run():
        torch.manual_seed(0)
        model = MMNet(query_branch=form).train()
        out = model.forward_batch(episodes)
        loss = out.episode_losses().mean()
        loss.backward()
        return out.similarities.detach(), {n: p.grad for n, p in model.named_parameters()}

    sim, grads = run()

    def per_item(zk, labels, lengths, slots=None):
        return mmnet_module.MemoryState(*_write_per_item(zk, labels, lengths, slots))

    monkeypatch.setattr(mmnet_module, "write_memory", per_item)
    ref_sim, ref_grads = run()
    torch.testing.assert_close(sim, ref_sim, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
def test_similarity_functions(similarity):
    model = tiny(similarity=similarity, similarity_scale=0.5).eval()
    out = model.forward_batch(make_episode(4, 2, 3, seed=1))
    f, g = out.query_embeddings[0], out.support_embeddings[0]
    want = {
        "dot": f @ g.T,
        "cosine": torch.nn.functional.normalize(f, dim=1) @ torch.nn.functional.normalize(g, dim=1).T,
        "euclidean": -torch.cdist(f, g).pow(2),
    }[similarity]
    torch.testing.assert_close(out.episode_similarities(0), 0.5 * want, rtol=1e-4, atol=1e-4)
    assert model.config["similarity"] == similarity
    assert tiny(similarity=similarity).fixed_scale == {"dot": 0.125, "cosine": 10.0, "euclidean": 1.0}[similarity]
    with pytest.raises(ValueError, match="similarity must be one of"):
        tiny(similarity="l1")


def test_fused_cpu_lstm_gives_the_packed_lstms_outputs_and_gradients():
    episodes = [make_episode(w, k, 2, seed) for seed, (w, k) in enumerate([(5, 1), (3, 4), (8, 2)])]

    def run(fused):
        torch.manual_seed(0)
        model = MMNet(dm=64, dr=48).train()
        model.contextual.fused = fused
        out = model.forward_batch(episodes)
        out.episode_losses().mean().backward()
        return out.filters.detach(), {n: p.grad for n, p in model.named_parameters()}

    filters, grads = run(True)
    ref_filters, ref_grads = run(False)
    torch.testing.assert_close(filters, ref_filters, rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)
