"""Per-test-image tests of classification runs: McNemar per seed pair, a paired bootstrap of
acc1 over test images, the images a strategy fixes and breaks, and the test-image noise of each
run for the variance table. Pure numbers: numpy and scipy only.

Input: per run a boolean array over the test images (True = predicted label is the target),
in the same image order for every run of one split; cells ``{seed: correct}``, one call per
split (different splits have different test images).

API (accuracies and differences in display units, points of %):

    mcnemar(correct_a, correct_b) -> McNemar        exact test on the discordant images
    mcnemar_seeds(runs_a, runs_b) -> {seed: McNemar}  one test per shared seed
    fixes_breaks(runs_a, runs_b, top_k=10) -> FixesBreaks   baseline = runs_b
    accuracy_bootstrap(runs, baseline=None, n_resamples=1000, seed=0, confidence=0.95)
        runs = {strategy: {seed: correct}} -> AccuracyBootstrap
    image_noise(runs, scale=100.0) -> ImageNoise   per-run var and shared cov (variance.py)
    replicate_noise(replicates) -> ImageNoise       the same from bootstrap replicates
    noise_by_split({split: ImageNoise}) -> (test_var, test_cov)   for variance_table
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from bench.stats.compare import Interval, percentile_interval

N_RESAMPLES = 1000
SEED = 0
CHUNK = 4_000_000  # resample x image entries per matrix product: bounds memory, not results


def _sorted(keys):
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


def _bool(correct) -> np.ndarray:
    x = np.asarray(correct)
    if x.ndim != 1:
        raise ValueError("per-image correctness must be one array over the test images")
    return x.astype(bool)


# --- McNemar ----------------------------------------------------------------------------------
@dataclass
class McNemar:
    """Two classifiers on the same images. a_only: a right, b wrong; b_only: the reverse.
    p: exact two-sided binomial test of a_only out of the discordant images at 1/2 (1.0 with
    none). diff = acc_a - acc_b in points."""
    n_images: int
    a_only: int
    b_only: int
    both: int
    neither: int
    p: float
    acc_a: float
    acc_b: float
    diff: float


def mcnemar(correct_a, correct_b) -> McNemar:
    """Exact McNemar test of two runs' per-image correctness (same images, same order)."""
    a, b = _bool(correct_a), _bool(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"different numbers of test images: {a.size} and {b.size}")
    n = a.size
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    p = float(stats.binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    acc_a, acc_b = (100.0 * int(x.sum()) / n if n else float("nan") for x in (a, b))
    return McNemar(n, a_only, b_only, int((a & b).sum()), int((~a & ~b).sum()), p,
                   float(acc_a), float(acc_b), 100.0 * (a_only - b_only) / n if n else 0.0)


def mcnemar_seeds(runs_a: Mapping[Hashable, object],
                  runs_b: Mapping[Hashable, object]) -> dict[Hashable, McNemar]:
    """One McNemar test per seed both strategies have ({seed: correct} each), seeds sorted.
    The tests share the images, so they are not independent: read them side by side (do
    they agree in sign?), not as one family to pool."""
    return {s: mcnemar(runs_a[s], runs_b[s]) for s in _sorted(set(runs_a) & set(runs_b))}


# --- which images change ----------------------------------------------------------------------
@dataclass
class FixesBreaks:
    """Per image, over the seed pairs: fixes = baseline wrong and strategy right, breaks = the
    reverse. top_*: (image index, count), most often first, ties by index, counts > 0 only."""
    seeds: list
    fixes: np.ndarray
    breaks: np.ndarray
    top_fixes: list[tuple[int, int]]
    top_breaks: list[tuple[int, int]]

    @property
    def n_pairs(self) -> int:
        return len(self.seeds)


def _top(counts: np.ndarray, k: int) -> list[tuple[int, int]]:
    order = np.lexsort((np.arange(counts.size), -counts))  # count descending, then index
    return [(int(i), int(counts[i])) for i in order[:k] if counts[i] > 0]


def fixes_breaks(runs: Mapping[Hashable, object], baseline: Mapping[Hashable, object],
                 top_k: int = 10) -> FixesBreaks:
    """The test images a strategy fixes and breaks most often across its seed pairs with the
    baseline ({seed: correct} each, paired on the shared seeds)."""
    seeds = _sorted(set(runs) & set(baseline))
    if not seeds:
        empty = np.zeros(0, dtype=np.int64)
        return FixesBreaks([], empty, empty, [], [])
    a = np.stack([_bool(runs[s]) for s in seeds])
    b = np.stack([_bool(baseline[s]) for s in seeds])
    if a.shape != b.shape:
        raise ValueError("the runs cover different numbers of test images")
    fixes = (a & ~b).sum(0).astype(np.int64)
    breaks = (~a & b).sum(0).astype(np.int64)
    return FixesBreaks(seeds, fixes, breaks, _top(fixes, top_k), _top(breaks, top_k))


# --- paired bootstrap over test images --------------------------------------------------------
@dataclass
class StrategyAccuracy:
    seeds: list
    interval: Interval                  # acc1 (points), mean over seeds
    difference: Interval | None = None  # minus the baseline, same resamples
    samples: np.ndarray | None = field(default=None, repr=False)  # (n_resamples,) acc1
    difference_samples: np.ndarray | None = field(default=None, repr=False)


@dataclass
class AccuracyBootstrap:
    """acc1 of every strategy on the same image resamples; note says why where none."""
    n_images: int | None
    n_resamples: int
    seed: int
    confidence: float
    baseline: str | None
    strategies: dict[str, StrategyAccuracy] = field(default_factory=dict)
    note: str = ""


def _resampled_counts(matrix: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, runs) correct counts on the resamples of bench.stats.ap.resample_weights
    (same generator, same draws), built in chunks of resamples to bound memory. Counts are
    integers, exact in float64, so equal runs give equal counts."""
    runs, n = matrix.shape
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK // max(n, 1))
    out = np.empty((n_resamples, runs))
    cols = matrix.T.astype(np.float64)
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        draws = rng.integers(0, n, size=(rows, n))
        weights = np.stack([np.bincount(r, minlength=n) for r in draws]).astype(np.float64)
        out[start:start + rows] = weights @ cols
    return out


def accuracy_bootstrap(runs: Mapping[str, Mapping[Hashable, object]],
                       baseline: str | None = None, n_resamples: int = N_RESAMPLES,
                       seed: int = SEED, confidence: float = 0.95) -> AccuracyBootstrap:
    """Paired bootstrap of acc1 over the test images of one split.

    One set of image resamples for every strategy; a strategy's value on a resample is the mean
    over its seeds of each seed's accuracy there; its difference from ``baseline`` takes both
    on the same resample (identical strategies differ by exactly 0 in every resample).
    Percentile intervals. The model of every run is held fixed: this covers the choice of test
    images, not the seeds (see blocks.py and compare.py for those)."""
    out = AccuracyBootstrap(None, n_resamples, seed, confidence, baseline)
    rows = {name: {s: _bool(c) for s, c in cells.items()} for name, cells in runs.items() if cells}
    if not rows:
        out.note = "no runs"
        return out
    sizes = {c.size for cells in rows.values() for c in cells.values()}
    if len(sizes) != 1:
        out.note = "the runs cover different numbers of test images: no paired bootstrap"
        return out
    n = sizes.pop()
    out.n_images = n
    order = [(name, s) for name, cells in rows.items() for s in _sorted(cells)]
    matrix = np.stack([rows[name][s] for name, s in order])
    counts = _resampled_counts(matrix, n_resamples, seed)
    full = matrix.sum(1).astype(np.float64)
    means = {}
    for name, cells in rows.items():
        cols = [i for i, (row, _) in enumerate(order) if row == name]
        k = len(cols)
        # the sum of integer counts is exact: the mean does not depend on the seeds' order
        means[name] = (100.0 * full[cols].sum() / (n * k),
                       100.0 * counts[:, cols].sum(1) / (n * k))
        out.strategies[name] = StrategyAccuracy(
            _sorted(cells), percentile_interval(*means[name], confidence),
            samples=means[name][1])
    if baseline is not None and baseline not in rows:
        out.note = f"baseline {baseline} has no runs: no differences"
    elif baseline is not None:
        b_full, b_boot = means[baseline]
        for name, s in out.strategies.items():
            if name != baseline:
                s.difference_samples = means[name][1] - b_boot
                s.difference = percentile_interval(means[name][0] - b_full,
                                                   s.difference_samples, confidence)
    return out


# --- test-image noise of each run (for blocks.variance_table) ---------------------------------
@dataclass
class ImageNoise:
    """Per run the variance of its metric over re-drawn test images (model fixed), and the mean
    covariance of that noise between two runs of the split (what the seeds share)."""
    var: dict[Hashable, float]
    cov: float | None  # None with fewer than two runs


def image_noise(runs: Mapping[Hashable, object], scale: float = 100.0) -> ImageNoise:
    """The exact bootstrap moments of acc1 (times ``scale``) from per-image correctness of the
    runs of one split: Var = var_i(c_ri) / n, Cov = cov_i(c_ri, c_r'i) / n (ddof 0; the
    bootstrap's moments with infinitely many resamples)."""
    seeds = _sorted(runs)
    if not seeds:
        return ImageNoise({}, None)
    x = np.stack([_bool(runs[s]) for s in seeds]).astype(np.float64)
    n = x.shape[1]
    dev = x - x.mean(1, keepdims=True)
    m = scale ** 2 * (dev @ dev.T) / (n * n)
    return ImageNoise({s: float(m[i, i]) for i, s in enumerate(seeds)}, _mean_offdiag(m))


def replicate_noise(replicates: Mapping[Hashable, object]) -> ImageNoise:
    """The same moments from bootstrap replicates {seed: (B,) values} drawn with ONE set of
    resamples for the runs of a split (e.g. detection AP, bench.stats.ap.resample_weights).
    NaN resamples are left out where any run has one."""
    seeds = _sorted(replicates)
    if not seeds:
        return ImageNoise({}, None)
    x = np.stack([np.asarray(replicates[s], dtype=np.float64) for s in seeds])
    x = x[:, np.isfinite(x).all(0)]
    if x.shape[1] < 2:
        return ImageNoise({s: float("nan") for s in seeds}, None)
    m = np.atleast_2d(np.cov(x))
    return ImageNoise({s: float(m[i, i]) for i, s in enumerate(seeds)}, _mean_offdiag(m))


def _mean_offdiag(m: np.ndarray) -> float | None:
    k = len(m)
    return float((m.sum() - np.trace(m)) / (k * (k - 1))) if k > 1 else None


def noise_by_split(noise: Mapping[Hashable, ImageNoise]) -> tuple[dict, dict]:
    """{split: ImageNoise} -> (test_var {(split, seed): v}, test_cov {split: c}), the arguments
    of bench.stats.blocks.variance_table."""
    test_var = {(split, s): v for split, x in noise.items() for s, v in x.var.items()}
    return test_var, {split: x.cov for split, x in noise.items() if x.cov is not None}


__all__ = ["AccuracyBootstrap", "FixesBreaks", "ImageNoise", "McNemar", "StrategyAccuracy",
           "accuracy_bootstrap", "fixes_breaks", "image_noise", "mcnemar", "mcnemar_seeds",
           "noise_by_split", "replicate_noise"]
