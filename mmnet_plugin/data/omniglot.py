"""Omniglot (Lake et al., 2015) from the official archives, in the Vinyals and Lake splits.

Files, under ``<data root>/omniglot/`` (or a ``root`` that is that folder itself):

- ``images_background.zip`` and ``images_evaluation.zip`` (read in place with
  :mod:`zipfile`, no extraction), or the extracted ``images_background/`` and
  ``images_evaluation/`` folders; an archive wins over a folder of the same name;
- ``splits/vinyals/{train,val,test,trainval}.txt`` for the Vinyals splits, one
  ``Alphabet/characterNN/rotNNN`` class a line.

Both archives (50 alphabets, 1,623 characters, 32,460 images) are decoded once into one
``uint8`` array that every split indexes into, and that array is cached on disk (see
:mod:`mmnet_plugin.data.cache`), so only the first load is slow.

Pixel convention: the 105x105 binary PNGs are inverted so that **ink is bright** (1.0) and
the background is 0.0, then resized with PIL's ``LANCZOS`` filter on the grey image.
Rotations: class ``rotNNN`` is its base character rotated NNN degrees **counter-clockwise**,
``torch.rot90(x, k=NNN // 90, dims=(-2, -1))``; only the unrotated images are stored and
rotations are applied on :meth:`Omniglot.load`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from . import cache as _cache
from .base import DataCorruptError, DataNotFoundError, FewShotDataset, resolve_data_root

__all__ = [
    "Omniglot",
    "OmniglotImages",
    "ARCHIVES",
    "SPLITS",
    "VINYALS_SPLITS",
    "LAKE_SPLITS",
    "URLS",
    "check_member_name",
    "decode_omniglot_archive",
    "load_omniglot_images",
]

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
#: The two official archives, in the order their characters are stored.
ARCHIVES: Tuple[str, str] = (BACKGROUND, EVALUATION)
#: What each archive must hold: (alphabets, characters). Checked on decode.
EXPECTED_COUNTS: Dict[str, Tuple[int, int]] = {BACKGROUND: (30, 964), EVALUATION: (20, 659)}
#: Drawers per character: every character has this many images.
IMAGES_PER_CHARACTER = 20
#: Side of the source PNGs.
SOURCE_SIZE = 105
#: The resampling filter used to resize (part of the cache key).
RESAMPLE = "lanczos"

VINYALS_SPLITS: Tuple[str, ...] = ("train", "val", "test", "trainval")
LAKE_SPLITS: Dict[str, str] = {"background": BACKGROUND, "evaluation": EVALUATION}
SPLITS: Tuple[str, ...] = VINYALS_SPLITS + tuple(LAKE_SPLITS)
ROTATIONS: Tuple[int, ...] = (0, 90, 180, 270)

URLS: Dict[str, str] = {
    BACKGROUND: "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    EVALUATION: "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}
SPLITS_URL = "https://github.com/jakesnell/prototypical-networks (data/omniglot/splits/vinyals/)"

_MAX_LISTED = 10
_LINE_RE = re.compile(r"^(?P<char>[^/]+/character\d+)/rot(?P<rot>\d{3})$")


# ---------------------------------------------------------------------------- sources
def check_member_name(name: str, archive: str = "archive") -> None:
    """Refuse an archive member name that could escape the folder it is read into.

    Args:
        name: the member name as stored in the archive.
        archive: the archive's name, for the message.

    Raises:
        ValueError: for an absolute name (``/x``, ``C:...``, ``\\\\server``), a name with a
            ``..`` component, or a NUL byte; the message names the member.
    """
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    if (
        "\0" in name
        or norm.startswith("/")
        or re.match(r"^[A-Za-z]:", norm) is not None
        or any(p == ".." for p in parts)
    ):
        raise ValueError(
            f"{archive}: refusing unsafe member name {name!r} (absolute path or '..' component); "
            "the archive is not a genuine Omniglot archive"
        )


class _Source:
    """One of the two image collections: a zip archive or an extracted folder."""

    def __init__(self, name: str, path: Path, kind: str):
        self.name = name  # images_background / images_evaluation
        self.path = path
        self.kind = kind  # "zip" | "dir"
        self.label = path.name + ("/" if kind == "dir" else "")

    def fingerprint(self) -> str:
        if self.kind == "zip":
            return "zip:" + _cache.hash_file(self.path)
        stats = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                st = p.stat()
                stats.append((p.relative_to(self.path).as_posix(), st.st_size, st.st_mtime_ns))
        return "dir:" + _cache.hash_file_stats(stats)


def _locate_source(folder: Path, name: str) -> Optional[_Source]:
    zpath = folder / f"{name}.zip"
    if zpath.is_file():
        return _Source(name, zpath, "zip")
    dpath = folder / name
    if dpath.is_dir():
        nested = dpath / name  # extracted one level too deep
        if nested.is_dir() and len(list(dpath.iterdir())) == 1:
            dpath = nested
        return _Source(name, dpath, "dir")
    return None


def _find_folder(root: Union[str, os.PathLike, None]) -> Path:
    data_root = resolve_data_root(root)
    if data_root is None:
        raise DataNotFoundError(
            "Omniglot: no data root given. Pass root=<folder> (--data-root) or set "
            "MMNET_DATA_ROOT to the folder that holds omniglot/ with images_background.zip and "
            f"images_evaluation.zip (get them from {URLS[BACKGROUND]} and {URLS[EVALUATION]})."
        )
    sub = data_root / "omniglot"
    if sub.is_dir():
        return sub
    own = [data_root / f"{a}{ext}" for a in ARCHIVES for ext in (".zip", "")] + [data_root / "splits"]
    if data_root.name.lower() == "omniglot" or any(p.exists() for p in own):
        return data_root
    return sub


def _missing_message(folder: Path, missing: Sequence[str]) -> str:
    paths = ", ".join(f"{folder / (m + '.zip')} (or the extracted folder {folder / m}/)" for m in missing)
    urls = " and ".join(URLS[m] for m in missing)
    return (
        f"Omniglot not found: missing {paths}. Download {urls}, place the zip files in "
        f"{folder}/ (no need to extract them), or set MMNET_DATA_ROOT / --data-root to the "
        "folder that holds omniglot/."
    )


# ---------------------------------------------------------------------------- decoding
def _list_zip(source: _Source) -> Tuple[List[Tuple[str, str]], zipfile.ZipFile]:
    try:
        zf = zipfile.ZipFile(source.path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataCorruptError(
            f"{source.label}: not a readable zip archive ({exc}); download it again from "
            f"{URLS.get(source.name, 'the official site')}"
        ) from None
    entries = []
    for info in zf.infolist():
        check_member_name(info.filename, source.label)
        if info.is_dir():
            continue
        entries.append((info.filename, info.filename))
    return entries, zf


def _list_dir(source: _Source) -> List[Tuple[str, str]]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(source.path):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            entries.append((p.relative_to(source.path).as_posix(), str(p)))
    return entries


def _strip_prefix(rel: str, prefix: str) -> str:
    return rel[len(prefix) + 1 :] if rel.startswith(prefix + "/") else rel


def _clean_error(exc: BaseException) -> str:
    msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _decode_png(data: bytes, image_size: int, expected_size: Optional[int]) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "PNG":
            raise ValueError(f"it is {im.format or 'an unknown format'}, not PNG")
        im.load()
        if expected_size is not None and im.size != (expected_size, expected_size):
            raise ValueError(f"it is {im.size[0]}x{im.size[1]}, expected {expected_size}x{expected_size}")
        grey = im.convert("L")  # ink 0, background 255
    if grey.size != (image_size, image_size):
        grey = grey.resize((image_size, image_size), Image.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)  # ink bright


def _problems_error(label: str, problems: List[str], hint: str) -> DataCorruptError:
    shown = problems[:_MAX_LISTED]
    more = f"; ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return DataCorruptError(f"{label}: " + "; ".join(shown) + more + f". {hint}")


def decode_omniglot_archive(
    path: Union[str, os.PathLike],
    image_size: int = 28,
    expected_alphabets: Optional[int] = None,
    expected_characters: Optional[int] = None,
    images_per_character: int = IMAGES_PER_CHARACTER,
    expected_source_size: Optional[int] = SOURCE_SIZE,
) -> Tuple[List[str], np.ndarray]:
    """Validate and decode one Omniglot collection (a zip archive or an extracted folder).

    The layout is ``[<name>/]<Alphabet>/<characterNN>/<id>_<drawer>.png``, ``<name>`` being
    the archive's stem (``images_background``). Member names are checked first (unsafe
    names are refused), then the counts (cheap, from the names), then every PNG is decoded.

    Args:
        path: ``images_background.zip`` (or ``images_evaluation.zip``) or the extracted folder.
        image_size: side of the decoded images (PIL ``LANCZOS`` resize of the grey image).
        expected_alphabets: alphabets the collection must hold (``None``: any).
        expected_characters: characters the collection must hold (``None``: any).
        images_per_character: images each character must have.
        expected_source_size: side every PNG must have (``None``: any).

    Returns:
        ``(characters, images)``: ``"Alphabet/characterNN"`` names in sorted order, and
        ``uint8`` images ``[len(characters) * images_per_character, 1, S, S]``, character
        after character (images sorted by file name), ink 255 on background 0.

    Raises:
        ValueError: for an unsafe member name (``..`` or absolute), naming the member.
        DataCorruptError: for wrong counts, misplaced files or images that do not decode;
            the message names the archive and the files.
        DataNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    stem = path.name[: -len(".zip")] if path.name.endswith(".zip") else path.name
    if path.is_file():
        source = _Source(stem, path, "zip")
    elif path.is_dir():
        source = _Source(stem, path, "dir")
    else:
        raise DataNotFoundError(f"{path} does not exist")
    zf: Optional[zipfile.ZipFile] = None
    try:
        if source.kind == "zip":
            entries, zf = _list_zip(source)
        else:
            entries = _list_dir(source)
        chars: Dict[str, List[Tuple[str, str]]] = {}
        problems: List[str] = []
        for rel, ref in entries:
            inner = _strip_prefix(rel, stem)
            parts = inner.split("/")
            if not inner.lower().endswith(".png"):
                continue  # stray files (.DS_Store, LICENSE) are not Omniglot images
            if len(parts) != 3:
                problems.append(f"unexpected file {rel} (expected <Alphabet>/<characterNN>/<image>.png)")
                continue
            chars.setdefault(f"{parts[0]}/{parts[1]}", []).append((parts[2], ref))
        names = sorted(chars)
        alphabets = sorted({n.split("/")[0] for n in names})
        if expected_alphabets is not None and len(alphabets) != expected_alphabets:
            problems.append(f"{len(alphabets)} alphabets, expected {expected_alphabets}")
        if expected_characters is not None and len(names) != expected_characters:
            problems.append(f"{len(names)} characters, expected {expected_characters}")
        for n in names:
            if len(chars[n]) != images_per_character:
                problems.append(f"character {n} has {len(chars[n])} images, expected {images_per_character}")
        if not names:
            problems.append("no character images found")
        hint = (
            f"The data is incomplete or damaged: download it again from {URLS.get(stem, 'the official Omniglot site')}."
        )
        if problems:
            raise _problems_error(source.label, problems, hint)

        images = np.empty((len(names) * images_per_character, 1, image_size, image_size), dtype=np.uint8)
        bad: List[str] = []
        i = 0
        for n in names:
            for fname, ref in sorted(chars[n]):
                try:
                    if zf is not None:
                        data = zf.read(ref)
                    else:
                        with open(ref, "rb") as f:
                            data = f.read()
                    images[i, 0] = _decode_png(data, image_size, expected_source_size)
                except Exception as exc:  # any decoder failure is reported, never half used
                    bad.append(f"{n}/{fname} does not decode as PNG ({_clean_error(exc)})")
                i += 1
        if bad:
            raise _problems_error(source.label, bad, hint)
        return names, images
    finally:
        if zf is not None:
            zf.close()


