"""MM-Net analyses of the paper's section 4.6, reproduced on glyphs, Omniglot or miniImageNet.

Parts (``--parts``, comma separated; default all):

- ``strategy`` (paper Table 3): uniform 1..5-shot models, "mixed k-shot" (5-way, k in 1..5)
  and "mixed C-way k-shot" (C in 2..5, k in 1..5), each tested on 5-way 1..5-shot;
  ``strategy.md``.
- ``dr`` (Figure 2): contextual learner hidden size Dr (``--dr-values``) on 5-way 1-shot and
  5-shot; ``dr.png`` (accuracy with 95% CI bands) and ``dr.md``.
- ``tsne`` (Figure 3): t-SNE of test-image embeddings of 5 test classes (a 5-way 5-shot
  support set; the other images of those classes embedded as queries), MM-Net beside
  Matching Networks; ``tsne.png``.
- ``similarity`` (Figure 4): 25 support x 25 query dot-product similarities of a 5-way 5-shot
  episode sorted by class, MM-Net beside Matching Networks; ``similarity.png``.
- ``ablations``: memory read, contextual learner, query branch, memory slots, decision
  rule, similarity scale and filter init scale, trained and tested on ``--ablation-setting``
  (20-way 1-shot on Omniglot, where 5-way saturates; 5-way 5-shot elsewhere);
  ``ablations.md`` and one training-curve PNG per group (``curves_<group>.png``).

Everything is written under ``--output``: ``results.json`` (every number, the test-episode
fingerprints), ``report.md`` (each table and figure tied to the paper's claim it tests),
and ``models/<key>.json`` + ``.pt``, one record per trained model, so a rerun skips the
models already trained with the same configuration.

Every model: weights initialised from ``--seed`` inside ``torch.random.fork_rng`` (no global
RNG is touched), trained on the training stream of the same seed, and tested on the same
test episodes as every model it is compared with (one seeded sampler per test setting;
their fingerprints are printed and recorded). Each training step draws ``--batch-episodes``
episodes (the paper: 16 on Omniglot, 4 on miniImageNet); the default budget is a pipeline
check that runs in minutes on two CPU cores, not evidence.

Run: ``python -m mmnet_plugin.bench.analysis --dataset glyphs --output runs/analysis``.
"""

from .cli import build_parser, main
from .core import Analysis
from .helpers import (
    ABLATION_GROUPS,
    FORMAT,
    PAPER_SCHEDULE_EPISODES,
    PARTS,
    PIPELINE_CHECK_EPISODES,
    TrainedModel,
    png_size,
    row_standardised_contrast,
)

__all__ = [
    "PARTS",
    "ABLATION_GROUPS",
    "FORMAT",
    "PIPELINE_CHECK_EPISODES",
    "PAPER_SCHEDULE_EPISODES",
    "Analysis",
    "TrainedModel",
    "build_parser",
    "main",
    "png_size",
    "row_standardised_contrast",
]
