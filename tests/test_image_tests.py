"""bench.stats.images: McNemar per seed pair, the paired bootstrap of acc1 over test images,
fixes and breaks, and each run's test-image noise.

References: the binomial sum written out here, statsmodels' exact McNemar where installed,
bench.stats.ap.resample_weights (detection's draws), and brute-force bootstrap moments.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.stats import images
from bench.stats.ap import resample_weights
from bench.stats.images import (accuracy_bootstrap, fixes_breaks, image_noise, mcnemar,
                                mcnemar_seeds, noise_by_split, replicate_noise)
from bench.stats.variance import variance_table


def runs(rng, n_images=400, seeds=(0, 1, 2), acc=0.9, hard=None):
    """{seed: correct}: every seed gets the `hard` images wrong and the rest right with
    probability acc (a strategy's seeds share which images are hard)."""
    out = {}
    for s in seeds:
        c = rng.random(n_images) < acc
        if hard is not None:
            c[hard] = False
        out[s] = c
    return out


def two_sided_binomial(k: int, n: int) -> float:
    """Exact McNemar p written out: twice the smaller tail of Binomial(n, 1/2), capped at 1."""
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


# --- McNemar ----------------------------------------------------------------------------------
def test_mcnemar_counts_and_exact_p_match_the_binomial_sum_and_statsmodels():
    a = np.array([1] * 30 + [0] * 8 + [1] * 50 + [0] * 12, bool)   # a right on 30 that b misses
    b = np.array([0] * 30 + [1] * 8 + [1] * 50 + [0] * 12, bool)
    m = mcnemar(a, b)
    assert (m.a_only, m.b_only, m.both, m.neither, m.n_images) == (30, 8, 50, 12, 100)
    assert m.p == pytest.approx(two_sided_binomial(30, 38), rel=1e-12)
    assert m.diff == pytest.approx(22.0) and m.acc_a == 80.0 and m.acc_b == 58.0
    sm = pytest.importorskip("statsmodels.stats.contingency_tables")
    ref = sm.mcnemar([[m.both, m.a_only], [m.b_only, m.neither]], exact=True)
    assert m.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert mcnemar(b, a).p == m.p and mcnemar(b, a).diff == -m.diff


def test_mcnemar_without_discordant_images_and_misshapen_input():
    same = np.array([True, False, True])
    assert mcnemar(same, same).p == 1.0 and mcnemar(same, same).diff == 0.0
    with pytest.raises(ValueError):
        mcnemar(same, same[:2])
    with pytest.raises(ValueError):
        mcnemar(np.ones((2, 2)), np.ones((2, 2)))


def test_mcnemar_per_seed_pair_uses_only_shared_seeds():
    rng = np.random.default_rng(0)
    a, b = runs(rng, seeds=(0, 1, 2)), runs(rng, seeds=(1, 2, 3))
    out = mcnemar_seeds(a, b)
    assert list(out) == [1, 2]
    assert out[1].p == mcnemar(a[1], b[1]).p


# --- fixes and breaks -------------------------------------------------------------------------
def test_fixes_and_breaks_count_seed_pairs_per_image():
    base = {0: np.array([0, 0, 1, 1, 0], bool), 1: np.array([0, 1, 1, 1, 0], bool),
            2: np.array([1, 1, 1, 1, 1], bool)}
    new = {0: np.array([1, 1, 0, 1, 0], bool), 1: np.array([1, 1, 0, 0, 0], bool),
           5: np.array([0, 0, 0, 0, 0], bool)}  # seed 5 has no baseline twin
    fb = fixes_breaks(new, base, top_k=2)
    assert fb.seeds == [0, 1] and fb.n_pairs == 2
    assert fb.fixes.tolist() == [2, 1, 0, 0, 0] and fb.breaks.tolist() == [0, 0, 2, 1, 0]
    assert fb.top_fixes == [(0, 2), (1, 1)] and fb.top_breaks == [(2, 2), (3, 1)]
    assert fixes_breaks(new, base, top_k=10).top_fixes == [(0, 2), (1, 1)]  # zeros left out
    assert fixes_breaks({}, base).n_pairs == 0


# --- the paired bootstrap ---------------------------------------------------------------------
def test_resamples_are_detections_and_chunking_changes_nothing(monkeypatch):
    rng = np.random.default_rng(1)
    c = runs(rng, n_images=50, seeds=(0, 1))
    matrix = np.stack([c[0], c[1]])
    counts = images._resampled_counts(matrix, 40, seed=3)
    ref = resample_weights(50, 40, seed=3) @ matrix.T.astype(float)
    assert np.array_equal(counts, ref)
    monkeypatch.setattr(images, "CHUNK", 7 * 50)  # 7 resamples per chunk, then 5
    assert np.array_equal(images._resampled_counts(matrix, 40, seed=3), ref)


def test_identical_strategies_differ_by_exactly_zero_in_every_resample():
    rng = np.random.default_rng(2)
    base = runs(rng)
    copy = {s: base[s].copy() for s in reversed(list(base))}  # same runs, other seed order
    out = accuracy_bootstrap({"conv": base, "same": copy}, baseline="conv", n_resamples=300)
    d = out.strategies["same"].difference_samples
    assert d.shape == (300,) and np.all(d == 0)
    interval = out.strategies["same"].difference
    assert interval.ci_low == 0 == interval.ci_high
    assert out.strategies["conv"].difference is None


def test_bootstrap_values_and_a_planted_improvement():
    rng = np.random.default_rng(3)
    hard = rng.choice(500, 60, replace=False)
    base = runs(rng, n_images=500, acc=0.97, hard=hard)
    better = runs(rng, n_images=500, acc=0.97, hard=hard[:20])  # fixes 40 hard images
    out = accuracy_bootstrap({"conv": base, "lesa": better}, baseline="conv", n_resamples=500)
    s, b = out.strategies["lesa"], out.strategies["conv"]
    assert out.n_images == 500 and s.seeds == [0, 1, 2]
    assert s.interval.estimate == pytest.approx(100 * np.mean([better[k].mean() for k in better]))
    assert b.interval.ci_low < b.interval.estimate < b.interval.ci_high
    assert s.difference.estimate == pytest.approx(s.interval.estimate - b.interval.estimate)
    assert s.difference.ci_low > 0  # ~8 points on 500 images: resolved
    # the pairing: the difference's interval is far narrower than the two intervals' widths
    width = lambda i: i.ci_high - i.ci_low  # noqa: E731
    assert width(s.difference) < 0.8 * (width(s.interval) + width(b.interval))
    assert np.array_equal(s.difference_samples, s.samples - b.samples)


def test_bootstrap_refuses_different_test_sets_and_names_a_missing_baseline():
    rng = np.random.default_rng(4)
    out = accuracy_bootstrap({"a": runs(rng, 10), "b": runs(rng, 11)}, "a")
    assert not out.strategies and "different numbers" in out.note
    out = accuracy_bootstrap({"a": runs(rng, 10)}, "conv", n_resamples=20)
    assert "baseline conv has no runs" in out.note and out.strategies["a"].difference is None
    assert accuracy_bootstrap({}).note == "no runs"


# --- each run's test-image noise --------------------------------------------------------------
def test_image_noise_is_the_bootstrap_moments():
    rng = np.random.default_rng(5)
    hard = np.arange(30)
    c = runs(rng, n_images=200, seeds=(0, 1, 2), acc=0.85, hard=hard)
    noise = image_noise(c)
    p = c[0].mean()
    assert noise.var[0] == pytest.approx(100 ** 2 * p * (1 - p) / 200)
    # brute force: the same resamples for the three runs, many of them
    w = resample_weights(200, 20000, seed=0)
    reps = {s: 100 * w @ c[s] / 200 for s in c}
    brute = replicate_noise(reps)
    for s in c:
        assert brute.var[s] == pytest.approx(noise.var[s], rel=0.05)
    assert brute.cov == pytest.approx(noise.cov, rel=0.1)
    assert noise.cov > 0  # the shared hard images: the seeds' test noise is correlated


def test_noise_by_split_feeds_the_variance_table():
    rng = np.random.default_rng(6)
    per_split = {s: runs(rng, n_images=300, seeds=(0, 1, 2, 3),
                         hard=np.arange(10 * s, 10 * s + 20)) for s in range(3)}
    noise = {s: image_noise(c) for s, c in per_split.items()}
    test_var, test_cov = noise_by_split(noise)
    assert set(test_var) == {(s, r) for s in range(3) for r in range(4)}
    assert test_cov == {s: noise[s].cov for s in range(3)}
    values = {(s, r): 100 * c.mean() for s, cells in per_split.items() for r, c in cells.items()}
    t = variance_table(values, test_var, test_cov)
    assert t.var_test == pytest.approx(np.mean(list(test_var.values())))
    assert t.test_shared == pytest.approx(np.mean(list(test_cov.values())))
    assert replicate_noise({0: [1.0, np.nan, 2.0], 1: [1.0, 1.0, np.nan]}).cov is None
