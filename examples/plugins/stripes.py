"""A dataset as a plugin: noisy oriented stripes, the label is their orientation.

Each image is a grating sin(2 pi f (x cos t + y sin t) + phase) under Gaussian noise, with
`classes` orientations t = k pi / classes; frequency and phase vary per image. Generated from
seeds, no download: image i of a split comes from the generator seeded with (split_seed, split),
so every run seed and strategy trains and is measured on the same images; the run's seed orders
the batches and draws the training shifts. List this file under `plugins:` and set
`data.name: stripes`; `lesa-bench check-plugin examples/plugins/stripes.py` tests it.
"""
from __future__ import annotations

import numpy as np
import torch

from bench.data import DataError, DatasetSpec, register_dataset
from bench.data.base import ClassificationData, TensorBatches

SPLITS = {"train": 0, "val": 1, "test": 2}


def check_stripes(data: dict) -> None:
    """The options' checks at load time (`--dry-run` refuses what could not train)."""
    if not 2 <= data["classes"] <= 12:
        raise DataError(f"data.classes: {data['classes']}: expected 2 to 12 orientations")
    if data["noise"] < 0:
        raise DataError(f"data.noise: {data['noise']}: expected a standard deviation >= 0")
    if data["image_size"] < 8:
        raise DataError(f"data.image_size: {data['image_size']}: expected 8 or more pixels")
    for split in SPLITS:
        if data[f"{split}_images"] < data["classes"]:
            raise DataError(f"data.{split}_images: {data[f'{split}_images']}: expected at "
                            f"least one image per class ({data['classes']})")


def render(count: int, size: int, classes: int, noise: float, rng: np.random.Generator):
    """(count, 1, size, size) float32 images and (count,) int64 labels, balanced classes."""
    labels = rng.permutation(np.arange(count) % classes)
    angle = labels * np.pi / classes + rng.uniform(-0.1, 0.1, count)
    freq = rng.uniform(0.12, 0.3, count)
    phase = rng.uniform(0, 2 * np.pi, count)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    wave = (x[None] * np.cos(angle)[:, None, None] + y[None] * np.sin(angle)[:, None, None])
    images = 0.5 + 0.5 * np.sin(2 * np.pi * freq[:, None, None] * wave + phase[:, None, None])
    images += noise * rng.standard_normal(images.shape)
    return images[:, None].astype(np.float32), labels.astype(np.int64)


class Shift:
    """Normalise, 3 channels, and in training a random cyclic shift (orientation is kept)."""

    def __init__(self, augment: bool):
        self.augment = augment

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment:
            dy, dx = (int(v) for v in torch.randint(0, x.shape[-1], (2,), generator=generator))
            x = torch.roll(x, (dy, dx), dims=(-2, -1))
        return ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()


class StripesData(ClassificationData):
    dataset_name = "stripes"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(self.options["classes"])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        o = self.options
        sets = {}
        for split, index in SPLITS.items():
            rng = np.random.default_rng([self.split_seed, index])
            images, labels = render(o[f"{split}_images"], self.image_size, self.num_classes,
                                    o["noise"], rng)
            transform = Shift(self.augment and split == "train")
            sets[split] = TensorBatches(torch.from_numpy(images), torch.from_numpy(labels),
                                        transform)
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]


register_dataset("stripes", DatasetSpec(
    "classification", StripesData,
    {"image_size": 16, "classes": 4, "noise": 0.8, "train_images": 512, "val_images": 128,
     "test_images": 256, "augment": True},
    check_stripes))
