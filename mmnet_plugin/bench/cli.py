"""``mmnet bench``: MM-Net beside Matching Networks, MAML and ProtoNets on the same episodes
from the same seeds, each trained by its published recipe, at equal compute.

    mmnet bench                                               # all methods, glyphs, 5w1s
    mmnet bench --methods mmnet,maml --settings 5w1s,20w5s
    mmnet bench --dataset omniglot --budget-seconds 120 --settings 5w1s,20w1s
    mmnet bench --config cpu-leaderboard --output runs/cpu   # a packaged config; flags win
    torchrun --nproc-per-node 2 -m mmnet_plugin bench ...     # the grid's cells over 2 ranks

(``python benchmarks/run.py ...`` in a checkout is the same command.)

Per setting, one seeded :class:`~mmnet_plugin.EpisodeSampler` over the training split draws
the training stream; every method except ``mmnet-mixed`` (and ProtoNet with
``--protonet-train-ways``) consumes that stream in order, each in its own batch size. The
budget is either ``--train-episodes`` (the same episodes for every method) or
``--budget-seconds`` (the same wall-clock of training for every method on the same device:
each consumes a prefix of the same stream, as far as its speed takes it; the results record
the steps, episodes and seconds used). Recipes (``--recipe``, :mod:`mmnet_plugin.bench.recipes`):
``published`` on real data, ``harness`` (the recipe before issue 12) on ``glyphs``.

Validation (``--val-points``/``--val-every``; on by default on real data): each method is
scored on the same seeded episodes of the **val** split at evenly spaced points of its
budget; the best-on-val weights are kept and tested, the curve (steps, episodes, seconds,
val accuracy) goes into results.json and ``curves.png`` (and, with ``--tensorboard DIR``,
into TensorBoard event files beside the training loss). Test episodes are re-drawn for
every method from the same seed; their fingerprints (split name, the sampler's chained hash
of class ids and image indices, and a SHA-256 of the decoded images) prove the methods saw
the same ones, and the leaderboard marks any disagreement as an error. Model initialisation
is seeded inside ``torch.random.fork_rng``, so global random state is left as it was.

Each finished (method, setting) is written at once and atomically under
``--output/records/``, keyed by a hash of everything that decides it (data set, splits and a
digest of their decoded images, setting, budgets, queries, seeds, device type, recipe and
hyperparameters) and of the code (a SHA-256 of the package's source, installed or checked
out; the git commit is recorded in a checkout). A result made by other code is not reused
unless ``--reuse-stale`` (then it is marked). Checkpoints are loaded with
``torch.load(weights_only=True)``.

Outputs under ``--output`` (default ``runs/benchmark-<dataset>``): ``results.json``,
``results.csv``, ``leaderboard.md`` (with the published numbers and the recipes' sources),
``accuracy.png`` and ``curves.png``.

Modules: :mod:`.options` (parser, presets), :mod:`.config` (config files), :mod:`.grid` (the
run), :mod:`.jobs` and :mod:`.train` (one cell), :mod:`.store` (records, resume),
:mod:`.checks` and :mod:`.report` (fingerprint checks, leaderboard, files and plots).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from mmnet_plugin.arguments import resolve_device

from .checks import fingerprint_checks
from .config import ConfigError, config_tokens, jsonable_options, read_config, split_config_option
from .methods import METHODS
from .options import (
    BARE,
    DEFAULT_METHODS,
    FORMAT,
    HARNESS_VERSION,
    VAL_EPISODES,
    VAL_POINTS,
    build_parser,
    check_output,
    default_output,
    paper_preset,
    resolve_options,
)
from .recipes import RecipeError, parse_recipe_spec
from .report import leaderboard_markdown, leaderboard_text, results_csv, write_summaries
from .store import ResultStore

__all__ = [
    "main",
    "build_parser",
    "parse_args",
    "DEFAULT_METHODS",
    "BARE",
    "FORMAT",
    "HARNESS_VERSION",
    "VAL_POINTS",
    "VAL_EPISODES",
    "paper_preset",
    "resolve_options",
    "fingerprint_checks",
    "ResultStore",
    "leaderboard_text",
    "leaderboard_markdown",
    "results_csv",
    "write_summaries",
]


def parse_args(argv: Sequence[str], prog: str = "mmnet bench") -> Any:
    """Parse the command line, a ``--config`` file's options first (so flags given win).

    Args:
        argv: the arguments (without the program name).
        prog: the command's name in messages.

    Returns:
        ``(parser, args, config)``: ``config`` is the :class:`~.config.ConfigFile` read, or
        ``None``.

    Raises:
        SystemExit: status 2 with one line on stderr for a bad option or config file.
    """
    parser = build_parser(prog)
    try:
        spec, argv = split_config_option(argv)
        config = read_config(spec) if spec is not None and "-h" not in argv and "--help" not in argv else None
        tokens = config_tokens(config, parser) if config is not None else []
    except ConfigError as exc:
        parser.error(str(exc))
    return parser, parser.parse_args(tokens + list(argv)), config


def main(argv: Optional[Sequence[str]] = None, prog: str = "mmnet bench") -> int:
    """Run the harness; returns the exit status (0 all well, 1 a method failed or
    fingerprints disagree, 2 bad usage or missing data, 130 interrupted).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the grid's cells are spread over the ranks (one
    thread each unless ``--threads``) and rank 0 writes the results files.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the command's name in messages (``benchmarks/run.py`` from the wrapper).
    """
    t_start = time.perf_counter()
    given: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser, args, config = parse_args(given, prog)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        recipes = parse_recipe_spec(
            args.recipe, args.methods, {n: list(c.RECIPES) for n, c in METHODS.items()}, args.dataset
        )
    except RecipeError as exc:
        parser.error(str(exc))
    opts = resolve_options(args)
    if opts["validate"] and opts["train_split"] == "trainval":
        parser.error(
            "validation scores the val split, whose classes --train-split trainval trains on; "
            "use --train-split train, or --val-points 0 to test the last weights"
        )
    if args.protonet_train_ways and "protonet" in args.methods and recipes.get("protonet") != "published":
        parser.error("--protonet-train-ways needs ProtoNet's published recipe (--recipe protonet=published)")
    tensorboard = None
    if args.tensorboard:
        from .tensorboard import TensorBoardLog, check_tensorboard

        problem = check_tensorboard()
        if problem:
            parser.error(problem)
        tensorboard = TensorBoardLog(Path(args.tensorboard))
    output = Path(args.output) if args.output else default_output(args.dataset)
    problem = check_output(output)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.tensorboard:
        from mmnet_plugin.arguments import format_setting

        from .tensorboard import check_run_folders

        problem = check_output(Path(args.tensorboard))
        if problem:
            print(f"error: {problem.replace('--output', '--tensorboard', 1)}", file=sys.stderr)
            return 2
        problem = check_run_folders(
            Path(args.tensorboard), [format_setting(w, k) for w, k in opts["settings"]], list(args.methods)
        )
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    record_extra: Dict[str, Any] = {
        "options": jsonable_options(args),
        "config_file": config.record() if config is not None else None,
    }
    from mmnet_plugin.distributed import distributed_session
    from mmnet_plugin.runtime import tune_cpu_allocator

    from .grid import run_grid

    with contextlib.ExitStack() as stack:
        try:
            ctx, device = stack.enter_context(distributed_session(device, timeout=args.dist_timeout))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        tune_cpu_allocator()
        threads_before = torch.get_num_threads()
        try:
            if args.threads:
                torch.set_num_threads(args.threads)
            elif ctx.enabled and device.type == "cpu":
                torch.set_num_threads(1)  # the ranks share the cores
            return run_grid(
                args,
                given,
                output,
                device,
                opts,
                recipes,
                t_start,
                ctx=ctx,
                tensorboard=tensorboard,
                record_extra=record_extra,
            )
        except RuntimeError as exc:  # a peer died or stopped answering: one line, records kept
            from mmnet_plugin.distributed import describe_dist_failure

            line = describe_dist_failure(exc) if ctx.enabled else None
            if line is None:
                raise
            print(f"error (rank {ctx.rank}): {line} in {output}/records", file=sys.stderr)
            return 1
        finally:
            torch.set_num_threads(threads_before)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
