"""The benchmark harness: MM-Net beside Matching Networks, MAML and ProtoNets on the same
episodes from the same seeds, each trained by its published recipe, at equal compute.

    python benchmarks/run.py                                  # all methods, glyphs, 5w1s
    python benchmarks/run.py --methods mmnet,maml --settings 5w1s,20w5s
    python benchmarks/run.py --dataset omniglot --budget-seconds 120 --settings 5w1s,20w1s

Per setting, one seeded :class:`~mmnet_plugin.EpisodeSampler` over the training split draws
the training stream; every method except ``mmnet-mixed`` (and ProtoNet with
``--protonet-train-ways``) consumes that stream in order, each in its own batch size. The
budget is either ``--train-episodes`` (the same episodes for every method) or
``--budget-seconds`` (the same wall-clock of training for every method on the same device:
each consumes a prefix of the same stream, as far as its speed takes it; the results record
the steps, episodes and seconds used). Recipes (``--recipe``, :mod:`benchmarks.recipes`):
``published`` on real data, ``harness`` (the recipe before issue 12) on ``glyphs``.

Validation (``--val-points``/``--val-every``; on by default on real data): each method is
scored on the same seeded episodes of the **val** split at evenly spaced points of its
budget; the best-on-val weights are kept and tested, the curve (steps, episodes, seconds,
val accuracy) goes into results.json and ``curves.png``. Test episodes are re-drawn for
every method from the same seed; their fingerprints (split name, the sampler's chained hash
of class ids and image indices, and a SHA-256 of the decoded images) prove the methods saw
the same ones, and the leaderboard marks any disagreement as an error. Model initialisation
is seeded inside ``torch.random.fork_rng``, so global random state is left as it was.

Each finished (method, setting) is written at once and atomically under
``--output/records/``, keyed by a hash of everything that decides it (data set, splits and a
digest of their decoded images, setting, budgets, queries, seeds, device type, recipe and
hyperparameters) and of the code (a SHA-256 of the package's and the harness's source; the
git commit is recorded). A result made by other code is not reused unless ``--reuse-stale``
(then it is marked). Checkpoints are loaded with ``torch.load(weights_only=True)``.

Outputs under ``--output``: ``results.json``, ``results.csv``, ``leaderboard.md`` (with the
published numbers and the recipes' sources), ``accuracy.png`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import io
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.append(str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from mmnet_plugin.arguments import (
    add_common_arguments,
    format_setting,
    non_negative_int,
    positive_int,
    range_arg,
    resolve_device,
    settings_arg,
)
from mmnet_plugin.data import DataNotFoundError, load_dataset
from mmnet_plugin.episodes import EpisodeSampler
from mmnet_plugin.evaluation import evaluate
from mmnet_plugin.runtime import tune_cpu_allocator

from mmnet_plugin.bench.common import (
    CheckpointError,
    ImageDigest,
    PeakMemory,
    Stopwatch,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    code_identity,
    config_key,
    dataset_digest,
    derive_seed,
    device_description,
    safe_torch_load,
    stream_fingerprint,
    versions,
)
from mmnet_plugin.bench.methods import METHODS, Method, MethodContext, MethodUnavailable, mixed_ranges, resolve_method
from mmnet_plugin.bench.published import PUBLISHED, PUBLISHED_SETTINGS, SOURCES, published_for
from mmnet_plugin.bench.recipes import DEFAULT_MIN_STEPS, RecipeError, default_recipe, parse_recipe_spec, rule_batch

__all__ = ["main", "build_parser", "DEFAULT_METHODS", "BARE", "paper_preset", "fingerprint_checks"]

HARNESS_VERSION = 2
FORMAT = "mmnet-plugin/benchmark/2"

#: the methods a bare command runs (mmnet-mixed is opt-in: at the bare budget its 2-20-way
#: training episodes would take as long as the other four methods together)
DEFAULT_METHODS = ("mmnet", "maml", "protonet", "matchingnet")

#: the bare command's budget (measured to fit about 3 minutes on 2 CPU cores: see README)
BARE = {"settings": [(5, 1)], "train_episodes": 160, "test_episodes": 600, "train_split": "train"}

#: validation defaults on real data (glyphs and --paper: none)
VAL_POINTS = 8
VAL_EPISODES = 100


def paper_preset(dataset: str) -> Dict[str, Any]:
    """``--paper``: the paper's settings and 500 test episodes (section 4.2), trained on
    train + validation classes with a stated budget (no validation: its classes are trained
    on). The paper gives no total number of iterations, so the budget is ours: 640,000
    episodes on Omniglot/glyphs (MM-Net: 40,000 steps of 16, two learning-rate halvings;
    MAML: 20,000 meta-steps of 32) and 160,000 on miniImageNet (MM-Net: 40,000 steps of 4)."""
    settings = PUBLISHED_SETTINGS["miniimagenet" if dataset == "miniimagenet" else "omniglot"]
    return {"settings": list(settings), "test_episodes": 500, "train_split": "trainval",
            "train_episodes": 160_000 if dataset == "miniimagenet" else 640_000}


# ====================================================================== arguments
class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _methods_arg(text: str) -> List[str]:
    specs = [t.strip() for t in text.split(",") if t.strip()]
    if not specs:
        raise argparse.ArgumentTypeError("no methods given; e.g. --methods mmnet,maml")
    names = []
    for spec in specs:
        try:
            names.append(resolve_method(spec))        # a built-in name, module:Class or an entry point
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return list(dict.fromkeys(names))


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}; e.g. 120")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The harness's argument parser (shares ``--dataset --data-root --queries --seed
    --device`` with the ``mmnet`` command)."""
    p = _OneLineParser(
        prog="benchmarks/run.py",
        description="Train and test MM-Net, MAML, ProtoNet and Matching Networks on the same episodes.",
    )
    add_common_arguments(p)
    p.add_argument("--methods", type=_methods_arg, default=list(DEFAULT_METHODS),
                   help=f"comma-separated, from: {', '.join(METHODS)}, or your own as module:Class or an entry point "
                        f"of the group mmnet_plugin.methods (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--settings", type=settings_arg, default=None,
                   help=f"C-way k-shot settings, e.g. 5w1s,20w5s (default {format_setting(*BARE['settings'][0])})")
    p.add_argument("--recipe", default=None,
                   help="training recipe: NAME for every method and/or METHOD=NAME items, e.g. "
                        "'published' or 'published,maml=harness' (default: published on real data, harness on "
                        "glyphs; see benchmarks/recipes.py)")
    p.add_argument("--train-episodes", type=positive_int, default=None,
                   help=f"training episodes per method and setting, the same for every method "
                        f"(default {BARE['train_episodes']}; with --budget-seconds: a cap, default none)")
    p.add_argument("--budget-seconds", type=positive_float, default=None,
                   help="equal compute: every method trains this many seconds per setting on the same device "
                        "(validation and testing not counted); steps, episodes and seconds used are recorded")
    p.add_argument("--min-steps", type=non_negative_int, default=DEFAULT_MIN_STEPS,
                   help=f"budget rule for every method (published recipes, --budget-seconds): batches shrink so "
                        f"the budget gives at least this many optimiser steps (default {DEFAULT_MIN_STEPS}; 0: off)")
    p.add_argument("--protonet-train-ways", type=positive_int, default=None,
                   help="ProtoNet's training way under the published recipe (Snell et al.: 60 on Omniglot; "
                        "default: the setting's way, on the shared stream)")
    p.add_argument("--val-points", type=non_negative_int, default=None,
                   help=f"validate on the val split at this many evenly spaced points of the budget and test the "
                        f"best-on-val weights (default {VAL_POINTS} on real data, 0 on glyphs and with --paper)")
    p.add_argument("--val-every", type=non_negative_int, default=None,
                   help="validate every N optimiser steps instead (and at the end)")
    p.add_argument("--val-episodes", type=positive_int, default=VAL_EPISODES,
                   help=f"val episodes per validation (default {VAL_EPISODES}); the same episodes every time")
    p.add_argument("--test-episodes", type=positive_int, default=None,
                   help=f"test episodes per setting (default {BARE['test_episodes']})")
    p.add_argument("--train-split", default=None,
                   help="training split: train (default), or trainval without validation (--paper)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's settings, 500 test episodes, train+val classes and a stated budget "
                        "(640,000 training episodes on Omniglot, 160,000 on miniImageNet); explicit options win")
    p.add_argument("--mixed-ways", type=range_arg, default=None,
                   help="C range of mmnet-mixed's training episodes (default 2-20; miniImageNet 2-5; "
                        "widened to cover --settings)")
    p.add_argument("--mixed-shots", type=range_arg, default=None,
                   help="k range of mmnet-mixed's training episodes (default 1-5, widened to cover --settings)")
    p.add_argument("--output", default=None,
                   help="results folder; rerunning into it resumes (default results/benchmark-<dataset>)")
    p.add_argument("--reuse-stale", action="store_true",
                   help="reuse finished results made by other code (same configuration); they are marked")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core); 1 is much faster "
                        "on a machine that other jobs keep busy")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def resolve_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Fill what the user left out from the preset (``--paper``) or the bare defaults."""
    preset = paper_preset(args.dataset) if args.paper else BARE
    out: Dict[str, Any] = {}
    for key in ("settings", "train_episodes", "test_episodes", "train_split"):
        v = getattr(args, key)
        out[key] = preset[key] if v is None else v
    if args.budget_seconds is not None and args.train_episodes is None:
        out["train_episodes"] = None  # seconds decide; no episode cap
    if args.val_every is not None:
        out["val_every"], out["val_points"] = args.val_every, 0
    else:
        default_points = 0 if (args.dataset == "glyphs" or args.paper) else VAL_POINTS
        out["val_every"] = 0
        out["val_points"] = default_points if args.val_points is None else args.val_points
    out["validate"] = bool(out["val_every"] or out["val_points"])
    return out


def _check_output(output: Path) -> Optional[str]:
    """``None`` when ``output`` can be created and written, else a one-line reason."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=str(output))
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return (f"--output {output} is not writable ({exc.strerror or type(exc).__name__}); "
                "choose a folder you can write to")
    return None


