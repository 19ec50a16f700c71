"""``python -m mmnet_plugin`` runs the ``mmnet`` command."""

from .cli import main
from .distributed import exit_process

exit_process(main())
