"""Issue 12: recipes, equal compute, validation curves, results tied to code, bad input.

Tiny budgets on ``glyphs`` (one thread, 2-3 queries per class); nothing here asserts a
speed. The shared run (``val_run``) trains ProtoNet, Matching Networks and MAML with the
published recipes and validation; the other tests run one or two cheap methods.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("easyfsl")
pytest.importorskip("learn2learn")

from mmnet_plugin.bench import cli as harness  # noqa: E402
from mmnet_plugin.bench import grid as bench_grid  # noqa: E402
from mmnet_plugin.bench import train as bench_train  # noqa: E402
from mmnet_plugin.bench.common import safe_torch_load, stream_fingerprint  # noqa: E402
from mmnet_plugin.bench.methods import METHODS  # noqa: E402
from mmnet_plugin.bench.published import RECIPE_SOURCES, SOURCES  # noqa: E402
from mmnet_plugin.bench.recipes import RecipeError, parse_recipe_spec, rule_batch  # noqa: E402

BASE = [
    "--dataset",
    "glyphs",
    "--settings",
    "5w1s",
    "--queries",
    "2",
    "--device",
    "cpu",
    "--seed",
    "5",
    "--threads",
    "1",
    "--no-progress",
]


def _main(out: Path, *extra: str) -> int:
    return harness.main(BASE + ["--output", str(out)] + list(extra))


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _records(out: Path) -> dict:
    return {r["method"]: r for r in _results(out)["records"]}


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb") / "out"
    code = _main(
        out,
        "--methods",
        "maml,protonet,matchingnet",
        "--recipe",
        "published",
        "--train-episodes",
        "12",
        "--test-episodes",
        "6",
        "--val-points",
        "3",
        "--val-episodes",
        "4",
    )
    return out, code


# ---------------------------------------------------------------------- recipes
def test_recipes_name_known_sources_and_published_ones_are_described():
    for name, cls in METHODS.items():
        assert "published" in cls.RECIPES and "harness" in cls.RECIPES, name
        for recipe in cls.RECIPES.values():
            assert all(part in SOURCES for part in recipe.source.split("+")), (name, recipe.source)
    for name in ("mmnet", "maml", "protonet", "matchingnet"):
        assert (name, "published") in RECIPE_SOURCES


def test_recipe_spec_and_defaults():
    recipes = {n: list(c.RECIPES) for n, c in METHODS.items()}
    assert parse_recipe_spec(None, ["mmnet", "maml"], recipes, "omniglot") == {
        "mmnet": "published",
        "maml": "published",
    }
    assert parse_recipe_spec(None, ["mmnet"], recipes, "glyphs") == {"mmnet": "harness"}
    assert parse_recipe_spec("published,maml=harness", ["mmnet", "maml"], recipes, "glyphs") == {
        "mmnet": "published",
        "maml": "harness",
    }
    with pytest.raises(RecipeError, match="unknown recipe 'nofce' for method maml"):
        parse_recipe_spec("maml=nofce", ["maml"], recipes, "omniglot")
    # the bare command keeps the recipe and protocol of before (no validation); real data validates
    opts = harness.resolve_options(harness.build_parser().parse_args([]))
    assert opts["train_episodes"] == 160 and not opts["validate"]
    opts = harness.resolve_options(harness.build_parser().parse_args(["--dataset", "omniglot"]))
    assert opts["validate"] and opts["val_points"] == harness.VAL_POINTS and opts["train_split"] == "train"


def test_budget_rule_is_the_same_for_every_batch():
    assert rule_batch(16, 3200, 200) == 16 and rule_batch(32, 3200, 200) == 16
    assert rule_batch(32, 160, 200) == 1 and rule_batch(16, None, 200) == 16 and rule_batch(32, 160, 0) == 32


def test_protonet_published_trains_on_five_queries_of_the_shared_episode():
    from mmnet_plugin.bench.methods.protonet import first_queries
    from mmnet_plugin.episodes import Episode

    qy = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 0])
    ep = Episode(
        torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), torch.arange(14.0).view(14, 1, 1, 1).expand(14, 1, 4, 4), qy
    )
    cut = first_queries(ep, 5)
    assert torch.bincount(cut.query_y).tolist() == [5, 5]
    assert cut.query_x[:, 0, 0, 0].tolist() == list(range(10))  # the first five of each class, in order


def test_published_recipes_run_validate_and_test_the_best_on_val(val_run):
    out, code = val_run
    assert code == 0
    res = _results(out)
    recs = _records(out)
    assert res["run"]["recipes"] == {"maml": "published", "protonet": "published", "matchingnet": "published"}
    for m, r in recs.items():
        assert r["recipe"] == "published" and r["recipe_info"]["source"], m
        # curve: validation points on the val split, the last at the end of the budget
        assert r["val_stream"]["split"] == "val" and r["val_stream"]["seed"] != r["test_stream"]["seed"]
        eps = [p["episodes"] for p in r["curve"]]
        assert len(eps) >= 3 and eps == sorted(eps) and eps[-1] == r["train_episodes"] == 12, m
        # the best to 6 decimals (the harness's tie rule: a later point must beat it after rounding)
        assert round(r["best_val"]["val_accuracy"], 6) == round(max(p["val_accuracy"] for p in r["curve"]), 6)
        assert {"steps", "seconds"} <= set(res["run"]["timing"]) | {"steps", "seconds"}
        assert all(p["seconds"] >= 0 for p in r["curve"])
    # every method alike: the budget rule shrank MAML's meta-batch of 32 to 1 (12 episodes < 200 steps)
    assert recs["maml"]["episodes_per_step"] == 1 and recs["maml"]["train_steps"] == 12
    assert recs["matchingnet"]["label"] == "MatchingNet (no FCE, cosine)"
    # MAML's test-time adaptation was chosen on val among Finn's and two smaller steps
    vc = recs["maml"]["val_choice"]
    assert vc["split"] == "val" and len(vc["candidates"]) == 3
    assert vc["candidates"][0]["choice"] == {"inner_lr": 0.4, "steps": 3}
    assert vc["chosen"] == max(vc["candidates"], key=lambda c: round(c["val_accuracy"], 6))["choice"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "leaderboard.md").read_text()
    assert "best-on-val" in md and "snell2017" in md and "Harness overhead" in md
    t = res["run"]["timing"]
    assert 0 <= t["harness_s"] <= t["wall_s"] and t["train_s"] > 0 and t["test_s"] > 0


def test_tested_weights_are_the_best_on_val_ones(tmp_path, monkeypatch):
    seen = []
    scores = iter([0.9, 0.1, 0.2, 0.3, 0.4])

    def fake_validate(m, val_ds, stream, device):
        assert stream["split"] == "val" and val_ds is not None
        seen.append({k: v.clone() for k, v in m.model.state_dict().items()})
        return next(scores), 0.0

    monkeypatch.setattr(bench_train, "_validate", fake_validate)
    out = tmp_path / "out"
    assert (
        _main(
            out,
            "--methods",
            "protonet",
            "--recipe",
            "published",
            "--train-episodes",
            "8",
            "--test-episodes",
            "3",
            "--val-every",
            "2",
        )
        == 0
    )
    rec = _records(out)["protonet"]
    assert rec["best_val"]["step"] == 2 and rec["best_val"]["val_accuracy"] == 0.9
    assert [p["step"] for p in rec["curve"]] == [2, 4, 6, 8]
    saved = safe_torch_load(next((out / "checkpoints").glob("protonet-*.pt")))["state"]["model"]
    for k, v in seen[0].items():  # the weights kept and tested are those of the first validation
        assert torch.equal(saved[k], v), k
    assert any(not torch.equal(seen[-1][k], v) for k, v in seen[0].items())


# ---------------------------------------------------------------------- equal compute
def test_budget_seconds_trains_every_method_for_the_budget_on_one_stream(tmp_path):
    out = tmp_path / "out"
    assert _main(out, "--methods", "protonet,matchingnet", "--budget-seconds", "1.0", "--test-episodes", "3") == 0
    res = _results(out)
    assert res["run"]["budget_seconds"] == 1.0 and res["run"]["train_episodes"] is None
    for m, r in _records(out).items():
        assert r["stop_reason"] == "seconds" and r["train_time_s"] >= 1.0, m
        assert r["train_steps"] >= 2 and r["train_episodes"] >= r["train_steps"]
        assert r["budget_rule"]["applies"] and r["budget_rule"]["probe_seconds_per_episode"] > 0
    check = res["checks"]["5w1s"]
    assert check["train_fingerprints_agree"] and check["train_compared_at_episodes"] >= 2


def test_training_fingerprints_are_compared_where_both_streams_reached():
    recs = []
    for m, n, marks in (
        ("a", 5, {"1": "x1", "2": "x2", "4": "x4"}),
        ("b", 9, {"1": "x1", "2": "x2", "4": "x4", "8": "x8"}),
        ("c", 6, {"1": "x1", "2": "x2", "4": "OTHER"}),
    ):
        recs.append(
            {
                "status": "ok",
                "method": m,
                "setting": "5w1s",
                "test_fingerprint": "t",
                "shared_stream": True,
                "train_episodes": n,
                "train_fingerprint": m,
                "train_fingerprint_marks": marks,
            }
        )
    checks = harness.fingerprint_checks(recs)["5w1s"]
    assert checks["train_compared_at_episodes"] == 4 and not checks["train_fingerprints_agree"]
    assert [r["check"] for r in recs][:2] == ["ok", "ok"] and recs[2]["check"].startswith("ERROR")


# ---------------------------------------------------------------------- results tied to code and data
def test_results_from_other_code_are_not_reused_unless_asked(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["--methods", "protonet", "--train-episodes", "4", "--test-episodes", "3"]
    assert _main(out, *args) == 0
    first = _records(out)["protonet"]
    assert first["code"]["source_sha256"] and "commit" in first["code"]
    real = bench_grid.code_identity

    def other_code():
        return dict(real(), source_sha256="0123456789abcdef", commit="feedface")

    monkeypatch.setattr(bench_grid, "code_identity", other_code)
    shutil.rmtree(out / "checkpoints")
    capsys.readouterr()
    assert _main(out, *args) == 0
    text = capsys.readouterr().out
    assert "made by other code" in text and "not reused" in text and "skipped" not in text
    second = _records(out)["protonet"]
    assert second["code"]["source_sha256"] == "0123456789abcdef" and second["finished_at"] >= first["finished_at"]
    assert second["key"] != first["key"]
    # back to the first code, forcing reuse of the second's record: marked, not retrained
    monkeypatch.setattr(bench_grid, "code_identity", real)
    for cls in METHODS.values():
        monkeypatch.setattr(cls, "build", lambda self: (_ for _ in ()).throw(AssertionError("retrained")))
    (out / "records" / f"protonet__5w1s__{first['key']}.json").unlink()
    assert _main(out, *args, "--reuse-stale") == 0
    rec = _records(out)["protonet"]
    assert rec["reused_stale_code"] and rec["code"]["source_sha256"] == "0123456789abcdef"
    assert "stale code" in (out / "leaderboard.md").read_text()


def test_fingerprints_cover_split_and_decoded_images(tmp_path, monkeypatch):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    args = ["--methods", "protonet", "--train-episodes", "4", "--test-episodes", "3"]
    assert _main(out_a, *args) == 0
    from mmnet_plugin.data import glyphs

    real_load = glyphs.Glyphs.load

    def brighter(self, indices):
        return real_load(self, indices) * 0.5  # same indices, other pixels

    monkeypatch.setattr(glyphs.Glyphs, "load", brighter)
    assert _main(out_b, *args) == 0
    a, b = _records(out_a)["protonet"], _records(out_b)["protonet"]
    assert a["test_index_fingerprint"] == b["test_index_fingerprint"]
    assert a["test_fingerprint"] != b["test_fingerprint"] and a["train_fingerprint"] != b["train_fingerprint"]
    ra, rb = _results(out_a)["run"], _results(out_b)["run"]
    assert ra["data_digests"]["test"] != rb["data_digests"]["test"] and ra["run_key"] != rb["run_key"]
    assert stream_fingerprint("val", "i", "d") != stream_fingerprint("test", "i", "d")


# ---------------------------------------------------------------------- bad input, before any training
@pytest.fixture
def no_training(monkeypatch):
    for cls in METHODS.values():
        monkeypatch.setattr(cls, "build", lambda self: (_ for _ in ()).throw(AssertionError("trained")))


@pytest.mark.parametrize("value", ["0", "-3", "nan", "soon"])
def test_budget_seconds_must_be_positive(value, tmp_path, capsys, no_training):
    with pytest.raises(SystemExit) as exc:
        _main(tmp_path / "out", "--budget-seconds", value)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--budget-seconds" in err and err.count("\n") == 1


def test_unknown_recipe_is_one_line(tmp_path, capsys, no_training):
    with pytest.raises(SystemExit) as exc:
        _main(tmp_path / "out", "--methods", "maml,protonet", "--recipe", "published,maml=nofce")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'nofce' for method maml" in err and "published" in err and err.count("\n") == 1


def test_more_ways_than_classes_fails_before_training(tmp_path, capsys, no_training):
    assert _main(tmp_path / "out", "--methods", "protonet", "--settings", "5w1s,1001w1s") == 2
    err = capsys.readouterr().err
    assert "1001w1s" in err and "test split" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "records").exists()


def test_trainval_with_validation_is_refused(tmp_path, capsys, no_training):
    with pytest.raises(SystemExit) as exc:
        _main(tmp_path / "out", "--train-split", "trainval", "--val-points", "3")
    assert exc.value.code == 2 and "val split" in capsys.readouterr().err


def test_unwritable_output_is_one_line(tmp_path, capsys, no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _main(blocker / "out") == 2
    err = capsys.readouterr().err
    assert "--output" in err and "not writable" in err and err.count("\n") == 1


@pytest.mark.skipif(
    hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
    reason="root writes into read-only folders",
)
def test_read_only_output_is_one_line(tmp_path, capsys, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _main(ro / "out") == 2
    finally:
        ro.chmod(0o700)
    assert "not writable" in capsys.readouterr().err


def test_protonet_train_ways_is_its_own_stream_with_five_queries(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        _main(
            out,
            "--methods",
            "protonet,matchingnet",
            "--recipe",
            "published",
            "--protonet-train-ways",
            "8",
            "--train-episodes",
            "3",
            "--test-episodes",
            "3",
        )
        == 0
    )
    recs = _records(out)
    p, m = recs["protonet"], recs["matchingnet"]
    assert p["train_stream"]["ways"] == [8, 8] and p["train_stream"]["queries"] == 5 and not p["shared_stream"]
    assert p["train_stream"]["seed"] == m["train_stream"]["seed"] and m["shared_stream"]
    assert p["train_fingerprint"] != m["train_fingerprint"] and p["check"] == "ok"  # not compared: its own stream
    assert p["test_fingerprint"] == m["test_fingerprint"]
    with pytest.raises(SystemExit) as exc:
        _main(tmp_path / "o2", "--methods", "protonet", "--recipe", "harness", "--protonet-train-ways", "8")
    assert exc.value.code == 2 and "published" in capsys.readouterr().err
