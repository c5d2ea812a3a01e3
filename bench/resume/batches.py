"""Resumable batches: a run resumed mid-epoch skips the batches it already trained on.

`resumable_loader` makes the training DataLoader stateful (Lightning's own mid-epoch restore
saves and loads a loader's `state_dict`): the state is (epoch, batches served), and on restore
the sampler skips the batches already trained on, without loading them. The datamodules' batch
order depends only on (seed, epoch), so skipping is enough. Under DDP the same sampler shards
the batches between ranks (Lightning's DistributedSampler wrapper would list the whole epoch
first and could not skip, and warns and starts the epoch's data over for a plain sampler).
"""
from __future__ import annotations

import itertools

import lightning as L
from torch.utils.data import DataLoader, Sampler

from bench import compat


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
        self.pending = compat.unfinished_epoch_loader_state(checkpoint)
