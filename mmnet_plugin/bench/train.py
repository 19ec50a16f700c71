"""Training and testing one job: consume the job's stream in the method's batch size until the
budget (episodes or seconds) is spent, validate on the val split at points of the budget and
keep the best-on-val weights, choose test-time settings on val, checkpoint, then test on the
job's test episodes with their fingerprint."""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from mmnet_plugin.evaluation import evaluate

from .files import CheckpointError, atomic_torch_save, safe_torch_load
from .fingerprints import ImageDigest, stream_fingerprint
from .jobs import Job, _Digesting, stream_sampler
from .meters import PeakMemory, Stopwatch, load_average
from .methods import Method
from .recipes import rule_batch
from .store import utc_now

__all__ = ["run_job"]


def _state_copy(m: Method) -> Dict[str, Any]:
    return copy.deepcopy(m.state_dict())


def _validate(m: Method, val_ds: Any, stream: Dict[str, Any], device: torch.device) -> Tuple[float, float]:
    result = evaluate(m.predictor(), stream_sampler(val_ds, stream, stream["episodes"]), device=device)
    return result.accuracy, result.ci95


def _choose_on_val(m: Method, val_ds: Any, stream: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """Score each of the method's test-time candidates (:meth:`Method.val_choices`) on the
    val episodes with the weights to be tested; keep the best (the first on ties)."""
    t0 = time.perf_counter()
    candidates = []
    for choice in m.val_choices():
        m.set_choice(choice)
        acc, ci = _validate(m, val_ds, stream, device)
        candidates.append({"choice": dict(choice), "val_accuracy": acc, "val_ci95": ci})
    best = max(candidates, key=lambda c: round(c["val_accuracy"], 6))  # max keeps the first of equals
    m.set_choice(best["choice"])
    return {"chosen": best["choice"], "candidates": candidates, "split": "val", "seconds": time.perf_counter() - t0}


def _train(
    job: Job, train_ds: Any, val_ds: Any, progress: bool, on_step: Optional[Callable[[int, float], None]] = None
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Consume the job's training stream in the method's batch size until the budget is
    spent, validating on the val split when asked; return the stats and the best-on-val
    state (``None``: the last weights are the ones to test). ``on_step(step, loss)`` is
    called after every step (``--tensorboard``)."""
    m = job.method
    run = job.run
    s = job.train_stream
    sampler = stream_sampler(train_ds, s)
    digest = ImageDigest()
    cap = run["train_episodes"]  # None: seconds decide
    budget_s = run["budget_seconds"]
    v = run["validation"]
    device = job.ctx.device
    recipe_batch = int(m.recipe_batch())
    rule: Dict[str, Any] = {"applies": job.rule_applies, "min_steps": run["min_steps"], "recipe_batch": recipe_batch}
    if job.rule_applies and budget_s is None:
        m.batch_override = rule_batch(recipe_batch, cap, run["min_steps"])
        rule["episode_budget"] = cap
    probing = job.rule_applies and budget_s is not None  # seconds mode: two 1-episode steps time the method
    if probing:
        m.batch_override = 1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cap if budget_s is None else None,
            desc=f"{job.cls.name} {job.setting} train",
            unit="ep",
            leave=False,
            dynamic_ncols=True,
        )
    steps, step_time, train_time, val_time, overhead = 0, 0.0, 0.0, 0.0, 0.0
    losses: List[float] = []
    marks: Dict[str, str] = {}
    curve: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None
    best_state: Optional[Dict[str, Any]] = None
    next_point = 1
    stop_reason = ""
    t_wall = time.perf_counter()

    def progress_fraction() -> float:
        if budget_s is not None:
            frac = train_time / budget_s
            return max(frac, sampler.drawn / cap) if cap else frac
        return sampler.drawn / cap

    def validate_now() -> None:
        nonlocal val_time, best, best_state, overhead
        t0 = time.perf_counter()
        acc, ci = _validate(m, val_ds, job.val_stream, device)
        val_time += time.perf_counter() - t0
        point = {
            "step": steps,
            "episodes": sampler.drawn,
            "seconds": round(train_time, 3),
            "val_accuracy": acc,
            "val_ci95": ci,
        }
        curve.append(point)
        if best is None or round(acc, 6) > round(best["val_accuracy"], 6):  # ties keep the earlier weights
            t1 = time.perf_counter()
            best, best_state = dict(point), _state_copy(m)
            overhead += time.perf_counter() - t1

    try:
        while True:
            n = int(m.episodes_per_step)
            if cap is not None:
                n = min(n, cap - sampler.drawn)
            raw, draw = [], 0.0
            for _ in range(n):
                t0 = time.perf_counter()
                ep = sampler.sample()
                t1 = time.perf_counter()
                digest.update(ep)  # the pixels go into the fingerprint (harness time, not training)
                if sampler.drawn in _POW2:
                    marks[str(sampler.drawn)] = stream_fingerprint(s["split"], sampler.fingerprint, digest.hexdigest())
                overhead += time.perf_counter() - t1
                draw += t1 - t0
                raw.append(ep)
            with Stopwatch(device) as sw:
                batch = [ep.to(device) for ep in raw]
                loss = m.train_step(batch)
            step_time += sw.seconds
            train_time += sw.seconds + draw
            steps += 1
            losses.append(loss)
            if on_step is not None:
                on_step(steps, loss)
            if bar is not None:
                bar.update(n)
                bar.set_postfix(loss=f"{loss:.3f}")
            if probing and steps == 2:
                per_episode = sw.seconds + draw  # the second 1-episode step (the first warms up)
                estimate = budget_s / per_episode if per_episode > 0 else None
                if cap is not None and estimate is not None:
                    estimate = min(estimate, cap)
                m.batch_override = rule_batch(recipe_batch, estimate, run["min_steps"])
                rule.update(
                    probe_seconds_per_episode=per_episode,
                    episode_budget=estimate,
                    probe_steps="2 steps of 1 episode, then every step times its own batch",
                    batches=[[steps, int(m.batch_override)]],
                )
                fit = _one_episode_steps_fit(budget_s, train_time, per_episode, steps, run["min_steps"])
                if fit is not None:
                    rule["unmet_warning"] = fit
                    print(f"warning: {job.cls.name} {job.setting}: {fit}", file=sys.stderr)
                probing = False
            elif rule.get("batches") is not None and budget_s is not None and n > 0:
                # the batch that is trained is the one timed: shrink it when the seconds left
                # at this step's pace would not reach --min-steps
                b = _controlled_batch(n, (sw.seconds + draw) / n, budget_s - train_time, run["min_steps"] - steps)
                if b != int(m.episodes_per_step):
                    m.batch_override = b
                    rule["batches"].append([steps, b])
            done = (cap is not None and sampler.drawn >= cap) or (budget_s is not None and train_time >= budget_s)
            if v["enabled"] and not done:
                if v["every_steps"] and steps % v["every_steps"] == 0:
                    validate_now()
                elif v["points"]:
                    if progress_fraction() >= next_point / v["points"]:
                        validate_now()
                        # the next point past the progress made, computed (not counted up to:
                        # --val-points 10**12 would count for ever)
                        frac = progress_fraction()
                        nxt = max(next_point + 1, int(frac * v["points"]) + 1)
                        while nxt > next_point + 1 and (nxt - 1) / v["points"] > frac:
                            nxt -= 1  # the same points as counting up one by one would give
                        while nxt / v["points"] <= frac:
                            nxt += 1
                        next_point = nxt
            if done:
                stop_reason = "episodes" if (cap is not None and sampler.drawn >= cap) else "seconds"
                break
        if v["enabled"]:
            validate_now()  # the end of the budget is always a point of the curve
    finally:
        if bar is not None:
            bar.close()
    t0 = time.perf_counter()
    index_fp = sampler.fingerprint
    fp = stream_fingerprint(s["split"], index_fp, digest.hexdigest())
    overhead += time.perf_counter() - t0
    k = max(1, len(losses) // 10)
    selected = None
    if best is not None and best_state is not None and best["step"] != steps:
        selected = best_state
    if job.rule_applies and budget_s is not None and run["min_steps"]:
        rule["steps"] = steps
        rule["met"] = steps >= int(run["min_steps"]) or stop_reason == "episodes"
        if not rule["met"] and "unmet_warning" not in rule:  # the budget ended within the probe
            rule["unmet_warning"] = (
                f"the budget of {budget_s:g} s ended after {steps} step(s), fewer than --min-steps "
                f"{run['min_steps']}, before the probe could time a step"
            )
            print(f"warning: {job.cls.name} {job.setting}: {rule['unmet_warning']}", file=sys.stderr)
    stats = {
        "train_episodes": sampler.drawn,
        "train_steps": steps,
        "episodes_per_step": int(m.episodes_per_step),
        "train_fingerprint": fp,
        "train_index_fingerprint": index_fp,
        "train_image_sha256": digest.hexdigest(),
        "train_fingerprint_marks": marks,
        "train_time_s": train_time,
        "train_step_time_s": step_time,
        "train_wall_s": time.perf_counter() - t_wall,
        "validation_time_s": val_time,
        "train_harness_s": overhead,
        "train_episodes_per_s": sampler.drawn / step_time if step_time > 0 else float("nan"),
        "train_loss_first": float(np.mean(losses[:k])),
        "train_loss_last": float(np.mean(losses[-k:])),
        "stop_reason": stop_reason,
        "budget_rule": rule,
        "curve": curve,
        "best_val": best,
        "tested_weights": ("best-on-val" if v["enabled"] else "last")
        + (f" (step {best['step']} of {steps})" if best is not None else ""),
    }
    return stats, selected


_POW2 = frozenset(1 << i for i in range(40))


def _controlled_batch(batch: int, per_episode: float, seconds_left: float, steps_needed: int) -> int:
    """The batch for the next step: ``batch``, or smaller when ``steps_needed`` more steps of
    ``batch`` episodes at ``per_episode`` seconds each would overrun ``seconds_left``.
    Never grows (the recipe's batch, shrunk by the rule, is the most a step takes)."""
    if steps_needed <= 0 or per_episode <= 0:
        return batch
    fits = int(max(seconds_left, 0.0) // (steps_needed * per_episode))
    return max(1, min(batch, fits))


def _one_episode_steps_fit(
    budget_s: float, spent: float, per_episode: float, steps: int, min_steps: int
) -> Optional[str]:
    """``None`` when ``min_steps`` steps of one episode fit in the budget, else the warning."""
    if not min_steps or steps >= min_steps or per_episode <= 0:
        return None
    reachable = steps + int(max(budget_s - spent, 0.0) // per_episode)
    if reachable >= min_steps:
        return None
    return (
        f"even 1-episode steps ({per_episode:.3g} s each) give only about {reachable} steps in "
        f"--budget-seconds {budget_s:g}, fewer than --min-steps {min_steps}; training anyway, and the "
        "record says so (raise --budget-seconds or lower --min-steps)"
    )


def run_job(
    job: Job,
    train_ds: Any,
    val_ds: Any,
    test_ds: Any,
    output: Path,
    progress: bool,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> Dict[str, Any]:
    """Train (or load a finished training's checkpoint) and test one (method, setting).

    Raises:
        MethodUnavailable: a missing optional library.
    """
    job.cls.check_available()
    device = job.ctx.device
    m = job.method
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    ckpt = output / "checkpoints" / f"{job.cls.name}-{job.train_key}.pt"
    t_job = time.perf_counter()
    load_start = load_average()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(job.init_seed)
        with PeakMemory(device) as mem:
            m.build()
            stats = None
            if ckpt.is_file():
                try:
                    # tensors and plain containers only: a planted file cannot run code here
                    saved = safe_torch_load(ckpt, map_location=device)
                    if not isinstance(saved, dict) or not isinstance(saved.get("stats"), dict):
                        raise CheckpointError(f"checkpoint {ckpt} does not hold the harness's state and stats")
                    m.load_state_dict(saved["state"])
                    if saved["stats"].get("episodes_per_step"):
                        m.batch_override = int(saved["stats"]["episodes_per_step"])
                    if (saved["stats"].get("val_choice") or {}).get("chosen"):
                        m.set_choice(saved["stats"]["val_choice"]["chosen"])
                    stats = dict(saved["stats"], train_reused_from=str(ckpt.relative_to(output)))
                except Exception as exc:  # a broken or refused checkpoint is retrained, not trusted
                    print(f"note: retraining {job.cls.name}: {exc}", file=sys.stderr)
                    m.build()
                    stats = None
            if stats is None:
                stats, best_state = _train(job, train_ds, val_ds, progress, on_step)
                if best_state is not None:
                    m.load_state_dict(best_state)  # test the best-on-val weights
                if job.val_stream is not None and m.val_choices():
                    stats["val_choice"] = _choose_on_val(m, val_ds, job.val_stream, device)
                    stats["validation_time_s"] += stats["val_choice"]["seconds"]
                t0 = time.perf_counter()
                atomic_torch_save({"state": m.state_dict(), "stats": stats}, ckpt)
                stats["checkpoint_s"] = time.perf_counter() - t0
            test = _Digesting(stream_sampler(test_ds, job.test_stream, job.test_stream["episodes"]))
            t0 = time.perf_counter()
            result = evaluate(
                m.predictor(), test, device=device, progress=progress, desc=f"{job.cls.name} {job.setting} test"
            )
            test_s = time.perf_counter() - t0 - test.seconds
    acc = np.asarray(result.per_episode)
    return {
        "status": "ok",
        "method": job.cls.name,
        "label": m.display_label(),
        "notes": job.cls.notes,
        "recipe": job.recipe,
        "recipe_info": m.recipe_info(),
        "setting": job.setting,
        "ways": job.ways,
        "shots": job.shots,
        "accuracy": result.accuracy,
        "ci95": result.ci95,
        "accuracy_std": float(acc.std()),
        "test_episodes": result.episodes,
        "queries": result.queries_per_class,
        "test_fingerprint": stream_fingerprint("test", result.fingerprint, test.digest.hexdigest()),
        "test_index_fingerprint": result.fingerprint,
        "test_image_sha256": test.digest.hexdigest(),
        "test_ms_per_episode": result.ms_per_episode,
        "test_time_s": test_s,
        "test_harness_s": test.seconds,
        **stats,
        "budget_seconds": job.run["budget_seconds"],
        "shared_stream": job.shared_stream,
        "peak_memory_mib": mem.mib,
        "memory_kind": mem.kind,
        "parameters": m.parameters(),
        "hyperparameters": job.hyperparameters,
        "train_stream": job.train_stream,
        "test_stream": job.test_stream,
        "val_stream": job.val_stream,
        "init_seed": job.init_seed,
        "key": job.key,
        "key_nocode": job.key_nocode,
        "train_key": job.train_key,
        "run_key": job.run["run_key"],
        "config_key": job.run["config_key"],
        "code": job.run["code"],
        "job_wall_s": time.perf_counter() - t_job,
        "load_average": {"start": load_start, "end": load_average()},
        "finished_at": utc_now(),
        "check": "ok",
    }
