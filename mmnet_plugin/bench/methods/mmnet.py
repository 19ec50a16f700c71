"""MM-Net, trained per setting on the shared training stream.

The model is :class:`mmnet_plugin.MMNet` with its defaults (see its docstring; the
leaderboard records them). Training follows the paper (section 4.2) and
:class:`mmnet_plugin.TrainConfig`'s defaults: Adam, learning rate 1e-3 halved every 20,000
steps, 16 episodes a step on Omniglot (and ``glyphs``), 4 on miniImageNet. The loss is
``MMNet.loss`` (Eq. 8). Batch norm: batch statistics in training, running statistics at
test (``model.eval()``), so test episodes are scored independently of each other's queries.

Small budgets: the paper's 16 episodes a step would leave a 160-episode budget 10
optimiser steps, after which batch norm's running statistics (momentum 0.1) are still mostly
their initial values and the model scores near chance at test in ``eval()`` mode (measured:
23% on the bare ``glyphs`` run, against 61% with batch statistics). So a step takes
``min(16, budget // 200)`` episodes (at least 1): every budget gets at least 200 steps when
it has 200 episodes, and from 3,200 episodes on the paper's batch is used unchanged. The
leaderboard records the batch size used.

The harness owns the loop (rather than :class:`mmnet_plugin.Trainer`) so that every method
is cut from the same stream, timed the same way, and a budget that is not a multiple of 16
ends with one shorter batch instead of an error.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

from mmnet_plugin.episodes import Episode

from ..recipes import Recipe
from .base import Method, Predictor, halving_scheduler

__all__ = ["MMNetMethod", "paper_batch_episodes", "MIN_STEPS"]

_RECIPES = {
    "published": Recipe(
        "published",
        "cai2018",
        "Cai et al. section 4.2: Adam, learning rate 1e-3 halved every 20,000 steps, 16 episodes "
        "a step (4 on miniImageNet), the loss of Eq. 8; MMNet's defaults; the batch is shrunk by "
        "the harness's budget rule like every method's.",
    ),
    "harness": Recipe(
        "harness",
        "cai2018",
        "as published, with the harness's rule before issue 12: min(16, budget // 200) episodes a step (MM-Net only).",
    ),
}

MIN_STEPS = 200


def paper_batch_episodes(dataset: str) -> int:
    """Episodes per step in the paper: 4 on miniImageNet, 16 on Omniglot (and glyphs)."""
    return 4 if dataset == "miniimagenet" else 16


class MMNetMethod(Method):
    name = "mmnet"
    label = "MM-Net"
    notes = (
        "mmnet_plugin.MMNet trained per setting on the shared stream (the paper's MM-Net-, "
        "no mixed strategy); batch norm uses running statistics at test."
    )

    RECIPES = _RECIPES

    def _train_config(self) -> Dict[str, Any]:
        from mmnet_plugin.training import TrainConfig

        defaults = TrainConfig()
        return {
            "lr": defaults.lr,
            "lr_halve_every_steps": defaults.lr_halve_every,
            "weight_decay": defaults.weight_decay,
        }

    def _model_options(self) -> Dict[str, Any]:
        return {"in_channels": self.ctx.in_channels, "image_size": self.ctx.image_size}

    def hyperparameters(self) -> Dict[str, Any]:
        from mmnet_plugin.models import MMNet

        probe = MMNet(**self._model_options())
        return {
            "recipe": self.recipe,
            "recipe_batch_episodes": self.recipe_batch(),
            "optimizer": "Adam",
            **self._train_config(),
            "model": probe.extra_repr(),
        }

    def recipe_batch(self) -> int:
        """``published``: the paper's batch. ``harness``: the paper's batch, shrunk so the
        budget gives at least ``MIN_STEPS`` steps (the paper's batch without an episode budget)."""
        paper = paper_batch_episodes(self.ctx.dataset)
        if self.recipe == "harness" and self.ctx.train_episodes is not None:
            return max(1, min(paper, self.ctx.train_episodes // MIN_STEPS))
        return paper

    def build(self) -> None:
        from mmnet_plugin.models import MMNet

        cfg = self._train_config()
        self.model = MMNet(**self._model_options()).to(self.ctx.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.scheduler = halving_scheduler(self.optimizer, cfg["lr_halve_every_steps"])

    def train_step(self, batch: Sequence[Episode]) -> float:
        model = self.model
        model.train()
        loss, _ = model.loss_and_accuracy(list(batch))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"MM-Net loss became {float(loss.detach())}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def predictor(self) -> Predictor:
        model = self.model
        model.eval()
        return model  # forward gives class scores whose argmax is model.predict
