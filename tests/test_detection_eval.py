"""The detection evaluator against pycocotools' COCOeval, and the AI-TOD size buckets."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from bench.tasks.metrics import AITOD_BUCKETS, DetectionMetrics

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def make_fixture(seed: int = 0):
    """Six images, three classes, boxes from 3 to 120 px (every COCO and AI-TOD bucket), one
    crowd region; detections: jittered ground truth (some missed, some with the wrong class)
    plus false positives, with scores that do not follow quality."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(6):
        gt_boxes, gt_labels, crowd = [], [], []
        for _ in range(rng.integers(3, 9)):
            side = float(np.exp(rng.uniform(np.log(3), np.log(120))))
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 400 - h)
            gt_boxes.append([x, y, x + w, y + h])
            gt_labels.append(int(rng.integers(3)))
            crowd.append(0)
        if i == 2:
            gt_boxes.append([200.0, 200.0, 300.0, 260.0])
            gt_labels.append(1)
            crowd.append(1)
        boxes, scores, labels = [], [], []
        for box, label, c in zip(gt_boxes, gt_labels, crowd):
            if rng.random() < 0.2 and not c:
                continue  # missed
            x0, y0, x1, y1 = box
            jitter = rng.normal(0, 0.12, 4) * [x1 - x0, y1 - y0, x1 - x0, y1 - y0]
            boxes.append([x0 + jitter[0], y0 + jitter[1], x1 + jitter[2], y1 + jitter[3]])
            labels.append(label if rng.random() > 0.15 else int(rng.integers(3)))
            scores.append(float(rng.uniform(0.05, 1.0)))
        for _ in range(rng.integers(1, 4)):  # false positives
            side = float(rng.uniform(4, 60))
            x, y = rng.uniform(0, 400 - side, 2)
            boxes.append([x, y, x + side, y + side])
            labels.append(int(rng.integers(3)))
            scores.append(float(rng.uniform(0.05, 1.0)))
        # coordinates on a 1/4-pixel grid: exact in float32, so xyxy -> xywh conversions in
        # float32 (torchmetrics) and float64 (pycocotools) agree
        gt_boxes = (np.round(np.asarray(gt_boxes) * 4) / 4).tolist()
        boxes = (np.round(np.asarray(boxes) * 4) / 4).tolist()
        images.append({
            "pred": {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                     "scores": torch.tensor(scores, dtype=torch.float32),
                     "labels": torch.tensor(labels, dtype=torch.int64)},
            "target": {"boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
                       "labels": torch.tensor(gt_labels, dtype=torch.int64),
                       "iscrowd": torch.tensor(crowd, dtype=torch.int64)},
        })
    return images


