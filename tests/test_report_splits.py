"""Data splits as blocks in `lesa-bench report` (issue 35, item 1), through the real command line
on planted stores: `data.split_seed` as a matrix axis keys cells by (split, seed), so runs of
different splits with one seed no longer collide; the comparison is the two-level one, equal to
a nested ANOVA written out here and to statsmodels' MixedLM (REML); each split's own verdicts
beside it; the variance table puts a planted split or seed variance in its own row and column;
`--compare AXIS` with a margin follows compare_blocks_all; a planned sequential design is
refused with splits."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from bench.cli import main
from bench.config import load_experiment
from bench.stats.blocks import TWO_LEVEL, compare_blocks_all
from bench.store import RunDir

SPLITS, SEEDS = [0, 1, 2, 3], [0, 1, 2]
ENV = {"torch": "2.x", "lightning": "2.x", "device": "cpu", "threads": 2}


def _experiment(tiny_experiment, matrix=None, **sections):
    return tiny_experiment(matrix=matrix or {"model.fusion": ["conv", "unary", "dynamic"],
                                             "data.split_seed": SPLITS, "seed": SEEDS},
                           **sections)


def _plant(path, results, acc) -> list:
    """acc(fusion, split, seed, run) -> test/acc1 as a fraction; every run done."""
    exp = load_experiment(path)
    for run in exp.runs:
        c = run.config
        rd = RunDir(results / exp.name / run.id)
        rd.create(c)
        rd.write_metrics({"test": {"test/acc1": acc(c["model"]["fusion"],
                                                    c["data"]["split_seed"], c["seed"], run)},
                          "costs": {"params": 1000}, "environment": ENV})
        rd.update_status(state="done", elapsed_s=1.0)
    return exp.runs


def _json(path, results, capsys, *extra) -> dict:
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), "--format", "json",
                 *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _cells(report) -> dict:
    return {c["strategy"]: c for c in report["cells"] if c["metric"] == "test/acc1"}


def _planted_values(rng):
    """Per (split, seed): a baseline with a large split-and-seed effect shared by every
    strategy (pairing removes it), and each strategy's own planted difference."""
    shared = {(s, r): 0.70 + rng.normal(0, 0.03) for s in SPLITS for r in SEEDS}
    u = {s: rng.normal(0, 0.01) for s in SPLITS}  # how dynamic's gain moves between splits
    e = {(s, r): rng.normal(0, 0.004) for s in SPLITS for r in SEEDS}
    return lambda fusion, s, r, run: {
        "conv": shared[(s, r)], "unary": shared[(s, r)] + 0.002 * (r - 1),
        "dynamic": shared[(s, r)] + 0.02 + u[s] + e[(s, r)]}[fusion]


