"""The ``mmnet`` command: ``mmnet train``, ``mmnet evaluate`` and ``mmnet bench`` (also ``python -m mmnet_plugin``).

``mmnet bench ...`` is the benchmark harness (:mod:`mmnet_plugin.bench`); its arguments are
those of ``python benchmarks/run.py`` (``mmnet bench --help``).

Examples::

    mmnet train --dataset omniglot --data-root ../shared/datasets --ways 2-20 --shots 1-5 \\
        --steps 2000 --checkpoint runs/mixed.pt
    mmnet evaluate --dataset omniglot --checkpoint runs/mixed.pt --ways 20 --shots 1

Several processes (one per GPU, or CPU processes with gloo), launched by torchrun::

    torchrun --nproc-per-node 2 -m mmnet_plugin train --dataset omniglot --steps 2000 \\
        --checkpoint runs/mixed.pt --sync-bn
    torchrun --nproc-per-node 2 -m mmnet_plugin evaluate --dataset omniglot --checkpoint runs/mixed.pt

``train`` splits every step's episodes over the ranks (DDP; see :mod:`mmnet_plugin.training`),
``evaluate`` the test episodes (see :mod:`mmnet_plugin.evaluation`); rank 0 prints, writes the
checkpoint and the log. ``--device cuda`` (or ``auto`` on a GPU machine) means one GPU per rank
(``LOCAL_RANK``) with nccl; on the CPU the ranks use gloo.

torchrun parses abbreviations of its own options anywhere on the line, so ``--log`` after the
module fails there (``ambiguous option: --log``): write ``--log-file`` (the same option), or
put ``--`` between ``mmnet_plugin`` and ``train``. A missing or dead peer stops the other ranks
with one line after ``--dist-timeout`` seconds (default 60).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .arguments import (
    add_common_arguments,
    format_setting,
    positive_int,
    range_arg,
    resolve_device,
    settings_arg,
    ways_arg,
)

__all__ = ["main", "build_parser", "build_model"]

MODEL_OPTIONS = ("dm", "dr", "memory_slots", "similarity_scale", "decision")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _scale(text: str) -> Any:
    if text.strip().lower() == "learned":
        return "learned"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'learned', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the similarity scale must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``mmnet`` argument parser."""
    parser = _OneLineParser(prog="mmnet", description="Train and evaluate Memory Matching Networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    train = sub.add_parser("train", help="train MM-Net episodically")
    add_common_arguments(train)
    train.add_argument("--split", default="train", help="training split (default train; trainval for final runs)")
    train.add_argument(
        "--ways", type=ways_arg, default=5, help="C (at least 2) or a range such as 2-20 (mixed strategy)"
    )
    train.add_argument("--shots", type=range_arg, default=1, help="k or a range such as 1-5 (mixed strategy)")
    train.add_argument("--steps", type=positive_int, default=1000, help="optimisation steps (default 1000)")
    train.add_argument("--batch-episodes", type=positive_int, default=16, help="episodes per step (default 16)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument(
        "--lr-schedule",
        choices=("step", "budget", "cosine", "plateau"),
        default="step",
        help="step: halve every --lr-halve-every steps (the paper's, default); budget: halve "
        "every steps/4; cosine: anneal to 0 over --steps; plateau: halve after more than --lr-patience "
        "validations without a gain of --lr-plateau-delta",
    )
    train.add_argument(
        "--lr-patience", type=int, default=4, help="plateau: validations without a gain tolerated (default 4)"
    )
    train.add_argument(
        "--lr-plateau-delta",
        type=float,
        default=0.002,
        help="plateau: the gain in validation accuracy that counts, a fraction (default 0.002)",
    )
    train.add_argument(
        "--stop-on-plateau",
        action="store_true",
        help="stop once validation has plateaued after a learning-rate decay (the best of the last quarter of "
        "the steps does not beat the earlier best by more than its 95%% interval)",
    )
    train.add_argument(
        "--lr-halve-every",
        type=positive_int,
        default=20000,
        help="halve the lr every N steps (--lr-schedule step; default 20000)",
    )
    train.add_argument("--val-every", type=int, default=0, help="validate every N steps on --val-split (0: never)")
    train.add_argument("--val-split", default="val", help="validation split (default val)")
    train.add_argument("--val-episodes", type=positive_int, default=200, help="validation episodes (default 200)")
    train.add_argument(
        "--val-queries",
        type=positive_int,
        default=15,
        help="query images per class in validation episodes (default 15, the evaluation protocol's)",
    )
    train.add_argument(
        "--val-settings",
        type=settings_arg,
        default=None,
        help="validate on these settings, e.g. 5w1s,20w1s (--val-episodes each, the same episodes at every "
        "validation; the best checkpoint has the best mean over them). Default: the largest --ways at the "
        "smallest --shots",
    )
    train.add_argument("--checkpoint", default=None, help="checkpoint file, written atomically")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    train.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT|pretrained:NAME",
        help="start from these model weights (a checkpoint, or shipped weights) with a fresh optimiser, schedule "
        "and sampler, e.g. to go on from committed weights when the resumable checkpoint is lost; said in the log",
    )
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        help="also write the checkpoint every N steps, so an interrupted run loses little "
        "(default 100; 0: only at the end)",
    )
    train.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop after the step that passes this many seconds, writing the checkpoint; "
        "rerun with --resume to go on (default 0: no limit)",
    )
    train.add_argument(
        "--log-file",
        "--log",
        dest="log",
        default=None,
        help="JSON-lines training log (under torchrun write --log-file: torchrun takes --log for its --log-dir)",
    )
    train.add_argument(
        "--precision",
        choices=("auto", "bf16", "float32"),
        default="auto",
        help="auto (default): bf16 autocast with channels-last convolutions on a CPU with native bf16 "
        "(AVX512-BF16 or AMX), float32 elsewhere; bf16 also on CUDA. Stated in the log and the checkpoint",
    )
    train.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for this process (torch.set_num_threads; default: torch's choice)",
    )
    train.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun: batch norm uses the statistics of all ranks' images, so training "
        "equals one process on the whole batch (to float rounding); default: each rank "
        "normalises with its own share's statistics, which differ from one process's. "
        "No effect in one process",
    )
    _add_model_arguments(train)

    ev = sub.add_parser("evaluate", help="test a trained MM-Net on unseen classes")
    add_common_arguments(ev)
    ev.add_argument("--split", default="test", help="test split (default test)")
    ev.add_argument("--ways", type=range_arg, default=5, help="C (default 5)")
    ev.add_argument("--shots", type=range_arg, default=1, help="k (default 1)")
    ev.add_argument(
        "--settings",
        type=settings_arg,
        default=None,
        help="several settings in one run, e.g. 5w1s,5w5s,20w1s,20w5s (instead of --ways/--shots): one line each, "
        "each from the same --seed",
    )
    ev.add_argument("--episodes", type=positive_int, default=1000, help="test episodes (default 1000)")
    ev.add_argument(
        "--batch-episodes",
        type=positive_int,
        default=25,
        help="test episodes scored in one batch (default 25; each is still scored on its own)",
    )
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="checkpoint written by mmnet train")
    which.add_argument(
        "--pretrained", metavar="NAME", help="weights shipped with the package, e.g. omniglot (offline, checksummed)"
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ex = sub.add_parser("export", help="write compact pretrained weights and their manifest from a checkpoint")
    ex.add_argument("--checkpoint", required=True, help="a checkpoint of mmnet train (e.g. its .best.pt)")
    ex.add_argument("--name", required=True, help="the weights' name, e.g. omniglot")
    ex.add_argument("--out", required=True, help="folder for <name>-mmnet.pt and <name>.json")
    ex.add_argument(
        "--info", default=None, help="a JSON file of more manifest entries (preprocessing, training, selection, test)"
    )
    ex.add_argument(
        "--log",
        default=None,
        help="the run's JSON-lines log: its steps, episodes, hours and validations go into the manifest's training",
    )
    # listed for --help only: main() hands `mmnet bench ...` to the harness before parsing
    sub.add_parser(
        "bench",
        add_help=False,
        help="the benchmark harness: MM-Net beside MAML, ProtoNet and "
        "Matching Networks on the same episodes (mmnet bench --help)",
    )
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--dm", type=positive_int, default=512, help="memory key size Dm (default 512)")
    group.add_argument("--dr", type=positive_int, default=512, help="contextual learner hidden size Dr (default 512)")
    group.add_argument(
        "--memory-slots", type=positive_int, default=None, help="memory slots M (default: one per support item)"
    )
    group.add_argument(
        "--similarity-scale",
        type=_scale,
        default=None,
        help="scale s of the similarities, or 'learned' (default: 0.125 for dot, 10 for cosine, 1 for euclidean; "
        "1 with dot is the paper's raw dot product)",
    )
    group.add_argument(
        "--similarity",
        choices=("dot", "cosine", "euclidean"),
        default="dot",
        help="matching function: dot (the paper's, default), cosine, or euclidean (negative squared distance)",
    )
    group.add_argument(
        "--decision",
        choices=("nearest", "class_mass"),
        default="nearest",
        help="decision rule (default nearest, the paper's)",
    )
    group.add_argument(
        "--query-branch",
        choices=("residual", "paper", "none"),
        default="residual",
        help="query branch f: residual (default: g0 plus a gated support-conditioned branch that "
        "starts closed), paper (the factorized block in place of Conv-4's fourth) or none (f = g0)",
    )


def build_model(model_config: Dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """Build an :class:`~mmnet_plugin.MMNet` with deterministic initial weights.

    The global torch RNG is forked, so building a model does not disturb the caller's state.
    """
    from .models import MMNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MMNet(**model_config)


def _image_shape(dataset: Any) -> Sequence[int]:
    return tuple(dataset.load([0]).shape[1:])


def _load(args: argparse.Namespace, split: str) -> Any:
    from .data import load_dataset

    return load_dataset(args.dataset, split=split, data_root=args.data_root, layout=args.layout)


def _run(body: Callable[[argparse.Namespace, torch.device, Any], int], args: argparse.Namespace) -> int:
    """``body(args, device, context)`` inside torchrun's process group (or in one process)."""
    from .distributed import distributed_session

    with distributed_session(resolve_device(args.device), timeout=args.dist_timeout) as (ctx, device):
        return body(args, device, ctx)


def _train(args: argparse.Namespace, device: torch.device, ctx: Any) -> int:
    from .episodes import EpisodeSampler
    from .evaluation import evaluate
    from .training import TrainConfig, Trainer, check_bf16, check_writable, default_bf16

    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint (the file to continue from)")
    if args.bf16:
        args.precision = "bf16"
    bf16 = default_bf16(device) if args.precision == "auto" else args.precision == "bf16"
    if bf16:
        check_bf16(device)
    if args.checkpoint:
        check_writable(args.checkpoint, "--checkpoint")
    if args.log:
        check_writable(args.log, "--log")
    if args.val_every > 0 and ctx.is_main:
        overlap = _split_overlap(args.split, args.val_split)
        if overlap:
            print(f"mmnet: warning: {overlap}", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set = _load(args, args.split)
    channels, size, _ = _image_shape(train_set)
    model_config: Dict[str, Any] = {
        "in_channels": int(channels),
        "image_size": int(size),
        "dm": args.dm,
        "dr": args.dr,
        "memory_slots": args.memory_slots,
        "similarity_scale": args.similarity_scale,
        "decision": args.decision,
        "similarity": args.similarity,
        **({"use_query_branch": False} if args.query_branch == "none" else {"query_branch": args.query_branch}),
    }
    sampler = EpisodeSampler(train_set, ways=args.ways, shots=args.shots, queries=args.queries, seed=args.seed)
    model = build_model(model_config, seed=args.seed)
    init_note = None
    if args.init_from:
        init_note = _init_weights(model, args.init_from, args)
    config = TrainConfig(
        steps=args.steps,
        batch_episodes=args.batch_episodes,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        lr_halve_every=args.lr_halve_every,
        lr_patience=args.lr_patience,
        lr_plateau_delta=args.lr_plateau_delta,
        stop_on_plateau=args.stop_on_plateau,
        device=str(device),
        bf16=bf16,
        checkpoint=args.checkpoint,
        checkpoint_every=max(0, args.checkpoint_every),
        val_every=max(0, args.val_every),
        log_path=args.log,
        progress=not args.no_progress,
        time_limit=args.time_limit,
        sync_bn=args.sync_bn,
    )
    extra = {
        "dataset": args.dataset,
        "split": args.split,
        "seed": args.seed,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
    }
    trainer = Trainer(model, config, model_config=model_config, extra_state=extra, context=ctx)
    validate = None
    if args.val_every > 0:
        val_set = _load(args, args.val_split)
        n_classes = len(set(val_set.targets.tolist()))
        if args.val_settings:
            settings = list(args.val_settings)
            too_many = [format_setting(w, k) for w, k in settings if w > n_classes]
            if too_many:
                raise ValueError(
                    f"--val-settings {','.join(too_many)}: --val-split {args.val_split} has only {n_classes} classes"
                )
        else:
            w = args.ways if isinstance(args.ways, int) else args.ways[1]
            k = args.shots if isinstance(args.shots, int) else args.shots[0]
            settings = [(min(w, n_classes), k)]

        def validate(m: torch.nn.Module) -> Dict[str, Any]:
            per_setting = {}
            for w, k in settings:
                eps = EpisodeSampler(
                    val_set, ways=w, shots=k, queries=args.val_queries, seed=args.seed + 1, episodes=args.val_episodes
                )
                result = evaluate(m, eps, device=device, context=ctx, batch_episodes=25)
                per_setting[format_setting(w, k)] = {"accuracy": result.accuracy, "ci95": result.ci95}
            n = len(per_setting)
            mean = sum(r["accuracy"] for r in per_setting.values()) / n
            ci = sum(r["ci95"] ** 2 for r in per_setting.values()) ** 0.5 / n  # of the mean of independent sets
            return {"accuracy": mean, "ci95": ci, "settings": per_setting}

    if init_note is not None:
        resuming = args.resume and args.checkpoint and os.path.exists(args.checkpoint)
        if resuming:
            raise ValueError(
                f"--init-from with --resume: {args.checkpoint} exists and would be resumed instead; "
                "give a new --checkpoint to start from the weights"
            )
        trainer.note(init_note)
    trainer.fit(sampler, validate=validate, resume=args.resume)
    last = next((r for r in reversed(trainer.history) if "loss" in r), None)
    tail = f", last loss {last['loss']:.4f}, train accuracy {100 * last['accuracy']:.1f}%" if last else ""
    sched = dict(trainer.schedule)
    name = sched.pop("name")
    saved = "; lr schedule " + name + " (" + ", ".join(f"{k} {v:g}" for k, v in sched.items()) + ")"
    if trainer.autocast:
        saved += ", bf16 autocast"
    saved += f", checkpoint {args.checkpoint}" if args.checkpoint else ""
    if trainer.stopped_early and trainer.history and trainer.history[-1].get("stopped") == "plateau":
        saved += f"; stopped at step {trainer.step}: validation has plateaued"
    elif trainer.stopped_early:
        saved += f"; stopped by --time-limit {args.time_limit:g}s before step {args.steps} (rerun with --resume)"
    if ctx.enabled:
        saved += f"; {ctx.world_size} processes ({ctx.backend}{', sync-bn' if args.sync_bn else ''})"
    if not ctx.is_main:
        return 0
    print(
        f"trained {trainer.step} steps x {args.batch_episodes} episodes{tail}; "
        f"training fingerprint {sampler.short_fingerprint}{saved}"
    )
    return 0


_INSIDE = {"trainval": ("train", "val", "trainval")}


def _init_weights(model: torch.nn.Module, source: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Load ``--init-from`` weights into ``model`` (same configuration); the log record that says so."""
    from .models import MMNet

    if source.startswith("pretrained:"):
        loaded = MMNet.pretrained(source.split(":", 1)[1])
    else:
        loaded = MMNet.from_checkpoint(source)
    if loaded.config != model.config:
        differ = sorted(k for k in model.config if loaded.config.get(k) != model.config[k])
        raise ValueError(
            f"--init-from {source}: its model differs from this run's in {', '.join(differ)}; "
            "train with the same model options"
        )
    model.load_state_dict(loaded.state_dict())
    return {
        "step": 0,
        "init_from": source,
        "note": "model weights loaded from init_from; optimiser, schedule and sampler start fresh",
    }


def _split_overlap(train_split: str, val_split: str) -> Optional[str]:
    """A one-line warning when validation classes are training classes (or test classes),
    else ``None``. Splits are the data sets' names: ``trainval`` holds ``train`` and ``val``."""
    t, v = train_split.strip().lower(), val_split.strip().lower()
    if v == "test":
        return (
            "--val-split test: the best checkpoint (<checkpoint>.best.pt) would be chosen on the test split; "
            "validate on val and keep test for the final figure"
        )
    if t == v:
        where = f"--val-split {val_split} is the training split"
    elif v in _INSIDE.get(t, ()):
        where = f"--val-split {val_split} lies inside --split {train_split}"
    elif t in _INSIDE.get(v, ()):
        where = f"--val-split {val_split} contains --split {train_split}"
    else:
        return None
    return (
        f"{where}: validation classes are training classes, so validation accuracy (and "
        "<checkpoint>.best.pt) measure fit, not few-shot generalisation; train on train to validate on val"
    )


def _evaluate(args: argparse.Namespace, device: torch.device, ctx: Any) -> int:
    from .episodes import EpisodeSampler
    from .evaluation import evaluate
    from .models import MMNet

    if args.pretrained is not None:
        from .pretrained import manifest

        manifest(args.pretrained)  # an unknown name fails before any data is read
    test_set = _load(args, args.split)
    if args.pretrained is not None:
        model = MMNet.pretrained(args.pretrained, map_location=device)
        source = f"--pretrained {args.pretrained}"
    else:
        model = MMNet.from_checkpoint(args.checkpoint, map_location=device)
        source = f"--checkpoint {args.checkpoint}"
    shape = tuple(int(v) for v in _image_shape(test_set))
    want = (model.in_channels, model.image_size, model.image_size)
    if shape != want:
        raise ValueError(
            f"{args.dataset} {args.split} images are {'x'.join(map(str, shape))} but the model of {source} takes "
            f"{'x'.join(map(str, want))}; evaluate it on data of that shape"
        )
    settings = args.settings or [(args.ways, args.shots)]
    for ways, shots in settings:
        sampler = EpisodeSampler(
            test_set, ways=ways, shots=shots, queries=args.queries, seed=args.seed, episodes=args.episodes
        )
        result = evaluate(
            model,
            sampler,
            device=device,
            progress=not args.no_progress,
            batch_episodes=args.batch_episodes,
            context=ctx,
        )
        if ctx.is_main:
            print(f"{args.dataset} {args.split} {_fmt(ways)}-way {_fmt(shots)}-shot: {result.summary()}", flush=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .pretrained import export_pretrained

    info = None
    if args.info:
        try:
            info = json.loads(Path(args.info).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--info {args.info} is not a readable JSON file ({exc})") from None
        if not isinstance(info, dict):
            raise ValueError(f"--info {args.info} must hold a JSON object of manifest entries")
    entry = export_pretrained(args.checkpoint, args.name, args.out, info, log=args.log)
    print(f"wrote {Path(args.out) / entry['file']} ({entry['bytes']} bytes, sha256 {entry['sha256']}) and its manifest")
    return 0


def _fmt(v: Any) -> str:
    return str(v) if isinstance(v, int) else f"{v[0]}-{v[1]}"


def _rank_tag() -> str:
    """`` (rank N)`` under several processes, else empty."""
    import os

    world, rank = os.environ.get("WORLD_SIZE", ""), os.environ.get("RANK", "")
    return f" (rank {rank})" if world.isdigit() and int(world) > 1 and rank else ""


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``mmnet`` command. Errors print one line and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench.cli import main as bench_main  # the harness is imported only when asked for

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import DataNotFoundError
    from .runtime import tune_cpu_allocator
    from .training import CheckpointError

    tune_cpu_allocator()
    try:
        if args.command == "export":
            return _export(args)
        return _run(_train if args.command == "train" else _evaluate, args)
    except (ValueError, DataNotFoundError, CheckpointError, FloatingPointError) as exc:
        print(f"mmnet{_rank_tag()}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .distributed import describe_dist_failure

        line = describe_dist_failure(exc)
        if line is None:
            raise
        print(f"mmnet{_rank_tag()}: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mmnet: interrupted; the last checkpoint is intact (rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
