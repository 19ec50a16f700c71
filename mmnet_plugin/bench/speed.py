"""Per-episode training-step and test time of every method on the same episodes.

    python -m mmnet_plugin.bench.speed               # CPU, and CUDA when present (benchmarks/speed.py in a checkout)
    python -m mmnet_plugin.bench.speed --device cpu --rounds 5 --profile

5-way 1-shot at 28x28 on ``glyphs`` with 15 queries per class by default. One pool of
training episodes (as many as the largest batch a method takes, MAML's meta-batch of 32)
and one pool of test episodes are drawn once from seeded samplers; in every round each
method trains on the whole training pool in its own batch size (MM-Net 2 steps of 16, MAML
one meta-step of 32, ProtoNet and MatchingNet 32 steps of 1) and predicts the whole test
pool. The methods run interleaved, in a rotating order, so that load changes on the
machine hit them alike; the median over rounds is reported, as milliseconds per episode
and as a ratio to ProtoNet.

Targets (a benchmark, not a test): on the CPU, MM-Net's training step at most 1.5x
ProtoNet's per episode, and faster than learn2learn's MAML.

``--step`` measures instead MM-Net's training step at the shipped configuration against a bare
Conv-4 training step on the same images::

    python -m mmnet_plugin.bench.speed --step --dataset omniglot --threads 2

One batch of ``--batch-episodes`` episodes of the training distribution (mixed ``--ways`` and
``--shots``, ``--queries`` per class) is drawn once; each round times, interleaved, the MM-Net
step (forward, Eq. 8, backward, Adam; in the shipped precision) and the bare Conv-4 step
(Conv-4 forward on all support and query images, a squared-norm loss, backward, Adam) in float32
and in bf16 autocast with channels-last convolutions. Images per second count support and query
images; the target is MM-Net at >= 0.8x the faster bare form.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mmnet_plugin.arguments import positive_int, range_arg, resolve_device
from mmnet_plugin.data import load_dataset
from mmnet_plugin.episodes import EpisodeSampler
from mmnet_plugin.runtime import tune_cpu_allocator

from .common import atomic_write_json, derive_seed, device_description, versions
from .methods import METHODS, MethodContext, MethodUnavailable

__all__ = ["main", "measure"]

DEFAULT_METHODS = ("protonet", "mmnet", "maml", "maml-fo", "matchingnet")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    device: torch.device,
    methods: Sequence[str],
    ways: int,
    shots: int,
    queries: int,
    rounds: int,
    test_episodes: int,
    seed: int,
    profile: bool = False,
) -> Dict[str, Any]:
    """Time every method on ``device``; returns per-method medians (ms per episode)."""
    train_ds = load_dataset("glyphs", split="train")
    test_ds = load_dataset("glyphs", split="test")
    image_size = int(train_ds.load(np.asarray([0])).shape[-1])
    ctxs = {}
    built: Dict[str, Any] = {}
    errors: Dict[str, str] = {}
    for name in methods:
        cls = METHODS[name]
        try:
            cls.check_available()
        except MethodUnavailable as exc:
            errors[name] = str(exc)
            continue
        ctx = MethodContext("glyphs", ways, shots, 1, image_size, device, 10**6)  # large budget: full batches
        ctxs[name] = ctx
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(seed, "init"))
            m = cls(ctx)
            m.build()
        built[name] = m
    pool_size = max(m.episodes_per_step for m in built.values()) if built else 1
    tr = EpisodeSampler(train_ds, ways, shots, queries, seed=derive_seed(seed, "train", ways, shots))
    te = EpisodeSampler(test_ds, ways, shots, queries, seed=derive_seed(seed, "test", ways, shots))
    train_pool = [tr.sample().to(device) for _ in range(pool_size)]
    test_pool = [te.sample().to(device) for _ in range(test_episodes)]

    def train_round(m: Any) -> float:
        bs = m.episodes_per_step
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(train_pool), bs):
            m.train_step(train_pool[i : i + bs])
        _sync(device)
        return (time.perf_counter() - t0) / len(train_pool)

    def test_round(m: Any) -> float:
        predict = m.predictor()
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for ep in test_pool:
                predict(ep.support_x, ep.support_y, ep.query_x)
        _sync(device)
        return (time.perf_counter() - t0) / len(test_pool)

    times: Dict[str, Dict[str, List[float]]] = {n: {"train": [], "test": []} for n in built}
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        for m in built.values():  # warm-up: allocator, kernels, lazy imports
            m.train_step(train_pool[: m.episodes_per_step])
            test_round(m)
        names = list(built)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                times[n]["train"].append(train_round(built[n]))
                times[n]["test"].append(test_round(built[n]))
        prof_table = None
        if profile and "mmnet" in built:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as tprofile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            m = built["mmnet"]
            with tprofile(activities=acts) as prof:
                m.train_step(train_pool[: m.episodes_per_step])
                _sync(device)
            sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            prof_table = prof.key_averages().table(sort_by=sort, row_limit=25)
    out: Dict[str, Any] = {
        "device": device_description(device),
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "image_size": image_size,
        "rounds": rounds,
        "train_pool": pool_size,
        "test_pool": test_episodes,
        "train_fingerprint": tr.fingerprint,
        "test_fingerprint": te.fingerprint,
        "methods": {},
        "errors": errors,
    }
    base = times.get("protonet")
    for n, t in times.items():
        tr_ms = 1000 * float(np.median(t["train"]))
        te_ms = 1000 * float(np.median(t["test"]))
        row = {
            "label": METHODS[n].label,
            "episodes_per_step": built[n].episodes_per_step,
            "train_ms_per_episode": tr_ms,
            "test_ms_per_episode": te_ms,
            "train_ms_rounds": [1000 * v for v in t["train"]],
            "test_ms_rounds": [1000 * v for v in t["test"]],
        }
        if base is not None:
            row["train_ratio_to_protonet"] = tr_ms / (1000 * float(np.median(base["train"])))
            row["test_ratio_to_protonet"] = te_ms / (1000 * float(np.median(base["test"])))
        out["methods"][n] = row
    if prof_table is not None:
        out["mmnet_profile"] = prof_table
    return out


def measure_step(
    device: torch.device,
    dataset: str,
    data_root: Optional[str],
    ways: Any,
    shots: Any,
    queries: int,
    batch_episodes: int,
    rounds: int,
    bf16: bool,
    seed: int,
    profile: bool = False,
) -> Dict[str, Any]:
    """Images per second of MM-Net's training step and of bare Conv-4 steps on one batch.

    Returns:
        ``{"images": n, "mmnet": {...}, "conv4_float32": {...}, "conv4_bf16": {...}, "ratio": r}``:
        per form the median seconds a step and images per second; ``ratio`` is MM-Net's images
        per second over the faster bare form's.
    """
    from mmnet_plugin.models import MMNet
    from mmnet_plugin.models.backbone import Conv4
    from mmnet_plugin.training import adam_optimizer, cpu_bf16_supported

    ds = load_dataset(dataset, split="train", data_root=data_root)
    sampler = EpisodeSampler(ds, ways=ways, shots=shots, queries=queries, seed=derive_seed(seed, "mixed"))
    batch = [ep.to(device) for ep in sampler.sample_batch(batch_episodes)]
    images = torch.cat([e.support_x for e in batch] + [e.query_x for e in batch])
    n_images = int(images.shape[0])
    bf16_ok = device.type == "cuda" or cpu_bf16_supported() is not False
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, "init"))
        mmnet = MMNet(in_channels=int(images.shape[1]), image_size=int(images.shape[2])).to(device).train()
        conv4 = Conv4(int(images.shape[1])).to(device).train()
    opt_m = adam_optimizer(list(mmnet.parameters()), 1e-3, 0.0)  # the trainer's Adam, for both
    opt_c = adam_optimizer(list(conv4.parameters()), 1e-3, 0.0)

    def mmnet_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = mmnet.loss(batch)
        opt_m.zero_grad(set_to_none=True)
        loss.float().backward()
        opt_m.step()

    def conv4_step(autocast: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = conv4(images).float().pow(2).mean()
        opt_c.zero_grad(set_to_none=True)
        loss.backward()
        opt_c.step()

    forms: Dict[str, Any] = {"mmnet": mmnet_step, "conv4_float32": lambda: conv4_step(False)}
    if bf16_ok:
        forms["conv4_bf16"] = lambda: conv4_step(True)
    times: Dict[str, List[float]] = {k: [] for k in forms}
    for fn in forms.values():  # warm-up
        fn()
    names = list(forms)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            forms[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    out: Dict[str, Any] = {
        "device": device_description(device),
        "dataset": dataset,
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "batch_episodes": batch_episodes,
        "images": n_images,
        "rounds": rounds,
        "mmnet_precision": "bf16 autocast" if bf16 else "float32",
        "fingerprint": sampler.fingerprint,
    }
    for name, t in times.items():
        sec = float(np.median(t))
        out[name] = {"seconds": sec, "images_per_s": n_images / sec, "rounds": t}
    best = max(out[k]["images_per_s"] for k in forms if k.startswith("conv4"))
    out["ratio"] = out["mmnet"]["images_per_s"] / best
    if profile:
        out["parts"] = profile_step(mmnet, batch, bf16, rounds)
    return out


def profile_step(mmnet: Any, batch: List[Any], bf16: bool, rounds: int) -> Dict[str, float]:
    """Median seconds of each part of one MM-Net training step, timed part by part on ``batch``.

    Each part runs forward and backward on its own inputs as the step gives them (detached from
    the parts before it): the Conv-4 backbone on all images, the write controller, the read
    controller with ``Tc``, the contextual learner (bi-LSTM and ``Tp``), the factorized query
    block, the similarities and Eq. 8; then the Adam step alone and the whole step. ``other`` is
    the whole step less the parts: glue (padding, splitting, masks) and Python.
    """
    from mmnet_plugin.models.memory import read_memory, write_memory
    from mmnet_plugin.training import adam_optimizer

    device = next(mmnet.parameters()).device
    opt = adam_optimizer(list(mmnet.parameters()), 1e-3, 0.0)
    images = torch.cat([e.support_x for e in batch] + [e.query_x for e in batch])
    n_s = sum(int(e.support_y.shape[0]) for e in batch)
    n_support = [int(e.support_y.shape[0]) for e in batch]
    n_query = [int(e.query_x.shape[0]) for e in batch]
    lengths = torch.tensor(n_support, device=device)
    labels = torch.nn.utils.rnn.pad_sequence([e.support_y for e in batch], batch_first=True, padding_value=-1)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    with torch.no_grad(), autocast():
        h = images
        for block in list(mmnet.backbone.blocks)[:3]:
            h = block(h)
        z = mmnet.backbone.blocks[3](h).flatten(1)[:n_s]
        z_pad = torch.nn.utils.rnn.pad_sequence(list(torch.split(z, n_support)), batch_first=True)
        zk = mmnet.tz(z_pad)
        memory = write_memory(zk, labels, lengths)
    z_pad, zk, keys, hq = z_pad.float(), zk.float(), memory.keys.float(), h[n_s:].float()

    def run(fn: Any) -> None:
        with autocast():
            out = fn()
        out.float().sum().backward()

    def backbone() -> torch.Tensor:
        x = images
        for block in mmnet.backbone.blocks:
            x = block(x)
        return x

    def contextual() -> torch.Tensor:
        return mmnet.contextual(keys.requires_grad_(True), memory.n_used)

    def query_block() -> torch.Tensor:
        with torch.no_grad():
            filters = mmnet.contextual(keys, memory.n_used)
        return mmnet.query_block(hq.requires_grad_(True), filters.requires_grad_(True), n_query)

    def adam_step() -> None:
        for p in mmnet.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        t0 = time.perf_counter()
        opt.step()
        adam_seconds.append(time.perf_counter() - t0)

    adam_seconds: List[float] = []

    def full_step() -> None:
        with autocast():
            loss = mmnet.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    parts = {
        "backbone (Conv-4, all images)": lambda: run(backbone),
        "write controller": lambda: run(lambda: write_memory(zk.requires_grad_(True), labels, lengths).keys),
        "read controller + Tc": lambda: run(lambda: mmnet.tc(read_memory(zk.requires_grad_(True), keys, memory.used))),
        "contextual learner (bi-LSTM + Tp)": lambda: run(contextual),
        "factorized query block": lambda: run(query_block),
        "Adam step": adam_step,
        "whole step": full_step,
    }
    times: Dict[str, List[float]] = {k: [] for k in parts}
    for fn in parts.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in parts.items():
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    times["Adam step"] = adam_seconds[1:]  # the update alone, not the gradient buffers made for it
    out = {k: float(np.median(v)) for k, v in times.items()}
    out["other (glue, similarities, loss, Python)"] = out["whole step"] - sum(
        v for k, v in out.items() if k != "whole step"
    )
    return out


def _span(v: Any) -> str:
    return f"{v[0]}-{v[1]}" if isinstance(v, (list, tuple)) else str(v)


def report_step(res: Dict[str, Any]) -> str:
    """The lines ``--step`` prints."""
    dev = res["device"]
    lines = [
        f"device {dev['type']} ({dev['name']}, {dev['torch_threads']} threads): {res['dataset']}, "
        f"{res['batch_episodes']} episodes of {_span(res['ways'])}-way {_span(res['shots'])}-shot with "
        f"{res['queries']} queries/class = {res['images']} images a step, median of {res['rounds']} interleaved rounds "
        f"(fingerprint {res['fingerprint'][:16]})"
    ]
    for name, label in (
        ("mmnet", f"MM-Net step ({res['mmnet_precision']})"),
        ("conv4_float32", "bare Conv-4 step, float32"),
        ("conv4_bf16", "bare Conv-4 step, bf16 autocast + channels-last"),
    ):
        if name in res:
            lines.append(f"{label:50s} {res[name]['seconds']:7.3f} s  {res[name]['images_per_s']:8.0f} images/s")
    ok = "met" if res["ratio"] >= 0.8 else "NOT met"
    lines.append(f"target MM-Net >= 0.8x the faster bare Conv-4 step: {res['ratio']:.2f}x -> {ok}")
    if "parts" in res:
        whole = res["parts"]["whole step"]
        lines.append("the MM-Net step part by part (forward + backward of each, median):")
        for name, sec in res["parts"].items():
            lines.append(f"  {name:45s} {1000 * sec:8.1f} ms  {100 * sec / whole:5.1f}%")
    return "\n".join(lines)


def report(res: Dict[str, Any]) -> str:
    dev = res["device"]
    alloc = f", allocator {dev['cpu_allocator']}" if "cpu_allocator" in dev else ""
    lines = [
        f"device {dev['type']} ({dev['name']}, {dev['torch_threads']} threads{alloc}): "
        f"{res['ways']}-way {res['shots']}-shot, {res['queries']} queries/class, {res['image_size']}x"
        f"{res['image_size']}, median of {res['rounds']} interleaved rounds over the same "
        f"{res['train_pool']} training and {res['test_pool']} test episodes "
        f"(fingerprints {res['train_fingerprint'][:16]} / {res['test_fingerprint'][:16]})"
    ]
    head = (
        f"{'method':36s} {'ep/step':>7s} {'train ms/ep':>12s} {'x ProtoNet':>10s} {'test ms/ep':>11s} "
        f"{'x ProtoNet':>10s}"
    )
    lines += [head, "-" * len(head)]
    for r in res["methods"].values():
        lines.append(
            f"{r['label']:36s} {r['episodes_per_step']:7d} {r['train_ms_per_episode']:12.1f} "
            f"{r.get('train_ratio_to_protonet', float('nan')):10.2f} {r['test_ms_per_episode']:11.1f} "
            f"{r.get('test_ratio_to_protonet', float('nan')):10.2f}"
        )
    for n, e in res["errors"].items():
        lines.append(f"{n}: FAILED: {e}")
    ms = res["methods"]
    if "mmnet" in ms and "protonet" in ms:
        ratio = ms["mmnet"]["train_ratio_to_protonet"]
        lines.append(
            f"target MM-Net training step <= 1.5x ProtoNet's: {ratio:.2f}x -> {'met' if ratio <= 1.5 else 'NOT met'}"
        )
    if "mmnet" in ms and "maml" in ms:
        a, b = ms["mmnet"]["train_ms_per_episode"], ms["maml"]["train_ms_per_episode"]
        lines.append(
            f"target MM-Net training step faster than MAML's: {a:.1f} vs {b:.1f} ms/ep -> "
            f"{'met' if a < b else 'NOT met'}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mmnet_plugin.bench.speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    p.add_argument("--device", default="all", help="all (CPU, and CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--ways", type=positive_int, default=5)
    p.add_argument("--shots", type=positive_int, default=1)
    p.add_argument("--queries", type=positive_int, default=15)
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds")
    p.add_argument("--test-episodes", type=positive_int, default=20, help="test episodes per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core); timings on a busy machine are "
        "only comparable with 1",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="print a torch.profiler table of one MM-Net step (with --step: the step's parts timed one by one)",
    )
    p.add_argument("--step", action="store_true", help="MM-Net's training step against a bare Conv-4 step (above)")
    p.add_argument("--dataset", default="glyphs", help="--step: data set of the batch (default glyphs)")
    p.add_argument("--data-root", default=None, help="--step: data root (default MMNET_DATA_ROOT)")
    p.add_argument("--step-ways", type=range_arg, default=(2, 20), help="--step: ways (default 2-20)")
    p.add_argument("--step-shots", type=range_arg, default=(1, 5), help="--step: shots (default 1-5)")
    p.add_argument("--batch-episodes", type=positive_int, default=16, help="--step: episodes a step (default 16)")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "float32"),
        default="auto",
        help="--step: MM-Net's precision; auto: bf16 autocast where the CPU has native bf16 (the shipped default)",
    )
    p.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        try:
            devices = [resolve_device(args.device)]
        except ValueError as exc:
            p.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    if args.step:
        from mmnet_plugin.training import default_bf16

        steps = []
        for device in devices:
            bf16 = default_bf16(device) if args.precision == "auto" else args.precision == "bf16"
            res = measure_step(
                device,
                args.dataset,
                args.data_root,
                args.step_ways,
                args.step_shots,
                args.queries,
                args.batch_episodes,
                args.rounds,
                bf16,
                args.seed,
                profile=args.profile,
            )
            steps.append(res)
            print(report_step(res) + "\n")
        if args.json:
            atomic_write_json(args.json, {"versions": versions(), "step": steps})
        return 0
    results = []
    for device in devices:
        res = measure(
            device,
            methods,
            args.ways,
            args.shots,
            args.queries,
            args.rounds,
            args.test_episodes,
            args.seed,
            args.profile,
        )
        results.append(res)
        print(report(res))
        if "mmnet_profile" in res:
            print("\nMM-Net training step, torch.profiler:\n" + res["mmnet_profile"])
        print()
    if args.json:
        atomic_write_json(args.json, {"versions": versions(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
