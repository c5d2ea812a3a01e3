"""The statistics behind every report: per cell n, mean, std and the CI of the mean; per row
its seed-paired comparison with the baseline strategy (Holm across the rows compared with that
baseline in one column); the "best" rows; AI-TOD bucket box counts; the detection bootstrap
over test images; the share analysis (shares.py). Built once per report; tables, exports and plots only format it.

All numbers are in the units the tables show (test metrics in %), so `--min-effect` is too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.config import ConfigError, Experiment
from bench.data import DATASETS
from bench.report.image_bootstrap import ImageBootstrap, bootstrap_dataset, bucket_support
from bench.report.records import (COST_METRICS, SHARE_METRICS, Cell, RunRecord, build_cells,
                                  dataset_names, row_key, row_name, scale, sort_rows)
from bench.report.shares import ShareTables, analyse_shares
from bench.stats.compare import BoxSupport, CellStats, Comparison, best_rows, compare_all, \
    describe
from bench.tasks import TASKS
from lesa.names import unknown

DEFAULT_BASELINE = "conv"
ALPHA = 0.05


@dataclass
class Row:
    name: str
    cell: Cell             # the stored values (fractions for test metrics)
    stats: CellStats       # in display units
    comparison: Comparison | None = None  # against the baseline row; None for the baseline
    best: bool | None = None  # None where "best" is not defined (shares, costs)
    is_baseline: bool = False

    def values(self) -> dict:
        return self.stats.values


@dataclass
class Column:
    """One dataset's metric: a row per strategy (and other non-seed axes)."""
    dataset: str
    metric: str
    unit: str
    rows: dict[str, Row] = field(default_factory=dict)


@dataclass
class Analysis:
    experiment: str
    records: list[RunRecord]
    baseline: str | None
    baseline_note: str
    min_effect: float | None
    alpha: float
    columns: dict[tuple[str, str], Column]
    datasets: list[str]
    buckets: dict[str, dict[str, BoxSupport | None]]   # detection datasets only
    bootstrap: dict[str, ImageBootstrap]               # detection datasets only
    shares: dict[str, ShareTables | None] = field(default_factory=dict)  # share analysis

    def column(self, dataset: str, metric: str) -> Column:
        return self.columns[(dataset, metric)]

    def headline(self, dataset: str) -> tuple[str, ...]:
        """The metrics with a table of their own (the task's headline: acc1; map_50 and map)."""
        return TASKS[DATASETS[dataset].task].headline

    def bucket_metrics(self, dataset: str) -> dict[str, str]:
        """{"test/ap_vt": "ap_vt", ...}: the size buckets the dataset's task scores."""
        return {f"test/{name}": name for name in TASKS[DATASETS[dataset].task].buckets or {}}

    def bucket_range(self, dataset: str, name: str) -> tuple[float, float]:
        return TASKS[DATASETS[dataset].task].buckets[name]

    def task(self, dataset: str) -> str:
        return DATASETS[dataset].task


def all_metrics() -> dict[str, tuple[str, ...]]:
    """Per task, every metric the report reads: the headline and bucket metrics first."""
    return {task: tuple(dict.fromkeys(spec.headline + spec.bucket_metrics() + spec.metrics +
                                      SHARE_METRICS + COST_METRICS))
            for task, spec in TASKS.items()}


def strategies(records: list[RunRecord]) -> list[str]:
    """What --baseline can name: the strategies, and rows' first words where an axis brings
    settings with its strategy (`dynamic,release=True`)."""
    return sort_rows({row_name(row_key(r.run)) for r in records})


def choose_baseline(records: list[RunRecord], baseline: str | None) -> tuple[str | None, str]:
    """The baseline strategy, and a note where there is none. An explicit name that is not
    one of the experiment's strategies is an error naming the choices."""
    names = strategies(records)
    if baseline is not None:
        if baseline not in names:
            raise ConfigError(f"--baseline: {unknown('strategy', baseline, names)}")
        return baseline, ""
    if DEFAULT_BASELINE in names:
        return DEFAULT_BASELINE, ""
    return None, (f"no {DEFAULT_BASELINE} row in this experiment: no comparisons; choose a "
                  f"baseline with --baseline ({', '.join(names)})")


def _group(row: str) -> tuple[str, ...]:
    return tuple(row.split()[1:])  # the other axes' values: rows are compared within them


def _column(dataset: str, metric: str, cells: dict[str, Cell], baseline: str | None,
            min_effect: float | None, alpha: float) -> Column:
    k = scale(metric)
    unit = "%" if k == 100 or metric.startswith("shares/") else ""
    col = Column(dataset, metric, unit)
    for name in sort_rows(cells):
        cell = cells[name]
        col.rows[name] = Row(name, cell, describe({s: v * k for s, v in cell.by_seed.items()}))
    if not metric.startswith("test/"):
        return col  # shares and costs: no "better"
    values = {name: row.values() for name, row in col.rows.items()}
    best = best_rows(values, higher_is_better=True, alpha=alpha)
    for name, row in col.rows.items():
        row.best = name in best
    if baseline is None:
        return col
    groups: dict[tuple, list[str]] = {}
    for name in col.rows:
        groups.setdefault(_group(name), []).append(name)
    for extra, names in groups.items():
        base = " ".join([baseline, *extra])
        if base not in col.rows:
            continue
        col.rows[base].is_baseline = True
        found = compare_all({n: values[n] for n in names}, base, True, alpha, min_effect)
        for name, comparison in found.items():
            col.rows[name].comparison = comparison
    return col


def analyse(exp: Experiment, records: list[RunRecord], baseline: str | None = None,
            min_effect: float | None = None, alpha: float = ALPHA,
            image_bootstrap: bool = True) -> Analysis:
    chosen, note = choose_baseline(records, baseline)
    cells = build_cells(records, all_metrics())
    datasets = dataset_names(records)
    columns = {(d, m): _column(d, m, by_row, chosen, min_effect, alpha)
               for d in datasets for m, by_row in cells.get(d, {}).items()}
    buckets, boots = {}, {}
    shares = {d: analyse_shares([r for r in records if r.run.config["data"]["name"] == d],
                                alpha) for d in datasets}
    for d in datasets:
        if DATASETS[d].task != "detection":
            continue
        mine = [r for r in records if r.run.config["data"]["name"] == d]
        buckets[d] = bucket_support(mine, TASKS["detection"].buckets)
        if image_bootstrap:
            boots[d] = bootstrap_dataset(d, mine, lambda r: row_key(r.run), chosen,
                                         confidence=1 - alpha)
    return Analysis(exp.name, records, chosen, note, min_effect, alpha, columns, datasets,
                    buckets, boots, shares)
