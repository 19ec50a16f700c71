"""A method of your own in the benchmark harness, without editing mmnet-plugin.

A method is a subclass of ``mmnet_plugin.bench.methods.Method`` (installed with the package;
the interface is documented in ``mmnet_plugin/bench/methods/base.py``): a ``name`` for the
command line, ``build`` (model and optimiser on ``self.ctx.device``), ``train_step`` (one optimiser step on a batch of
episodes, returning the loss) and ``predictor`` (a function from one test episode's
``support_x, support_y, query_x`` to class scores ``[n_query, n_way]``). The harness owns
everything else: the seeded episodes shared with the other methods, the clock, validation,
checkpoints and the leaderboard. This one is a cosine nearest-centroid classifier over the
shared Conv-4 backbone. Run it beside the built-in methods, from the folder holding this file:

    PYTHONPATH=. mmnet bench --methods custom_method:CosineCentroids,protonet

(from a checkout's root: ``PYTHONPATH=examples python benchmarks/run.py --methods ...``)

or publish it in your package's metadata, after which ``--methods cosine-centroids`` works::

    [options.entry_points]
    mmnet_plugin.methods =
        cosine-centroids = mypkg.methods:CosineCentroids
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F

from mmnet_plugin import Episode
from mmnet_plugin.bench.methods import Method
from mmnet_plugin.bench.methods.base import Predictor, conv4_backbone


def _scores(model: torch.nn.Module, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
    """Scaled cosine similarity of each query to each class centroid, ``[n_query, n_way]``."""
    z = F.normalize(model(torch.cat([sx, qx])), dim=1)
    zs, zq = z[: len(sx)], z[len(sx) :]
    n_way = int(sy.max()) + 1
    centroids = torch.zeros(n_way, zs.shape[1], device=zs.device).index_add_(0, sy, zs)
    return 10.0 * zq @ F.normalize(centroids, dim=1).T


class CosineCentroids(Method):
    name = "cosine-centroids"
    label = "Cosine centroids (example)"
    notes = "examples/custom_method.py: Conv-4, cosine similarity to class centroids, Adam 1e-3."

    def hyperparameters(self) -> Dict[str, Any]:
        return {"optimizer": "Adam", "lr": 1e-3, "scale": 10.0}

    def build(self) -> None:
        self.model, _ = conv4_backbone(self.ctx)
        self.model.to(self.ctx.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train_step(self, batch: Sequence[Episode]) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = sum(
            F.cross_entropy(_scores(self.model, e.support_x, e.support_y, e.query_x), e.query_y) for e in batch
        ) / len(batch)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def predictor(self) -> Predictor:
        self.model.eval()
        return lambda sx, sy, qx: _scores(self.model, sx, sy, qx)
