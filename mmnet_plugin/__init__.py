"""mmnet-plugin: Memory Matching Networks (Cai et al., CVPR 2018) for few-shot learning.

The public surface:

- :class:`MMNet`, the model (needs only torch);
- :class:`Episode`, the episode contract every adapter produces, and
  :class:`EpisodeSampler`, the seeded sampler with episode fingerprints;
- :func:`load_dataset` (``glyphs``, ``omniglot``, ``miniimagenet``);
- :class:`Trainer` / :class:`TrainConfig` and :func:`evaluate` (several processes under
  ``torchrun``: give them the context of :func:`init_distributed`, from
  :mod:`mmnet_plugin.distributed`).

Framework adapters live in :mod:`mmnet_plugin.integrations` and the benchmark harness in
:mod:`mmnet_plugin.bench` (``mmnet bench``); both are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .episodes import Episode, EpisodeSampler, fingerprint_episodes, parse_range

if TYPE_CHECKING:  # what editors and type checkers see; at run time these load on first use (_LAZY)
    from .data import load_dataset
    from .distributed import init_distributed
    from .evaluation import EvaluationResult, evaluate
    from .models import MMNet
    from .training import TrainConfig, Trainer

__version__ = "0.2.0"

__all__ = [
    "Episode",
    "EpisodeSampler",
    "EvaluationResult",
    "MMNet",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "fingerprint_episodes",
    "init_distributed",
    "load_dataset",
    "parse_range",
    "__version__",
]

_LAZY = {
    "MMNet": ("models", "MMNet"),
    "Trainer": ("training", "Trainer"),
    "TrainConfig": ("training", "TrainConfig"),
    "evaluate": ("evaluation", "evaluate"),
    "EvaluationResult": ("evaluation", "EvaluationResult"),
    "load_dataset": ("data", "load_dataset"),
    "init_distributed": ("distributed", "init_distributed"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmnet_plugin' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
