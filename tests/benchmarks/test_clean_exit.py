"""Issue 19 item 2: a successful torchrun run exits 0 on every rank, with no abort at
interpreter exit (``terminate called without an active exception``), every time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("easyfsl")


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)
def test_two_rank_grid_exits_cleanly_five_times(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env.pop("MASTER_PORT", None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = ["--dataset", "glyphs", "--settings", "5w1s", "--methods", "protonet,matchingnet"]
    args += ["--train-episodes", "2", "--val-points", "1", "--val-episodes", "2", "--test-episodes", "2"]
    args += ["--queries", "1", "--threads", "1", "--no-progress", "--seed", "3"]
    t0 = time.perf_counter()
    for i in range(5):
        res = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
            + ["-m", "mmnet_plugin", "bench", *args, "--output", str(tmp_path / f"out{i}")],
            cwd=str(tmp_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert "terminate called" not in res.stderr and "SIGABRT" not in res.stderr, res.stderr[-3000:]
        assert "ChildFailedError" not in res.stderr
        assert (tmp_path / f"out{i}" / "results.json").is_file()
    # the bound is 90 s for the five on an idle 2-core machine; 135 s were measured on a
    # loaded one (three other jobs), so the assertion is a hang guard, not the speed bound
    assert time.perf_counter() - t0 < 300
