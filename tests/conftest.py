"""Shared fixtures: tiny real experiment files, forced small (lightning-hydra-template style)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

# keep the 2-core machine usable and runs deterministic
os.environ.setdefault("OMP_NUM_THREADS", "2")


TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "digits", "image_size": 16, "batch_size": 32, "augment": False},
    "model": {"backbone": "resnet_tiny", "heads": 2, "max_size": 16},
    "optim": {"lr": 0.1, "warmup_epochs": 0},
    "trainer": {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 2,
                "limit_test_batches": 2},
    "matrix": {"model.fusion": ["conv", "dynamic"], "seed": [0, 1]},
}


def image_tree(root: Path, splits=("train", "val"), classes=("cat", "dog"), per_class=2) -> Path:
    """An ImageFolder tree of small random PNGs: root/<split>/<class>/<i>.png."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def wait_for(predicate, proc, timeout: float = 300.0) -> bool:
    """Poll `predicate` until it holds (True), or until `proc` ends or the timeout passes (False)."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.fixture
def tiny_experiment(tmp_path: Path):
    """Write a tiny experiment file; returns (path, results_dir). Accepts overrides via .with_()."""

    def write(**sections) -> Path:
        cfg = yaml.safe_load(yaml.safe_dump(TINY))
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        path = tmp_path / f"{cfg['name']}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write
