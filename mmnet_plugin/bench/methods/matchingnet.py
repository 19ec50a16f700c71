"""Matching Networks (Vinyals et al., NIPS 2016) through easyfsl's ``MatchingNetworks``:
the full-context-embedding variant (a bidirectional LSTM over the support set, an
attention LSTM over the queries) with cosine similarity, over the shared Conv-4 backbone.

easyfsl's ``MatchingNetworks`` returns log-probabilities, so the loss is the negative log
likelihood (as easyfsl documents). Training as :mod:`.protonet`: one episode a step, Adam
with learning rate 1e-3 halved every 2,000 episodes. Batch norm uses running statistics at
test (``model.eval()``). Vinyals et al.'s Omniglot numbers are without FCE; their
miniImageNet numbers (and the MM-Net paper's MN-FCE row) are with it.

Recipes (``--recipe``): ``published`` is the variant of the published row for the data set:
without FCE on Omniglot (and ``glyphs``; Vinyals et al.'s Omniglot row), with FCE on
miniImageNet; ``fce`` and ``nofce`` pick one explicitly; ``harness`` is FCE as before issue
12. All train one episode a step with Adam 1e-3 halved every 2,000 episodes (Vinyals et al.
do not state their optimiser; this is Snell et al.'s, the same as ProtoNet's). Without
FCE the model is :class:`PlainMatchingNetworks`: softmax over the query embedding's dot
products with the L2-normalised support embeddings (the cosine up to the query's norm, as
easyfsl and the original code keep it), summed per class, log-probabilities.

easyfsl is imported only when this method runs (FCE).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..recipes import Recipe
from .protonet import ProtoNetMethod

__all__ = ["MatchingNetMethod", "PlainMatchingNetworks"]

_RECIPES = {
    "published": Recipe(
        "published",
        "vinyals2016",
        "Vinyals et al.'s published variant for the data set: no FCE on Omniglot (their Omniglot "
        "row), FCE on miniImageNet; cosine attention; Adam 1e-3 halved every 2,000 episodes (not "
        "stated by Vinyals; Snell et al.'s).",
    ),
    "fce": Recipe("fce", "vinyals2016", "full context embeddings (easyfsl), cosine attention; optimiser as published."),
    "nofce": Recipe("nofce", "vinyals2016", "no full context embeddings, cosine attention; optimiser as published."),
    "harness": Recipe("harness", "vinyals2016", "FCE (easyfsl), as the harness ran it before issue 12."),
}


class PlainMatchingNetworks(nn.Module):
    """Matching Networks without full context embeddings, with easyfsl's interface
    (``process_support_set`` then ``forward(query_images)`` -> log-probabilities)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.support: Optional[torch.Tensor] = None
        self.one_hot: Optional[torch.Tensor] = None

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        self.support = F.normalize(self.backbone(support_images), dim=1)
        self.one_hot = F.one_hot(support_labels).float()

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        assert self.support is not None and self.one_hot is not None, "call process_support_set first"
        attention = torch.softmax(self.backbone(query_images) @ self.support.T, dim=1)
        return (attention @ self.one_hot + 1e-6).log()


class MatchingNetMethod(ProtoNetMethod):
    name = "matchingnet"
    label = "MatchingNet (FCE, cosine; easyfsl)"
    notes = (
        "Matching Networks (FCE: easyfsl MatchingNetworks; no FCE: cosine attention over the support set), "
        "NLL loss; 1 episode a step; running batch-norm statistics at test."
    )
    RECIPES = _RECIPES

    def display_label(self) -> str:
        return self.label if self.fce() else "MatchingNet (no FCE, cosine)"

    def fce(self) -> bool:
        """Full context embeddings in this recipe?"""
        if self.recipe == "published":
            return self.ctx.dataset == "miniimagenet"
        return self.recipe in ("fce", "harness")

    def _train_queries(self) -> Optional[int]:
        return None  # every query of the shared stream, as Vinyals et al.

    def _train_ways(self) -> Optional[int]:
        return None

    def hyperparameters(self) -> Dict[str, Any]:
        hp = super().hyperparameters()
        hp["fce"] = self.fce()
        return hp

    def _loss_name(self) -> str:
        return "nll(log-probabilities), " + ("full context embeddings, cosine" if self.fce() else "no FCE, cosine")

    def _make_model(self, backbone: torch.nn.Module, dz: int) -> torch.nn.Module:
        if not self.fce():
            return PlainMatchingNetworks(backbone)
        from easyfsl.methods import MatchingNetworks

        return MatchingNetworks(backbone, feature_dimension=dz)

    def _loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(scores, labels)
