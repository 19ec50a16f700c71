"""Issue 19: hostile or careless inputs get one clear line (or a refusal, or a warning that
names the problem), never a hang, a crash with a traceback, or a silent wrong answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmnet_plugin import cli
from mmnet_plugin import distributed as D

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text[-2000:]
    assert "Traceback" not in lines[0]
    return lines[0]


# ---------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", ["9223372036854775808", "-1", "18446744073709551616"])
def test_seed_outside_int63_is_refused_on_every_command(seed, capsys):
    for argv in (["train", "--seed", seed], ["evaluate", "--checkpoint", "x.pt", "--seed", seed]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        line = _one_line(capsys.readouterr().err)
        assert "--seed" in line and "2**63-1" in line
    from mmnet_plugin.bench import cli as harness

    with pytest.raises(SystemExit) as exc:
        harness.parse_args(["--seed", seed])
    assert exc.value.code == 2
    assert "2**63-1" in capsys.readouterr().err
    assert harness.parse_args(["--seed", str(2**63 - 1)])[1].seed == 2**63 - 1


# ---------------------------------------------------------------------- --val-points
def test_absurd_val_points_is_refused_at_once(capsys):
    from mmnet_plugin.bench import cli as harness

    t0 = time.perf_counter()
    with pytest.raises(SystemExit):
        harness.parse_args(["--val-points", "1000000000000"])
    assert time.perf_counter() - t0 < 5
    assert "at most 10,000 validation points" in capsys.readouterr().err


# ---------------------------------------------------------------------- config files
def _config(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_alias_bomb_is_refused_quickly_with_a_short_line(tmp_path):
    pytest.importorskip("yaml")
    from mmnet_plugin.bench.config import ConfigError, config_tokens, read_config
    from mmnet_plugin.bench.options import build_parser

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append("methods: *a8")
    bomb = _config(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    assert os.path.getsize(bomb) < 1000
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        read_config(bomb)
    assert time.perf_counter() - t0 < 5
    assert "expand to more than" in str(exc.value) and len(str(exc.value)) < 400
    # a smaller expansion that passes the limit still echoes a value cut to a readable length
    small = _config(tmp_path, "small.yaml", "output: &a [" + ", ".join(["xxxxxxxxxx"] * 50) + "]\nmethods: *a\n")
    with pytest.raises(ConfigError) as exc:
        config_tokens(read_config(small), build_parser())
    assert len(str(exc.value)) < 400 and "output" in str(exc.value)


def test_a_list_where_a_string_is_expected_is_refused(tmp_path):
    from mmnet_plugin.bench.config import ConfigError, config_tokens, read_config
    from mmnet_plugin.bench.options import build_parser

    path = _config(tmp_path, "c.json", '{"output": ["runs/a", "runs/b"]}')
    with pytest.raises(ConfigError, match=r"key 'output': expected one number or string, got list"):
        config_tokens(read_config(path), build_parser())
    ok = _config(tmp_path, "ok.json", '{"settings": ["5w1s", "20w1s"], "methods": ["protonet"]}')
    assert config_tokens(read_config(ok), build_parser()) == ["--settings", "5w1s,20w1s", "--methods", "protonet"]


def test_a_value_that_looks_like_a_flag_is_named_with_its_file(tmp_path, capsys):
    from mmnet_plugin.bench import cli as harness

    path = _config(tmp_path, "flag.json", '{"output": "--paper"}')
    with pytest.raises(SystemExit) as exc:
        harness.parse_args(["--config", path])
    assert exc.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert path in line and "looks like an option" in line


# ---------------------------------------------------------------------- --tensorboard
def test_tensorboard_folder_blocked_by_a_file_is_refused_before_training(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from mmnet_plugin.bench import cli as harness

    tb = tmp_path / "tb"
    tb.mkdir()
    (tb / "5w1s").write_text("a file where a folder should be")
    argv = ["--dataset", "glyphs", "--methods", "protonet", "--train-episodes", "2", "--test-episodes", "2"]
    rc = harness.main(argv + ["--no-progress", "--output", str(tmp_path / "out"), "--tensorboard", str(tb)])
    assert rc == 2
    line = _one_line(capsys.readouterr().err)
    assert "--tensorboard" in line and "5w1s" in line
    assert not (tmp_path / "out" / "records").exists() or not any((tmp_path / "out" / "records").iterdir())


def test_tensorboard_write_failure_warns_once_and_goes_on(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from mmnet_plugin.bench.tensorboard import TensorBoardLog

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full)
    log = TensorBoardLog(tmp_path / "tb")
    log.start("protonet", "5w1s")
    for step in range(3):
        log.train_loss(step, 1.0)
    log.finish({"status": "ok", "accuracy": 0.5, "train_steps": 3, "curve": []})
    log.start("maml", "5w1s")
    log.close()
    err = capsys.readouterr().err
    assert err.count("warning: --tensorboard") == 1 and "No space left on device" in err


# ---------------------------------------------------------------------- torchrun environment
@pytest.mark.parametrize(
    "env,match",
    [
        ({"RANK": "1"}, "partial torchrun environment"),
        ({"RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "partial torchrun environment"),
        ({"WORLD_SIZE": "1", "RANK": "1"}, r"RANK=1 is outside 0\.\.0"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "abc"}, "not a port number"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "70000"}, "not a port number"),
    ],
)
def test_partial_or_bad_torchrun_env_is_refused(env, match):
    with pytest.raises(ValueError, match=match):
        D.init_distributed("cpu", env=env)
    assert not torch.distributed.is_initialized()


def test_a_port_in_use_is_one_line(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(ValueError) as exc:
            D.init_distributed("cpu", env=env, timeout=5)
    assert "\n" not in str(exc.value) and port in str(exc.value)
    assert not torch.distributed.is_initialized()


def test_a_missing_peer_ends_the_wait_with_one_line_within_the_timeout():
    env = _clean_env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "mmnet_plugin", "train", "--steps", "2", "--batch-episodes", "2", "--dist-timeout", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    line = _one_line(res.stderr)
    assert "did not all join within 3 s" in line and "--dist-timeout" in line
    assert time.perf_counter() - t0 < 60


def test_a_dead_rank_makes_the_other_stop_with_one_line(tmp_path):
    # rank 1 joins, then dies; rank 0's next collective fails (or times out) instead of waiting
    script = tmp_path / "peer.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from mmnet_plugin import distributed as D
            ctx = D.init_distributed("cpu", timeout=10)
            if ctx.rank == 1:
                os._exit(1)
            try:
                D.barrier(ctx)
                D.barrier(ctx)
            except RuntimeError as exc:
                print(D.describe_dist_failure(exc), file=sys.stderr)
                os._exit(3)
            os._exit(0)
            """
        )
    )
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=_clean_env(WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    t0 = time.perf_counter()
    out0 = procs[0].communicate(timeout=90)
    procs[1].communicate(timeout=30)
    assert time.perf_counter() - t0 < 60
    assert procs[0].returncode == 3, out0[1][-2000:]
    assert "another rank died or stopped answering" in out0[1]


def test_torchrun_does_not_swallow_our_log_option():
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    head = ["--nproc-per-node", "2", "-m", "mmnet_plugin"]
    # the documented forms: --log-file, or -- before the module's options
    args = parser.parse_args(head + ["train", "--steps", "2", "--log-file", "l.jsonl"])
    assert args.training_script_args == ["train", "--steps", "2", "--log-file", "l.jsonl"]
    args = parser.parse_args(head + ["--", "train", "--log", "l.jsonl"])
    assert args.training_script_args[-2:] == ["--log", "l.jsonl"]
    assert cli.build_parser().parse_args(["train", "--log-file", "l.jsonl"]).log == "l.jsonl"
    assert cli.build_parser().parse_args(["train", "--log", "l.jsonl"]).log == "l.jsonl"
    # no other option of ours is ambiguous for torchrun or taken by it
    from mmnet_plugin.bench.options import build_parser as bench_parser

    ours = set()
    for p in [bench_parser()] + list(cli.build_parser()._subparsers._group_actions[0].choices.values()):
        for action in p._actions:
            ours.update(o for o in action.option_strings if o.startswith("--") and o != "--log")
    for opt in sorted(ours):
        args = parser.parse_args(head + ["train", opt, "1"])
        assert args.training_script_args == ["train", opt, "1"], opt


# ---------------------------------------------------------------------- --methods module:Class
def test_a_methods_module_that_does_not_import_is_one_line(tmp_path, monkeypatch):
    from mmnet_plugin.bench.methods import resolve_method

    (tmp_path / "broken_syntax_i19.py").write_text("def f(:\n    pass\n")
    (tmp_path / "raises_i19.py").write_text("raise RuntimeError('no GPU here, ' * 50)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as exc:
        resolve_method("broken_syntax_i19:Thing")
    assert "broken_syntax_i19" in str(exc.value) and "syntax error" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ValueError) as exc:
        resolve_method("raises_i19:Thing")
    text = str(exc.value)
    assert "raises_i19" in text and "RuntimeError" in text and len(text) < 300


# ---------------------------------------------------------------------- labels
def test_string_labels_are_refused_with_one_line():
    from mmnet_plugin.data.base import TensorFewShotDataset
    from mmnet_plugin.episodes import Episode, EpisodeSampler

    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="must be integer labels; got strings"):
        Episode(x[:2], np.array(["a", "b"]), x[2:], np.array(["a", "b"]))
    with pytest.raises(ValueError, match="must be integer labels; got strings"):
        TensorFewShotDataset(x, ["a", "b", "a", "b"])

    class Source:
        targets = np.array(["a", "b", "a", "b"])

        def load(self, idx):
            return x[idx]

    with pytest.raises(ValueError, match="dataset.targets must be integer labels"):
        EpisodeSampler(Source(), ways=2, shots=1, queries=1)
