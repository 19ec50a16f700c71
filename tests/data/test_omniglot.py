"""Omniglot loader: real-data checks (counts, splits, rotations, cache) and fake-data checks
(validation messages, hostile archives, missing files, cache mechanics)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Optional

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmnet_plugin.data import DataNotFoundError, load_dataset
from mmnet_plugin.data import omniglot as og
from mmnet_plugin.data.base import DataCorruptError
from mmnet_plugin.data.cache import CacheWarning
from mmnet_plugin.data.omniglot import Omniglot, decode_omniglot_archive, load_omniglot_images
from mmnet_plugin.episodes import EpisodeSampler

# --------------------------------------------------------------------------- fake data
FAKE = {
    "images_background": {"Alpha": 2, "Beta": 1},
    "images_evaluation": {"Gamma": 2},
}
FAKE_COUNTS = {name: (len(alpha), sum(alpha.values())) for name, alpha in FAKE.items()}


def _png(seed: int) -> bytes:
    """A 105x105 binary PNG like Omniglot's: white background, black strokes (asymmetric)."""
    im = Image.new("1", (105, 105), 1)
    d = ImageDraw.Draw(im)
    x = 10 + seed % 50
    d.rectangle([x, 10, x + 30, 20], fill=0)  # a bar near the top
    d.rectangle([10, 30 + seed % 40, 20, 90], fill=0)  # a bar on the left
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _members(name: str, alphabets: Dict[str, int], images: int = 20) -> Dict[str, bytes]:
    out = {}
    seed = 0
    for alpha, n_char in alphabets.items():
        for c in range(1, n_char + 1):
            for k in range(1, images + 1):
                seed += 1
                out[f"{name}/{alpha}/character{c:02d}/{c:04d}_{k:02d}.png"] = _png(seed)
    return out


