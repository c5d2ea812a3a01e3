"""The contract `lesa-bench check-plugin` runs (bench/conformance/): every built-in strategy and
the embedded datasets pass it, and each check fails on a strategy or dataset planted with the
defect it is there to catch (so no check passes vacuously)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.conformance import run_checks
from lesa.fusion import FUSIONS, AttentionFusion, register, unregister
from lesa.names import builtin_fusions

ROOT = Path(__file__).resolve().parents[1]


def _failed(results) -> dict[str, str]:
    return {r.check: r.detail for r in results if not r.ok}


# conv, sa and dynamic in the fast suite (the CNN, the attention core, LESA); the others too
# with -m slow (each 3-10 s on this project's machine)
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in ("conv", "sa", "dynamic")
                                               else [pytest.mark.slow])
                                  for n in builtin_fusions()])
def test_every_builtin_strategy_passes_the_contract(name):
    results = run_checks("strategy", name)
    assert len(results) == 12 and not _failed(results), _failed(results)


@pytest.mark.parametrize("name", ["digits", "probe_context", "probe_local"])
def test_the_embedded_datasets_pass_the_contract(name):
    results = run_checks("dataset", name)
    assert len(results) == 7 and not _failed(results), _failed(results)


# --- strategies planted with one defect each ---------------------------------------------------


class _Planted(AttentionFusion):
    def __init__(self, channels, *, heads=8, stride=1, max_map_size=64):
        super().__init__(channels, heads=heads, stride=stride, max_map_size=max_map_size)

    def fuse(self, x):
        return self.unary(x) + self.binary(x), 0.5


def _odd_shapes(self, x):
    y = self.unary(x) + self.binary(x)
    return (y if x.shape[-1] % 2 == 0 else y[..., :-1]), 0.5


class _Unused(_Planted):
    def __init__(self, channels, **kw):
        super().__init__(channels, **kw)
        self.unused = nn.Linear(channels, channels)


class _Noisy(_Planted):
    def fuse(self, x):
        return self.unary(x) + self.binary(x) + 0.01 * torch.rand_like(x), 0.5


class _OwnParameter(_Planted):
    def __init__(self, channels, **kw):
        super().__init__(channels, **kw)
        self.alpha = nn.Parameter(torch.zeros(()))  # and no reset_parameters()

    def fuse(self, x):
        return self.unary(x) + self.alpha.exp() * self.binary(x), 0.5


class _Float32(_Planted):
    def fuse(self, x):
        return (self.unary(x) + self.binary(x)).float(), 0.5


class _NotInStateDict(_Planted):
    def __init__(self, channels, **kw):
        super().__init__(channels, **kw)
        self.register_buffer("scale", torch.rand(()) + 0.5, persistent=False)

    def fuse(self, x):
        return self.unary(x) + self.scale * self.binary(x), 0.5


class _Percent(_Planted):
    def fuse(self, x):
        return self.unary(x) + self.binary(x), 50.0  # a percent, not a fraction


class _DataDependent(_Planted):
    def fuse(self, x):
        weight = float(x.abs().mean().item() > 0)  # cannot run on the meta device
        return self.unary(x) + weight * self.binary(x), 0.5


class _Explodes(_Planted):
    calls = 0

    def fuse(self, x):  # NaN from the third training forward on
        self.calls += self.training
        return self.unary(x) + self.binary(x) * (float("nan") if self.calls > 2 else 1.0), 0.5


class _Unpicklable(_Planted):
    def __init__(self, channels, **kw):
        super().__init__(channels, **kw)
        self.act = lambda t: t


class _BadOptions(_Planted):
    options = {"levels": {1, 2}}  # a set: no YAML value


class _RefusesItsDefault(_Planted):
    options = {"weight": 0.5}

    def __init__(self, channels, *, weight=0.5, **kw):
        super().__init__(channels, **kw)

    @classmethod
    def check_options(cls, options):
        raise ValueError("weight: never acceptable")


PLANTED = {
    "shape and dtype": type("_OddShapes", (_Planted,), {"fuse": _odd_shapes}),
    "gradients": _Unused, "determinism": _Noisy, "seeded init": _OwnParameter,
    "float64 vs float32": _Float32, "state_dict": _NotInStateDict, "share": _Percent,
    "meta device": _DataDependent, "trains": _Explodes, "pickles": _Unpicklable,
    "declared": _BadOptions, "config options": _RefusesItsDefault,
}


@pytest.mark.parametrize("check", list(PLANTED))
def test_each_strategy_check_catches_its_defect(check):
    name = "planted_" + check.replace(" ", "_")
    register(name)(PLANTED[check])
    try:
        (result,) = run_checks("strategy", name, only=(check,))
        assert not result.ok, f"{check} passed on {PLANTED[check].__name__}: {result.detail}"
        (passes,) = run_checks("strategy", "sum", only=(check,))  # and the control passes
        assert passes.ok, passes.detail
    finally:
        unregister(name)
    assert name not in FUSIONS


# --- datasets planted with one defect each -----------------------------------------------------


def _planted_dataset(defect: str) -> str:
    from bench.data import DATASETS, DatasetSpec, register_dataset
    from bench.data.base import ClassificationData, TensorBatches

    class Planted(ClassificationData):
        dataset_name = f"planted_{defect}"
        num_classes = 3

        def setup(self, stage=None):
            if self.train_set is not None:
                return
            sets = {}
            for index, split in enumerate(("train", "val", "test")):
                seed = self.seed if defect == "split" and split != "train" else self.split_seed
                rng = np.random.default_rng([seed, index])
                count = 24 // self.options["parts"]  # no check refuses -1 or 0
                labels = rng.integers(0, 3, count) + (3 if defect == "labels" else 0)
                images = torch.from_numpy(rng.random((count, 3, 8, 8), np.float32))
                transform = (lambda x, g: x) if defect == "pickles" else _Identity()
                sets[split] = TensorBatches(images, torch.from_numpy(labels), transform)
            self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]

        def train_dataloader(self):
            if defect == "order":
                self.seed = int(np.random.default_rng().integers(1 << 30))
            return super().train_dataloader()

    name = f"planted_{defect}"
    DATASETS.pop(name, None)
    register_dataset(name, DatasetSpec("classification", Planted,
                                       {"image_size": 8, "augment": False, "parts": 2}))
    return name


class _Identity:
    def __call__(self, x, generator):
        return x


DATASET_DEFECTS = {"labels": "labels in range", "split": "split fixed by split_seed",
                   "order": "determinism", "pickles": "pickles",
                   "unchecked": "bad options refused"}


@pytest.mark.parametrize("defect", list(DATASET_DEFECTS))
def test_each_dataset_check_catches_its_defect(defect):
    from bench.data import unregister_dataset

    name = _planted_dataset(defect)
    try:
        failed = _failed(run_checks("dataset", name))
    finally:
        unregister_dataset(name)
    assert DATASET_DEFECTS[defect] in failed, failed
    if defect == "unchecked":  # no check refuses parts: -1 (nor 0)
        assert "data.parts: -1 passes the load checks but the datamodule raises " \
               "ValueError: negative dimensions" in failed["bad options refused"]


def test_check_plugin_passes_the_examples(tmp_path, capsys, monkeypatch):
    from bench.cli import main

    for name in ("scalar_gate.py", "stripes.py"):
        shutil.copy(ROOT / "examples" / "plugins" / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["check-plugin", "stripes.py"]) == 0
    out = capsys.readouterr().out
    assert "7 passed, 0 failed" in out and "split fixed by split_seed" in out
    assert main(["check-plugin", "scalar_gate.py"]) == 0
    assert "12 passed, 0 failed" in capsys.readouterr().out
