"""Interleaved fp32 / bf16-autocast timing of MM-Net training steps (Omniglot train, 5w1s, 8 episodes)."""
import os, time, statistics, torch
from mmnet_plugin import MMNet, load_dataset
from mmnet_plugin.episodes import EpisodeSampler
from mmnet_plugin.runtime import tune_cpu_allocator
tune_cpu_allocator()
torch.set_num_threads(1)
ds = load_dataset("omniglot", split="train", data_root=os.environ["MMNET_DATA_ROOT"])
s = EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)
batches = [s.sample_batch(8) for _ in range(5)]
torch.manual_seed(0)
model = MMNet(in_channels=1, image_size=28)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
def step(batch, bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model.loss_and_accuracy(batch)
    opt.zero_grad(); loss.float().backward(); opt.step()
times = {False: [], True: []}
for bf16 in (False, True):  # warm-up
    step(batches[0], bf16)
for rnd in range(4):
    for bf16 in ((False, True) if rnd % 2 == 0 else (True, False)):
        for b in batches:
            t = time.perf_counter(); step(b, bf16); times[bf16].append(time.perf_counter() - t)
for bf16 in (False, True):
    v = times[bf16]
    print(("bf16" if bf16 else "fp32"), f"n={len(v)} median {statistics.median(v):.3f} s/step, "
          f"min {min(v):.3f}, max {max(v):.3f}")
# the loss of one batch: fp32, bf16 autocast as the model computes it, bf16 with log-softmax in float32
model.eval()
from mmnet_plugin.models import mmnet as mm
with torch.no_grad():
    l32 = float(model.loss(batches[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lbf = model.loss(batches[0]); dt = lbf.dtype; lbf = float(lbf)
        out = model.forward_batch(batches[0]); simdt = out.similarities.dtype
        orig = torch.log_softmax
        torch.log_softmax = lambda x, dim: orig(x.float(), dim=dim)
        try:
            lbf_up = float(model.loss(batches[0]))
        finally:
            torch.log_softmax = orig
print(f"loss fp32 {l32:.5f}; bf16 autocast {lbf:.5f} (loss dtype {dt}, similarities {simdt}); "
      f"bf16 with float32 log-softmax {lbf_up:.5f}")
