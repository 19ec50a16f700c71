"""The episodic trainer: exact resume, atomic and checked checkpoints, learning on glyphs."""

import json

import numpy as np
import pytest
import torch

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


def _run(tmp_path, steps, resume=False, name="ckpt.pt"):
    sampler = EpisodeSampler(_dataset(), ways=(2, 5), shots=(1, 3), queries=2, seed=4)
    cfg = TrainConfig(steps=steps, batch_episodes=3, checkpoint=str(tmp_path / name), log_every=1,
                      progress=False, log_path=str(tmp_path / (name + ".jsonl")))
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
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


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
