"""The uniform method API of the benchmark harness.

A method says how the harness trains and tests it, and nothing else: the harness owns the
episodes (one seeded training stream per setting, consumed in order), the clock, the
memory meter, the progress bars and the results. A method

- names what it needs (:attr:`Method.requires`); a missing library raises
  :class:`MethodUnavailable` with the install command, and only that method fails;
- builds its model (:meth:`Method.build`; the harness calls it under a forked, seeded torch
  RNG, so every method starts from deterministic weights without touching global state);
- takes one optimisation step on a batch of :attr:`Method.episodes_per_step` episodes
  (:meth:`Method.train_step`); the harness cuts the shared stream into such batches, so
  every method sees exactly the same episodes in the same order, each in its own batch size;
- returns a scorer ``(support_x, support_y, query_x) -> class scores [n_query, n_way]`` for
  the test episodes (:meth:`Method.predictor`; the prediction is the argmax, as
  :func:`mmnet_plugin.evaluate` takes it).

Every method uses the same Conv-4 backbone definition, :class:`mmnet_plugin.models.Conv4`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from mmnet_plugin.episodes import Episode

__all__ = ["Method", "MethodContext", "MethodUnavailable", "Predictor", "conv4_backbone", "count_parameters"]

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class MethodUnavailable(RuntimeError):
    """A method cannot run here (a missing optional library); the message says how to fix it."""


@dataclass(frozen=True)
class MethodContext:
    """What a method is told about the job.

    Attributes:
        dataset: ``glyphs``, ``omniglot`` or ``miniimagenet`` (hyperparameters follow it).
        ways: C of the setting (for ``mmnet-mixed``: the largest C it trains on).
        shots: k of the setting (for ``mmnet-mixed``: the largest k).
        in_channels: image channels.
        image_size: square image side.
        device: where to train and test.
        train_episodes: the training budget in episodes (for schedules).
    """

    dataset: str
    ways: int
    shots: int
    in_channels: int
    image_size: int
    device: torch.device
    train_episodes: int


class Method:
    """Base class; see the module docstring. Subclasses set the class attributes and
    implement :meth:`build`, :meth:`train_step` and :meth:`predictor`."""

    #: command-line name
    name: str = ""
    #: name on the leaderboard
    label: str = ""
    #: one line for the leaderboard's notes (what is run, batch norm at test, sources)
    notes: str = ""
    #: (import name, install command) of the optional libraries the method needs
    requires: Tuple[Tuple[str, str], ...] = ()
    #: False for a method that trains on its own stream by design (``mmnet-mixed``)
    shared_stream: bool = True
    #: True for a method trained once and tested on every setting (``mmnet-mixed``)
    trained_once: bool = False

    def __init__(self, ctx: MethodContext) -> None:
        self.ctx = ctx
        self.model: Optional[nn.Module] = None

    # ------------------------------------------------------------------ availability
    @classmethod
    def check_available(cls) -> None:
        """Import the optional libraries.

        Raises:
            MethodUnavailable: naming the missing library and its install command.
        """
        from benchmarks.common import quiet_import

        for module, install in cls.requires:
            try:
                with quiet_import():
                    importlib.import_module(module)
            except ImportError as exc:
                raise MethodUnavailable(
                    f"method {cls.name!r} needs {module}, which is not installed or does not import "
                    f"({exc}); install it with: {install}"
                ) from None

    # ------------------------------------------------------------------ description
    def hyperparameters(self) -> Dict[str, Any]:
        """Everything that decides the method's result besides the episodes (plain types;
        part of the resume key)."""
        return {}

    @property
    def episodes_per_step(self) -> int:
        """How many episodes of the shared stream one :meth:`train_step` consumes."""
        return 1

    # ------------------------------------------------------------------ work
    def build(self) -> None:
        """Create the model and optimiser on ``ctx.device``."""
        raise NotImplementedError

    def train_step(self, batch: Sequence[Episode]) -> float:
        """One optimisation step on ``batch`` (episodes already on the device); the loss."""
        raise NotImplementedError

    def predictor(self) -> Predictor:
        """A function ``(support_x, support_y, query_x) -> class scores [n_query, n_way]``
        for one test episode (called under ``torch.no_grad``; the argmax is the prediction)."""
        raise NotImplementedError

    def parameters(self) -> int:
        """Trainable parameters of the model."""
        return count_parameters(self.model) if self.model is not None else 0

    def state_dict(self) -> Dict[str, Any]:
        """What a trained-once method saves so a resumed run skips its training."""
        assert self.model is not None
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        assert self.model is not None
        self.model.load_state_dict(state["model"])


def count_parameters(module: Optional[nn.Module]) -> int:
    """Trainable parameters of ``module``."""
    if module is None:
        return 0
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def conv4_backbone(ctx: MethodContext) -> Tuple[nn.Module, int]:
    """The shared Conv-4 backbone for this context and its embedding size ``Dz``."""
    from mmnet_plugin.models import Conv4, embedding_dim

    return Conv4(in_channels=ctx.in_channels, hidden=64), embedding_dim(ctx.in_channels, ctx.image_size, 64)


def halving_scheduler(optimizer: torch.optim.Optimizer, every: int) -> torch.optim.lr_scheduler.StepLR:
    """Halve the learning rate every ``every`` steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(every)), gamma=0.5)
