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
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mmnet_plugin.arguments import positive_int, resolve_device
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
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one MM-Net step")
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
