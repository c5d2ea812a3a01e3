"""DetectionTask: FCOS + FPN on a lesa backbone, built from a resolved config; tiny Trainer runs.

Canvases are 64x64 with a handful of images, so a fit of two steps plus validation and test
takes a few seconds on the 2-core test machine.
"""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch

import lesa
from bench.config import resolve
from bench.data import build_datamodule
from bench.tasks import TASKS, build_task
from bench.tasks.detection import DetectionTask, NativeResolution, _for_training


def tiny_config(fusion="dynamic", **detection):
    return resolve({
        "seed": 0,
        "data": {"name": "digit_scenes", "image_size": 64, "train_images": 4, "val_images": 2,
                 "test_images": 2, "object_size": [6, 16], "objects": [2, 4],
                 "batch_size": 2},
        "model": {"backbone": "resnet_small", "fusion": fusion, "heads": 2,
                  # few candidates: an untrained head scores everything above 0.05, and
                  # post-processing 1500 boxes per image would dominate these tests
                  "detection": {"fpn_channels": 32, "head_convs": 1, "topk_candidates": 100,
                                "detections_per_img": 100, **detection}},
        "optim": {"name": "sgd", "lr": 0.01},
        "trainer": {"max_epochs": 1},
    })


def build(cfg):
    L.seed_everything(cfg["seed"], verbose=False)
    dm = build_datamodule(cfg["data"], cfg["seed"])
    dm.check()
    return dm, build_task(cfg, dm)


def trainer(**kwargs):
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_tiny_fit_logs_val_map_50_and_test_metrics():
    cfg = tiny_config()
    dm, task = build(cfg)
    assert isinstance(task, DetectionTask)
    assert isinstance(task.backbone, lesa.ResNet)
    assert task.example_input_array.shape == (1, 3, 64, 64)
    before = [p.detach().clone() for p in task.backbone.parameters()]
    t = trainer(limit_train_batches=2, limit_val_batches=1, limit_test_batches=1)
    t.fit(task, datamodule=dm)
    assert t.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, task.backbone.parameters()))
    for name in ("val/map", "val/map_50", "train/loss_epoch"):
        assert name in t.callback_metrics, name
    assert 0.0 <= float(t.callback_metrics["val/map_50"]) <= 1.0
    tested = t.test(task, datamodule=dm, verbose=False)[0]
    assert set(TASKS["detection"].metrics) <= set(tested)
    # objects are at most 16 px: the medium/large buckets are empty, so NaN (never 0)
    for name in ("test/map_medium", "test/map_large", "test/ap_m"):
        assert math.isnan(tested[name]), name


def test_same_seed_same_training():
    losses = []
    for _ in range(2):
        dm, task = build(tiny_config(fusion="sum"))
        t = trainer(limit_train_batches=2, limit_val_batches=0)
        t.fit(task, datamodule=dm)
        losses.append(float(t.callback_metrics["train/loss_epoch"]))
    assert losses[0] == losses[1]


@pytest.mark.parametrize("fusion", list(lesa.FUSIONS))
def test_every_strategy_plugs_into_the_detector(fusion):
    dm, task = build(tiny_config(fusion=fusion))
    dm.setup("fit")
    images, targets = dm.train_set[next(iter(dm.train_dataloader().sampler))]
    task.train()
    losses = task.detector(images, [_for_training(t) for t in targets])
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(torch.isfinite(v) for v in losses.values())
    task.eval()
    with torch.no_grad():
        out = task(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    assert len(out[0]["boxes"]) <= 100


def test_detector_settings_for_small_objects():
    _, task = build(tiny_config(detections_per_img=50, score_thresh=0.1))
    fcos = task.detector
    assert isinstance(fcos.transform, NativeResolution)
    assert [s[0] for s in fcos.anchor_generator.sizes] == [4.0, 8.0, 16.0, 32.0]
    assert fcos.detections_per_img == 50 and fcos.score_thresh == 0.1
    features = fcos.backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2]  # P2 (stride 4) .. P5
    assert all(f.shape[1] == 32 for f in features.values())
    # native resolution: a 48x80 image is padded to a multiple of 32, never resized
    batch, _ = fcos.transform([torch.zeros(3, 48, 80)])
    assert batch.image_sizes == [(48, 80)] and batch.tensors.shape[-2:] == (64, 96)
    # an explicit size brings torchvision's resize back
    _, resized = build(tiny_config(min_size=96, max_size=96))
    assert not isinstance(resized.detector.transform, NativeResolution)


