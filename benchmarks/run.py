"""The benchmark harness from a checkout: the same command as ``mmnet bench`` (the code is
:mod:`mmnet_plugin.bench`; ``python benchmarks/run.py --help`` lists the options).

    python benchmarks/run.py --methods mmnet,maml --settings 5w1s,20w5s
    python benchmarks/run.py --config configs/cpu-leaderboard.yaml
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this checkout's package comes first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmnet_plugin.bench.cli import main  # noqa: E402
from mmnet_plugin.distributed import exit_process  # noqa: E402

if __name__ == "__main__":
    exit_process(main(prog="benchmarks/run.py"))
