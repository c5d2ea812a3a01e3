"""bench.stats.blocks and bench.stats.variance: splits as blocks, variance components,
what pairing buys.

References: a nested ANOVA written out here by hand, scipy (ttest_rel, f_oneway), statsmodels
MixedLM (REML) where installed, and simulations of the planted model (coverage, unbiasedness).
"""
from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
from scipy import stats

from bench.stats.blocks import TWO_LEVEL, compare_blocks, compare_blocks_all, one_way, two_way
from bench.stats.variance import pairing_gain, seed_components, variance_table
from bench.stats.compare import (BETTER, EQUIVALENT, NOT_RESOLVED, Comparison, compare,
                                 compare_all, holm)


def planted(rng, splits=4, seeds=3, mu=1.0, sd_split=1.0, sd_seed=0.3, base_sd=2.0):
    """Baseline and strategy cells {(split, seed): value} with d_sr = mu + u_s + e_sr; both
    sides share a large split-and-seed effect that pairing removes."""
    a, b = {}, {}
    for s in range(splits):
        u, shared_split = rng.normal(0, sd_split), rng.normal(0, base_sd)
        for r in range(seeds):
            base = 70 + shared_split + rng.normal(0, base_sd)
            b[(s, r)] = base
            a[(s, r)] = base + mu + u + rng.normal(0, sd_seed)
    return a, b


def nested_anova(d: np.ndarray, alpha: float = 0.05):
    """Balanced nested ANOVA of d (S splits x R seeds) written out by hand: the CI of mu is
    grand mean +- t(S-1) sqrt(MS_between / (S R)); the components by the method of moments."""
    s, r = d.shape
    grand = d.sum() / (s * r)
    split_means = d.sum(1) / r
    ms_between = r * ((split_means - grand) ** 2).sum() / (s - 1)
    ms_within = ((d - split_means[:, None]) ** 2).sum() / (s * (r - 1))
    se = math.sqrt(ms_between / (s * r))
    t = grand / se
    half = stats.t.ppf(1 - alpha / 2, s - 1) * se
    return dict(mu=grand, low=grand - half, high=grand + half, p=2 * stats.t.sf(abs(t), s - 1),
                var_split=max(0.0, (ms_between - ms_within) / r), var_within=ms_within)


# --- the two-level comparison -----------------------------------------------------------------
def test_balanced_equals_the_hand_written_nested_anova():
    a, b = planted(np.random.default_rng(0), splits=5, seeds=4)
    c = compare_blocks(a, b, name="lesa", baseline="conv")
    d = np.array([[a[(s, r)] - b[(s, r)] for r in range(4)] for s in range(5)])
    ref = nested_anova(d)
    assert isinstance(c, Comparison) and c.method == TWO_LEVEL
    assert (c.n_splits, c.n_pairs, c.df) == (5, 20, 4)
    assert c.diff == pytest.approx(ref["mu"], rel=1e-9)
    assert c.ci_low == pytest.approx(ref["low"], rel=1e-9)
    assert c.ci_high == pytest.approx(ref["high"], rel=1e-9)
    assert c.p == pytest.approx(ref["p"], rel=1e-10) and c.p_adjusted == c.p
    assert c.sd_split ** 2 == pytest.approx(ref["var_split"], rel=1e-10)
    assert c.sd_within ** 2 == pytest.approx(ref["var_within"], rel=1e-10)
    assert c.pairs_per_split == {s: 4 for s in range(5)}
    assert "5 splits" in c.note and "unbalanced" not in c.note
    # a margin: the equivalence test on the same units (split means, 4 df), as compare() does
    eq = compare_blocks(a, b, margin=0.5)
    ref_eq = compare(dict(enumerate(d.mean(1))), dict.fromkeys(range(5), 0.0), margin=0.5)
    assert eq.p_equivalence == pytest.approx(ref_eq.p_equivalence, rel=1e-9)
    assert eq.equivalence_low == pytest.approx(ref_eq.equivalence_low, rel=1e-9)


