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
        train_episodes: the training budget in episodes (for schedules); ``None`` under
            ``--budget-seconds`` without an episode cap.
    """

    dataset: str
    ways: int
    shots: int
    in_channels: int
    image_size: int
    device: torch.device
    train_episodes: Optional[int]


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

    #: recipe name -> :class:`mmnet_plugin.bench.recipes.Recipe` (sources in mmnet_plugin/bench/published.py)
    RECIPES: Dict[str, Any] = {}

    def __init__(self, ctx: MethodContext, recipe: str = "harness", options: Optional[Dict[str, Any]] = None) -> None:
        """
        Args:
            ctx: the job's context.
            recipe: a key of :attr:`RECIPES` (see :mod:`mmnet_plugin.bench.recipes`).
            options: method options from the command line (e.g. ``protonet_train_ways``).

        Raises:
            ValueError: an unknown recipe (the harness checks before it builds anything).
        """
        if self.RECIPES and recipe not in self.RECIPES:
            raise ValueError(
                f"unknown recipe {recipe!r} for method {self.name}; {self.name} knows: {', '.join(self.RECIPES)}"
            )
        self.ctx = ctx
        self.recipe = recipe
        self.options: Dict[str, Any] = dict(options or {})
        self.model: Optional[nn.Module] = None
        #: set by the harness's budget rule; ``None``: the recipe's batch
        self.batch_override: Optional[int] = None

    # ------------------------------------------------------------------ recipe
    def recipe_info(self) -> Dict[str, str]:
        """``{"name", "source", "summary"}`` of the recipe in use."""
        r = self.RECIPES.get(self.recipe)
        return r.to_dict() if r is not None else {"name": self.recipe, "source": "", "summary": ""}

    def display_label(self) -> str:
        """The name on the leaderboard for this recipe (default :attr:`label`)."""
        return self.label

    def recipe_batch(self) -> int:
        """Episodes a step the recipe asks for, before the harness's budget rule."""
        return 1

    def val_choices(self) -> Sequence[Dict[str, Any]]:
        """Test-time settings the recipe chooses on the val split after training (e.g.
        MAML's inner learning rate), first = the default; empty: nothing to choose."""
        return ()

    def set_choice(self, choice: Dict[str, Any]) -> None:
        """Use one of :meth:`val_choices` from now on (at test)."""

    def train_stream_override(self) -> Optional[Dict[str, Any]]:
        """``None`` (the method trains on the shared stream), or the ``ways`` / ``shots`` /
        ``queries`` of its own training stream (same seed), e.g. ProtoNet's 60-way episodes."""
        return None

    # ------------------------------------------------------------------ availability
    @classmethod
    def check_available(cls) -> None:
        """Import the optional libraries.

        Raises:
            MethodUnavailable: naming the missing library and its install command.
        """
        from ..meters import quiet_import

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
        """How many episodes of the stream one :meth:`train_step` consumes: the budget rule's
        batch when the harness set one, else :meth:`recipe_batch`."""
        return int(self.batch_override) if self.batch_override else self.recipe_batch()

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


def conv4_backbone(ctx: MethodContext, bias: bool = False) -> Tuple[nn.Module, int]:
    """The shared Conv-4 backbone for this context and its embedding size ``Dz``
    (``bias``: convolution biases, as in Finn et al.'s network)."""
    from mmnet_plugin.models import Conv4, embedding_dim

    return (
        Conv4(in_channels=ctx.in_channels, hidden=64, bias=bias),
        embedding_dim(ctx.in_channels, ctx.image_size, 64),
    )


def halving_scheduler(optimizer: torch.optim.Optimizer, every: int) -> torch.optim.lr_scheduler.StepLR:
    """Halve the learning rate every ``every`` steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(every)), gamma=0.5)
