"""Eager vs torch.compile(dynamic=True) of the four Conv-4 blocks for a 16-episode mixed MM-Net training step
(glyphs, C in 2..20, k in 1..5, 5 queries; DEVICE (default cpu), THREADS threads; ORDER=0,1,0,1 interleaves eager (0) and compiled (1)).
Run from the repository root: STEPS=12 ORDER=0,1,0,1 python benchmarks/results/cpu-2026-12-03/measurements/compile_probe.py"""
import os, time, statistics, torch
from mmnet_plugin import load_dataset, EpisodeSampler, MMNet
from mmnet_plugin.runtime import tune_cpu_allocator
tune_cpu_allocator(); torch.set_num_threads(int(os.environ.get("THREADS", "2")))
DEV = torch.device(os.environ.get("DEVICE", "cpu"))
def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()
ds = load_dataset("glyphs", split="train")
def batches(n):
    s = EpisodeSampler(ds, ways=(2, 20), shots=(1, 5), queries=5, seed=0)
    return [s.sample_batch(16) for _ in range(n)]
B = [[ep.to(DEV) for ep in b] for b in batches(int(os.environ.get("STEPS", "8")) + 2)]
def run(compiled):
    torch.manual_seed(0); m = MMNet().to(DEV)
    if compiled:
        for i, blk in enumerate(list(m.backbone.blocks)):
            m.backbone.blocks[i] = torch.compile(blk, dynamic=True)
    opt = torch.optim.Adam(m.parameters()); ts = []; losses = []
    for i, b in enumerate(B):
        sync(); t = time.perf_counter(); l = m.loss(b); opt.zero_grad(); l.backward(); opt.step(); sync(); ts.append(time.perf_counter() - t)
        losses.append(float(l.detach()))
    return ts, losses
import torch._dynamo
for compiled in [c == "1" for c in os.environ.get("ORDER", "0,1,0,1").split(",")]:
    ts, losses = run(compiled)
    print("compiled" if compiled else "eager   ", "first step %.1f s" % ts[0], "second %.2f s" % ts[1],
          "median of the rest %.3f s" % statistics.median(ts[2:]), "losses", [round(x, 4) for x in losses[:3]], flush=True)
print(dict(torch._dynamo.utils.counters["stats"]), dict(torch._dynamo.utils.counters["graph_break"]))
