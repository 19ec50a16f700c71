"""miniImageNet (Vinyals et al., 2016) in the class split of Ravi & Larochelle (2017).

Files, under ``<data root>/miniimagenet/`` (or a ``root`` that is that folder itself):

- ``images/<filename>``: the images (84x84 RGB in the usual distribution);
- ``train.csv``, ``val.csv``, ``test.csv`` with the columns ``filename,label`` (a header
  row, then one image a line), either beside ``images/`` or under ``splits/ravi/``; when
  both exist, the top-level csv wins. 64 / 16 / 20 classes of 600 images.

The two other layouts users already have are read too (nothing is converted on disk):

- ``pickle``: learn2learn's ``mini-imagenet-cache-{train,validation,test}.pkl``, each a
  dict ``{"image_data": uint8 [n, 84, 84, 3], "class_dict": {wnid: [row, ...]}}``. They are
  read with a restricted unpickler that admits only numpy arrays, dicts, lists, strings and
  numbers: a pickle that asks for anything else (a ``__reduce__`` payload) is refused
  before it runs.
- ``hdf5``: torchmeta's ``{train,val,test}_data.hdf5`` (a group ``datasets`` with one
  uint8 ``[600, 84, 84, 3]`` array per class) with ``{split}_labels.json`` (the class
  order); reading it needs h5py (``pip install "mmnet-plugin[hdf5]"``).

The layout is detected under the ``miniimagenet`` folder in this order: ``csv`` (the
original JPEGs), then ``pickle``, then ``hdf5``; the first whose files are all present for
the split wins, or name one with ``layout=`` (``--layout``). The layout is part of the data
set's identity (:attr:`MiniImageNet.layout`, in ``repr`` and so in the harness's records).
Classes come in file order (csv: first appearance; pickle: ``class_dict`` order; hdf5: the
labels file's order) and images in file order within a class, so two layouts holding the
same images give the same episodes from the same seed. Every layout is integrity-checked:
64 / 16 / 20 classes of 600 images for train / val / test (``strict=False`` relaxes the
counts, for stand-ins), uint8 RGB arrays of one size, decodable images.

Nothing is downloaded: miniImageNet is built from ImageNet (ILSVRC-2012), which needs an
ImageNet account; see :data:`HOW_TO_GET`.

Loading: each split's images are decoded once (PIL, converted to RGB and, when not already
``image_size`` x ``image_size``, resized with ``LANCZOS`` without keeping the aspect ratio)
into one in-memory ``uint8`` array (813 MB for ``train`` at 84x84), and that array is cached
on disk per split and image size (see :mod:`mmnet_plugin.data.cache`), keyed by the csv's
content and the names, sizes and modification times of the images it lists. Later loads
read the cache file (seconds). :meth:`MiniImageNet.load` returns ``float32`` RGB in
``[0, 1]``: no mean/std normalisation is applied (do it in the model if wanted).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from . import cache as _cache
from .base import DataCorruptError, DataNotFoundError, FewShotDataset, resolve_data_root

__all__ = [
    "MiniImageNet",
    "SPLITS",
    "LAYOUTS",
    "EXPECTED_COUNTS",
    "HOW_TO_GET",
    "detect_layout",
    "find_split_csv",
    "read_split_csv",
    "restricted_unpickle",
]

SPLITS: Tuple[str, ...] = ("train", "val", "test", "trainval")
#: The resampling filter used to resize (part of the cache key).
RESAMPLE = "lanczos"
HOW_TO_GET = (
    "miniImageNet can not be downloaded by this package: build it from ImageNet (ILSVRC-2012) "
    "in the Ravi & Larochelle split, for example with the widely used mini-imagenet-tools "
    "scripts (https://github.com/yaoyao-liu/mini-imagenet-tools), then put the images in "
    "<data root>/miniimagenet/images/ and train.csv, val.csv, test.csv in "
    "<data root>/miniimagenet/ (or its splits/ravi/), and set MMNET_DATA_ROOT / --data-root "
    "to <data root>"
)

_MAX_LISTED = 5

#: the layouts, in the order detection tries them
LAYOUTS: Tuple[str, ...] = ("csv", "pickle", "hdf5")
_LAYOUT_DESCRIPTION = {
    "csv": "Ravi & Larochelle csv + images/",
    "pickle": "learn2learn mini-imagenet-cache-*.pkl",
    "hdf5": "torchmeta *_data.hdf5 + *_labels.json",
}
#: (classes, images per class) of each split of the real data set
EXPECTED_COUNTS: Dict[str, Tuple[int, int]] = {"train": (64, 600), "val": (16, 600), "test": (20, 600)}
_PICKLE_SPLIT = {"train": "train", "val": "validation", "test": "test"}
_HDF5_HINT = 'pip install "mmnet-plugin[hdf5]" (or pip install h5py)'


class _SplitImages(NamedTuple):
    filenames: List[str]
    labels: List[str]
    images: np.ndarray  # uint8 [n, 3, S, S]
    cache_file: Optional[Path]


def _find_folder(root: Union[str, os.PathLike, None]) -> Path:
    data_root = resolve_data_root(root)
    if data_root is None:
        raise DataNotFoundError(
            "miniImageNet: no data root given. Pass root=<folder> (--data-root) or set "
            "MMNET_DATA_ROOT to the folder that holds miniimagenet/. " + HOW_TO_GET + "."
        )
    sub = data_root / "miniimagenet"
    if sub.is_dir():
        return sub
    own = [data_root / "images", data_root / "splits", data_root / "train.csv"]
    if data_root.name.lower() == "miniimagenet" or any(p.exists() for p in own):
        return data_root
    return sub


def find_split_csv(folder: Union[str, os.PathLike], split: str) -> Path:
    """The csv of one Ravi split: ``<folder>/<split>.csv``, else ``<folder>/splits/ravi/<split>.csv``.

    Args:
        folder: the ``miniimagenet`` folder.
        split: ``train``, ``val`` or ``test``.

    Returns:
        The csv's path.

    Raises:
        DataNotFoundError: if neither exists; the message names both paths.
    """
    folder = Path(folder)
    candidates = [folder / f"{split}.csv", folder / "splits" / "ravi" / f"{split}.csv"]
    for c in candidates:
        if c.is_file():
            return c
    raise DataNotFoundError(
        f"miniImageNet split file not found: expected {candidates[0]} or {candidates[1]}. "
        "The Ravi & Larochelle csv files (filename,label) come with the miniImageNet "
        f"distribution. {HOW_TO_GET}."
    )


def read_split_csv(path: Union[str, os.PathLike]) -> Tuple[List[str], List[str]]:
    """Parse a ``filename,label`` csv (with its header row).

    Args:
        path: the csv.

    Returns:
        ``(filenames, labels)``, one entry per image, in file order.

    Raises:
        DataCorruptError: for a wrong header, a malformed or duplicate row, an unsafe file
            name, or no rows; the message names the file and the lines.
    """
    path = Path(path)
    filenames: List[str] = []
    labels: List[str] = []
    problems: List[str] = []
    seen: Dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header] != ["filename", "label"]:
            raise DataCorruptError(f"{path}: the first line must be the header 'filename,label'; got {header!r}")
        for lineno, row in enumerate(reader, 2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                problems.append(f"line {lineno}: expected 'filename,label', got {','.join(row)!r}")
                continue
            name, label = row[0].strip(), row[1].strip()
            if "/" in name or "\\" in name or name in (".", ".."):
                problems.append(f"line {lineno}: file name {name!r} must be a plain name inside images/")
                continue
            if name in seen:
                problems.append(f"line {lineno}: {name} is listed twice (first on line {seen[name]})")
                continue
            seen[name] = lineno
            filenames.append(name)
            labels.append(label)
    if not filenames and not problems:
        problems.append("no images listed")
    if problems:
        shown = problems[:_MAX_LISTED]
        more = f"; ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DataCorruptError(f"{path}: " + "; ".join(shown) + more)
    return filenames, labels


def _image_stats(images_dir: Path) -> Dict[str, Tuple[int, int]]:
    stats: Dict[str, Tuple[int, int]] = {}
    if not images_dir.is_dir():
        return stats
    with os.scandir(images_dir) as it:
        for e in it:
            try:
                if e.is_file():
                    st = e.stat()
                    stats[e.name] = (st.st_size, st.st_mtime_ns)
            except OSError:
                continue
    return stats


def _decode(path: Path, image_size: int) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        rgb = im.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _load_split(
    folder: Path,
    split: str,
    image_size: int,
    cache_dir: Union[str, os.PathLike, None],
    stats: Dict[str, Tuple[int, int]],
) -> _SplitImages:
    csv_path = find_split_csv(folder, split)
    filenames, labels = read_split_csv(csv_path)
    images_dir = folder / "images"
    missing = [n for n in filenames if n not in stats]
    if missing:
        shown = ", ".join(str(images_dir / n) for n in missing[:_MAX_LISTED])
        where = "" if images_dir.is_dir() else f" (the folder {images_dir}/ does not exist)"
        raise DataNotFoundError(
            f"miniImageNet images missing: {len(missing)} of the {len(filenames)} images listed in "
            f"{csv_path} are not in {images_dir}/{where}, e.g. {shown}. {HOW_TO_GET}."
        )

    h = hashlib.sha256()
    h.update(f"miniimagenet|format{_cache.CACHE_FORMAT}|{image_size}|{RESAMPLE}|".encode())
    h.update(_cache.hash_file(csv_path).encode())
    h.update(_cache.hash_file_stats((n, *stats[n]) for n in filenames).encode())
    key = h.hexdigest()
    cache_file = _cache.default_cache_dir(cache_dir) / f"miniimagenet-{split}-{image_size}px-{key[:24]}.npz"
    arrays = _cache.load_arrays(cache_file, ("images", "filenames", "key"))
    if arrays is not None:
        imgs, names = arrays["images"], arrays["filenames"]
        expected = (len(filenames), 3, image_size, image_size)
        if str(arrays["key"]) != key or names.tolist() != filenames:
            _cache.discard(cache_file, "its key or file list does not match the csv")
        elif imgs.dtype != np.uint8 or imgs.shape != expected:
            _cache.discard(cache_file, f"images are {imgs.dtype} {imgs.shape}, expected uint8 {expected}")
        else:
            return _SplitImages(filenames, labels, imgs, cache_file)

    images = np.empty((len(filenames), 3, image_size, image_size), dtype=np.uint8)
    bad: List[str] = []
    for i, name in enumerate(filenames):
        try:
            images[i] = _decode(images_dir / name, image_size)
        except Exception as exc:  # every decoder failure is reported, never half used
            bad.append(f"{images_dir / name} ({type(exc).__name__}: {exc})")
    if bad:
        shown = "; ".join(bad[:_MAX_LISTED])
        raise DataCorruptError(
            f"miniImageNet: {len(bad)} of the {len(filenames)} images of {csv_path.name} do not decode: "
            f"{shown}{' ...' if len(bad) > _MAX_LISTED else ''}. Replace them from the original source."
        )
    try:
        _cache.save_arrays(
            cache_file,
            {
                "images": images,
                "filenames": np.asarray(filenames, dtype=str),
                "key": np.asarray(key),
            },
        )
        written: Optional[Path] = cache_file
    except OSError as exc:
        warnings.warn(
            f"could not write the miniImageNet cache {cache_file} ({exc}); the next load "
            "decodes the images again (set MMNET_CACHE_DIR to a writable folder)",
            _cache.CacheWarning,
            stacklevel=3,
        )
        written = None
    return _SplitImages(filenames, labels, images, written)


def _layout_files(folder: Path, layout: str, split: str) -> List[Path]:
    """The files ``layout`` needs for one split (csv: either csv location and images/)."""
    if layout == "csv":
        return [folder / f"{split}.csv", folder / "splits" / "ravi" / f"{split}.csv", folder / "images"]
    if layout == "pickle":
        return [folder / f"mini-imagenet-cache-{_PICKLE_SPLIT[split]}.pkl"]
    return [folder / f"{split}_data.hdf5", folder / f"{split}_labels.json"]


def _layout_present(folder: Path, layout: str, split: str) -> bool:
    files = _layout_files(folder, layout, split)
    if layout == "csv":
        return (files[0].is_file() or files[1].is_file()) and files[2].is_dir()
    return all(f.is_file() for f in files)


def detect_layout(folder: Union[str, os.PathLike], splits: Tuple[str, ...], layout: Optional[str] = None) -> str:
    """The layout to read ``splits`` from: ``layout`` if given (checked), else the first of
    :data:`LAYOUTS` whose files are all present.

    Raises:
        ValueError: an unknown layout name.
        DataNotFoundError: no layout (or not the one named) is complete; the message names
            the files looked for.
    """
    folder = Path(folder)
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown miniImageNet layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    for name in (layout,) if layout else LAYOUTS:
        if all(_layout_present(folder, name, sp) for sp in splits):
            return name
    looked = "; ".join(
        f"{name} ({_LAYOUT_DESCRIPTION[name]}): "
        + ", ".join(str(f) for sp in splits for f in _layout_files(folder, name, sp))
        for name in ((layout,) if layout else LAYOUTS)
    )
    raise DataNotFoundError(f"miniImageNet {'/'.join(splits)} not found; looked for {looked}. {HOW_TO_GET}.")


# ---------------------------------------------------------------- the pickle layout
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays and scalars, dicts, lists, tuples, strings, bytes and numbers
    (the opcodes for containers and scalars need no global); any other global is refused."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"the pickle asks for {module}.{name}; only numpy arrays, dicts, lists, strings and numbers are allowed"
        )


def restricted_unpickle(path: Union[str, os.PathLike]) -> object:
    """Load a pickle with :class:`_RestrictedUnpickler`.

    Raises:
        DataCorruptError: the file asks for a global outside the allowed set, or is not a
            readable pickle; the message names the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise DataCorruptError(f"{path}: refused, not loaded: {str(exc)[:200]}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataCorruptError(f"{path}: not a readable pickle ({type(exc).__name__}: {str(exc)[:120]})") from None


def _to_chw(arr: np.ndarray, image_size: int) -> np.ndarray:
    """``uint8 [n, H, W, 3]`` -> ``uint8 [n, 3, S, S]`` (LANCZOS when the size differs)."""
    if arr.shape[1:3] != (image_size, image_size):
        arr = np.stack([np.asarray(Image.fromarray(a).resize((image_size, image_size), Image.LANCZOS)) for a in arr])
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def _check_array(arr: object, where: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise DataCorruptError(f"{where}: expected uint8 RGB images [n, H, W, 3], got {got}")
    if arr.shape[1] != arr.shape[2] or arr.shape[1] < 1:
        raise DataCorruptError(f"{where}: expected square images, got {arr.shape[1]}x{arr.shape[2]}")
    return arr


def _read_pickle(path: Path) -> Tuple[List[str], List[str], np.ndarray]:
    data = restricted_unpickle(path)
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise DataCorruptError(f"{path}: expected a dict with 'image_data' and 'class_dict' (learn2learn's layout)")
    images = _check_array(data["image_data"], f"{path} image_data")
    classes = data["class_dict"]
    if not isinstance(classes, dict):
        raise DataCorruptError(f"{path}: class_dict must map class names to lists of rows")
    names: List[str] = []
    labels: List[str] = []
    rows: List[int] = []
    for wnid, idx in classes.items():
        idx = np.asarray(idx).reshape(-1)
        if idx.dtype.kind not in "iu" or (idx.size and (idx.min() < 0 or idx.max() >= len(images))):
            raise DataCorruptError(f"{path}: class {str(wnid)[:40]!r} lists rows outside 0..{len(images) - 1}")
        for j, r in enumerate(idx.tolist()):
            names.append(f"{wnid}/{j:04d}")
            labels.append(str(wnid))
            rows.append(int(r))
    return names, labels, images[np.asarray(rows, dtype=np.int64)] if rows else images[:0]


def _read_hdf5(data_path: Path, labels_path: Path) -> Tuple[List[str], List[str], np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise DataNotFoundError(
            f"reading torchmeta's miniImageNet files ({data_path}) needs h5py: {_HDF5_HINT}"
        ) from None
    try:
        order = json.loads(labels_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataCorruptError(f"{labels_path}: not a readable JSON list of class names ({exc})") from None
    if not isinstance(order, list) or not all(isinstance(c, str) for c in order):
        raise DataCorruptError(f"{labels_path}: expected a JSON list of class names")
    names: List[str] = []
    labels: List[str] = []
    parts: List[np.ndarray] = []
    try:
        with h5py.File(data_path, "r") as f:
            group = f.get("datasets")
            if group is None:
                raise DataCorruptError(f"{data_path}: no group 'datasets' (torchmeta's layout)")
            for wnid in order:
                if wnid not in group:
                    raise DataCorruptError(f"{data_path}: class {wnid!r} of {labels_path.name} is missing")
                arr = _check_array(np.asarray(group[wnid]), f"{data_path} class {wnid}")
                parts.append(arr)
                names.extend(f"{wnid}/{j:04d}" for j in range(len(arr)))
                labels.extend([wnid] * len(arr))
    except OSError as exc:
        raise DataCorruptError(f"{data_path}: not a readable HDF5 file ({str(exc)[:160]})") from None
    if not parts:
        raise DataCorruptError(f"{labels_path}: lists no classes")
    if len({p.shape[1:] for p in parts}) != 1:
        raise DataCorruptError(f"{data_path}: classes hold images of different sizes")
    return names, labels, np.concatenate(parts)


def _load_array_split(
    folder: Path, layout: str, split: str, image_size: int, cache_dir: Union[str, os.PathLike, None]
) -> _SplitImages:
    """One split from the pickle or hdf5 layout, cached like the csv layout's decode."""
    files = [f for f in _layout_files(folder, layout, split)]
    h = hashlib.sha256()
    h.update(f"miniimagenet|{layout}|format{_cache.CACHE_FORMAT}|{image_size}|{RESAMPLE}|".encode())
    h.update(_cache.hash_file_stats((str(f.name), f.stat().st_size, f.stat().st_mtime_ns) for f in files).encode())
    key = h.hexdigest()
    cache_file = _cache.default_cache_dir(cache_dir) / f"miniimagenet-{layout}-{split}-{image_size}px-{key[:24]}.npz"
    arrays = _cache.load_arrays(cache_file, ("images", "filenames", "labels", "key"))
    if arrays is not None and str(arrays["key"]) == key and arrays["images"].dtype == np.uint8:
        return _SplitImages(arrays["filenames"].tolist(), arrays["labels"].tolist(), arrays["images"], cache_file)
    if layout == "pickle":
        names, labels, raw = _read_pickle(files[0])
    else:
        names, labels, raw = _read_hdf5(files[0], files[1])
    images = _to_chw(raw, image_size)
    try:
        _cache.save_arrays(
            cache_file,
            {
                "images": images,
                "filenames": np.asarray(names, dtype=str),
                "labels": np.asarray(labels, dtype=str),
                "key": np.asarray(key),
            },
        )
        written: Optional[Path] = cache_file
    except OSError:
        written = None
    return _SplitImages(names, labels, images, written)


def _check_counts(labels: List[str], split: str, where: str) -> None:
    """64 / 16 / 20 classes of 600 images (the real data set), else a one-line error."""
    want_classes, want_per_class = EXPECTED_COUNTS[split]
    counts: Dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    off = {c: n for c, n in counts.items() if n != want_per_class}
    if len(counts) != want_classes or off:
        detail = f"{len(counts)} classes" + (
            f"; {len(off)} with other than {want_per_class} images, e.g. {next(iter(off))}: {next(iter(off.values()))}"
            if off
            else ""
        )
        raise DataCorruptError(
            f"miniImageNet {split} from {where}: expected {want_classes} classes of {want_per_class} images, "
            f"found {detail}; the files are incomplete or not miniImageNet (strict=False accepts other counts)"
        )


class MiniImageNet(FewShotDataset):
    """One split of miniImageNet (Ravi & Larochelle class split) as an episode source.

    Images are ``float32 [3, S, S]`` RGB in ``[0, 1]``, not mean/std normalised. The whole
    split is held in memory as ``uint8`` (813 MB for ``train`` at 84x84) and cached on disk
    after the first decode.

    Args:
        root: data root holding ``miniimagenet/`` (or that folder itself); default
            ``$MMNET_DATA_ROOT``.
        split: ``train``, ``val``, ``test`` (64 / 16 / 20 classes) or ``trainval``
            (``train`` then ``val``).
        image_size: side of the images; images of another size are resized (``LANCZOS``).
        cache_dir: where decoded splits are cached; default ``$MMNET_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/mmnet-plugin`` or ``~/.cache/mmnet-plugin``.
        layout: ``csv``, ``pickle`` or ``hdf5``; default: detected (see the module docstring).
        strict: check the real data set's class counts (64 / 16 / 20 classes of 600); ``False``
            for stand-ins with other counts (shapes and decoding are checked either way).

    Attributes:
        targets: ``int64`` class index per image.
        class_names: the WordNet id (csv ``label``) of each class, in order of first
            appearance in the csv.
        filenames: the image file name of each item.
        cache_files: the cache file(s) in use.

    Raises:
        ValueError: for an unknown split or a bad ``image_size``.
        DataNotFoundError: if a csv or images are missing; the message names them (the
            first few and the count) and says how to get miniImageNet.
        DataCorruptError: for a malformed csv or images that do not decode.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike, None] = None,
        split: str = "train",
        image_size: int = 84,
        cache_dir: Union[str, os.PathLike, None] = None,
        layout: Optional[str] = None,
        strict: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown miniImageNet split {split!r}; choose one of {', '.join(SPLITS)}")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer (84 is the usual size); got {image_size!r}")
        self.split = split
        self.image_size = int(image_size)
        folder = _find_folder(root)
        self.root = folder
        parts = ("train", "val") if split == "trainval" else (split,)
        csv_started = any(f.exists() for p in parts for f in _layout_files(folder, "csv", p))
        others = any(_layout_present(folder, name, p) for name in ("pickle", "hdf5") for p in parts)
        if layout is None and csv_started and not others:
            self.layout = "csv"  # the csv layout's own errors name its files
        else:
            self.layout = detect_layout(folder, parts, layout)
        if self.layout == "csv":
            for p in parts:  # csv errors before the (slower) image listing
                find_split_csv(folder, p)
            stats = _image_stats(folder / "images")
            loaded = [_load_split(folder, p, self.image_size, cache_dir, stats) for p in parts]
        else:
            loaded = [_load_array_split(folder, self.layout, p, self.image_size, cache_dir) for p in parts]
        if strict:
            for p, part in zip(parts, loaded):
                _check_counts(part.labels, p, f"the {self.layout} layout in {folder}")

        self.filenames: List[str] = [n for s in loaded for n in s.filenames]
        labels = [lab for s in loaded for lab in s.labels]
        self.class_names: List[str] = list(dict.fromkeys(labels))
        index = {c: i for i, c in enumerate(self.class_names)}
        self.targets = np.asarray([index[lab] for lab in labels], dtype=np.int64)
        arr = loaded[0].images if len(loaded) == 1 else np.concatenate([s.images for s in loaded])
        self._images = torch.from_numpy(arr)
        self.cache_files: List[Optional[Path]] = [s.cache_file for s in loaded]

    def load(self, indices: np.ndarray) -> torch.Tensor:
        """Images of ``indices`` as ``float32 [n, 3, S, S]`` RGB in ``[0, 1]``.

        Args:
            indices: item indices (``-len(self) <= i < len(self)``).

        Returns:
            The images.

        Raises:
            IndexError: for an index out of range.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self.targets)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = int(idx.min()) if idx.min() < -n else int(idx.max())
            raise IndexError(f"index {bad} out of range for {n} items")
        idx = idx % n if n else idx
        return self._images[torch.from_numpy(idx)].float().div_(255.0)

    def __repr__(self) -> str:
        return (
            f"MiniImageNet(split={self.split!r}, layout={self.layout!r}, classes={self.num_classes}, "
            f"items={len(self)}, image_size={self.image_size}, root={str(self.root)!r})"
        )
