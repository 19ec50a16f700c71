"""The MM-Net analyses of the paper's section 4.6 from a checkout (the code is
:mod:`mmnet_plugin.bench.analysis`): ``python -m benchmarks.analysis --help``, or
``python benchmarks/analysis.py --help``."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: this checkout's package comes first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmnet_plugin.bench.analysis import *  # noqa: E402,F401,F403  (scripts that import benchmarks.analysis)
from mmnet_plugin.bench.analysis import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