def test_crowd_boxes_stay_out_of_the_loss():
    target = {"boxes": torch.tensor([[0, 0, 5, 5], [10, 10, 20, 20.]]),
              "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([0, 1])}
    kept = _for_training(target)
    assert kept["boxes"].tolist() == [[0, 0, 5, 5]] and kept["labels"].tolist() == [1]


def test_bad_detection_options_name_the_key():
    with pytest.raises(ValueError, match="model.detection.fpn_channels"):
        build(tiny_config(fpn_channels=48))
    with pytest.raises(ValueError, match="model.detection.anchor_sizes"):
        build(tiny_config(anchor_sizes=[4, 8]))


@pytest.mark.parametrize("name", ["visdrone_r50", "aitod_r50"])
def test_shipped_detection_experiments_build(name):
    """The GPU-scale detection files dry-run (no data needed) and every strategy's FCOS-LESA-R50
    builds with the file's windows: windowed stages hold WindowedBinaryTerm, global ones not."""
    from pathlib import Path

    from bench.cli import main
    from bench.config import load_experiment
    from lesa.window import WindowedBinaryTerm

    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml"
    assert main(["run", str(path), "--dry-run"]) == 0
    exp = load_experiment(path)
    # the controls of `dynamic` (static, dynamic_frozen) run in the probes (experiments/quick.yaml)
    assert ({r.config["model"]["fusion"] for r in exp.runs}
            == set(lesa.FUSIONS) - {"static", "dynamic_frozen"})
    assert {r.config["data"]["name"] for r in exp.runs} == {"coco"}
    seen = set()
    for run in exp.runs:
        m = run.config["model"]
        if m["fusion"] in seen or m["fusion"] not in ("conv", "dynamic"):
            continue
        seen.add(m["fusion"])
        task = DetectionTask(m, run.config["optim"], num_classes=10, image_size=(64, 64))
        windowed = {type(mod.binary).__name__ for mod in task.backbone.modules()
                    if isinstance(mod, lesa.Fusion) and hasattr(mod, "binary")}
        if m["fusion"] == "conv":
            assert windowed == set()
        else:
            window = m["window"]
            expect = {"WindowedBinaryTerm" if window.get(s) else "BinaryTerm"
                      for s in m["attention_stages"]}
            assert windowed == expect
            assert any(isinstance(mod, WindowedBinaryTerm) for mod in task.backbone.modules())
    assert seen == {"conv", "dynamic"}


def test_generated_coco_folder_trains_and_reports_through_the_cli(tmp_path, capsys):
    """`lesa-bench convert digit-scenes` writes a COCO folder; an experiment on it (data.name
    coco) trains, tests and reports through `lesa-bench run` / `report` like any other cell."""
    import json

    import yaml

    from bench.cli import main

    folder = tmp_path / "coco"
    assert main(["convert", "digit-scenes", str(folder), "--set", "image_size=64",
                 "--set", "train_images=4", "--set", "val_images=2",
                 "--set", "test_images=2"]) == 0
    assert (folder / "annotations" / "train.json").exists()
    exp = tmp_path / "det.yaml"
    exp.write_text(yaml.safe_dump({
        "name": "det", "seed": 0,
        "data": {"name": "coco", "root": str(folder), "batch_size": 2},
        "model": {"backbone": "resnet_small", "heads": 2,
                  "detection": {"fpn_channels": 32, "head_convs": 1, "topk_candidates": 50,
                                "detections_per_img": 50}},
        "optim": {"name": "sgd", "lr": 0.01},
        "trainer": {"max_epochs": 1},
        "matrix": {"model.fusion": ["conv", "dynamic"]}}))
    results = tmp_path / "results"
    assert main(["run", str(exp), "--results", str(results)]) == 0
    runs = sorted((results / "det").iterdir())
    assert len(runs) == 2
    for run in runs:
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "done"
        test = json.loads((run / "metrics.json").read_text())["test"]
        for key in TASKS["detection"].metrics:
            assert key in test  # NaN where a bucket has no objects, never left out
        assert 0.0 <= test["test/map_50"] <= 1.0
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    assert "map_50" in text and "ap_vt" in text and "dynamic" in text
