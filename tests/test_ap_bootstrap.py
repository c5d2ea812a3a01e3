"""The bootstrap's AP equals faster_coco_eval's on the full test set, and its resamples are paired."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.stats.ap import ALL, average_precision, match, pack_detections, resample_weights
from bench.store import load_predictions
from bench.tasks.metrics import AITOD_BUCKETS, DetectionMetrics


def save_predictions(path, preds, targets):
    np.savez_compressed(path, **pack_detections(preds, targets))


def _scene(rng, n_images=12, classes=3):
    preds, targets = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 50, (n, 2))
        wh = rng.uniform(3, 40, (n, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, classes, n)
        crowd = rng.random(n) < 0.1
        # detections: jittered copies of some boxes plus clutter, random scores
        keep = rng.random(n) < 0.8
        jitter = gt[keep] + rng.normal(0, 2.5, (int(keep.sum()), 4))
        clutter_xy = rng.uniform(0, 60, (int(rng.integers(0, 5)), 2))
        clutter = np.concatenate([clutter_xy, clutter_xy + rng.uniform(2, 30, clutter_xy.shape)], 1)
        boxes = np.concatenate([jitter, clutter])
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                                np.maximum(boxes[:, :2], boxes[:, 2:]) + 0.5], 1)
        det_labels = np.concatenate([np.where(rng.random(int(keep.sum())) < 0.85, labels[keep],
                                              rng.integers(0, classes, int(keep.sum()))),
                                     rng.integers(0, classes, len(clutter))])
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                      "scores": torch.tensor(rng.random(len(boxes)), dtype=torch.float32),
                      "labels": torch.tensor(det_labels)})
        targets.append({"boxes": torch.tensor(gt, dtype=torch.float32),
                        "labels": torch.tensor(labels), "iscrowd": torch.tensor(crowd)})
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_set_ap_equals_faster_coco_eval(tmp_path, seed):
    preds, targets = _scene(np.random.default_rng(seed))
    metric = DetectionMetrics(100, size_buckets=True)
    metric.update(preds, targets)
    expected = metric.compute()

    save_predictions(tmp_path / "p.npz", preds, targets)
    run = load_predictions(tmp_path / "p.npz")
    buckets = {name: (lo ** 2, hi ** 2) for name, (lo, hi) in AITOD_BUCKETS.items()}
    m = match(run, area_ranges=(ALL, *buckets.values()))
    ones = np.ones(len(targets))  # torchmetrics returns float32: 1e-6; the buckets are float64
    assert average_precision(m, ones)[0] == pytest.approx(expected["map"], abs=1e-6)
    assert average_precision(m, ones, thresholds=[0])[0] == pytest.approx(expected["map_50"], abs=1e-6)
    assert average_precision(m, ones, thresholds=[5])[0] == pytest.approx(expected["map_75"], abs=1e-6)
    for a, name in enumerate(buckets, start=1):
        got = average_precision(m, ones, area=a)[0]
        if np.isnan(expected[name]):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(expected[name], abs=1e-9), name


def test_a_resample_that_draws_an_image_twice_equals_the_set_with_that_image_repeated(tmp_path):
    preds, targets = _scene(np.random.default_rng(5), n_images=6)
    counts = np.array([2, 0, 1, 3, 1, 0])
    rep = [i for i, c in enumerate(counts) for _ in range(c)]
    save_predictions(tmp_path / "w.npz", preds, targets)
    save_predictions(tmp_path / "r.npz", [preds[i] for i in rep], [targets[i] for i in rep])
    weighted = average_precision(match(load_predictions(tmp_path / "w.npz")), counts)[0]
    repeated = average_precision(match(load_predictions(tmp_path / "r.npz")),
                                 np.ones(len(rep)))[0]
    assert weighted == pytest.approx(repeated, abs=1e-12)


def test_identical_predictions_differ_by_exactly_zero_in_every_resample(tmp_path):
    preds, targets = _scene(np.random.default_rng(7))
    save_predictions(tmp_path / "a.npz", preds, targets)
    m = match(load_predictions(tmp_path / "a.npz"))
    w = resample_weights(len(targets), 200, seed=3)
    a, b = average_precision(m, w), average_precision(m, w)
    assert np.array_equal(a - b, np.zeros(200))
    assert np.array_equal(w, resample_weights(len(targets), 200, seed=3))
    assert w.sum(1).tolist() == [len(targets)] * 200
