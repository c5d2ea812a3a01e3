"""The contract of a dataset (bench/data/__init__.py's docstring), check by check:
`lesa-bench check-plugin` runs it on a plugin's datasets (tests/test_conformance.py on digits
and the probes). Each check takes the dataset's name, returns a detail line or raises.

The datamodules are built from the dataset's defaults with batch_size 8; a check reads at most
BATCHES batches of a loader.
"""
from __future__ import annotations

import pickle

import torch

BATCHES = 2
PLAIN = (bool, int, float, str, list, dict, type(None))


def _data(name: str, **changes) -> dict:
    from bench.config import resolve

    return resolve({"data": {"name": name, "batch_size": 8, **changes}})["data"]


def _module(name: str, seed: int = 0, **changes):
    from bench.data import build_datamodule

    dm = build_datamodule(_data(name, **changes), seed=seed)
    dm.check()
    dm.setup("fit")
    dm.setup("test")
    return dm


def _batches(loader, count: int = BATCHES) -> list:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


def _task(name: str) -> str:
    from bench.data import DATASETS

    return DATASETS[name].task


def _same(a, b) -> bool:
    """Equal batches: tensors, lists and dicts of them, compared exactly."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def declared(name: str) -> str:
    """Its spec: a task the registry knows, plain option defaults that pass its own check."""
    from bench.data import DATASETS, target_class
    from bench.tasks import TASKS

    spec = DATASETS[name]
    assert spec.task in TASKS, f"task {spec.task!r} is not registered"
    bad = {k: v for k, v in spec.options.items() if not isinstance(v, PLAIN)}
    assert not bad, f"option defaults must be YAML values: {bad}"
    cls = target_class(spec.target, "bench.data")
    assert hasattr(cls, "setup") and hasattr(cls, "train_dataloader"), \
        f"{cls!r} is no LightningDataModule"
    _data(name)  # the defaults resolve: the schema's types, the spec's check
    check = "a check" if spec.check is not None else "no check of its own"
    return f"{spec.task}; {len(spec.options)} option(s), {check}"


def _probes(default) -> list:
    """Values a check should refuse or the datamodule take without a traceback."""
    wrong = ["text"] if not isinstance(default, str) else [12345]
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return wrong + [-1, 0]
    return wrong


def bad_options(name: str) -> str:
    """A wrong type is refused at load naming data.<option>; -1 and 0 for a number are refused
    at load (ConfigError, DataError) or build and set up cleanly (no other exception)."""
    from bench.config import ConfigError
    from bench.data import DATASETS, DataError

    refused, taken = 0, 0
    for key, default in DATASETS[name].options.items():
        for value in _probes(default):
            try:
                _data(name, **{key: value})
            except (ConfigError, DataError) as err:
                assert f"data.{key}" in str(err), f"data.{key}: {value!r} refused without " \
                                                  f"naming the key: {err}"
                refused += 1
                continue
            assert not isinstance(value, str) or isinstance(default, str), \
                f"data.{key}: {value!r} (a wrong type) was accepted"
            try:
                _module(name, **{key: value})
            except DataError:
                refused += 1
                continue
            except Exception as err:  # noqa: BLE001 - what a run would meet mid-way
                raise AssertionError(f"data.{key}: {value!r} passes the load checks but the "
                                     f"datamodule raises {type(err).__name__}: {err}") from None
            taken += 1
    assert refused, "no bad option value is refused"
    return f"{refused} bad value(s) refused" + (f", {taken} taken" if taken else "")


def builds(name: str) -> str:
    """build_datamodule, check() and setup; it knows num_classes and in_channels."""
    dm = _module(name)
    classes, channels = getattr(dm, "num_classes", None), getattr(dm, "in_channels", None)
    assert isinstance(classes, int) and classes >= 1, f"num_classes {classes!r}"
    assert isinstance(channels, int) and channels >= 1, f"in_channels {channels!r}"
    sizes = [len(getattr(dm, f"{s}_set")) for s in ("train", "val", "test")]
    assert all(sizes), f"an empty split: train/val/test sizes {sizes}"
    return f"{classes} classes, {channels} channels, train/val/test {'/'.join(map(str, sizes))}"


def labels(name: str) -> str:
    """Images (B, in_channels, H, W) finite floats; labels in [0, num_classes)."""
    dm = _module(name)
    seen = 0
    for split in ("train", "val", "test"):
        for images, targets in _batches(getattr(dm, f"{split}_dataloader")()):
            for image in (images if isinstance(images, list) else [images]):
                assert image.is_floating_point() and torch.isfinite(image).all(), \
                    f"{split}: images must be finite floats"
                assert image.shape[-3] == dm.in_channels, \
                    f"{split}: {image.shape[-3]} channels, in_channels says {dm.in_channels}"
            values = (torch.cat([t["labels"] for t in targets]) if _task(name) == "detection"
                      else targets)
            assert values.dtype == torch.int64, f"{split}: labels are {values.dtype}, not int64"
            if len(values):
                low, high = int(values.min()), int(values.max())
                assert 0 <= low and high < dm.num_classes, \
                    f"{split}: labels in [{low}, {high}], num_classes {dm.num_classes}"
            seen += len(values)
    return f"{seen} labels read"


def split_seed(name: str) -> str:
    """The val and test sets depend on split_seed only: the same for run seeds 0 and 1."""
    a, b = _module(name, seed=0), _module(name, seed=1)
    for split in ("val", "test"):
        first, second = (_batches(getattr(m, f"{split}_dataloader")()) for m in (a, b))
        assert _same(first, second), f"the {split} batches change with the run seed"
    other = _module(name, seed=0, split_seed=1)
    moved = not _same(_batches(a.val_dataloader()), _batches(other.val_dataloader()))
    return ("split_seed 1 draws another split" if moved
            else "the same split for every split_seed (a fixed split)")


def determinism(name: str) -> str:
    """Two datamodules of one seed give the same training batches."""
    a, b = _module(name, seed=0), _module(name, seed=0)
    assert _same(_batches(a.train_dataloader()), _batches(b.train_dataloader())), \
        "training batches differ between two builds of one seed"
    return f"first {BATCHES} training batches repeat"


def pickles(name: str) -> str:
    """The datasets pickle (loader workers started by spawn)."""
    dm = _module(name)
    for split in ("train", "val", "test"):
        pickle.loads(pickle.dumps(getattr(dm, f"{split}_set")))
    return "train, val and test sets"


CHECKS = {"declared": declared, "bad options refused": bad_options, "builds": builds,
          "labels in range": labels, "split fixed by split_seed": split_seed,
          "determinism": determinism, "pickles": pickles}
