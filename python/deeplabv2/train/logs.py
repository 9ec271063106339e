"""Training logs, written on rank 0: a CSV file, TensorBoard (if installed) and a progress bar.

`{output_dir}/train_log.csv` has one row every `log_every` iterations. A resumed run first drops
the rows past the iteration it resumes from (they belong to the interrupted run's lost work) and
then appends, so the file reads as one run.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from deeplabv2.train.checkpoint import atomic_file

LOG_NAME = "train_log.csv"
TENSORBOARD_DIR = "tensorboard"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogRow:
    """One row of train_log.csv."""

    iteration: int
    loss: float  # mean over the iterations since the previous row
    lr: float  # learning rate of the first (backbone weights) group, after this iteration
    images_per_s: float  # since the previous row
    elapsed_s: float  # training time, accumulated over resumed runs


LOG_FIELDS = tuple(item.name for item in fields(LogRow))


def read_log(path: Path) -> list[dict[str, float]]:
    """The rows of a train_log.csv as dicts of numbers (iteration as int)."""
    with open(path, newline="") as handle:
        return [
            {key: int(value) if key == "iteration" else float(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def _keep_rows_until(path: Path, iteration: int) -> None:
    """Rewrites the log without the rows past `iteration` (atomically)."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["iteration"]) <= iteration]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_file(path) as handle:
        handle.write(text.getvalue().encode())


def _open_tensorboard(directory: Path, start_iteration: int) -> Any | None:
    """A SummaryWriter, or None (with an info message) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: no TensorBoard logs (the CSV log is written)")
        return None
    # A resumed run purges the events its predecessor wrote past the checkpoint, as the CSV
    # log drops those rows: purge_step is the first step written again.
    purge_step = start_iteration + 1 if start_iteration else None
    return SummaryWriter(str(directory), purge_step=purge_step)


class TrainLogger:
    """CSV rows, TensorBoard scalars and a tqdm bar on the main process; nothing elsewhere."""

    def __init__(
        self, output_dir: Path, start_iteration: int, total_iterations: int, enabled: bool
    ) -> None:
        self.enabled = enabled
        self.path = output_dir / LOG_NAME
        self._file = None
        self._writer = None
        self._tensorboard = None
        self._progress = tqdm(
            total=total_iterations, initial=start_iteration, disable=not enabled,
            desc="train", unit="it", dynamic_ncols=True,
        )
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            _keep_rows_until(self.path, start_iteration)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if self._file.tell() == 0:
            self._writer.writerow(LOG_FIELDS)
            self._file.flush()
        self._tensorboard = _open_tensorboard(output_dir / TENSORBOARD_DIR, start_iteration)

    def step(self) -> None:
        """One more iteration done (advances the progress bar)."""
        self._progress.update(1)

    def log(self, row: LogRow) -> None:
        """Writes a row to the CSV file and TensorBoard and shows it on the progress bar."""
        if not self.enabled:
            return
        assert self._writer is not None and self._file is not None
        self._writer.writerow(astuple(row))
        self._file.flush()
        if self._tensorboard is not None:
            self._tensorboard.add_scalar("train/loss", row.loss, row.iteration)
            self._tensorboard.add_scalar("train/lr", row.lr, row.iteration)
            self._tensorboard.add_scalar("train/images_per_s", row.images_per_s, row.iteration)
        self._progress.set_postfix(loss=f"{row.loss:.4f}", lr=f"{row.lr:.2e}", refresh=False)

    def close(self) -> None:
        """Closes the files and the progress bar."""
        self._progress.close()
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
