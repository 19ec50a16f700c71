"""``torchrun --nproc-per-node 2 -m mmnet_plugin bench``: the grid's (method, setting) cells
spread over two gloo ranks on the CPU (cell i on rank i % 2), rank 0 merging the records into
the same results files as one process: the same accuracies, fingerprints and keys; a method
trained once (mmnet-mixed) keeps its settings on one rank and is trained once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmnet_plugin.bench import cli as harness

pytest.importorskip("easyfsl")

ARGS = [
    "--dataset",
    "glyphs",
    "--settings",
    "5w1s,5w2s",
    "--methods",
    "mmnet,protonet,mmnet-mixed",
    "--train-episodes",
    "6",
    "--test-episodes",
    "5",
    "--queries",
    "2",
    "--device",
    "cpu",
    "--seed",
    "2",
    "--threads",
    "1",
    "--no-progress",
]

#: what may differ between the two runs: timings, memory, load, rank, where the checkpoint came from
VOLATILE = {
    "rank",
    "finished_at",
    "job_wall_s",
    "load_average",
    "peak_memory_mib",
    "test_ms_per_episode",
    "test_time_s",
    "test_harness_s",
    "train_time_s",
    "train_step_time_s",
    "train_wall_s",
    "validation_time_s",
    "train_harness_s",
    "train_episodes_per_s",
    "checkpoint_s",
    "budget_rule",
    "curve",
    "best_val",
    "train_reused_from",
    "code",
}


def _records(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    return {(r["method"], r["setting"]): r for r in res["records"]}, res


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)
def test_two_ranks_give_the_records_of_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert harness.main(ARGS + ["--output", str(one)]) == 0
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "mmnet_plugin",
            "bench",
            *ARGS,
            "--output",
            str(two),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a, ra = _records(one)
    b, rb = _records(two)
    assert set(a) == set(b) and len(a) == 6
    assert {r["rank"] for r in b.values()} == {0, 1}  # both ranks ran cells
    assert b[("mmnet", "5w1s")]["rank"] == 0 and b[("protonet", "5w1s")]["rank"] == 1  # cell i on rank i % 2
    assert b[("mmnet", "5w2s")]["rank"] == 1 and b[("protonet", "5w2s")]["rank"] == 0
    # the mixed model (trained once) stays on one rank, which trains it once and reuses it
    assert b[("mmnet-mixed", "5w1s")]["rank"] == b[("mmnet-mixed", "5w2s")]["rank"]
    assert "train_reused_from" not in b[("mmnet-mixed", "5w1s")]
    assert b[("mmnet-mixed", "5w2s")].get("train_reused_from")
    for cell, rec in a.items():
        other = b[cell]
        assert rec["accuracy"] == other["accuracy"] and rec["ci95"] == other["ci95"], cell
        assert rec["test_fingerprint"] == other["test_fingerprint"], cell
        assert rec["train_fingerprint"] == other["train_fingerprint"], cell
        assert rec["key"] == other["key"], cell  # same configuration and code: a run resumes the other's
        assert {k: v for k, v in rec.items() if k not in VOLATILE} == {
            k: v for k, v in other.items() if k not in VOLATILE
        }, cell
    assert ra["checks"] == rb["checks"] and rb["run"]["distributed"]["world_size"] == 2
    assert sorted(p.name for p in (one / "records").glob("*.json")) == sorted(
        p.name for p in (two / "records").glob("*.json")
    )
    for name in ("results.csv", "leaderboard.md"):
        assert (two / name).is_file()
    rows = [
        {k: r[k] for k in ("method", "setting", "accuracy", "test_fingerprint")}
        for r in csv.DictReader((two / "results.csv").open())
    ]
    assert rows == [
        {k: r[k] for k in ("method", "setting", "accuracy", "test_fingerprint")}
        for r in csv.DictReader((one / "results.csv").open())
    ]
