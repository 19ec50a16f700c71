"""``mmnet_plugin.bench.speed`` (``benchmarks/speed.py``) on a tiny configuration: it runs,
reports both targets and writes its measurements (the timings themselves are a benchmark, not checked here)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("easyfsl")

from mmnet_plugin.bench import speed  # noqa: E402


def test_speed_reports_targets_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "speed.json"
    assert (
        speed.main(
            [
                "--device",
                "cpu",
                "--methods",
                "protonet,mmnet",
                "--rounds",
                "1",
                "--queries",
                "2",
                "--test-episodes",
                "2",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "target MM-Net training step <= 1.5x ProtoNet's" in printed
    res = json.loads(out.read_text())["results"][0]
    ms = res["methods"]
    assert ms["mmnet"]["episodes_per_step"] == 16 and ms["protonet"]["episodes_per_step"] == 1
    assert ms["protonet"]["train_ratio_to_protonet"] == pytest.approx(1.0)
    assert ms["mmnet"]["train_ms_per_episode"] > 0 and ms["mmnet"]["test_ms_per_episode"] > 0
    assert res["train_pool"] == 16 and len(res["train_fingerprint"]) == 64
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert res["device"]["cpu_allocator"].startswith("glibc" if glibc else "default")
    assert f"allocator {res['device']['cpu_allocator']}" in printed


def test_step_mode_compares_with_bare_conv4_and_times_the_parts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "step.json"
    args = ["--step", "--profile", "--device", "cpu", "--rounds", "1", "--batch-episodes", "2", "--queries", "2"]
    assert (
        speed.main([*args, "--step-ways", "2-4", "--threads", "1", "--precision", "float32", "--json", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "target MM-Net >= 0.8x the faster bare Conv-4 step" in text and "contextual learner" in text
    res = json.loads(out.read_text())["step"][0]
    assert res["mmnet_precision"] == "float32" and res["ways"] == [2, 4]
    best = max(res[k]["images_per_s"] for k in ("conv4_float32", "conv4_bf16") if k in res)
    assert res["ratio"] == pytest.approx(res["mmnet"]["images_per_s"] / best)
    parts = res["parts"]
    assert set(parts) >= {"backbone (Conv-4, all images)", "write controller", "Adam step", "whole step"}
    timed = {k: v for k, v in parts.items() if not k.startswith("other")}
    assert all(v > 0 for v in timed.values()), timed  # every part ran (the Adam step with gradients)
