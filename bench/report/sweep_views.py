"""`report --sweep`: what the studies found and whether the ranking depends on the tuning
budget. Per group of studies (a dataset, and any other matrix axis: strategies are compared
within it) and per strategy: the expected best validation value after n trials and after T
hours of training with a bootstrap band (random sampler), or the observed best so far (other
samplers); where two strategies' curves cross; the spread of the best value over repeated
studies (`sweep --repeat K`). The statistics are bench/stats/budget.py; this module only
arranges them. The studies come in as `SweepStudy` records (bench/sweep/summary.py reads them
from the Optuna storage), so nothing here touches Optuna.

Values are in the table's units: validation accuracy and AP (fractions) in %.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from bench.report.records import short, sort_rows
from bench.report.views import TextTable
from bench.stats.budget import (EXPECTED, IID_SAMPLERS, OBSERVED, SECONDS, TRIALS, BudgetCurve,
                                PairOrder, Trial, TuningSpread, budget_curve, crossings,
                                default_budgets, fmt_budget, tuning_variance)

FINE_POINTS = 40  # budgets of the time axis's curves in plots and exports (geometric)
MIXED = "mixed"  # the sampler of a study whose trials came from more than one


@dataclass
class SweepStudy:
    """One Optuna study as the report sees it."""
    name: str                  # <experiment>/<fusion>/<dataset>[/<axis>=<value>][/repeat=<r>]
    short: str                 # the name without the experiment
    strategy: str
    group: str                 # dataset and other axes: strategies are compared within it
    repeat: int
    metric: str
    direction: str
    budget: dict               # {"trials": N} and/or {"hours": H}
    sampler: str               # the sampler that drew its trials (MIXED: more than one)
    sampler_seed: int | None = None
    trials: list[Trial] = field(default_factory=list)  # every trial but discarded ones
    started: bool = True
    counts: dict = field(default_factory=dict)  # complete, pruned, failed, running, killed
    best_number: int | None = None
    best_value: float | None = None  # the objective's units (fractions)
    best_params: dict | None = None
    best_run: str | None = None

    @property
    def counted(self) -> list[Trial]:
        return [t for t in self.trials if t.kind in ("COMPLETE", "PRUNED")]

    @property
    def seconds(self) -> float:
        return float(sum(t.seconds or 0.0 for t in self.counted))

    @property
    def at_budget(self) -> bool:
        b = self.budget
        return bool(("trials" in b and len(self.counted) >= b["trials"])
                    or ("hours" in b and self.seconds >= b["hours"] * 3600.0))


@dataclass
class GroupView:
    """The strategies of one group: their curves on both axes, crossings, tuning variance."""
    group: str
    metric: str
    direction: str
    unit: str
    strategies: list[str]
    kinds: dict[str, str]                       # strategy -> EXPECTED / OBSERVED
    spent: dict[str, tuple[int, float]]         # strategy -> counted trials, their seconds
    tables: dict[str, dict[str, BudgetCurve]]   # axis -> strategy -> curve at table budgets
    curves: dict[str, dict[str, BudgetCurve]]   # axis -> strategy -> curve on a fine grid
    orders: dict[str, list[PairOrder]]          # axis -> every pair, on the fine grid
    notes: dict[str, list[str]]                 # axis -> notes
    repeats: dict[str, list[float | None]]      # strategy -> each study's best (table units)
    variance: dict[str, TuningSpread]
    predicted: dict[str, tuple[float, float, int]]  # strategy -> E[best at N], spread, N


@dataclass
class SweepView:
    experiment: str
    storage: str
    studies: list[SweepStudy]
    groups: list[GroupView]
    confidence: float = 0.95
    tuned: object | None = None  # bench/report/tuned.py's TunedView, when the runs exist


def table_scale(metric: str) -> tuple[float, str]:
    """Accuracy and AP are fractions, shown in %; anything else as it is."""
    return (100.0, "%") if short(metric).startswith(("acc", "map", "ap")) else (1.0, "")


def _scaled(trials: list[Trial], k: float) -> list[Trial]:
    return [replace(t, value=None if t.value is None else t.value * k) for t in trials]


def _pool(studies: list[SweepStudy], k: float) -> tuple[list[Trial], str, list[str]]:
    """The draws of one strategy: with the random sampler the trials of every repeat (each an
    independent draw from the same space), renumbered in (repeat, trial) order; with any other
    sampler the first repeat's trials in their order (one search)."""
    studies = sorted(studies, key=lambda s: s.repeat)
    samplers = {s.sampler for s in studies}
    sampler = samplers.pop() if len(samplers) == 1 else MIXED
    notes = []
    if sampler in IID_SAMPLERS:
        trials = [t for s in studies for t in sorted(s.trials, key=lambda t: t.number)]
        if len(studies) > 1:
            notes.append(f"pooled over {len(studies)} repeated studies")
    else:
        trials = studies[0].trials
        if len(studies) > 1:
            notes.append(f"repeat {studies[0].repeat} of {len(studies)} (one search)")
        if sampler == MIXED:
            notes.append("trials from more than one sampler: not i.i.d. draws")
    return [replace(t, number=i) for i, t in enumerate(_scaled(trials, k))], sampler, notes


