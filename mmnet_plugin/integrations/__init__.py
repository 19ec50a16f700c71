"""Adapters between few-shot frameworks and the :class:`~mmnet_plugin.episodes.Episode` contract.

One module per framework, each imported only when you import it:

- :mod:`mmnet_plugin.integrations.learn2learn`: ``TaskDataset`` / ``Taskset`` output
  (``(data, labels)``) to an ``Episode``; a taskset as a stream of episodes.
- :mod:`mmnet_plugin.integrations.torchmeta`: a ``BatchMetaDataLoader`` batch to a list of
  episodes; :func:`~mmnet_plugin.integrations.torchmeta.patch_torchmeta`, the compatibility
  step that makes torchmeta 1.8.0 work on current torch and torchvision.
- :mod:`mmnet_plugin.integrations.easyfsl`: the 5-tuple of easyfsl's ``TaskSampler`` to an
  ``Episode``, and ``MMNet`` as an easyfsl ``FewShotClassifier``.

Importing this package (or ``mmnet_plugin``) never imports a framework. The pure converters
take tensors and need no framework; what cannot work without one (a framework class, the
torchmeta patch) raises :class:`ImportError` naming the exact install command.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Dict

__all__ = ["INSTALL_HINTS", "FRAMEWORKS"]

#: The import name of each supported framework.
FRAMEWORKS = ("learn2learn", "torchmeta", "easyfsl")


def _learn2learn_hint() -> str:
    # learn2learn 0.2.0 is an sdist whose shipped C files predate Python 3.11: a plain
    # `pip install learn2learn` (or an extra naming it) fails to build there, so say what works.
    if sys.version_info >= (3, 11):
        return (
            "pip install cython setuptools wheel numpy && pip install --no-build-isolation --use-pep517 "
            "-C--build-option=build_ext learn2learn==0.2.0 (on Python 3.11+ learn2learn 0.2.0 builds only "
            "this way; then pip install 'numpy>=2' if pip downgraded numpy for qpth)"
        )
    return "pip install learn2learn==0.2.0"


#: How to install each framework next to mmnet-plugin (the commands the test environment uses).
INSTALL_HINTS: Dict[str, str] = {
    "learn2learn": _learn2learn_hint(),
    "torchmeta": (
        "pip install h5py ordered-set requests tqdm && pip install --no-deps torchmeta==1.8.0 "
        "(torchmeta 1.8.0 pins torch<1.10, so install it without its pins; then call "
        "mmnet_plugin.integrations.torchmeta.patch_torchmeta() before using it)"
    ),
    "easyfsl": "pip install 'mmnet-plugin[easyfsl]' (or: pip install easyfsl)",
}


def require(name: str, install_hint: str | None = None) -> ModuleType:
    """Import a framework, or say exactly how to install it.

    Args:
        name: the module to import (``learn2learn``, ``torchmeta``, ``easyfsl`` or a
            submodule of one).
        install_hint: the install command to show; default: :data:`INSTALL_HINTS` for the
            top-level package.

    Returns:
        The imported module.

    Raises:
        ImportError: if the module cannot be imported; the message names the package and
            the install command, and chains the original error.
    """
    top = name.split(".", 1)[0]
    hint = install_hint or INSTALL_HINTS.get(top, f"pip install {top}")
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"this mmnet_plugin adapter needs the {top!r} package, which is not importable "
            f"({exc}). Install it with: {hint}"
        ) from exc


_require = require  # the name before 0.2.0
