"""The ``mmnet`` command: train and evaluate end to end, one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from mmnet_plugin.arguments import parse_settings
from mmnet_plugin.cli import main


def test_train_then_evaluate_on_glyphs(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    args = ["--dataset", "glyphs", "--device", "cpu", "--queries", "2", "--no-progress"]
    rc = main(
        [
            "train",
            *args,
            "--ways",
            "2-5",
            "--shots",
            "1-2",
            "--steps",
            "2",
            "--batch-episodes",
            "2",
            "--dm",
            "16",
            "--dr",
            "16",
            "--checkpoint",
            str(ckpt),
            "--log",
            str(tmp_path / "log.jsonl"),
        ]
    )
    assert rc == 0 and ckpt.is_file()
    out = capsys.readouterr().out
    assert "trained 2 steps x 2 episodes" in out and "training fingerprint" in out
    rc = main(
        [
            "train",
            *args,
            "--ways",
            "2-5",
            "--shots",
            "1-2",
            "--steps",
            "3",
            "--batch-episodes",
            "2",
            "--dm",
            "16",
            "--dr",
            "16",
            "--checkpoint",
            str(ckpt),
            "--resume",
        ]
    )
    assert rc == 0 and "trained 3 steps" in capsys.readouterr().out
    rc = main(
        [
            "train",
            *args,
            "--ways",
            "2-5",
            "--shots",
            "1-2",
            "--steps",
            "9",
            "--batch-episodes",
            "2",
            "--dm",
            "16",
            "--dr",
            "16",
            "--checkpoint",
            str(ckpt),
            "--resume",
            "--time-limit",
            "1e-9",
        ]
    )
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
        (["train", "--ways", "1"], "ways must be at least 2"),
        (["train", "--ways", "1-5"], "ways must be at least 2"),
        (["train", "--lr-schedule", "linear"], "invalid choice"),
        (["train", "--dataset", "glyphs", "--checkpoint", "/proc/no/such/m.pt"], "--checkpoint /proc/no/such/m.pt"),
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


@pytest.mark.parametrize("form", ["paper", "none"])
def test_query_branch_option_is_trained_saved_and_evaluated(tmp_path, capsys, form):
    import torch

    from mmnet_plugin.models import MMNet

    ckpt = tmp_path / "m.pt"
    args = ["--dataset", "glyphs", "--device", "cpu", "--queries", "2", "--no-progress"]
    assert (
        main(
            [
                "train",
                *args,
                "--steps",
                "1",
                "--batch-episodes",
                "1",
                "--dm",
                "8",
                "--dr",
                "8",
                "--query-branch",
                form,
                "--checkpoint",
                str(ckpt),
            ]
        )
        == 0
    )
    model = MMNet.from_checkpoint(ckpt)
    assert model.use_query_branch == (form != "none") and (form == "none" or model.query_branch == form)
    assert main(["evaluate", *args, "--checkpoint", str(ckpt), "--episodes", "2"]) == 0
    capsys.readouterr()
    # weights that do not fit the stored configuration: one line naming the file, no traceback
    state = torch.load(ckpt, weights_only=True)
    state["model_config"]["dm"] = 16
    torch.save(state, tmp_path / "edited.pt")
    assert main(["evaluate", *args, "--checkpoint", str(tmp_path / "edited.pt"), "--episodes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmnet: error:") and "edited.pt: the weights do not fit" in err
    assert len(err.splitlines()) == 1


def test_settings_syntax():
    assert parse_settings("5w1s, 20W5S,5w1s") == [(5, 1), (20, 5)]
    with pytest.raises(ValueError, match="<ways>w<shots>s"):
        parse_settings("5-1")


GLYPHS = [
    "--dataset",
    "glyphs",
    "--device",
    "cpu",
    "--queries",
    "2",
    "--no-progress",
    "--ways",
    "3",
    "--steps",
    "2",
    "--batch-episodes",
    "2",
    "--dm",
    "16",
    "--dr",
    "16",
]


@pytest.mark.parametrize("option", ["--checkpoint", "--log"])
def test_unwritable_checkpoint_or_log_fails_at_the_start_in_one_line(tmp_path, capsys, monkeypatch, option):
    import mmnet_plugin.cli as cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")

    def no_loading(*a, **k):
        raise AssertionError("the data set was loaded before the paths were checked")

    monkeypatch.setattr(cli, "_load", no_loading)
    assert main(["train", *GLYPHS, option, str(blocker / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mmnet: error: {option} {blocker / 'x'} cannot be created") and len(err.splitlines()) == 1


def test_lr_schedule_is_used_stated_and_kept_on_resume(tmp_path, capsys):
    from mmnet_plugin.training import load_checkpoint

    ckpt = tmp_path / "m.pt"
    assert main(["train", *GLYPHS, "--lr-schedule", "budget", "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "lr schedule budget (lr 0.001, halve_every 1, gamma 0.5)" in out
    state = load_checkpoint(ckpt)
    assert state["train_config"]["schedule"]["name"] == "budget"
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-3 / 4  # halved after steps 1 and 2
    assert main(["train", *GLYPHS, "--lr-schedule", "cosine", "--checkpoint", str(ckpt), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "learning-rate schedule budget" in err and "--lr-schedule" in err and len(err.splitlines()) == 1


def test_bf16_trains_on_the_cpu(tmp_path, capsys, monkeypatch):
    import mmnet_plugin.training as training

    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: True)
    assert main(["train", *GLYPHS, "--bf16", "--log", str(tmp_path / "log.jsonl")]) == 0
    assert "bf16 autocast" in capsys.readouterr().out
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: False)
    assert main(["train", *GLYPHS, "--bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no native bf16 instructions" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "split, val_split, warned",
    [
        ("trainval", "val", "--val-split val lies inside --split trainval: validation classes are training classes"),
        ("train", "train", "--val-split train is the training split: validation classes are training classes"),
        ("train", "trainval", "--val-split trainval contains --split train: validation classes"),
        ("train", "test", "--val-split test: the best checkpoint"),
        ("train", "val", None),
    ],
)
def test_validation_inside_the_training_split_is_warned(capsys, split, val_split, warned):
    assert (
        main(
            [
                "train",
                *GLYPHS,
                "--steps",
                "1",
                "--split",
                split,
                "--val-split",
                val_split,
                "--val-every",
                "1",
                "--val-episodes",
                "2",
            ]
        )
        == 0
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmnet: warning")]
    if warned is None:
        assert err == []
    else:
        assert len(err) == 1 and err[0].startswith("mmnet: warning: " + warned)


def test_sync_bn_in_one_process_trains_as_without_it(tmp_path, capsys, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    args = ["train", *GLYPHS, "--log"]
    assert main([*args, str(tmp_path / "a.jsonl"), "--sync-bn"]) == 0
    with_sync = capsys.readouterr().out
    assert main([*args, str(tmp_path / "b.jsonl")]) == 0
    assert capsys.readouterr().out == with_sync and "processes" not in with_sync
    assert (
        "--sync-bn"
        in subprocess.run(
            [sys.executable, "-m", "mmnet_plugin", "train", "--help"], capture_output=True, text=True
        ).stdout
    )


def test_bad_torchrun_environment_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    assert main(["evaluate", "--dataset", "glyphs", "--device", "cpu", "--checkpoint", "x.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmnet: error: WORLD_SIZE=2 is set but RANK is not") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "native, precision, expect",
    [(True, None, True), (False, None, False), (True, "float32", False), (True, "bf16", True)],
)
def test_precision_auto_is_bf16_only_on_cpus_with_native_bf16(tmp_path, capsys, monkeypatch, native, precision, expect):
    """The default precision follows the CPU and is stated in the log and the checkpoint."""
    import mmnet_plugin.training as training

    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: native)
    log, ckpt = tmp_path / "log.jsonl", tmp_path / "m.pt"
    extra = ["--precision", precision] if precision else []
    assert main(["train", *GLYPHS, *extra, "--log", str(log), "--checkpoint", str(ckpt)]) == 0
    assert ("bf16 autocast" in capsys.readouterr().out) == expect
    start = json.loads(log.read_text().splitlines()[0])
    assert start["bf16_autocast"] is expect
    state = torch.load(ckpt, weights_only=True)
    assert state["train_config"]["bf16"] is expect and state["extra"]["precision"] == (precision or "auto")
    assert state["extra"]["threads"] == torch.get_num_threads()


def test_validation_on_several_settings_is_logged_per_setting(tmp_path):
    log = tmp_path / "log.jsonl"
    args = ["train", *GLYPHS, "--val-every", "2", "--val-settings", "5w1s,3w2s", "--val-episodes", "4"]
    assert main([*args, "--log", str(log), "--precision", "float32"]) == 0
    val = [json.loads(line) for line in log.read_text().splitlines() if "val_accuracy" in line][-1]
    assert set(val["settings"]) == {"5w1s", "3w2s"}
    mean = sum(v["accuracy"] for v in val["settings"].values()) / 2
    assert val["val_accuracy"] == pytest.approx(mean)


def test_evaluate_several_settings_prints_one_line_each_with_its_fingerprint(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert main(["train", *GLYPHS, "--checkpoint", str(ckpt), "--precision", "float32"]) == 0
    capsys.readouterr()
    common = ["evaluate", "--dataset", "glyphs", "--checkpoint", str(ckpt), "--episodes", "3", "--no-progress"]
    assert main([*common, "--settings", "3w1s,2w2s"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["glyphs test 3-way 1-shot", "glyphs test 2-way 2-shot"]
    assert main([*common, "--ways", "2", "--shots", "2"]) == 0  # the same episodes as the one-setting run
    assert capsys.readouterr().out.strip() == lines[1]


def test_init_from_starts_from_the_weights_with_a_fresh_optimiser_and_says_so(tmp_path, capsys):
    first = tmp_path / "a.pt"
    assert main(["train", *GLYPHS, "--checkpoint", str(first), "--precision", "float32"]) == 0
    log, second = tmp_path / "b.jsonl", tmp_path / "b.pt"
    args = ["train", *GLYPHS, "--precision", "float32", "--init-from", str(first), "--checkpoint", str(second)]
    assert main([*args, "--log", str(log)]) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["init_from"] == str(first) and "optimiser" in records[0]["note"]
    assert main([*args, "--resume"]) == 2  # b.pt exists: it would be resumed, not initialised
    assert "--init-from with --resume" in capsys.readouterr().err
    assert main(["train", *GLYPHS, "--dm", "8", "--init-from", str(first), "--checkpoint", str(tmp_path / "c.pt")]) == 2
    assert "differs from this run's in dm" in capsys.readouterr().err
