"""Detection metrics: torchmetrics' COCO mAP plus the AI-TOD size buckets, on one set of
predictions.

`DetectionMetrics` is torchmetrics' MeanAveragePrecision (backend "faster_coco_eval": fast,
and correct for max-detection limits other than 100) whose compute() also runs
faster_coco_eval's COCOeval_faster with the AI-TOD area ranges over the same, already
synchronised, states. torchmetrics has no custom area ranges, hence the second pass.

    COCO buckets (torchmetrics): small < 32^2 <= medium < 96^2 <= large, by annotation area
    AI-TOD buckets (by sqrt of the box area): very tiny 2-8, tiny 8-16, small 16-32,
    medium 32-64 px

A value with no ground truth to score (COCOeval's -1) is returned as NaN, never 0.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math

import numpy as np
from torchmetrics.detection import MeanAveragePrecision

from bench.tasks import AITOD_BUCKETS  # name -> (low, high) of sqrt(box area) in pixels

COCO_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def _value(x) -> float:
    x = float(x)
    return math.nan if x < 0 else x  # COCOeval's -1: nothing to score


class DetectionMetrics(MeanAveragePrecision):
    """COCO AP/AP50/AP75/small/medium/large and (size_buckets=True) AI-TOD AP_vt/t/s/m.

    update(preds, targets) as torchmetrics: boxes xyxy in pixels; targets may carry
    `iscrowd` (ignore regions) and `area` (annotation area for the COCO buckets; box area when
    absent). compute() returns plain floats keyed by COCO_KEYS and AITOD_BUCKETS.
    """

    def __init__(self, max_detections: int = 1500, size_buckets: bool = True, **kwargs):
        self.max_detections = int(max_detections)
        # COCOeval's own float64 thresholds: torchmetrics' defaults come from float32
        # linspaces (recall 0.8 -> 0.800000012), which misplace a recall of exactly 4/5
        kwargs.setdefault("iou_thresholds", np.linspace(0.5, 0.95, 10).tolist())
        kwargs.setdefault("rec_thresholds", np.linspace(0.0, 1.0, 101).tolist())
        super().__init__(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval",
                         max_detection_thresholds=[1, 10, max(100, self.max_detections)],
                         **kwargs)
        self.size_buckets = size_buckets

    def compute(self) -> dict[str, float]:
        with contextlib.redirect_stdout(io.StringIO()):
            result = super().compute()
        out = {key: _value(result[key]) for key in COCO_KEYS}
        if self.size_buckets:
            out.update(self._size_buckets())
        return out

    def _coco_dicts(self) -> tuple[dict, list[dict]]:
        """Ground truth (areas = box areas) and detections, from the metric's own states
        (boxes are stored there as xywh)."""
        images, gt, dt = [], [], []
        classes: set[int] = set()
        for i, (boxes, labels, crowds) in enumerate(zip(
                self.groundtruth_box, self.groundtruth_labels, self.groundtruth_crowds)):
            images.append({"id": i})
            for box, label, crowd in zip(boxes.tolist(), labels.tolist(), crowds.tolist()):
                gt.append({"id": len(gt) + 1, "image_id": i, "category_id": int(label),
                           "bbox": box, "area": box[2] * box[3], "iscrowd": int(crowd)})
                classes.add(int(label))
        for i, (boxes, labels, scores) in enumerate(zip(
                self.detection_box, self.detection_labels, self.detection_scores)):
            for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
                dt.append({"id": len(dt) + 1, "image_id": i, "category_id": int(label),
                           "bbox": box, "area": box[2] * box[3], "score": float(score),
                           "iscrowd": 0})
                classes.add(int(label))
        categories = [{"id": c, "name": str(c)} for c in sorted(classes)]
        return {"images": images, "annotations": gt, "categories": categories}, dt

    def _size_buckets(self) -> dict[str, float]:
        from faster_coco_eval import COCO, COCOeval_faster

        empty = {name: math.nan for name in AITOD_BUCKETS}
        gt_dataset, detections = self._coco_dicts()
        if not gt_dataset["images"]:
            return empty
        ranges = {name: [lo ** 2, hi ** 2] for name, (lo, hi) in AITOD_BUCKETS.items()}
        quiet = lambda *args, **kwargs: None  # noqa: E731
        logger = logging.getLogger("faster_coco_eval")
        level = logger.level
        logger.setLevel(logging.ERROR)  # it warns that the ranges do not span 0..1e5^2
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                coco_gt = COCO()
                coco_gt.dataset = gt_dataset
                coco_gt.createIndex()
                coco_dt = COCO()
                coco_dt.dataset = {"images": gt_dataset["images"], "annotations": detections,
                                   "categories": gt_dataset["categories"]}
                coco_dt.createIndex()
                evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", ranges=ranges,
                                            print_function=quiet)
                evaluator.params.maxDets = [max(100, self.max_detections)]
                evaluator.evaluate()
                evaluator.accumulate()
        finally:
            logger.setLevel(level)
        precision = np.asarray(evaluator.eval["precision"])  # (T, R, K, A, M)
        labels = list(evaluator.params.areaRngLbl)
        out = {}
        for name in AITOD_BUCKETS:
            p = precision[:, :, :, labels.index(name), -1]
            p = p[p > -1]
            out[name] = float(p.mean()) if p.size else math.nan
        return out