# ---------------------------------------------------------------------------- store
class OmniglotImages(NamedTuple):
    """All decoded Omniglot characters of both collections.

    Attributes:
        characters: ``"Alphabet/characterNN"`` per character (background, then evaluation).
        collection: index into :data:`ARCHIVES` per character.
        images: ``uint8`` ``[n_characters * 20, 1, S, S]``, ink 255.
        cache_file: the cache file read or written (``None`` if it could not be written).
    """

    characters: List[str]
    collection: np.ndarray
    images: torch.Tensor
    cache_file: Optional[Path]


def _cache_key(sources: Sequence[_Source], image_size: int) -> str:
    h = hashlib.sha256()
    h.update(
        f"omniglot|format{_cache.CACHE_FORMAT}|{image_size}|{RESAMPLE}|{IMAGES_PER_CHARACTER}|"
        f"{sorted(EXPECTED_COUNTS.items())}|{SOURCE_SIZE}".encode()
    )
    for s in sources:
        h.update(f"|{s.name}|{s.fingerprint()}".encode())
    return h.hexdigest()


def _load_store(
    folder: Path, sources: Sequence[_Source], image_size: int, cache_dir: Union[str, os.PathLike, None]
) -> OmniglotImages:
    key = _cache_key(sources, image_size)
    cache_file = _cache.default_cache_dir(cache_dir) / f"omniglot-{image_size}px-{key[:24]}.npz"
    arrays = _cache.load_arrays(cache_file, ("images", "characters", "collection", "key"))
    if arrays is not None:
        imgs, chars, coll = arrays["images"], arrays["characters"], arrays["collection"]
        expected_shape = (len(chars) * IMAGES_PER_CHARACTER, 1, image_size, image_size)
        if str(arrays["key"]) != key:
            _cache.discard(cache_file, "its key does not match the source files")
        elif imgs.dtype != np.uint8 or imgs.shape != expected_shape or coll.shape != (len(chars),):
            _cache.discard(cache_file, f"images are {imgs.dtype} {imgs.shape}, expected uint8 {expected_shape}")
        else:
            return OmniglotImages(
                [str(c) for c in chars.tolist()], coll.astype(np.int64), torch.from_numpy(imgs), cache_file
            )

    all_chars: List[str] = []
    parts: List[np.ndarray] = []
    coll_ids: List[int] = []
    for idx, s in enumerate(sources):
        n_alpha, n_char = EXPECTED_COUNTS.get(s.name, (None, None))
        chars, imgs = decode_omniglot_archive(
            s.path,
            image_size,
            expected_alphabets=n_alpha,
            expected_characters=n_char,
        )
        all_chars += chars
        parts.append(imgs)
        coll_ids += [idx] * len(chars)
    images = np.concatenate(parts) if len(parts) > 1 else parts[0]
    collection = np.asarray(coll_ids, dtype=np.int64)
    if len(set(all_chars)) != len(all_chars):
        counts: Dict[str, int] = {}
        for c in all_chars:
            counts[c] = counts.get(c, 0) + 1
        twice = sorted(c for c, n in counts.items() if n > 1)
        raise DataCorruptError(
            f"{folder}: characters {', '.join(twice[:5])} appear in both collections; "
            "images_background and images_evaluation must hold different alphabets"
        )
    try:
        _cache.save_arrays(
            cache_file,
            {
                "images": images,
                "characters": np.asarray(all_chars, dtype=str),
                "collection": collection,
                "key": np.asarray(key),
            },
        )
        written: Optional[Path] = cache_file
    except OSError as exc:
        warnings.warn(
            f"could not write the Omniglot cache {cache_file} ({exc}); the next load "
            "decodes the archives again (set MMNET_CACHE_DIR to a writable folder)",
            _cache.CacheWarning,
            stacklevel=3,
        )
        written = None
    return OmniglotImages(all_chars, collection, torch.from_numpy(images), written)


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or int(image_size) < 1:
        raise ValueError(f"image_size must be a positive integer (28 is the usual Omniglot size); got {image_size!r}")
    return int(image_size)


