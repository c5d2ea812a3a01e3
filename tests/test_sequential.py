"""bench.stats.sequential: spending functions, group-sequential bounds against published values
and an independent multivariate-normal computation, the decision code's error rates by
simulation on the very function the report calls, statelessness and the runner's helper, the
design summary; bench.config.analysis: the experiment file's analysis section. No torch.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.config.analysis import validate_analysis
from bench.config.schema import ConfigError
from bench.stats.compare import BETTER, EQUIVALENT, NOT_RESOLVED, WORSE, compare_all
from bench.stats.sequential import (Plan, bound_table, complete_looks, decide, design,
                                    naive_fwer, next_seeds, normal_bounds, simulate, spent,
                                    t_bounds, z_bounds)

ALPHA = 0.05


def mcse(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# --- spending and bounds ----------------------------------------------------------------------
def test_spending_functions_written_out():
    t = np.array([0.2, 0.5, 1.0])
    obf = 2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - ALPHA / 2) / np.sqrt(t))
    pocock = ALPHA * np.log(1 + (math.e - 1) * t)
    np.testing.assert_allclose(spent("obrien_fleming", t, ALPHA), obf, rtol=1e-10)
    np.testing.assert_allclose(spent("pocock", t, ALPHA), pocock, rtol=1e-10)
    assert spent("pocock", 1.0, ALPHA) == pytest.approx(ALPHA)
    with pytest.raises(ValueError, match="unknown spending"):
        spent("haybittle", t, ALPHA)


def test_obrien_fleming_bounds_match_published_values():
    # Lan-DeMets O'Brien-Fleming-like spending, 4 equally spaced looks, one-sided 0.025:
    # z = 4.333, 2.963, 2.359, 2.014 (Jennison and Turnbull 2000; gsDesign's sfLDOF)
    f = (0.25, 0.5, 0.75, 1.0)
    z = z_bounds(f, tuple(spent("obrien_fleming", f, 0.025)), two_sided=False)
    assert z == pytest.approx([4.333, 2.963, 2.359, 2.014], abs=1e-3)
    # one-sided 0.05: nominal p 0.00009 / 0.0055 / 0.022 / 0.043 (docs/statistics.md)
    z = z_bounds(f, tuple(spent("obrien_fleming", f, 0.05)), two_sided=False)
    assert stats.norm.sf(z) == pytest.approx([0.00009, 0.0055, 0.022, 0.043], rel=0.03)


@pytest.mark.parametrize("spending, two_sided", [("pocock", True), ("obrien_fleming", True),
                                                 ("pocock", False)])
def test_bounds_spend_exactly_by_multivariate_normal(spending, two_sided):
    """P(no crossing up to look k) from scipy's multivariate normal cdf with corr
    sqrt(t_j / t_k) equals 1 - spent(t_k), unequally spaced looks."""
    looks = (3, 5, 9, 12)
    t = np.array(looks) / 12
    spend = spent(spending, t, ALPHA)
    z = np.array(z_bounds(tuple(t), tuple(spend), two_sided))
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    for k in range(1, 5):
        law = stats.multivariate_normal(np.zeros(k), cov[:k, :k])
        low = -z[:k] if two_sided else np.full(k, -np.inf)
        inside = law.cdf(z[:k], lower_limit=low, rng=np.random.default_rng(0))
        assert 1 - inside == pytest.approx(spend[k - 1], abs=2e-5)


def test_one_look_is_the_plain_test_and_bounds_grow_with_the_level():
    plan = Plan((8,))
    assert normal_bounds(plan, 0.05) == pytest.approx([0.05])
    assert t_bounds(plan, 0.05, False) == pytest.approx([0.05])
    table_d, table_e = bound_table(Plan((3, 6, 9, 12), "pocock"), 4)
    assert table_d.shape == table_e.shape == (4, 4)
    assert np.all(np.diff(table_d, axis=0) <= 0) and np.all(np.diff(table_e, axis=0) <= 0)
    assert table_d[0, 0] == pytest.approx(normal_bounds(Plan((3, 6, 9, 12), "pocock"), 0.05)[0])


def test_t_bounds_follow_the_t_statistics():
    """The first look's bound is exact for a t-test; later ones are tighter than the normal
    theory with few seeds (their t statistics are less correlated) and equal it with many."""
    few, many = Plan((2, 3, 4, 5), "pocock"), Plan((50, 100, 200), "pocock")
    assert t_bounds(few, 0.05)[0] == pytest.approx(normal_bounds(few, 0.05)[0])
    assert np.all(t_bounds(few, 0.05)[1:] < 0.85 * normal_bounds(few, 0.05)[1:])
    np.testing.assert_allclose(t_bounds(many, 0.05), normal_bounds(many, 0.05), rtol=0.05)


def test_normal_bounds_on_t_tests_with_few_seeds_exceed_alpha():
    """Why the bounds are calibrated: normal-theory nominal p on t-tests at 2-5 seeds."""
    plan, n_sim = Plan((2, 3, 4, 5), "pocock"), 20000
    x = np.random.default_rng(3).standard_normal((n_sim, 5))
    crossed = {"normal": np.zeros(n_sim, bool), "t": np.zeros(n_sim, bool)}
    for k, n in enumerate(plan.looks):
        p = stats.ttest_1samp(x[:, :n], 0, axis=1).pvalue
        for name, bounds in (("normal", normal_bounds(plan, ALPHA)), ("t", t_bounds(plan, ALPHA))):
            crossed[name] |= p < bounds[k]
    assert crossed["normal"].mean() > ALPHA + 3 * mcse(ALPHA, n_sim)
    assert abs(crossed["t"].mean() - ALPHA) < 3 * mcse(ALPHA, n_sim)


# --- error rates of decide() by simulation ----------------------------------------------------
@pytest.mark.parametrize("plan, m", [
    (Plan((5, 10, 20), margin=1.0), 3),
    (Plan((2, 3, 4, 5), "pocock", futility=None), 2),
    (Plan((3, 6, 9, 12), "pocock", margin=0.5), 4),
])
def test_family_error_under_the_null(plan, m):
    r = simulate(plan, np.zeros(m), sd=1.0, n_sim=20000, seed=1)
    assert r["fwer"] <= ALPHA + 3 * mcse(ALPHA, r["n_sim"])
    assert r["fwer"] > 0.02  # the bounds are used, not vacuous


def test_false_equivalence_at_the_margin_and_mixed_effects():
    plan = Plan((3, 6, 9, 12), margin=1.0)
    at_margin = simulate(plan, [1.0, -1.0, 1.0], sd=0.8, n_sim=20000, seed=2)
    assert at_margin["false_equivalence"] <= ALPHA + 3 * mcse(ALPHA, 20000)
    assert at_margin["fwer"] <= ALPHA + 3 * mcse(ALPHA, 20000)
    assert at_margin["false_equivalence"] > 0.01
    mixed = simulate(Plan((3, 6, 9), "pocock", margin=1.0), [0.0, 1.0, 2.0, -0.5], sd=1.0,
                     n_sim=20000, seed=3)
    assert mixed["fwer"] <= ALPHA + 3 * mcse(ALPHA, 20000)
    assert mixed["power"] > 0.3 and mixed["equivalence"] > 0.05


def test_naive_re_testing_breaks_the_error_rate():
    plan = Plan((5, 10, 20))
    naive = naive_fwer(plan.looks, m=1, n_sim=20000, seed=4)
    planned = simulate(Plan((5, 10, 20), futility=None), [0.0], n_sim=20000, seed=4)
    assert naive["fwer"] > 0.08  # measured 0.12
    assert planned["fwer"] <= ALPHA + 3 * mcse(ALPHA, 20000) < naive["fwer"]
    assert naive_fwer((2, 3, 4, 5), m=1, n_sim=20000, seed=5)["fwer"] > 0.10


# --- what decide() says, and how the runner uses it -------------------------------------------
def noisy(rng, means, seeds, sd=1.0):
    return np.asarray(means, dtype=float)[:, None] + rng.normal(0, sd, (len(means), seeds))


def test_planted_results_stop_where_they_should():
    rng = np.random.default_rng(7)
    plan = Plan((4, 8, 12), "pocock", margin=1.0)
    d = noisy(rng, [6.0, -6.0, 0.0, 0.5], 12, sd=0.5)
    d[2] = rng.normal(0, 0.05, 12)  # no difference, tiny spread: equivalent at once
    rows = decide(plan, d).rows()
    assert [r.verdict for r in rows[:3]] == [BETTER, WORSE, EQUIVALENT]
    assert [r.reason for r in rows[:3]] == ["efficacy", "efficacy", "equivalence"]
    assert all(r.look == 0 and r.n == 4 and r.next_seeds == 0 for r in rows[:3])
    assert rows[0].p < rows[0].bound and rows[2].p_equivalence < rows[2].bound_equivalence
    # 0.5 with a small spread: better, and shown smaller than the margin
    assert rows[3].verdict == BETTER and rows[3].within_margin_shown and rows[3].look == 1
    assert [r.verdict for r in decide(plan, d, higher_is_better=False).rows()[:2]] == [
        WORSE, BETTER]


def test_within_margin_and_futility():
    plan = Plan((5, 10, 20), "pocock", margin=2.0)
    d = np.array([np.linspace(0.9, 1.1, 20) + np.tile([0.0, 0.01], 10)])  # ~1.0, tiny spread
    row = decide(plan, d).rows()[0]
    assert row.verdict == BETTER and row.within_margin and row.within_margin_shown
    # a flat first look with a large spread: no hope of a difference by the last look
    flat = np.array([[3.0, -3.0, 2.0, -2.0, 0.0] + [2.0, -2.0] * 7 + [0.0]])
    futile = decide(Plan((5, 10, 20)), flat).rows()[0]
    assert (futile.reason, futile.look, futile.verdict) == ("futility", 0, NOT_RESOLVED)
    assert futile.conditional_power < 0.1 and futile.next_seeds == 0
    going = decide(Plan((5, 10, 20), futility=None), flat).rows()[0]
    assert going.reason == "last look" and going.n == 20


def test_decisions_are_stateless_and_read_in_lockstep():
    rng = np.random.default_rng(9)
    plan = Plan((3, 6, 9), margin=1.0, futility=None)
    full = noisy(rng, [4.0, 0.3, 0.0], 9)
    a, b = decide(plan, full), decide(plan, full.copy())
    for name in ("verdict", "reason", "look", "p", "bound", "next_seeds"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # a comparison still open after look 1 lacks a seed of look 2: nothing is read there yet
    after = [r for r in a.rows() if r.look != 0]
    assert len(after) >= 2
    gap = full.copy()
    gap[after[0].index, 4] = np.nan
    rows = decide(plan, gap).rows()
    assert all(r.n == 3 for r in rows) and all(r.look in (0, None) for r in rows)
    assert next_seeds(decide(plan, gap)) == {r.index: 6 for r in after}
    assert next_seeds(a) == {}
    # 2-D input is one experiment
    assert [r.verdict for r in decide(plan, full).rows()] == [
        r.verdict for r in decide(plan, full[None]).rows(0)]


def test_runner_loop_resumed_ends_as_uninterrupted():
    """A runner trains the seeds next_seeds asks for, look by look; killed after each step and
    restarted from the stored values alone, it ends with the same decisions."""
    rng = np.random.default_rng(10)
    plan = Plan((3, 6, 9, 12), "pocock", margin=1.0)
    truth = noisy(rng, [3.0, 0.0, 0.8, -0.2], 12)

    def run(steps_before_kill):
        stored = np.full_like(truth, np.nan)
        for _ in range(20):
            if steps_before_kill == 0:  # killed: a new process reads the store
                stored = stored.copy()
            wanted = next_seeds(decide(plan, stored))
            if not wanted:
                return decide(plan, stored)
            for j, n in wanted.items():
                stored[j, :n] = truth[j, :n]
            steps_before_kill -= 1
        raise AssertionError("the loop did not end")

    once, resumed = run(100), run(1)
    np.testing.assert_array_equal(once.verdict, resumed.verdict)
    np.testing.assert_array_equal(once.look, resumed.look)
    stopped = once.rows()
    assert all(not r.open for r in stopped) and stopped[0].verdict == BETTER
    assert np.isnan(run(100).diff).sum() == 0
    assert complete_looks(plan, 7) == 2 and complete_looks(plan, 2) == 0


def test_one_look_decisions_equal_compare_all():
    """The sequential code with a single look is compare_all's fixed analysis."""
    rng = np.random.default_rng(12)
    plan = Plan((6,), margin=1.0)
    seen = set()
    for _ in range(12):
        d = noisy(rng, [0.0, 1.6, 0.4], 6, sd=0.7)
        base = rng.normal(70, 2, 6)
        rows = {"conv": dict(enumerate(base))} | {
            f"r{j}": dict(enumerate(base + d[j])) for j in range(3)}
        table = compare_all(rows, "conv", margin=1.0)
        got = [r.verdict for r in decide(plan, d).rows()]
        assert got == [table[f"r{j}"].verdict for j in range(3)]
        seen.update(got)
    assert {BETTER, EQUIVALENT, NOT_RESOLVED} <= seen