def test_two_level_interval_equals_nested_anova_and_mixedlm(tiny_experiment, tmp_path, capsys):
    path, results = _experiment(tiny_experiment), tmp_path / "results"
    acc = _planted_values(np.random.default_rng(3))
    _plant(path, results, acc)
    report = _json(path, results, capsys)
    cells = _cells(report)
    # no collision: every (split, seed) is its own value
    assert cells["dynamic"]["n"] == 12 and len(set(map(tuple, cells["dynamic"]["seeds"]))) == 12
    c = cells["dynamic"]["comparison"]
    assert c["method"] == TWO_LEVEL and c["n_splits"] == 4 and c["df"] == 3
    # the nested ANOVA by hand: d_sr in points, split means, t at S - 1 df
    d = np.array([[100 * (acc("dynamic", s, r, None) - acc("conv", s, r, None)) for r in SEEDS]
                  for s in SPLITS])
    grand, means = d.mean(), d.mean(1)
    ms_between = len(SEEDS) * ((means - grand) ** 2).sum() / (len(SPLITS) - 1)
    ms_within = ((d - means[:, None]) ** 2).sum() / (len(SPLITS) * (len(SEEDS) - 1))
    se = math.sqrt(ms_between / d.size)
    half = stats.t.ppf(0.975, len(SPLITS) - 1) * se
    assert c["diff"] == pytest.approx(grand, rel=1e-9)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((grand - half, grand + half), rel=1e-9)
    assert c["p"] == pytest.approx(2 * stats.t.sf(abs(grand / se), 3), rel=1e-9)
    assert c["sd_within"] ** 2 == pytest.approx(ms_within, rel=1e-9)
    # REML mixed model d ~ 1 + (1 | split): the same estimate and standard error
    sm = pytest.importorskip("statsmodels.api")
    fit = sm.MixedLM(d.ravel(), np.ones((d.size, 1)), np.repeat(SPLITS, len(SEEDS))).fit(
        reml=True)
    assert c["sd_split"] > 0  # REML equals the moments only where they are not clamped
    assert c["diff"] == pytest.approx(fit.fe_params[0], rel=1e-6)
    assert se == pytest.approx(fit.bse_fe[0], rel=1e-4)
    # each split's own verdict: the paired t over that split's seeds (Holm over 2 rows there)
    for entry in cells["dynamic"]["per_split"]:
        s = entry["split"]
        ref = stats.ttest_rel(*(np.array([100 * acc(f, s, r, None) for r in SEEDS])
                                for f in ("dynamic", "conv")))
        assert entry["method"] == "paired t" and entry["p"] == pytest.approx(ref.pvalue)
    assert [e["split"] for e in cells["dynamic"]["per_split"]] == SPLITS
    # the cell's CI is over the split means too
    dyn = np.array([[100 * acc("dynamic", s, r, None) for r in SEEDS] for s in SPLITS]).mean(1)
    half_cell = stats.t.ppf(0.975, 3) * dyn.std(ddof=1) / 2
    assert cells["dynamic"]["ci_low"] == pytest.approx(dyn.mean() - half_cell, rel=1e-9)


def test_the_tables_show_both_levels_and_the_variance_table(tiny_experiment, tmp_path, capsys,
                                                           monkeypatch):
    path, results = _experiment(tiny_experiment), tmp_path / "results"
    _plant(path, results, _planted_values(np.random.default_rng(4)))
    monkeypatch.setenv("COLUMNS", "400")
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(n=12, 4 splits)" in out and "two-level (data.split_seed 0, 1, 2, 3 as blocks)" in out
    assert "verdicts across splits and on each split" in out
    assert "all 4 splits: Δ vs baseline" in out and "split 3: Δ [95% CI] verdict" in out
    assert "where the variance of a run comes from" in out
    assert "corr with baseline" in out


def test_planted_split_and_seed_variance_land_in_their_rows(tiny_experiment, tmp_path, capsys):
    """dynamic moves from split to split (sd 5 points) and barely between seeds; unary the
    reverse; the variance table says so row by row."""
    path, results = _experiment(tiny_experiment), tmp_path / "results"
    rng = np.random.default_rng(5)
    split_effect = {s: rng.normal(0, 0.05) for s in SPLITS}
    seed_effect = {(s, r): rng.normal(0, 0.05) for s in SPLITS for r in SEEDS}
    small = {(s, r): rng.normal(0, 0.001) for s in SPLITS for r in SEEDS}
    _plant(path, results, lambda f, s, r, run: {
        "conv": 0.6 + small[(s, r)],
        "dynamic": 0.7 + split_effect[s] + small[(s, r)],
        "unary": 0.65 + seed_effect[(s, r)]}[f])
    cells = _cells(_json(path, results, capsys))
    dyn, una = cells["dynamic"]["variance"], cells["unary"]["variance"]
    assert dyn["n_splits"] == 4 and dyn["n_runs"] == 12
    assert dyn["share_split"] > 0.95 and dyn["share_seed"] < 0.05
    assert una["share_seed"] > 0.8 and una["share_split"] < 0.2
    # the moments by hand: var_seed = MS_within, var_split = (MS_between - MS_within) / R
    y = np.array([[100 * (0.7 + split_effect[s] + small[(s, r)]) for r in SEEDS] for s in SPLITS])
    ms_w = ((y - y.mean(1, keepdims=True)) ** 2).sum() / (4 * 2)
    ms_b = 3 * ((y.mean(1) - y.mean()) ** 2).sum() / 3
    assert dyn["var_seed"] == pytest.approx(ms_w, rel=1e-9)
    assert dyn["var_split"] == pytest.approx((ms_b - ms_w) / 3, rel=1e-9)
    assert dyn["var_test"] is None  # no per-image records planted
    # what pairing buys: the correlation of paired runs with conv's, over all blocks
    a = [100 * (0.6 + small[(s, r)]) for s in SPLITS for r in SEEDS]
    b = y.ravel()
    assert cells["dynamic"]["pairing"]["corr"] == pytest.approx(np.corrcoef(b, a)[0, 1])


