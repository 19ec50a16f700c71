"""Between-episode spread of the predicted filters at init (README: 15% residual vs 0.7% paper on Omniglot).
Run from the repository root: PYTHONPATH=. python benchmarks/results/cpu-2026-12-03/measurements/filter_spread.py"""
import os
import torch, sys
sys.path.insert(0, "tests/models")  # make_episode, for random episodes
from test_mmnet import make_episode
from mmnet_plugin.models import MMNet
from mmnet_plugin import load_dataset, EpisodeSampler
ds = load_dataset("omniglot", split="train", data_root=os.environ.get("MMNET_DATA_ROOT", "../shared/datasets"))
eps = [EpisodeSampler(ds, ways=5, shots=1, queries=1, seed=s).sample() for s in range(16)]
rnd = [make_episode(5, 1, 1, s) for s in range(16)]
for form in ("paper", "residual"):
    torch.manual_seed(0)
    m = MMNet(query_branch=form).eval()
    for name, e in (("omniglot", eps), ("random", rnd)):
        with torch.no_grad():
            f = m.forward_batch(e).filters.flatten(1)
        var = (f - f.mean(0)).pow(2).mean().sqrt() / f.pow(2).mean().sqrt()
        print(form, name, "between-episode rms / rms", float(var))
