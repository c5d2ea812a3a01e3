"""The run's training log, logs/metrics.csv, continued across resumes instead of rewritten.

Lightning's CSVLogger deletes metrics.csv when it starts, so a resumed run kept only the rows
logged after its resume. Here every checkpoint records how many rows the log held when it was
saved (`LogRowsInCheckpoint`), and the resumed run keeps that many and appends: rows a killed
process wrote after its last checkpoint are dropped, and the resumed run writes them again as
it replays those steps, so the file ends as an uninterrupted run's. A checkpoint saved at the
end of a training batch (PeriodicCheckpoint, the SLURM requeue) comes before Lightning logs that
batch's row, and one saved at an epoch's end (ModelCheckpoint, in on_train_epoch_end) before
it logs the epoch's row; neither is replayed on resume, so the checkpoint carries the row.
"""
from __future__ import annotations

import csv
import io
import os

import lightning as L

from bench import compat
from bench.store import StoreWriteError, write_atomic


class ContinuingWriter(compat.KeptExperimentWriter):
    """Lightning's CSV writer that keeps the first `keep` rows of an existing metrics.csv
    (none unless a checkpoint was restored) and appends to them."""

    def __init__(self, log_dir: str) -> None:
        self.keep: int = 0
        self.pending: tuple[dict, int] | None = None  # a row the restored checkpoint carried
        self.rows = 0  # rows in the file (after the first save) or buffered
        self._started = False
        super().__init__(log_dir)

    def log_metrics(self, metrics_dict, step=None) -> None:
        super().log_metrics(metrics_dict, step)
        self.rows += 1

    def _start(self) -> None:
        """Cut the file to the rows the restored checkpoint had seen (all of it goes when
        training starts from scratch); its header stays, so the columns stay in order."""
        self._started = True
        kept, keys = [], []
        try:
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                keys = list(reader.fieldnames or [])
                kept = [row for _, row in zip(range(self.keep), reader)]
        except FileNotFoundError:
            pass
        if not self.keep or not kept:
            kept, keys = [], []
            try:
                os.remove(self.metrics_file_path)
            except FileNotFoundError:
                pass
        else:
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
            write_atomic(self.metrics_file_path, text.getvalue())
        self.metrics_keys = keys
        buffered, self.metrics = self.metrics, []
        if self.pending is not None:
            row, step = self.pending
            super().log_metrics(row, step)
        self.metrics += buffered
        self.rows = len(kept) + len(self.metrics)

    def save(self) -> None:
        if not self._started:
            self._start()
        try:
            super().save()
        except OSError as err:
            raise StoreWriteError(err.filename or self.metrics_file_path, err) from None


class ContinuingCSVLogger(compat.CSVLoggerWithWriter):
    """CSVLogger over `ContinuingWriter` (logs/metrics.csv of the run)."""

    writer = ContinuingWriter


def _csv_writer(trainer) -> ContinuingWriter | None:
    for logger in trainer.loggers:
        if isinstance(logger, ContinuingCSVLogger) and trainer.is_global_zero:
            return logger.experiment
    return None


class LogRowsInCheckpoint(L.Callback):
    """Stores metrics.csv's row count (and a pending row) in each checkpoint and hands them to
    the writer when a checkpoint is restored."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        writer = _csv_writer(trainer)
        if writer is None:
            return
        pending = compat.pending_log_row(trainer)
        checkpoint["metrics_log"] = {"rows": writer.rows,
                                     "pending": list(pending) if pending else None}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        writer = _csv_writer(trainer)
        state = checkpoint.get("metrics_log")
        # only when fit resumes: Lightning restores callbacks for trainer.test(ckpt_path) too
        if writer is None or state is None or trainer.state.fn != "fit":
            return
        writer.keep = state["rows"]
        writer.pending = tuple(state["pending"]) if state["pending"] else None
        writer._start()  # now: a checkpoint saved before the next row must count the kept ones
