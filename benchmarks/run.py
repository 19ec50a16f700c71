"""The benchmark harness: MM-Net beside Matching Networks, MAML and ProtoNets on the same
episodes from the same seeds.

    python benchmarks/run.py                                  # all methods, glyphs, 5w1s
    python benchmarks/run.py --methods mmnet,maml --settings 5w1s,20w5s
    python benchmarks/run.py --dataset omniglot --data-root ../shared/datasets --paper

Per setting, one seeded :class:`~mmnet_plugin.EpisodeSampler` over the training split draws
``--train-episodes`` episodes; every method except ``mmnet-mixed`` consumes exactly those
episodes in that order, each in its own batch size (MM-Net 16 a step, MAML its meta-batch,
ProtoNet and MatchingNet one), so a method's training fingerprint is the stream's. The
test episodes are re-drawn for every method from the same seed (no 1 GB of episodes in
memory at 20-way); their fingerprints prove the methods saw the same ones, and the
leaderboard marks any disagreement as an error. Model initialisation is seeded inside
``torch.random.fork_rng``, so global random state is left as it was.

Each finished (method, setting) is written at once and atomically under
``--output/records/``, keyed by a hash of everything that decides it (data set, split,
setting, budgets, queries, seeds, device type, the method's hyperparameters, the package
version); rerunning the same command skips what is done, and a changed configuration
never reuses an old result. Ctrl-C loses nothing finished.

Outputs under ``--output``: ``results.json``, ``results.csv``, ``leaderboard.md`` (with the
published numbers) and ``accuracy.png``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.append(str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from mmnet_plugin.arguments import (
    add_common_arguments,
    format_setting,
    positive_int,
    range_arg,
    resolve_device,
    settings_arg,
)
from mmnet_plugin.data import DataNotFoundError, load_dataset
from mmnet_plugin.episodes import EpisodeSampler
from mmnet_plugin.evaluation import evaluate
from mmnet_plugin.runtime import tune_cpu_allocator

from benchmarks.common import (
    CheckpointError,
    PeakMemory,
    Stopwatch,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    config_key,
    derive_seed,
    device_description,
    git_commit,
    safe_torch_load,
    versions,
)
from benchmarks.methods import METHODS, Method, MethodContext, MethodUnavailable, mixed_ranges
from benchmarks.published import PUBLISHED, PUBLISHED_SETTINGS, SOURCES, published_for

__all__ = ["main", "build_parser", "DEFAULT_METHODS", "BARE", "paper_preset"]

HARNESS_VERSION = 1
FORMAT = "mmnet-plugin/benchmark/1"

#: the methods a bare command runs (mmnet-mixed is opt-in: at the bare budget its 2-20-way
#: training episodes would take as long as the other four methods together)
DEFAULT_METHODS = ("mmnet", "maml", "protonet", "matchingnet")

#: the bare command's budget (measured to fit about 5 minutes on 2 CPU cores: see README)
BARE = {"settings": [(5, 1)], "train_episodes": 160, "test_episodes": 600, "train_split": "train"}


def paper_preset(dataset: str) -> Dict[str, Any]:
    """``--paper``: the paper's settings and 500 test episodes (section 4.2), trained on
    train + validation classes with a stated budget. The paper gives no total number of
    iterations, so the budget is ours: 640,000 episodes on Omniglot/glyphs (MM-Net: 40,000
    steps of 16, two learning-rate halvings; MAML: 20,000 meta-steps of 32) and 160,000 on
    miniImageNet (MM-Net: 40,000 steps of 4)."""
    settings = PUBLISHED_SETTINGS["miniimagenet" if dataset == "miniimagenet" else "omniglot"]
    return {"settings": list(settings), "test_episodes": 500, "train_split": "trainval",
            "train_episodes": 160_000 if dataset == "miniimagenet" else 640_000}


# ====================================================================== arguments
class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _methods_arg(text: str) -> List[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no methods given; e.g. --methods mmnet,maml")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    """The harness's argument parser (shares ``--dataset --data-root --queries --seed
    --device`` with the ``mmnet`` command)."""
    p = _OneLineParser(
        prog="benchmarks/run.py",
        description="Train and test MM-Net, MAML, ProtoNet and Matching Networks on the same episodes.",
    )
    add_common_arguments(p)
    p.add_argument("--methods", type=_methods_arg, default=list(DEFAULT_METHODS),
                   help=f"comma-separated, from: {', '.join(METHODS)} (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--settings", type=settings_arg, default=None,
                   help=f"C-way k-shot settings, e.g. 5w1s,20w5s (default {format_setting(*BARE['settings'][0])})")
    p.add_argument("--train-episodes", type=positive_int, default=None,
                   help=f"training episodes per method and setting, the same for every method "
                        f"(default {BARE['train_episodes']})")
    p.add_argument("--test-episodes", type=positive_int, default=None,
                   help=f"test episodes per setting (default {BARE['test_episodes']})")
    p.add_argument("--train-split", default=None,
                   help="training split: train, or trainval for final numbers (default train; --paper: trainval)")
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
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core); 1 is much faster "
                        "on a machine that other jobs keep busy")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def resolve_options(args: argparse.Namespace) -> Dict[str, Any]:
    """Fill what the user left out from the preset (``--paper``) or the bare defaults."""
    preset = paper_preset(args.dataset) if args.paper else BARE
    out = {}
    for key in ("settings", "train_episodes", "test_episodes", "train_split"):
        v = getattr(args, key)
        out[key] = preset[key] if v is None else v
    return out


# ====================================================================== result store
class ResultStore:
    """Finished records under ``<output>/records/`` (one JSON file each, written
    atomically), and the summaries rewritten after each one."""

    def __init__(self, output: Path, run_info: Dict[str, Any], run_key: str):
        self.output = output
        self.records_dir = output / "records"
        self.run_info = run_info
        self.run_key = run_key
        self.records: Dict[str, Dict[str, Any]] = {}  # key -> record (status ok)
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
                else:
                    self.stale += 1

    def done(self, key: str) -> Optional[Dict[str, Any]]:
        return self.records.get(key)

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
        """The records of this run configuration, in method then setting order."""
        order = {m: i for i, m in enumerate(METHODS)}
        latest: Dict[Tuple[str, str], Dict[str, Any]] = {}
        for r in sorted(self.records.values(), key=lambda r: r.get("finished_at", "")):
            latest[(r["method"], r["setting"])] = r  # one row per (method, setting): the newest
        for r in self.failed:
            latest[(r["method"], r["setting"])] = r
        recs = list(latest.values())
        return sorted(recs, key=lambda r: (r["ways"], r["shots"], order.get(r["method"], 99), r["method"]))


# ====================================================================== checks
def fingerprint_checks(records: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per setting: do the test fingerprints agree across methods, and the training
    fingerprints across the shared-stream methods? Marks each record's ``check``."""
    out: Dict[str, Dict[str, Any]] = {}
    by_setting: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok":
            by_setting.setdefault(r["setting"], []).append(r)
    for setting, recs in by_setting.items():
        test_fps = [r["test_fingerprint"] for r in recs]
        train_fps = [r["train_fingerprint"] for r in recs if r.get("shared_stream", True)]
        test_ref = max(set(test_fps), key=test_fps.count)
        train_ref = max(set(train_fps), key=train_fps.count) if train_fps else None
        for r in recs:
            problems = []
            if r["test_fingerprint"] != test_ref:
                problems.append("ERROR: test episodes differ from the other methods'")
            if r.get("shared_stream", True) and train_ref is not None and r["train_fingerprint"] != train_ref:
                problems.append("ERROR: training episodes differ from the other methods'")
            r["check"] = "; ".join(problems) if problems else "ok"
        out[setting] = {
            "test_fingerprint": test_ref,
            "test_fingerprints_agree": len(set(test_fps)) == 1,
            "train_fingerprint": train_ref,
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


_COLUMNS = ("method", "setting", "accuracy % (95% CI)", "test ep", "train ep", "train s",
            "train ep/s", "test ms/ep", "peak MiB", "params", "check")


def _row(r: Dict[str, Any]) -> List[str]:
    if r["status"] != "ok":
        return [r["label"], r["setting"], "FAILED", "-", "-", "-", "-", "-", "-", "-", r.get("error", "")]
    return [
        r["label"], r["setting"], _fmt_acc(r), str(r["test_episodes"]), str(r["train_episodes"]),
        _fmt(r["train_time_s"], ".1f"), _fmt(r["train_episodes_per_s"], ".1f"),
        _fmt(r["test_ms_per_episode"], ".1f"), _fmt(r["peak_memory_mib"], ".0f"),
        f"{r['parameters']:,}", r.get("check", "ok"),
    ]


def leaderboard_text(records: Sequence[Dict[str, Any]]) -> str:
    """The terminal leaderboard (fixed-width)."""
    rows = [list(_COLUMNS)] + [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) if i < 2 else row[i].rjust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells) + "  " + row[-1])
        if j == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def leaderboard_markdown(run: Dict[str, Any], records: Sequence[Dict[str, Any]],
                         checks: Dict[str, Dict[str, Any]]) -> str:
    """leaderboard.md: our results beside the published numbers, with the protocol."""
    ds = run["dataset"]
    out = io.StringIO()
    w = out.write
    w(f"# Benchmark: {ds}\n\n")
    w(f"{run['test_episodes']} test episodes per setting, {run['queries']} queries per class, "
      f"mean accuracy with the 95% confidence interval `1.96 * std / sqrt(episodes)`. "
      f"Every method trained on {run['train_episodes']:,} episodes of the `{run['train_split']}` split "
      f"(the same episodes in the same order for every method but `mmnet-mixed`). "
      f"Seed {run['seed']}, device {run['device']['type']} ({run['device']['name']}), "
      f"commit {run['git'].get('commit') or 'none'}"
      f"{' (dirty)' if run['git'].get('dirty') else ''}.\n\n")
    if ds == "glyphs":
        w("`glyphs` is the embedded synthetic stand-in for Omniglot: the published column shows "
          "Omniglot numbers for orientation only; they are not comparable.\n\n")
    w("| method | setting | ours: accuracy % | published % (as reported) | test ep | train ep | train s "
      "| train ep/s | test ms/ep | peak MiB | params | check |\n")
    w("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
    for r in records:
        pub = published_for(r["method"], ds, (r["ways"], r["shots"]))
        pub_txt = "-" if pub is None else (
            f"{pub[1]:.2f}" + (f" +- {pub[2]:.2f}" if pub[2] is not None else "") + f" ({pub[0]})")
        cells = _row(r)
        w(f"| {cells[0]} | {cells[1]} | {cells[2]} | {pub_txt} | " + " | ".join(cells[3:10]) + f" | {cells[10]} |\n")
    w("\n## Episode fingerprints\n\n")
    w("| setting | test fingerprint | test agree | training fingerprint (shared stream) | training agree |\n")
    w("|---|---|---|---|---|\n")
    for setting, c in checks.items():
        w(f"| {setting} | `{c['test_fingerprint'][:16]}` | {'yes' if c['test_fingerprints_agree'] else '**NO (error)**'} "
          f"| `{(c['train_fingerprint'] or '-')[:16]}` | {'yes' if c['train_fingerprints_agree'] else '**NO (error)**'} |\n")
    w("\n## Methods\n\n")
    seen = set()
    for r in records:
        if r["method"] in seen:
            continue
        seen.add(r["method"])
        w(f"- **{r['label']}** (`{r['method']}`): {r.get('notes', '')}")
        if r["status"] == "ok":
            w(f" Steps of {r['episodes_per_step']} episodes; hyperparameters: `{json.dumps(r['hyperparameters'])}`.")
        w("\n")
    w("\nPeak memory: " + ("peak CUDA memory allocated during the job." if run["device"]["type"] == "cuda" else
      "the peak resident memory the job added to the process (the kernel's high-water mark), including data "
      "it was first to load.") + " Train s is wall time of the training phase (drawing episodes included); "
      "train ep/s counts the optimisation steps only.\n")
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
                v = vals.get(s)  # type: ignore[union-attr]
                cells.append("-" if v is None else f"{v[0]:.2f}" + (f" +- {v[1]:.2f}" if v[1] is not None else ""))
            w(f"| {entry['row']} | {pds} | " + " | ".join(cells) + f" | {entry['source']}: {entry['checked']} |\n")
    w("\nSources:\n\n")
    for k, v in SOURCES.items():
        w(f"- {k}: {v}\n")
    w("\nThe paper's MM-Net rows are its mixed-strategy model (our `mmnet-mixed`); MM-Net- is trained "
      "without it (our `mmnet`). Published figures come from the authors' own budgets, which the "
      "MM-Net paper does not state; ours state theirs above.\n")
    return out.getvalue()


_CSV_FIELDS = ("method", "label", "setting", "ways", "shots", "status", "accuracy", "ci95", "test_episodes",
               "queries", "train_episodes", "train_steps", "episodes_per_step", "train_time_s",
               "train_episodes_per_s", "test_ms_per_episode", "peak_memory_mib", "parameters",
               "train_fingerprint", "test_fingerprint", "shared_stream", "check", "error", "key")


def results_csv(records: Sequence[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: r.get(k, "") for k in _CSV_FIELDS})
    return buf.getvalue()


def plot_png(run: Dict[str, Any], records: Sequence[Dict[str, Any]]) -> Optional[bytes]:
    """Accuracy with 95% intervals per setting and method, as PNG bytes (``None`` without
    matplotlib or results)."""
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no plot (matplotlib is missing: pip install matplotlib)", file=sys.stderr)
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
    ax.set_ylabel("accuracy % (95% CI)")
    ax.set_title(f"{run['dataset']}: {run['train_episodes']:,} training episodes, "
                 f"{run['test_episodes']} test episodes")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_summaries(output: Path, run: Dict[str, Any], store: ResultStore, plot: bool = False) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Rewrite results.json, results.csv and leaderboard.md (and the plot) atomically."""
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
    return records, checks


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ====================================================================== one job
class Job:
    """Everything the harness knows about one (method, setting)."""

    def __init__(self, method_cls: type, ways: int, shots: int, run: Dict[str, Any], ctx: MethodContext,
                 train_stream: Dict[str, Any], test_stream: Dict[str, Any], init_seed: int):
        self.cls = method_cls
        self.ways, self.shots = ways, shots
        self.setting = format_setting(ways, shots)
        self.run = run
        self.ctx = ctx
        self.method: Method = method_cls(ctx)
        self.train_stream = train_stream
        self.test_stream = test_stream
        self.init_seed = init_seed
        self.hyperparameters = self.method.hyperparameters()
        self.train_key = config_key({
            "harness": HARNESS_VERSION, "method": method_cls.name, "hyperparameters": self.hyperparameters,
            "ctx": {"dataset": ctx.dataset, "ways": ctx.ways, "shots": ctx.shots, "in_channels": ctx.in_channels,
                    "image_size": ctx.image_size, "device_type": ctx.device.type},
            "train_stream": train_stream, "init_seed": init_seed, "package": run["versions"].get("mmnet-plugin"),
        })
        self.key = config_key({"run_key": run["run_key"], "train_key": self.train_key,
                               "setting": [ways, shots], "test_stream": test_stream})


def _train(job: Job, train_ds: Any, progress: bool) -> Dict[str, Any]:
    """Consume the job's training stream in the method's batch size; return the stats."""
    m = job.method
    s = job.train_stream
    sampler = EpisodeSampler(train_ds, ways=tuple(s["ways"]) if s["ways"][0] != s["ways"][1] else s["ways"][0],
                             shots=tuple(s["shots"]) if s["shots"][0] != s["shots"][1] else s["shots"][0],
                             queries=s["queries"], seed=s["seed"])
    total, bs = int(s["episodes"]), int(m.episodes_per_step)
    device = job.ctx.device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{job.cls.name} {job.setting if job.cls.shared_stream else 'mixed'} train",
                   unit="ep", leave=False, dynamic_ncols=True)
    steps, step_time, losses = 0, 0.0, []
    t0 = time.perf_counter()
    try:
        remaining = total
        while remaining > 0:
            n = min(bs, remaining)
            batch = [sampler.sample().to(device) for _ in range(n)]
            with Stopwatch(device) as sw:
                loss = m.train_step(batch)
            step_time += sw.seconds
            steps += 1
            remaining -= n
            losses.append(loss)
            if bar is not None:
                bar.update(n)
                bar.set_postfix(loss=f"{loss:.3f}")
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    k = max(1, len(losses) // 10)
    return {
        "train_episodes": sampler.drawn, "train_steps": steps, "train_fingerprint": sampler.fingerprint,
        "train_time_s": wall, "train_step_time_s": step_time,
        "train_episodes_per_s": sampler.drawn / step_time if step_time > 0 else float("nan"),
        "train_loss_first": float(np.mean(losses[:k])), "train_loss_last": float(np.mean(losses[-k:])),
    }


def run_job(job: Job, train_ds: Any, test_ds: Any, output: Path, progress: bool) -> Dict[str, Any]:
    """Train (or load, for a trained-once method) and test one (method, setting).

    Raises:
        MethodUnavailable: a missing optional library.
    """
    job.cls.check_available()
    device = job.ctx.device
    m = job.method
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    ckpt = output / "checkpoints" / f"{job.cls.name}-{job.train_key}.pt"
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(job.init_seed)
        with PeakMemory(device) as mem:
            m.build()
            stats = None
            if job.cls.trained_once and ckpt.is_file():
                try:
                    # tensors and plain containers only: a planted file cannot run code here
                    saved = safe_torch_load(ckpt, map_location=device)
                    if not isinstance(saved, dict) or not isinstance(saved.get("stats"), dict):
                        raise CheckpointError(f"checkpoint {ckpt} does not hold the harness's state and stats")
                    m.load_state_dict(saved["state"])
                    stats = dict(saved["stats"], train_reused_from=str(ckpt.relative_to(output)))
                except Exception as exc:  # a broken or refused checkpoint is retrained, not trusted
                    print(f"note: retraining {job.cls.name}: {exc}", file=sys.stderr)
                    m.build()
                    stats = None
            if stats is None:
                stats = _train(job, train_ds, progress)
                if job.cls.trained_once:
                    atomic_torch_save({"state": m.state_dict(), "stats": stats}, ckpt)
            test = EpisodeSampler(test_ds, ways=job.ways, shots=job.shots, queries=job.test_stream["queries"],
                                  seed=job.test_stream["seed"], episodes=job.test_stream["episodes"])
            result = evaluate(m.predictor(), test, device=device, progress=progress,
                              desc=f"{job.cls.name} {job.setting} test")
    acc = np.asarray(result.per_episode)
    return {
        "status": "ok", "method": job.cls.name, "label": job.cls.label, "notes": job.cls.notes,
        "setting": job.setting, "ways": job.ways, "shots": job.shots,
        "accuracy": result.accuracy, "ci95": result.ci95, "accuracy_std": float(acc.std()),
        "test_episodes": result.episodes, "queries": result.queries_per_class,
        "test_fingerprint": result.fingerprint, "test_ms_per_episode": result.ms_per_episode,
        **stats,
        "episodes_per_step": m.episodes_per_step, "shared_stream": job.cls.shared_stream,
        "peak_memory_mib": mem.mib, "memory_kind": mem.kind, "parameters": m.parameters(),
        "hyperparameters": job.hyperparameters, "train_stream": job.train_stream,
        "test_stream": job.test_stream, "init_seed": job.init_seed,
        "key": job.key, "train_key": job.train_key, "run_key": job.run["run_key"],
        "finished_at": _now(), "check": "ok",
    }


def _failed(job_or_cls: Any, setting: Tuple[int, int], error: str) -> Dict[str, Any]:
    cls = job_or_cls.cls if isinstance(job_or_cls, Job) else job_or_cls
    return {"status": "failed", "method": cls.name, "label": cls.label, "notes": cls.notes,
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    output = Path(args.output) if args.output else Path("results") / f"benchmark-{args.dataset}"
    tune_cpu_allocator()
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv, output, device)
    finally:
        torch.set_num_threads(threads_before)


def _main(args: argparse.Namespace, argv: Optional[Sequence[str]], output: Path, device: torch.device) -> int:
    opts = resolve_options(args)
    progress = not args.no_progress
    settings: List[Tuple[int, int]] = opts["settings"]

    try:
        train_ds = load_dataset(args.dataset, split=opts["train_split"], data_root=args.data_root)
        test_ds = load_dataset(args.dataset, split="test", data_root=args.data_root)
    except (DataNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    in_channels, image_size = _image_shape(test_ds)

    run: Dict[str, Any] = {
        "command": [Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv),
        "dataset": args.dataset, "train_split": opts["train_split"], "test_split": "test",
        "image_size": image_size, "in_channels": in_channels,
        "settings": [format_setting(*s) for s in settings], "methods": list(args.methods),
        "train_episodes": opts["train_episodes"], "test_episodes": opts["test_episodes"],
        "queries": args.queries, "seed": args.seed, "preset": "paper" if args.paper else "bare",
        "device": device_description(device), "versions": versions(), "git": git_commit(),
        "harness_version": HARNESS_VERSION, "started": _now(),
    }
    run["run_key"] = config_key({k: run[k] for k in ("dataset", "train_split", "test_split", "image_size",
                                                      "train_episodes", "test_episodes", "queries", "seed")}
                                | {"device_type": device.type, "harness": HARNESS_VERSION})
    mixed_w, mixed_k = mixed_ranges(args.dataset, settings)
    if args.mixed_ways is not None:
        mixed_w = (args.mixed_ways, args.mixed_ways) if isinstance(args.mixed_ways, int) else tuple(args.mixed_ways)
    if args.mixed_shots is not None:
        mixed_k = (args.mixed_shots, args.mixed_shots) if isinstance(args.mixed_shots, int) else tuple(args.mixed_shots)
    too_big = [format_setting(w, s) for w, s in settings if w > mixed_w[1] or s > mixed_k[1]]
    if too_big and "mmnet-mixed" in args.methods:
        print(f"note: mmnet-mixed trains on {mixed_w[0]}-{mixed_w[1]} ways and {mixed_k[0]}-{mixed_k[1]} shots "
              f"but is tested on {', '.join(too_big)} too")
    run["seeds"] = {format_setting(w, s): {"train": derive_seed(args.seed, "train", w, s),
                                           "test": derive_seed(args.seed, "test", w, s)} for w, s in settings}
    run["seeds"]["init"] = derive_seed(args.seed, "init")
    run["seeds"]["mixed_train"] = derive_seed(args.seed, "mixed")
    run["mixed_stream"] = {"ways": list(mixed_w), "shots": list(mixed_k)}

    output.mkdir(parents=True, exist_ok=True)
    store = ResultStore(output, run, run["run_key"])
    print(f"benchmark: {args.dataset} ({opts['train_split']} -> test, {in_channels}x{image_size}x{image_size}), "
          f"settings {','.join(run['settings'])}, {opts['train_episodes']:,} training and "
          f"{opts['test_episodes']} test episodes, {args.queries} queries/class, seed {args.seed}, "
          f"device {device} ({run['device']['name']}, {torch.get_num_threads()} threads)")
    print(f"methods: {', '.join(args.methods)}; results in {output}/")
    if store.records:
        print(f"resuming: {len(store.records)} finished result(s) of this configuration found")
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
    try:
        for ways, shots in settings:
            setting = format_setting(ways, shots)
            seeds = run["seeds"][setting]
            test_stream = {"split": "test", "ways": ways, "shots": shots, "queries": args.queries,
                           "seed": seeds["test"], "episodes": opts["test_episodes"]}
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
                job = Job(cls, ways, shots, run, ctx, shared if cls.shared_stream else mixed, test_stream, init_seed)
                done = store.done(job.key)
                if done is not None:
                    print(f"  {name:12s} done already (skipped): {_fmt_acc(done)}%  train fp "
                          f"{done['train_fingerprint'][:16]}  test fp {done['test_fingerprint'][:16]}")
                    continue
                for old in store.retire(name, setting, job.key):
                    print(f"  {name:12s} note: an earlier result ({_fmt_acc(old)}%) was made with other "
                          "method settings; it is not reused")
                try:
                    rec = run_job(job, train_ds, test_ds, output, progress)
                except MethodUnavailable as exc:
                    rec = _failed(job, (ways, shots), str(exc))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    traceback.print_exc()
                    rec = _failed(job, (ways, shots), f"{type(exc).__name__}: {exc}")
                store.add(rec)
                write_summaries(output, run, store)
                if rec["status"] == "ok":
                    print(f"  {name:12s} {_fmt_acc(rec)}%  train {rec['train_episodes']} ep in "
                          f"{rec['train_time_s']:.1f}s  test {rec['test_ms_per_episode']:.1f} ms/ep  "
                          f"train fp {rec['train_fingerprint'][:16]}  test fp {rec['test_fingerprint'][:16]}")
                else:
                    print(f"  {name:12s} FAILED: {rec['error']}")
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: every finished (method, setting) is saved; rerun the same command to resume",
              file=sys.stderr)

    records, checks = write_summaries(output, run, store, plot=True)
    print()
    print(leaderboard_text(records))
    for setting, c in checks.items():
        print(f"{setting}: test fingerprint {c['test_fingerprint'][:16]} "
              f"({'agrees across methods' if c['test_fingerprints_agree'] else 'ERROR: DIFFERS between methods'}); "
              f"training fingerprint {(c['train_fingerprint'] or '-')[:16]} "
              f"({'agrees across shared-stream methods' if c['train_fingerprints_agree'] else 'ERROR: DIFFERS'})")
    print(f"written: {output}/results.json, results.csv, leaderboard.md, accuracy.png")
    if interrupted:
        return 130
    bad = [r for r in records if r["status"] != "ok" or r.get("check", "ok") != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
