"""MAML (Finn, Abbeel and Levine, ICML 2017) through learn2learn's ``MAML`` wrapper.

The network is the shared Conv-4 backbone with a linear head of ``n_way`` outputs. The
hyperparameters are Finn et al.'s for the data set (section 5.2 and appendix A.1 of the
paper, arXiv:1703.03400); ``glyphs`` (28x28, Omniglot-like) uses Omniglot's:

=====================  ========  ============  ===========  ==========
data set, setting      inner lr  train steps   test steps   meta-batch
=====================  ========  ============  ===========  ==========
Omniglot 5-way         0.4       1             3            32
Omniglot 20-way        0.1       5             5            16
miniImageNet 1-shot    0.01      5             10           4
miniImageNet 5-shot    0.01      5             10           2
=====================  ========  ============  ===========  ==========

Meta-optimiser: Adam, learning rate 1e-3 (Finn's beta). Second-order gradients by default;
``maml-fo`` is the first-order variant (FOMAML). Batch norm uses the batch statistics of
the data in hand at training and at test time, as in Finn's code: the query set is scored
as one batch (transductive batch norm). Deviations from Finn, stated: Finn's Omniglot
network used strided convolutions instead of max-pooling and his miniImageNet network 32
filters; here every method shares the same Conv-4 (64 filters, max-pool) and the same
training stream with 15 queries per class.

learn2learn is imported only when this method runs.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmnet_plugin.episodes import Episode

from .base import Method, Predictor, conv4_backbone

__all__ = ["MAMLMethod", "FirstOrderMAMLMethod", "finn_hyperparameters"]


def finn_hyperparameters(dataset: str, ways: int, shots: int) -> Dict[str, Any]:
    """Finn et al.'s inner learning rate, inner steps and meta-batch for the setting."""
    if dataset == "miniimagenet":
        return {"inner_lr": 0.01, "train_inner_steps": 5, "test_inner_steps": 10,
                "meta_batch": 4 if shots <= 1 else 2, "meta_lr": 1e-3}
    if ways >= 20:
        return {"inner_lr": 0.1, "train_inner_steps": 5, "test_inner_steps": 5,
                "meta_batch": 16, "meta_lr": 1e-3}
    return {"inner_lr": 0.4, "train_inner_steps": 1, "test_inner_steps": 3,
            "meta_batch": 32, "meta_lr": 1e-3}


class MAMLMethod(Method):
    name = "maml"
    label = "MAML (learn2learn)"
    notes = ("learn2learn MAML over Conv-4 + linear head, Finn et al.'s hyperparameters; "
             "batch norm uses batch statistics at test (transductive, as Finn).")
    requires = (("learn2learn", "pip install learn2learn"),)
    first_order = False

    def hyperparameters(self) -> Dict[str, Any]:
        hp = finn_hyperparameters(self.ctx.dataset, self.ctx.ways, self.ctx.shots)
        hp.update(first_order=self.first_order, head="linear", meta_optimizer="Adam",
                  batch_norm="batch statistics (train and test)")
        return hp

    @property
    def episodes_per_step(self) -> int:
        return int(finn_hyperparameters(self.ctx.dataset, self.ctx.ways, self.ctx.shots)["meta_batch"])

    def build(self) -> None:
        from benchmarks.common import quiet_import

        with quiet_import():
            from learn2learn.algorithms import MAML

        hp = self.hyperparameters()
        self.hp = hp
        backbone, dz = conv4_backbone(self.ctx)
        net = nn.Sequential(backbone, nn.Linear(dz, self.ctx.ways)).to(self.ctx.device)
        self.model = net
        self.maml = MAML(net, lr=hp["inner_lr"], first_order=self.first_order)
        self.optimizer = torch.optim.Adam(self.maml.parameters(), lr=hp["meta_lr"])

    def _adapt(self, sx: torch.Tensor, sy: torch.Tensor, steps: int, first_order: bool):
        learner = self.maml.clone(first_order=first_order)
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(sx), sy))
        return learner

    def train_step(self, batch: Sequence[Episode]) -> float:
        self.maml.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for ep in batch:
            learner = self._adapt(ep.support_x, ep.support_y, self.hp["train_inner_steps"], self.first_order)
            loss = F.cross_entropy(learner(ep.query_x), ep.query_y) / len(batch)
            loss.backward()  # accumulate task by task: same gradient, less memory
            total += float(loss.detach())
        self.optimizer.step()
        return total

    def predictor(self) -> Predictor:
        self.maml.train()  # batch statistics at test, as Finn et al.
        steps = self.hp["test_inner_steps"]

        def predict(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():  # evaluate() runs under no_grad; adaptation needs gradients
                learner = self._adapt(sx, sy, steps, first_order=True)
            with torch.no_grad():
                return learner(qx)

        return predict


class FirstOrderMAMLMethod(MAMLMethod):
    name = "maml-fo"
    label = "FOMAML (learn2learn, first order)"
    notes = "as maml, with first-order meta-gradients (Finn et al.'s first-order approximation)."
    first_order = True