# --- design -----------------------------------------------------------------------------------
def test_design_summary():
    plan = Plan((5, 10, 20), margin=1.0)
    d = design(plan, sd=1.5, m=3, n_sim=20000)
    for key in ("looks", "bounds", "fwer", "power", "false_equivalence", "expected_seeds",
                "fixed_seeds"):
        assert key in d
    assert d["looks"] == [5, 10, 20] and len(d["bounds"]) == 3 and d["fixed_seeds"] == 20
    assert d["bounds"] == pytest.approx(list(bound_table(plan, 3)[0][2]))
    assert d["fwer"] <= ALPHA + 3 * d["fwer_mcse"] < d["naive_fwer"]
    assert d["false_equivalence"] <= ALPHA + 3 * d["false_equivalence_mcse"]
    assert 0.3 < d["power"] <= d["fixed_power"] + 3 * d["power_mcse"]
    assert 5 <= d["expected_seeds"]["null"] < 20 and d["expected_seeds"]["effect"] <= 20
    with pytest.raises(ValueError, match="effect"):
        design(Plan((5, 10)), sd=1.0, m=2)


def test_plan_refuses_bad_values():
    for kw, match in [(dict(looks=(5, 3)), "increasing"), (dict(looks=(1, 3)), ">= 2"),
                      (dict(looks=(5, 10), spending="haybittle"), "spending"),
                      (dict(looks=(5, 10), alpha=0.6), "alpha"),
                      (dict(looks=(5, 10), margin=-1.0), "margin")]:
        with pytest.raises(ValueError, match=match):
            Plan(**kw)


