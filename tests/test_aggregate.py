"""bench.stats.aggregate (one headline across tasks) and bench.stats.curves (curves over seeds).

References: scipy.stats.trim_mean on hand-normalised scores, the Mann-Whitney probability
written out, scipy's t interval per epoch.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bench.stats.aggregate import headline
from bench.stats.curves import curve, curves, difference_curve

SEEDS = range(5)


def task(rng, base_mean, spread, gains: dict, noise=0.0, seeds=SEEDS):
    """{strategy: {seed: value}}: every strategy = the baseline's run of that seed + its gain
    (+ a little noise): a large seed effect shared by all strategies (paired)."""
    base = {s: base_mean + rng.normal(0, spread) for s in seeds}
    out = {"conv": base}
    for name, g in gains.items():
        out[name] = {s: v + g + rng.normal(0, noise) for s, v in base.items()}
    return out


def test_identical_strategies_differ_by_exactly_zero_in_every_resample():
    rng = np.random.default_rng(0)
    scores = {t: task(rng, 80, 3, {"lesa": 1.0}) for t in ("digits", "cifar", "scenes")}
    for t in scores:
        scores[t]["same"] = dict(scores[t]["conv"])
    h = headline(scores, "conv", n_resamples=400)
    same = h.rows["same"]
    for est in (same.mean_gain, same.iqm_gain):
        assert est.estimate == 0
        assert np.all(est.seed_samples == 0) and np.all(est.task_samples == 0)
    for est in (same.p_improvement, same.p_improvement_paired):
        assert np.all(est.seed_samples == 0.5) and np.all(est.task_samples == 0.5)
    assert same.iqm.estimate == h.baseline_iqm.estimate


def test_planted_gains_are_recovered_and_a_shared_seed_effect_cancels():
    """A constant gain per task on top of a big seed effect: the paired gain is exact in every
    seed resample (pairs kept); only the task resampling moves it."""
    rng = np.random.default_rng(1)
    gains = {"digits": 1.0, "cifar": 2.0, "loss": 0.3}
    scores = {"digits": task(rng, 90, 4, {"lesa": 1.0}), "cifar": task(rng, 70, 5, {"lesa": 2.0}),
              "loss": task(rng, 1.5, 0.5, {"lesa": -0.3})}  # lower is better: -0.3 is a gain
    h = headline(scores, "conv", higher_is_better={"digits": True, "cifar": True, "loss": False},
                 n_resamples=500)
    row = h.rows["lesa"]
    assert row.per_task_gain == pytest.approx(gains)
    assert row.mean_gain.estimate == pytest.approx(np.mean(list(gains.values())))
    assert np.allclose(row.mean_gain.seed_samples, row.mean_gain.estimate)
    assert row.mean_gain.tasks.ci_low < row.mean_gain.estimate < row.mean_gain.tasks.ci_high
    assert row.p_improvement_paired.estimate == 1 and row.iqm_gain.estimate > 0


def test_p_improvement_is_one_when_dominating_and_paired_differs_from_rliable():
    rng = np.random.default_rng(2)
    # every run of "top" beats every baseline run; "twin" beats its own seed by 0.5 only
    scores = {t: task(rng, 50, 3, {"twin": 0.5}) for t in ("a", "b")}
    for t in scores:
        scores[t]["top"] = {s: v + 100 for s, v in scores[t]["conv"].items()}
    h = headline(scores, "conv", n_resamples=300)
    top, twin = h.rows["top"], h.rows["twin"]
    assert top.p_improvement.estimate == 1 and np.all(top.p_improvement.seed_samples == 1)
    assert twin.p_improvement_paired.estimate == 1
    # rliable's definition over all pairs of runs, written out
    ref = np.mean([np.mean([[(x > y) + 0.5 * (x == y) for y in scores[t]["conv"].values()]
                            for x in scores[t]["twin"].values()]) for t in scores])
    assert twin.p_improvement.estimate == pytest.approx(ref) and ref < 0.8
    flipped = headline(scores, "conv", higher_is_better=False, n_resamples=50)
    assert flipped.rows["top"].p_improvement.estimate == 0


def test_iqm_of_min_max_normalised_scores_and_given_references():
    rng = np.random.default_rng(3)
    scores = {t: task(rng, m, 2, {"lesa": 1.0, "vit": -0.5}, noise=0.5, seeds=range(8))
              for t, m in (("a", 60), ("b", 95))}
    h = headline(scores, "conv", n_resamples=200)
    pooled = {n: [] for n in ("conv", "lesa", "vit")}
    for t, cells in scores.items():
        every = np.array([v for c in cells.values() for v in c.values()])
        lo, hi = every.min(), every.max()
        assert h.references[t] == (lo, hi)
        for n in pooled:
            pooled[n] += [(v - lo) / (hi - lo) for v in cells[n].values()]
    assert h.baseline_iqm.estimate == pytest.approx(stats.trim_mean(pooled["conv"], 0.25))
    assert h.rows["lesa"].iqm.estimate == pytest.approx(stats.trim_mean(pooled["lesa"], 0.25))
    assert h.rows["vit"].iqm_gain.estimate < 0 < h.rows["lesa"].iqm_gain.estimate
    refs = headline(scores, "conv", references={"a": (0, 100), "b": (0, 100)}, n_resamples=50)
    expected = stats.trim_mean([v / 100 for t in scores for v in scores[t]["lesa"].values()], 0.25)
    assert refs.rows["lesa"].iqm.estimate == pytest.approx(expected)


def test_seeds_and_strategies_not_everywhere_are_left_out_and_named():
    rng = np.random.default_rng(4)
    scores = {"a": task(rng, 50, 1, {"lesa": 1, "only_a": 2}), "b": task(rng, 50, 1, {"lesa": 1})}
    scores["b"]["lesa"][4] = None
    del scores["b"]["conv"][3]
    h = headline(scores, "conv", n_resamples=50)
    assert set(h.rows) == {"lesa"} and "only_a" in h.note
    assert h.seeds == {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2]} and "b: seed(s) 3, 4" in h.note
    one = headline({"a": scores["a"]}, "conv", n_resamples=50)
    assert one.rows["lesa"].mean_gain.tasks is None and "one task" in one.note


# --- curves -----------------------------------------------------------------------------------
def test_curve_mean_and_t_band_per_epoch_with_ragged_runs():
    runs = {0: [1.0, 0.8, 0.6, 0.5], 1: [1.2, 0.9, None, 0.4], 2: {0: 1.1, 1: 0.7, 3: 0.45},
            3: [1.3]}
    c = curve(runs)
    assert c.epochs.tolist() == [0, 1, 2, 3] and c.n.tolist() == [4, 3, 1, 3]
    for j, values in enumerate(([1.0, 1.2, 1.1, 1.3], [0.8, 0.9, 0.7], [0.6], [0.5, 0.4, 0.45])):
        assert c.mean[j] == pytest.approx(np.mean(values))
        if len(values) > 1:
            low, high = stats.t.interval(0.95, len(values) - 1, np.mean(values),
                                         stats.sem(values))
            assert (c.ci_low[j], c.ci_high[j]) == pytest.approx((low, high))
        else:
            assert np.isnan(c.ci_low[j]) and np.isnan(c.std[j])
    assert list(curves({"conv": runs}))[0] == "conv"


def test_difference_curve_is_the_paired_t_interval_per_epoch():
    a = {0: [1.0, 2.0, 3.0], 1: [1.5, 2.2, 3.5], 2: [0.9, 2.5], 7: [9.0, 9.0, 9.0]}
    b = {0: [0.5, 1.0, 2.0], 1: [1.0, 1.9, 2.6], 2: [0.6, 2.0, 2.0]}
    d = difference_curve(a, b)
    assert d.seeds == [0, 1, 2] and d.n.tolist() == [3, 3, 2]
    ref = stats.ttest_rel([1.0, 1.5, 0.9], [0.5, 1.0, 0.6]).confidence_interval()
    assert (d.ci_low[0], d.ci_high[0]) == pytest.approx((ref.low, ref.high))
    assert d.mean[2] == pytest.approx(np.mean([1.0, 0.9]))
