"""Exact resume: atomic checkpoints, mid-epoch checkpoints, RNG states and resumable batches.

A run killed at any point (mid-epoch, in validation, while a checkpoint is written) and resumed
ends with the same weights and metrics as a run never interrupted:

- `AtomicCheckpointIO` writes every checkpoint to a temp file, fsyncs it and renames it over the
  old one, keeping the previous last.ckpt as last.prev.ckpt: a kill mid-save leaves the old file.
- `PeriodicCheckpoint` saves last.ckpt every `trainer.checkpoint_every_n_steps` training steps
  (the epoch-end last.ckpt comes from ModelCheckpoint), so a kill loses at most N steps, and
  once more when training ends unless it already holds the final step: Lightning 2.6's
  ModelCheckpoint(save_last=True) writes last.ckpt at a validation end only when that validation
  also saved a top-k checkpoint, so after a final epoch that did not improve, last.ckpt would
  hold an earlier step.
- `resumable_loader` makes the training DataLoader stateful (Lightning's own mid-epoch restore
  saves and loads a loader's `state_dict`): the state is (epoch, batches served), and on restore
  the sampler skips the batches already trained on, without loading them. The datamodules' batch
  order depends only on (seed, epoch), so skipping is enough. Under DDP the same sampler shards
  the batches between ranks (Lightning's DistributedSampler wrapper would list the whole epoch
  first and could not skip).
- `RunIdentityAndRng` stores the torch/numpy/python RNG states and the run's identity in the
  checkpoint; the RNG states are put back when training restarts, the identity guards against
  resuming a run from another config's checkpoint (bench/run/resume.py reads it back).
- `EpochAggregates` stores the epoch's running sums of what training_step logs, so a resumed
  epoch's train/loss_epoch averages all its batches. (The training log's rows: metrics_log.py;
  where Ctrl-C and SIGTERM stop: signals.py.)
- A checkpoint write that fails (disk full) removes its temp file and raises StoreWriteError,
  naming the file: the run fails with that one reason, the previous checkpoint stays.

Lightning does not save RNG states, and does not skip already-seen batches of a plain sampler
(it warns and starts the epoch's data over), hence the hand-written parts.
"""
from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from bench.run.signals import stops_held
from bench.store import StoreWriteError

KILL_ENV = "LESA_BENCH_TEST_KILL_AT"  # tests only: "save:N", "step:N", "optim:N" (inside step N,
# before its optimizer step), "val:N" or "test:N" (batches) -> SIGKILL self
# (a third part sends another signal instead: "step:N:INT", "val:N:TERM"; several: a,b)


def maybe_die(point: str, count: int) -> None:
    """Signal this process at a test's chosen point (LESA_BENCH_TEST_KILL_AT=point:count)."""
    for wanted in filter(None, os.environ.get(KILL_ENV, "").split(",")):  # "a:1:INT,b:2:INT"
        where, _, name = wanted.partition(":")[2].partition(":")
        if wanted.split(":")[0] == point and where == str(count):
            os.kill(os.getpid(), getattr(signal, f"SIG{name or 'KILL'}"))


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same folder, fsync, rename; last.ckpt's previous version
    stays as last.prev.ckpt (a fallback should the new one ever be unreadable)."""

    saves = 0
    saved_steps: dict[str, int] = {}  # path -> global_step of this process's last save there

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with stops_held():
            self._save(checkpoint, Path(path))

    def _save(self, checkpoint, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        keep = path.with_name(f".last.prev.{os.getpid()}.tmp")
        AtomicCheckpointIO.saves += 1
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                maybe_die("save", AtomicCheckpointIO.saves)  # a kill mid-save leaves the temp
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
        maybe_die("step", step)

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
        self._val_batches = 0

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

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        maybe_die("optim", trainer.global_step + 1)  # tests: inside training step N

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if not trainer.sanity_checking:
            self._val_batches += 1
            maybe_die("val", self._val_batches)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        maybe_die("test", batch_idx + 1)


def _numpy_state() -> tuple:
    # as torch and Python types: Lightning loads checkpoints with weights_only=True
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


# ---------------------------------------------------------------------------------------------
# resumable batches


class ResumableBatches(Sampler):
    """Wraps a datamodule's batch sampler: skips the batches a restored run already trained on
    and, under DDP, gives rank r every world-th batch from r (all ranks the same count)."""

    def __init__(self, sampler, rank: int = 0, world: int = 1, equal: bool = True):
        self.sampler, self.rank, self.world, self.equal = sampler, rank, world, equal
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        if self.world == 1:
            return n
        return n // self.world if self.equal else len(range(self.rank, n, self.world))

    def __iter__(self):
        skip, self.skip = self.skip, 0  # read now: DataLoader iterators call iter() eagerly
        mine = itertools.islice(iter(self.sampler), self.rank, None, self.world)
        return itertools.islice(mine, skip, len(self))


class ResumableLoader(DataLoader):
    """A DataLoader with Lightning's `state_dict`/`load_state_dict`: (epoch, batches served)."""

    _skip = 0  # batches to skip at the next iter(), set by load_state_dict
    _served = 0

    def __iter__(self):
        self.sampler.skip, self._skip = self._skip, 0
        self._served = self.sampler.skip
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self._served}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._skip = state["batches"]


