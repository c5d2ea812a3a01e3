"""Stopping and resuming a run exactly: a run stopped anywhere (Ctrl-C, SIGTERM, kill -9, a full
disk, SLURM's warning signal) and run again ends as a run never stopped would.

    stops.py        Ctrl-C and SIGTERM: the handlers, the hand-over to Lightning's graceful stop
                    (the one module that sets its flag), saving at the stop, the context a run's
                    fit and test run in
    checkpoints.py  atomic checkpoints, periodic ones inside an epoch, RNG states, the epoch's
                    running loss
    batches.py      resumable batches: a resumed epoch skips what it already trained on
    metrics_log.py  metrics.csv continued from the checkpoint's row count
    point.py        which checkpoint a run resumes from, and whether it is the run's own

`trainer_parts` is what a run's Trainer needs of all this (bench/train/trainer.py). Lightning's
private internals used here go through bench/compat.py.
"""
from __future__ import annotations


def trainer_parts(run_id: str, config: dict, run_dir, monitor: str, mode: str,
                  every_n_steps: int) -> dict:
    """The callbacks (in the order they must run), the CSV logger and the checkpoint IO that make
    a run resumable: {"callbacks", "logger", "plugins"}."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from bench.resume.checkpoints import (AtomicCheckpointIO, EpochAggregates, PeriodicCheckpoint,
                                          RunIdentityAndRng)
    from bench.resume.metrics_log import ContinuingCSVLogger, LogRowsInCheckpoint
    from bench.resume.stops import SaveOnInterrupt, StopAtSafePoint

    callbacks = [
        ModelCheckpoint(dirpath=run_dir.checkpoints, filename="best", monitor=monitor, mode=mode,
                        save_top_k=1, save_last=True, auto_insert_metric_name=False,
                        enable_version_counter=False),  # last.ckpt is shared with PeriodicCheckpoint
        EpochAggregates(),  # before any callback that saves at a batch end
        PeriodicCheckpoint(run_dir.last_checkpoint, every_n_steps),
        RunIdentityAndRng(run_id, config),
        LogRowsInCheckpoint(),
        SaveOnInterrupt(run_dir.last_checkpoint),
        StopAtSafePoint(),
    ]
    return {"callbacks": callbacks,
            "logger": ContinuingCSVLogger(run_dir.path, name="logs", version=""),
            "plugins": [AtomicCheckpointIO()]}