# ====================================================================== result store
class ResultStore:
    """Finished records under ``<output>/records/`` (one JSON file each, written
    atomically), and the summaries rewritten after each one.

    A record is reused when its key matches (same configuration and code). Records of the
    same configuration made by other code are counted in :attr:`other_code` and reused only
    with ``reuse_stale`` (then marked ``reused_stale_code``)."""

    def __init__(self, output: Path, run_info: Dict[str, Any], run_key: str, config_key_nocode: str,
                 reuse_stale: bool = False):
        self.output = output
        self.records_dir = output / "records"
        self.run_info = run_info
        self.run_key = run_key
        self.reuse_stale = reuse_stale
        self.records: Dict[str, Dict[str, Any]] = {}  # key -> record (status ok)
        self.other_code: Dict[str, Dict[str, Any]] = {}  # key_nocode -> record made by other code
        self.failed: List[Dict[str, Any]] = []
        self.stale = 0
        if self.records_dir.is_dir():
            for f in sorted(self.records_dir.glob("*.json")):
                try:
                    rec = json.loads(f.read_text())
                except (OSError, ValueError):
                    print(f"note: ignoring unreadable record {f}", file=sys.stderr)
                    continue
                if not isinstance(rec, dict) or rec.get("status") != "ok" or "key" not in rec:
                    continue
                if rec.get("run_key") == run_key:
                    self.records[rec["key"]] = rec
                elif rec.get("config_key") == config_key_nocode and "key_nocode" in rec:
                    self.other_code[rec["key_nocode"]] = rec
                else:
                    self.stale += 1

    def done(self, key: str, key_nocode: Optional[str] = None) -> Optional[Dict[str, Any]]:
        rec = self.records.get(key)
        if rec is None and self.reuse_stale and key_nocode is not None and key_nocode in self.other_code:
            rec = dict(self.other_code[key_nocode], reused_stale_code=True)
            self.records[rec["key"]] = rec
        return rec

    def conflicting(self, method: str, setting: str, key: str) -> List[Dict[str, Any]]:
        """Finished records of the same run configuration, method and setting whose method
        configuration differs (e.g. changed hyperparameters): they are not reused."""
        return [r for r in self.records.values()
                if r["method"] == method and r["setting"] == setting and r["key"] != key]

    def retire(self, method: str, setting: str, key: str) -> List[Dict[str, Any]]:
        """Drop the :meth:`conflicting` records from this run's results (their files stay)."""
        old = self.conflicting(method, setting, key)
        for r in old:
            self.records.pop(r["key"], None)
        return old

    def add(self, record: Dict[str, Any]) -> None:
        if record["status"] == "ok":
            # a newer configuration of the same method and setting replaces the older one
            for old in self.conflicting(record["method"], record["setting"], record["key"]):
                self.records.pop(old["key"], None)
            self.records[record["key"]] = record
            name = f"{record['method']}__{record['setting']}__{record['key']}.json"
            atomic_write_json(self.records_dir / name, record)
        else:
            self.failed = [f for f in self.failed
                           if (f["method"], f["setting"]) != (record["method"], record["setting"])]
            self.failed.append(record)

    def current(self) -> List[Dict[str, Any]]:
        """The records of this run configuration, in setting then method order."""
        order = {m: i for i, m in enumerate(METHODS)}
        latest: Dict[Tuple[str, str], Dict[str, Any]] = {}
        for r in sorted(self.records.values(), key=lambda r: r.get("finished_at", "")):
            latest[(r["method"], r["setting"])] = r  # one row per (method, setting): the newest
        for r in self.failed:
            latest[(r["method"], r["setting"])] = r
        recs = list(latest.values())
        return sorted(recs, key=lambda r: (r["ways"], r["shots"], order.get(r["method"], 99), r["method"]))