def resumable_loader(loader: DataLoader, rank: int = 0, world: int = 1,
                     train: bool = True) -> DataLoader:
    """The same loader over ResumableBatches (the datamodules batch in the sampler)."""
    if (loader.batch_size is not None or isinstance(loader.sampler, ResumableBatches)
            or (world == 1 and not train)):
        return loader  # not batched by its sampler, or nothing to add
    sampler = ResumableBatches(loader.sampler, rank, world, equal=train)
    extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers else {}
    cls = ResumableLoader if train else DataLoader
    return cls(loader.dataset, batch_size=None, sampler=sampler, num_workers=loader.num_workers,
               collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
               worker_init_fn=loader.worker_init_fn, generator=loader.generator,
               persistent_workers=loader.persistent_workers, timeout=loader.timeout, **extra)


class ResumableData(L.Callback):
    """Routes the datamodule's loaders through `resumable_loader` (train: skipping; all: sharded
    by rank under DDP, where the Trainer runs with use_distributed_sampler=False), and hands the
    training loader its saved state.

    Lightning would hand it over itself, but only if the train loader is built after the loops
    are restored; `trainer.estimated_stepping_batches` (our LR schedule) builds it earlier, in
    configure_optimizers, and the state is then never loaded. Callbacks are restored before, so
    the state is taken here, under the same condition as Lightning's: the epoch was unfinished.
    """

    def __init__(self, datamodule):
        self.pending = None
        for name, train in (("train_dataloader", True), ("val_dataloader", False),
                            ("test_dataloader", False)):
            setattr(datamodule, name, self._wrap(getattr(datamodule, name), train))
        self.trainer = None

    def _wrap(self, original, train: bool):
        def loader():
            trainer = self.trainer
            rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
            built = resumable_loader(original(), rank, world, train)
            if train and self.pending is not None and isinstance(built, ResumableLoader):
                built.load_state_dict(self.pending)
                self.pending = None
            return built
        return loader

    def setup(self, trainer, pl_module, stage):
        self.trainer = trainer

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        states = (fit.get("state_dict") or {}).get("combined_loader") or []
        epoch = (fit.get("epoch_progress") or {}).get("current") or {}
        if states and epoch.get("processed", 0) < epoch.get("started", 0):
            self.pending = states[0]


# ---------------------------------------------------------------------------------------------
# epoch aggregates


def epoch_ended_unlogged(trainer) -> bool:
    """Whether a save now is at the end of a training epoch whose end Lightning has not logged
    yet (ModelCheckpoint saves in on_train_epoch_end): a resume from it starts the next epoch
    and never logs this epoch's end (metrics_log.py keeps that row in the checkpoint)."""
    epoch = trainer.fit_loop.epoch_progress.current
    return bool(trainer.training and epoch.processed == epoch.started
                and epoch.completed < epoch.processed)


class EpochAggregates(L.Callback):
    """Keeps the running epoch aggregates of what training_step logs (the sums behind
    train/loss_epoch) in mid-epoch checkpoints, and puts them back on resume.

    Lightning keeps them in the training loop's result collection, which it does not save: a run
    resumed mid-epoch averaged only the batches after the resume. They come back into that
    collection (Lightning computes and logs the epoch value as ever): added to the first resumed
    batch's values (the sum in the same order as an uninterrupted run's, so equal to the bit),
    or, when the epoch has no batch left, registered before the epoch ends.
    """

    REDUCTIONS = ("mean", "sum", "max", "min")

    def __init__(self):
        self._restored: dict | None = None

    @staticmethod
    def _results(trainer):
        return trainer.fit_loop.epoch_loop._results

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self._restored:  # restored and not put back yet: nothing was added since
            checkpoint["epoch_aggregates"] = self._restored
            return
        saved = {}
        if epoch_ended_unlogged(trainer):  # resumes in the next epoch (the row is kept)
            checkpoint["epoch_aggregates"] = saved
            return
        for key, item in self._results(trainer).items():
            meta = item.meta
            reduce = next((r for r in self.REDUCTIONS if meta.reduce_fx is getattr(torch, r)),
                          None)
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
        checkpoint["epoch_aggregates"] = saved

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn == "fit":  # not when trainer.test loads best.ckpt's weights
            self._restored = checkpoint.get("epoch_aggregates") or None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._put_back(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._put_back(trainer)

    def _put_back(self, trainer) -> None:
        if not self._restored:
            return
        results = self._results(trainer)
        for key, saved in self._restored.items():
            item = results.get(key)
            if item is None or item.has_reset:  # not logged since the resume
                value = saved["value"].to(trainer.strategy.root_device)
                results.log(saved["fx"], saved["name"], value, prog_bar=saved["prog_bar"],
                            logger=saved["logger"], on_step=saved["on_step"], on_epoch=True,
                            reduce_fx=saved["reduce"], enable_graph=saved["enable_graph"],
                            sync_dist=saved["sync"], sync_dist_fn=trainer.strategy.reduce,
                            add_dataloader_idx=saved["add_dataloader_idx"], batch_size=1,
                            metric_attribute=saved["metric_attribute"],
                            rank_zero_only=saved["rank_zero_only"])
                item = results[key]
                item.value = value.to(item.value.dtype)
                if saved["count"] is not None:
                    item.cumulated_batch_size = saved["count"].to(value.device)
                continue
            value = saved["value"].to(item.value.device)
            if saved["reduce"] in ("mean", "sum"):
                item.value = value + item.value
            else:
                item.value = getattr(torch, saved["reduce"])(value, item.value)
            if saved["count"] is not None:
                item.cumulated_batch_size = (saved["count"].to(item.value.device)
                                             + item.cumulated_batch_size)
        self._restored = None