def _counted(pool: list[Trial]) -> list[Trial]:
    return [t for t in pool if t.kind in ("COMPLETE", "PRUNED")]


def _grids(axis: str, pools: dict[str, list[Trial]]) -> tuple[list[float], list[float]] | None:
    """(the table's budgets, a fine grid for plots and crossings) on one axis, the same for
    every strategy: 1, 2, 4, ... N and 1..N trials; on the time axis doublings of the fastest
    mean trial up to the largest total, and a geometric grid over that span. None: no times."""
    counted = [_counted(p) for p in pools.values()]
    if axis == TRIALS:
        top = max([len(c) for c in counted] + [1])
        return default_budgets(top), list(range(1, top + 1))
    secs = [np.array([t.seconds for t in c if t.seconds is not None]) for c in counted]
    secs = [x for x in secs if len(x) and x.sum() > 0]
    if not secs:
        return None
    low, high = min(x.mean() for x in secs), max(x.sum() for x in secs)
    fine = np.geomspace(low, high, FINE_POINTS).tolist() if high > low * (1 + 1e-9) else [low]
    return default_budgets(high, low), fine


def analyse_group(group: str, studies: list[SweepStudy], confidence: float = 0.95,
                  seed: int = 0) -> GroupView:
    first = studies[0]
    k, unit = table_scale(first.metric)
    by_strategy: dict[str, list[SweepStudy]] = {}
    for s in studies:
        by_strategy.setdefault(s.strategy, []).append(s)
    names = sort_rows(by_strategy)
    pools, samplers, pool_notes = {}, {}, {}
    for name in names:
        pools[name], samplers[name], pool_notes[name] = _pool(by_strategy[name], k)
    kinds = {n: EXPECTED if samplers[n] in IID_SAMPLERS else OBSERVED for n in names}
    spent = {n: (len(_counted(pools[n])), sum(t.seconds or 0.0 for t in _counted(pools[n])))
             for n in names}
    tables, curves, orders, notes = {}, {}, {}, {}
    for axis in (TRIALS, SECONDS):
        notes[axis] = []
        grids = _grids(axis, pools)
        if grids is None:
            notes[axis].append("no trial records its training time: no time axis")
            continue
        try:
            for target, budgets in ((tables, grids[0]), (curves, grids[1])):
                target[axis] = {n: budget_curve(pools[n], samplers[n], first.direction,
                                                budgets, axis, confidence=confidence,
                                                seed=seed) for n in names}
        except ValueError as err:  # a study without times: leave the axis out, say why
            curves.pop(axis, None)
            tables.pop(axis, None)
            notes[axis].append(f"no {axis} axis: {err}")
            continue
        orders[axis] = crossings(curves[axis])
        for n in names:
            why = "; ".join(dict.fromkeys(filter(None, pool_notes[n] + curves[axis][n].note
                                                 .split("; "))))
            if why:
                notes[axis].append(f"{n}: {why}")
    repeats = {n: [None if s.best_value is None else s.best_value * k
                   for s in sorted(by_strategy[n], key=lambda s: s.repeat)] for n in names}
    many = {n: v for n, v in repeats.items() if len(v) > 1}
    predicted = {}
    for n in many:
        size = max(len(s.counted) for s in by_strategy[n])
        if kinds[n] == EXPECTED and size:
            c = budget_curve(pools[n], samplers[n], first.direction, [size], n_boot=1)
            predicted[n] = (float(c.value[0]), float(c.spread[0]), size)
    return GroupView(group, first.metric, first.direction, unit, names, kinds, spent, tables,
                     curves, orders, notes, repeats,
                     tuning_variance(many, confidence) if many else {}, predicted)


def analyse_sweep(experiment: str, storage: str, studies: list[SweepStudy],
                  confidence: float = 0.95, tuned=None) -> SweepView:
    groups: dict[str, list[SweepStudy]] = {}
    for s in studies:
        if s.trials:
            groups.setdefault(s.group, []).append(s)
    return SweepView(experiment, storage, studies,
                     [analyse_group(g, ss, confidence) for g, ss in groups.items()],
                     confidence, tuned)


# --- text tables ------------------------------------------------------------------------------
def budget_text(budget: dict, study: SweepStudy | None = None) -> tuple[str, str]:
    """(trials, hours) cells of the study table: '3/8', '0.21/2' (done/budget)."""
    n = len(study.counted) if study else 0
    hours = study.seconds / 3600 if study else 0.0
    trials = f"{n}/{budget['trials']}" if "trials" in budget else str(n)
    spent = f"{hours:.3g}/{budget['hours']:g}" if "hours" in budget else f"{hours:.3g}"
    return trials, spent


