"""Seconds of an 8-episode 5w1s MM-Net training step per query-branch form (one thread, best of 3, 3 rounds).
Run from the repository root: python benchmarks/results/cpu-2026-12-03/measurements/step_time.py"""
import os, time, torch
from mmnet_plugin import load_dataset, EpisodeSampler, MMNet
from mmnet_plugin.runtime import tune_cpu_allocator
tune_cpu_allocator(); torch.set_num_threads(1)
ds = load_dataset("omniglot", split="train", data_root=os.environ.get("MMNET_DATA_ROOT", "../shared/datasets"))
s = EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)
b = [s.sample() for _ in range(8)]
ms = {f: MMNet(query_branch=f) for f in ("residual", "paper")}
ms["none"] = MMNet(use_query_branch=False)
for r in range(3):
    for form, m in ms.items():
        opt = torch.optim.Adam(m.parameters())
        ts = []
        for i in range(3):
            t = time.perf_counter(); l = m.loss(b); opt.zero_grad(); l.backward(); opt.step(); ts.append(time.perf_counter() - t)
        print(r, form, "8-episode step", round(min(ts), 3), "s")
