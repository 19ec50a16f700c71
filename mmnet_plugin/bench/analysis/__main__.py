"""``python -m mmnet_plugin.bench.analysis``."""

import sys

from .cli import main

sys.exit(main())
