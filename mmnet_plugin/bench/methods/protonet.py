"""Prototypical Networks (Snell, Swersky and Zemel, NIPS 2017) through easyfsl's
``PrototypicalNetworks`` over the shared Conv-4 backbone.

Training as easyfsl trains it: one episode a step, cross entropy on the negative Euclidean
distances to the class prototypes; Adam with learning rate 1e-3 halved every 2,000
episodes (Snell et al., section 3.2). Snell trained Omniglot with 60-way episodes; here every
method shares the same training stream (the test setting's C and k, 15 queries per class).
Batch norm uses running statistics at test (``model.eval()``).

Recipes (``--recipe``): ``published`` follows Snell et al. (sections 2.2 and 3.1): 5 query
points per class in training (the first 5 of each class in the shared stream's 15, so the
stream stays the one every method sees), Adam 1e-3 halved every 2,000 episodes, and
training episodes of ``--protonet-train-ways`` classes when given (Snell used 60 on
Omniglot; that is a stream of its own, same seed, with 5 queries). ``harness`` is the
recipe before issue 12: every query of the shared stream.

easyfsl is imported only when this method runs.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from mmnet_plugin.episodes import Episode

from ..recipes import Recipe
from .base import Method, Predictor, conv4_backbone, halving_scheduler

__all__ = ["ProtoNetMethod", "first_queries"]

#: Snell et al.'s training queries per class
SNELL_TRAIN_QUERIES = 5


def first_queries(episode: Episode, per_class: int) -> Episode:
    """``episode`` with only the first ``per_class`` query images of each class (in the
    episode's query order); the episode itself when it has no more than that."""
    qy = episode.query_y
    counts = torch.bincount(qy)
    if int(counts.max()) <= per_class:
        return episode
    rank = torch.zeros_like(qy)
    for c in range(int(counts.numel())):
        where = (qy == c).nonzero(as_tuple=True)[0]
        rank[where] = torch.arange(where.numel(), device=qy.device)
    keep = (rank < per_class).nonzero(as_tuple=True)[0]
    return Episode(
        support_x=episode.support_x,
        support_y=episode.support_y,
        query_x=episode.query_x[keep],
        query_y=qy[keep],
        class_ids=episode.class_ids,
    )


_RECIPES = {
    "published": Recipe(
        "published",
        "snell2017",
        "Snell et al.: Euclidean prototypes, 5 training queries per class, Adam 1e-3 halved every "
        "2,000 episodes, training way --protonet-train-ways (Snell: 60; default the setting's).",
    ),
    "harness": Recipe(
        "harness",
        "snell2017",
        "as published but with the shared stream's 15 training queries per class (before issue 12).",
    ),
}


class ProtoNetMethod(Method):
    name = "protonet"
    label = "ProtoNet (easyfsl)"
    notes = "easyfsl PrototypicalNetworks (Euclidean), 1 episode a step; running batch-norm statistics at test."
    requires = (("easyfsl", "pip install easyfsl"),)
    lr = 1e-3
    lr_halve_every_episodes = 2000
    RECIPES = _RECIPES

    def _train_queries(self) -> Optional[int]:
        """Training queries per class the recipe uses (``None``: all the stream has)."""
        return SNELL_TRAIN_QUERIES if self.recipe == "published" else None

    def _train_ways(self) -> Optional[int]:
        ways = self.options.get("protonet_train_ways")
        return int(ways) if (self.recipe == "published" and ways and int(ways) != self.ctx.ways) else None

    def train_stream_override(self) -> Optional[Dict[str, Any]]:
        ways = self._train_ways()
        if ways is None:
            return None
        return {"ways": ways, "queries": SNELL_TRAIN_QUERIES}

    def hyperparameters(self) -> Dict[str, Any]:
        return {
            "recipe": self.recipe,
            "optimizer": "Adam",
            "lr": self.lr,
            "lr_halve_every_steps": self.lr_halve_every_episodes,
            "recipe_batch_episodes": 1,
            "loss": self._loss_name(),
            "train_queries_per_class": self._train_queries() or "all",
            "train_ways": self._train_ways() or "setting",
        }

    def _loss_name(self) -> str:
        return "cross_entropy(-euclidean distance)"

    def _make_model(self, backbone: torch.nn.Module, dz: int) -> torch.nn.Module:
        from easyfsl.methods import PrototypicalNetworks

        return PrototypicalNetworks(backbone)

    def _loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(scores, labels)

    def build(self) -> None:
        backbone, dz = conv4_backbone(self.ctx)
        self.model = self._make_model(backbone, dz).to(self.ctx.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.scheduler = halving_scheduler(self.optimizer, self.lr_halve_every_episodes)

    def train_step(self, batch: Sequence[Episode]) -> float:
        model = self.model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        q = self._train_queries()
        for ep in batch:
            if q is not None:
                ep = first_queries(ep, q)
            model.process_support_set(ep.support_x, ep.support_y)
            loss = self._loss(model(ep.query_x), ep.query_y) / len(batch)
            loss.backward()
            total += float(loss.detach())
        self.optimizer.step()
        self.scheduler.step()
        return total

    def predictor(self) -> Predictor:
        model = self.model
        model.eval()

        def predict(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
            model.process_support_set(sx, sy)
            return model(qx)

        return predict
