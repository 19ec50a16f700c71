"""Run configurations as files (``mmnet bench --config FILE``) and ``--tensorboard DIR``.

Config files: YAML, JSON and TOML give the same options; keys with dashes or underscores;
flags on the command line win; bad keys and values are one-line errors naming the key and
the file, before any training; the packaged configs parse; the run record keeps the resolved
options and the file's path and digest. TensorBoard: event files per (setting, method) with
the training loss, the val curve and the test accuracy, read back."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from mmnet_plugin.bench import cli as harness
from mmnet_plugin.bench.config import packaged_config_names, read_config
from mmnet_plugin.bench.methods import METHODS

BASE = ["--queries", "2", "--device", "cpu", "--seed", "4", "--threads", "1", "--no-progress"]

YAML = """\
dataset: glyphs
settings: [5w1s]
methods: protonet
train-episodes: 4
test_episodes: 3
min_steps: 0
no_progress: true
"""
JSON = {
    "dataset": "glyphs",
    "settings": "5w1s",
    "methods": ["protonet"],
    "train_episodes": 4,
    "test-episodes": 3,
    "min-steps": 0,
    "no_progress": True,
}
TOML = """\
dataset = "glyphs"
settings = ["5w1s"]
methods = "protonet"
train_episodes = 4
test_episodes = 3
min_steps = 0
no_progress = true
"""


@pytest.fixture
def no_training(monkeypatch):
    for cls in METHODS.values():
        monkeypatch.setattr(cls, "build", lambda self: (_ for _ in ()).throw(AssertionError("trained")))


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_json_and_toml_give_the_same_options(tmp_path):
    pytest.importorskip("yaml")
    files = [_write(tmp_path, "c.yaml", YAML), _write(tmp_path, "c.json", json.dumps(JSON))]
    if sys.version_info >= (3, 11):
        files.append(_write(tmp_path, "c.toml", TOML))
    parsed = [vars(harness.parse_args(["--config", str(f)])[1]) for f in files]
    for p in parsed:
        p.pop("config")
        assert p["train_episodes"] == 4 and p["test_episodes"] == 3 and p["min_steps"] == 0 and p["no_progress"]
        assert p["methods"] == ["protonet"] and p["settings"] == [(5, 1)] and p["dataset"] == "glyphs"
    assert all(p == parsed[0] for p in parsed)


def test_command_line_flags_override_the_file(tmp_path):
    cfg = _write(tmp_path, "c.json", json.dumps(JSON))
    _, args, config = harness.parse_args(["--test-episodes", "9", "--config", str(cfg), "--seed", "11"])
    assert args.test_episodes == 9 and args.seed == 11 and args.train_episodes == 4
    assert config.path == cfg.resolve()


@pytest.mark.parametrize(
    "content,needle",
    [
        ({"budget_secs": 3}, "unknown key 'budget_secs'"),
        ({"train_episodes": "many"}, "key 'train_episodes'"),
        ({"budget_seconds": -1}, "key 'budget_seconds'"),
        ({"paper": "yes"}, "key 'paper' is a flag"),
        ({"dataset": "cifar"}, "key 'dataset'"),
        ({"seed": {"a": 1}}, "key 'seed'"),
        ({"config": "other.json"}, "unknown key 'config'"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors_naming_key_and_file(tmp_path, capsys, no_training, content, needle):
    cfg = _write(tmp_path, "bad.json", json.dumps(content))
    with pytest.raises(SystemExit) as exc:
        harness.main(["--config", str(cfg), "--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and str(cfg) in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_missing_file_and_unknown_format_are_refused(tmp_path, capsys, no_training):
    for spec, needle in (
        (str(tmp_path / "nope.yaml"), "no such file"),
        (str(_write(tmp_path, "c.ini", "x=1")), "unknown format .ini"),
    ):
        with pytest.raises(SystemExit):
            harness.main(["--config", spec])
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1


def test_yaml_without_pyyaml_names_the_install(tmp_path, capsys, monkeypatch, no_training):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    cfg = _write(tmp_path, "c.yaml", YAML)
    with pytest.raises(SystemExit):
        harness.main(["--config", str(cfg)])
    assert 'pip install "mmnet-plugin[bench]"' in capsys.readouterr().err


def test_the_packaged_configs_parse_by_name():
    pytest.importorskip("yaml")
    names = packaged_config_names()
    assert {"omniglot", "cpu-leaderboard", "glyphs-smoke"} <= set(names)
    for name in names:
        _, args, config = harness.parse_args(["--config", name])
        assert config.path.name.startswith(name) and args.output
    _, args, _ = harness.parse_args(["--config", "cpu-leaderboard"])
    assert (args.dataset, args.budget_seconds, args.test_episodes, args.threads) == ("omniglot", 120.0, 300, 1)
    assert args.settings == [(5, 1), (20, 1)] and args.val_points == 5 and args.val_episodes == 40


def test_the_run_record_keeps_the_options_and_the_config_file(tmp_path):
    cfg = _write(tmp_path, "c.json", json.dumps(JSON))
    out = tmp_path / "out"
    assert harness.main(BASE + ["--config", str(cfg), "--test-episodes", "2", "--output", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["config_file"] == {"path": str(cfg.resolve()), "sha256": hashlib.sha256(cfg.read_bytes()).hexdigest()}
    assert run["options"]["train_episodes"] == 4 and run["options"]["test_episodes"] == 2  # the flag won
    assert run["options"]["config"] == str(cfg) and run["test_episodes"] == 2
    (rec,) = json.loads((out / "results.json").read_text())["records"]
    assert rec["method"] == "protonet" and rec["test_episodes"] == 2


# ---------------------------------------------------------------------- --tensorboard
def test_tensorboard_curves_hold_loss_val_and_test(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb = tmp_path / "out", tmp_path / "tb"
    assert (
        harness.main(
            BASE
            + [
                "--dataset",
                "glyphs",
                "--settings",
                "5w1s",
                "--methods",
                "protonet,matchingnet",
                "--train-episodes",
                "6",
                "--test-episodes",
                "3",
                "--val-every",
                "2",
                "--val-episodes",
                "2",
                "--min-steps",
                "0",
                "--output",
                str(out),
                "--tensorboard",
                str(tb),
            ]
        )
        == 0
    )
    recs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    for method, rec in recs.items():
        folder = tb / "5w1s" / method
        assert list(folder.glob("events.out.tfevents.*")), method
        acc = EventAccumulator(str(folder))
        acc.Reload()
        assert {"train/loss", "val/accuracy", "test/accuracy"} <= set(acc.Tags()["scalars"])
        loss = acc.Scalars("train/loss")
        assert [e.step for e in loss] == list(range(1, rec["train_steps"] + 1))
        val = acc.Scalars("val/accuracy")
        assert [e.step for e in val] == [p["step"] for p in rec["curve"]]
        assert [e.value for e in val] == pytest.approx([p["val_accuracy"] for p in rec["curve"]], abs=1e-6)
        (test,) = acc.Scalars("test/accuracy")
        assert test.value == pytest.approx(rec["accuracy"], abs=1e-6) and test.step == rec["train_steps"]


def test_tensorboard_missing_is_one_line_before_training(tmp_path, capsys, monkeypatch, no_training):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(SystemExit) as exc:
        harness.main(
            BASE + ["--methods", "protonet", "--tensorboard", str(tmp_path / "tb"), "--output", str(tmp_path / "out")]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and "mmnet-plugin[bench]" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_read_config_digest_is_of_the_bytes(tmp_path):
    cfg = _write(tmp_path, "c.json", json.dumps(JSON))
    assert read_config(str(cfg)).sha256 == hashlib.sha256(cfg.read_bytes()).hexdigest()