# --- the experiment file's analysis section ---------------------------------------------------
METRICS = ["acc1", "acc5"]


def test_analysis_defaults_and_normalisation():
    assert validate_analysis(None, METRICS) == {"margin": {}, "looks": None,
                                                "spending": "obrien_fleming", "alpha": 0.05,
                                                "futility": 0.1}
    out = validate_analysis({"margin": 1, "looks": [5, 10, 20], "spending": "pocock",
                             "alpha": 0.1, "futility": 0}, METRICS)
    assert out == {"margin": {"acc1": 1.0}, "looks": [5, 10, 20], "spending": "pocock",
                   "alpha": 0.1, "futility": None}
    plan = Plan.from_analysis(out, "acc1")
    assert plan.looks == (5, 10, 20) and plan.margin == 1.0 and plan.futility is None
    assert Plan.from_analysis(out, "acc5").margin is None
    detection = validate_analysis({"margin": {"map_50": 2.0, "map": 1.5}},
                                  ["map_50", "map", "map_75"])
    assert detection["margin"] == {"map_50": 2.0, "map": 1.5}


@pytest.mark.parametrize("raw, message", [
    ({"looks": [5, 3]}, "analysis.looks: [5, 3]: expected at least 2 strictly increasing"),
    ({"looks": [5]}, "analysis.looks: [5]"),
    ({"looks": [1, 4]}, "integers >= 2"),
    ({"looks": [2.5, 4]}, "analysis.looks"),
    ({"spending": "obrien-fleming"}, "analysis.spending: 'obrien-fleming': unknown spending "
                                     "function (did you mean 'obrien_fleming'?); choose from "
                                     "obrien_fleming, pocock"),
    ({"alpha": 0.5}, "analysis.alpha: 0.5: must be a number with 0 < alpha < 0.5"),
    ({"alpha": True}, "analysis.alpha: True"),
    ({"margin": {"acc_1": 1.0}}, "analysis.margin.acc_1: not a metric of this experiment (did "
                                 "you mean 'acc1'?); choose from acc1, acc5"),
    ({"margin": {"acc1": 0}}, "analysis.margin.acc1: 0: a margin must be a positive finite"),
    ({"margin": float("inf")}, "analysis.margin: inf"),
    ({"margin": "big"}, "analysis.margin: 'big': expected a number (for the headline metric acc1)"),
    ({"look": [5, 10]}, "analysis.look: not a key of analysis (did you mean 'looks'?); allowed: "
                        "margin, looks, spending, alpha, futility"),
    ({"futility": 1.5}, "analysis.futility: 1.5"),
    ([5, 10], "analysis: [5, 10]: expected a mapping"),
])
def test_analysis_errors_name_the_key_value_and_choices(raw, message):
    with pytest.raises(ConfigError) as err:
        validate_analysis(raw, METRICS)
    assert message in str(err.value)
