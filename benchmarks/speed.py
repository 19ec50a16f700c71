"""Per-episode training-step and test time of every method on the same episodes, from a
checkout (the code is :mod:`mmnet_plugin.bench.speed`): ``python benchmarks/speed.py --help``."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this checkout's package comes first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmnet_plugin.bench.speed import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
