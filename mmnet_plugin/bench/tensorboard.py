"""``--tensorboard DIR``: the curves of every job as TensorBoard event files.

One run folder per job, ``DIR/<setting>/<method>``, so TensorBoard lists the methods of a
setting side by side. Scalars, against optimiser steps:

- ``train/loss``: the loss of every training step (as the method returned it);
- ``val/accuracy``: the val-split accuracy at each validation point (the curve in
  results.json), and ``val/accuracy_by_episode`` against training episodes;
- ``test/accuracy``: the test accuracy of the tested weights, at the last step.

``torch.utils.tensorboard`` needs the ``tensorboard`` package (the ``bench`` extra); it is
imported only when ``--tensorboard`` is given, and its absence is a one-line error before any
training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["TensorBoardLog", "check_tensorboard"]

_HINT = 'pip install "mmnet-plugin[bench]" (or pip install tensorboard)'


def check_tensorboard() -> Optional[str]:
    """``None`` when ``torch.utils.tensorboard`` imports, else a one-line reason with the fix."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        return f"--tensorboard needs the tensorboard package ({exc}); {_HINT}"
    return None


class TensorBoardLog:
    """Event files of the jobs of one run under ``root``.

    Args:
        root: the ``--tensorboard`` folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._writer: Any = None

    def start(self, method: str, setting: str) -> None:
        """Open the run folder of one job (closing the previous one's).

        Args:
            method: the method's command-line name.
            setting: e.g. ``5w1s``.
        """
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        self._writer = SummaryWriter(log_dir=str(self.root / setting / method))

    def train_loss(self, step: int, loss: float) -> None:
        """One training step's loss (ignored outside :meth:`start` ... :meth:`finish`)."""
        if self._writer is not None:
            self._writer.add_scalar("train/loss", float(loss), int(step))

    def finish(self, record: Dict[str, Any]) -> None:
        """Write the job's val curve and test accuracy from its record, and close its files.

        Args:
            record: the job's record (``status`` ``ok``; others are skipped).
        """
        if self._writer is None:
            return
        if record.get("status") == "ok":
            for point in record.get("curve") or []:
                self._writer.add_scalar("val/accuracy", float(point["val_accuracy"]), int(point["step"]))
                self._writer.add_scalar("val/accuracy_by_episode", float(point["val_accuracy"]), int(point["episodes"]))
            self._writer.add_scalar("test/accuracy", float(record["accuracy"]), int(record.get("train_steps", 0)))
        self.close()

    def close(self) -> None:
        """Flush and close the open run folder, if any."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
