"""Shared fixtures: the real data root, a per-session cache folder, the Omniglot cache.

Real data: ``$MMNET_DATA_ROOT``, else ``../shared/datasets`` beside the repository. Tests
that need it skip with a reason when it is absent, or fail when ``MMNET_REQUIRE_DATA=1``
(CI, where the data must be there). Decoded-data caches go to a temporary folder of the
session, never to ``~/.cache`` or beside the data: ``MMNET_CACHE_DIR`` points there for the
whole session.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]


def _candidate_data_root() -> Path:
    env = os.environ.get("MMNET_DATA_ROOT", "")
    if env:
        # absolute, so subprocesses that run elsewhere (the examples) find it too
        return Path(env).expanduser().resolve()
    return REPO.parent / "shared" / "datasets"


def need_data(reason: str) -> NoReturn:
    """Skip (or, with ``MMNET_REQUIRE_DATA=1``, fail) a test whose real data is missing."""
    if os.environ.get("MMNET_REQUIRE_DATA", "") == "1":
        pytest.fail(f"{reason} (MMNET_REQUIRE_DATA=1 requires the real data)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root (a folder holding ``omniglot/`` and ``miniimagenet/``)."""
    root = _candidate_data_root()
    if not root.is_dir():
        need_data(
            f"real data not found at {root}: set MMNET_DATA_ROOT to the folder holding omniglot/ and miniimagenet/"
        )
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the whole session (temporary)."""
    return tmp_path_factory.mktemp("mmnet-cache")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_env(cache_dir: Path) -> Iterator[None]:
    """Point ``MMNET_CACHE_DIR`` at the session's cache folder so no test writes to ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMNET_CACHE_DIR", str(cache_dir))
        yield


@pytest.fixture(scope="session")
def omniglot_root(data_root: Path) -> Path:
    """The real ``omniglot/`` folder (skips when its archives are absent)."""
    folder = data_root / "omniglot"
    missing = [
        n
        for n in ("images_background", "images_evaluation")
        if not (folder / f"{n}.zip").is_file() and not (folder / n).is_dir()
    ]
    if missing:
        need_data(f"Omniglot not found in {folder} (missing {', '.join(missing)})")
    return folder


@pytest.fixture(scope="session")
def omniglot_cache(omniglot_root: Path, cache_dir: Path) -> SimpleNamespace:
    """Decode real Omniglot once per session into ``cache_dir`` (28x28).

    Returns:
        ``root`` (the data root), ``cache_dir``, and ``store`` (the freshly decoded
        :class:`~mmnet_plugin.data.omniglot.OmniglotImages`).
    """
    from mmnet_plugin.data.omniglot import load_omniglot_images

    store = load_omniglot_images(omniglot_root.parent, image_size=28, cache_dir=cache_dir)
    return SimpleNamespace(root=omniglot_root.parent, cache_dir=cache_dir, store=store)


@pytest.fixture(scope="session")
def omniglot_splits(omniglot_cache: SimpleNamespace) -> dict:
    """Real Omniglot datasets by split name, built lazily from the session cache."""
    from mmnet_plugin.data.omniglot import Omniglot

    class _Splits(dict):
        def __missing__(self, split: str) -> Omniglot:
            ds = Omniglot(root=omniglot_cache.root, split=split, cache_dir=omniglot_cache.cache_dir)
            self[split] = ds
            return ds

    return _Splits()


@pytest.fixture(scope="session")
def require_data() -> Callable[[str], NoReturn]:
    """``require_data(reason)``: skip, or fail under ``MMNET_REQUIRE_DATA=1``, for missing data."""
    return need_data
