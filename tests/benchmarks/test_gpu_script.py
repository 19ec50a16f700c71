"""benchmarks/gpu_leaderboard.sh, checked on the CPU at a tiny budget on ``glyphs`` (the GPU
run itself needs a leased GPU and real Omniglot): it runs the published recipes at equal
compute with validation, and packs results without checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("easyfsl")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_leaderboard_script_runs_on_cpu_at_a_tiny_budget(tmp_path):
    carry, out = tmp_path / "carry", tmp_path / "out"
    (carry / "datasets").mkdir(parents=True)
    env = dict(
        os.environ,
        DEVICE="cpu",
        DATASET="glyphs",
        PYTHON=sys.executable,
        BUDGET="0.5",
        SETTINGS="5w1s",
        METHODS="protonet,matchingnet",
        TEST_EPISODES="3",
        VAL_EPISODES="2",
        VAL_POINTS="1",
        EXTRA="--queries 2",
        DEADLINE="300",
        MMNET_CACHE_DIR=str(tmp_path / "cache"),
    )
    res = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_leaderboard.sh"), str(carry), str(out)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads((out / "leaderboard" / "results.json").read_text())
    assert results["run"]["budget_seconds"] == 0.5 and results["run"]["validation"]["enabled"]
    recs = results["records"]
    assert {r["method"] for r in recs} == {"protonet", "matchingnet"}
    assert all(r["recipe"] == "published" and r["stop_reason"] == "seconds" and r["curve"] for r in recs)
    assert list((out / "leaderboard" / "checkpoints").glob("*.pt"))  # kept on the machine...
    with tarfile.open(out / "leaderboard.tgz") as tar:  # ...but not packed
        names = tar.getnames()
    assert any(n.endswith("results.json") for n in names) and not any(n.endswith(".pt") for n in names)
