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

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

__all__ = ["TensorBoardLog", "check_tensorboard", "check_run_folders"]

_HINT = 'pip install "mmnet-plugin[bench]" (or pip install tensorboard)'


def check_tensorboard() -> Optional[str]:
    """``None`` when ``torch.utils.tensorboard`` imports, else a one-line reason with the fix."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        return f"--tensorboard needs the tensorboard package ({exc}); {_HINT}"
    return None


def check_run_folders(root: Path, settings: Iterable[str], methods: Iterable[str]) -> Optional[str]:
    """``None`` when every ``root/<setting>/<method>`` can be created and written, else one line.

    Run before any training, so a file that blocks a folder (or a read-only place) is
    refused at once rather than after a method has trained.
    """
    for setting in settings:
        for method in methods:
            folder = Path(root) / setting / method
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=str(folder))
                os.close(fd)
                os.unlink(tmp)
            except OSError as exc:
                return (
                    f"--tensorboard {root}: cannot write {folder} ({exc.strerror or type(exc).__name__}); "
                    "choose another folder"
                )
    return None


class TensorBoardLog:
    """Event files of the jobs of one run under ``root``.

    Writing is best effort: if an event file cannot be written (a full disk, a file where a
    folder should be), one warning names the problem and the run goes on without TensorBoard;
    the results files do not depend on it.

    Args:
        root: the ``--tensorboard`` folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._writer: Any = None
        self.failed: Optional[str] = None

    def _fail(self, exc: BaseException) -> None:
        self._writer = None
        if self.failed is None:
            text = " ".join(str(exc).split())[:160]
            self.failed = f"{type(exc).__name__}: {text}"
            print(
                f"warning: --tensorboard {self.root}: cannot write event files ({self.failed}); "
                "continuing without TensorBoard (results are written as usual)",
                file=sys.stderr,
            )

    def start(self, method: str, setting: str) -> None:
        """Open the run folder of one job (closing the previous one's).

        Args:
            method: the method's command-line name.
            setting: e.g. ``5w1s``.
        """
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        if self.failed is not None:
            return
        try:
            self._writer = SummaryWriter(log_dir=str(self.root / setting / method))
        except Exception as exc:  # OSError, or the writer's own wrapping of it
            self._fail(exc)

    def train_loss(self, step: int, loss: float) -> None:
        """One training step's loss (ignored outside :meth:`start` ... :meth:`finish`)."""
        if self._writer is not None:
            try:
                self._writer.add_scalar("train/loss", float(loss), int(step))
            except Exception as exc:
                self._fail(exc)

    def finish(self, record: Dict[str, Any]) -> None:
        """Write the job's val curve and test accuracy from its record, and close its files.

        Args:
            record: the job's record (``status`` ``ok``; others are skipped).
        """
        if self._writer is None:
            return
        try:
            if record.get("status") == "ok":
                for point in record.get("curve") or []:
                    self._writer.add_scalar("val/accuracy", float(point["val_accuracy"]), int(point["step"]))
                    self._writer.add_scalar(
                        "val/accuracy_by_episode", float(point["val_accuracy"]), int(point["episodes"])
                    )
                self._writer.add_scalar("test/accuracy", float(record["accuracy"]), int(record.get("train_steps", 0)))
        except Exception as exc:
            self._fail(exc)
        self.close()

    def close(self) -> None:
        """Flush and close the open run folder, if any."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.flush()
                writer.close()
            except Exception as exc:
                self._fail(exc)
