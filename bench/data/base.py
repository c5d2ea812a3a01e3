"""The datamodule base every dataset family derives from: seeded batching and the split.

Two seeds, kept apart (a paired design): `split_seed` draws whatever defines the val and test
sets (the datasets' splits, digit_scenes' val/test canvases), so they are the same for every run
seed and strategy; the run's `seed` draws everything about training. Every loader draws its
randomness from the run's seed alone, through `SeededBatches`: the
sampler (which always runs in the main process) hands the dataset a `BatchKey` holding one whole
batch's indices and its own augmentation seed. Batches are therefore the same whatever
`num_workers` is, and an epoch's batches depend only on (seed, epoch), so a run resumed at epoch
k sees what an uninterrupted run sees there.

Batch formats:
- classification (`ClassificationData`): `(images, labels)`, float32 (B, 3, H, W) normalised
  images and int64 (B,) labels.
- detection (`DetectionData`): `(images, targets)`, images a float (B, 3, H, W) tensor in [0, 1]
  (a list of (3, H, W) tensors when sizes differ), targets one dict per image
  (`detection_target`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.data import DATASETS, DataError
from bench.data.options import fraction, int_range, positive_int  # noqa: F401 - re-exported

SPLITS = ("train", "val", "test")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BatchKey(NamedTuple):
    """What the sampler hands the dataset: one whole batch and the seed for its augmentation."""

    indices: list[int]
    seed: int


class SeededBatches(Sampler):
    """Yields one `BatchKey` per batch; the order and the seeds depend only on (seed, epoch).

    Lightning calls `set_epoch` before every epoch; iterated by hand, the epoch advances by itself.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, shuffle: bool,
                 drop_last: bool):
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_items // self.batch_size
        return math.ceil(self.num_items / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
        seeds = rng.integers(0, 2**62, size=len(self))
        for b in range(len(self)):
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield BatchKey(chunk.tolist(), int(seeds[b]))


def stratified_split(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions) parts of round(N * fraction) items plus the rest (first).

    Returns [rest, part_1, part_2, ...], each sorted. Items are ordered so that every prefix
    holds the classes in their overall proportions (within one item per class): each item gets
    the key (its rank in a shuffled copy of its class + jitter) / class size, and parts are taken
    from the front of that order. Unlike per-class rounding this keeps the part sizes exact and
    non-empty on tiny data sets.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + rng.random(len(members))) / len(members)
    order = np.argsort(keys, kind="stable")
    sizes = [max(1, round(len(labels) * f)) for f in fractions]
    if sum(sizes) >= len(labels):
        raise DataError(f"{len(labels)} items are too few to split off {sizes} and keep a "
                        f"training part")
    parts, start = [], 0
    for size in sizes:
        parts.append(np.sort(order[start:start + size]))
        start += size
    return [np.sort(order[start:])] + parts


class SeededDataModule(L.LightningDataModule):
    """Options, seeding and loaders shared by every datamodule (see bench.data for the contract).

    A subclass names its `dataset_name` (its options and their defaults live in
    bench.data.DATASETS) and fills `train_set`, `val_set` and `test_set` in `setup`: datasets
    indexed by `BatchKey` that return a whole batch.
    """

    dataset_name: str
    in_channels = 3

    def __init__(self, *, seed, split_seed=0, root=None, download=False, batch_size=64,
                 num_workers=0, **options):
        super().__init__()
        allowed = DATASETS[self.dataset_name].options
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown option(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(allowed)}")
        self.options = {**allowed, **options}
        self.seed = int(seed)
        if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
            raise DataError(f"data.split_seed must be an integer >= 0, got {split_seed!r}")
        self.split_seed = split_seed  # the val/test split; the run seed never touches it
        self.root = Path(root).expanduser() if root is not None else None
        self.download = bool(download)
        self.batch_size = positive_int("batch_size", batch_size)
        if int(num_workers) < 0:
            raise DataError(f"data.num_workers must be >= 0, got {num_workers!r}")
        self.num_workers = int(num_workers)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def check(self) -> None:
        """Raise DataError on unusable input; the runner calls this before any training."""

    def _loader(self, dataset, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        n = len(dataset)
        # evaluation keeps the split's own order, the same for every seed and strategy: runs'
        # per-test-image records (predictions.npz) are paired by index
        sampler = SeededBatches(n, self.batch_size, seed=self.seed, shuffle=train,
                                # a last batch of one would break BatchNorm in training
                                drop_last=train and n >= self.batch_size)
        return DataLoader(dataset, batch_size=None, sampler=sampler,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(),
                          # workers' base seeds, for anything in them that uses torch's RNG
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self):
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        return self._loader(self.val_set, train=False)

    def test_dataloader(self):
        return self._loader(self.test_set, train=False)


class ClassificationData(SeededDataModule):
    """Base of the classification datamodules: every one takes image_size and augment."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.image_size = positive_int("image_size", self.options["image_size"])
        self.augment = bool(self.options["augment"])


class TensorBatches(Dataset):
    """Images held in memory; indexed by `BatchKey`, returns a whole transformed batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: BatchKey):
        idx = torch.as_tensor(key.indices, dtype=torch.long)
        generator = torch.Generator().manual_seed(key.seed)
        return self.transform(self.images[idx], generator), self.labels[idx]


class DetectionData(SeededDataModule):
    """Base of the detection datamodules; `image_mean`/`image_std` are what the detector
    normalises with.

    Crowd / ignore regions stay in the targets: the evaluator treats them as COCO iscrowd ground
    truth; the detection task leaves them out of its training loss.
    """

    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, *, batch_size=8, **kwargs):
        super().__init__(batch_size=batch_size, **kwargs)


def detection_target(boxes, labels, image_id: int, iscrowd=None, area=None) -> dict:
    """One image's detection target:

        boxes    float32 (N, 4) xyxy, in pixels      labels   int64 (N,) contiguous 0..K-1
        iscrowd  int64 (N,) 1 = ignore region        area     float32 (N,) (COCO small/medium/large)
        image_id int64 ()   the image's id in its annotation file (digit_scenes: index + 1)
    """
    boxes = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    if area is None:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "boxes": boxes,
        "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
        "iscrowd": (torch.zeros(len(boxes), dtype=torch.int64) if iscrowd is None
                    else torch.as_tensor(np.asarray(iscrowd, np.int64).reshape(-1))),
        "area": torch.as_tensor(area, dtype=torch.float32).reshape(-1),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
    }