def _locate_all(root: Union[str, os.PathLike, None]) -> Tuple[Path, List[_Source]]:
    folder = _find_folder(root)
    found = {name: _locate_source(folder, name) for name in ARCHIVES}
    missing = [n for n, s in found.items() if s is None]
    if missing:
        raise DataNotFoundError(_missing_message(folder, missing))
    return folder, [found[n] for n in ARCHIVES]  # type: ignore[misc]


def load_omniglot_images(
    root: Union[str, os.PathLike, None] = None,
    image_size: int = 28,
    cache_dir: Union[str, os.PathLike, None] = None,
) -> OmniglotImages:
    """Decode (or read from the cache) every Omniglot image of both collections.

    Args:
        root: data root holding ``omniglot/``, or the ``omniglot`` folder; default
            ``$MMNET_DATA_ROOT``.
        image_size: side of the images.
        cache_dir: cache folder (see :func:`mmnet_plugin.data.cache.default_cache_dir`).

    Returns:
        An :class:`OmniglotImages`.

    Raises:
        DataNotFoundError: if an archive is missing; the message names the expected paths
            and the download URLs.
        DataCorruptError: if the archives are incomplete or an image does not decode.
        ValueError: for an unsafe archive member name or a bad ``image_size``.
    """
    image_size = _check_image_size(image_size)
    folder, sources = _locate_all(root)
    return _load_store(folder, sources, image_size, cache_dir)