def study_table(studies: list[SweepStudy], title: str) -> TextTable:
    """Per study: trials of the budget, counts, training hours used, best value."""
    t = TextTable(title, ["study", "trials", "complete", "pruned", "failed", "hours", "best",
                          "sampler seed"])
    for s in studies:
        if not s.started:
            t.rows.append([s.short, "-", "", "", "", "", "not started", ""])
            t.best.append(False)
            continue
        c = s.counts
        trials, hours = budget_text(s.budget, s)
        if c.get("running"):
            trials += f" +{c['running']} running"
        failed = str(c.get("failed", 0))
        if c.get("killed"):
            failed += f" ({c['killed']} interrupted, re-queued)"
        k, unit = table_scale(s.metric)
        t.rows.append([s.short, trials, str(c.get("complete", 0)), str(c.get("pruned", 0)),
                       failed, hours, "-" if s.best_value is None else
                       _num(s.best_value * k, unit) + unit, "" if s.sampler_seed is None
                       else str(s.sampler_seed)])
        t.best.append(False)
    t.notes.append("trials: complete + pruned of the budget; hours: their runs' training time "
                   "(status.json elapsed_s), what an hours budget counts; best: the best "
                   "trial's validation value")
    return t


def _num(x: float, unit: str) -> str:
    return "-" if x is None or not np.isfinite(x) else (f"{x:.2f}" if unit == "%" else f"{x:.4g}")


def curve_table(g: GroupView, axis: str, confidence: float = 0.95) -> TextTable | None:
    if axis not in g.tables:
        return None
    curves = g.tables[axis]
    budgets = next(iter(curves.values())).budgets
    expected = all(g.kinds[n] == EXPECTED for n in g.strategies)
    what = ("expected best" if expected else "observed best so far" if not any(
        g.kinds[n] == EXPECTED for n in g.strategies) else "best (expected or observed)")
    per = "after n trials" if axis == TRIALS else "after T hours of training"
    band = f" [{confidence:.0%} bootstrap band]" if expected else ""
    unit = f" ({g.unit})" if g.unit else ""
    t = TextTable(f"{g.group}: {what} {short(g.metric)}{unit} {per}{band}",
                  ["strategy", "trials" if axis == TRIALS else "hours", "kind",
                   *[fmt_budget(b, axis) for b in budgets]])
    beyond = False
    for n in g.strategies:
        c = curves[n]
        count, seconds = g.spent[n]
        spent = str(count) if axis == TRIALS else f"{seconds / 3600:.3g}"
        cells = []
        for j in range(len(budgets)):
            text = _num(c.value[j], g.unit)
            if c.kind == EXPECTED and np.isfinite(c.value[j]) and np.isfinite(c.low[j]):
                text += f" [{_num(c.low[j], g.unit)}, {_num(c.high[j], g.unit)}]"
            if c.extrapolated[j] and np.isfinite(c.value[j]):
                text += "*"
                beyond = True
            cells.append(text)
        t.rows.append([n, spent, c.kind, *cells])
        t.best.append(False)
    if beyond:
        t.notes.append("*: beyond the trials run; the expected curve resamples the same trials "
                       "and levels off at the best found")
    if axis == SECONDS:
        t.notes.append("T buys T / (mean trial time) trials of that strategy: a slower strategy "
                       "gets fewer; empty below one mean trial")
    t.notes += [f"{o.a} vs {o.b}: {o.sentence}" for o in g.orders.get(axis, [])]
    t.notes += g.notes.get(axis, [])
    return t


def variance_table(g: GroupView) -> TextTable | None:
    if not g.variance:
        return None
    unit = f" ({g.unit})" if g.unit else ""
    t = TextTable(f"{g.group}: tuning variance, the best {short(g.metric)}{unit} of each "
                  f"repeated study", ["strategy", "K", "best per repeat", "mean ± std",
                                      "[min, max]", "95% CI of mean",
                                      "one study predicts (E[best] ± spread at N)"])
    for n, v in g.variance.items():
        values = ", ".join(_num(x, g.unit) for x in g.repeats[n])
        pred = g.predicted.get(n)
        t.rows.append([n, str(v.k), values,
                       "-" if v.mean is None else f"{_num(v.mean, g.unit)} ± {_num(v.std, g.unit)}",
                       f"[{_num(v.min, g.unit)}, {_num(v.max, g.unit)}]",
                       "-" if v.ci_low is None else
                       f"[{_num(v.ci_low, g.unit)}, {_num(v.ci_high, g.unit)}]",
                       "-" if pred is None else
                       f"{_num(pred[0], g.unit)} ± {_num(pred[1], g.unit)} (N={pred[2]})"])
        t.best.append(False)
    t.notes.append("a difference between strategies smaller than this spread can come from the "
                   "tuning alone; the prediction is the expected best after N random trials and "
                   "the std of one study's best, from the pooled trials")
    return t


def sweep_tables(view: SweepView) -> list[TextTable]:
    """Every table of the sweep report but the study table, in order."""
    out = []
    for g in view.groups:
        mine = [t for t in (curve_table(g, TRIALS, view.confidence),
                            curve_table(g, SECONDS, view.confidence), variance_table(g)) if t]
        single = [n for n in g.strategies if n not in g.variance]
        if single and mine:
            mine[-1].notes.append(f"one study for {', '.join(single)}: `sweep --repeat K` runs K "
                                  f"independent studies per strategy and shows their spread")
        out += mine
    if view.tuned is not None:
        from bench.report.tuned import tuned_tables

        out += tuned_tables(view.tuned)
    return out