def test_balanced_equals_statsmodels_mixedlm_reml():
    sm = pytest.importorskip("statsmodels.api")
    a, b = planted(np.random.default_rng(1), splits=6, seeds=3, sd_split=1.5)
    c = compare_blocks(a, b)
    keys = sorted(a)
    d = np.array([a[k] - b[k] for k in keys])
    groups = np.array([s for s, _ in keys])
    fit = sm.MixedLM(d, np.ones((len(d), 1)), groups).fit(reml=True)
    assert c.sd_split > 0  # REML equals the ANOVA only when the estimate is not clamped
    assert c.diff == pytest.approx(fit.fe_params[0], rel=1e-6)
    se = (c.ci_high - c.ci_low) / 2 / stats.t.ppf(0.975, c.df)
    assert se == pytest.approx(fit.bse_fe[0], rel=1e-4)
    assert c.sd_split ** 2 == pytest.approx(float(np.asarray(fit.cov_re)[0, 0]), rel=1e-4)
    assert c.sd_within ** 2 == pytest.approx(fit.scale, rel=1e-4)


def test_one_split_is_exactly_the_paired_t_test():
    a, b = planted(np.random.default_rng(2), splits=1, seeds=5)
    c = compare_blocks(a, b, name="x", baseline="y")
    plain = compare({r: a[(0, r)] for r in range(5)}, {r: b[(0, r)] for r in range(5)},
                    name="x", baseline="y")
    for f in ("diff", "ci_low", "ci_high", "p", "p_wilcoxon", "sd", "effect_size", "verdict",
              "seeds_needed", "n_pairs", "method"):
        assert getattr(c, f) == getattr(plain, f), f
    ref = stats.ttest_rel([a[(0, r)] for r in range(5)], [b[(0, r)] for r in range(5)])
    assert c.p == pytest.approx(ref.pvalue) and c.method == "paired t"
    assert c.n_splits == 1 and c.splits_needed is None and "covers seeds" in c.note
    # plain seeds as keys are one split too
    same = compare_blocks({r: a[(0, r)] for r in range(5)}, {r: b[(0, r)] for r in range(5)})
    assert (same.diff, same.ci_low, same.p) == (c.diff, c.ci_low, c.p)


def test_a_split_without_pairs_falls_back_to_one_split_and_says_so():
    a = {(0, 0): 1.0, (0, 1): 2.0, (0, 2): 2.5, (1, 0): 9.0}
    b = {(0, 0): 0.5, (0, 1): 1.2, (0, 2): 2.1, (2, 0): 7.0}
    c = compare_blocks(a, b)
    assert c.n_splits == 1 and c.method == "paired t" and c.n_pairs == 3
    assert "split(s) 1, 2 left out" in c.note
    with pytest.raises(ValueError):
        compare_blocks({(0, 1): 1.0, 2: 1.0}, b)
    none = compare_blocks({(0, 0): 1.0}, {(1, 0): 1.0})
    assert none.diff is None and "no (split, seed) block" in none.note


def test_unbalanced_weights_every_split_once_and_notes_left_out_blocks():
    a, b = planted(np.random.default_rng(3), splits=4, seeds=3)
    del a[(0, 1)], a[(0, 2)]   # split 0 keeps one pair
    b[(3, 2)] = None           # a missing value, not a 0
    c = compare_blocks(a, b)
    d = {s: [a[(s, r)] - b[(s, r)] for r in range(3)
             if (s, r) in a and b.get((s, r)) is not None] for s in range(4)}
    means = np.array([np.mean(v) for v in d.values()])
    assert c.pairs_per_split == {0: 1, 1: 3, 2: 3, 3: 2} and c.n_pairs == 9
    assert c.diff == pytest.approx(means.mean())
    half = stats.t.ppf(0.975, 3) * means.std(ddof=1) / 2
    assert c.ci_high - c.diff == pytest.approx(half)
    assert "unbalanced" in c.note and "(0, 1), (0, 2)" in c.note and "1 missing value" in c.note


def test_coverage_of_the_two_level_interval_and_what_ignoring_splits_loses():
    """Planted mu with a large split effect: the two-level 95 % interval covers mu about 95 %
    of the time, balanced or with missing runs; pooling every pair in one paired t does not."""
    rng = np.random.default_rng(4)
    hits, hits_unbalanced, naive = 0, 0, 0
    reps = 500
    for _ in range(reps):
        a, b = planted(rng, splits=5, seeds=4, mu=1.0, sd_split=1.0, sd_seed=0.3)
        c = compare_blocks(a, b)
        hits += c.ci_low <= 1.0 <= c.ci_high
        pooled = compare({i: a[k] for i, k in enumerate(a)}, {i: b[k] for i, k in enumerate(a)})
        naive += pooled.ci_low <= 1.0 <= pooled.ci_high
        for k in list(a)[::3]:     # drop every third run of a
            del a[k]
        u = compare_blocks(a, b)
        hits_unbalanced += u.ci_low <= 1.0 <= u.ci_high
    assert 0.92 <= hits / reps <= 0.98
    assert 0.91 <= hits_unbalanced / reps <= 0.98
    assert naive / reps < 0.8  # about 0.72 in theory: the pooled seeds pretend 20 splits


