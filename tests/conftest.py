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
