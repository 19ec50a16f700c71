"""The episodic trainer: exact resume, atomic and checked checkpoints, learning on glyphs."""

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

import mmnet_plugin.training as training
from mmnet_plugin import MMNet, evaluate, load_dataset
from mmnet_plugin.data import TensorFewShotDataset
from mmnet_plugin.episodes import EpisodeSampler
from mmnet_plugin.training import CheckpointError, TrainConfig, Trainer, load_checkpoint

SMALL = dict(dm=32, dr=32)


def _dataset():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20 * 6, 1, 28, 28, generator=g)
    return TensorFewShotDataset(images, np.repeat(np.arange(20), 6))


def _model(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MMNet(**SMALL)


def _run(tmp_path, steps, resume=False, name="ckpt.pt", **config):
    sampler = EpisodeSampler(_dataset(), ways=(2, 5), shots=(1, 3), queries=2, seed=4)
    cfg = TrainConfig(
        steps=steps,
        batch_episodes=3,
        checkpoint=str(tmp_path / name),
        log_every=1,
        progress=False,
        log_path=str(tmp_path / (name + ".jsonl")),
        **config,
    )
    trainer = Trainer(_model(), cfg, model_config=SMALL)
    trainer.fit(sampler, resume=resume)
    return trainer, sampler


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, where


class _Toy(torch.nn.Module):
    """A model whose loss records the dtype its linear layer computed in."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)
        self.dtypes = []

    def loss(self, episodes):
        x = torch.stack([ep.query_x.flatten()[:4] for ep in episodes])
        out = self.lin(x)
        self.dtypes.append(out.dtype)
        return out.pow(2).mean()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full, full_sampler = _run(tmp_path / "a", steps=6)
    _run(tmp_path / "b", steps=3)
    resumed, resumed_sampler = _run(tmp_path / "b", steps=6, resume=True)
    full_losses = [r["loss"] for r in full.history if "loss" in r]
    resumed_losses = [r["loss"] for r in resumed.history if "loss" in r]
    assert len(resumed_losses) == 3
    assert resumed_losses == full_losses[3:]
    assert resumed_sampler.fingerprint == full_sampler.fingerprint
    _assert_same(full.model.state_dict(), resumed.model.state_dict())
    log = [json.loads(line) for line in (tmp_path / "b" / "ckpt.pt.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    starts = [r for r in log if r.get("start")]
    assert [r["step"] for r in starts] == [0, 3]  # one start record per fit, stating the schedule
    assert starts[0]["lr_schedule"] == {"name": "step", "lr": 1e-3, "halve_every": 20000, "gamma": 0.5}


@pytest.mark.parametrize("schedule", ["budget", "cosine"])
def test_resume_is_exact_under_the_budget_and_cosine_schedules(tmp_path, schedule):
    full, _ = _run(tmp_path / "a", steps=5, lr_schedule=schedule)
    _run(tmp_path / "b", steps=5, lr_schedule=schedule, time_limit=1e-9)  # stops after step 1
    _run(tmp_path / "b", steps=5, lr_schedule=schedule, resume=True, time_limit=1e-9)  # step 2
    resumed, _ = _run(tmp_path / "b", steps=5, lr_schedule=schedule, resume=True)
    lrs = [r["lr"] for r in full.history if "loss" in r]
    assert len(set(lrs)) > 2  # the schedule really moves the rate within the run
    assert [r["lr"] for r in resumed.history if "loss" in r] == lrs[2:]
    assert [r["loss"] for r in resumed.history if "loss" in r] == [r["loss"] for r in full.history if "loss" in r][2:]
    _assert_same(full.model.state_dict(), resumed.model.state_dict())
    _assert_same(full.optimizer.state_dict(), resumed.optimizer.state_dict())


def test_budget_and_cosine_schedules_follow_their_formulas():
    sampler = EpisodeSampler(_dataset(), ways=2, shots=1, queries=1, seed=0)
    budget = Trainer(
        _Toy(), TrainConfig(steps=8, batch_episodes=1, lr=1e-3, lr_schedule="budget", log_every=1, progress=False)
    )
    budget.fit(sampler)
    # halve every 8 // 4 = 2 steps: the rate after step t is lr * 0.5 ** (t // 2)
    assert [r["lr"] for r in budget.history if "loss" in r] == pytest.approx(
        [1e-3 * 0.5 ** (t // 2) for t in range(1, 9)]
    )
    assert budget.schedule == {"name": "budget", "lr": 1e-3, "halve_every": 2, "gamma": 0.5}
    cosine = Trainer(
        _Toy(), TrainConfig(steps=8, batch_episodes=1, lr=1e-3, lr_schedule="cosine", log_every=1, progress=False)
    )
    cosine.fit(sampler)
    assert [r["lr"] for r in cosine.history if "loss" in r] == pytest.approx(
        [0.5e-3 * (1 + math.cos(math.pi * t / 8)) for t in range(1, 9)], abs=1e-12
    )
    with pytest.raises(ValueError, match="lr_schedule must be one of step, budget, cosine"):
        TrainConfig(lr_schedule="linear")


def test_checkpoint_states_the_schedule_and_resume_with_another_is_refused(tmp_path):
    _run(tmp_path, steps=4, lr_schedule="budget", time_limit=1e-9)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state["train_config"]["lr_schedule"] == "budget"
    assert state["train_config"]["schedule"] == {"name": "budget", "lr": 1e-3, "halve_every": 1, "gamma": 0.5}
    with pytest.raises(CheckpointError, match="schedule budget .* asks for cosine"):
        _run(tmp_path, steps=4, lr_schedule="cosine", resume=True)
    with pytest.raises(CheckpointError, match="halve_every 1, .* halve_every 2"):  # budget follows --steps
        _run(tmp_path, steps=8, lr_schedule="budget", resume=True)
    with pytest.raises(CheckpointError, match="learning-rate schedule"):
        _run(tmp_path, steps=4, lr_schedule="budget", lr=5e-4, resume=True)
    assert _run(tmp_path, steps=4, lr_schedule="budget", resume=True)[0].step == 4


def test_checkpoint_without_a_stated_schedule_resumes_as_the_step_schedule(tmp_path):
    _run(tmp_path, steps=1)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    del state["train_config"]["schedule"], state["train_config"]["lr_schedule"]  # as written before schedules
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="schedule step"):
        _run(tmp_path, steps=2, lr_schedule="cosine", resume=True)
    assert _run(tmp_path, steps=2, resume=True)[0].step == 2


def test_checkpoint_holds_everything_and_loads_weights_only(tmp_path):
    _run(tmp_path, steps=2)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert {"model", "optimizer", "scheduler", "sampler", "train_config", "model_config", "step"} <= set(state)
    assert state["step"] == 2 and state["model_config"] == SMALL and state["sampler"]["drawn"] == 6
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    _run(tmp_path, steps=1)
    path = tmp_path / "ckpt.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        _run(tmp_path, steps=2, resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_refuses_other_model_configuration(tmp_path):
    _run(tmp_path, steps=1)
    sampler = EpisodeSampler(_dataset(), ways=(2, 5), shots=(1, 3), queries=2, seed=4)
    cfg = TrainConfig(steps=2, batch_episodes=3, checkpoint=str(tmp_path / "ckpt.pt"), progress=False)
    other = dict(dm=32, dr=64)
    trainer = Trainer(MMNet(**other), cfg, model_config=other)
    with pytest.raises(CheckpointError, match="same model options"):
        trainer.fit(sampler, resume=True)


def test_learning_rate_is_halved_on_schedule():
    sampler = EpisodeSampler(_dataset(), ways=2, shots=1, queries=1, seed=0)
    trainer = Trainer(_model(), TrainConfig(steps=5, batch_episodes=1, lr=1e-3, lr_halve_every=2, progress=False))
    trainer.fit(sampler)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)


def test_validation_keeps_the_best_checkpoint(tmp_path):
    sampler = EpisodeSampler(_dataset(), ways=3, shots=1, queries=2, seed=0)
    scores = iter([0.5, 0.7, 0.6])
    cfg = TrainConfig(steps=3, batch_episodes=2, val_every=1, checkpoint=str(tmp_path / "m.pt"), progress=False)
    trainer = Trainer(_model(), cfg)
    trainer.fit(sampler, validate=lambda m: next(scores))
    assert trainer.best_val == 0.7
    assert load_checkpoint(tmp_path / "m.best.pt")["step"] == 2


def test_training_on_glyphs_beats_chance_by_a_wide_margin():
    """About a minute of CPU training reaches at least 45% on 5-way 1-shot (chance: 20%),
    and clearly more than the same model before training."""
    train = load_dataset("glyphs", split="train")
    test = load_dataset("glyphs", split="test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MMNet()  # the paper's sizes (Dm = Dr = 512)

    def test_accuracy():
        return evaluate(model, EpisodeSampler(test, ways=5, shots=1, queries=5, seed=1, episodes=60))

    before = test_accuracy()
    sampler = EpisodeSampler(train, ways=5, shots=1, queries=5, seed=0)
    Trainer(model, TrainConfig(steps=60, batch_episodes=8, progress=False)).fit(sampler)
    after = test_accuracy()
    assert after.fingerprint == before.fingerprint
    assert after.accuracy >= 0.45, after.summary()
    assert after.accuracy >= before.accuracy + 0.05, (before.summary(), after.summary())


def test_time_limit_stops_early_keeps_the_checkpoint_and_resume_finishes(tmp_path):
    sampler = EpisodeSampler(_dataset(), ways=5, shots=1, queries=2, seed=4)
    ckpt = tmp_path / "t.pt"
    cfg = TrainConfig(steps=5, batch_episodes=2, checkpoint=str(ckpt), progress=False, time_limit=1e-9)
    trainer = Trainer(_model(), cfg, model_config=SMALL)
    records = trainer.fit(sampler)
    assert trainer.stopped_early and trainer.step == 1
    assert records[-1]["stopped"] == "time_limit" and records[-1]["step"] == 1
    assert load_checkpoint(ckpt)["step"] == 1
    cfg2 = TrainConfig(steps=5, batch_episodes=2, checkpoint=str(ckpt), progress=False)
    again = Trainer(_model(), cfg2, model_config=SMALL)
    again.fit(EpisodeSampler(_dataset(), ways=5, shots=1, queries=2, seed=4), resume=True)
    assert again.step == 5 and not again.stopped_early


def test_time_limit_must_not_be_negative():
    with pytest.raises(ValueError, match="time_limit"):
        TrainConfig(time_limit=-1)


# ---------------------------------------------------------------- bf16 on the CPU
def test_bf16_autocasts_on_the_cpu_and_the_loss_is_float32(monkeypatch):
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: True)
    sampler = EpisodeSampler(_dataset(), ways=2, shots=1, queries=2, seed=0)
    toy = _Toy()
    trainer = Trainer(toy, TrainConfig(steps=2, batch_episodes=2, bf16=True, progress=False))
    trainer.fit(sampler)
    assert toy.dtypes == [torch.bfloat16, torch.bfloat16]
    loss, _ = trainer._forward(sampler.sample_batch(2))
    assert loss.dtype == torch.float32
    assert trainer.run_info["start"] and trainer.run_info["bf16_autocast"] is True
    assert all("loss" in r for r in trainer.history)  # the start record is in the log file only
    fp32 = _Toy()
    Trainer(fp32, TrainConfig(steps=1, batch_episodes=2, progress=False)).fit(sampler)
    assert fp32.dtypes == [torch.float32]


def test_bf16_mmnet_step_on_the_cpu(monkeypatch):
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: True)
    sampler = EpisodeSampler(_dataset(), ways=3, shots=1, queries=2, seed=0)
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, TrainConfig(steps=2, batch_episodes=2, bf16=True, progress=False, log_every=1))
    trainer.fit(sampler)
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_bf16_is_refused_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="no native bf16 instructions"):
        Trainer(_model(), TrainConfig(steps=1, bf16=True, progress=False))
    Trainer(_model(), TrainConfig(steps=1, bf16=False, progress=False))  # float32 is fine


def test_cpu_bf16_probe_agrees_with_torch():
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is None:
        assert training.cpu_bf16_supported() is None
    else:
        assert training.cpu_bf16_supported() == (bool(probe()) or bool(torch.cpu._is_amx_tile_supported()))


# ---------------------------------------------------------------- bad input, found before the first step
def test_progress_bar_does_not_convert_a_tensor_that_requires_grad():
    sampler = EpisodeSampler(_dataset(), ways=2, shots=1, queries=1, seed=0)
    trainer = Trainer(_model(), TrainConfig(steps=2, batch_episodes=1, progress=True))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*requires_grad.*")
        trainer.fit(sampler)
    assert trainer.step == 2


def test_easyfsl_tuples_are_refused_naming_the_adapter():
    ep = EpisodeSampler(_dataset(), ways=2, shots=1, queries=1, seed=0).sample()
    five = (ep.support_x, ep.support_y, ep.query_x, ep.query_y, ep.class_ids)
    trainer = Trainer(_model(), TrainConfig(steps=1, batch_episodes=1, progress=False))
    with pytest.raises(ValueError, match="not an Episode.*mmnet_plugin.integrations.easyfsl.EasyFSLEpisodes"):
        trainer.fit([five])
    with pytest.raises(ValueError, match="got a dict, not an Episode"):
        trainer.fit([{"support_x": ep.support_x}])
    assert trainer.step == 0


def _counting(sampler):
    drawn = []

    def gen():
        for ep in sampler:
            drawn.append(1)
            yield ep

    return gen(), drawn


@pytest.mark.parametrize("where", ["checkpoint", "log_path"])
def test_unwritable_checkpoint_or_log_fails_before_the_first_step(tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    source, drawn = _counting(EpisodeSampler(_dataset(), ways=2, shots=1, queries=1, seed=0))
    cfg = TrainConfig(steps=2, batch_episodes=1, progress=False, **{where: str(blocker / "out")})
    trainer = Trainer(_model(), cfg)
    with pytest.raises(ValueError, match="a-file is a file, not a folder"):
        trainer.fit(source)
    assert trainer.step == 0 and not drawn
    cfg = TrainConfig(steps=2, batch_episodes=1, progress=False, **{where: str(tmp_path)})
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        Trainer(_model(), cfg).fit(source)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_fails_before_the_first_step(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        source, drawn = _counting(EpisodeSampler(_dataset(), ways=2, shots=1, queries=1, seed=0))
        trainer = Trainer(_model(), TrainConfig(steps=2, batch_episodes=1, progress=False, checkpoint=str(ro / "m.pt")))
        with pytest.raises(ValueError, match="is not writable"):
            trainer.fit(source)
        assert not drawn
    finally:
        ro.chmod(0o755)


def test_writability_probe_leaves_nothing_behind(tmp_path):
    training.check_writable(tmp_path / "sub" / "deeper" / "m.pt", "checkpoint")
    assert list(tmp_path.iterdir()) == []  # no folder created, no probe file left
    existing = tmp_path / "log.jsonl"
    existing.write_text("old\n")
    training.check_writable(existing, "log")
    assert existing.read_text() == "old\n"


def _fit_with_validations(tmp_path, steps, accuracies, resume=False, **config):
    """Fit with a validate callable that returns the given accuracies in turn (ci95 0.01)."""
    sampler = EpisodeSampler(_dataset(), ways=(2, 5), shots=(1, 3), queries=2, seed=4)
    cfg = TrainConfig(
        steps=steps,
        batch_episodes=2,
        checkpoint=str(tmp_path / "p.pt"),
        log_every=1,
        progress=False,
        val_every=1,
        **config,
    )
    trainer = Trainer(_model(), cfg, model_config=SMALL)
    values = iter(accuracies)
    trainer.fit(sampler, validate=lambda m: {"accuracy": next(values), "ci95": 0.01}, resume=resume)
    return trainer


def test_plateau_schedule_halves_after_patience_validations_without_a_gain(tmp_path):
    # the first validation sets the best; 0.502 is not a gain of more than 0.002; three then halve
    trainer = _fit_with_validations(
        tmp_path, 6, [0.5, 0.502, 0.501, 0.5, 0.6, 0.6], lr_schedule="plateau", lr_patience=2
    )
    lrs = [v["lr"] for v in trainer.validations]
    assert lrs == [1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4]
    assert trainer.state_dict()["train_config"]["schedule"]["name"] == "plateau"


def test_plateau_schedule_needs_validation():
    with pytest.raises(ValueError, match="val_every"):
        TrainConfig(lr_schedule="plateau")


def test_plateau_rule():
    def v(step, acc, lr=1e-3, ci=0.01):
        return {"step": step, "accuracy": acc, "ci95": ci, "lr": lr}

    rising = [v(1, 0.5), v(2, 0.6), v(3, 0.7, 5e-4), v(4, 0.8, 5e-4)]
    flat = [v(1, 0.5), v(2, 0.7), v(3, 0.705, 5e-4), v(4, 0.709, 5e-4)]
    no_decay = [v(1, 0.5), v(2, 0.7), v(3, 0.705), v(4, 0.709)]
    assert not training.plateau_reached(rising, 1e-3)
    assert training.plateau_reached(flat, 1e-3)
    assert not training.plateau_reached(no_decay, 1e-3)
    assert not training.plateau_reached([], 1e-3)


def test_stop_on_plateau_stops_and_validations_survive_a_resume(tmp_path):
    first = _fit_with_validations(
        tmp_path, 3, [0.5, 0.6, 0.7], lr_schedule="plateau", lr_patience=0, stop_on_plateau=True
    )
    assert not first.stopped_early and len(first.validations) == 3
    # resumed: the earlier validations are still there; flat after a decay -> stop
    again = _fit_with_validations(
        tmp_path,
        20,
        [0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7],
        resume=True,
        lr_schedule="plateau",
        lr_patience=0,
        stop_on_plateau=True,
    )
    assert again.validations[:3] == first.validations
    assert again.stopped_early and again.history[-1]["stopped"] == "plateau"
    assert again.step < 20 and any(v["lr"] < 1e-3 for v in again.validations)
