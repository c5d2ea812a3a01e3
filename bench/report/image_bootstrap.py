"""Test-image uncertainty of detection AP: each run's predictions.npz, one shared set of image
resamples for every strategy (paired), and the ground-truth box count of every size bucket.

Apart from the seed spread: this interval says how much AP50/AP would move on another draw of
test images of the same kind, with the trained models held fixed. numpy only (no torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.stats.ap import average_precision, match, resample_weights
from bench.stats.compare import Interval, box_support
from bench.stats.compare import percentile_interval
from bench.store import PREDICTIONS, RunDir, RunState

N_RESAMPLES = 1000
SEED = 0
GT_KEYS = ("gt_image", "gt_boxes", "gt_labels", "gt_crowd")
# the report's two AP statistics: (name, IoU threshold indices or None for all ten)
STATISTICS = (("map_50", [0]), ("map", None))


@dataclass
class StrategyIntervals:
    seeds: list
    intervals: dict[str, Interval]  # statistic -> the strategy's mean over seeds
    differences: dict[str, Interval] = field(default_factory=dict)  # vs the baseline


@dataclass
class ImageBootstrap:
    """One dataset's bootstrap; `note` says why there is none when `strategies` is empty."""
    dataset: str
    n_images: int | None = None
    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    confidence: float = 0.95
    baseline: str | None = None
    strategies: dict[str, StrategyIntervals] = field(default_factory=dict)
    note: str = ""


def _load(record) -> dict | None:
    if record.state != RunState.DONE or record.folder is None:
        return None
    return RunDir(Path(record.folder)).predictions()


def _same_images(runs: list[dict]) -> bool:
    first = runs[0]
    return all(int(r["n_images"]) == int(first["n_images"])
               and all(np.array_equal(r[k], first[k]) for k in GT_KEYS) for r in runs[1:])


def _max_dets(config: dict) -> int:
    from bench.tasks import TASKS  # import-light: specs only

    options = {**TASKS["detection"].options, **(config["model"].get("detection") or {})}
    return max(100, int(options["detections_per_img"]))


def bootstrap_dataset(dataset: str, records: list, row_of, baseline: str | None,
                      confidence: float = 0.95) -> ImageBootstrap:
    """The paired bootstrap over the test images of one detection dataset's finished runs.
    `row_of(record)` is the record's table row; `baseline` the row differences are taken to."""
    done = [r for r in records if r.state == RunState.DONE]
    out = ImageBootstrap(dataset, confidence=confidence, baseline=baseline)
    if not done:
        out.note = "no finished runs"
        return out
    loaded = [(r, _load(r)) for r in done]
    missing = [r.run.id for r, p in loaded if p is None]
    if missing:
        out.note = (f"{len(missing)} of {len(done)} finished runs have no {PREDICTIONS} (runs "
                    f"from before it was written): no bootstrap")
        return out
    if not _same_images([p for _, p in loaded]):
        out.note = "test sets differ: no paired bootstrap"
        return out
    n = int(loaded[0][1]["n_images"])
    out.n_images = n
    weights = resample_weights(n, N_RESAMPLES, SEED)  # ONE set shared by every strategy
    ones = np.ones((1, n))
    per_row: dict[str, dict] = {}
    for record, preds in loaded:
        m = match(preds, max_dets=_max_dets(record.run.config))  # once per run
        entry = per_row.setdefault(row_of(record), {"seeds": [], "full": {}, "boot": {}})
        entry["seeds"].append(record.run.config["seed"])
        for name, thresholds in STATISTICS:
            entry["full"].setdefault(name, []).append(
                average_precision(m, ones, thresholds=thresholds)[0])
            entry["boot"].setdefault(name, []).append(
                average_precision(m, weights, thresholds=thresholds))
    # each strategy: the mean over its seeds of each seed's AP on the same resample
    means = {row: {name: (float(np.mean(e["full"][name])) * 100,
                          np.mean(e["boot"][name], axis=0) * 100) for name, _ in STATISTICS}
             for row, e in per_row.items()}
    for row, e in per_row.items():
        intervals = {name: percentile_interval(*means[row][name], confidence) for name, _ in STATISTICS}
        out.strategies[row] = StrategyIntervals(sorted(e["seeds"]), intervals)
    base = _baseline_row(baseline, means)
    for row, s in out.strategies.items():
        b = base(row)
        if b is not None and b != row:
            s.differences = {name: percentile_interval(means[row][name][0] - means[b][name][0],
                                             means[row][name][1] - means[b][name][1],
                                             confidence) for name, _ in STATISTICS}
    return out


def _baseline_row(baseline: str | None, rows):
    """row -> the baseline row with the same other axes (None where there is none)."""
    def find(row: str):
        if baseline is None:
            return None
        candidate = " ".join([baseline, *row.split()[1:]])
        return candidate if candidate in rows else None
    return find


def bucket_support(records: list, buckets: dict) -> dict:
    """Per AI-TOD bucket the non-crowd ground-truth boxes with sqrt(area) in its range (as
    COCOeval counts them: both ends included), from the runs' predictions.npz. None per bucket
    when no run has the file; the smallest count when the runs' test sets differ."""
    counts: dict[str, list[int]] = {name: [] for name in buckets}
    for record in records:
        preds = _load(record)
        if preds is None:
            continue
        boxes = preds["gt_boxes"][~preds["gt_crowd"].astype(bool)]
        side = np.sqrt(np.clip((boxes[:, 2:] - boxes[:, :2]).prod(-1), 0, None))
        for name, (low, high) in buckets.items():
            counts[name].append(int(((side >= low) & (side <= high)).sum()))
    return {name: (box_support(min(found)) if found else None) for name, found in counts.items()}


__all__ = ["ImageBootstrap", "N_RESAMPLES", "StrategyIntervals",
           "bootstrap_dataset", "bucket_support"]
