"""Margins with a fixed number of seeds: the TOST, the fourth verdict "equivalent", the Holm
family over difference and equivalence tests, "better by less than the margin", seeds needed.

Expected numbers come from scipy's one-sided t-tests or hand computations written out here.
No torch needed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.stats.compare import (BETTER, EQUIVALENT, NOT_RESOLVED, WORSE, compare, compare_all,
                                holm, holm_union, tost_pvalue, verdict)
from bench.stats.power import seeds_needed, tost_power, tost_seeds_needed
from bench.stats.sequential import t_pvalue

BASE = [71.0, 74.5, 69.8, 73.1, 72.4, 70.6, 73.9, 71.8]


def cell(values) -> dict:
    return dict(enumerate(values))


def shifted(deltas) -> dict:
    return cell([b + x for b, x in zip(BASE, deltas)])


# --- the TOST ---------------------------------------------------------------------------------
def test_paired_tost_is_the_larger_of_two_one_sided_scipy_tests():
    d = np.array([0.3, -0.2, 0.1, 0.4, -0.1, 0.2, 0.0, 0.25])
    c = compare(shifted(d), cell(BASE), margin=1.0)
    low = stats.ttest_1samp(d, -1.0, alternative="greater").pvalue   # H0: mean <= -1
    high = stats.ttest_1samp(d, 1.0, alternative="less").pvalue      # H0: mean >= +1
    assert c.p_equivalence == pytest.approx(max(low, high), rel=1e-10)
    ci = stats.ttest_1samp(d, 0).confidence_interval(0.90)  # the 1 - 2 alpha interval
    assert (c.equivalence_low, c.equivalence_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert c.p_equivalence_adjusted == c.p_equivalence and c.df == 7
    assert c.verdict == EQUIVALENT and c.resolved and c.seeds_needed is None
    assert c.within_margin is None  # only for better/worse


def test_welch_tost_written_out():
    a = {10: 74.0, 11: 73.5, 12: 74.2, 13: 73.8}
    b = {0: 73.9, 1: 74.1, 2: 73.6}
    c = compare(a, b, margin=1.5)
    x, y = np.array(list(a.values())), np.array(list(b.values()))
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    diff = x.mean() - y.mean()
    expected = max(stats.t.sf((diff + 1.5) / se, df), stats.t.cdf((diff - 1.5) / se, df))
    assert not c.paired and c.df == pytest.approx(df)
    assert c.p_equivalence == pytest.approx(expected, rel=1e-10)


def test_tost_pvalue_vectorised_and_zero_spread():
    diff, se, df = np.array([0.1, 0.5, -0.9]), np.array([0.2, 0.3, 0.05]), np.array([5, 9, 3])
    p = tost_pvalue(diff, se, df, 1.0)
    for i in range(3):
        one = max(stats.t.sf((diff[i] + 1) / se[i], df[i]), stats.t.cdf((diff[i] - 1) / se[i],
                                                                         df[i]))
        assert p[i] == pytest.approx(one, rel=1e-12)
    assert tost_pvalue(0.5, 0.0, 4, 1.0) == 0.0 and tost_pvalue(1.5, 0.0, 4, 1.0) == 1.0
    assert np.isnan(tost_pvalue(np.nan, 1.0, 4, 1.0))
    # the two-sided difference p of the sequential code equals scipy's paired t
    d = np.array([0.3, -0.2, 0.5, 0.4])
    assert t_pvalue(d.mean(), d.std(ddof=1) / 2, 3) == pytest.approx(
        stats.ttest_1samp(d, 0).pvalue, rel=1e-12)


def test_interval_straddling_the_margin_is_not_resolved():
    d = [1.8, -1.2, 2.8, 0.4, -1.6, 2.2, 1.0, -0.6]  # mean 0.6, wide interval
    c = compare(shifted(d), cell(BASE), margin=1.0)
    assert c.equivalence_high > 1.0 and c.p_equivalence > 0.05
    assert c.verdict == NOT_RESOLVED and isinstance(c.seeds_needed, int)


def test_verdict_rule_with_equivalence():
    assert verdict(0.1, -0.2, 0.4, 0.6, p_equivalence_adjusted=0.01) == EQUIVALENT
    assert verdict(0.1, -0.2, 0.4, 0.6, p_equivalence_adjusted=0.05) == NOT_RESOLVED  # strict
    assert verdict(0.5, 0.2, 0.8, 0.01, p_equivalence_adjusted=0.01) == BETTER  # both: better
    assert verdict(0.5, 0.2, 0.8, 0.01, higher_is_better=False,
                   p_equivalence_adjusted=0.01) == WORSE
    assert verdict(0.1, None, None, None, p_equivalence_adjusted=0.01) == NOT_RESOLVED


def test_without_a_margin_nothing_changes():
    rows = {"conv": cell(BASE), "a": shifted([1.2, 0.8, 1.5, 0.9, 1.1, 1.0, 1.3, 0.7]),
            "b": shifted([0.2, -0.4, 0.3, 0.1, -0.2, 0.4, -0.1, 0.0])}
    plain, explicit = compare_all(rows, "conv"), compare_all(rows, "conv", margin=None)
    for name in ("a", "b"):
        assert vars(plain[name]) == vars(explicit[name])
        c = plain[name]
        assert c.margin is None and c.p_equivalence is None and c.within_margin is None
        assert c.p_equivalence_adjusted is None and c.equivalence_low is None
    assert plain["a"].verdict == BETTER and plain["b"].verdict == NOT_RESOLVED


def test_better_by_less_than_the_margin_is_flagged():
    tight = [0.5, 0.45, 0.55, 0.5, 0.48, 0.52, 0.5, 0.5]
    c = compare(shifted(tight), cell(BASE), margin=1.0)
    assert c.verdict == BETTER and c.within_margin and c.within_margin_shown
    assert "better by less than the margin 1 (the equivalence test shows it)" in c.note
    loose = [1.4, 0.1, 1.2, 0.3, 1.0, 0.2, 0.9, 0.5]  # better, |diff| < 1, interval reaches 1
    c = compare(shifted(loose), cell(BASE), margin=1.0)
    assert c.verdict == BETTER and c.within_margin and not c.within_margin_shown
    assert "an estimate" in c.note
    big = compare(shifted([3.0, 3.1, 2.9, 3.0, 3.2, 2.8, 3.0, 3.1]), cell(BASE), margin=1.0)
    assert big.verdict == BETTER and big.within_margin is False and "margin" not in big.note
    # compare_all concludes twice: the note is rewritten, not repeated
    table = compare_all({"conv": cell(BASE), "t": shifted(tight)}, "conv", margin=1.0)
    assert table["t"].note.count("by less than the margin") == 1


# --- the family: Holm over difference and equivalence tests -----------------------------------
def test_holm_union_hand_computed():
    # sorted: e2 0.001 (2 comparisons open) -> 0.002; d1 0.01 -> 0.02; e1 0.02 (both still
    # open: each has one hypothesis left) -> 0.04; comparison 1 now fully rejected, so d2 is
    # multiplied by 1: 0.30
    adj_d, adj_e = holm_union([0.01, 0.30], [0.02, 0.001])
    assert adj_d == pytest.approx([0.02, 0.30]) and adj_e == pytest.approx([0.04, 0.002])
    # with union Holm a comparison shown better keeps its alpha: d2 is not promoted to 1 * p
    adj_d, adj_e = holm_union([0.001, 0.03], [0.9, 0.5])
    assert adj_d == pytest.approx([0.002, 0.06])


@pytest.mark.parametrize("p", [[0.01, 0.04, 0.03, 0.005], [0.6, 0.7], [0.02, None, 0.04], []])
def test_holm_union_without_equivalence_is_holm(p):
    got = holm_union(np.array([np.nan if x is None else x for x in p], dtype=float))[0]
    want = holm(p)
    assert [None if np.isnan(x) else x for x in got] == pytest.approx(want)


def test_holm_union_is_vectorised_over_experiments():
    rng = np.random.default_rng(4)
    pd, pe = rng.uniform(size=(50, 4)) ** 3, rng.uniform(size=(50, 4)) ** 3
    pe[::7, 1] = np.nan
    both = holm_union(pd, pe)
    for e in range(50):
        one = holm_union(pd[e], pe[e])
        np.testing.assert_allclose(both[0][e], one[0])
        np.testing.assert_allclose(both[1][e], one[1])


def test_compare_all_adjusts_both_kinds_together():
    rows = {"conv": cell(BASE),
            "same": shifted([0.1, -0.1, 0.05, 0.0, -0.05, 0.1, -0.1, 0.0]),
            "up": shifted([2.0, 2.2, 1.9, 2.1, 2.0, 1.8, 2.2, 2.0]),
            "noisy": shifted([1.5, -1.2, 0.8, -0.9, 1.1, -0.4, 0.6, -1.0])}
    table = compare_all(rows, "conv", margin=1.0)
    names = ["same", "up", "noisy"]
    adj_d, adj_e = holm_union([table[n].p for n in names], [table[n].p_equivalence for n in names])
    assert [table[n].p_adjusted for n in names] == pytest.approx(list(adj_d))
    assert [table[n].p_equivalence_adjusted for n in names] == pytest.approx(list(adj_e))
    assert [table[n].verdict for n in names] == [EQUIVALENT, BETTER, NOT_RESOLVED]
    assert "difference and equivalence tests" in table["up"].note


# --- seeds needed with a margin ---------------------------------------------------------------
def test_seeds_needed_with_a_margin_covers_both_outcomes():
    d = [1.8, -1.2, 2.8, 0.4, -1.6, 2.2, 1.0, -0.6]
    rows = {"conv": cell(BASE), "x": shifted(d), "y": shifted(d[::-1])}
    c = compare_all(rows, "conv", margin=1.0)["x"]
    assert c.verdict == NOT_RESOLVED
    sd = float(np.std(d, ddof=1))
    want = max(seeds_needed(1.0, sd, 0.05 / 2), tost_seeds_needed(1.0, sd, 0.05 / 2))
    assert c.seeds_needed == want
    assert compare_all(rows, "conv", margin=1.0, min_effect=2.0)["x"].seeds_needed == max(
        seeds_needed(2.0, sd, 0.05 / 2), tost_seeds_needed(1.0, sd, 0.05 / 2))


def test_tost_seeds_needed_reach_the_power_by_simulation():
    sd, margin = 1.0, 0.8
    n = tost_seeds_needed(margin, sd)
    assert tost_power(n, margin, sd) >= 0.8 > tost_power(n - 1, margin, sd)
    rng = np.random.default_rng(11)
    d = rng.normal(0.0, sd, size=(20000, n))
    p = tost_pvalue(d.mean(1), d.std(1, ddof=1) / math.sqrt(n), n - 1, margin)
    power = (p < 0.05).mean()
    assert power >= 0.8 - 3 * math.sqrt(0.16 / 20000)  # the bound is conservative
    assert tost_seeds_needed(margin, 0.0) is None and tost_seeds_needed(1e-4, 1.0) == ">10000"


# --- error rates with a fixed number of seeds, by simulation ----------------------------------
def _fixed_verdicts(d, margin, alpha=0.05):
    """compare_all's rule on arrays (experiments, comparisons, seeds): paired t and TOST
    p-values, holm_union, better/worse first, else equivalent."""
    n = d.shape[2]
    mean, se = d.mean(2), d.std(2, ddof=1) / math.sqrt(n)
    adj_d, adj_e = holm_union(t_pvalue(mean, se, n - 1), tost_pvalue(mean, se, n - 1, margin))
    better, worse = (adj_d < alpha) & (mean > 0), (adj_d < alpha) & (mean < 0)
    equivalent = ~better & ~worse & (adj_e < alpha)
    return better, worse, equivalent, better & (adj_e < alpha)


@pytest.mark.parametrize("effects", [[0.0, 0.0, 0.0], [1.0, 1.0, -1.0], [0.0, 1.0, 2.0]])
def test_fixed_n_family_error_by_simulation(effects):
    """All claims together (better/worse with the wrong sign or at 0; equivalent or shown within
    the margin at |effect| >= margin) stay below alpha + 3 MC errors, paired cells sharing a
    baseline (correlation 0.5)."""
    rng, n_sim, n, margin = np.random.default_rng(21), 20000, 8, 1.0
    mu = np.array(effects)
    shared = rng.standard_normal((n_sim, 1, n))
    d = mu[None, :, None] + 0.9 * (math.sqrt(0.5) * shared
                                   + math.sqrt(0.5) * rng.standard_normal((n_sim, 3, n)))
    better, worse, equivalent, shown_small = _fixed_verdicts(d, margin)
    large = np.abs(mu) >= margin
    false = (better & (mu <= 0)) | (worse & (mu >= 0)) | ((equivalent | shown_small) & large)
    rate = false.any(axis=1).mean()
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n_sim)
    assert rate > 0.01  # not vacuous: the procedure makes claims


def test_compare_all_equals_the_vectorised_rule():
    rng = np.random.default_rng(5)
    for _ in range(10):
        d = rng.normal([0.0, 1.5, 0.3], 0.8, size=(6, 3)).T[None]
        base = rng.normal(70, 2, size=6)
        rows = {"conv": cell(base)} | {f"r{j}": cell(base + d[0, j]) for j in range(3)}
        table = compare_all(rows, "conv", margin=1.0)
        better, worse, equivalent, _ = (x[0] for x in _fixed_verdicts(d, 1.0))
        want = [BETTER if b else WORSE if w else EQUIVALENT if e else NOT_RESOLVED
                for b, w, e in zip(better, worse, equivalent)]
        assert [table[f"r{j}"].verdict for j in range(3)] == want
