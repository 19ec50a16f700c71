"""miniImageNet loader on stand-in images written in the standard layout, plus the real
Ravi & Larochelle csv files (the real images are not available here)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from mmnet_plugin.data import DataNotFoundError, load_dataset
from mmnet_plugin.data import miniimagenet as mi
from mmnet_plugin.data.base import DataCorruptError
from mmnet_plugin.data.cache import CacheWarning
from mmnet_plugin.data.miniimagenet import MiniImageNet, find_split_csv, read_split_csv
from mmnet_plugin.episodes import EpisodeSampler

PER_CLASS = 25
STAND_IN_SPLITS = {
    "train": ["n01532829", "n01558993", "n01704323", "n01749939", "n01770081"],
    "val": ["n01855672", "n02091244"],
    "test": ["n01930112", "n01981276"],
}
ODD_SIZE = "n0155899300000003.jpg"  # written 100x60: must be resized


def _colour(wnid: str, i: int) -> Tuple[int, int, int]:
    h = sum(ord(ch) for ch in wnid)
    return ((h * 37) % 200 + 20, (h * 91 + i) % 200 + 20, (i * 7) % 200 + 20)


def make_stand_in(root: Path, csv_place: str = "top") -> Path:
    """Write stand-in miniImageNet (solid-colour JPEGs) under ``root/miniimagenet``."""
    folder = root / "miniimagenet"
    images = folder / "images"
    images.mkdir(parents=True)
    csv_dir = folder if csv_place == "top" else folder / "splits" / "ravi"
    csv_dir.mkdir(parents=True, exist_ok=True)
    for split, wnids in STAND_IN_SPLITS.items():
        rows = ["filename,label"]
        for wnid in wnids:
            for i in range(1, PER_CLASS + 1):
                name = f"{wnid}{i:08d}.jpg"
                size = (100, 60) if name == ODD_SIZE else (84, 84)
                Image.new("RGB", size, _colour(wnid, i)).save(images / name, quality=95)
                rows.append(f"{name},{wnid}")
        (csv_dir / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mini")
    make_stand_in(root)
    return root


@pytest.fixture(scope="module")
def stand_in_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mini-cache")


# --------------------------------------------------------------------------- stand-in images
@pytest.mark.parametrize("csv_place", ["top", "ravi"])
def test_stand_in_layouts(tmp_path: Path, csv_place: str) -> None:
    make_stand_in(tmp_path, csv_place)
    ds = MiniImageNet(strict=False, root=tmp_path, split="train", cache_dir=tmp_path / "cache")
    assert ds.class_names == STAND_IN_SPLITS["train"]
    assert len(ds) == 5 * PER_CLASS
    assert ds.targets.dtype == np.int64
    assert ds.targets.tolist() == [c for c in range(5) for _ in range(PER_CLASS)]
    x = ds.load(np.arange(len(ds)))
    assert x.shape == (len(ds), 3, 84, 84) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_stand_in_pixels_and_resize(stand_in: Path, stand_in_cache: Path) -> None:
    ds = MiniImageNet(strict=False, root=stand_in, split="train", cache_dir=stand_in_cache)
    for i in (0, 1, 30, len(ds) - 1):
        wnid = ds.class_names[int(ds.targets[i])]
        expected = torch.tensor(_colour(wnid, int(ds.filenames[i][-12:-4])), dtype=torch.float32) / 255
        got = ds.load(np.array([i]))[0]
        assert torch.allclose(got.mean(dim=(1, 2)), expected, atol=4 / 255)  # JPEG, not mean/std normalised
    odd = ds.filenames.index(ODD_SIZE)
    assert ds[odd][0].shape == (3, 84, 84)
    img, label = ds[odd]
    assert label == 1 and torch.allclose(
        img.mean(dim=(1, 2)), torch.tensor(_colour("n01558993", 3)) / 255, atol=4 / 255
    )


def test_stand_in_root_may_be_the_dataset_folder(stand_in: Path, stand_in_cache: Path) -> None:
    ds = MiniImageNet(strict=False, root=stand_in / "miniimagenet", split="val", cache_dir=stand_in_cache)
    assert ds.class_names == STAND_IN_SPLITS["val"] and len(ds) == 2 * PER_CLASS


def test_stand_in_image_size(stand_in: Path, stand_in_cache: Path) -> None:
    ds = MiniImageNet(strict=False, root=stand_in, split="test", image_size=32, cache_dir=stand_in_cache)
    assert ds.load(np.arange(3)).shape == (3, 3, 32, 32)


def test_stand_in_trainval(stand_in: Path, stand_in_cache: Path) -> None:
    ds = MiniImageNet(strict=False, root=stand_in, split="trainval", cache_dir=stand_in_cache)
    assert ds.class_names == STAND_IN_SPLITS["train"] + STAND_IN_SPLITS["val"]
    assert np.bincount(ds.targets).tolist() == [PER_CLASS] * 7
    val = MiniImageNet(strict=False, root=stand_in, split="val", cache_dir=stand_in_cache)
    assert torch.equal(ds.load(np.arange(len(ds) - 5, len(ds))), val.load(np.arange(len(val) - 5, len(val))))


def test_stand_in_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_stand_in(tmp_path)
    cache = tmp_path / "cache"
    first = MiniImageNet(strict=False, root=tmp_path, split="val", cache_dir=cache)
    assert first.cache_files[0] is not None and first.cache_files[0].parent == cache

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(mi, "_decode", boom)
    second = MiniImageNet(strict=False, root=tmp_path, split="val", cache_dir=cache)
    assert torch.equal(first.load(np.arange(len(first))), second.load(np.arange(len(second))))
    monkeypatch.undo()

    # a truncated cache file is reported and rebuilt, never half used
    path = first.cache_files[0]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(CacheWarning, match="rebuilding"):
        third = MiniImageNet(strict=False, root=tmp_path, split="val", cache_dir=cache)
    assert torch.equal(first.load(np.arange(len(first))), third.load(np.arange(len(third))))

    # a changed image changes the key: the new pixels are used
    name = first.filenames[0]
    Image.new("RGB", (84, 84), (0, 0, 0)).save(tmp_path / "miniimagenet" / "images" / name)
    fourth = MiniImageNet(strict=False, root=tmp_path, split="val", cache_dir=cache)
    assert fourth.cache_files[0] != path
    assert float(fourth.load(np.array([0])).max()) < 0.05


def test_stand_in_episode_sampler(stand_in: Path, stand_in_cache: Path) -> None:
    ds = load_dataset("miniimagenet", split="train", data_root=stand_in, cache_dir=stand_in_cache, strict=False)
    ep = EpisodeSampler(ds, ways=5, shots=5, queries=15, seed=1).sample()
    assert ep.support_x.shape == (25, 3, 84, 84) and ep.query_x.shape == (75, 3, 84, 84)
    assert ep.n_way == 5 and ep.n_shot == 5


# --------------------------------------------------------------------------- errors
def test_missing_images_are_named(tmp_path: Path) -> None:
    folder = make_stand_in(tmp_path)
    for n in ("n0155899300000007.jpg", "n0177008100000025.jpg"):
        (folder / "images" / n).unlink()
    with pytest.raises(DataNotFoundError) as err:
        MiniImageNet(strict=False, root=tmp_path, split="train", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "2 of the 125 images" in msg
    assert str(folder / "images" / "n0155899300000007.jpg") in msg
    assert str(folder / "images" / "n0177008100000025.jpg") in msg
    assert "mini-imagenet-tools" in msg


def test_missing_csv_names_both_places(tmp_path: Path) -> None:
    folder = make_stand_in(tmp_path)
    (folder / "test.csv").unlink()
    with pytest.raises(DataNotFoundError) as err:
        MiniImageNet(strict=False, root=tmp_path, split="test", cache_dir=tmp_path / "cache")
    assert str(folder / "test.csv") in str(err.value)
    assert str(folder / "splits" / "ravi" / "test.csv") in str(err.value)


def test_missing_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "miniimagenet")):
        MiniImageNet(strict=False, root=tmp_path, split="train")
    monkeypatch.delenv("MMNET_DATA_ROOT", raising=False)
    with pytest.raises(DataNotFoundError, match="MMNET_DATA_ROOT"):
        MiniImageNet(split="train")


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    folder = make_stand_in(tmp_path)
    (folder / "images" / "n0193011200000004.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataCorruptError, match="n0193011200000004.jpg"):
        MiniImageNet(strict=False, root=tmp_path, split="test", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npz"))


def test_bad_csv(tmp_path: Path) -> None:
    folder = make_stand_in(tmp_path)
    (folder / "val.csv").write_text("name,wnid\na.jpg,n1\n")
    with pytest.raises(DataCorruptError, match="filename,label"):
        MiniImageNet(strict=False, root=tmp_path, split="val", cache_dir=tmp_path / "cache")
    (folder / "val.csv").write_text("filename,label\na.jpg,n1\n../b.jpg,n1\na.jpg,n2\nc.jpg\n")
    with pytest.raises(DataCorruptError) as err:
        read_split_csv(folder / "val.csv")
    msg = str(err.value)
    assert "line 3" in msg and "line 4: a.jpg is listed twice" in msg and "line 5" in msg


def test_unknown_split_and_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train, val, test, trainval"):
        MiniImageNet(strict=False, root=tmp_path, split="background")
    with pytest.raises(ValueError, match="image_size"):
        MiniImageNet(strict=False, root=tmp_path, split="train", image_size=0)


# --------------------------------------------------------------------------- real csv files
@pytest.fixture(scope="module")
def ravi_dir(data_root: Path, require_data) -> Path:
    folder = data_root / "miniimagenet"
    for s in ("train", "val", "test"):
        try:
            find_split_csv(folder, s)
        except DataNotFoundError:
            require_data(f"the Ravi split csv files are not in {folder}")
    return folder


def test_real_ravi_csvs(ravi_dir: Path) -> None:
    classes: Dict[str, List[str]] = {}
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        names, labels = read_split_csv(find_split_csv(ravi_dir, split))
        counts = {lab: labels.count(lab) for lab in dict.fromkeys(labels)}
        assert len(counts) == n and set(counts.values()) == {600}
        assert len(names) == 600 * n and len(set(names)) == len(names)
        classes[split] = list(counts)
    assert not set(classes["train"]) & set(classes["val"])
    assert not set(classes["train"]) & set(classes["test"])
    assert not set(classes["val"]) & set(classes["test"])


def test_real_csvs_without_images(ravi_dir: Path, tmp_path: Path) -> None:
    # the real csv files, and an images/ folder that holds only a few of the images
    root = tmp_path / "root"
    folder = root / "miniimagenet"
    (folder / "splits").mkdir(parents=True)
    shutil.copytree(ravi_dir / "splits" / "ravi", folder / "splits" / "ravi")
    names, _ = read_split_csv(folder / "splits" / "ravi" / "test.csv")
    (folder / "images").mkdir()
    for n in names[:3]:
        Image.new("RGB", (84, 84)).save(folder / "images" / n)
    with pytest.raises(DataNotFoundError) as err:
        MiniImageNet(root=root, split="test", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "11997 of the 12000 images" in msg and str(folder / "images" / names[3]) in msg
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_real_data_root_without_images(data_root: Path, ravi_dir: Path, cache_dir: Path) -> None:
    if (ravi_dir / "images").is_dir():
        pytest.skip("the real miniImageNet images are present here")
    first, _ = read_split_csv(find_split_csv(ravi_dir, "train"))
    with pytest.raises(DataNotFoundError) as err:
        MiniImageNet(root=data_root, split="train", cache_dir=cache_dir)
    msg = str(err.value)
    assert str(ravi_dir / "images") in msg and first[0] in msg and "38400 of the 38400" in msg
