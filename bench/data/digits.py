"""The embedded classification default: scikit-learn's bundled 8x8 handwritten digits."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.data import DataError
from bench.data.augment import random_affine
from bench.data.base import ClassificationData, TensorBatches, fraction, stratified_split


class DigitsTransform:
    """(B, 1, S, S) floats in [0, 1] -> augmented, normalised (B, 3, S, S)."""

    def __init__(self, mean: float, std: float, augment: bool):
        self.mean, self.std, self.augment = mean, std, augment

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.augment:
            x = random_affine(x, generator, degrees=10.0, translate=0.1, scale=(0.9, 1.1))
        x = (x - self.mean) / self.std
        # three channels so the digits feed the same backbones as CIFAR/ImageFolder
        return x.expand(-1, 3, -1, -1).contiguous()


class DigitsData(ClassificationData):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

    Stratified train/val/test split drawn from data.split_seed (the same for every run seed);
    images upsampled once to `image_size` and served as 3 identical channels, normalised with
    the train split's mean/std; training augmentation is a small random affine applied per
    batch (drawn from the run seed).
    """

    dataset_name = "digits"
    num_classes = 10

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.val_fraction = fraction("val_fraction", self.options["val_fraction"])
        self.test_fraction = fraction("test_fraction", self.options["test_fraction"])
        if self.val_fraction + self.test_fraction >= 1:
            raise DataError("data.val_fraction + data.test_fraction must be below 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        self.split_indices: dict[str, np.ndarray] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div_(16).unsqueeze(1)
        images = F.interpolate(images, size=self.image_size, mode="bilinear",
                               align_corners=False).clamp_(0, 1)
        labels = torch.from_numpy(digits.target).long()
        train, val, test = stratified_split(
            digits.target, [self.val_fraction, self.test_fraction], self.split_seed)
        self.split_indices = {"train": train, "val": val, "test": test}
        train_images = images[train]
        mean, std = train_images.mean().item(), train_images.std().item()
        eval_transform = DigitsTransform(mean, std, augment=False)
        self.train_set = TensorBatches(train_images, labels[train],
                                       DigitsTransform(mean, std, augment=self.augment))
        self.val_set = TensorBatches(images[val], labels[val], eval_transform)
        self.test_set = TensorBatches(images[test], labels[test], eval_transform)
