"""Pretrained weights: export from a checkpoint, checksum, compact storage, loading, the CLI."""

import json
import os

import pytest
import torch

import mmnet_plugin.pretrained as pretrained
from mmnet_plugin import Episode, MMNet
from mmnet_plugin.checkpoints import CheckpointError
from mmnet_plugin.cli import main


def _episode(n_way=5, k=1, q=3, seed=0, size=28):
    g = torch.Generator().manual_seed(seed)
    return Episode(
        torch.rand(n_way * k, 1, size, size, generator=g),
        torch.arange(n_way).repeat_interleave(k),
        torch.rand(n_way * q, 1, size, size, generator=g),
        torch.arange(n_way).repeat_interleave(q),
    )


@pytest.fixture
def exported(tmp_path, monkeypatch):
    """A small model trained one step, saved as a checkpoint and exported into a weights folder."""
    torch.manual_seed(0)
    model = MMNet(dm=64, dr=64)
    model.loss([_episode(seed=1), _episode(seed=2)]).backward()
    with torch.no_grad():  # move the weights off their init so that a mix-up would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = tmp_path / "run.best.pt"
    torch.save({"model": model.state_dict(), "model_config": model.config, "step": 7}, ckpt)
    folder = tmp_path / "weights"
    entry = pretrained.export_pretrained(ckpt, "tiny", folder, {"preprocessing": {"image_size": 28}})
    monkeypatch.setattr(pretrained, "weights_dir", lambda: folder)
    return model.eval(), folder, entry


def test_export_then_load_gives_the_same_model_to_half_precision(exported):
    model, folder, entry = exported
    assert pretrained.available() == ["tiny"]
    assert entry["checkpoint_step"] == 7 and entry["preprocessing"] == {"image_size": 28}
    assert json.loads((folder / "tiny.json").read_text())["sha256"] == entry["sha256"]
    loaded = MMNet.pretrained("tiny")
    assert not loaded.training and loaded.config == model.config
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # large tensors were stored in float16: close, not equal; the small ones exactly
    lstm = "contextual.lstm.weight_hh_l0"
    stored = torch.load(folder / entry["file"], weights_only=True)["model"]
    assert stored[lstm].dtype == torch.float16 and stored["backbone.blocks.0.1.running_var"].dtype == torch.float32
    ep = _episode(seed=5)
    torch.testing.assert_close(
        loaded(ep.support_x, ep.support_y, ep.query_x),
        model(ep.support_x, ep.support_y, ep.query_x),
        rtol=2e-2,
        atol=2e-2,
    )


def test_a_file_that_fails_its_checksum_is_refused_with_both_digests(exported):
    _, folder, entry = exported
    path = folder / entry["file"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        MMNet.pretrained("tiny")
    assert str(path) in str(err.value) and entry["sha256"] in str(err.value) and "fails its checksum" in str(err.value)


def test_unknown_names_list_the_available_weights(exported):
    with pytest.raises(ValueError, match="no pretrained weights named 'nope'; available: tiny"):
        MMNet.pretrained("nope")


def test_evaluate_takes_exactly_one_of_checkpoint_and_pretrained(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--dataset", "glyphs", "--pretrained", "x", "--checkpoint", "y"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--dataset", "glyphs"])
    assert "one of the arguments --checkpoint --pretrained is required" in capsys.readouterr().err


