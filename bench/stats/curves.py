"""Training curves over seeds: per epoch the mean and the t interval of the mean (validation
metric, training loss...). Pure numbers: numpy and scipy only; reading metrics.csv and plotting
are the report's.

A run is either a sequence over epochs (index = epoch, from 0) or ``{epoch: value}`` (epochs
that were not logged simply absent). Runs may be ragged (stopped early, resumed, still
running); None and NaN are missing. Each epoch uses the seeds that have a value there, so a
band can narrow or widen where seeds drop out: ``n`` says how many. The band is the t interval
of the mean over seeds at that epoch (seeds only: the split and the test images are fixed).

API:
    curve(runs, confidence=0.95) -> Curve              runs = {seed: values over epochs}
    curves(by_strategy, confidence=0.95) -> {strategy: Curve}
    difference_curve(runs_a, runs_b, confidence=0.95) -> Curve   a - b paired by seed per epoch
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class Curve:
    """Per epoch (``epochs``, sorted): seeds with a value (``n``), their mean (NaN with none),
    sample std and the t band of the mean (NaN with fewer than two)."""
    epochs: np.ndarray
    n: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    seeds: list
    confidence: float = 0.95


def _epochs(values: Sequence[float] | Mapping[int, float]) -> dict[int, float]:
    """{epoch: finite value} of one run."""
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    return {int(e): float(v) for e, v in items if v is not None and np.isfinite(float(v))}


def _grid(runs: Mapping[Hashable, Sequence[float] | Mapping[int, float]]):
    """(seeds, epochs, (seeds, epochs) matrix with NaN where a run has no value)."""
    per_run = {s: _epochs(v) for s, v in runs.items()}
    epochs = np.array(sorted({e for r in per_run.values() for e in r}), dtype=np.int64)
    where = {e: j for j, e in enumerate(epochs)}
    seeds = list(per_run)
    matrix = np.full((len(seeds), len(epochs)), np.nan)
    for i, s in enumerate(seeds):
        for e, v in per_run[s].items():
            matrix[i, where[e]] = v
    return seeds, epochs, matrix


def _band(seeds: list, epochs: np.ndarray, matrix: np.ndarray, confidence: float) -> Curve:
    ok = np.isfinite(matrix)
    n = ok.sum(0)
    filled = np.where(ok, matrix, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, filled.sum(0) / np.maximum(n, 1), np.nan)
        dev = np.where(ok, matrix - mean, 0.0)
        std = np.where(n > 1, np.sqrt((dev ** 2).sum(0) / np.maximum(n - 1, 1)), np.nan)
        t = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1))
        half = np.where(n > 1, t * std / np.sqrt(np.maximum(n, 1)), np.nan)
    return Curve(epochs, n.astype(np.int64), mean, std, mean - half, mean + half, seeds,
                 confidence)


def curve(runs: Mapping[Hashable, Sequence[float] | Mapping[int, float]],
          confidence: float = 0.95) -> Curve:
    """Mean and t band over seeds per epoch of one strategy's runs ``{seed: values}``."""
    return _band(*_grid(runs), confidence)


def curves(by_strategy: Mapping[str, Mapping[Hashable, Sequence[float] | Mapping[int, float]]],
           confidence: float = 0.95) -> dict[str, Curve]:
    """``curve`` for every strategy."""
    return {name: curve(runs, confidence) for name, runs in by_strategy.items()}


def difference_curve(runs_a: Mapping[Hashable, Sequence[float] | Mapping[int, float]],
                     runs_b: Mapping[Hashable, Sequence[float] | Mapping[int, float]],
                     confidence: float = 0.95) -> Curve:
    """a - b per epoch, paired by seed (seeds both have; per epoch those with both values):
    the band is the paired t interval at each epoch."""
    shared = [s for s in runs_a if s in runs_b]
    seeds, epochs, matrix = _grid({**{("a", s): runs_a[s] for s in shared},
                                   **{("b", s): runs_b[s] for s in shared}})
    k = len(shared)
    diff = matrix[:k] - matrix[k:]  # NaN wherever either run lacks the epoch
    return _band(shared, epochs, diff, confidence)


__all__ = ["Curve", "curve", "curves", "difference_curve"]
