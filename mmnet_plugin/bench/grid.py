"""The grid of a run: every (method, setting) in order, each trained, tested and recorded
as a :mod:`.jobs` job, finished ones skipped (resume), the summaries rewritten after each."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmnet_plugin.arguments import format_setting
from mmnet_plugin.data import DataNotFoundError, load_dataset
from mmnet_plugin.episodes import EpisodeSampler

from .fingerprints import config_key, dataset_digest, derive_seed
from .identity import code_identity, device_description, versions
from .jobs import Job, failed_record, stream_sampler
from .methods import METHODS, MethodContext, MethodUnavailable, mixed_ranges
from .options import HARNESS_VERSION
from .recipes import default_recipe
from .report import budget_words, fmt_acc, leaderboard_text, write_summaries
from .store import ResultStore, utc_now
from .tensorboard import TensorBoardLog
from .train import run_job

__all__ = ["run_grid", "image_shape"]


def image_shape(ds: Any) -> Tuple[int, int]:
    x = ds.load(np.asarray([0]))
    c, h, w = (int(v) for v in x.shape[1:])
    if h != w:
        raise ValueError(f"the harness needs square images; {type(ds).__name__} gives {h}x{w}")
    return c, h


def _check_settings(
    settings: Sequence[Tuple[int, int]],
    splits: Dict[str, Any],
    queries: int,
    extra: Sequence[Tuple[str, Dict[str, Any]]],
) -> Optional[str]:
    """Every setting must be drawable from every split it needs: a one-line reason if not."""
    for w, k in settings:
        for split, ds in splits.items():
            try:
                EpisodeSampler(ds, ways=w, shots=k, queries=queries, seed=0)
            except ValueError as exc:
                return f"--settings {format_setting(w, k)}: the {split} split cannot give these episodes: {exc}"
    for what, stream in extra:
        try:
            stream_sampler(splits["train"], stream)
        except ValueError as exc:
            return f"{what}: the train split cannot give these episodes: {exc}"
    return None


def run_grid(
    args: argparse.Namespace,
    argv: Optional[Sequence[str]],
    output: Path,
    device: torch.device,
    opts: Dict[str, Any],
    recipes: Dict[str, str],
    t_start: float,
    ctx: Optional[Any] = None,
    tensorboard: Optional[TensorBoardLog] = None,
    record_extra: Optional[Dict[str, Any]] = None,
) -> int:
    """Run the grid of (setting, method) cells and write the results.

    Args:
        args: the parsed options (:func:`~.options.build_parser`).
        argv: the command line as given (recorded), ``None``: ``sys.argv``.
        output: the results folder (checked writable).
        device: where to train and test.
        opts: :func:`~.options.resolve_options`.
        recipes: method -> recipe.
        t_start: ``time.perf_counter()`` at the start of the command (for the timing).
        ctx: a :class:`mmnet_plugin.distributed.DistributedContext`; with several processes,
            cell ``i`` runs on rank ``i % world_size`` and rank 0 gathers the records and
            writes the results files (the same files as one process). ``None``: one process.
        tensorboard: where to write the curves (``--tensorboard``), or ``None``.
        record_extra: more entries for the run record (resolved options, the config file).

    Returns:
        The exit status: 0 all well, 1 a method failed or fingerprints disagree, 2 bad
        data or settings, 130 interrupted.
    """
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None and ctx.enabled else (0, 1)
    main_rank = rank == 0
    progress = not args.no_progress
    settings: List[Tuple[int, int]] = opts["settings"]
    val_split = "val" if opts["validate"] else None

    try:
        where = {"data_root": args.data_root, "layout": args.layout}
        train_ds = load_dataset(args.dataset, split=opts["train_split"], **where)
        val_ds = load_dataset(args.dataset, split=val_split, **where) if val_split else None
        test_ds = load_dataset(args.dataset, split="test", **where)
    except (DataNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    in_channels, image_size = image_shape(test_ds)

    mixed_w, mixed_k = mixed_ranges(args.dataset, settings)
    if args.mixed_ways is not None:
        mixed_w = (args.mixed_ways, args.mixed_ways) if isinstance(args.mixed_ways, int) else tuple(args.mixed_ways)
    if args.mixed_shots is not None:
        mixed_k = (args.mixed_shots, args.mixed_shots) if isinstance(args.mixed_shots, int) else tuple(args.mixed_shots)
    splits = {"train": train_ds, "test": test_ds}
    if val_ds is not None:
        splits["val"] = val_ds
    extra = []
    if "mmnet-mixed" in args.methods:
        extra.append(
            (
                "mmnet-mixed's stream",
                {"ways": list(mixed_w), "shots": list(mixed_k), "queries": args.queries, "seed": 0},
            )
        )
    if args.protonet_train_ways and "protonet" in args.methods:
        for w, k in settings:
            extra.append(
                (
                    f"--protonet-train-ways {args.protonet_train_ways} at {format_setting(w, k)}",
                    {"ways": args.protonet_train_ways, "shots": k, "queries": 5, "seed": 0},
                )
            )
    problem = _check_settings(settings, splits, args.queries, extra)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    # one-time imports of the methods' libraries (and torch's optimiser machinery, which the
    # first optimiser imports), timed apart from the harness's own overhead
    t0 = time.perf_counter()
    for name in args.methods:
        try:
            METHODS[name].check_available()
        except MethodUnavailable:
            pass  # that method fails alone, when its turn comes
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    with contextlib.suppress(ImportError):
        import matplotlib  # noqa: F401
    imports_s = time.perf_counter() - t0

    code = code_identity()
    digests = {
        "train": dataset_digest(train_ds, opts["train_split"], probe=256),
        "test": dataset_digest(test_ds, "test", probe=256),
    }
    if val_ds is not None:
        digests["val"] = dataset_digest(val_ds, "val", probe=256)
    validation = {
        "enabled": opts["validate"],
        "split": val_split,
        "every_steps": opts["val_every"],
        "points": opts["val_points"],
        "episodes": args.val_episodes if opts["validate"] else 0,
    }
    run: Dict[str, Any] = {
        "command": [Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv),
        "dataset": args.dataset,
        "train_split": opts["train_split"],
        "val_split": val_split,
        "test_split": "test",
        "image_size": image_size,
        "in_channels": in_channels,
        "settings": [format_setting(*s) for s in settings],
        "methods": list(args.methods),
        "recipes": recipes,
        "default_recipe": default_recipe(args.dataset),
        "train_episodes": opts["train_episodes"],
        "budget_seconds": args.budget_seconds,
        "min_steps": args.min_steps,
        "protonet_train_ways": args.protonet_train_ways,
        "validation": validation,
        "test_episodes": opts["test_episodes"],
        "queries": args.queries,
        "seed": args.seed,
        "preset": "paper" if args.paper else "bare",
        "device": device_description(device),
        "versions": versions(),
        "git": {k: code[k] for k in ("commit", "dirty")},
        "code": code,
        "data_digests": digests,
        "harness_version": HARNESS_VERSION,
        "started": utc_now(),
        **(record_extra or {}),
    }
    if world > 1:
        run["distributed"] = {
            "world_size": world,
            "backend": ctx.backend,
            "cells": "cell i of the grid (settings, then methods) on rank i % world_size; a "
            "method trained once (mmnet-mixed) on rank (its index in methods) % "
            "world_size in every setting",
        }
    run["config_key"] = config_key(
        {
            k: run[k]
            for k in (
                "dataset",
                "train_split",
                "val_split",
                "test_split",
                "image_size",
                "train_episodes",
                "budget_seconds",
                "min_steps",
                "test_episodes",
                "queries",
                "seed",
                "data_digests",
            )
        }
        | {
            "validation": {k: validation[k] for k in ("every_steps", "points", "episodes")},
            "device_type": device.type,
            "harness": HARNESS_VERSION,
        }
    )
    run["run_key"] = config_key({"config": run["config_key"], "code": code["source_sha256"]})
    too_big = [format_setting(w, s) for w, s in settings if w > mixed_w[1] or s > mixed_k[1]]
    if too_big and "mmnet-mixed" in args.methods:
        print(
            f"note: mmnet-mixed trains on {mixed_w[0]}-{mixed_w[1]} ways and {mixed_k[0]}-{mixed_k[1]} shots "
            f"but is tested on {', '.join(too_big)} too"
        )
    run["seeds"] = {
        format_setting(w, s): {
            "train": derive_seed(args.seed, "train", w, s),
            "val": derive_seed(args.seed, "val", w, s),
            "test": derive_seed(args.seed, "test", w, s),
        }
        for w, s in settings
    }
    run["seeds"]["init"] = derive_seed(args.seed, "init")
    run["seeds"]["mixed_train"] = derive_seed(args.seed, "mixed")
    run["mixed_stream"] = {"ways": list(mixed_w), "shots": list(mixed_k)}

    store = ResultStore(output, run, run["run_key"], run["config_key"], reuse_stale=args.reuse_stale)
    if main_rank:
        budget = budget_words(run)
        print(
            f"benchmark: {args.dataset} ({opts['train_split']} -> test, {in_channels}x{image_size}x{image_size}), "
            f"settings {','.join(run['settings'])}, {budget}, {opts['test_episodes']} test episodes, "
            f"{args.queries} queries/class, seed {args.seed}, device {device} ({run['device']['name']}, "
            f"{torch.get_num_threads()} threads)"
        )
        commit = code["commit"] or ("not in git" if code.get("source") == "checkout" else "installed, no git commit")
        print(
            f"methods: {', '.join(f'{m} [{recipes[m]}]' for m in args.methods)}; validation: "
            f"{'on ' + str(validation['episodes']) + ' val episodes' if validation['enabled'] else 'none'}; "
            f"code {commit}{' (dirty)' if code['dirty'] else ''}, source {code['source_sha256']}; "
            f"results in {output}/"
        )
        if store.records:
            print(f"resuming: {len(store.records)} finished result(s) of this configuration and code found")
        if store.other_code:
            print(
                f"note: {len(store.other_code)} result(s) of this configuration in {output}/records were made by "
                "other code; "
                + ("reused (--reuse-stale), marked" if args.reuse_stale else "not reused (--reuse-stale to use them)")
            )
        if store.stale:
            print(
                f"note: {store.stale} result(s) in {output}/records from another configuration "
                "(data set, budget, queries, seed or device) are kept there but not reused"
            )
    if (
        args.dataset == "glyphs"
        and hasattr(test_ds, "materialize")
        and opts["test_episodes"] * max(w for w, _ in settings) >= len(test_ds.class_names)
    ):
        # the test episodes will touch most test classes: generate the embedded images up
        # front, so the first method's test time and memory do not pay for them (the first
        # method's training pays for generating the training images it is first to touch:
        # about 0.5 s per 1000 classes on 2 cores)
        test_ds.materialize()

    init_seed = run["seeds"]["init"]
    interrupted = False
    ran: List[Dict[str, Any]] = []
    mine: List[Dict[str, Any]] = []  # records this process made (merged on rank 0 when distributed)
    options = {"protonet_train_ways": args.protonet_train_ways}
    first = settings[0]
    once_val = (
        None
        if not validation["enabled"]
        else {  # trained-once methods validate on the first setting
            "split": "val",
            "ways": first[0],
            "shots": first[1],
            "queries": args.queries,
            "seed": run["seeds"][format_setting(*first)]["val"],
            "episodes": validation["episodes"],
        }
    )
    cell = -1
    try:
        for ways, shots in settings:
            setting = format_setting(ways, shots)
            seeds = run["seeds"][setting]
            test_stream = {
                "split": "test",
                "ways": ways,
                "shots": shots,
                "queries": args.queries,
                "seed": seeds["test"],
                "episodes": opts["test_episodes"],
            }
            val_stream = (
                None
                if not validation["enabled"]
                else {
                    "split": "val",
                    "ways": ways,
                    "shots": shots,
                    "queries": args.queries,
                    "seed": seeds["val"],
                    "episodes": validation["episodes"],
                }
            )
            shared = {
                "split": opts["train_split"],
                "ways": [ways, ways],
                "shots": [shots, shots],
                "queries": args.queries,
                "seed": seeds["train"],
                "episodes": opts["train_episodes"],
            }
            mixed = {
                "split": opts["train_split"],
                "ways": list(mixed_w),
                "shots": list(mixed_k),
                "queries": args.queries,
                "seed": run["seeds"]["mixed_train"],
                "episodes": opts["train_episodes"],
            }
            tag = f" [{setting}, rank {rank}]" if world > 1 else ""
            if main_rank:
                print(f"\n== {setting}: training stream seed {seeds['train']}, test stream seed {seeds['test']}")
            for m_index, name in enumerate(args.methods):
                cell += 1
                cls = METHODS[name]
                # a method trained once (mmnet-mixed) keeps all its settings on one rank, which
                # trains it once and reuses its checkpoint, as one process does
                if (m_index if cls.trained_once else cell) % world != rank:
                    continue  # another rank's cell
                if cls.trained_once:
                    mctx = MethodContext(
                        args.dataset, mixed_w[1], mixed_k[1], in_channels, image_size, device, opts["train_episodes"]
                    )
                else:
                    mctx = MethodContext(
                        args.dataset, ways, shots, in_channels, image_size, device, opts["train_episodes"]
                    )
                job = Job(
                    cls,
                    ways,
                    shots,
                    run,
                    mctx,
                    shared if cls.shared_stream else mixed,
                    test_stream,
                    once_val if cls.trained_once else val_stream,
                    init_seed,
                    recipes[name],
                    options,
                )
                done = store.done(job.key, job.key_nocode)
                if done is not None:
                    print(
                        f"  {name:12s} done already (skipped): {fmt_acc(done)}%  train fp "
                        f"{done['train_fingerprint'][:16]}  test fp {done['test_fingerprint'][:16]}"
                        + ("  [made by other code: --reuse-stale]" if done.get("reused_stale_code") else "")
                        + tag
                    )
                    if world > 1:
                        mine.append(done)
                    continue
                for old in store.retire(name, setting, job.key):
                    print(
                        f"  {name:12s} note: an earlier result ({fmt_acc(old)}%) was made with other "
                        "method settings; it is not reused" + tag
                    )
                if tensorboard is not None:
                    tensorboard.start(name, setting)
                try:
                    rec = run_job(
                        job,
                        train_ds,
                        val_ds,
                        test_ds,
                        output,
                        progress,
                        tensorboard.train_loss if tensorboard is not None else None,
                    )
                except MethodUnavailable as exc:
                    rec = failed_record(job, (ways, shots), str(exc))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    traceback.print_exc()
                    rec = failed_record(job, (ways, shots), f"{type(exc).__name__}: {exc}")
                if world > 1:
                    rec["rank"] = rank
                if tensorboard is not None:
                    tensorboard.finish(rec)
                store.add(rec)
                mine.append(rec)
                if rec["status"] == "ok":
                    ran.append(rec)
                if main_rank:
                    write_summaries(output, run, store)
                if rec["status"] == "ok":
                    print(
                        f"  {name:12s} {fmt_acc(rec)}%  [{rec['recipe']}] train {rec['train_episodes']} ep, "
                        f"{rec['train_steps']} steps of {rec['episodes_per_step']} in {rec['train_time_s']:.1f}s"
                        + (
                            f"  best val {100 * rec['best_val']['val_accuracy']:.1f}% "
                            f"at {rec['best_val']['episodes']} ep"
                            if rec.get("best_val")
                            else ""
                        )
                        + f"  test {rec['test_ms_per_episode']:.1f} ms/ep  test fp {rec['test_fingerprint'][:16]}"
                        + tag
                    )
                else:
                    print(f"  {name:12s} FAILED: {rec['error']}{tag}")
    except KeyboardInterrupt:
        interrupted = True
        print(
            "\ninterrupted: every finished (method, setting) is saved; rerun the same command to resume",
            file=sys.stderr,
        )
    finally:
        if tensorboard is not None:
            tensorboard.close()

    if world > 1:
        from mmnet_plugin.distributed import broadcast_object, gather_objects

        gathered = gather_objects({"records": mine, "ran": ran, "interrupted": interrupted}, ctx)
        if main_rank:
            for part in gathered[1:]:  # rank 0's own records are in the store already
                for rec in part["records"]:
                    store.add(rec)
            # the timing is rank 0's: its own jobs against its own wall time (other ranks ran theirs
            # at the same time, so sums over ranks would not compare with one wall clock)
            interrupted = any(part["interrupted"] for part in gathered)
            code = _finish(output, run, store, ran, t_start, imports_s, interrupted, world=world)
        else:
            code = 0
        return int(broadcast_object(code if main_rank else None, ctx))
    return _finish(output, run, store, ran, t_start, imports_s, interrupted)


def _finish(
    output: Path,
    run: Dict[str, Any],
    store: ResultStore,
    ran: List[Dict[str, Any]],
    t_start: float,
    imports_s: float,
    interrupted: bool,
    world: int = 1,
) -> int:
    """Write the summaries and plots, print the leaderboard and the checks; the exit status.

    ``ran``: the jobs this process ran (under several ranks, rank 0's), for the timing."""
    records, checks = write_summaries(output, run, store, plot=True)
    run["timing"] = _timing(ran, time.perf_counter() - t_start, imports_s)
    if world > 1:
        run["timing"]["note"] += f"; rank 0 of {world} ranks, which ran their own jobs at the same time"
    records, checks = write_summaries(output, run, store)  # with the timing (plots are up to date)
    print()
    print(leaderboard_text(records))
    for setting, c in checks.items():
        print(
            f"{setting}: test fingerprint {c['test_fingerprint'][:16]} "
            f"({'agrees across methods' if c['test_fingerprints_agree'] else 'ERROR: DIFFERS between methods'}); "
            f"training fingerprint {(c['train_fingerprint'] or '-')[:16]}"
            + (f" at episode {c['train_compared_at_episodes']}" if c.get("train_compared_at_episodes") else "")
            + f" ({'agrees across shared-stream methods' if c['train_fingerprints_agree'] else 'ERROR: DIFFERS'})"
        )
    t = run["timing"]
    print(
        f"harness overhead{' (rank 0)' if world > 1 else ''}: {t['harness_s']:.1f} s of {t['wall_s']:.1f} s "
        f"({100 * t['harness_share']:.2f}%; "
        f"training {t['train_s']:.1f} s, validation {t['validation_s']:.1f} s, testing {t['test_s']:.1f} s, "
        f"library imports {t['imports_s']:.1f} s)"
    )
    print(
        f"written: {output}/results.json, results.csv, leaderboard.md, accuracy.png"
        + (", curves.png" if any(r.get("curve") for r in records if r["status"] == "ok") else "")
    )
    if interrupted:
        return 130
    bad = [r for r in records if r["status"] != "ok" or r.get("check", "ok") != "ok"]
    return 1 if bad else 0


def _timing(ran: Sequence[Dict[str, Any]], wall: float, imports_s: float) -> Dict[str, Any]:
    """Where this process's time went: training (drawing episodes and steps), validation,
    testing, the one-time imports of the methods' libraries, and the rest: the harness's own
    overhead (data loading, digests, fingerprints, model building, peak-memory bookkeeping,
    checkpoints, summaries and plots)."""
    fresh = [r for r in ran if not r.get("train_reused_from")]
    train = sum(r["train_time_s"] for r in fresh)
    val = sum(r.get("validation_time_s", 0.0) for r in fresh)
    test = sum(r.get("test_time_s", 0.0) for r in ran)
    harness = max(0.0, wall - train - val - test - imports_s)
    return {
        "wall_s": wall,
        "train_s": train,
        "validation_s": val,
        "test_s": test,
        "imports_s": imports_s,
        "harness_s": harness,
        "harness_share": harness / wall if wall > 0 else 0.0,
        "jobs": len(ran),
        "note": "harness_s = wall - training - validation - testing - library imports, for the jobs this "
        "process ran (wall from the start of main() to the last summary)",
    }