def _write_zip(path: Path, members: Dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return path


def make_fake_omniglot(
    root: Path,
    as_zip: bool = True,
    replace: Optional[Dict[str, bytes]] = None,
    drop: Iterable[str] = (),
    split_lines: Optional[Dict[str, list]] = None,
) -> Path:
    """Write a small Omniglot (see ``FAKE``) in the official layout under ``root/omniglot``."""
    folder = root / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    for name, alphabets in FAKE.items():
        members = _members(name, alphabets)
        members.update(replace or {})
        members = {k: v for k, v in members.items() if k.startswith(name + "/") and k not in set(drop)}
        if as_zip:
            _write_zip(folder / f"{name}.zip", members)
        else:
            for n, data in members.items():
                p = folder / n
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
    lines = (
        split_lines
        if split_lines is not None
        else {
            "train": [f"Alpha/character01/rot{d:03d}" for d in (0, 90, 180, 270)]
            + [f"Gamma/character02/rot{d:03d}" for d in (0, 90, 180, 270)],
            "test": [f"Beta/character01/rot{d:03d}" for d in (0, 90, 180, 270)],
        }
    )
    sdir = folder / "splits" / "vinyals"
    sdir.mkdir(parents=True, exist_ok=True)
    for split, ls in lines.items():
        (sdir / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return folder


@pytest.fixture
def fake_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(og, "EXPECTED_COUNTS", dict(FAKE_COUNTS))


# --------------------------------------------------------------------------- fake: validation
def test_corrupt_png_is_reported_by_name(tmp_path: Path) -> None:
    bad = "images_background/Alpha/character02/0002_07.png"
    zpath = _write_zip(
        tmp_path / "images_background.zip",
        {**_members("images_background", FAKE["images_background"]), bad: b"not a png"},
    )
    with pytest.raises(
        DataCorruptError,
        match=r"images_background\.zip: Alpha/character02/0002_07\.png "
        r"does not decode as PNG",
    ):
        decode_omniglot_archive(zpath)


def test_truncated_png_is_reported(tmp_path: Path) -> None:
    bad = "images_background/Beta/character01/0001_01.png"
    members = _members("images_background", FAKE["images_background"])
    members[bad] = members[bad][:40]
    zpath = _write_zip(tmp_path / "images_background.zip", members)
    with pytest.raises(DataCorruptError, match="Beta/character01/0001_01.png does not decode"):
        decode_omniglot_archive(zpath)


def test_missing_image_and_wrong_counts_are_reported(tmp_path: Path) -> None:
    members = _members("images_background", FAKE["images_background"])
    del members["images_background/Alpha/character01/0001_05.png"]
    zpath = _write_zip(tmp_path / "images_background.zip", members)
    with pytest.raises(DataCorruptError) as err:
        decode_omniglot_archive(zpath, expected_alphabets=30, expected_characters=964)
    msg = str(err.value)
    assert "character Alpha/character01 has 19 images, expected 20" in msg
    assert "2 alphabets, expected 30" in msg
    assert "3 characters, expected 964" in msg
    assert "images_background.zip" in msg


@pytest.mark.parametrize("member", ["../evil.png", "images_background/../../evil.png", "/abs/evil.png", "C:/evil.png"])
def test_hostile_member_is_refused(tmp_path: Path, member: str) -> None:
    members = _members("images_background", {"Alpha": 1})
    members[member] = _png(0)
    zpath = _write_zip(tmp_path / "images_background.zip", members)
    with pytest.raises(ValueError, match="unsafe member name") as err:
        decode_omniglot_archive(zpath)
    assert member in str(err.value)


def test_hostile_member_is_refused_by_the_dataset(tmp_path: Path, fake_counts: None) -> None:
    folder = make_fake_omniglot(tmp_path)
    members = _members("images_background", FAKE["images_background"])
    members["../evil.png"] = _png(0)
    _write_zip(folder / "images_background.zip", members)
    with pytest.raises(ValueError, match=r"\.\./evil\.png"):
        Omniglot(root=tmp_path, split="background", cache_dir=tmp_path / "cache")


def test_check_member_name_accepts_normal_names() -> None:
    og.check_member_name("images_background/Alpha/character01/0001_01.png")
    og.check_member_name("images_background/")


# --------------------------------------------------------------------------- fake: missing files
def test_missing_data_names_expected_paths(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        Omniglot(root=tmp_path, split="train", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert str(tmp_path / "omniglot" / "images_background.zip") in msg
    assert str(tmp_path / "omniglot" / "images_evaluation.zip") in msg
    assert og.URLS["images_background"] in msg and og.URLS["images_evaluation"] in msg
    assert "MMNET_DATA_ROOT" in msg


def test_missing_one_archive_names_only_it(tmp_path: Path) -> None:
    folder = make_fake_omniglot(tmp_path)
    (folder / "images_evaluation.zip").unlink()
    with pytest.raises(DataNotFoundError) as err:
        Omniglot(root=tmp_path, split="background", cache_dir=tmp_path / "cache")
    assert str(folder / "images_evaluation.zip") in str(err.value)
    assert "images_background.zip (" not in str(err.value)


def test_no_data_root_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMNET_DATA_ROOT", raising=False)
    with pytest.raises(DataNotFoundError, match="MMNET_DATA_ROOT"):
        Omniglot(split="train")


def test_missing_split_file(tmp_path: Path, fake_counts: None) -> None:
    folder = make_fake_omniglot(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        Omniglot(root=tmp_path, split="val", cache_dir=tmp_path / "cache")
    assert str(folder / "splits" / "vinyals" / "val.txt") in str(err.value)


def test_unknown_split_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        Omniglot(root=tmp_path, split="training")
    for s in ("train", "val", "test", "trainval", "background", "evaluation"):
        assert s in str(err.value)


@pytest.mark.parametrize("rotations", [(), (45,), (0, 0), "x"])
def test_bad_rotations(tmp_path: Path, rotations: object) -> None:
    with pytest.raises(ValueError, match="rotations"):
        Omniglot(root=tmp_path, split="background", rotations=rotations)  # type: ignore[arg-type]


def test_split_file_with_unknown_character(tmp_path: Path, fake_counts: None) -> None:
    make_fake_omniglot(tmp_path, split_lines={"train": ["Alpha/character01/rot000", "Zeta/character09/rot090"]})
    with pytest.raises(DataCorruptError, match=r"line 2: Zeta/character09 is not a character"):
        Omniglot(root=tmp_path, split="train", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- fake: end to end
def test_fake_lake_and_vinyals_splits(tmp_path: Path, fake_counts: None) -> None:
    make_fake_omniglot(tmp_path)
    cache = tmp_path / "cache"
    bg = Omniglot(root=tmp_path, split="background", cache_dir=cache)
    ev = Omniglot(root=tmp_path / "omniglot", split="evaluation", cache_dir=cache)  # root = omniglot folder
    assert bg.class_names == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    assert ev.class_names == ["Gamma/character01", "Gamma/character02"]
    assert bg.alphabets == ["Alpha", "Beta"] and bg.class_alphabet.tolist() == [0, 0, 1]
    assert len(bg) == 60 and np.bincount(bg.targets).tolist() == [20, 20, 20]
    x = bg.load(np.arange(len(bg)))
    assert x.shape == (60, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x.mean()) < 0.5  # ink bright on a dark background
    assert float(x[:, :, 0, :].max()) < 0.1  # the fake's border is background

    train = Omniglot(root=tmp_path, split="train", cache_dir=cache)
    assert train.class_names[:4] == [f"Alpha/character01/rot{d:03d}" for d in (0, 90, 180, 270)]
    assert train.class_names[4:] == [f"Gamma/character02/rot{d:03d}" for d in (0, 90, 180, 270)]
    assert train.class_rotation.tolist() == [0, 90, 180, 270] * 2
    base = train.load(np.flatnonzero(train.targets == 0))
    assert torch.equal(base, bg.load(np.flatnonzero(bg.targets == 0)))
    for c in (1, 2, 3):
        rotated = train.load(np.flatnonzero(train.targets == c))
        assert torch.equal(rotated, torch.rot90(base, c, dims=(-2, -1)))
    # mixed rotations in one call are each rotated by their own class
    mixed = train.load(np.array([0, 20, 40, 60, 1]))
    assert torch.equal(mixed[1], torch.rot90(base[0], 1, dims=(-2, -1)))
    assert torch.equal(mixed[4], base[1])

    only_up = Omniglot(root=tmp_path, split="train", cache_dir=cache, rotations=[0])
    assert only_up.class_names == ["Alpha/character01/rot000", "Gamma/character02/rot000"]
    lake_rot = Omniglot(root=tmp_path, split="evaluation", cache_dir=cache, rotations=(0, 180))
    assert lake_rot.num_classes == 4 and lake_rot.class_names[1] == "Gamma/character01/rot180"


def test_fake_cache_is_used_and_identical(tmp_path: Path, fake_counts: None, monkeypatch: pytest.MonkeyPatch) -> None:
    make_fake_omniglot(tmp_path)
    cache = tmp_path / "cache"
    first = load_omniglot_images(tmp_path, image_size=20, cache_dir=cache)
    assert first.cache_file is not None and first.cache_file.parent == cache and first.cache_file.is_file()
    assert [p.name for p in cache.iterdir()] == [first.cache_file.name]  # no temp files left

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(og, "decode_omniglot_archive", boom)
    second = load_omniglot_images(tmp_path, image_size=20, cache_dir=cache)
    assert torch.equal(first.images, second.images)
    assert first.characters == second.characters
    assert first.images.shape == (100, 1, 20, 20) and first.images.dtype == torch.uint8


def test_fake_corrupt_cache_is_rebuilt(tmp_path: Path, fake_counts: None) -> None:
    make_fake_omniglot(tmp_path)
    cache = tmp_path / "cache"
    first = load_omniglot_images(tmp_path, cache_dir=cache)
    assert first.cache_file is not None
    data = first.cache_file.read_bytes()
    first.cache_file.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(CacheWarning, match="rebuilding"):
        again = load_omniglot_images(tmp_path, cache_dir=cache)
    assert torch.equal(first.images, again.images)
    # flipped bytes inside the image array (zip CRC catches them)
    data = bytearray(first.cache_file.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(255 - b for b in data[mid : mid + 64])
    first.cache_file.write_bytes(bytes(data))
    with pytest.warns(CacheWarning):
        third = load_omniglot_images(tmp_path, cache_dir=cache)
    assert torch.equal(first.images, third.images)


def test_fake_changed_archive_changes_the_cache_key(tmp_path: Path, fake_counts: None) -> None:
    make_fake_omniglot(tmp_path)
    cache = tmp_path / "cache"
    first = load_omniglot_images(tmp_path, cache_dir=cache)
    make_fake_omniglot(tmp_path, replace={"images_background/Alpha/character01/0001_01.png": _png(99)})
    second = load_omniglot_images(tmp_path, cache_dir=cache)
    assert first.cache_file != second.cache_file
    assert not torch.equal(first.images[0], second.images[0])
    assert torch.equal(first.images[1:], second.images[1:])


def test_fake_extracted_folders_match_zips(tmp_path: Path, fake_counts: None) -> None:
    make_fake_omniglot(tmp_path / "z", as_zip=True)
    make_fake_omniglot(tmp_path / "d", as_zip=False)
    a = load_omniglot_images(tmp_path / "z", cache_dir=tmp_path / "cache")
    b = load_omniglot_images(tmp_path / "d", cache_dir=tmp_path / "cache")
    assert a.characters == b.characters
    assert torch.equal(a.images, b.images)


def test_fake_corrupt_png_in_dataset(tmp_path: Path, fake_counts: None) -> None:
    make_fake_omniglot(tmp_path, replace={"images_evaluation/Gamma/character02/0002_20.png": b"\x89PNG junk"})
    with pytest.raises(DataCorruptError, match=r"images_evaluation\.zip: Gamma/character02/0002_20\.png"):
        Omniglot(root=tmp_path, split="evaluation", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing half-built was cached


def test_real_counts_are_enforced_by_default(tmp_path: Path) -> None:
    make_fake_omniglot(tmp_path)
    with pytest.raises(DataCorruptError, match="2 alphabets, expected 30"):
        Omniglot(root=tmp_path, split="background", cache_dir=tmp_path / "cache")


def test_fake_episode_sampler(tmp_path: Path, fake_counts: None) -> None:
    make_fake_omniglot(tmp_path)
    ds = load_dataset("omniglot", split="train", data_root=tmp_path, cache_dir=tmp_path / "cache")
    ep = EpisodeSampler(ds, ways=5, shots=1, queries=5, seed=3).sample()
    assert ep.support_x.shape == (5, 1, 28, 28) and ep.query_x.shape == (25, 1, 28, 28)


# --------------------------------------------------------------------------- real data
def test_real_archives(omniglot_cache) -> None:
    store = omniglot_cache.store
    assert len(store.characters) == 1623
    assert store.images.shape == (32460, 1, 28, 28) and store.images.dtype == torch.uint8
    assert int((store.collection == 0).sum()) == 964 and int((store.collection == 1).sum()) == 659
    alphabets = {c.split("/")[0] for c in store.characters}
    assert len(alphabets) == 50


@pytest.mark.parametrize("split,n_classes", [("train", 4112), ("val", 688), ("test", 1692), ("trainval", 4800)])
def test_real_vinyals_splits(omniglot_splits, split: str, n_classes: int) -> None:
    ds = omniglot_splits[split]
    assert ds.num_classes == n_classes
    assert len(ds) == 20 * n_classes
    assert np.bincount(ds.targets, minlength=n_classes).tolist() == [20] * n_classes
    assert ds.targets.dtype == np.int64
    assert all(n.rsplit("/", 1)[1] in ("rot000", "rot090", "rot180", "rot270") for n in ds.class_names)
    assert len(set(ds.class_names)) == n_classes


def test_real_vinyals_splits_are_disjoint(omniglot_splits) -> None:
    train, val, test = (set(omniglot_splits[s].class_character) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == 1623


@pytest.mark.parametrize("split,n_classes,n_alphabets", [("background", 964, 30), ("evaluation", 659, 20)])
def test_real_lake_splits(omniglot_splits, split: str, n_classes: int, n_alphabets: int) -> None:
    ds = omniglot_splits[split]
    assert ds.num_classes == n_classes and len(ds) == 20 * n_classes
    assert len(ds.alphabets) == n_alphabets
    assert (ds.class_rotation == 0).all()


def test_real_rotated_class_is_rot90_of_base(omniglot_splits) -> None:
    ds = omniglot_splits["train"]
    index = {n: i for i, n in enumerate(ds.class_names)}
    for char in (ds.class_character[0], ds.class_character[-1], ds.class_character[2000]):
        base = ds.load(np.flatnonzero(ds.targets == index[f"{char}/rot000"]))
        for k, deg in enumerate((90, 180, 270), start=1):
            rotated = ds.load(np.flatnonzero(ds.targets == index[f"{char}/rot{deg:03d}"]))
            assert torch.equal(rotated, torch.rot90(base, k, dims=(-2, -1)))
        assert not torch.equal(base, torch.rot90(base, 1, dims=(-2, -1)))


def test_real_images_look_like_omniglot(omniglot_splits) -> None:
    ds = omniglot_splits["background"]
    x = ds.load(np.arange(0, len(ds), 97))
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert 0.02 < float(x.mean()) < 0.4  # sparse bright ink on black
    assert float(x[:, :, 0, :].mean()) < 0.05  # borders are background


def test_real_cache_round_trip(omniglot_cache) -> None:
    store = omniglot_cache.store
    assert store.cache_file is not None and store.cache_file.parent == omniglot_cache.cache_dir
    again = load_omniglot_images(omniglot_cache.root, image_size=28, cache_dir=omniglot_cache.cache_dir)
    assert again.cache_file == store.cache_file
    assert again.characters == store.characters
    assert torch.equal(again.images, store.images)


def test_real_episode_sampler(omniglot_splits) -> None:
    ds = omniglot_splits["test"]
    sampler = EpisodeSampler(ds, ways=20, shots=5, queries=15, seed=0)
    ep = sampler.sample()
    assert ep.support_x.shape == (100, 1, 28, 28) and ep.query_x.shape == (300, 1, 28, 28)
    assert ep.n_way == 20 and ep.n_shot == 5
    for label, cid in enumerate(ep.class_ids):
        idx = np.asarray(ep.support_indices)[ep.support_y.numpy() == label]
        assert (ds.targets[idx] == cid).all()
