"""Issue 19 item 5: miniImageNet from the three layouts users already have (Ravi csv +
images/, learn2learn's pickles, torchmeta's hdf5), detected in a stated order, checked,
cached, and giving the same episodes from the same seed when they hold the same images."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from PIL import Image

from mmnet_plugin.data import DataNotFoundError, load_dataset
from mmnet_plugin.data.base import DataCorruptError
from mmnet_plugin.data.miniimagenet import MiniImageNet, detect_layout, restricted_unpickle
from mmnet_plugin.episodes import EpisodeSampler

PER_CLASS = 6
SPLITS = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"], "test": ["n01930112"]}
PICKLE_NAMES = {"train": "train", "val": "validation", "test": "test"}


def _images(wnid: str) -> np.ndarray:
    """PER_CLASS distinct uint8 [84, 84, 3] images of one class (stored losslessly as PNG)."""
    rng = np.random.default_rng(sum(map(ord, wnid)))
    return rng.integers(0, 256, size=(PER_CLASS, 84, 84, 3), dtype=np.uint8)


def write_csv(folder: Path) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for split, wnids in SPLITS.items():
        rows = ["filename,label"]
        for wnid in wnids:
            for j, img in enumerate(_images(wnid)):
                name = f"{wnid}{j:08d}.png"
                Image.fromarray(img).save(folder / "images" / name)
                rows.append(f"{name},{wnid}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


def write_pickle(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, wnids in SPLITS.items():
        data = np.concatenate([_images(w) for w in wnids])
        class_dict: Dict[str, list] = {w: list(range(i * PER_CLASS, (i + 1) * PER_CLASS)) for i, w in enumerate(wnids)}
        with open(folder / f"mini-imagenet-cache-{PICKLE_NAMES[split]}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=4)


def write_hdf5(folder: Path) -> None:
    h5py = pytest.importorskip("h5py")
    folder.mkdir(parents=True, exist_ok=True)
    for split, wnids in SPLITS.items():
        with h5py.File(folder / f"{split}_data.hdf5", "w") as f:
            group = f.create_group("datasets")
            for w in wnids:
                group.create_dataset(w, data=_images(w))
        (folder / f"{split}_labels.json").write_text(json.dumps(wnids))


WRITERS = {"csv": write_csv, "pickle": write_pickle, "hdf5": write_hdf5}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Dict[str, Path]:
    out = {}
    for layout, write in WRITERS.items():
        root = tmp_path_factory.mktemp(f"mini-{layout}")
        write(root / "miniimagenet")
        out[layout] = root
    return out


@pytest.mark.parametrize("layout", ["csv", "pickle", "hdf5"])
def test_each_layout_is_detected_and_read(roots, layout, tmp_path):
    ds = MiniImageNet(root=roots[layout], split="train", cache_dir=tmp_path / "cache", strict=False)
    assert ds.layout == layout and layout in repr(ds)
    assert ds.class_names == SPLITS["train"] and len(ds) == 3 * PER_CLASS
    x = ds.load(np.arange(len(ds)))
    assert x.shape == (len(ds), 3, 84, 84) and x.dtype == torch.float32
    # cached like the csv layout: a second load reads the cache file
    again = MiniImageNet(root=roots[layout], split="train", cache_dir=tmp_path / "cache", strict=False)
    assert again.cache_files[0] is not None and again.cache_files[0].is_file()
    assert torch.equal(again.load(np.arange(len(ds))), x)


def test_the_three_layouts_give_the_same_episodes(roots, tmp_path):
    seen = {}
    for layout, root in roots.items():
        ds = load_dataset("miniimagenet", split="train", data_root=root, cache_dir=tmp_path / layout, strict=False)
        sampler = EpisodeSampler(ds, ways=3, shots=2, queries=2, seed=11)
        eps = [sampler.sample() for _ in range(3)]
        seen[layout] = (sampler.fingerprint, [torch.cat([e.support_x, e.query_x]) for e in eps])
    fp = {v[0] for v in seen.values()}
    assert len(fp) == 1
    for layout in ("pickle", "hdf5"):
        for a, b in zip(seen["csv"][1], seen[layout][1]):
            assert torch.equal(a, b), layout


def test_trainval_and_image_size_from_arrays(roots, tmp_path):
    ds = MiniImageNet(root=roots["pickle"], split="trainval", image_size=32, cache_dir=tmp_path, strict=False)
    assert ds.num_classes == 5 and ds.load(np.array([0])).shape == (1, 3, 32, 32)


def test_when_several_layouts_are_present_the_stated_order_decides(roots, tmp_path):
    root = tmp_path / "all"
    folder = root / "miniimagenet"
    write_pickle(folder)
    write_hdf5(folder)
    assert detect_layout(folder, ("train",)) == "pickle"
    ds = MiniImageNet(root=root, split="test", cache_dir=tmp_path / "c", strict=False)
    assert ds.layout == "pickle"
    ds = MiniImageNet(root=root, split="test", cache_dir=tmp_path / "c", strict=False, layout="hdf5")
    assert ds.layout == "hdf5"
    write_csv(folder)
    assert MiniImageNet(root=root, split="test", cache_dir=tmp_path / "c", strict=False).layout == "csv"
    # the layout is part of the data set's digest, so records from two layouts never mix
    from mmnet_plugin.bench.fingerprints import dataset_digest

    a = dataset_digest(MiniImageNet(root=root, split="test", cache_dir=tmp_path / "c", strict=False), "test")
    b = dataset_digest(
        MiniImageNet(root=root, split="test", cache_dir=tmp_path / "c", strict=False, layout="hdf5"), "test"
    )
    assert a != b


def test_class_counts_are_checked_unless_relaxed(roots, tmp_path):
    for layout, root in roots.items():
        with pytest.raises(DataCorruptError, match="expected 64 classes of 600 images, found 3 classes"):
            MiniImageNet(root=root, split="train", cache_dir=tmp_path / layout)


def test_nothing_there_names_every_file_looked_for(tmp_path):
    (tmp_path / "miniimagenet").mkdir()
    with pytest.raises(DataNotFoundError) as exc:
        MiniImageNet(root=tmp_path, split="val")
    msg = str(exc.value)
    assert "\n" not in msg
    for name in ("val.csv", "images", "mini-imagenet-cache-validation.pkl", "val_data.hdf5", "val_labels.json"):
        assert name in msg
    with pytest.raises(DataNotFoundError, match="mini-imagenet-cache-test.pkl"):
        MiniImageNet(root=tmp_path, split="test", layout="pickle")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_reduce_payload_is_refused_before_it_runs(tmp_path, monkeypatch):
    folder = tmp_path / "miniimagenet"
    folder.mkdir()
    path = folder / "mini-imagenet-cache-test.pkl"
    with open(path, "wb") as f:
        pickle.dump({"image_data": _Payload(), "class_dict": {}}, f)
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    with pytest.raises(DataCorruptError, match=r"refused, not loaded: the pickle asks for (posix|os|nt)\.system"):
        restricted_unpickle(path)
    with pytest.raises(DataCorruptError, match="refused"):
        MiniImageNet(root=tmp_path, split="test", strict=False)
    assert called == []


def test_wrong_shapes_are_refused(tmp_path):
    folder = tmp_path / "miniimagenet"
    folder.mkdir()
    with open(folder / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((4, 84, 84), np.uint8), "class_dict": {"a": [0, 1, 2, 3]}}, f)
    with pytest.raises(DataCorruptError, match=r"expected uint8 RGB images \[n, H, W, 3\]"):
        MiniImageNet(root=tmp_path, split="test", strict=False, cache_dir=tmp_path / "c")


def test_hdf5_without_h5py_gives_the_install_hint(roots, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(DataNotFoundError, match=r'needs h5py: pip install "mmnet-plugin\[hdf5\]"'):
        MiniImageNet(root=roots["hdf5"], split="test", strict=False, cache_dir=tmp_path / "fresh")
