"""Confidence intervals of detection AP over the test images: a paired bootstrap.

A run's test predictions (saved as `predictions.npz` beside its metrics) are matched to the
ground truth once, image by image, with COCO's greedy rule; AP on any multiset of images is then
a weighted cumulative sum. No library exposes per-image matches (COCOeval keeps them in C++), so
the matching is written here and tested equal to faster_coco_eval's AP on the full test set.

Every strategy is resampled with the same image draws, so the difference between two strategies
is paired: identical predictions give a difference of exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's; AP50 is index 0
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
ALL = (0.0, 1e5 ** 2)  # COCO's "all" area range


def pack_detections(preds: list[dict], targets: list[dict]) -> dict[str, np.ndarray]:
    """A run's detections and ground truth of every test image (xyxy pixels) as flat arrays
    (the run's predictions.npz; `match` reads them)."""
    def cat(items, key, width=None, dtype=np.float64):
        parts = [np.asarray(i[key], dtype=dtype).reshape(-1, *(width or ())) for i in items]
        return np.concatenate(parts) if parts else np.zeros((0, *(width or ())), dtype)

    owner = lambda items, key: np.concatenate(  # noqa: E731
        [np.full(len(i[key]), k) for k, i in enumerate(items)] or [np.zeros(0)]).astype(np.int64)
    return dict(
        n_images=np.asarray(len(targets)),
        pred_image=owner(preds, "scores"), pred_boxes=cat(preds, "boxes", (4,)),
        pred_scores=cat(preds, "scores"), pred_labels=cat(preds, "labels", dtype=np.int64),
        gt_image=owner(targets, "labels"), gt_boxes=cat(targets, "boxes", (4,)),
        gt_labels=cat(targets, "labels", dtype=np.int64),
        gt_crowd=cat([{"c": t.get("iscrowd", np.zeros(len(t["labels"])))} for t in targets],
                     "c", dtype=bool))


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCO's bbox IoU (xyxy in, no +1 pixel); against a crowd box: intersection / detection area."""
    lt = np.maximum(dt[:, None, :2], gt[None, :, :2])
    rb = np.minimum(dt[:, None, 2:], gt[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_dt = (dt[:, 2:] - dt[:, :2]).prod(-1)[:, None]
    area_gt = (gt[:, 2:] - gt[:, :2]).prod(-1)[None, :]
    union = np.where(crowd[None, :], area_dt, area_dt + area_gt - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class Matches:
    """Per detection (sorted by score within each class): class, image, and per (range, IoU
    threshold) whether it is a true positive / counted at all; per image and class the number
    of ground-truth boxes that count."""
    classes: np.ndarray          # (C,)
    det_class: np.ndarray        # (D,) index into classes
    det_image: np.ndarray        # (D,)
    tp: np.ndarray               # (A, T, D) bool
    counted: np.ndarray          # (A, T, D) bool: not ignored
    gt_count: np.ndarray         # (A, n_images, C)
    n_images: int


def match(run: dict, area_ranges=(ALL,), iou_thresholds=IOU_THRESHOLDS,
          max_dets: int = 100) -> Matches:
    """COCO's per-image greedy matching (pycocotools evaluateImg) for every area range."""
    n_images = int(run["n_images"])
    classes = np.unique(np.concatenate([run["gt_labels"], run["pred_labels"]]))
    n_t, n_a = len(iou_thresholds), len(area_ranges)
    gt_area = (run["gt_boxes"][:, 2:] - run["gt_boxes"][:, :2]).prod(-1)
    det_area = (run["pred_boxes"][:, 2:] - run["pred_boxes"][:, :2]).prod(-1)
    gt_count = np.zeros((n_a, n_images, len(classes)), dtype=np.int64)
    rows = []  # (class index, image, score, tp (A, T), counted (A, T)) per detection
    for img in range(n_images):
        for c, label in enumerate(classes):
            g = np.flatnonzero((run["gt_image"] == img) & (run["gt_labels"] == label))
            d = np.flatnonzero((run["pred_image"] == img) & (run["pred_labels"] == label))
            d = d[np.argsort(-run["pred_scores"][d], kind="mergesort")][:max_dets]
            crowd = run["gt_crowd"][g]
            ious = _iou(run["pred_boxes"][d], run["gt_boxes"][g], crowd)
            tp = np.zeros((n_a, n_t, len(d)), bool)
            counted = np.ones((n_a, n_t, len(d)), bool)
            for a, (lo, hi) in enumerate(area_ranges):
                ignore_gt = crowd | (gt_area[g] < lo) | (gt_area[g] > hi)
                gt_count[a, img, c] = int((~ignore_gt).sum())
                order = np.argsort(ignore_gt, kind="mergesort")  # counted boxes first
                outside = (det_area[d] < lo) | (det_area[d] > hi)
                for t, threshold in enumerate(iou_thresholds):
                    taken = np.zeros(len(g), bool)
                    for i in range(len(d)):
                        best, m = min(threshold, 1 - 1e-10), -1
                        for j in order:
                            if taken[j] and not crowd[j]:
                                continue
                            if m > -1 and not ignore_gt[m] and ignore_gt[j]:
                                break
                            if ious[i, j] < best:
                                continue
                            best, m = ious[i, j], j
                        if m == -1:
                            counted[a, t, i] = not outside[i]
                        else:
                            taken[m] = True
                            tp[a, t, i] = not ignore_gt[m]
                            counted[a, t, i] = not ignore_gt[m]
            for i, det in enumerate(d):
                rows.append((c, img, run["pred_scores"][det], tp[:, :, i], counted[:, :, i]))
    rows.sort(key=lambda r: (r[0], -r[2]))  # by class, then score (stable: image order)
    empty = np.zeros((n_a, n_t, 0), bool)
    return Matches(
        classes=classes,
        det_class=np.array([r[0] for r in rows], dtype=np.int64),
        det_image=np.array([r[1] for r in rows], dtype=np.int64),
        tp=np.stack([r[3] for r in rows], -1) if rows else empty,
        counted=np.stack([r[4] for r in rows], -1) if rows else empty,
        gt_count=gt_count, n_images=n_images)


def average_precision(m: Matches, weights: np.ndarray, area: int = 0,
                      thresholds=None) -> np.ndarray:
    """AP (COCO's 101-point interpolation, mean over classes and the given IoU thresholds) for
    each row of `weights` (B, n_images): how often each image is drawn. NaN where no class has a
    counted ground-truth box. A drawn-k-times detection adds k at once: its intermediate points
    never raise the interpolated precision, so this equals repeating it k times."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    thresholds = range(m.tp.shape[1]) if thresholds is None else thresholds
    per_class = []
    for c in range(len(m.classes)):
        n_pos = weights @ m.gt_count[area, :, c]  # (B,)
        sel = np.flatnonzero(m.det_class == c)
        image = m.det_image[sel]
        for t in thresholds:
            counted = m.counted[area, t, sel]
            is_tp = m.tp[area, t, sel] & counted
            tp, total = _counts_at_true_positives(weights, image, is_tp, counted, m.n_images)
            per_class.append(_interpolated(tp, total - tp, n_pos))
    ap = np.array(per_class)  # (C x T, B), NaN where a class has no counted box
    valid = ~np.isnan(ap)
    total = np.where(valid, ap, 0.0).sum(0)
    count = valid.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _counts_at_true_positives(weights, image, is_tp, counted, n_images):
    """Weighted cumulative true positives and counted detections (B, K) at the K true
    positives of one class (in score order). The interpolated precision needs no other point:
    precision peaks at a true positive, and recall rises only there. Per image counts up to
    each true positive, then one product with the draw counts: O(B x images x K), not
    O(B x detections)."""
    cols = np.flatnonzero(is_tp)
    first = np.searchsorted(cols, np.arange(len(image)), side="left")  # first TP at or after d
    per_image = []
    for mask in (is_tp, counted):
        keep = mask & (first < len(cols))
        counts = np.zeros((n_images, len(cols)))
        np.add.at(counts, (image[keep], first[keep]), 1.0)
        per_image.append(np.cumsum(counts, axis=1))
    return weights @ per_image[0], weights @ per_image[1]


def _interpolated(tp: np.ndarray, fp: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """pycocotools' 101-point interpolated precision for every resample (row) at once."""
    out = np.full(len(n_pos), np.nan)
    rows = np.flatnonzero(n_pos > 0)
    if len(rows) == 0:
        return out
    if tp.shape[1] == 0:
        out[rows] = 0.0
        return out
    tp, fp = tp[rows], fp[rows]
    recall = tp / n_pos[rows, None]
    precision = tp / (tp + fp + np.spacing(1))  # as pycocotools
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    n_rows, n_det = recall.shape
    # searchsorted(recall[b], thresholds, "left") for every row b at once, with exact float
    # comparisons: complex numbers sort by (real, imag), so (row, recall) keys stay in order
    keys = np.empty(recall.shape, np.complex128)
    keys.real, keys.imag = np.arange(n_rows)[:, None], recall
    queries = np.empty((n_rows, len(RECALL_THRESHOLDS)), np.complex128)
    queries.real, queries.imag = np.arange(n_rows)[:, None], RECALL_THRESHOLDS[None, :]
    idx = np.searchsorted(keys.ravel(), queries.ravel(), side="left").reshape(n_rows, -1)
    idx -= np.arange(n_rows)[:, None] * n_det
    ok = idx < n_det
    q = np.where(ok, np.take_along_axis(precision, np.minimum(idx, n_det - 1), 1), 0.0)
    out[rows] = q.mean(1)
    return out


def resample_weights(n_images: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_images) draw counts, one shared set for every strategy (paired)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(n_resamples, n_images))
    return np.stack([np.bincount(row, minlength=n_images) for row in draws]).astype(np.float64)
