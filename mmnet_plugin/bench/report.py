"""What a run writes for people: the terminal leaderboard, ``leaderboard.md`` (beside the
published numbers), ``results.json``, ``results.csv``, ``accuracy.png`` and ``curves.png``
(matplotlib, imported only to plot)."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmnet_plugin.arguments import format_setting

from .checks import fingerprint_checks
from .files import atomic_write_bytes, atomic_write_json, atomic_write_text
from .options import FORMAT
from .published import PUBLISHED, PUBLISHED_SETTINGS, SOURCES, published_for
from .store import ResultStore, utc_now

__all__ = [
    "leaderboard_text",
    "leaderboard_markdown",
    "results_csv",
    "plot_png",
    "curves_png",
    "write_summaries",
    "fmt_acc",
    "budget_words",
]


def fmt_acc(r: Dict[str, Any]) -> str:
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


_COLUMNS = (
    "method",
    "recipe",
    "setting",
    "accuracy % (95% CI)",
    "val % @ selected",
    "test ep",
    "train ep",
    "steps",
    "ep/step",
    "train s",
    "val s",
    "test ms/ep",
    "peak MiB",
    "params",
    "check",
)


def _row(r: Dict[str, Any]) -> List[str]:
    if r["status"] != "ok":
        return [r["label"], r.get("recipe", "-"), r["setting"], "FAILED"] + ["-"] * 10 + [r.get("error", "")]
    check = r.get("check", "ok") + (" (stale code, --reuse-stale)" if r.get("reused_stale_code") else "")
    return [
        r["label"],
        r.get("recipe", "-"),
        r["setting"],
        fmt_acc(r),
        _selected(r),
        str(r["test_episodes"]),
        str(r["train_episodes"]),
        str(r["train_steps"]),
        str(r["episodes_per_step"]),
        _fmt(r["train_time_s"], ".1f"),
        _fmt(r.get("validation_time_s"), ".1f"),
        _fmt(r["test_ms_per_episode"], ".1f"),
        _fmt(r["peak_memory_mib"], ".0f"),
        f"{r['parameters']:,}",
        check,
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


def budget_words(run: Dict[str, Any]) -> str:
    parts = []
    if run.get("budget_seconds") is not None:
        parts.append(
            f"{run['budget_seconds']:g} s of training per method and setting (equal compute; "
            "validation and testing not counted)"
        )
    if run.get("train_episodes") is not None:
        parts.append(f"{run['train_episodes']:,} training episodes" + (" at most" if parts else ""))
    return ", ".join(parts)


def leaderboard_markdown(
    run: Dict[str, Any], records: Sequence[Dict[str, Any]], checks: Dict[str, Dict[str, Any]]
) -> str:
    """leaderboard.md: our results beside the published numbers, with the protocol."""
    ds = run["dataset"]
    out = io.StringIO()
    w = out.write
    code = run.get("code", {})
    w(f"# Benchmark: {ds}\n\n")
    w(
        f"{run['test_episodes']} test episodes per setting, {run['queries']} queries per class, "
        f"mean accuracy with the 95% confidence interval `1.96 * std / sqrt(episodes)`. "
        f"Budget: {budget_words(run)}, on the `{run['train_split']}` split "
        f"(one seeded stream per setting, consumed in order by every method but `mmnet-mixed`). "
    )
    v = run.get("validation") or {}
    if v.get("enabled"):
        sched = (
            f"every {v['every_steps']} steps"
            if v.get("every_steps")
            else f"at {v['points']} evenly spaced points of the budget"
        )
        w(
            f"Validation on {v['episodes']} episodes of the `{v['split']}` split {sched} and at the end; the "
            "accuracy column is the **test accuracy of the best-on-val weights** (the val column: their val "
            "accuracy and where they were taken). "
        )
    else:
        w("No validation: the last weights are tested. ")
    w(
        f"Seed {run['seed']}, device {run['device']['type']} ({run['device']['name']}), "
        f"commit {code.get('commit') or 'none'}{' (dirty)' if code.get('dirty') else ''}, "
        f"source sha256 `{code.get('source_sha256', '-')}`.\n\n"
    )
    if ds == "glyphs":
        w(
            "`glyphs` is the embedded synthetic stand-in for Omniglot: the published column shows "
            "Omniglot numbers for orientation only; they are not comparable.\n\n"
        )
    w(
        "| method | recipe | setting | ours: test accuracy % | published % (as reported) | val % @ selected "
        "| test ep | train ep | steps | ep/step | train s | val s | test ms/ep | peak MiB | params | check |\n"
    )
    w("|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    for r in records:
        pub = published_for(r["method"], ds, (r["ways"], r["shots"]))
        pub_txt = (
            "-"
            if pub is None
            else (f"{pub[1]:.2f}" + (f" +- {pub[2]:.2f}" if pub[2] is not None else "") + f" ({pub[0]})")
        )
        c = _row(r)
        w(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} | {pub_txt} | " + " | ".join(c[4:14]) + f" | {c[14]} |\n")
    w("\n## Episode fingerprints\n\n")
    w(
        "Fingerprints cover the split name, the sampler's chained hash of class ids and image indices, and a "
        "SHA-256 of the decoded images. With a time budget the methods consumed different lengths of the same "
        "stream; their training fingerprints are compared at the largest power-of-two episode count all reached.\n\n"
    )
    w(
        "| setting | test fingerprint | test agree | training fingerprint (shared stream) | compared at episode "
        "| training agree |\n"
    )
    w("|---|---|---|---|---:|---|\n")
    for setting, c in checks.items():
        w(
            f"| {setting} | `{c['test_fingerprint'][:16]}` "
            f"| {'yes' if c['test_fingerprints_agree'] else '**NO (error)**'} "
            f"| `{(c['train_fingerprint'] or '-')[:16]}` | {c.get('train_compared_at_episodes') or '-'} "
            f"| {'yes' if c['train_fingerprints_agree'] else '**NO (error)**'} |\n"
        )
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
    w(
        "\nBatches: the recipe's episodes a step, shrunk by the budget rule (at least "
        f"{run.get('min_steps')} optimiser steps; in seconds mode estimated from the second step's time per episode) "
        "where it applies; the ep/step column is the batch used. Peak memory: "
        + (
            "peak CUDA memory allocated during the job."
            if run["device"]["type"] == "cuda"
            else "the peak resident memory the job added to the process (the kernel's high-water mark), including data "
            "it was first to load."
        )
        + " Train s: seconds of training (drawing episodes and optimiser steps; "
        "validation, fingerprints and checkpoints not counted), the quantity `--budget-seconds` fixes.\n"
    )
    t = run.get("timing")
    if t:
        w(
            f"\nHarness overhead (this process): {t['harness_s']:.1f} s of {t['wall_s']:.1f} s wall "
            f"({100 * t['harness_share']:.2f}%); training {t['train_s']:.1f} s, validation {t['validation_s']:.1f} s, "
            f"testing {t['test_s']:.1f} s, one-time library imports {t['imports_s']:.1f} s.\n"
        )
    w("\n## Published numbers (as reported)\n\n")
    w(
        "| method | data set | "
        + " | ".join(format_setting(*s) for s in PUBLISHED_SETTINGS["omniglot"])
        + " | source |\n"
    )
    w("|---|---|" + "---:|" * len(PUBLISHED_SETTINGS["omniglot"]) + "---|\n")
    for entry in PUBLISHED:
        for pds in ("omniglot", "miniimagenet"):
            vals = entry.get(pds)
            if not vals:
                continue
            cells = []
            for s in PUBLISHED_SETTINGS["omniglot"]:
                val = vals.get(s)  # type: ignore[union-attr]
                cells.append(
                    "-" if val is None else f"{val[0]:.2f}" + (f" +- {val[1]:.2f}" if val[1] is not None else "")
                )
            w(f"| {entry['row']} | {pds} | " + " | ".join(cells) + f" | {entry['source']}: {entry['checked']} |\n")
    w("\nSources:\n\n")
    for k, val in SOURCES.items():
        w(f"- {k}: {val}\n")
    w(
        "\nThe paper's MM-Net rows are its mixed-strategy model (our `mmnet-mixed`); MM-Net- is trained "
        "without it (our `mmnet`). Published figures come from the authors' own budgets, which the "
        "MM-Net paper does not state; ours state theirs above.\n"
    )
    return out.getvalue()


_CSV_FIELDS = (
    "method",
    "label",
    "recipe",
    "setting",
    "ways",
    "shots",
    "status",
    "accuracy",
    "ci95",
    "test_episodes",
    "queries",
    "train_episodes",
    "train_steps",
    "episodes_per_step",
    "train_time_s",
    "validation_time_s",
    "budget_seconds",
    "best_val_accuracy",
    "best_val_episodes",
    "best_val_seconds",
    "train_episodes_per_s",
    "test_ms_per_episode",
    "peak_memory_mib",
    "parameters",
    "train_fingerprint",
    "test_fingerprint",
    "shared_stream",
    "check",
    "error",
    "key",
    "source_sha256",
)


def results_csv(records: Sequence[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {k: r.get(k, "") for k in _CSV_FIELDS}
        b = r.get("best_val") or {}
        row.update(
            best_val_accuracy=b.get("val_accuracy", ""),
            best_val_episodes=b.get("episodes", ""),
            best_val_seconds=b.get("seconds", ""),
            source_sha256=(r.get("code") or {}).get("source_sha256", ""),
        )
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
        ax.hlines(
            100.0 / ways,
            j - 0.45,
            j + 0.45,
            colors="grey",
            linestyles="dashed",
            linewidth=1,
            label="chance" if j == 0 else None,
        )
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(settings)
    ax.set_ylabel("test accuracy % (95% CI)")
    ax.set_title(f"{run['dataset']}: {budget_words(run)[:70]}, {run['test_episodes']} test episodes", fontsize=9)
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


def write_summaries(
    output: Path, run: Dict[str, Any], store: ResultStore, plot: bool = False
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Rewrite results.json, results.csv and leaderboard.md (and the plots) atomically."""
    records = store.current()
    checks = fingerprint_checks(records)
    run = dict(run, updated=utc_now())
    errors = [f"{r['method']} {r['setting']}: {r['error']}" for r in records if r["status"] != "ok"]
    errors += [
        f"{r['method']} {r['setting']}: {r['check']}"
        for r in records
        if r["status"] == "ok" and r.get("check", "ok") != "ok"
    ]
    atomic_write_json(
        output / "results.json", {"format": FORMAT, "run": run, "records": records, "checks": checks, "errors": errors}
    )
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
