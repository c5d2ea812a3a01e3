"""Lightning's internals behind one adapter: the only module that reads or sets Lightning's
private attributes (and relies on the layout of its loops and checkpoints, and on the private
writer of its TensorBoard logger).

Exact resume and the graceful stop need a few things Lightning keeps to itself: its stop flag,
the running epoch aggregates of what training_step logs, the row it is about to log, the loaders'
state in a checkpoint, the SLURM environment's auto-requeue. Everything here was written against
the Lightning range pyproject.toml allows (`SUPPORTED`); tests/test_compat.py runs each function
on a real Trainer and fails on a version whose internals moved.
"""
from __future__ import annotations

import os

import lightning
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

SUPPORTED = ((2, 6), (2, 7))  # [lowest, first unsupported): pyproject.toml's lightning range
_REDUCTIONS = ("mean", "sum", "max", "min")


def lightning_version() -> tuple[int, int]:
    major, minor = lightning.__version__.split(".")[:2]
    return int(major), int(minor)


def supported() -> bool:
    return SUPPORTED[0] <= lightning_version() < SUPPORTED[1]


# --- the graceful stop --------------------------------------------------------------------------
def set_stop_flag(trainer, value: bool) -> None:
    """Lightning's own graceful stop: with the flag set, fit raises SIGTERMException at the end
    of the current training batch (after its row is logged) or epoch, and test at its next batch.
    bench/resume/stops.py is the one caller."""
    trainer._signal_connector.received_sigterm = bool(value)


def stop_flag(trainer) -> bool:
    return bool(trainer._signal_connector.received_sigterm)


def disable_slurm_auto_requeue(trainer) -> None:
    """Lightning requeues a SLURM job itself on SIGUSR1 where it detects SLURM; the suite does its
    own (bench/cluster/requeue.py). Read when fit starts, so call it in a callback's setup."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment):
        environment.auto_requeue = False


def tensorboard_file_writer(logger):
    """The event file writer of a Lightning TensorBoardLogger: hparams summaries written straight
    to it go into the run's own event file (SummaryWriter.add_hparams would open a sub-run)."""
    return logger.experiment._get_file_writer()


# --- where a checkpoint is saved ----------------------------------------------------------------
def epoch_ended_unlogged(trainer) -> bool:
    """Whether a save now is at the end of a training epoch whose end Lightning has not logged
    yet (ModelCheckpoint saves in on_train_epoch_end): a resume from it starts the next epoch and
    never logs this epoch's end."""
    epoch = trainer.fit_loop.epoch_progress.current
    return bool(trainer.training and epoch.processed == epoch.started
                and epoch.completed < epoch.processed)


def unfinished_epoch_loader_state(checkpoint: dict) -> dict | None:
    """The training loader's saved state when the checkpoint's epoch was unfinished (Lightning
    hands it to the loader under the same condition), else None."""
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    states = (fit.get("state_dict") or {}).get("combined_loader") or []
    epoch = (fit.get("epoch_progress") or {}).get("current") or {}
    if states and epoch.get("processed", 0) < epoch.get("started", 0):
        return states[0]
    return None


# --- the rows of the training log ---------------------------------------------------------------
class KeptExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer without the delete of an existing metrics.csv when it starts
    (bench/resume/metrics_log.py decides which rows stay)."""

    def _check_log_dir_exists(self) -> None:
        pass


class CSVLoggerWithWriter(CSVLogger):
    """Lightning's CSVLogger writing through the `writer` class it names."""

    writer = KeptExperimentWriter

    @property
    @rank_zero_only
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = self.writer(log_dir=self.log_dir)
        return self._experiment


def pending_log_row(trainer) -> tuple[dict, int] | None:
    """The row Lightning logs right after on_train_batch_end (or, at an epoch end it has not
    logged yet, the epoch's row) when a checkpoint is saved there, with its step; None elsewhere.
    The same test and values as Lightning's update_train_step_metrics / _epoch_metrics."""
    from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

    loop = trainer.fit_loop.epoch_loop
    if epoch_ended_unlogged(trainer):
        row = convert_tensors_to_scalars(loop._results.metrics(False)["log"])
        row.setdefault("epoch", trainer.current_epoch)
        return (row, loop._batches_that_stepped - 1) if row else None
    progress = loop.batch_progress.current
    connector = trainer._logger_connector
    if not (trainer.training and progress.completed < progress.processed
            and connector._first_loop_iter is not None):
        return None
    if trainer.fit_loop._should_accumulate() and trainer.lightning_module.automatic_optimization:
        return None
    if not (connector.should_update_logs or trainer.fast_dev_run):
        return None
    row = convert_tensors_to_scalars(connector.metrics["log"])
    if not row:
        return None
    row.setdefault("epoch", trainer.current_epoch)
    return row, loop._batches_that_stepped


# --- the epoch's running aggregates -------------------------------------------------------------
def epoch_aggregates(trainer) -> dict:
    """The running epoch aggregates of what training_step logs with on_epoch=True (the sums
    behind train/loss_epoch), as plain tensors and options. Lightning keeps them in the training
    loop's result collection and does not save them."""
    saved = {}
    for key, item in trainer.fit_loop.epoch_loop._results.items():
        meta = item.meta
        reduce = next((r for r in _REDUCTIONS if meta.reduce_fx is getattr(torch, r)), None)
        if item.has_reset or not item.is_tensor or not meta.on_epoch or reduce is None:
            continue
        saved[key] = {
            "fx": meta.fx, "name": meta.name, "prog_bar": meta.prog_bar,
            "logger": meta.logger, "on_step": meta.on_step, "reduce": reduce,
            "enable_graph": meta.enable_graph, "add_dataloader_idx": meta.add_dataloader_idx,
            "metric_attribute": meta.metric_attribute, "sync": meta.sync.should,
            "rank_zero_only": meta.sync.rank_zero_only,
            "value": item.value.detach().cpu().clone(),
            "count": (item.cumulated_batch_size.detach().cpu().clone()
                      if reduce == "mean" else None)}
    return saved


def restore_epoch_aggregates(trainer, saved: dict) -> None:
    """Put `epoch_aggregates` back into the result collection: added to what the resumed epoch
    logged since (the sum in the same order as an uninterrupted run's, so equal to the bit), or
    registered anew where nothing was logged since the resume."""
    results = trainer.fit_loop.epoch_loop._results
    for key, entry in saved.items():
        item = results.get(key)
        if item is None or item.has_reset:  # not logged since the resume
            value = entry["value"].to(trainer.strategy.root_device)
            results.log(entry["fx"], entry["name"], value, prog_bar=entry["prog_bar"],
                        logger=entry["logger"], on_step=entry["on_step"], on_epoch=True,
                        reduce_fx=entry["reduce"], enable_graph=entry["enable_graph"],
                        sync_dist=entry["sync"], sync_dist_fn=trainer.strategy.reduce,
                        add_dataloader_idx=entry["add_dataloader_idx"], batch_size=1,
                        metric_attribute=entry["metric_attribute"],
                        rank_zero_only=entry["rank_zero_only"])
            item = results[key]
            item.value = value.to(item.value.dtype)
            if entry["count"] is not None:
                item.cumulated_batch_size = entry["count"].to(value.device)
            continue
        value = entry["value"].to(item.value.device)
        if entry["reduce"] in ("mean", "sum"):
            item.value = value + item.value
        else:
            item.value = getattr(torch, entry["reduce"])(value, item.value)
        if entry["count"] is not None:
            item.cumulated_batch_size = (entry["count"].to(item.value.device)
                                         + item.cumulated_batch_size)
