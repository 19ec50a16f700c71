"""The ``mmnet`` command: train and evaluate end to end, one-line errors."""

import subprocess
import sys

import pytest

from mmnet_plugin.arguments import parse_settings
from mmnet_plugin.cli import main


def test_train_then_evaluate_on_glyphs(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    args = ["--dataset", "glyphs", "--device", "cpu", "--queries", "2", "--no-progress"]
    rc = main(["train", *args, "--ways", "2-5", "--shots", "1-2", "--steps", "2", "--batch-episodes", "2",
               "--dm", "16", "--dr", "16", "--checkpoint", str(ckpt), "--log", str(tmp_path / "log.jsonl")])
    assert rc == 0 and ckpt.is_file()
    out = capsys.readouterr().out
    assert "trained 2 steps x 2 episodes" in out and "training fingerprint" in out
    rc = main(["train", *args, "--ways", "2-5", "--shots", "1-2", "--steps", "3", "--batch-episodes", "2",
               "--dm", "16", "--dr", "16", "--checkpoint", str(ckpt), "--resume"])
    assert rc == 0 and "trained 3 steps" in capsys.readouterr().out
    rc = main(["train", *args, "--ways", "2-5", "--shots", "1-2", "--steps", "9", "--batch-episodes", "2",
               "--dm", "16", "--dr", "16", "--checkpoint", str(ckpt), "--resume", "--time-limit", "1e-9"])
    out = capsys.readouterr().out
    assert rc == 0 and "trained 4 steps" in out and "stopped by --time-limit" in out
    rc = main(["evaluate", *args, "--checkpoint", str(ckpt), "--ways", "3", "--shots", "1", "--episodes", "4"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("glyphs test 3-way 1-shot: accuracy ") and "n=4 episodes" in line
    assert "fingerprint " in line and len(line.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--ways", "5-2"], "empty"),
        (["train", "--steps", "0"], "at least 1"),
        (["train", "--dataset", "cifar"], "invalid choice"),
        (["evaluate"], "--checkpoint"),
        (["train", "--dataset", "glyphs", "--time-limit", "-5"], "time_limit"),
    ],
)
def test_bad_arguments_give_one_line(argv, message):
    proc = subprocess.run([sys.executable, "-m", "mmnet_plugin", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runtime_errors_give_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--dataset", "glyphs", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmnet: error: checkpoint") and "truncated or corrupt" in err
    assert main(["train", "--dataset", "omniglot", "--data-root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmnet: error:") and "nowhere" in err and len(err.splitlines()) == 1


def test_settings_syntax():
    assert parse_settings("5w1s, 20W5S,5w1s") == [(5, 1), (20, 5)]
    with pytest.raises(ValueError, match="<ways>w<shots>s"):
        parse_settings("5-1")