# ---------------------------------------------------------------------------- dataset
class Omniglot(FewShotDataset):
    """One split of Omniglot as an episode source.

    Splits: ``train``, ``val``, ``test``, ``trainval`` are the Vinyals et al. (2016)
    splits with rotations (4112 / 688 / 1692 / 4800 classes of 20 images; each class a
    character rotated 0, 90, 180 or 270 degrees); ``background`` and ``evaluation`` are the
    Lake et al. (2015) split (964 / 659 characters, no rotations).

    Images are ``float32 [1, S, S]`` in ``[0, 1]`` with **bright ink** (1.0) on a black (0.0)
    background, resized from 105x105 with PIL ``LANCZOS``. Class ``rotNNN`` is its base
    character turned NNN degrees counter-clockwise (``torch.rot90(x, NNN // 90, dims=(-2, -1))``).

    Args:
        root: data root holding ``omniglot/`` (or the ``omniglot`` folder itself); default
            ``$MMNET_DATA_ROOT``.
        split: one of :data:`SPLITS`.
        image_size: side of the images (28 in the Vinyals protocol).
        cache_dir: where the decoded images are cached; default ``$MMNET_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/mmnet-plugin`` or ``~/.cache/mmnet-plugin``.
        rotations: degrees (subset of 0, 90, 180, 270) to make classes of. ``None``: the
            split's own (the split file's lines for Vinyals splits, ``(0,)`` for Lake). Given,
            every character of the split becomes one class per listed rotation, and class
            names always end in ``/rotNNN``.

    Attributes:
        targets: ``int64`` class index per item (class after class, 20 items each).
        class_names: ``"Alphabet/characterNN/rotNNN"`` (Lake split without ``rotations``:
            ``"Alphabet/characterNN"``).
        alphabets: the split's alphabets, in order of first appearance.
        class_alphabet: index into :attr:`alphabets` per class.
        class_rotation: degrees per class.
        class_character: ``"Alphabet/characterNN"`` per class.
        cache_file: the decoded-image cache in use.

    Raises:
        ValueError: for an unknown split, bad ``image_size`` or ``rotations``, or an unsafe
            archive member name.
        DataNotFoundError: if the archives or the split file are missing; the message says
            where they were expected and where to get them.
        DataCorruptError: if the archives are incomplete or damaged, or the split file names
            characters that are not in them.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike, None] = None,
        split: str = "train",
        image_size: int = 28,
        cache_dir: Union[str, os.PathLike, None] = None,
        rotations: Optional[Sequence[int]] = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(
                f"unknown Omniglot split {split!r}; choose one of {', '.join(SPLITS)} "
                "(train/val/test/trainval: Vinyals, background/evaluation: Lake)"
            )
        self.split = split
        self.image_size = _check_image_size(image_size)
        rot = self._check_rotations(rotations)
        folder, sources = _locate_all(root)
        self.root = folder
        split_file: Optional[Path] = None
        if split in VINYALS_SPLITS:
            split_file = folder / "splits" / "vinyals" / f"{split}.txt"
            if not split_file.is_file():
                raise DataNotFoundError(
                    f"Omniglot split file {split_file} not found. The Vinyals split files "
                    f"(train/val/test/trainval.txt) come with Prototypical Networks: {SPLITS_URL}; "
                    f"place them in {folder / 'splits' / 'vinyals'}/, or use the Lake split "
                    "(split='background' / 'evaluation')."
                )
        store = _load_store(folder, sources, self.image_size, cache_dir)
        self._images = store.images
        self.cache_file = store.cache_file
        char_index = {c: i for i, c in enumerate(store.characters)}

        classes: List[Tuple[int, int]] = []  # (character index, degrees)
        with_suffix = True
        if split_file is not None:
            listed = self._read_split(split_file, char_index)
            if rot is None:
                classes = listed
            else:
                bases = list(dict.fromkeys(c for c, _ in listed))
                classes = [(c, d) for c in bases for d in rot]
        else:
            coll = ARCHIVES.index(LAKE_SPLITS[split])
            bases = [i for i in range(len(store.characters)) if store.collection[i] == coll]
            with_suffix = rot is not None
            classes = [(c, d) for c in bases for d in (rot or (0,))]

        names = [store.characters[c] for c, _ in classes]
        self.class_character: List[str] = names
        self.class_names: List[str] = [f"{n}/rot{d:03d}" if with_suffix else n for n, (_, d) in zip(names, classes)]
        alpha_of = [n.split("/")[0] for n in names]
        self.alphabets: List[str] = list(dict.fromkeys(alpha_of))
        a_index = {a: i for i, a in enumerate(self.alphabets)}
        self.class_alphabet = np.asarray([a_index[a] for a in alpha_of], dtype=np.int64)
        self.class_rotation = np.asarray([d for _, d in classes], dtype=np.int64)

        per = IMAGES_PER_CHARACTER
        base_chars = np.asarray([c for c, _ in classes], dtype=np.int64)
        self._base_index = (base_chars[:, None] * per + np.arange(per)[None, :]).reshape(-1)
        self._rot_k = np.repeat(self.class_rotation // 90, per).astype(np.int64)
        self.targets = np.repeat(np.arange(len(classes), dtype=np.int64), per)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_rotations(rotations: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
        if rotations is None:
            return None
        try:
            rot = tuple(int(r) for r in rotations)
        except (TypeError, ValueError):
            raise ValueError(f"rotations must be a sequence of degrees from {ROTATIONS}; got {rotations!r}") from None
        bad = [r for r in rot if r not in ROTATIONS]
        if not rot or bad or len(set(rot)) != len(rot):
            raise ValueError(f"rotations must be distinct degrees from {ROTATIONS} (at least one); got {rotations!r}")
        return rot

    @staticmethod
    def _read_split(path: Path, char_index: Dict[str, int]) -> List[Tuple[int, int]]:
        classes: List[Tuple[int, int]] = []
        problems: List[str] = []
        with open(path, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                m = _LINE_RE.match(line)
                if m is None:
                    problems.append(f"line {lineno}: {line!r} is not Alphabet/characterNN/rotNNN")
                    continue
                deg = int(m.group("rot"))
                if deg not in ROTATIONS:
                    problems.append(f"line {lineno}: rotation {deg} is not one of {ROTATIONS}")
                    continue
                if m.group("char") not in char_index:
                    problems.append(f"line {lineno}: {m.group('char')} is not a character of the archives")
                    continue
                classes.append((char_index[m.group("char")], deg))
        if not classes and not problems:
            problems.append("no classes listed")
        if problems:
            raise _problems_error(str(path), problems, f"Get the genuine split files from {SPLITS_URL}.")
        return classes

    # ------------------------------------------------------------------ access
    def load(self, indices: np.ndarray) -> torch.Tensor:
        """Images of ``indices`` as ``float32 [n, 1, S, S]`` in ``[0, 1]``, ink bright.

        Args:
            indices: item indices (``-len(self) <= i < len(self)``).

        Returns:
            The images, rotated as their classes say.

        Raises:
            IndexError: for an index out of range.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self.targets)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = int(idx.min()) if idx.min() < -n else int(idx.max())
            raise IndexError(f"index {bad} out of range for {n} items")
        idx = idx % n if n else idx
        x = self._images[torch.from_numpy(self._base_index[idx])].float().div_(255.0)
        ks = self._rot_k[idx]
        for k in np.unique(ks).tolist():
            if k == 0:
                continue
            sel = torch.from_numpy(np.flatnonzero(ks == k))
            x[sel] = torch.rot90(x[sel], int(k), dims=(-2, -1))
        return x

    def __repr__(self) -> str:
        return (
            f"Omniglot(split={self.split!r}, classes={self.num_classes}, items={len(self)}, "
            f"image_size={self.image_size}, root={str(self.root)!r})"
        )
