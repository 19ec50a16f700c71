"""No code runs from files: the harness and the analysis load checkpoints with
``torch.load(..., weights_only=True)`` (through ``mmnet_plugin.bench.files.safe_torch_load``).

A planted checkpoint whose unpickling would write a marker file is first shown to be
harmful with ``weights_only=False``; then the helper and the harness must refuse it, name
the file, leave no marker, and (the harness) retrain instead of failing.
"""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from mmnet_plugin.bench.common import CheckpointError, atomic_torch_save, safe_torch_load  # noqa: E402


class _Planted:
    """Unpickling this calls ``Path.write_text(marker, "ran")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "ran"))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"state": {"model": _Planted(marker)}, "stats": {"train_episodes": 1}}, path)


def test_planted_pickle_is_harmful_without_weights_only(tmp_path):
    # the plant really runs code when loaded the old way, so the tests below can fail
    ckpt, marker = tmp_path / "evil.pt", tmp_path / "marker.txt"
    _plant(ckpt, marker)
    torch.load(ckpt, weights_only=False)
    assert marker.read_text() == "ran"


def test_safe_load_refuses_planted_pickle_and_names_the_file(tmp_path):
    ckpt, marker = tmp_path / "evil.pt", tmp_path / "marker.txt"
    _plant(ckpt, marker)
    with pytest.raises(CheckpointError) as exc:
        safe_torch_load(ckpt)
    assert not marker.exists()
    msg = str(exc.value)
    assert str(ckpt) in msg and "weights_only=True" in msg and "\n" not in msg
    assert isinstance(exc.value, ValueError)  # the analysis's resume path catches ValueError


def test_safe_load_reads_plain_checkpoints_and_reports_truncated_ones(tmp_path):
    good = tmp_path / "good.pt"
    atomic_torch_save({"state": {"model": {"w": torch.ones(3)}}, "stats": {"train_episodes": 4, "fp": "ab"}}, good)
    loaded = safe_torch_load(good)
    assert torch.equal(loaded["state"]["model"]["w"], torch.ones(3)) and loaded["stats"]["fp"] == "ab"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="bad.pt"):
        safe_torch_load(bad)


def test_harness_refuses_a_planted_checkpoint_and_retrains(tmp_path, capsys):
    pytest.importorskip("easyfsl")
    from mmnet_plugin.bench import cli as harness

    out, marker = tmp_path / "out", tmp_path / "marker.txt"
    args = [
        "--dataset",
        "glyphs",
        "--settings",
        "5w1s",
        "--train-episodes",
        "4",
        "--test-episodes",
        "4",
        "--queries",
        "2",
        "--mixed-ways",
        "2-5",
        "--mixed-shots",
        "1-1",
        "--device",
        "cpu",
        "--seed",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "--methods",
        "mmnet-mixed",
        "--output",
        str(out),
    ]
    assert harness.main(args) == 0
    ckpts = list((out / "checkpoints").glob("mmnet-mixed-*.pt"))
    assert len(ckpts) == 1  # the trained-once model's checkpoint, which a resumed run loads
    _plant(ckpts[0], marker)
    for rec in (out / "records").glob("mmnet-mixed__*.json"):
        rec.unlink()  # so the rerun reaches the checkpoint
    capsys.readouterr()
    assert harness.main(args) == 0
    err = capsys.readouterr().err
    assert not marker.exists()
    assert str(ckpts[0]) in err and "refused" in err and "Traceback" not in err
    # it retrained and wrote a clean checkpoint in place of the planted one
    assert isinstance(safe_torch_load(ckpts[0]), dict)
