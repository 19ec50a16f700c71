"""Matching Networks (Vinyals et al., NIPS 2016) through easyfsl's ``MatchingNetworks``:
the full-context-embedding variant (a bidirectional LSTM over the support set, an
attention LSTM over the queries) with cosine similarity, over the shared Conv-4 backbone.

easyfsl's ``MatchingNetworks`` returns log-probabilities, so the loss is the negative log
likelihood (as easyfsl documents). Training as :mod:`.protonet`: one episode a step, Adam
with learning rate 1e-3 halved every 2,000 episodes. Batch norm uses running statistics at
test (``model.eval()``). Vinyals et al.'s Omniglot numbers are without FCE; their
miniImageNet numbers (and the MM-Net paper's MN-FCE row) are with it.

easyfsl is imported only when this method runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .protonet import ProtoNetMethod

__all__ = ["MatchingNetMethod"]


class MatchingNetMethod(ProtoNetMethod):
    name = "matchingnet"
    label = "MatchingNet (FCE, cosine; easyfsl)"
    notes = ("easyfsl MatchingNetworks: full context embeddings, cosine similarity, NLL loss; "
             "1 episode a step; running batch-norm statistics at test.")

    def _loss_name(self) -> str:
        return "nll(log-probabilities), full context embeddings, cosine"

    def _make_model(self, backbone: torch.nn.Module, dz: int) -> torch.nn.Module:
        from easyfsl.methods import MatchingNetworks

        return MatchingNetworks(backbone, feature_dimension=dz)

    def _loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(scores, labels)
