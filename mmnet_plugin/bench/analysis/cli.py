"""The analysis' command line: ``python -m mmnet_plugin.bench.analysis`` (also
``python -m benchmarks.analysis`` in a checkout)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import torch

from mmnet_plugin.arguments import add_common_arguments, positive_int
from mmnet_plugin.runtime import tune_cpu_allocator

from .core import Analysis
from .helpers import ABLATION_GROUPS, PARTS, int_list, one_setting, parts_arg, subset_of

__all__ = ["build_parser", "main"]

_DOC = __import__("mmnet_plugin.bench.analysis", fromlist=["__doc__"]).__doc__ or ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mmnet_plugin.bench.analysis",
        description=_DOC.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_arguments(parser, default_queries=5)
    parser.add_argument("--train-split", default="train", help="training split (default train)")
    parser.add_argument(
        "--eval-split",
        default="val",
        help="split every model is tested on: val (default; where choices are made) or test "
        "(to report, never to choose)",
    )
    parser.add_argument("--steps", type=positive_int, default=15, help="training steps per model (default 15)")
    parser.add_argument(
        "--batch-episodes",
        type=positive_int,
        default=4,
        help="episodes per training step (default 4; the paper: 16 Omniglot, 4 miniImageNet)",
    )
    parser.add_argument("--test-episodes", type=positive_int, default=50, help="test episodes per setting (default 50)")
    parser.add_argument("--dm", type=positive_int, default=512, help="memory key size Dm (default 512)")
    parser.add_argument("--dr", type=positive_int, default=512, help="contextual learner size Dr (default 512)")
    parser.add_argument(
        "--dr-values",
        type=int_list,
        default=[128, 256, 512, 1024],
        help="Dr values of the Figure 2 sweep (default 128,256,512,1024)",
    )
    parser.add_argument(
        "--ablation-setting",
        type=one_setting,
        default=None,
        help="C-way k-shot setting the ablations are trained and tested on (default 20w1s on "
        "omniglot, where 5-way saturates; 5w5s elsewhere)",
    )
    parser.add_argument(
        "--ablation-groups",
        type=subset_of(ABLATION_GROUPS, "ablation group"),
        default=list(ABLATION_GROUPS),
        help=f"comma-separated subset of {','.join(ABLATION_GROUPS)} (default all); each group "
        "trains its reference (the full model) too, or reuses it",
    )
    parser.add_argument(
        "--tsne-images", type=positive_int, default=30, help="other images per class embedded for t-SNE (default 30)"
    )
    parser.add_argument(
        "--parts",
        type=parts_arg,
        default=list(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default all)",
    )
    parser.add_argument("--output", default="runs/analysis", help="output folder (default runs/analysis)")
    parser.add_argument("--dpi", type=positive_int, default=100, help="figure resolution (default 100)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--no-resume", dest="resume", action="store_false", help="retrain every model even when its record exists"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the analysis; returns the exit status."""
    args = build_parser().parse_args(argv)
    tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        analysis = Analysis(args)
    except (ValueError, OSError) as exc:
        print(f"analysis: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    analysis.log(f"analysis on {args.dataset}: {analysis.budget()}; output {analysis.out}")
    try:
        analysis.run(args.parts)
    except RuntimeError as exc:
        from ..methods.base import MethodUnavailable

        if not isinstance(exc, MethodUnavailable):
            raise
        print(f"analysis: {exc}", file=sys.stderr)
        return 2
    analysis.results["seconds"] = time.perf_counter() - t0
    analysis.save()
    analysis.log(f"done in {analysis.results['seconds']:.0f} s; report {analysis.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
