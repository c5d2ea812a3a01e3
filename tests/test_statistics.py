"""bench.stats.compare: cells, comparisons, Holm, seeds needed, best rows, paired bootstrap.

Every expected number comes from scipy called here directly or from a hand computation.
No torch needed.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bench.stats.compare import (BETTER, NOT_RESOLVED, WORSE, best_rows, box_support, compare,
                                compare_all, describe, holm, verdict)
from bench.stats.power import seeds_needed

SEEDS = [0, 1, 2, 3, 4]
BASE = [71.0, 74.5, 69.8, 73.1, 72.4]  # a baseline with a few points of seed spread


def cell(values, seeds=None) -> dict:
    return dict(zip(seeds or range(len(values)), values))


def nct_power(n: int, effect: float, alpha: float = 0.05, paired: bool = True) -> float:
    """Two-sided t-test power, written out here independently of the module."""
    df = n - 1 if paired else 2 * n - 2
    nc = effect * math.sqrt(n) if paired else effect * math.sqrt(n / 2)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


# --- planted results --------------------------------------------------------------------------
def test_planted_five_points_better_on_every_seed():
    noise = [0.2, -0.1, 0.15, -0.2, 0.05]
    a = cell([b + 5 + e for b, e in zip(BASE, noise)])
    c = compare(a, cell(BASE), name="lesa", baseline="conv")
    assert c.paired and c.n_pairs == 5 and c.method == "paired t"
    assert c.diff == pytest.approx(5.02)
    assert c.ci_low > 0 and c.ci_high > c.ci_low
    assert c.p < 0.001 and c.p_adjusted == c.p
    assert c.verdict == BETTER and c.seeds_needed is None
    # the same numbers as a loss (lower is better): resolved the other way
    assert compare(a, cell(BASE), higher_is_better=False).verdict == WORSE


def test_overlapping_values_not_resolved_with_seeds_needed():
    d = [0.5, -0.3, 0.4, -0.2, 0.3]
    a = cell([b + x for b, x in zip(BASE, d)])
    c = compare(a, cell(BASE))
    assert c.verdict == NOT_RESOLVED and c.ci_low < 0 < c.ci_high
    assert isinstance(c.seeds_needed, int) and c.seeds_needed > 5
    sd = float(np.std(d, ddof=1))
    assert c.sd == pytest.approx(sd)
    assert c.seeds_needed == seeds_needed(float(np.mean(d)), sd)
    # a given min_effect replaces the observed difference in the power analysis
    with_min = compare(a, cell(BASE), min_effect=0.5)
    assert with_min.seeds_needed == seeds_needed(0.5, sd) < c.seeds_needed


def test_n_equal_1_has_no_ci_and_says_so():
    one = describe({0: 0.91})
    assert one.n == 1 and one.mean == 0.91
    assert one.std is None and one.ci_low is None and one.ci_high is None
    assert "n = 1" in one.note and "no CI" in one.note
    c = compare({0: 0.95}, {0: 0.90})
    assert c.n_pairs == 1 and c.diff == pytest.approx(0.05)
    assert c.ci_low is None and c.p is None and c.p_adjusted is None
    assert c.verdict == NOT_RESOLVED and c.seeds_needed is None  # no spread to power with
    assert "n = 1" in c.note


def test_missing_values_are_left_out_not_zero():
    s = describe({0: 1.0, 1: None, 2: float("nan"), 3: 3.0})
    assert s.n == 2 and s.mean == 2.0 and "2 missing values" in s.note
    assert describe({}).mean is None


def test_holm_turns_a_borderline_better_into_not_resolved():
    dev = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    base = cell(BASE)
    rows = {"conv": base,
            "borderline": cell(list(np.array(BASE) + 2.1 + dev)),
            "other1": cell(list(np.array(BASE) + 0.5 + dev)),
            "other2": cell(list(np.array(BASE) - 0.4 + dev[::-1]))}
    alone = compare(rows["borderline"], base)
    assert 0.04 < alone.p < 0.05 and alone.verdict == BETTER  # raw p just under 0.05
    table = compare_all(rows, "conv")
    assert set(table) == {"borderline", "other1", "other2"}
    b = table["borderline"]
    assert b.p == alone.p and b.p_adjusted == pytest.approx(3 * alone.p)  # the smallest of 3
    assert b.verdict == NOT_RESOLVED and isinstance(b.seeds_needed, int)
    assert "Holm" in b.note
    expected = holm([table[k].p for k in ("borderline", "other1", "other2")])
    assert [table[k].p_adjusted for k in ("borderline", "other1", "other2")] == expected


# --- the same numbers as scipy ----------------------------------------------------------------
def test_cell_ci_equals_scipy():
    x = [0.912, 0.905, 0.931, 0.899, 0.921, 0.917]
    s = describe(cell(x))
    ci = stats.ttest_1samp(x, 0).confidence_interval()
    assert s.n == 6 and s.mean == pytest.approx(np.mean(x))
    assert s.std == pytest.approx(np.std(x, ddof=1))
    assert (s.ci_low, s.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert s.note == ""


def test_paired_comparison_equals_scipy():
    rng = np.random.default_rng(3)
    b = rng.normal(70, 2, size=8)
    a = b + rng.normal(0.8, 1.0, size=8)
    c = compare(cell(list(a)), cell(list(b)))
    t = stats.ttest_rel(a, b)
    ci = t.confidence_interval()
    assert c.p == pytest.approx(t.pvalue, rel=1e-12)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert c.p_wilcoxon == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    d = a - b
    assert c.diff == pytest.approx(d.mean())
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1))


def test_wilcoxon_floor_is_noted_below_six_pairs():
    a = cell([b + 5 for b in BASE])
    c = compare(a, cell(BASE))
    assert c.p_wilcoxon == pytest.approx(0.0625)  # the smallest it can be with 5 pairs
    assert "Wilcoxon cannot go below p = 0.0625" in c.note


def test_unpaired_fallback_is_welch_and_says_so():
    a = {10: 74.0, 11: 76.5, 12: 75.2}
    b = {0: 71.0, 1: 72.8, 2: 70.1, 3: 72.0}
    c = compare(a, b)
    assert not c.paired and c.n_pairs == 0 and c.method == "Welch t"
    res = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    ci = res.confidence_interval()
    assert c.p == pytest.approx(res.pvalue, rel=1e-12)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert c.p_wilcoxon is None
    assert "Welch" in c.note and "seeds do not match" in c.note
    pooled = math.sqrt((np.var(list(a.values()), ddof=1) + np.var(list(b.values()), ddof=1)) / 2)
    assert c.sd == pytest.approx(pooled)


def test_unpaired_not_resolved_powers_a_two_sample_test():
    a = {10: 72.0, 11: 74.5, 12: 71.2}
    b = {0: 71.0, 1: 72.8, 2: 70.1}
    c = compare(a, b)
    assert not c.paired and c.verdict == NOT_RESOLVED
    # seeds per strategy of a two-sample t with the pooled std, not a paired one
    assert c.seeds_needed == seeds_needed(c.diff, c.sd, paired=False)
    assert c.seeds_needed > seeds_needed(c.diff, c.sd, paired=True)


def test_verdict_rule_needs_both_p_and_ci():
    assert verdict(1.0, 0.2, 1.8, 0.01) == BETTER
    assert verdict(1.0, 0.2, 1.8, 0.01, higher_is_better=False) == WORSE
    assert verdict(-1.0, -1.8, -0.2, 0.01) == WORSE
    assert verdict(1.0, -0.1, 2.1, 0.01) == NOT_RESOLVED  # p small, CI touches 0
    assert verdict(1.0, 0.2, 1.8, 0.06) == NOT_RESOLVED  # CI clear, adjusted p too big
    assert verdict(1.0, 0.2, 1.8, 0.05) == NOT_RESOLVED  # strictly below alpha
    assert verdict(1.0, None, None, None) == NOT_RESOLVED


def test_partly_shared_seeds_pair_on_the_shared_ones():
    a = {0: 75.0, 1: 77.0, 2: 73.5, 3: 74.0}
    b = {0: 71.0, 1: 72.8, 2: 70.1, 9: 60.0}
    c = compare(a, b)
    assert c.paired and c.n_pairs == 3
    assert c.p == pytest.approx(stats.ttest_rel([75.0, 77.0, 73.5], [71.0, 72.8, 70.1]).pvalue)
    assert "3" in c.note and "9" in c.note  # seed 3 and seed 9 are left out and named


# --- Holm -------------------------------------------------------------------------------------
def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    adjusted = holm([0.02, None, 0.04])  # None is no test: not in the family (m = 2)
    assert adjusted[1] is None and adjusted[0] == pytest.approx(0.04)
    assert adjusted[2] == pytest.approx(0.04)
    assert holm([]) == []


# --- seeds needed -----------------------------------------------------------------------------
@pytest.mark.parametrize("diff, sd, paired", [(1.0, 1.08, True), (1.0, 1.08, False),
                                              (2.0, 4.64, True), (0.3, 0.25, True),
                                              (-1.5, 2.0, False), (5.0, 1.0, True)])
def test_seeds_needed_is_the_smallest_n_with_80_percent_power(diff, sd, paired):
    n = seeds_needed(diff, sd, paired=paired)
    assert isinstance(n, int) and n >= 2
    effect = abs(diff) / sd
    assert nct_power(n, effect, paired=paired) >= 0.8
    if n > 2:
        assert nct_power(n - 1, effect, paired=paired) < 0.8


def test_seeds_needed_matches_the_reference_figures_unpaired():
    # docs/statistics.md: 19 / 5 (digits, std 1.08) and 338 / 85 (AP50, std 4.64),
    # from the normal approximation; the exact noncentral t asks for at most one more
    for diff, sd, approx in [(1, 1.08, 19), (2, 1.08, 5), (1, 4.64, 338), (2, 4.64, 85)]:
        assert approx <= seeds_needed(diff, sd, paired=False) <= approx + 1


def test_seeds_needed_cap_and_none():
    assert seeds_needed(0.001, 1.0) == ">10000"
    assert seeds_needed(0.01, 1.0, cap=100) == ">100"
    assert seeds_needed(1.0, 0.0) is None
    assert seeds_needed(1.0, None) is None
    assert seeds_needed(0.0, 1.0) is None


# --- best rows --------------------------------------------------------------------------------
def test_best_rows_one_clearly_best():
    noise = [0.1, -0.1, 0.2, 0.0, -0.2]
    rows = {"conv": cell(BASE),
            "lesa": cell([b + 5 + e for b, e in zip(BASE, noise)]),
            "sa": cell([b + 1 + e for b, e in zip(BASE, noise[::-1])])}
    assert best_rows(rows) == {"lesa"}
    # as a loss the lowest mean is best, and conv is clearly lowest
    assert best_rows(rows, higher_is_better=False) == {"conv"}


def test_best_rows_two_not_resolved_are_both_best():
    rows = {"conv": cell(BASE),
            "lesa": cell([b + 5.0 for b in BASE]),
            "dynamic": cell([b + x for b, x in zip(BASE, [5.5, 4.2, 5.9, 4.6, 5.1])])}
    assert best_rows(rows) == {"lesa", "dynamic"}
    assert best_rows({"only": {0: 1.0}, "empty": {}}) == {"only"}


def test_box_support_flags_small_buckets():
    small = box_support(18)
    assert small.too_few and "18" in small.note
    assert not box_support(50).too_few and box_support(50).note == ""
    assert box_support(30, threshold=20).too_few is False


def test_statistics_import_without_torch_or_rich():
    """Every module of bench/stats is pure numbers: importing them all loads no torch or rich."""
    names = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "bench" / "stats")
                   .glob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\n"
            f"for name in {names!r}: importlib.import_module('bench.stats.' + name)\n"
            "print(sorted(m for m in ('torch', 'rich', 'lightning') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert names and out.stdout.strip() == "[]"


def test_seeds_needed_in_a_table_allow_for_holm_and_exceed_the_seeds_at_hand():
    """Two seeds with a large, consistent gap that Holm leaves unresolved: the figure must be
    powered at alpha / m and can never be the 2 seeds that already failed to resolve it."""
    base = {0: 95.0, 1: 96.0}
    rows = {"conv": base,
            "a": {0: 94.1, 1: 95.2},   # -0.85 +- small: raw p ~ 0.02, Holm over 3 -> not resolved
            "b": {0: 95.5, 1: 95.0},
            "c": {0: 96.0, 1: 95.5}}
    out = compare_all(rows, "conv")
    a = out["a"]
    assert a.verdict == "not resolved" and a.p < 0.05
    assert isinstance(a.seeds_needed, int) and a.seeds_needed >= 3
    alone = compare(rows["a"], base)
    assert alone.verdict == "better" or alone.verdict == "worse" or alone.seeds_needed >= 3
    sd = float(np.std(np.array([94.1, 95.2]) - np.array([95.0, 96.0]), ddof=1))
    raw = seeds_needed(-0.85, sd, 0.05 / 3)
    assert a.seeds_needed == max(raw, 3)


def test_equal_differences_of_a_discrete_metric_are_no_t_test_evidence():
    """Two seeds whose models differ by the same 7 of 359 test images: the differences agree
    to float rounding, the t-test's p would be ~1e-6; the report uses the exact sign test
    instead (p = 2^(1 - n) = 0.5 at two pairs), so nothing is resolved on two seeds."""
    base = {0: 100 * 341 / 359, 1: 100 * 337 / 359}
    row = {0: 100 * 348 / 359, 1: 100 * 344 / 359}
    assert np.std([row[s] - base[s] for s in base]) < 1e-12  # equal, up to rounding
    c = compare(row, base)
    assert c.p == 0.5 and c.verdict == NOT_RESOLVED and "sign test" in c.note
    # as the store holds them: computed in float32, the two differences disagree by ~1e-6
    f32 = {k: {s: float(np.float32(v)) for s, v in d.items()} for k, d in (("r", row), ("b", base))}
    assert np.std([f32["r"][s] - f32["b"][s] for s in base]) > 1e-7
    c32 = compare(f32["r"], f32["b"])
    assert c32.p == 0.5 and c32.verdict == NOT_RESOLVED
    five = compare({s: 1.0 + s for s in range(6)}, {s: float(s) for s in range(6)})
    assert five.p == 2.0 ** -5 and five.verdict == BETTER  # six pairs, every one +1