def test_holm_across_rows_and_splits_needed_where_not_resolved():
    rng = np.random.default_rng(5)
    a, b = planted(rng, splits=3, seeds=2, mu=3.0, sd_split=0.2)
    weak, _ = planted(rng, splits=3, seeds=2, mu=0.3, sd_split=1.0)
    weak = {k: b[k] + (weak[k] - _[k]) for k in b}
    rows = {"conv": b, "strong": a, "weak": weak}
    out = compare_blocks_all(rows, "conv")
    assert [c.p_adjusted for c in out.values()] == holm([c.p for c in out.values()])
    assert out["strong"].verdict == BETTER and "Holm-adjusted over 2" in out["strong"].note
    w = out["weak"]
    assert w.verdict == NOT_RESOLVED and w.seeds_needed is None
    assert isinstance(w.splits_needed, int) and w.splits_needed > 3


def test_one_split_rows_match_compare_all():
    rng = np.random.default_rng(6)
    base = {r: 70 + rng.normal() for r in range(4)}
    rows = {"conv": base, "a": {r: v + 0.4 + 0.3 * rng.normal() for r, v in base.items()},
            "b": {r: v + 2 + 0.3 * rng.normal() for r, v in base.items()}}
    rows["c"] = {r: v + 0.05 * rng.normal() for r, v in base.items()}
    for margin in (None, 0.5):
        kw = {} if margin is None else {"margin": margin}
        mine, ref = compare_blocks_all(rows, "conv", **kw), compare_all(rows, "conv", **kw)
        for name in ("a", "b", "c"):
            for f in fields(Comparison):
                if f.name != "note":
                    assert getattr(mine[name], f.name) == getattr(ref[name], f.name), f.name
            assert mine[name].note.startswith(ref[name].note)
    assert {c.verdict for c in mine.values()} == {BETTER, EQUIVALENT}  # the margin's verdicts


def test_zero_spread_of_split_means():
    b = {(s, r): float(10 * s + r) for s in range(3) for r in range(2)}
    c = compare_blocks({k: v + 2 for k, v in b.items()}, b)
    # no t-test without spread: the exact sign test over the 3 split means, 2^(1-3)
    assert (c.diff, c.ci_low, c.ci_high, c.p) == (2.0, 2.0, 2.0, 0.25)
    assert c.verdict == NOT_RESOLVED and "zero spread" in c.note


# --- ANOVA helpers ----------------------------------------------------------------------------
def test_one_way_matches_f_oneway_and_n0_is_unbiased_when_unbalanced():
    rng = np.random.default_rng(7)
    groups = [rng.normal(size=n) + m for n, m in ((2, 0), (5, 1), (3, -1), (1, 0))]
    ow = one_way(groups)
    assert ow.ms_between / ow.ms_within == pytest.approx(stats.f_oneway(*groups).statistic)
    sizes = np.array([2, 5, 3, 1])
    assert ow.n0 == pytest.approx((11 - (sizes ** 2).sum() / 11) / 3)
    # E[(MS_b - MS_w) / n0] = var_between: unbiased on unbalanced groups (1.5^2, 0.5^2)
    est = [one_way([rng.normal(rng.normal(0, 1.5), 0.5, n) for n in sizes]) for _ in range(3000)]
    assert np.mean([e.var_between_raw for e in est]) == pytest.approx(2.25, rel=0.08)
    assert np.mean([e.var_within for e in est]) == pytest.approx(0.25, rel=0.05)
    clamped = one_way([[0.0, 2.0], [0.9, 1.1]])     # between < within: clamped, flagged
    assert clamped.var_between == 0 and clamped.clamped and clamped.var_between_raw < 0


def test_two_way_recovers_exact_row_and_column_effects():
    r, c = np.array([0.0, 2.0, 5.0]), np.array([1.0, -1.0, 0.5, 3.0])
    tw = two_way(r[:, None] + c[None, :])
    assert tw.var_error == pytest.approx(0, abs=1e-12)
    assert tw.var_rows == pytest.approx(r.var(ddof=1))
    assert tw.var_cols == pytest.approx(c.var(ddof=1))
    with pytest.raises(ValueError):
        two_way([[1.0, 2.0]])


