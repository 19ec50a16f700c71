"""Issue 19 item 3: under ``--budget-seconds`` the budget rule times the batch that is
trained (not only a 1-episode probe), so every method gets ``--min-steps`` steps; only when
even 1-episode steps cannot fit does the run warn before training, and the record says so."""

from __future__ import annotations

import json

import pytest

from mmnet_plugin.bench.recipes import rule_batch
from mmnet_plugin.bench.train import _controlled_batch, _one_episode_steps_fit

pytest.importorskip("easyfsl")


def _simulate(per_episode, recipe_batch: int, budget: float, min_steps: int, controlled: bool) -> int:
    """Steps a method makes in ``budget`` seconds when a step of ``b`` episodes costs
    ``b * per_episode(b)``: two 1-episode probe steps, then the rule's batch."""
    spent, steps = 0.0, 0
    for _ in range(2):
        spent += per_episode(1)
        steps += 1
    b = rule_batch(recipe_batch, budget / per_episode(1), min_steps)
    while spent < budget:
        spent += b * per_episode(b)
        steps += 1
        if controlled:
            b = _controlled_batch(b, per_episode(b), budget - spent, min_steps - steps)
    return steps


def test_the_trained_batch_is_timed_so_min_steps_are_reached():
    # a method whose per-episode cost grows with the batch (like MM-Net at 20w1s, whose
    # 1-episode probe promised 200 steps and gave 168)
    def cost(b):
        return 0.01 * (1 + b / 4)

    assert _simulate(cost, 16, 10.0, 200, controlled=False) < 200  # the old rule breaks its promise
    assert _simulate(cost, 16, 10.0, 200, controlled=True) >= 200


def test_controlled_batch_never_grows_and_shrinks_only_when_needed():
    assert _controlled_batch(13, 0.1, 1000.0, 100) == 13
    assert _controlled_batch(13, 0.1, 100.0, 100) == 10
    assert _controlled_batch(13, 0.1, 1.0, 100) == 1
    assert _controlled_batch(13, 0.1, 1.0, 0) == 13


def test_warning_only_when_one_episode_steps_cannot_fit():
    assert _one_episode_steps_fit(100.0, 0.2, 0.1, 2, 200) is None
    text = _one_episode_steps_fit(10.0, 0.2, 0.1, 2, 200)
    assert "fewer than --min-steps 200" in text and "about 100 steps" in text


def test_the_run_warns_before_training_and_the_record_says_so(tmp_path, capsys):
    from mmnet_plugin.bench import cli as harness

    out = tmp_path / "out"
    argv = ["--dataset", "glyphs", "--settings", "5w1s", "--methods", "protonet", "--queries", "2", "--seed", "5"]
    argv += ["--threads", "1", "--no-progress", "--budget-seconds", "2", "--min-steps", "100000"]
    argv += ["--test-episodes", "2", "--output", str(out)]
    assert harness.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: protonet 5w1s: " in err and "fewer than --min-steps 100000" in err
    rec = json.loads((out / "results.json").read_text())["records"][0]
    rule = rec["budget_rule"]
    assert rule["met"] is False and "fewer than --min-steps 100000" in rule["unmet_warning"]
    if rec["train_steps"] >= 2:  # the probe timed a step: the warning came before training went on
        assert "even 1-episode steps" in rule["unmet_warning"]
    assert rec["episodes_per_step"] == 1
