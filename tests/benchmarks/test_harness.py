"""The benchmark harness on a tiny budget: every method on ``glyphs`` 5-way 1-shot.

One shared run (all methods, 32 training and 20 test episodes, 3 queries per class) feeds
most tests; the others copy its output folder or run two cheap methods. One torch thread:
on a 2-core machine that other jobs keep busy, two threads are several times slower.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("easyfsl")
pytest.importorskip("learn2learn")

from mmnet_plugin.bench import cli as harness  # noqa: E402
from mmnet_plugin.bench.methods import METHODS  # noqa: E402

ALL = "mmnet,mmnet-mixed,maml,protonet,matchingnet"
TINY = [
    "--dataset",
    "glyphs",
    "--settings",
    "5w1s",
    "--train-episodes",
    "32",
    "--test-episodes",
    "20",
    "--queries",
    "3",
    "--mixed-ways",
    "2-5",
    "--mixed-shots",
    "1-2",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--threads",
    "1",
    "--no-progress",
]


def _run(out: Path, *extra: str, methods: str = ALL) -> int:
    return harness.main(TINY + ["--methods", methods, "--output", str(out)] + list(extra))


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    code = _run(out)
    return out, code


def test_results_files_exist_and_parse(tiny_run):
    out, code = tiny_run
    assert code == 0
    res = _results(out)
    assert res["format"] == harness.FORMAT
    assert {r["method"] for r in res["records"]} == set(ALL.split(","))
    assert all(r["status"] == "ok" for r in res["records"])
    run = res["run"]
    for key in ("python", "torch", "numpy", "easyfsl", "learn2learn"):
        assert run["versions"][key], key
    assert run["device"]["type"] == "cpu"
    # the harness tunes the CPU allocator (mmnet_plugin.runtime) and records how
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert run["device"]["cpu_allocator"].startswith("glibc" if glibc else "default")
    assert "commit" in run["git"]
    assert run["seeds"]["5w1s"]["train"] != run["seeds"]["5w1s"]["test"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 5 and {r["method"] for r in rows} == set(ALL.split(","))
    md = (out / "leaderboard.md").read_text()
    assert "99.28" in md and "Snell" in md and "MatchingNet (FCE, cosine" in md
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "records").glob("*.json"))) == 5


def test_fingerprints_agree(tiny_run):
    out, _ = tiny_run
    recs = {r["method"]: r for r in _results(out)["records"]}
    assert len({r["test_fingerprint"] for r in recs.values()}) == 1
    shared = {r["train_fingerprint"] for m, r in recs.items() if m != "mmnet-mixed"}
    assert len(shared) == 1
    assert recs["mmnet-mixed"]["train_fingerprint"] not in shared
    for m, r in recs.items():
        assert r["train_episodes"] == 32, m
        assert r["check"] == "ok", m
        assert r["test_episodes"] == 20 and r["queries"] == 3
    # each method cut the same stream in its own batch size (MM-Net: 1 episode a step at
    # this tiny budget, see mmnet_plugin/bench/methods/mmnet.py; MAML: its meta-batch of 32)
    assert recs["mmnet"]["train_steps"] == 32 and recs["maml"]["train_steps"] == 1
    assert recs["protonet"]["train_steps"] == 32
    checks = _results(out)["checks"]["5w1s"]
    assert checks["test_fingerprints_agree"] and checks["train_fingerprints_agree"]


def test_accuracies_finite_and_trained_method_beats_chance(tiny_run):
    out, _ = tiny_run
    recs = {r["method"]: r for r in _results(out)["records"]}
    for m, r in recs.items():
        assert math.isfinite(r["accuracy"]) and 0.0 <= r["accuracy"] <= 1.0, m
        assert math.isfinite(r["ci95"]) and r["ci95"] >= 0.0, m
        assert r["parameters"] > 0 and r["train_time_s"] > 0 and r["test_ms_per_episode"] > 0, m
    assert recs["protonet"]["accuracy"] > 0.2 + 0.15


def test_resume_skips_finished_work(tiny_run, tmp_path, monkeypatch, capsys):
    src, _ = tiny_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    before = {r["method"]: r["finished_at"] for r in _results(out)["records"]}

    def must_not_build(self):
        raise AssertionError("a finished (method, setting) was trained again")

    for cls in METHODS.values():
        monkeypatch.setattr(cls, "build", must_not_build)
    assert _run(out) == 0
    assert capsys.readouterr().out.count("done already (skipped)") == 5
    after = {r["method"]: r["finished_at"] for r in _results(out)["records"]}
    assert after == before


def test_changed_configuration_is_not_reused(tiny_run, tmp_path, capsys):
    src, _ = tiny_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert _run(out, "--test-episodes", "7", methods="protonet") == 0
    text = capsys.readouterr().out
    assert "skipped" not in text and "not reused" in text
    recs = _results(out)["records"]
    assert [r["method"] for r in recs] == ["protonet"] and recs[0]["test_episodes"] == 7


def test_changed_method_settings_are_not_reused(tiny_run, tmp_path, monkeypatch, capsys):
    src, _ = tiny_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    old = {r["method"]: r for r in _results(out)["records"]}["protonet"]
    monkeypatch.setattr(METHODS["protonet"], "lr", 2e-3)
    assert _run(out, methods="protonet") == 0
    assert "other method settings" in capsys.readouterr().out
    recs = [r for r in _results(out)["records"] if r["method"] == "protonet"]
    assert len(recs) == 1 and recs[0]["key"] != old["key"] and recs[0]["hyperparameters"]["lr"] == 2e-3
    assert len(_results(out)["records"]) == 5  # the other methods' results still stand


def test_missing_library_fails_only_its_method(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # import learn2learn -> ImportError
    out = tmp_path / "out"
    code = harness.main(
        TINY + ["--methods", "maml,protonet", "--train-episodes", "4", "--test-episodes", "4", "--output", str(out)]
    )
    assert code == 1
    recs = {r["method"]: r for r in _results(out)["records"]}
    assert recs["maml"]["status"] == "failed" and "pip install learn2learn" in recs["maml"]["error"]
    assert recs["protonet"]["status"] == "ok"
    assert "pip install learn2learn" in capsys.readouterr().out
    assert not list((out / "records").glob("maml__*"))  # a failure is not "done": a rerun retries it


def test_interrupt_keeps_finished_work(tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["--methods", "protonet,matchingnet", "--train-episodes", "4", "--test-episodes", "4"]

    def interrupted(self, batch):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(METHODS["matchingnet"], "train_step", interrupted)
        assert harness.main(TINY + args + ["--output", str(out)]) == 130
    recs = _results(out)["records"]
    assert [r["method"] for r in recs] == ["protonet"]
    assert not list(out.glob("**/*.tmp"))
    finished = recs[0]["finished_at"]
    assert harness.main(TINY + args + ["--output", str(out)]) == 0
    recs = {r["method"]: r for r in _results(out)["records"]}
    assert recs["protonet"]["finished_at"] == finished and recs["matchingnet"]["status"] == "ok"


def test_test_mismatch_is_an_error():
    base = {"status": "ok", "setting": "5w1s", "train_fingerprint": "t", "shared_stream": True}
    recs = [
        dict(base, method="a", test_fingerprint="x"),
        dict(base, method="b", test_fingerprint="x"),
        dict(base, method="c", test_fingerprint="y"),
        dict(base, method="mixed", test_fingerprint="x", train_fingerprint="other", shared_stream=False),
    ]
    checks = harness.fingerprint_checks(recs)
    assert not checks["5w1s"]["test_fingerprints_agree"]
    assert checks["5w1s"]["train_fingerprints_agree"]
    assert [r["check"] for r in recs][:2] == ["ok", "ok"] and recs[3]["check"] == "ok"
    assert recs[2]["check"].startswith("ERROR")


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        harness.main(["--methods", "mmnet,nope"])
    assert exc.value.code == 2
    assert "unknown method" in capsys.readouterr().err


def test_mmnet_batch_shrinks_so_small_budgets_get_enough_steps():
    import torch

    from mmnet_plugin.bench.methods.base import MethodContext
    from mmnet_plugin.bench.methods.mmnet import MIN_STEPS, MMNetMethod

    def batch(dataset, budget):
        return MMNetMethod(MethodContext(dataset, 5, 1, 1, 28, torch.device("cpu"), budget)).episodes_per_step

    assert batch("glyphs", 160) == 1  # 160 steps rather than 10 batches of 16
    assert batch("omniglot", 2000) == 2000 // MIN_STEPS
    assert batch("omniglot", 10**6) == 16  # the paper's batch at real budgets
    assert batch("miniimagenet", 10**6) == 4


def test_a_method_of_your_own_runs_beside_the_built_in_ones(tmp_path, monkeypatch):
    """``--methods module:Class`` imports, registers and runs a user's method (the example),
    on the same episodes as a built-in one."""
    from mmnet_plugin.bench.methods import resolve_method

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    saved = dict(METHODS)
    try:
        _run_own_method(tmp_path, resolve_method)
    finally:  # the registry is process-wide: leave it as the other tests expect it
        METHODS.clear()
        METHODS.update(saved)


def _run_own_method(tmp_path, resolve_method):
    out = tmp_path / "out"
    code = harness.main(
        TINY
        + [
            "--methods",
            "custom_method:CosineCentroids,protonet",
            "--train-episodes",
            "8",
            "--test-episodes",
            "6",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    recs = {r["method"]: r for r in _results(out)["records"]}
    assert set(recs) == {"cosine-centroids", "protonet"}
    assert recs["cosine-centroids"]["status"] == "ok"
    assert recs["cosine-centroids"]["test_fingerprint"] == recs["protonet"]["test_fingerprint"]
    assert resolve_method("cosine-centroids") == "cosine-centroids"  # registered now
    for bad, message in (
        ("custom_method:Nope", "has no 'Nope'"),
        ("no_such_module:X", "cannot import"),
        ("custom_method:_scores", "not a subclass"),
        ("nope", "unknown method"),
    ):
        with pytest.raises(ValueError, match=message):
            resolve_method(bad)
