"""Exact resume: atomic checkpoints, mid-epoch checkpoints, RNG states, the epoch's running loss.

A run killed at any point (mid-epoch, in validation, while a checkpoint is written) and resumed
ends with the same weights and metrics as a run never interrupted:

- `AtomicCheckpointIO` writes every checkpoint to a temp file, fsyncs it and renames it over the
  old one, keeping the previous last.ckpt as last.prev.ckpt: a kill mid-save leaves the old file.
  A stop that arrives during the write waits for it (stops.py).
- `PeriodicCheckpoint` saves last.ckpt every `trainer.checkpoint_every_n_steps` training steps
  (the epoch-end last.ckpt comes from ModelCheckpoint), so a kill loses at most N steps, and
  once more when training ends unless it already holds the final step: Lightning 2.6's
  ModelCheckpoint(save_last=True) writes last.ckpt at a validation end only when that validation
  also saved a top-k checkpoint, so after a final epoch that did not improve, last.ckpt would
  hold an earlier step.
- `RunIdentityAndRng` stores the torch/numpy/python RNG states and the run's identity in the
  checkpoint; the RNG states are put back when training restarts, the identity guards against
  resuming a run from another config's checkpoint (point.py reads it back).
- `EpochAggregates` stores the epoch's running sums of what training_step logs, so a resumed
  epoch's train/loss_epoch averages all its batches.
- A checkpoint write that fails (disk full) removes its temp file and raises StoreWriteError,
  naming the file: the run fails with that one reason, the previous checkpoint stays.

Lightning does not save RNG states nor the epoch's running aggregates, hence the hand-written
parts (the aggregates' internals: bench/compat.py). Skipping the batches a resumed epoch already
trained on: batches.py; the training log's rows: metrics_log.py.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from bench import compat
from bench.resume.stops import stops_held
from bench.store import StoreWriteError


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same folder, fsync, rename; last.ckpt's previous version
    stays as last.prev.ckpt (a fallback should the new one ever be unreadable)."""

    saved_steps: dict[str, int] = {}  # path -> global_step of this process's last save there

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with stops_held():
            self._save(checkpoint, Path(path))

    def _save(self, checkpoint, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        keep = path.with_name(f".last.prev.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                self._write(checkpoint, f)
                os.fsync(f.fileno())
            if path.name == "last.ckpt" and path.exists():
                try:
                    os.link(path, keep)  # a second name for the old file: no copy, no gap
                except OSError:
                    shutil.copy2(path, keep)
                os.replace(keep, path.with_name("last.prev.ckpt"))
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as either
            tmp.unlink(missing_ok=True)
            keep.unlink(missing_ok=True)
            raise StoreWriteError(path, _os_error(err)) from None
        _fsync_dir(path.parent)
        AtomicCheckpointIO.saved_steps[str(path)] = checkpoint.get("global_step", -1)

    @staticmethod
    def _write(checkpoint, f) -> None:
        torch.save(checkpoint, f)
        f.flush()


def _os_error(err: BaseException) -> OSError:
    """The OSError behind a failed write: torch.save's zip writer wraps it in a RuntimeError
    (whose message carries the errno's text, e.g. "No space left on device")."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return OSError(None, first)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PeriodicCheckpoint(L.Callback):
    """Save last.ckpt every `every_n_steps` optimizer steps, inside the epoch.

    Not on an epoch's last batch: the validation-end checkpoint follows, and Lightning treats a
    resume from a last-batch checkpoint as a finished epoch, skipping its validation. (Lightning's
    ModelCheckpoint(every_n_train_steps) would save there too, and cannot also save per epoch.)
    """

    def __init__(self, path, every_n_steps: int):
        self.path, self.every_n_steps = path, every_n_steps
        self._saved_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if (self.every_n_steps and step and step % self.every_n_steps == 0
                and step != self._saved_step and not last_batch):
            self._saved_step = step
            trainer.save_checkpoint(self.path)  # every rank: it ends in a barrier

    def on_train_end(self, trainer, pl_module):
        # last.ckpt = the final weights (see the module docstring); not after an exception.
        # Only rank 0 writes files, and every rank must take part in a save: rank 0 decides
        stale = AtomicCheckpointIO.saved_steps.get(str(Path(self.path))) != trainer.global_step
        if trainer.strategy.broadcast(stale, src=0):
            trainer.save_checkpoint(self.path)


class RunIdentityAndRng(L.Callback):
    """Keeps the run's identity and RNG states in its checkpoints and puts the RNG back.

    The RNG states are those at the save (the end of a training batch or of validation); they are
    restored when training restarts, after the sanity check and before the next batch, which is
    where an uninterrupted run would go on from that state.
    """

    def __init__(self, run_id: str, config: dict):
        self.run_id, self.config = run_id, config
        self._rng = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["lesa_bench"] = {"run_id": self.run_id, "config": self.config}
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    "numpy": _numpy_state(),
                                    "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self._rng = checkpoint.get("rng_states")

    def on_train_start(self, trainer, pl_module):
        if self._rng is not None:
            torch.set_rng_state(self._rng["torch"])
            name, keys, pos, has_gauss, gauss = self._rng["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(self._rng["python"])
            if "cuda" in self._rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._rng["cuda"])
            self._rng = None


def _numpy_state() -> tuple:
    # as torch and Python types: Lightning loads checkpoints with weights_only=True
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


class EpochAggregates(L.Callback):
    """Keeps the running epoch aggregates of what training_step logs (the sums behind
    train/loss_epoch) in mid-epoch checkpoints, and puts them back on resume: added to the first
    resumed batch's values, or, when the epoch has no batch left, registered before it ends
    (Lightning then computes and logs the epoch value as ever). A run resumed mid-epoch would
    otherwise average only the batches after the resume."""

    def __init__(self):
        self._restored: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self._restored:  # restored and not put back yet: nothing was added since
            checkpoint["epoch_aggregates"] = self._restored
        elif compat.epoch_ended_unlogged(trainer):  # resumes in the next epoch (row kept)
            checkpoint["epoch_aggregates"] = {}
        else:
            checkpoint["epoch_aggregates"] = compat.epoch_aggregates(trainer)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn == "fit":  # not when trainer.test loads best.ckpt's weights
            self._restored = checkpoint.get("epoch_aggregates") or None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._put_back(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._put_back(trainer)

    def _put_back(self, trainer) -> None:
        if self._restored:
            compat.restore_epoch_aggregates(trainer, self._restored)
            self._restored = None