def test_evaluate_pretrained_refuses_images_that_do_not_fit_before_running(exported, tmp_path, capsys, monkeypatch):
    """The weights take 1x28x28; a data set of other images is refused in one line, no evaluation."""
    import mmnet_plugin.cli as cli

    class Colour:
        def load(self, idx):
            return torch.zeros(len(idx), 3, 84, 84)

    monkeypatch.setattr(cli, "_load", lambda args, split: Colour())
    called = []
    monkeypatch.setattr("mmnet_plugin.evaluation.evaluate", lambda *a, **k: called.append(1))
    assert main(["evaluate", "--dataset", "glyphs", "--pretrained", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "images are 3x84x84 but the model of --pretrained tiny takes 1x28x28" in err
    assert len(err.splitlines()) == 1 and not called


def test_evaluate_pretrained_runs_on_fitting_data(exported, capsys):
    assert main(["evaluate", "--dataset", "glyphs", "--pretrained", "tiny", "--episodes", "4", "--no-progress"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_mmnet_export_writes_weights_and_manifest(tmp_path, capsys):
    model = MMNet(dm=32, dr=32)
    ckpt = tmp_path / "c.pt"
    torch.save({"model": model.state_dict(), "model_config": model.config, "step": 3}, ckpt)
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"training": {"steps": 3}}))
    assert (
        main(["export", "--checkpoint", str(ckpt), "--name", "mine", "--out", str(tmp_path / "w"), "--info", str(info)])
        == 0
    )
    written = json.loads((tmp_path / "w" / "mine.json").read_text())
    assert written["training"] == {"steps": 3} and written["file"] == "mine-mmnet.pt"
    assert "sha256" in capsys.readouterr().out
    # --log: the run up to the checkpoint's step (3 of the 5 logged), --info's entries on top
    log = tmp_path / "log.jsonl"
    records = [{"step": 0, "start": True, "batch_episodes": 2}] + [{"step": s, "loss": 1.0} for s in range(1, 6)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["export", "--checkpoint", str(ckpt), "--name", "mine", "--out", str(tmp_path / "w"), "--log", str(log)]
    assert main(args) == 0
    training = json.loads((tmp_path / "w" / "mine.json").read_text())["training"]
    assert (training["steps"], training["episodes"], training["segments"]) == (3, 6, 1)


def test_omniglot_transform_matches_the_loader_convention():
    """A torchvision-style PIL image (dark ink on white) becomes bright ink on black in [0, 1]."""
    from PIL import Image

    img = Image.new("L", (105, 105), 255)
    img.paste(0, (40, 40, 65, 65))  # a black square of ink
    x = pretrained.omniglot_transform()(img)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert float(x[0, 14, 14]) == pytest.approx(1.0) and float(x[0, 1, 1]) == pytest.approx(0.0)


@pytest.mark.skipif(not pretrained.available(), reason="no weights shipped in this installation")
def test_shipped_weights_load_and_match_their_manifest():
    for name in pretrained.available():
        info = pretrained.manifest(name)
        model = MMNet.pretrained(name)
        assert model.config == info["model_config"]
        for key in ("preprocessing", "training"):
            assert key in info, f"the manifest of {name} has no {key!r}"
        assert os.path.getsize(pretrained.weights_dir() / info["file"]) == info["bytes"]


def test_summarise_log_counts_a_resumed_run_once(tmp_path):
    """Two segments, the second resumed from step 20 after the first had logged 30: 40 steps of 4."""
    lines = [
        {"step": 0, "start": True, "batch_episodes": 4, "bf16_autocast": True},
        {"step": 10, "loss": 1.0, "seconds": 50.0},
        {"step": 20, "loss": 1.0, "seconds": 100.0},
        {"step": 20, "val_accuracy": 0.5, "settings": {"5w1s": {"accuracy": 0.5}}},
        {"step": 30, "loss": 1.0, "seconds": 150.0},
        {"step": 20, "start": True, "batch_episodes": 4, "bf16_autocast": True},
        {"step": 40, "loss": 1.0, "seconds": 90.0},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    info = pretrained.summarise_log(log)
    assert (info["steps"], info["episodes"], info["segments"]) == (40, 160, 2)
    assert info["wall_hours"] == pytest.approx(240 / 3600, abs=1e-3)
    assert info["precision"] == ["bf16 autocast"] and info["validations"][0]["accuracy"] == 0.5


def test_summarise_log_stops_at_the_exported_step(tmp_path):
    lines = [{"step": 0, "start": True, "batch_episodes": 2}] + [
        {"step": s, "loss": 1.0, "seconds": float(s)} for s in (10, 20, 30)
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    info = pretrained.summarise_log(log, until_step=20)
    assert (info["steps"], info["episodes"]) == (20, 40)
