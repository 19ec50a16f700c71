"""One atomic writer, one safe loader, one error; every checkpoint this package writes loads."""

import configparser
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

import mmnet_plugin.bench.files as bench_files
import mmnet_plugin.data.cache as cache
import mmnet_plugin.training as training
from mmnet_plugin import MMNet, checkpoints
from mmnet_plugin.checkpoints import CheckpointError, atomic_write, load, save
from mmnet_plugin.cli import main

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fixtures"))
import make_checkpoints as made  # noqa: E402  (the fixture's own recipe)

OLD = HERE / "fixtures" / "trainer-0.1.pt"


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "\x1b" not in msg and len(msg) < 600, msg
    return msg


# ---------------------------------------------------------------- old files keep working
def test_a_checkpoint_of_version_0_1_resumes_as_the_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "old.pt"
    shutil.copy(OLD, ckpt)
    resumed = training.Trainer(made.model(), made.config(ckpt, 4), model_config=made.SMALL)
    sampler = made.sampler()
    resumed.fit(sampler, resume=True)
    assert resumed.step == 4
    straight = training.Trainer(made.model(), made.config(tmp_path / "new.pt", 4), model_config=made.SMALL)
    straight_sampler = made.sampler()
    straight.fit(straight_sampler)
    for key, value in straight.model.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.allclose(resumed.model.state_dict()[key], value, atol=1e-4), key
    assert repr(sampler.state_dict()) == repr(straight_sampler.state_dict())  # the sampler resumed too
    assert MMNet.from_checkpoint(ckpt).config == MMNet(**made.SMALL).config


def _old_forms(tmp_path):
    """What 0.1 wrote without a stated configuration: a Trainer without model_config, and
    the harness's {"state", "stats"} file (its model's extra state held no configuration)."""
    state = torch.load(OLD, weights_only=True)
    assert "config" not in state["model"]["_extra_state"]
    bare = tmp_path / "trainer-no-config.pt"
    torch.save(dict(state, model_config={}), bare)
    harness = tmp_path / "harness.pt"
    torch.save({"state": {"model": state["model"]}, "stats": {"train_episodes": 4}}, harness)
    return bare, harness


def test_from_checkpoint_reads_the_files_0_1_wrote_without_a_configuration(tmp_path):
    for path in _old_forms(tmp_path):
        with pytest.warns(UserWarning, match="states no model configuration.*defaults"):
            model = MMNet.from_checkpoint(path)
        assert (model.dm, model.dr, model.in_channels, model.image_size) == (8, 8, 1, 28)


def test_from_checkpoint_reads_every_checkpoint_this_version_writes(tmp_path):
    model = made.model()
    # a Trainer without model_config: the model states its configuration with its weights
    trainer = training.Trainer(model, made.config(tmp_path / "t.pt", 1))
    trainer.fit(made.sampler())
    # the harness's trained-once file
    save({"state": {"model": model.state_dict()}, "stats": {}}, tmp_path / "h.pt")
    for name in ("t.pt", "h.pt"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = MMNet.from_checkpoint(tmp_path / name)
        assert loaded.config == model.config


# ---------------------------------------------------------------- refused, in one line
def _state():
    return torch.load(OLD, weights_only=True)


def test_weights_that_are_not_finite_are_refused(tmp_path, capsys):
    state = _state()
    state["model"]["tz.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan.pt: the weights tz.weight hold NaN") as exc:
        MMNet.from_checkpoint(tmp_path / "nan.pt")
    _one_line(exc.value)
    argv = ["evaluate", "--dataset", "glyphs", "--checkpoint", str(tmp_path / "nan.pt"), "--episodes", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "NaN" in err and "\n" not in err


def test_absurd_configuration_is_refused_before_allocating(tmp_path):
    state = _state()
    state["model_config"] = dict(made.SMALL, dm=10**12)
    torch.save(state, tmp_path / "huge.pt")
    with pytest.raises(CheckpointError, match="huge.pt: the weights do not fit") as exc:
        MMNet.from_checkpoint(tmp_path / "huge.pt")
    _one_line(exc.value)
    state["model_config"] = dict(made.SMALL, image_size=10**12)
    torch.save(state, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="wide.pt"):
        MMNet.from_checkpoint(tmp_path / "wide.pt")


def test_a_model_entry_that_is_not_a_dict_is_named_with_its_file(tmp_path):
    torch.save({"model": [1, 2, 3], "model_config": made.SMALL}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list.pt .*'model' entry is a list") as exc:
        MMNet.from_checkpoint(tmp_path / "list.pt")
    _one_line(exc.value)
    with pytest.raises(CheckpointError, match="list.pt"):
        training.load_checkpoint(tmp_path / "list.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_says_so():
    with pytest.raises(CheckpointError, match="CUDA is not available") as exc:
        MMNet.from_checkpoint(OLD, map_location="cuda")
    assert "corrupt" not in _one_line(exc.value)


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_file_with_disallowed_globals_is_called_unsafe_not_corrupt(tmp_path):
    torch.save({"model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as exc:
        MMNet.from_checkpoint(tmp_path / "evil.pt")
    msg = _one_line(exc.value)
    assert "unsafe" in msg and "not an mmnet-plugin checkpoint" in msg and "corrupt" not in msg


def test_values_echoed_in_errors_are_cut(tmp_path):
    state = _state()
    state["model_config"] = dict(made.SMALL, decision="x" * 100_000)
    torch.save(state, tmp_path / "long.pt")
    with pytest.raises(CheckpointError, match="long.pt: its model configuration .*characters") as exc:
        MMNet.from_checkpoint(tmp_path / "long.pt")
    _one_line(exc.value)
    assert checkpoints.shorten("\x1b[31mred\x1b[0m\nline") == "red line"


def test_truncated_and_missing_files(tmp_path):
    (tmp_path / "cut.pt").write_bytes(OLD.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.pt is truncated or corrupt") as exc:
        load(tmp_path / "cut.pt")
    _one_line(exc.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "none.pt")


def test_setup_requires_a_torch_whose_safe_loader_is_safe():
    cfg = configparser.ConfigParser()
    cfg.read(HERE.parent / "setup.cfg")
    requires = cfg["options"]["install_requires"]
    assert re.search(r"^torch>=2\.(6|[7-9]|\d\d)", requires, re.M), requires


# ---------------------------------------------------------------- one writer, old names
def test_atomic_write_takes_bytes_text_or_a_writer_and_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write(target, "text")
    assert target.read_text() == "text"
    atomic_write(target, b"bytes")
    assert target.read_bytes() == b"bytes"
    atomic_write(target, lambda tmp: tmp.write_text("writer"))
    assert target.read_text() == "writer"

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "writer" and sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_the_old_names_are_the_one_implementation():
    assert training.CheckpointError is CheckpointError is bench_files.CheckpointError
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointError, RuntimeError)
    assert cache.atomic_write is atomic_write and training.save_checkpoint is save
    assert bench_files.atomic_torch_save is save