# ====================================================================== checks
def _common_mark(recs: Sequence[Dict[str, Any]]) -> Tuple[Optional[int], List[Optional[str]]]:
    """The largest episode count at which every record has a training-fingerprint mark,
    and each record's fingerprint there (records without marks: their final one, when all
    trained on the same number of episodes)."""
    counts = {r.get("train_episodes") for r in recs}
    if len(counts) == 1 or not all(r.get("train_fingerprint_marks") for r in recs):
        return (counts.pop() if len(counts) == 1 else None), [r["train_fingerprint"] for r in recs]
    common = set.intersection(*(set(int(k) for k in r["train_fingerprint_marks"]) for r in recs))
    if not common:
        return None, [r["train_fingerprint"] for r in recs]
    n = max(common)
    return n, [r["train_fingerprint_marks"][str(n)] for r in recs]


def fingerprint_checks(records: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per setting: do the test fingerprints agree across methods, and the training
    fingerprints across the shared-stream methods (at the largest episode count they all
    reached, when a time budget gave them different counts)? Marks each record's ``check``."""
    out: Dict[str, Dict[str, Any]] = {}
    by_setting: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok":
            by_setting.setdefault(r["setting"], []).append(r)
    for setting, recs in by_setting.items():
        test_fps = [r["test_fingerprint"] for r in recs]
        shared = [r for r in recs if r.get("shared_stream", True)]
        at, train_fps = _common_mark(shared) if shared else (None, [])
        test_ref = max(set(test_fps), key=test_fps.count)
        train_ref = max(set(train_fps), key=train_fps.count) if train_fps else None
        shared_fp = {id(r): fp for r, fp in zip(shared, train_fps)}
        for r in recs:
            problems = []
            if r["test_fingerprint"] != test_ref:
                problems.append("ERROR: test episodes differ from the other methods'")
            if id(r) in shared_fp and train_ref is not None and shared_fp[id(r)] != train_ref:
                problems.append("ERROR: training episodes differ from the other methods'")
            r["check"] = "; ".join(problems) if problems else "ok"
        out[setting] = {
            "test_fingerprint": test_ref,
            "test_fingerprints_agree": len(set(test_fps)) == 1,
            "train_fingerprint": train_ref,
            "train_compared_at_episodes": at,
            "train_fingerprints_agree": len(set(train_fps)) <= 1,
            "methods": [r["method"] for r in recs],
        }
    return out


# ====================================================================== formatting
def _fmt_acc(r: Dict[str, Any]) -> str:
    if r["status"] != "ok":
        return "FAILED"
    return f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}"


def _fmt(v: Any, spec: str, none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def _selected(r: Dict[str, Any]) -> str:
    b = r.get("best_val")
    if not b:
        return "last"
    text = f"{100 * b['val_accuracy']:.1f} @ {b['episodes']} ep"
    vc = r.get("val_choice")
    if vc:
        chosen = next(c for c in vc["candidates"] if c["choice"] == vc["chosen"])
        text += f"; test-time {'x'.join(str(v) for v in vc['chosen'].values())}: {100 * chosen['val_accuracy']:.1f}"
    return text


_COLUMNS = ("method", "recipe", "setting", "accuracy % (95% CI)", "val % @ selected", "test ep", "train ep",
            "steps", "ep/step", "train s", "val s", "test ms/ep", "peak MiB", "params", "check")


def _row(r: Dict[str, Any]) -> List[str]:
    if r["status"] != "ok":
        return [r["label"], r.get("recipe", "-"), r["setting"], "FAILED"] + ["-"] * 10 + [r.get("error", "")]
    check = r.get("check", "ok") + (" (stale code, --reuse-stale)" if r.get("reused_stale_code") else "")
    return [
        r["label"], r.get("recipe", "-"), r["setting"], _fmt_acc(r), _selected(r), str(r["test_episodes"]),
        str(r["train_episodes"]), str(r["train_steps"]), str(r["episodes_per_step"]),
        _fmt(r["train_time_s"], ".1f"), _fmt(r.get("validation_time_s"), ".1f"),
        _fmt(r["test_ms_per_episode"], ".1f"), _fmt(r["peak_memory_mib"], ".0f"),
        f"{r['parameters']:,}", check,
    ]


def leaderboard_text(records: Sequence[Dict[str, Any]]) -> str:
    """The terminal leaderboard (fixed-width)."""
    rows = [list(_COLUMNS)] + [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) if i < 3 else row[i].rjust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells) + "  " + row[-1])
        if j == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def _budget_words(run: Dict[str, Any]) -> str:
    parts = []
    if run.get("budget_seconds") is not None:
        parts.append(f"{run['budget_seconds']:g} s of training per method and setting (equal compute; "
                     "validation and testing not counted)")
    if run.get("train_episodes") is not None:
        parts.append(f"{run['train_episodes']:,} training episodes" + (" at most" if parts else ""))
    return ", ".join(parts)


