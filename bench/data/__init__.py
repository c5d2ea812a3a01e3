"""LightningDataModules, looked up by the experiment's `data.name`.

This file is import-light on purpose (no torch): the config validator and `--dry-run` read the
dataset names, their task and their options from DATASETS without building anything.

A file per dataset family: digits.py, images.py (CIFAR, ImageFolder), scenes.py
(digit_scenes), coco.py, probes.py; all derive from base.SeededDataModule. Contract for every
datamodule class named here:

    class SomeData(SeededDataModule):
        def __init__(self, *, seed, split_seed, root, download, batch_size, num_workers,
                     **options): ...
            # options: exactly the keys of its DatasetSpec.options
            # seed: the run's (training order, augmentation, fresh training canvases);
            # split_seed: the val/test split, the same for every seed and strategy
        num_classes: int; in_channels: int    (known after __init__)
        def check(self) -> None:               # raise DataError on unusable input, before training

A dataset of one's own (a plugin, docs/plugins.md) is one such class and
`register_dataset(name, DatasetSpec(task, TheClass, options, check))`; DATASETS is the one
registry every list of dataset names reads (config choices, did-you-mean, the docs' checks).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from lesa.names import Registry, unknown


class DataError(ValueError):
    """Unusable data: the message names the file or folder and says what to do."""


class DataWarning(UserWarning):
    """Data the suite repaired (a clipped box): the CLI prints it as one `warning:` line."""


@dataclass(frozen=True)
class DatasetSpec:
    task: str  # a key of bench.tasks.TASKS: "classification", "detection", or a plugin's
    # the datamodule class, or "module:Class" (a module under bench.data, or a dotted path)
    target: str | type
    options: dict = field(default_factory=dict)  # dataset-specific data.* keys and defaults
    # checks a resolved `data` section without building anything (DataError naming the key)
    check: Callable[[dict], None] | None = None


# the checks need DataError, defined above
from bench.data.options import (check_coco, check_digits, check_probe_context,  # noqa: E402
                                check_probe_local, check_scenes, check_val_fraction)


# keys every dataset takes; split_seed draws the val/test split (and digit_scenes' val/test
# canvases) apart from the run seed, so every seed and strategy is measured on the same images
COMMON_OPTIONS = {"name": "digits", "root": None, "download": False, "batch_size": 64,
                  "num_workers": 0, "split_seed": 0}

DATASETS: Registry = Registry("dataset", DatasetSpec, {
    "digits": DatasetSpec("classification", "digits:DigitsData", {
        "image_size": 32, "val_fraction": 0.15, "test_fraction": 0.2, "augment": True},
        check_digits),
    "cifar10": DatasetSpec("classification", "images:CIFAR10Data", {
        "image_size": 32, "val_fraction": 0.1, "augment": True}, check_val_fraction),
    "cifar100": DatasetSpec("classification", "images:CIFAR100Data", {
        "image_size": 32, "val_fraction": 0.1, "augment": True}, check_val_fraction),
    "imagefolder": DatasetSpec("classification", "images:ImageFolderData", {
        "image_size": 224, "augment": True}),
    # detection; objects / object_size (px) / distractors are [low, high] per canvas;
    # fresh_train: new training canvases every epoch (train_images per epoch)
    "digit_scenes": DatasetSpec("detection", "scenes:DigitScenesData", {
        "image_size": 128, "train_images": 800, "val_images": 32, "test_images": 128,
        "objects": [3, 10], "object_size": [6, 32], "distractors": [2, 6],
        "fresh_train": True}, check_scenes),
    # probes (bench/data/probes.py, docs/probes.md): one kind of cue decides the label
    "probe_context": DatasetSpec("classification", "probes:ContextProbeData", {
        "image_size": 16, "width": 56, "digit_size": 10, "jitter": 3, "classes": 10,
        "train_images": 2000, "val_images": 500, "test_images": 1000}, check_probe_context),
    "probe_local": DatasetSpec("classification", "probes:LocalProbeData", {
        "image_size": 32, "digit_size": [12, 16], "distractors": [2, 4],
        "train_images": 2000, "val_images": 500, "test_images": 1000}, check_probe_local),
    # paths relative to data.root unless absolute; test: null/unset -> val is the test split
    "coco": DatasetSpec("detection", "coco:COCOData", {
        "train": {"images": "train", "annotations": "annotations/train.json"},
        "val": {"images": "val", "annotations": "annotations/val.json"},
        "test": {"images": None, "annotations": None}}, check_coco),
}, home="bench/data/__init__.py").seal()


def register_dataset(name: str, spec: DatasetSpec) -> DatasetSpec:
    """DATASETS[name] = spec (a plugin's dataset), by lesa.names.Registry's rules; an option
    that every dataset's common keys already have is a ValueError (its task is checked when the
    plugin has loaded: it may register both)."""
    return DATASETS.add(name, spec, _check_spec)


def _check_spec(name: str, spec: DatasetSpec) -> None:
    if not isinstance(spec.options, dict) or not all(isinstance(k, str) for k in spec.options):
        raise TypeError(f"dataset {name!r}: options must be a dict of option name -> default")
    common = sorted(set(spec.options) & set(COMMON_OPTIONS))
    if common:
        raise ValueError(f"dataset {name!r}: option(s) {', '.join(common)} are keys every "
                         f"dataset takes (data.{common[0]}); leave them out of its options")
    if spec.check is not None and not callable(spec.check):
        raise TypeError(f"dataset {name!r}: check must be a function of the data section")


def unregister_dataset(name: str) -> None:
    """Remove a dataset that is not a built-in (a plugin's, when it is unloaded)."""
    DATASETS.remove(name)


def target_class(target: str | type, package: str):
    """A spec's target: the class itself, or "module:Class" (a module of `package` when the
    module part has no dot, else a dotted import path)."""
    if not isinstance(target, str):
        return target
    module_name, class_name = target.split(":")
    if "." not in module_name:
        module_name = f"{package}.{module_name}"
    return getattr(importlib.import_module(module_name), class_name)


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(unknown("dataset", name, DATASETS))
    return DATASETS[name]


def check_options(data: dict) -> None:
    """DataError naming the `data.*` key when a resolved data section's options cannot work."""
    check = dataset_spec(data["name"]).check
    if check is None:
        return
    try:
        check(data)
    except DataError:
        raise
    except Exception as err:  # a plugin's check that fails otherwise: still no traceback
        raise DataError(f"data: the check of dataset {data['name']!r} failed on this data "
                        f"section: {type(err).__name__}: {err}") from None


def build_datamodule(data: dict, seed: int):
    """Build the datamodule for a validated `data` config section."""
    cls = target_class(dataset_spec(data["name"]).target, __name__)
    return cls(seed=seed, **{k: v for k, v in data.items() if k != "name"})
