"""``python -m mmnet_plugin`` runs the ``mmnet`` command."""

import sys

from .cli import main

sys.exit(main())
