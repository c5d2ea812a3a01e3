"""Finer seeds (issue 35): `trainer.seeds: {init, order}` set apart what `seed` drives together.
The config key (null = the run's seed, out of the run id while null), the training (init seeds
the weights, order the data), and the report: cells keyed by the run's (init, order) where they
are matrix axes, comparisons paired by it, and the seed's variance split into initialisation,
data order and the residual (bench.stats.variance.seed_components), on planted stores."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml
from scipy import stats

from bench.cli import main
from bench.config import ConfigError, load_experiment, run_id
from bench.config.schema import resolve
from bench.report.analysis import analyse
from bench.report.interval_views import seed_table_view
from bench.report.records import SeedPair, cell_key, collect, is_row_axis, row_key
from bench.stats.blocks import TWO_LEVEL
from bench.stats.variance import seed_components
from bench.store import RunDir
from bench.tasks import run_seeds

INITS, ORDERS = [0, 1, 2, 3], [0, 1, 2, 3]
# the seed stays one value (tiny_experiment's matrix has seed: [0, 1]): with init and order
# both set, it would change nothing
AXES = {"seed": [0], "trainer.seeds.init": INITS, "trainer.seeds.order": ORDERS}
ENV = {"torch": "2.x", "lightning": "2.x", "device": "cpu", "threads": 2}


# --- the config key ----------------------------------------------------------------------------
def test_null_seeds_are_the_run_seed_and_stay_out_of_the_id():
    cfg = resolve({"seed": 7})
    assert cfg["trainer"]["seeds"] == {"init": None, "order": None}
    assert run_seeds(cfg) == (7, 7)
    stored = {k: v for k, v in cfg.items()}  # a config stored before the key existed
    stored["trainer"] = {k: v for k, v in cfg["trainer"].items() if k != "seeds"}
    assert run_id(stored) == run_id(cfg) and run_seeds(stored) == (7, 7)
    set_init = resolve({"seed": 7, "trainer": {"seeds": {"init": 3}}})
    assert run_seeds(set_init) == (3, 7) and run_id(set_init) != run_id(cfg)
    assert run_seeds(resolve({"seed": 7, "trainer": {"seeds": {"order": 0}}})) == (7, 0)


@pytest.mark.parametrize("seeds, message", [
    ({"init": -1}, "trainer.seeds.init: must be an integer >= 0 and <= 4294967295 (seeds are "
                   "unsigned 32-bit numbers), got -1"),
    ({"order": 2**32}, "trainer.seeds.order: must be an integer >= 0"),
    ({"init": 1.5}, "trainer.seeds.init: expected null or an integer, got 1.5"),
    ({"order": True}, "trainer.seeds.order: expected null or an integer, got True"),
    ({"inti": 1}, "trainer.seeds.inti: unknown key (did you mean 'init'?)"),
])
def test_bad_seeds_are_refused_naming_the_key(seeds, message):
    with pytest.raises(ConfigError) as err:
        resolve({"trainer": {"seeds": seeds}})
    assert message in str(err.value)


def test_seed_axes_expand_to_runs_that_pair_by_init_and_order(tiny_experiment):
    path = tiny_experiment(matrix={"model.fusion": ["conv", "dynamic"], **AXES})
    exp = load_experiment(path)
    assert len(exp.runs) == 32 and len({r.id for r in exp.runs}) == 32
    assert {row_key(r) for r in exp.runs} == {"conv", "dynamic"}  # the seed axes are no rows
    assert not is_row_axis("trainer.seeds.init", INITS)
    for run in exp.runs:
        i, o = run.axes["trainer.seeds.init"], run.axes["trainer.seeds.order"]
        assert cell_key(run) == SeedPair(i, o) == f"i{i}/o{o}"
    # a bundle of seed keys is a seed axis too; with splits the key is (split, (init, order))
    path = tiny_experiment(matrix={"pair": [{"trainer.seeds.init": 0, "trainer.seeds.order": 1},
                                            {"trainer.seeds.init": 1, "trainer.seeds.order": 0}],
                                   "data.split_seed": [0, 1], "seed": [0]})
    runs = load_experiment(path).runs
    assert {row_key(r) for r in runs} == {"conv", "dynamic"}
    runs = [r for r in runs if r.config["model"]["fusion"] == "conv"]
    assert sorted(cell_key(r) for r in runs) == [(0, SeedPair(0, 1)), (0, SeedPair(1, 0)),
                                                 (1, SeedPair(0, 1)), (1, SeedPair(1, 0))]
    # without the seed axes nothing changes: the key is the seed
    plain = load_experiment(tiny_experiment()).runs
    assert [cell_key(r) for r in plain] == [r.config["seed"] for r in plain]
    assert SeedPair(10, 0) > SeedPair(2, 5)  # sorted by (init, order), not as text


# --- the report, on planted stores --------------------------------------------------------------
def _plant(path, results, acc, skip=()) -> list:
    """acc(fusion, split, init, order) -> test/acc1 as a fraction; runs in `skip` (a set of
    (fusion, split, init, order)) stay pending."""
    exp = load_experiment(path)
    for run in exp.runs:
        c = run.config
        init, order = run_seeds(c)
        key = (c["model"]["fusion"], c["data"]["split_seed"], init, order)
        if key in skip:
            continue
        rd = RunDir(results / exp.name / run.id)
        rd.create(c)
        rd.write_metrics({"test": {"test/acc1": acc(*key)}, "costs": {"params": 1000},
                          "environment": ENV})
        rd.update_status(state="done", elapsed_s=1.0)
    return exp.runs


def _report(path, results, capsys, fmt="json", *extra):
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), "--format", fmt, *extra]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if fmt == "json" else out


def _cells(report) -> dict:
    return {c["strategy"]: c for c in report["cells"] if c["metric"] == "test/acc1"}


def _effects(rng, sd_init, sd_order, sd_rest):
    i = {k: rng.normal(0, sd_init) for k in INITS}
    o = {k: rng.normal(0, sd_order) for k in ORDERS}
    rest = {(f, s, a, b): rng.normal(0, sd_rest) for f in ("conv", "dynamic") for s in range(3)
            for a in INITS for b in ORDERS}
    return lambda f, s, a, b: (0.6 + 0.02 * (f == "dynamic") + 0.01 * s + i[a] + o[b]
                               + rest[(f, s, a, b)])


def test_planted_init_variance_lands_in_the_init_column(tiny_experiment, tmp_path, capsys):
    """init moves acc1 by sd 3 points, order by 0.5, the rest 0.2: the init share dominates;
    the numbers are seed_components' on the planted grid, the comparison the paired t over
    the 16 (init, order) pairs."""
    path = tiny_experiment(matrix={"model.fusion": ["conv", "dynamic"], **AXES})
    results = tmp_path / "results"
    acc = _effects(np.random.default_rng(1), 0.03, 0.005, 0.002)
    _plant(path, results, acc)
    report = _report(path, results, capsys)
    cells = _cells(report)
    dyn = cells["dynamic"]
    assert dyn["n"] == 16 and dyn["seeds"] == [f"i{a}/o{b}" for a in INITS for b in ORDERS]
    grid = {(a, b): 100 * acc("dynamic", 0, a, b) for a in INITS for b in ORDERS}
    ref = seed_components(grid)
    got = dyn["seed_components"]
    assert got["n_runs"] == 16 and (got["n_init"], got["n_order"]) == (4, 4)
    for key in ("var_init", "var_order", "var_residual", "share_init", "share_order"):
        assert got[key] == pytest.approx(getattr(ref, key), rel=1e-9), key
    assert got["share_init"] > 0.8 and got["share_order"] < 0.2 and got["dropped"] == []
    assert [e["split"] for e in got["per_split"]] == [None]
    # paired by (init, order): the paired t over the 16 pairs
    c = dyn["comparison"]
    t = stats.ttest_rel([grid[k] for k in sorted(grid)],
                        [100 * acc("conv", 0, *k) for k in sorted(grid)])
    assert c["method"] == "paired t" and c["n_pairs"] == 16 and c["p"] == pytest.approx(t.pvalue)
    assert dyn["variance"] is None  # one split: no split/seed/test table
    # CSV: one seeds/ line per cell keyed by (init, order)
    rows = list(csv.DictReader(io.StringIO(_report(path, results, capsys, "csv"))))
    line = next(r for r in rows if r["metric"] == "seeds/test/acc1" and r["strategy"] == "dynamic")
    assert line["n"] == "16" and json.loads(line["note"])["share_init"] == pytest.approx(
        ref.share_init)
    # the table (bench/report/interval_views.py)
    exp = load_experiment(path)
    table = seed_table_view(analyse(exp, collect(exp, exp.runs, results)), "digits",
                            "test/acc1")
    assert table.title.endswith("the seed's variance, initialisation vs data order")
    row = dict(zip(table.header, next(r for r in table.rows if r[0] == "dynamic")))
    assert row["runs (inits x orders)"] == "16 (4 x 4)"
    assert row["init share (sd)"] == f"{100 * ref.share_init:.0f}% (sd {ref.var_init ** .5:.2f})"
    assert "residual = their interaction" in table.notes[0]
    # and the rendered report shows it (bench/report/views.py)
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), "--format", "md"]) == 0
    assert "the seed's variance, initialisation vs data order" in capsys.readouterr().out


def test_with_splits_the_pooled_components_are_the_mean_of_each_splits(tiny_experiment,
                                                                       tmp_path, capsys):
    """(split, (init, order)) blocks: the comparison is two-level over 3 splits, the seed table
    pools each split's moment estimates (unclamped, then clamped); a missing run drops its
    init (or order) on that split only, and the note says so."""
    inits, orders = [0, 1, 2], [0, 1, 2]
    path = tiny_experiment(matrix={
        "model.fusion": ["conv", "dynamic"], "data.split_seed": [0, 1, 2], "seed": [0],
        "trainer.seeds.init": inits, "trainer.seeds.order": orders})
    results = tmp_path / "results"
    acc = _effects(np.random.default_rng(2), 0.02, 0.01, 0.003)
    _plant(path, results, acc, skip={("dynamic", 1, 2, 0)})
    cells = _cells(_report(path, results, capsys))
    dyn = cells["dynamic"]
    assert dyn["n"] == 26 and dyn["comparison"]["method"] == TWO_LEVEL
    assert dyn["comparison"]["n_splits"] == 3 and dyn["variance"]["n_splits"] == 3
    got = dyn["seed_components"]
    raws = []
    for s in range(3):
        kept = [a for a in inits if not (s == 1 and a == 2)]  # the hole drops init 2 there
        y = np.array([[100 * acc("dynamic", s, a, b) for b in orders] for a in kept])
        g, r, c = y.mean(), y.mean(1), y.mean(0)
        ms_r = 3 * ((r - g) ** 2).sum() / (len(kept) - 1)
        ms_c = len(kept) * ((c - g) ** 2).sum() / 2
        ms_e = ((y - r[:, None] - c[None, :] + g) ** 2).sum() / ((len(kept) - 1) * 2)
        raws.append(((ms_r - ms_e) / 3, (ms_c - ms_e) / len(kept), ms_e))
        entry = got["per_split"][s]
        assert entry["split"] == s and entry["var_residual"] == pytest.approx(ms_e, rel=1e-9)
    v_init, v_order, v_res = np.mean(raws, axis=0)
    assert got["var_init"] == pytest.approx(max(0, v_init), rel=1e-9)
    assert got["var_order"] == pytest.approx(max(0, v_order), rel=1e-9)
    assert got["var_residual"] == pytest.approx(v_res, rel=1e-9)
    assert got["n_runs"] == 24 and got["per_split"][1]["dropped"] == [["init", 2]]
    assert got["note"] == "split 1: to complete the grid, left out init 2"
    exp = load_experiment(path)
    table = seed_table_view(analyse(exp, collect(exp, exp.runs, results)), "digits",
                            "test/acc1")
    row = dict(zip(table.header, next(r for r in table.rows if r[0] == "dynamic")))
    assert row["runs (inits x orders, splits)"] == "24 (3 x 3, 3)"
    assert "dynamic: split 1: to complete the grid, left out init 2" in table.notes


def test_seed_split_is_seed_components_on_one_split_and_says_which_splits_pool():
    from bench.report.interval_views import _units
    from bench.report.splits import seed_split

    rng = np.random.default_rng(3)
    grid = {(a, b): float(rng.normal()) for a in range(3) for b in range(4)}
    one = seed_split({SeedPair(a, b): v for (a, b), v in grid.items()})
    assert one.pooled == seed_components(grid) and one.n_runs == 12
    assert seed_split({0: 1.0, 1: 2.0}) is None  # plain seeds: nothing to split
    # split 1 has a single init: no grid there, the pooled figures are split 0's alone
    cells = {(0, SeedPair(a, b)): v for (a, b), v in grid.items()}
    cells |= {(1, SeedPair(0, b)): 1.0 for b in range(4)}
    two = seed_split(cells)
    assert two.pooled.var_residual == pytest.approx(seed_components(grid).var_residual)
    assert two.pooled.note == ("split 1: needs a complete grid of at least 2 inits x 2 orders; "
                               "negative estimate(s) clamped at 0: init, order; pooled over the "
                               "1 of 2 splits with a grid")
    assert two.per_split[0].clamped == two.pooled.clamped == ["init", "order"]  # noise only
    assert _units("digits", list(cells)) == \
        "digits: 16 (split, (init, order)) blocks of 2 splits"
    assert _units("digits", [SeedPair(0, 1)]) == "digits: 1 seed pairs (init, order)"
    assert _units("digits", [0, 1]) == "digits: 2 seeds"


def test_without_seed_axes_nothing_is_added(tiny_experiment, tmp_path, capsys):
    path, results = tiny_experiment(), tmp_path / "results"
    _plant(path, results, lambda f, s, a, b: 0.5 + 0.01 * a + 0.02 * (f == "dynamic"))
    report = _report(path, results, capsys)
    assert all("seed_components" not in c for c in report["cells"])
    exp = load_experiment(path)
    assert seed_table_view(analyse(exp, collect(exp, exp.runs, results)), "digits",
                           "test/acc1") is None
    # seed and the order as axes: the init follows the seed, a crossed seed x order grid
    path = tiny_experiment(matrix={"model.fusion": ["conv", "dynamic"], "seed": [0, 1],
                                   "trainer.seeds.order": [5, 6]})
    _plant(path, results, lambda f, s, a, b: 0.5 + 0.01 * a + 0.001 * b)
    got = _cells(_report(path, results, capsys))["conv"]
    assert got["seeds"] == ["i0/o5", "i0/o6", "i1/o5", "i1/o6"]
    assert got["seed_components"]["share_init"] is not None


# --- training: init seeds the weights, order the data ------------------------------------------
class _Seen(Exception):
    pass


def test_init_seeds_the_weights_and_order_the_batches(tiny_experiment, tmp_path):
    """Real runs (train_run, stopped at the first training batch): same init, other order ->
    bit-identical weights, other batch; same order, other init -> same batch, other weights."""
    import lightning as L
    import torch

    from bench.train.trainer import train_run

    class First(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.batch = [t.clone() for t in batch]
            self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            raise _Seen

    path = tiny_experiment(data={"augment": True}, matrix={
        "model.fusion": ["dynamic"], "seed": [0], "trainer.seeds.init": [0, 1],
        "trainer.seeds.order": [0, 1]})
    seen = {}
    for run in load_experiment(path).runs:
        pair = run_seeds(run.config)
        if pair == (1, 1):
            continue
        rd = RunDir(tmp_path / "results" / run.id)
        rd.create(run.config)
        seen[pair] = First()
        with pytest.raises(_Seen):
            train_run(run, rd, extra_callbacks=[seen[pair]])

    def same_weights(a, b):
        return all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)

    def same_batch(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.batch, b.batch))

    base, other_order, other_init = seen[(0, 0)], seen[(0, 1)], seen[(1, 0)]
    assert same_weights(base, other_order) and not same_batch(base, other_order)
    assert same_batch(base, other_init) and not same_weights(base, other_init)