def test_compare_an_axis_with_a_margin_is_compare_blocks_all(tiny_experiment, tmp_path, capsys):
    path = _experiment(tiny_experiment, matrix={
        "model.fusion": ["conv", "dynamic"], "model.release": [False, True],
        "data.split_seed": [0, 1, 2], "seed": SEEDS}, analysis={"margin": {"acc1": 1.0}})
    results = tmp_path / "results"
    rng = np.random.default_rng(6)
    noise = {(s, r): rng.normal(0, 0.01) for s in range(3) for r in SEEDS}
    runs = _plant(path, results, lambda f, s, r, run: 0.6 + noise[(s, r)] + 0.004 * s
                  + 0.003 * run.config["model"]["release"] * (1 + r % 2))
    report = _json(path, results, capsys, "--compare", "model.release")
    got = {c["strategy"]: c["comparison"] for c in report["cells"]
           if c["metric"] == "test/acc1" and c["comparison"]}
    for fusion in ("conv", "dynamic"):
        rows = {release: {(run.config["data"]["split_seed"], run.config["seed"]):
                          100 * (0.6 + noise[(run.config["data"]["split_seed"],
                                              run.config["seed"])]
                                 + 0.004 * run.config["data"]["split_seed"]
                                 + 0.003 * release * (1 + run.config["seed"] % 2))
                          for run in runs if run.config["model"]["fusion"] == fusion
                          and run.config["model"]["release"] == release}
                for release in (False, True)}
        ref = compare_blocks_all({"T": rows[True], "F": rows[False]}, "F", margin=1.0)["T"]
        c = got[f"{fusion} model.release=True"]
        assert c["method"] == TWO_LEVEL and c["margin"] == 1.0
        for key in ("diff", "ci_low", "ci_high", "p", "p_equivalence", "p_equivalence_adjusted",
                    "p_adjusted", "verdict", "splits_needed"):
            assert c[key] == pytest.approx(getattr(ref, key)) if isinstance(c[key], float) \
                else c[key] == getattr(ref, key), key


def test_one_split_value_reads_as_the_seed_comparison(tiny_experiment, tmp_path, capsys):
    """--only data.split_seed=0: one split, the ordinary paired t over seeds, no split tables."""
    path, results = _experiment(tiny_experiment), tmp_path / "results"
    acc = _planted_values(np.random.default_rng(7))
    _plant(path, results, acc)
    cells = _cells(_json(path, results, capsys, "--only", "data.split_seed=0"))
    c = cells["dynamic"]["comparison"]
    ref = stats.ttest_rel([100 * acc("dynamic", 0, r, None) for r in SEEDS],
                          [100 * acc("conv", 0, r, None) for r in SEEDS])
    assert c["method"] == "paired t" and c["p"] == pytest.approx(ref.pvalue)
    assert cells["dynamic"]["per_split"] == [] and cells["dynamic"]["variance"] is None
    assert "covers seeds, not the choice of split" in c["note"]


def test_a_sequential_design_with_splits_is_refused(tiny_experiment, tmp_path, capsys):
    path = _experiment(tiny_experiment)  # the runs are the same with or without the plan
    results = tmp_path / "results"
    _plant(path, results, _planted_values(np.random.default_rng(8)))
    cfg = yaml.safe_load(path.read_text())
    cfg["analysis"] = {"looks": [2, 3], "margin": {"acc1": 1.0}}
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "analysis.looks: [2, 3]: a planned sequential design reads the seeds of one pool " \
           "on one data split" in out and "Traceback" not in out
    # one split of the same experiment: the plan reads its seeds as before
    assert main(["report", str(path), "--results", str(results), "--only",
                 "data.split_seed=1"]) == 0
    assert "planned looks [2, 3]" in " ".join(capsys.readouterr().out.split())
    cfg = yaml.safe_load(path.read_text())
    assert cfg["analysis"]["looks"] == [2, 3]