def leaderboard_markdown(run: Dict[str, Any], records: Sequence[Dict[str, Any]],
                         checks: Dict[str, Dict[str, Any]]) -> str:
    """leaderboard.md: our results beside the published numbers, with the protocol."""
    ds = run["dataset"]
    out = io.StringIO()
    w = out.write
    code = run.get("code", {})
    w(f"# Benchmark: {ds}\n\n")
    w(f"{run['test_episodes']} test episodes per setting, {run['queries']} queries per class, "
      f"mean accuracy with the 95% confidence interval `1.96 * std / sqrt(episodes)`. "
      f"Budget: {_budget_words(run)}, on the `{run['train_split']}` split "
      f"(one seeded stream per setting, consumed in order by every method but `mmnet-mixed`). ")
    v = run.get("validation") or {}
    if v.get("enabled"):
        sched = (f"every {v['every_steps']} steps" if v.get("every_steps") else
                 f"at {v['points']} evenly spaced points of the budget")
        w(f"Validation on {v['episodes']} episodes of the `{v['split']}` split {sched} and at the end; the "
          "accuracy column is the **test accuracy of the best-on-val weights** (the val column: their val "
          "accuracy and where they were taken). ")
    else:
        w("No validation: the last weights are tested. ")
    w(f"Seed {run['seed']}, device {run['device']['type']} ({run['device']['name']}), "
      f"commit {code.get('commit') or 'none'}{' (dirty)' if code.get('dirty') else ''}, "
      f"source sha256 `{code.get('source_sha256', '-')}`.\n\n")
    if ds == "glyphs":
        w("`glyphs` is the embedded synthetic stand-in for Omniglot: the published column shows "
          "Omniglot numbers for orientation only; they are not comparable.\n\n")
    w("| method | recipe | setting | ours: test accuracy % | published % (as reported) | val % @ selected "
      "| test ep | train ep | steps | ep/step | train s | val s | test ms/ep | peak MiB | params | check |\n")
    w("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    for r in records:
        pub = published_for(r["method"], ds, (r["ways"], r["shots"]))
        pub_txt = "-" if pub is None else (
            f"{pub[1]:.2f}" + (f" +- {pub[2]:.2f}" if pub[2] is not None else "") + f" ({pub[0]})")
        c = _row(r)
        w(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} | {pub_txt} | " + " | ".join(c[4:14]) + f" | {c[14]} |\n")
    w("\n## Episode fingerprints\n\n")
    w("Fingerprints cover the split name, the sampler's chained hash of class ids and image indices, and a "
      "SHA-256 of the decoded images. With a time budget the methods consumed different lengths of the same "
      "stream; their training fingerprints are compared at the largest power-of-two episode count all reached.\n\n")
    w("| setting | test fingerprint | test agree | training fingerprint (shared stream) | compared at episode "
      "| training agree |\n")
    w("|---|---|---|---|---:|---|\n")
    for setting, c in checks.items():
        w(f"| {setting} | `{c['test_fingerprint'][:16]}` | {'yes' if c['test_fingerprints_agree'] else '**NO (error)**'} "
          f"| `{(c['train_fingerprint'] or '-')[:16]}` | {c.get('train_compared_at_episodes') or '-'} "
          f"| {'yes' if c['train_fingerprints_agree'] else '**NO (error)**'} |\n")
    w("\n## Methods and recipes\n\n")
    seen = set()
    for r in records:
        if r["method"] in seen:
            continue
        seen.add(r["method"])
        w(f"- **{r['label']}** (`{r['method']}`): {r.get('notes', '')}")
        ri = r.get("recipe_info") or {}
        if ri:
            w(f" Recipe `{ri.get('name')}` (source {ri.get('source')}): {ri.get('summary')}")
        if r["status"] == "ok":
            w(f" Hyperparameters: `{json.dumps(r['hyperparameters'])}`.")
        w("\n")
    w("\nBatches: the recipe's episodes a step, shrunk by the budget rule (at least "
      f"{run.get('min_steps')} optimiser steps; in seconds mode estimated from the second step's time per episode) "
      "where it applies; the ep/step column is the batch used. Peak memory: " +
      ("peak CUDA memory allocated during the job." if run["device"]["type"] == "cuda" else
       "the peak resident memory the job added to the process (the kernel's high-water mark), including data "
       "it was first to load.") + " Train s: seconds of training (drawing episodes and optimiser steps; "
      "validation, fingerprints and checkpoints not counted), the quantity `--budget-seconds` fixes.\n")
    t = run.get("timing")
    if t:
        w(f"\nHarness overhead (this process): {t['harness_s']:.1f} s of {t['wall_s']:.1f} s wall "
          f"({100 * t['harness_share']:.2f}%); training {t['train_s']:.1f} s, validation {t['validation_s']:.1f} s, "
          f"testing {t['test_s']:.1f} s, one-time library imports {t['imports_s']:.1f} s.\n")
    w("\n## Published numbers (as reported)\n\n")
    w("| method | data set | " + " | ".join(format_setting(*s) for s in PUBLISHED_SETTINGS["omniglot"]) + " | source |\n")
    w("|---|---|" + "---:|" * len(PUBLISHED_SETTINGS["omniglot"]) + "---|\n")
    for entry in PUBLISHED:
        for pds in ("omniglot", "miniimagenet"):
            vals = entry.get(pds)
            if not vals:
                continue
            cells = []
            for s in PUBLISHED_SETTINGS["omniglot"]:
                val = vals.get(s)  # type: ignore[union-attr]
                cells.append("-" if val is None else f"{val[0]:.2f}" + (f" +- {val[1]:.2f}" if val[1] is not None else ""))
            w(f"| {entry['row']} | {pds} | " + " | ".join(cells) + f" | {entry['source']}: {entry['checked']} |\n")
    w("\nSources:\n\n")
    for k, val in SOURCES.items():
        w(f"- {k}: {val}\n")
    w("\nThe paper's MM-Net rows are its mixed-strategy model (our `mmnet-mixed`); MM-Net- is trained "
      "without it (our `mmnet`). Published figures come from the authors' own budgets, which the "
      "MM-Net paper does not state; ours state theirs above.\n")
    return out.getvalue()


_CSV_FIELDS = ("method", "label", "recipe", "setting", "ways", "shots", "status", "accuracy", "ci95", "test_episodes",
               "queries", "train_episodes", "train_steps", "episodes_per_step", "train_time_s", "validation_time_s",
               "budget_seconds", "best_val_accuracy", "best_val_episodes", "best_val_seconds",
               "train_episodes_per_s", "test_ms_per_episode", "peak_memory_mib", "parameters",
               "train_fingerprint", "test_fingerprint", "shared_stream", "check", "error", "key", "source_sha256")


def results_csv(records: Sequence[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {k: r.get(k, "") for k in _CSV_FIELDS}
        b = r.get("best_val") or {}
        row.update(best_val_accuracy=b.get("val_accuracy", ""), best_val_episodes=b.get("episodes", ""),
                   best_val_seconds=b.get("seconds", ""), source_sha256=(r.get("code") or {}).get("source_sha256", ""))
        writer.writerow(row)
    return buf.getvalue()


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no plot (matplotlib is missing: pip install matplotlib)", file=sys.stderr)
        return None
    return plt


def plot_png(run: Dict[str, Any], records: Sequence[Dict[str, Any]]) -> Optional[bytes]:
    """Accuracy with 95% intervals per setting and method, as PNG bytes (``None`` without
    matplotlib or results)."""
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    settings = list(dict.fromkeys(r["setting"] for r in ok))
    methods = list(dict.fromkeys(r["method"] for r in ok))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(settings) + 5), 4.0), dpi=110)
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        xs, ys, es, label = [], [], [], m
        for r in ok:
            if r["method"] == m:
                xs.append(settings.index(r["setting"]) - 0.4 + width * (i + 0.5))
                ys.append(100 * r["accuracy"])
                es.append(100 * r["ci95"])
                label = r["label"]
        ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=4, label=label)
    for j, setting in enumerate(settings):
        ways = next(r["ways"] for r in ok if r["setting"] == setting)
        ax.hlines(100.0 / ways, j - 0.45, j + 0.45, colors="grey", linestyles="dashed", linewidth=1,
                  label="chance" if j == 0 else None)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(settings)
    ax.set_ylabel("test accuracy % (95% CI)")
    ax.set_title(f"{run['dataset']}: {_budget_words(run)[:70]}, {run['test_episodes']} test episodes", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def curves_png(run: Dict[str, Any], records: Sequence[Dict[str, Any]]) -> Optional[bytes]:
    """Val accuracy against training seconds (left) and training episodes (right), one row
    per setting, every method; PNG bytes, or ``None`` without curves or matplotlib."""
    ok = [r for r in records if r["status"] == "ok" and r.get("curve")]
    if not ok:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    settings = list(dict.fromkeys(r["setting"] for r in ok))
    fig, axes = plt.subplots(len(settings), 2, figsize=(11.0, 3.4 * len(settings)), dpi=100, squeeze=False)
    for i, setting in enumerate(settings):
        for r in ok:
            if r["setting"] != setting:
                continue
            xs_s = [p["seconds"] for p in r["curve"]]
            xs_e = [p["episodes"] for p in r["curve"]]
            ys = [100 * p["val_accuracy"] for p in r["curve"]]
            label = f"{r['label']} [{r.get('recipe', '-')}]"
            axes[i][0].plot(xs_s, ys, marker="o", markersize=3, label=label)
            axes[i][1].plot(xs_e, ys, marker="o", markersize=3, label=label)
            b = r.get("best_val")
            if b:
                axes[i][0].plot([b["seconds"]], [100 * b["val_accuracy"]], marker="*", markersize=10, color="black")
                axes[i][1].plot([b["episodes"]], [100 * b["val_accuracy"]], marker="*", markersize=10, color="black")
        for j, xl in enumerate(("training seconds", "training episodes")):
            ax = axes[i][j]
            ax.set_xlabel(xl)
            ax.set_ylabel(f"{setting} val accuracy %")
            ax.grid(alpha=0.3)
            if j == 1:
                ax.set_xscale("log")
        axes[i][1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{run['dataset']}: validation curves (star: the weights tested)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_summaries(output: Path, run: Dict[str, Any], store: ResultStore, plot: bool = False) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Rewrite results.json, results.csv and leaderboard.md (and the plots) atomically."""
    records = store.current()
    checks = fingerprint_checks(records)
    run = dict(run, updated=_now())
    errors = [f"{r['method']} {r['setting']}: {r['error']}" for r in records if r["status"] != "ok"]
    errors += [f"{r['method']} {r['setting']}: {r['check']}" for r in records
               if r["status"] == "ok" and r.get("check", "ok") != "ok"]
    atomic_write_json(output / "results.json",
                      {"format": FORMAT, "run": run, "records": records, "checks": checks, "errors": errors})
    atomic_write_text(output / "results.csv", results_csv(records))
    atomic_write_text(output / "leaderboard.md", leaderboard_markdown(run, records, checks))
    if plot:
        png = plot_png(run, records)
        if png is not None:
            atomic_write_bytes(output / "accuracy.png", png)
        png = curves_png(run, records)
        if png is not None:
            atomic_write_bytes(output / "curves.png", png)
    return records, checks


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ====================================================================== one job
class Job:
    """Everything the harness knows about one (method, setting)."""

    def __init__(self, method_cls: type, ways: int, shots: int, run: Dict[str, Any], ctx: MethodContext,
                 train_stream: Dict[str, Any], test_stream: Dict[str, Any], val_stream: Optional[Dict[str, Any]],
                 init_seed: int, recipe: str, options: Dict[str, Any]):
        self.cls = method_cls
        self.ways, self.shots = ways, shots
        self.setting = format_setting(ways, shots)
        self.run = run
        self.ctx = ctx
        self.method: Method = method_cls(ctx, recipe=recipe, options=options)
        self.recipe = recipe
        override = self.method.train_stream_override()
        self.shared_stream = bool(method_cls.shared_stream and override is None)
        if override:
            train_stream = dict(train_stream, **{k: ([v, v] if k in ("ways", "shots") else v)
                                                 for k, v in override.items()})
        self.train_stream = train_stream
        self.test_stream = test_stream
        self.val_stream = val_stream
        self.init_seed = init_seed
        self.hyperparameters = self.method.hyperparameters()
        self.rule_applies = bool(run["min_steps"]) and (recipe != "harness" or run["budget_seconds"] is not None)
        train_config = {
            "harness": HARNESS_VERSION, "method": method_cls.name, "recipe": recipe,
            "hyperparameters": self.hyperparameters,
            "ctx": {"dataset": ctx.dataset, "ways": ctx.ways, "shots": ctx.shots, "in_channels": ctx.in_channels,
                    "image_size": ctx.image_size, "device_type": ctx.device.type},
            "train_stream": train_stream, "init_seed": init_seed, "package": run["versions"].get("mmnet-plugin"),
            "budget": {"episodes": run["train_episodes"], "seconds": run["budget_seconds"],
                       "min_steps": run["min_steps"] if self.rule_applies else 0},
            "validation": {k: run["validation"][k] for k in ("every_steps", "points", "episodes")} | {"stream": val_stream},
            "data": run["data_digests"],
        }
        self.train_key_nocode = config_key(train_config)
        self.train_key = config_key({"config": self.train_key_nocode, "code": run["code"]["source_sha256"]})
        self.key_nocode = config_key({"config_key": run["config_key"], "train_key": self.train_key_nocode,
                                      "setting": [ways, shots], "test_stream": test_stream})
        self.key = config_key({"run_key": run["run_key"], "train_key": self.train_key,
                               "setting": [ways, shots], "test_stream": test_stream})


def _sampler(ds: Any, stream: Dict[str, Any], episodes: Optional[int] = None) -> EpisodeSampler:
    w, k = stream["ways"], stream["shots"]
    ways = w if isinstance(w, int) else (tuple(w) if w[0] != w[1] else w[0])
    shots = k if isinstance(k, int) else (tuple(k) if k[0] != k[1] else k[0])
    return EpisodeSampler(ds, ways=ways, shots=shots, queries=stream["queries"], seed=stream["seed"], episodes=episodes)


class _Digesting:
    """Iterate a sampler's episodes while hashing their decoded images (time kept apart)."""

    def __init__(self, sampler: EpisodeSampler):
        self.sampler = sampler
        self.digest = ImageDigest()
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        for ep in self.sampler:
            t0 = time.perf_counter()
            self.digest.update(ep)
            self.seconds += time.perf_counter() - t0
            yield ep


def _state_copy(m: Method) -> Dict[str, Any]:
    return copy.deepcopy(m.state_dict())


def _validate(m: Method, val_ds: Any, stream: Dict[str, Any], device: torch.device) -> Tuple[float, float]:
    result = evaluate(m.predictor(), _sampler(val_ds, stream, stream["episodes"]), device=device)
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
    return {"chosen": best["choice"], "candidates": candidates, "split": "val",
            "seconds": time.perf_counter() - t0}


def _train(job: Job, train_ds: Any, val_ds: Any, progress: bool) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Consume the job's training stream in the method's batch size until the budget is
    spent, validating on the val split when asked; return the stats and the best-on-val
    state (``None``: the last weights are the ones to test)."""
    m = job.method
    run = job.run
    s = job.train_stream
    sampler = _sampler(train_ds, s)
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

        bar = tqdm(total=cap if budget_s is None else None, desc=f"{job.cls.name} {job.setting} train",
                   unit="ep", leave=False, dynamic_ncols=True)
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
        point = {"step": steps, "episodes": sampler.drawn, "seconds": round(train_time, 3),
                 "val_accuracy": acc, "val_ci95": ci}
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
            if bar is not None:
                bar.update(n)
                bar.set_postfix(loss=f"{loss:.3f}")
            if probing and steps == 2:
                per_episode = sw.seconds + draw  # the second 1-episode step (the first warms up)
                estimate = budget_s / per_episode if per_episode > 0 else None
                if cap is not None and estimate is not None:
                    estimate = min(estimate, cap)
                m.batch_override = rule_batch(recipe_batch, estimate, run["min_steps"])
                rule.update(probe_seconds_per_episode=per_episode, episode_budget=estimate,
                            probe_steps="2 steps of 1 episode")
                probing = False
            done = (cap is not None and sampler.drawn >= cap) or (budget_s is not None and train_time >= budget_s)
            if v["enabled"] and not done:
                if v["every_steps"] and steps % v["every_steps"] == 0:
                    validate_now()
                elif v["points"]:
                    if progress_fraction() >= next_point / v["points"]:
                        validate_now()
                        while next_point / v["points"] <= progress_fraction():
                            next_point += 1
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
    stats = {
        "train_episodes": sampler.drawn, "train_steps": steps, "episodes_per_step": int(m.episodes_per_step),
        "train_fingerprint": fp, "train_index_fingerprint": index_fp, "train_image_sha256": digest.hexdigest(),
        "train_fingerprint_marks": marks,
        "train_time_s": train_time, "train_step_time_s": step_time,
        "train_wall_s": time.perf_counter() - t_wall, "validation_time_s": val_time, "train_harness_s": overhead,
        "train_episodes_per_s": sampler.drawn / step_time if step_time > 0 else float("nan"),
        "train_loss_first": float(np.mean(losses[:k])), "train_loss_last": float(np.mean(losses[-k:])),
        "stop_reason": stop_reason, "budget_rule": rule,
        "curve": curve, "best_val": best,
        "tested_weights": ("best-on-val" if v["enabled"] else "last") +
                          (f" (step {best['step']} of {steps})" if best is not None else ""),
    }
    return stats, selected


_POW2 = frozenset(1 << i for i in range(40))


def run_job(job: Job, train_ds: Any, val_ds: Any, test_ds: Any, output: Path, progress: bool) -> Dict[str, Any]:
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
    load_start = _load_average()
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
                stats, best_state = _train(job, train_ds, val_ds, progress)
                if best_state is not None:
                    m.load_state_dict(best_state)  # test the best-on-val weights
                if job.val_stream is not None and m.val_choices():
                    stats["val_choice"] = _choose_on_val(m, val_ds, job.val_stream, device)
                    stats["validation_time_s"] += stats["val_choice"]["seconds"]
                t0 = time.perf_counter()
                atomic_torch_save({"state": m.state_dict(), "stats": stats}, ckpt)
                stats["checkpoint_s"] = time.perf_counter() - t0
            test = _Digesting(_sampler(test_ds, job.test_stream, job.test_stream["episodes"]))
            t0 = time.perf_counter()
            result = evaluate(m.predictor(), test, device=device, progress=progress,
                              desc=f"{job.cls.name} {job.setting} test")
            test_s = time.perf_counter() - t0 - test.seconds
    acc = np.asarray(result.per_episode)
    return {
        "status": "ok", "method": job.cls.name, "label": m.display_label(), "notes": job.cls.notes,
        "recipe": job.recipe, "recipe_info": m.recipe_info(),
        "setting": job.setting, "ways": job.ways, "shots": job.shots,
        "accuracy": result.accuracy, "ci95": result.ci95, "accuracy_std": float(acc.std()),
        "test_episodes": result.episodes, "queries": result.queries_per_class,
        "test_fingerprint": stream_fingerprint("test", result.fingerprint, test.digest.hexdigest()),
        "test_index_fingerprint": result.fingerprint, "test_image_sha256": test.digest.hexdigest(),
        "test_ms_per_episode": result.ms_per_episode, "test_time_s": test_s, "test_harness_s": test.seconds,
        **stats,
        "budget_seconds": job.run["budget_seconds"], "shared_stream": job.shared_stream,
        "peak_memory_mib": mem.mib, "memory_kind": mem.kind, "parameters": m.parameters(),
        "hyperparameters": job.hyperparameters, "train_stream": job.train_stream,
        "test_stream": job.test_stream, "val_stream": job.val_stream, "init_seed": job.init_seed,
        "key": job.key, "key_nocode": job.key_nocode, "train_key": job.train_key, "run_key": job.run["run_key"],
        "config_key": job.run["config_key"], "code": job.run["code"], "job_wall_s": time.perf_counter() - t_job,
        "load_average": {"start": load_start, "end": _load_average()},
        "finished_at": _now(), "check": "ok",
    }


def _load_average() -> Optional[List[float]]:
    """The machine's 1, 5 and 15-minute load averages (``None`` where unknown): a time
    budget means less compute on a machine that other jobs keep busy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _failed(job_or_cls: Any, setting: Tuple[int, int], error: str) -> Dict[str, Any]:
    cls = job_or_cls.cls if isinstance(job_or_cls, Job) else job_or_cls
    return {"status": "failed", "method": cls.name, "label": cls.label, "notes": cls.notes,
            "recipe": getattr(job_or_cls, "recipe", "-"),
            "setting": format_setting(*setting), "ways": setting[0], "shots": setting[1],
            "error": error, "finished_at": _now()}


# ====================================================================== main
def _image_shape(ds: Any) -> Tuple[int, int]:
    x = ds.load(np.asarray([0]))
    c, h, w = (int(v) for v in x.shape[1:])
    if h != w:
        raise ValueError(f"the harness needs square images; {type(ds).__name__} gives {h}x{w}")
    return c, h


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the harness; returns the exit status (0 all well, 1 a method failed or
    fingerprints disagree, 2 bad usage or missing data, 130 interrupted)."""
    t_start = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        recipes = parse_recipe_spec(args.recipe, args.methods, {n: list(c.RECIPES) for n, c in METHODS.items()},
                                    args.dataset)
    except RecipeError as exc:
        parser.error(str(exc))
    opts = resolve_options(args)
    if opts["validate"] and opts["train_split"] == "trainval":
        parser.error("validation scores the val split, whose classes --train-split trainval trains on; "
                     "use --train-split train, or --val-points 0 to test the last weights")
    if args.protonet_train_ways and "protonet" in args.methods and recipes.get("protonet") != "published":
        parser.error("--protonet-train-ways needs ProtoNet's published recipe (--recipe protonet=published)")
    output = Path(args.output) if args.output else Path("results") / f"benchmark-{args.dataset}"
    problem = _check_output(output)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    tune_cpu_allocator()
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv, output, device, opts, recipes, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _check_settings(settings: Sequence[Tuple[int, int]], splits: Dict[str, Any], queries: int,
                    extra: Sequence[Tuple[str, Dict[str, Any]]]) -> Optional[str]:
    """Every setting must be drawable from every split it needs: a one-line reason if not."""
    for w, k in settings:
        for split, ds in splits.items():
            try:
                EpisodeSampler(ds, ways=w, shots=k, queries=queries, seed=0)
            except ValueError as exc:
                return f"--settings {format_setting(w, k)}: the {split} split cannot give these episodes: {exc}"
    for what, stream in extra:
        try:
            _sampler(splits["train"], stream)
        except ValueError as exc:
            return f"{what}: the train split cannot give these episodes: {exc}"
    return None


def _main(args: argparse.Namespace, argv: Optional[Sequence[str]], output: Path, device: torch.device,
          opts: Dict[str, Any], recipes: Dict[str, str], t_start: float) -> int:
    progress = not args.no_progress
    settings: List[Tuple[int, int]] = opts["settings"]
    val_split = "val" if opts["validate"] else None

    try:
        train_ds = load_dataset(args.dataset, split=opts["train_split"], data_root=args.data_root)
        val_ds = load_dataset(args.dataset, split=val_split, data_root=args.data_root) if val_split else None
        test_ds = load_dataset(args.dataset, split="test", data_root=args.data_root)
    except (DataNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    in_channels, image_size = _image_shape(test_ds)

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
        extra.append(("mmnet-mixed's stream", {"ways": list(mixed_w), "shots": list(mixed_k),
                                               "queries": args.queries, "seed": 0}))
    if args.protonet_train_ways and "protonet" in args.methods:
        for w, k in settings:
            extra.append((f"--protonet-train-ways {args.protonet_train_ways} at {format_setting(w, k)}",
                          {"ways": args.protonet_train_ways, "shots": k, "queries": 5, "seed": 0}))
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
    digests = {"train": dataset_digest(train_ds, opts["train_split"], probe=256),
               "test": dataset_digest(test_ds, "test", probe=256)}
    if val_ds is not None:
        digests["val"] = dataset_digest(val_ds, "val", probe=256)
    validation = {"enabled": opts["validate"], "split": val_split, "every_steps": opts["val_every"],
                  "points": opts["val_points"], "episodes": args.val_episodes if opts["validate"] else 0}
    run: Dict[str, Any] = {
        "command": [Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv),
        "dataset": args.dataset, "train_split": opts["train_split"], "val_split": val_split, "test_split": "test",
        "image_size": image_size, "in_channels": in_channels,
        "settings": [format_setting(*s) for s in settings], "methods": list(args.methods),
        "recipes": recipes, "default_recipe": default_recipe(args.dataset),
        "train_episodes": opts["train_episodes"], "budget_seconds": args.budget_seconds, "min_steps": args.min_steps,
        "protonet_train_ways": args.protonet_train_ways,
        "validation": validation, "test_episodes": opts["test_episodes"],
        "queries": args.queries, "seed": args.seed, "preset": "paper" if args.paper else "bare",
        "device": device_description(device), "versions": versions(), "git": {k: code[k] for k in ("commit", "dirty")},
        "code": code, "data_digests": digests, "harness_version": HARNESS_VERSION, "started": _now(),
    }
    run["config_key"] = config_key(
        {k: run[k] for k in ("dataset", "train_split", "val_split", "test_split", "image_size", "train_episodes",
                             "budget_seconds", "min_steps", "test_episodes", "queries", "seed", "data_digests")}
        | {"validation": {k: validation[k] for k in ("every_steps", "points", "episodes")},
           "device_type": device.type, "harness": HARNESS_VERSION})
    run["run_key"] = config_key({"config": run["config_key"], "code": code["source_sha256"]})
    too_big = [format_setting(w, s) for w, s in settings if w > mixed_w[1] or s > mixed_k[1]]
    if too_big and "mmnet-mixed" in args.methods:
        print(f"note: mmnet-mixed trains on {mixed_w[0]}-{mixed_w[1]} ways and {mixed_k[0]}-{mixed_k[1]} shots "
              f"but is tested on {', '.join(too_big)} too")
    run["seeds"] = {format_setting(w, s): {"train": derive_seed(args.seed, "train", w, s),
                                           "val": derive_seed(args.seed, "val", w, s),
                                           "test": derive_seed(args.seed, "test", w, s)} for w, s in settings}
    run["seeds"]["init"] = derive_seed(args.seed, "init")
    run["seeds"]["mixed_train"] = derive_seed(args.seed, "mixed")
    run["mixed_stream"] = {"ways": list(mixed_w), "shots": list(mixed_k)}

    store = ResultStore(output, run, run["run_key"], run["config_key"], reuse_stale=args.reuse_stale)
    budget = _budget_words(run)
    print(f"benchmark: {args.dataset} ({opts['train_split']} -> test, {in_channels}x{image_size}x{image_size}), "
          f"settings {','.join(run['settings'])}, {budget}, {opts['test_episodes']} test episodes, "
          f"{args.queries} queries/class, seed {args.seed}, device {device} ({run['device']['name']}, "
          f"{torch.get_num_threads()} threads)")
    print(f"methods: {', '.join(f'{m} [{recipes[m]}]' for m in args.methods)}; validation: "
          f"{'on ' + str(validation['episodes']) + ' val episodes' if validation['enabled'] else 'none'}; "
          f"code {code['commit'] or 'not in git'}{' (dirty)' if code['dirty'] else ''}, source {code['source_sha256']}; "
          f"results in {output}/")
    if store.records:
        print(f"resuming: {len(store.records)} finished result(s) of this configuration and code found")
    if store.other_code:
        print(f"note: {len(store.other_code)} result(s) of this configuration in {output}/records were made by "
              f"other code; {'reused (--reuse-stale), marked' if args.reuse_stale else 'not reused (--reuse-stale to use them)'}")
    if store.stale:
        print(f"note: {store.stale} result(s) in {output}/records from another configuration "
              "(data set, budget, queries, seed or device) are kept there but not reused")
    if (args.dataset == "glyphs" and hasattr(test_ds, "materialize")
            and opts["test_episodes"] * max(w for w, _ in settings) >= len(test_ds.class_names)):
        # the test episodes will touch most test classes: generate the embedded images up
        # front, so the first method's test time and memory do not pay for them (the first
        # method's training pays for generating the training images it is first to touch:
        # about 0.5 s per 1000 classes on 2 cores)
        test_ds.materialize()

    init_seed = run["seeds"]["init"]
    interrupted = False
    ran: List[Dict[str, Any]] = []
    options = {"protonet_train_ways": args.protonet_train_ways}
    first = settings[0]
    once_val = None if not validation["enabled"] else {  # trained-once methods validate on the first setting
        "split": "val", "ways": first[0], "shots": first[1], "queries": args.queries,
        "seed": run["seeds"][format_setting(*first)]["val"], "episodes": validation["episodes"]}
    try:
        for ways, shots in settings:
            setting = format_setting(ways, shots)
            seeds = run["seeds"][setting]
            test_stream = {"split": "test", "ways": ways, "shots": shots, "queries": args.queries,
                           "seed": seeds["test"], "episodes": opts["test_episodes"]}
            val_stream = None if not validation["enabled"] else {
                "split": "val", "ways": ways, "shots": shots, "queries": args.queries, "seed": seeds["val"],
                "episodes": validation["episodes"]}
            shared = {"split": opts["train_split"], "ways": [ways, ways], "shots": [shots, shots],
                      "queries": args.queries, "seed": seeds["train"], "episodes": opts["train_episodes"]}
            mixed = {"split": opts["train_split"], "ways": list(mixed_w), "shots": list(mixed_k),
                     "queries": args.queries, "seed": run["seeds"]["mixed_train"],
                     "episodes": opts["train_episodes"]}
            print(f"\n== {setting}: training stream seed {seeds['train']}, test stream seed {seeds['test']}")
            for name in args.methods:
                cls = METHODS[name]
                if cls.trained_once:
                    ctx = MethodContext(args.dataset, mixed_w[1], mixed_k[1], in_channels, image_size, device,
                                        opts["train_episodes"])
                else:
                    ctx = MethodContext(args.dataset, ways, shots, in_channels, image_size, device,
                                        opts["train_episodes"])
                job = Job(cls, ways, shots, run, ctx, shared if cls.shared_stream else mixed, test_stream,
                          once_val if cls.trained_once else val_stream, init_seed, recipes[name], options)
                done = store.done(job.key, job.key_nocode)
                if done is not None:
                    print(f"  {name:12s} done already (skipped): {_fmt_acc(done)}%  train fp "
                          f"{done['train_fingerprint'][:16]}  test fp {done['test_fingerprint'][:16]}"
                          + ("  [made by other code: --reuse-stale]" if done.get("reused_stale_code") else ""))
                    continue
                for old in store.retire(name, setting, job.key):
                    print(f"  {name:12s} note: an earlier result ({_fmt_acc(old)}%) was made with other "
                          "method settings; it is not reused")
                try:
                    rec = run_job(job, train_ds, val_ds, test_ds, output, progress)
                except MethodUnavailable as exc:
                    rec = _failed(job, (ways, shots), str(exc))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    traceback.print_exc()
                    rec = _failed(job, (ways, shots), f"{type(exc).__name__}: {exc}")
                store.add(rec)
                if rec["status"] == "ok":
                    ran.append(rec)
                write_summaries(output, run, store)
                if rec["status"] == "ok":
                    print(f"  {name:12s} {_fmt_acc(rec)}%  [{rec['recipe']}] train {rec['train_episodes']} ep, "
                          f"{rec['train_steps']} steps of {rec['episodes_per_step']} in {rec['train_time_s']:.1f}s"
                          + (f"  best val {100 * rec['best_val']['val_accuracy']:.1f}% at {rec['best_val']['episodes']} ep"
                             if rec.get("best_val") else "")
                          + f"  test {rec['test_ms_per_episode']:.1f} ms/ep  test fp {rec['test_fingerprint'][:16]}")
                else:
                    print(f"  {name:12s} FAILED: {rec['error']}")
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: every finished (method, setting) is saved; rerun the same command to resume",
              file=sys.stderr)

    records, checks = write_summaries(output, run, store, plot=True)
    run["timing"] = _timing(ran, time.perf_counter() - t_start, imports_s)
    records, checks = write_summaries(output, run, store)  # with the timing (plots are up to date)
    print()
    print(leaderboard_text(records))
    for setting, c in checks.items():
        print(f"{setting}: test fingerprint {c['test_fingerprint'][:16]} "
              f"({'agrees across methods' if c['test_fingerprints_agree'] else 'ERROR: DIFFERS between methods'}); "
              f"training fingerprint {(c['train_fingerprint'] or '-')[:16]}"
              + (f" at episode {c['train_compared_at_episodes']}" if c.get("train_compared_at_episodes") else "")
              + f" ({'agrees across shared-stream methods' if c['train_fingerprints_agree'] else 'ERROR: DIFFERS'})")
    t = run["timing"]
    print(f"harness overhead: {t['harness_s']:.1f} s of {t['wall_s']:.1f} s ({100 * t['harness_share']:.2f}%; "
          f"training {t['train_s']:.1f} s, validation {t['validation_s']:.1f} s, testing {t['test_s']:.1f} s, "
          f"library imports {t['imports_s']:.1f} s)")
    print(f"written: {output}/results.json, results.csv, leaderboard.md, accuracy.png"
          + (", curves.png" if any(r.get("curve") for r in records if r["status"] == "ok") else ""))
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
    return {"wall_s": wall, "train_s": train, "validation_s": val, "test_s": test, "imports_s": imports_s,
            "harness_s": harness, "harness_share": harness / wall if wall > 0 else 0.0, "jobs": len(ran),
            "note": "harness_s = wall - training - validation - testing - library imports, for the jobs this "
                    "process ran (wall from the start of main() to the last summary)"}


if __name__ == "__main__":
    sys.exit(main())
