"""Seconds per MM-Net training step: one process against several torchrun ranks (issue 14 A).

Times one optimisation step of a 16-episode batch (by default 20-way 1-shot, 5 queries per
class, on the embedded glyph data: 28x28 images like Omniglot's, no files needed) through
:class:`mmnet_plugin.training.Trainer`: drawing the batch (every rank draws all of it and reads the
images of its share only), forward, backward (with DDP's gradient all-reduce under several ranks) and the Adam
step. Each mode runs in fresh processes:

* ``single<T>``: one process with T threads (``single2``: 1 process x 2 threads);
* ``ranks<N>``: ``torchrun --nproc-per-node N``, one thread each, per-rank batch norm;
* ``ranks<N>-syncbn``: the same with ``--sync-bn``.

Every step starts after a barrier and its time is the slowest rank's; the figure is the median
over ``--steps`` steps after ``--warmup`` steps. The same seed gives every mode the same model and
the same episodes, so the losses printed beside the times show which modes compute the same
thing (single and ``-syncbn`` agree to float rounding; per-rank batch norm does not).

Usage (the measurement of the README; on a quiet machine)::

    .venv/bin/python benchmarks/distributed_step.py --modes single2,ranks2,ranks2-syncbn --steps 10

Options: ``--dataset omniglot`` (needs ``MMNET_DATA_ROOT``), ``--ways/--shots/--queries``,
``--batch-episodes``, ``--device cuda`` (one GPU per rank: ``ranks<N>`` needs N GPUs),
``--json FILE`` (the records and the device). Nothing is written unless ``--json`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def device_record(device: str) -> Dict[str, Any]:
    """What ran the measurement: CPU (name, cores, instruction set, allocator) or GPU, and torch."""
    import torch

    from mmnet_plugin.runtime import cpu_allocator_state

    info: Dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    get_capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    info["cpu_capability"] = get_capability() if callable(get_capability) else None
    info["cpu_allocator"] = cpu_allocator_state()
    info["cpu"] = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        info["cuda"] = torch.version.cuda
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _parse_modes(text: str) -> List[Dict[str, Any]]:
    modes = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        sync = item.endswith("-syncbn")
        base = item[: -len("-syncbn")] if sync else item
        for prefix, kind in (("single", "single"), ("ranks", "ranks")):
            if base.startswith(prefix) and base[len(prefix) :].isdigit() and int(base[len(prefix) :]) >= 1:
                n = int(base[len(prefix) :])
                if kind == "single" and sync:
                    raise ValueError(f"mode {item!r}: --sync-bn needs several ranks (ranks<N>-syncbn)")
                modes.append({"name": item, "kind": kind, "n": n, "sync_bn": sync})
                break
        else:
            raise ValueError(f"mode {item!r} is not single<T>, ranks<N> or ranks<N>-syncbn (e.g. single2,ranks2)")
    if not modes:
        raise ValueError("no modes given; use e.g. --modes single2,ranks2")
    return modes


def _worker(args: argparse.Namespace) -> None:
    """One process (or one rank) of a mode: time the steps, rank 0 writes the record."""
    import torch

    from mmnet_plugin.arguments import range_arg
    from mmnet_plugin.cli import build_model
    from mmnet_plugin.data import load_dataset
    from mmnet_plugin.distributed import all_reduce_max, barrier, destroy_distributed, init_distributed
    from mmnet_plugin.episodes import EpisodeSampler
    from mmnet_plugin.runtime import tune_cpu_allocator
    from mmnet_plugin.training import TrainConfig, Trainer

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    try:
        data = load_dataset(args.dataset, split="train", data_root=args.data_root)
        channels, size = (int(v) for v in data.load([0]).shape[1:3])
        config = {
            "in_channels": channels,
            "image_size": size,
            "dm": 512,
            "dr": 512,
            "memory_slots": None,
            "similarity_scale": 0.125,
            "decision": "nearest",
            "query_branch": "residual",
        }
        model = build_model(config, seed=args.seed)
        trainer = Trainer(
            model,
            TrainConfig(
                batch_episodes=args.batch_episodes,
                device=args.device,
                progress=False,
                sync_bn=args.sync_bn,
                bf16=args.precision == "bf16",
            ),
            model_config=config,
            context=ctx,
        )
        ways, shots = range_arg(args.ways), range_arg(args.shots)
        sampler = EpisodeSampler(data, ways=ways, shots=shots, queries=args.queries, seed=args.seed)
        draws, steps, losses = [], [], []
        cuda = trainer.device.type == "cuda"
        for _ in range(args.warmup + args.steps):
            barrier(ctx)
            t0 = time.perf_counter()
            batch = trainer.draw(sampler)  # as fit: a rank reads the images of its share only
            t1 = time.perf_counter()
            loss, _ = trainer.backward(batch)
            trainer.optimizer.step()
            trainer.scheduler.step()
            if cuda:
                torch.cuda.synchronize(trainer.device)
            t2 = time.perf_counter()
            draws.append(all_reduce_max(t1 - t0, ctx))
            steps.append(all_reduce_max(t2 - t0, ctx))
            losses.append(loss)
        timed = steps[args.warmup :]
        record = {
            "mode": args.mode_name,
            "processes": ctx.world_size,
            "threads_per_process": args.threads,
            "sync_bn": bool(args.sync_bn),
            "backend": ctx.backend,
            "seconds_per_step_median": statistics.median(timed),
            "seconds_per_step": timed,
            "draw_seconds_median": statistics.median(draws[args.warmup :]),
            "warmup_steps": args.warmup,
            "losses": losses,
            "episodes": {
                "batch": args.batch_episodes,
                "ways": args.ways,
                "shots": args.shots,
                "queries": args.queries,
                "precision": args.precision,
                "dataset": args.dataset,
                "seed": args.seed,
            },
            "device_record": device_record(str(trainer.device)),
        }
        if ctx.is_main:
            Path(args.record).write_text(json.dumps(record))
    finally:
        destroy_distributed(ctx)


def _run_mode(mode: Dict[str, Any], args: argparse.Namespace, record: Path) -> Dict[str, Any]:
    """Launch one mode in fresh processes and read its record."""
    script = str(Path(__file__).resolve())
    common = [
        "--worker",
        "--record",
        str(record),
        "--mode-name",
        mode["name"],
        "--dataset",
        args.dataset,
        "--ways",
        str(args.ways),
        "--shots",
        str(args.shots),
        "--queries",
        str(args.queries),
        "--precision",
        args.precision,
        "--batch-episodes",
        str(args.batch_episodes),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
    ]
    if args.data_root:
        common += ["--data-root", args.data_root]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    if mode["kind"] == "single":
        threads = mode["n"]
        cmd = [sys.executable, script, *common, "--threads", str(threads)]
    else:
        threads = 1
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(mode["n"]),
            script,
            *common,
            "--threads",
            "1",
        ] + (["--sync-bn"] if mode["sync_bn"] else [])
    env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not record.is_file():
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"mode {mode['name']} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(record.read_text())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--modes",
        default="single2,ranks2,ranks2-syncbn",
        help="comma-separated single<T>, ranks<N>, ranks<N>-syncbn (default single2,ranks2,ranks2-syncbn)",
    )
    p.add_argument("--dataset", default="glyphs", help="glyphs (default, embedded) or omniglot")
    p.add_argument("--data-root", default=None, help="folder holding omniglot/ (default $MMNET_DATA_ROOT)")
    p.add_argument("--ways", default="20", help="C or a range such as 2-20 (mixed batches; default 20)")
    p.add_argument("--shots", default="1", help="k or a range such as 1-5 (default 1)")
    p.add_argument(
        "--precision", choices=("float32", "bf16"), default="float32", help="bf16: autocast (default float32)"
    )
    p.add_argument("--queries", type=int, default=5, help="query images per class (default 5)")
    p.add_argument("--batch-episodes", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (one GPU per rank)")
    p.add_argument("--json", default=None, help="write the records and the device here")
    # internal: one process of a mode
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--record", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode-name", default="", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--sync-bn", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    try:
        modes = _parse_modes(args.modes)
        from mmnet_plugin.arguments import range_arg

        for name in ("ways", "shots"):
            try:
                range_arg(getattr(args, name))
            except Exception as exc:
                raise ValueError(f"--{name} {getattr(args, name)!r}: {exc}") from None
        for name in ("queries", "batch_episodes", "steps"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if args.warmup < 0:
            raise ValueError("--warmup must be 0 or more")
        for m in modes:
            if m["kind"] == "ranks" and args.batch_episodes < m["n"]:
                raise ValueError(
                    f"mode {m['name']}: --batch-episodes {args.batch_episodes} is fewer than {m['n']} ranks"
                )
    except ValueError as exc:
        print(f"distributed_step: error: {exc}", file=sys.stderr)
        return 2
    records = []
    with tempfile.TemporaryDirectory(prefix="mmnet-dist-step.") as tmp:
        for i, mode in enumerate(modes):
            rec = _run_mode(mode, args, Path(tmp) / f"mode{i}.json")
            records.append(rec)
            losses = ", ".join(f"{v:.6f}" for v in rec["losses"][:3])
            print(
                f"{rec['mode']:>16}: {rec['processes']} process(es) x {rec['threads_per_process']} thread(s)"
                f"{' sync-bn' if rec['sync_bn'] else ''}: {rec['seconds_per_step_median']:.3f} s/step "
                f"(median of {len(rec['seconds_per_step'])} after {rec['warmup_steps']} warm-up; "
                f"drawing the batch {rec['draw_seconds_median']:.3f} s); first losses {losses}",
                flush=True,
            )
    e = records[0]["episodes"]
    print(
        f"batch: {e['batch']} episodes of {e['ways']}-way {e['shots']}-shot, {e['queries']} queries/class, "
        f"{e['dataset']}, seed {e['seed']}"
    )
    print("device record: " + json.dumps(records[0]["device_record"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