def pycocotools_eval(images, area_ranges=None):
    """COCOeval on the same fixture; areas are box areas (as in our targets)."""
    gt = {"images": [{"id": i} for i in range(len(images))], "annotations": [],
          "categories": [{"id": c} for c in range(3)]}
    dt = []
    for i, item in enumerate(images):
        t = item["target"]
        for box, label, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(),
                                     t["iscrowd"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i,
                                      "category_id": label, "bbox": [box[0], box[1], w, h],
                                      "area": w * h, "iscrowd": crowd})
        p = item["pred"]
        for box, label, score in zip(p["boxes"].tolist(), p["labels"].tolist(),
                                     p["scores"].tolist()):
            dt.append({"image_id": i, "category_id": label, "score": score,
                       "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if area_ranges:
            ev.params.areaRng = [[0, 1e10]] + [list(r) for r in area_ranges.values()]
            ev.params.areaRngLbl = ["all"] + list(area_ranges)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def our_eval(images, **kwargs):
    metric = DetectionMetrics(**kwargs)
    for item in images:
        metric.update([item["pred"]], [item["target"]])
    return metric.compute()


def test_matches_pycocotools_ap_and_ap_small():
    images = make_fixture()
    ours = our_eval(images)
    ref = pycocotools_eval(images).stats
    assert ours["map"] == pytest.approx(ref[0], abs=1e-4)
    assert ours["map_50"] == pytest.approx(ref[1], abs=1e-4)
    assert ours["map_75"] == pytest.approx(ref[2], abs=1e-4)
    assert ours["map_small"] == pytest.approx(ref[3], abs=1e-4)
    assert ours["map_medium"] == pytest.approx(ref[4], abs=1e-4)
    assert 0.05 < ours["map"] < 0.95  # a fixture that actually discriminates


def test_aitod_buckets_match_pycocotools_with_the_same_ranges():
    images = make_fixture(seed=1)
    ranges = {name: (lo ** 2, hi ** 2) for name, (lo, hi) in AITOD_BUCKETS.items()}
    ev = pycocotools_eval(images, ranges)
    ours = our_eval(images)
    for a, name in enumerate(AITOD_BUCKETS, start=1):
        p = ev.eval["precision"][:, :, :, a, -1]
        expected = float(p[p > -1].mean()) if (p > -1).any() else math.nan
        assert ours[name] == pytest.approx(expected, abs=1e-4, nan_ok=True), name


def box(x, y, w, h):
    return [x, y, x + w, y + h]


def test_each_box_lands_in_its_aitod_bucket():
    # one class; sqrt(area): 7.48 (4x14: very tiny although 14 px long), 12, 20 (10x40: small
    # although 40 px long), 48. Only the very tiny and the small one are detected.
    gt = [box(0, 0, 4, 14), box(50, 0, 12, 12), box(100, 0, 10, 40), box(200, 0, 48, 48)]
    target = {"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.zeros(4).long()}
    pred = {"boxes": torch.tensor([gt[0], gt[2]], dtype=torch.float32),
            "scores": torch.tensor([0.9, 0.8]), "labels": torch.zeros(2).long()}
    result = our_eval([{"pred": pred, "target": target}])
    assert result["ap_vt"] == pytest.approx(1.0)
    assert result["ap_t"] == pytest.approx(0.0)
    assert result["ap_s"] == pytest.approx(1.0)
    assert result["ap_m"] == pytest.approx(0.0)


def test_empty_buckets_are_nan_never_zero():
    gt = [box(0, 0, 5, 5), box(20, 20, 6, 6)]  # very tiny only
    target = {"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.zeros(2).long()}
    pred = {"boxes": torch.tensor(gt, dtype=torch.float32), "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.zeros(2).long()}
    result = our_eval([{"pred": pred, "target": target}])
    assert result["ap_vt"] == pytest.approx(1.0)
    for name in ("ap_t", "ap_s", "ap_m", "map_medium", "map_large"):
        assert math.isnan(result[name]), name
    assert result["map_small"] == pytest.approx(1.0)


def test_crowd_regions_are_ignored_not_missed():
    gt = [box(0, 0, 10, 10), box(50, 50, 30, 30)]
    pred = {"boxes": torch.tensor([gt[0]], dtype=torch.float32), "scores": torch.tensor([0.9]),
            "labels": torch.zeros(1).long()}

    def evaluate(crowd):
        target = {"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.zeros(2).long(),
                  "iscrowd": torch.tensor(crowd)}
        return our_eval([{"pred": pred, "target": target}])

    assert evaluate([0, 1])["map_50"] == pytest.approx(1.0)  # the region needs no detection
    # as a normal box it is missed: recall 1/2, i.e. 51 of the 101 recall points
    assert evaluate([0, 0])["map_50"] == pytest.approx(51 / 101)


def test_detection_limit_goes_beyond_100_per_image():
    # 150 tiny objects in one image, all detected: with a 100-detection cap recall is 2/3
    boxes = torch.tensor([box(10 * (i % 15), 10 * (i // 15), 6, 6) for i in range(150)],
                         dtype=torch.float32)
    target = {"boxes": boxes, "labels": torch.zeros(150).long()}
    pred = {"boxes": boxes, "scores": torch.linspace(1, 0.1, 150), "labels": torch.zeros(150).long()}
    assert our_eval([{"pred": pred, "target": target}])["map_50"] == pytest.approx(1.0)
    capped = our_eval([{"pred": pred, "target": target}], max_detections=100)["map_50"]
    assert capped < 0.7
