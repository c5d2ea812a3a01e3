"""bench.stats.budget: expected-best curves against brute-force enumeration, bootstrap bands,
time budgets, best-so-far curves, crossings, tuning variance and the sweep's budget check.

Expected numbers come from enumerating every ordered draw with replacement, or by hand.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from bench.stats.budget import (BUDGET_REACHED, EXPECTED, OBSERVED, RUNNING_FILL, SECONDS,
                                Trial, best_so_far, budget_curve, budget_status, budget_table,
                                crossings, default_budgets, expected_best, order,
                                tuning_variance)


def brute(values, pruned, n, direction="maximize"):
    """Mean and std of the best of n ordered draws with replacement (None = pruned, never
    best), over every draw with at least one complete trial; and the share without one."""
    pool = list(values) + [None] * pruned
    pick = max if direction == "maximize" else min
    bests, empty = [], 0
    for draw in itertools.product(pool, repeat=n):
        done = [x for x in draw if x is not None]
        if done:
            bests.append(pick(done))
        else:
            empty += 1
    return float(np.mean(bests)), float(np.std(bests)), empty / len(pool) ** n


def study(values, seconds=None, pruned=(), start=0):
    """Trials numbered from `start`: COMPLETE with `values`, then PRUNED with `pruned` seconds."""
    seconds = seconds or [60.0] * len(values)
    out = [Trial(start + i, "COMPLETE", v, s) for i, (v, s) in enumerate(zip(values, seconds))]
    return out + [Trial(start + len(out) + i, "PRUNED", None, s) for i, s in enumerate(pruned)]


PLANTED = [  # (values, pruned, direction): distinct, ties, minimisation, pruned draws
    ([0.2, 0.9, 0.5], 0, "maximize"),
    ([0.7, 0.3, 0.7, 0.7, 0.1], 0, "maximize"),
    ([0.4, 0.4, 0.4, 0.4], 0, "maximize"),
    ([3.0, 1.0, 1.0, 2.0], 0, "minimize"),
    ([0.6, 0.8, 0.8], 2, "maximize"),
    ([5.0, 2.0, 2.0], 1, "minimize"),
    ([0.9], 0, "maximize"),
]


# --- the estimator ----------------------------------------------------------------------------
@pytest.mark.parametrize("values,pruned,direction", PLANTED)
def test_expected_best_equals_enumeration(values, pruned, direction):
    got = expected_best(values, [1, 2, 3, 4], direction, pruned=pruned)
    want = [brute(values, pruned, n, direction)[0] for n in (1, 2, 3, 4)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("values,pruned,direction", PLANTED)
def test_curve_of_trials_matches_enumeration_with_spread_and_no_complete(values, pruned,
                                                                         direction):
    trials = study(values, pruned=[30.0] * pruned)
    curve = budget_curve(trials, "random", direction, budgets=[1, 2, 3, 4], n_boot=50)
    assert curve.kind == EXPECTED and curve.n_trials == len(values) + pruned
    for j, n in enumerate((1, 2, 3, 4)):
        mean, std, empty = brute(values, pruned, n, direction)
        assert curve.value[j] == pytest.approx(mean, abs=1e-12)
        assert curve.spread[j] == pytest.approx(std, abs=1e-9)
        assert curve.p_none[j] == pytest.approx(empty, abs=1e-12)


def test_dodge_formula_by_hand_and_beyond_n():
    v = [0.1, 0.4, 0.5, 0.9]  # sorted: E[max_n] = sum_i v_(i) [(i/4)^n - ((i-1)/4)^n]
    for n in (1, 2, 7):
        want = sum(x * ((i / 4) ** n - ((i - 1) / 4) ** n) for i, x in enumerate(v, 1))
        assert expected_best(v[::-1], [n])[0] == pytest.approx(want, abs=1e-12)
    assert expected_best([0.2, 0.9, 0.5], [6])[0] == pytest.approx(brute([0.2, 0.9, 0.5], 0, 6)[0])
    far = expected_best(v, [1, 10, 100, 1000])
    assert np.all(np.diff(far) > 0) and far[-1] == pytest.approx(0.9)  # rises to the max


def test_fractional_budget_is_the_mix_of_its_neighbours():
    v = [0.2, 0.9, 0.5, 0.4]
    two, three, mid = expected_best(v, [2, 3, 2.25])
    assert mid == pytest.approx(0.75 * two + 0.25 * three)
    with pytest.raises(ValueError):
        expected_best(v, [0.5])
    with pytest.raises(ValueError):
        expected_best(v, [1], direction="up")


def test_bootstrap_band_contains_estimate_is_seeded_and_shrinks():
    rng = np.random.default_rng(3)
    small = study(list(rng.normal(0.8, 0.05, 10)))
    large = study(list(rng.normal(0.8, 0.05, 160)))
    a = budget_curve(small, "random", budgets=[1, 2, 4, 8])
    b = budget_curve(large, "random", budgets=[1, 2, 4, 8])
    for c in (a, b):
        assert np.all(c.low <= c.value) and np.all(c.value <= c.high)
        assert np.all(c.high > c.low) and c.samples.shape == (1000, 4)
    # 16 times the trials: about a quarter of the width
    assert np.all((b.high - b.low) < 0.5 * (a.high - a.low))
    again = budget_curve(small, "random", budgets=[1, 2, 4, 8])
    np.testing.assert_array_equal(again.low, a.low)
    other = budget_curve(small, "random", budgets=[1, 2, 4, 8], seed=1)
    assert not np.array_equal(other.low, a.low)


def test_minimised_band_is_oriented_and_pruned_resamples_are_counted():
    trials = study([0.3, 0.5, 0.2], pruned=[10.0] * 3)
    c = budget_curve(trials, "random", "minimize", budgets=[1, 3], n_boot=2000)
    assert np.all(c.low <= c.value) and np.all(c.value <= c.high)
    assert c.value[1] < c.value[0]  # more trials: a lower expected minimum
    # (3/6)^6 of resamples hold only pruned trials: about 31 of 2000
    lost = int(c.note.split(" of 2000")[0].split()[-1])
    assert 10 <= lost <= 60


def test_enqueued_and_failed_trials_are_no_draws():
    trials = study([0.5, 0.6]) + [Trial(2, "COMPLETE", 0.99, 60.0, enqueued=True),
                                  Trial(3, "FAIL", None, 500.0), Trial(4, "RUNNING", None, 9.0),
                                  Trial(5, "COMPLETE", math.nan, 60.0)]
    c = budget_curve(trials, "random", budgets=[1, 2])
    np.testing.assert_allclose(c.value, expected_best([0.5, 0.6], [1, 2]))
    assert c.n_trials == 2 and "enqueued" in c.note and "without a finite value" in c.note
    observed = budget_curve(trials, "tpe", budgets=[3])
    assert observed.value[0] == 0.99  # the best so far keeps the enqueued point


# --- the time axis ----------------------------------------------------------------------------
def test_time_axis_reindexes_the_trial_curve_by_mean_trial_time():
    values = [0.2, 0.9, 0.5, 0.4, 0.7]
    slow = study(values, [100.0, 300.0, 200.0, 200.0, 200.0])  # mean 200 s
    fast = study(values, [100.0] * 5, pruned=[0.0] * 0)
    budgets = [100.0, 200.0, 500.0, 800.0, 2000.0]
    a = budget_curve(slow, "random", budgets=budgets, axis=SECONDS)
    b = budget_curve(fast, "random", budgets=budgets, axis=SECONDS)
    assert math.isnan(a.value[0])  # 100 s is half a mean trial: no trial yet
    np.testing.assert_allclose(a.value[1:], expected_best(values, [1, 2.5, 4, 10]))
    np.testing.assert_allclose(b.value, expected_best(values, [1, 2, 5, 8, 20]))
    assert list(b.extrapolated) == [False, False, False, True, True]
    pair = order(a, b, "slow", "fast")
    assert not pair.crosses and set(pair.leader[1:]) == {"fast"}


def test_pruned_trials_make_the_time_budget_cheaper():
    values = [0.3, 0.8]
    pruned = study(values, [120.0, 120.0], pruned=[30.0, 30.0])  # mean 75 s per counted trial
    c = budget_curve(pruned, "random", budgets=[150.0, 300.0], axis=SECONDS)
    np.testing.assert_allclose(c.value, expected_best(values, [2, 4], pruned=2))


def test_budget_table_defaults_and_points():
    assert default_budgets(1) == [1] and default_budgets(8) == [1, 2, 4, 8]
    assert default_budgets(20) == [1, 2, 4, 8, 16, 20]
    table = budget_table({"sa": study([0.5, 0.7, 0.6]), "dynamic": study([0.6] * 5)}, "random")
    assert list(table) == ["sa", "dynamic"]
    for curve in table.values():
        assert list(curve.budgets) == [1, 2, 4, 5]
    rows = table["sa"].points()
    assert rows[0]["budget"] == 1 and rows[0]["value"] == pytest.approx(0.6)
    assert rows[-1]["extrapolated"] is True and rows[0]["extrapolated"] is False
    timed = budget_table({"a": study([0.5, 0.7], [60.0, 60.0]),
                          "b": study([0.5, 0.7, 0.6], [600.0] * 3)}, "random", axis=SECONDS)
    assert timed["a"].budgets[0] == 60.0 and timed["a"].budgets[-1] == 1800.0


# --- best so far (TPE, grid) ------------------------------------------------------------------
def test_tpe_and_grid_give_observed_best_so_far_in_trial_order():
    trials = [Trial(3, "COMPLETE", 0.9, 50.0), Trial(0, "PRUNED", None, 10.0),
              Trial(1, "COMPLETE", 0.4, 50.0), Trial(2, "FAIL", None, 99.0),
              Trial(4, "COMPLETE", 0.6, 50.0)]
    for sampler in ("tpe", "grid"):
        c = budget_curve(trials, sampler, budgets=[1, 2, 3, 4, 5])
        assert c.kind == OBSERVED and c.samples is None and np.all(np.isnan(c.low))
        np.testing.assert_array_equal(c.value[:4], [np.nan, 0.4, 0.9, 0.9])
        assert math.isnan(c.value[4])  # only 4 counted trials
    t = budget_curve(trials, "tpe", budgets=[10.0, 59.0, 60.0, 110.0, 160.0, 161.0], axis=SECONDS)
    np.testing.assert_array_equal(t.value, [np.nan, np.nan, 0.4, 0.9, 0.9, np.nan])
    low = budget_curve(trials, "tpe", "minimize", budgets=[2, 4])
    np.testing.assert_array_equal(low.value, [0.4, 0.4])
    np.testing.assert_array_equal(best_so_far([None, 3.0, 1.0, 2.0], [1, 2, 3, 4], "minimize"),
                                  [np.nan, 3.0, 1.0, 1.0])


# --- crossings --------------------------------------------------------------------------------
def test_planted_crossing_is_reported_at_the_right_budget():
    # conv: 0.8 every time. dynamic: E[max_n] = 1 - 0.4 (3/4)^n = 0.7, 0.775, 0.831, 0.873
    curves = budget_table({"conv": study([0.8] * 4), "dynamic": study([0.6, 0.6, 0.6, 1.0])},
                          "random", budgets=[1, 2, 3, 4])
    np.testing.assert_allclose(curves["dynamic"].value, [0.7, 0.775, 0.83125, 0.8734375])
    (pair,) = crossings(curves)
    assert pair.crosses and pair.changes == [3.0]
    assert pair.leader == ["conv", "conv", "dynamic", "dynamic"]
    assert pair.sentence.startswith("conv leads up to 2 trials, dynamic from 3 trials on")
    assert all(r is False for r in pair.resolved)  # four trials cannot tell these apart
    assert pair.sentence.endswith("not resolved at any budget")


def test_crossing_when_minimising_and_on_the_time_axis():
    # minimised: conv 0.2 always; dynamic 1 - E[max of 1 - v] = 0.3, 0.225, 0.169 ...
    curves = budget_table({"conv": study([0.2] * 4), "dynamic": study([0.4, 0.4, 0.4, 0.0])},
                          "random", "minimize", budgets=[1, 2, 3, 4])
    assert crossings(curves)[0].changes == [3.0]
    timed = budget_table({"conv": study([0.8] * 4, [100.0] * 4),
                          "dynamic": study([0.6, 0.6, 0.6, 1.0], [50.0] * 4)}, "random",
                         budgets=[100.0, 150.0, 200.0], axis=SECONDS)
    pair = order(timed["conv"], timed["dynamic"], "conv", "dynamic")  # dynamic: 2, 3, 4 trials
    assert pair.leader == ["conv", "dynamic", "dynamic"] and pair.changes == [150.0]
    assert "conv leads up to 1.67 min, dynamic from 2.5 min on" in pair.sentence


def test_dominated_pair_does_not_cross_and_is_resolved():
    rng = np.random.default_rng(0)
    curves = budget_table({"sa": study(list(0.9 + 0.01 * rng.random(12))),
                           "conv": study(list(0.5 + 0.01 * rng.random(12)))}, "random")
    pair = crossings(curves)[0]
    assert not pair.crosses and set(pair.leader) == {"sa"}
    assert all(pair.resolved) and not any(pair.overlap)
    assert pair.sentence == "sa leads at every budget (1-12 trials); resolved at every budget"


def test_three_strategies_give_every_pair_and_observed_has_no_band():
    names = {"a": [0.5, 0.6], "b": [0.7, 0.1], "c": [0.55, 0.55]}
    curves = budget_table({k: study(v) for k, v in names.items()}, "tpe", budgets=[1, 2])
    pairs = crossings(curves)
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    ab = pairs[0]
    assert ab.leader == ["b", "b"] and ab.resolved == [None, None]
    assert "no band" in ab.sentence
    ac = pairs[1]  # 0.5 < 0.55, then 0.6 > 0.55
    assert ac.changes == [2.0] and ac.sentence.startswith("c leads up to 1 trial, a from 2 trials")
    with pytest.raises(ValueError):
        order(curves["a"], budget_curve(study([0.5]), "tpe", budgets=[1]))


# --- tuning variance --------------------------------------------------------------------------
def test_tuning_variance_by_hand():
    best = {"sa": [0.81, 0.84, 0.79, 0.86, None], "conv": [0.8]}
    out = tuning_variance(best)
    sa = out["sa"]
    x = np.array([0.81, 0.84, 0.79, 0.86])
    assert sa.k == 4 and sa.mean == pytest.approx(x.mean())
    assert sa.std == pytest.approx(x.std(ddof=1))
    assert (sa.min, sa.max) == (0.79, 0.86)
    lo, hi = stats.t.interval(0.95, 3, loc=x.mean(), scale=x.std(ddof=1) / 2)
    assert (sa.ci_low, sa.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert "1 missing" in sa.note
    assert out["conv"].k == 1 and out["conv"].ci_low is None


# --- the sweep's budget check -----------------------------------------------------------------
def test_hours_budget_stops_at_planted_run_times():
    twenty = 1200.0  # each trial trains 20 minutes; the budget is one hour
    trials = [Trial(0, "COMPLETE", 0.5, twenty), Trial(1, "PRUNED", None, twenty),
              Trial(2, "FAIL", None, 5000.0), Trial(3, "WAITING")]
    s = budget_status(trials, {"hours": 1})
    assert not s.reached and s.start_more and s.seconds_done == 2400.0 and s.trials_done == 2
    # a worker runs the third trial: the others wait instead of starting a fourth
    running = trials + [Trial(4, "RUNNING", None, 100.0)]
    s = budget_status(running, {"hours": 1})
    assert not s.reached and not s.start_more and s.reason == RUNNING_FILL
    assert s.seconds_running == twenty
    s = budget_status(trials + [Trial(4, "COMPLETE", 0.6, twenty)], {"hours": 1})
    assert s.reached and s.reason == BUDGET_REACHED and not s.start_more
    # a running trial already past the typical time counts as its time so far
    s = budget_status(trials + [Trial(4, "RUNNING", None, 1100.0)], {"hours": 1.5})
    assert s.start_more and s.seconds_running == twenty
    s = budget_status(trials + [Trial(4, "RUNNING", None, 3000.0)], {"hours": 1.5})
    assert not s.start_more and s.seconds_running == 3000.0


def test_trials_budget_and_both_budgets():
    done = [Trial(i, "COMPLETE", 0.5, 60.0) for i in range(3)]
    assert budget_status(done, {"trials": 3}).reason == BUDGET_REACHED
    s = budget_status(done[:2] + [Trial(2, "RUNNING", None, 1.0)], {"trials": 3})
    assert s.reason == RUNNING_FILL and not s.start_more
    assert budget_status(done[:2], {"trials": 3}).start_more
    assert budget_status(done, {"trials": 10, "hours": 0.05}).reason == BUDGET_REACHED
    assert budget_status(done, {"trials": 3, "hours": 10}).reached
    assert budget_status([Trial(0, "COMPLETE", 0.5)], {"trials": 2}).start_more  # no time: fine
    for bad in ({}, {"epochs": 3}, {"hours": 0}, {"trials": -1}):
        with pytest.raises(ValueError):
            budget_status(done, bad)
    with pytest.raises(ValueError):  # an hours budget with no recorded time cannot be judged
        budget_status([Trial(0, "COMPLETE", 0.5)], {"hours": 1})