def test_seed_components_of_a_crossed_design_with_a_missing_cell():
    inits, orders = [3.0, 0.0, -2.0, 1.0], [0.5, -0.5, 0.0]
    values = {(i, o): 80 + inits[i] + orders[o] for i in range(4) for o in range(3)}
    values[(2, 1)] = None          # missing: init 2 is dropped, not order 1
    sc = seed_components(values)
    assert sc.dropped == [("init", 2)] and (sc.n_init, sc.n_order) == (3, 3)
    assert sc.var_init == pytest.approx(np.var([3.0, 0.0, 1.0], ddof=1))
    assert sc.var_order == pytest.approx(np.var(orders, ddof=1))
    assert sc.share_init + sc.share_order + sc.share_residual == pytest.approx(1)
    assert "left out init 2" in sc.note
    assert seed_components({(0, 0): 1.0, (0, 1): 2.0}).var_init is None


# --- the variance table -----------------------------------------------------------------------
def test_variance_table_recovers_planted_split_seed_and_test_components():
    """y = m + split + seed + test noise, the test noise partly shared by a split's runs (the
    same test images): with test_var and test_cov given, the components come back unbiased."""
    rng = np.random.default_rng(8)
    var_split, var_seed, v, c = 4.0, 1.0, 0.8, 0.3
    values, test_var, test_cov = {}, {}, {}
    for s in range(600):
        split = rng.normal(0, math.sqrt(var_split)) + rng.normal(0, math.sqrt(c))  # + shared
        test_cov[s] = c
        for r in range(4):
            values[(s, r)] = (50 + split + rng.normal(0, math.sqrt(var_seed))
                              + rng.normal(0, math.sqrt(v - c)))
            test_var[(s, r)] = v
    t = variance_table(values, test_var, test_cov)
    assert t.var_split == pytest.approx(var_split, rel=0.1)
    assert t.var_seed == pytest.approx(var_seed, rel=0.1)
    assert t.var_test == pytest.approx(v) and t.test_shared == pytest.approx(c)
    assert t.share_split + t.share_seed + t.share_test == pytest.approx(1)
    assert t.total == pytest.approx(var_split + var_seed + v, rel=0.1)
    # the same runs without test_cov: the test noise is all taken out of the seed component
    t0 = variance_table(values, test_var)
    assert t0.var_seed == pytest.approx(t.var_seed - c) and "run-specific" in t0.note


def test_variance_table_algebra_clamping_and_one_split():
    values = {(0, 0): 1.0, (0, 1): 3.0, (1, 0): 2.0, (1, 1): 4.0}
    t = variance_table(values, {k: 0.5 for k in values})
    # MS_w = 2, MS_b = 0: split (0 - 2) / 2 = -1 -> clamped; seed = 2 - 0.5
    assert t.var_split == 0 and t.clamped == ["split"] and t.var_seed == pytest.approx(1.5)
    assert t.share_test == pytest.approx(0.5 / 2.0) and "clamped" in t.note
    big = variance_table(values, {k: 9.0 for k in values})
    assert big.var_seed == 0 and "seed" in big.clamped
    one = variance_table({0: 1.0, 1: 3.0, 2: None})
    assert one.var_split is None and one.var_seed == pytest.approx(2.0) and one.share_seed == 1
    assert "one split" in one.note and "1 missing value" in one.note
    lone = variance_table({(0, 0): 1.0, (1, 0): 3.0})
    assert lone.var_seed is None and lone.total is None and "cannot be told apart" in lone.note


def test_pairing_gain_identity_and_within_split_correlation():
    a, b = planted(np.random.default_rng(9), splits=4, seeds=5, base_sd=2.0, sd_seed=0.3)
    g = pairing_gain(a, b)
    keys = sorted(a)
    x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    assert g.corr == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert g.var_diff == pytest.approx(g.var_a + g.var_b - 2 * g.cov)
    assert g.variance_ratio < 0.5 and g.n_blocks == 20 and g.n_splits == 4
    # within splits the pairs still share the seed's effect: strongly correlated
    assert g.corr_within > 0.9 and g.variance_ratio_within < 0.1
    # independent runs: pairing buys nothing
    rng = np.random.default_rng(10)
    ind = pairing_gain({k: rng.normal() for k in range(200)}, {k: rng.normal() for k in range(200)})
    assert abs(ind.corr) < 0.2 and ind.variance_ratio == pytest.approx(1, abs=0.2)
    assert ind.corr_within is None
    assert pairing_gain({0: 1.0}, {0: 2.0}).note == "fewer than 2 paired blocks"
