"""Prototypical Networks (Snell, Swersky and Zemel, NIPS 2017) through easyfsl's
``PrototypicalNetworks`` over the shared Conv-4 backbone.

Training as easyfsl trains it: one episode a step, cross entropy on the negative Euclidean
distances to the class prototypes; Adam with learning rate 1e-3 halved every 2,000
episodes (Snell et al., section 3.2). Snell trained Omniglot with 60-way episodes; here every
method shares the same training stream (the test setting's C and k, 15 queries per class).
Batch norm uses running statistics at test (``model.eval()``).

easyfsl is imported only when this method runs.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F

from mmnet_plugin.episodes import Episode

from .base import Method, Predictor, conv4_backbone, halving_scheduler

__all__ = ["ProtoNetMethod"]


class ProtoNetMethod(Method):
    name = "protonet"
    label = "ProtoNet (easyfsl)"
    notes = "easyfsl PrototypicalNetworks (Euclidean), 1 episode a step; running batch-norm statistics at test."
    requires = (("easyfsl", "pip install easyfsl"),)
    lr = 1e-3
    lr_halve_every_episodes = 2000

    def hyperparameters(self) -> Dict[str, Any]:
        return {"optimizer": "Adam", "lr": self.lr, "lr_halve_every_steps": self.lr_halve_every_episodes,
                "episodes_per_step": 1, "loss": self._loss_name()}

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
        for ep in batch:
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
