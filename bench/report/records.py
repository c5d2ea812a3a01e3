"""Reading the results store for the reports: one record per run, the runs that cannot be
trusted (flagged), and cells that aggregate a metric over seeds.

Cells aggregate seeds ({seed: value}, for the seed-paired statistics in analysis.py). A cell
whose runs are not all done says so (running / failed / missing); a missing value is never
shown as 0. No torch here.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import Experiment, Run, fusion_names, run_id
from bench.data import DATASETS
from bench.environment import NOT_RECORDED, environment_label
from bench.store import RunDir, RunState, experiment_dir

# runs whose results cannot be trusted: flagged in every report, never in a mean
FLAGGED = {
    "stale": "its stored config.yaml no longer hashes to its id (edited or damaged)",
    "unreadable": "marked done, but its metrics.json is missing or unreadable",
}
SHARE_METRICS = ("shares/unary", "shares/binary")
COST_METRICS = ("costs/params", "costs/gflops", "costs/train_images_per_s")


@dataclass
class RunRecord:
    run: Run
    state: str
    status: dict
    metrics: dict | None
    stale: bool = False  # stored config no longer hashes to the folder's id
    folder: Path | None = None


@dataclass
class Cell:
    by_seed: dict = field(default_factory=dict)  # seed -> value
    states: dict[str, int] = field(default_factory=dict)

    @property
    def values(self) -> list[float]:
        return list(self.by_seed.values())

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else (0.0 if self.values else None)

    def incomplete(self) -> str:
        parts = [f"{n} {s}" for s, n in sorted(self.states.items()) if s != RunState.DONE]
        return ", ".join(parts)


def collect(exp: Experiment, runs: list[Run], results: Path) -> list[RunRecord]:
    root = experiment_dir(results, exp.name)
    records = []
    for run in runs:
        rd = RunDir(root / run.id)
        status = rd.status()
        stale = rd.path.is_dir() and not _config_matches(rd, run.id)
        state = status.get("state", RunState.PENDING)
        if state == RunState.RUNNING and not rd.locked_by_other():
            state = RunState.INTERRUPTED  # its process died without saying so
        metrics = None if stale else rd.metrics()
        if stale:
            state = "stale"
        elif state == RunState.DONE and not isinstance((metrics or {}).get("test"), dict):
            state, metrics = "unreadable", None
        records.append(RunRecord(run, state, status, metrics, stale, rd.path))
    return records


def _config_matches(rd: RunDir, expected_id: str) -> bool:
    """Whether the run folder's stored config still hashes to its id (False when unreadable)."""
    stored = rd.config()
    try:
        return isinstance(stored, dict) and run_id(stored) == expected_id
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def flagged(records: list[RunRecord]) -> list[RunRecord]:
    return [r for r in records if r.state in FLAGGED]


def flag_lines(records: list[RunRecord]) -> list[str]:
    """One line per run left out of the means because its results cannot be trusted."""
    lines = []
    for r in flagged(records):
        lines.append(f"{r.run.id}: {FLAGGED[r.state]}; left out of every mean. Delete "
                     f"{r.folder} to train it again")
    return lines


def environments(records: list[RunRecord]) -> dict[str, list[str]]:
    """Environment label -> ids of the finished runs in it."""
    found: dict[str, list[str]] = {}
    for r in records:
        if r.state == RunState.DONE:
            env = (r.metrics or {}).get("environment")
            label = environment_label(env) if isinstance(env, dict) else NOT_RECORDED
            found.setdefault(label, []).append(r.run.id)
    return found


def dataset_names(records) -> list[str]:
    seen = []
    for r in records:
        if r.run.config["data"]["name"] not in seen:
            seen.append(r.run.config["data"]["name"])
    return seen


def row_key(run: Run) -> str:
    """Row label: the strategy, with the other settings of an axis that chooses it (an arm
    `{model.fusion: dynamic, model.release: true}` is `dynamic,release=True`), then every other
    matrix axis but the seed and the data, space-free: rows are compared within equal values of
    those (bench/report/analysis.py)."""
    first, others = [run.config["model"]["fusion"]], []
    for axis, value in run.axes.items():
        if axis in ("seed", "model.fusion") or axis.startswith("data."):
            continue
        if isinstance(value, dict) and "data.name" in value:
            continue
        if isinstance(value, dict) and "model.fusion" in value:
            first += [f"{k.rsplit('.', 1)[-1]}={_compact(v)}" for k, v in value.items()
                      if k != "model.fusion"]
            continue
        if isinstance(value, dict):
            value = ",".join(f"{k}={_compact(v)}" for k, v in value.items())
        others.append(f"{axis}={_compact(value)}")
    return " ".join([",".join(first), *others])


def _compact(value) -> str:
    return str(value).replace(" ", "")


def row_name(row: str) -> str:
    """The row's first word: its strategy and the settings that come with it (see row_key)."""
    return row.split()[0]


def strategy_of(row: str) -> str:
    return row_name(row).split(",")[0]


def sort_rows(keys) -> list[str]:
    order = {name: i for i, name in enumerate(fusion_names())}
    return sorted(keys, key=lambda k: (order.get(strategy_of(k), 99), k))


def _metric_value(record: RunRecord, metric: str) -> float | None:
    if record.state != RunState.DONE or not record.metrics:
        return None
    if metric.startswith("test/"):
        value = record.metrics.get("test", {}).get(metric)
    elif metric.startswith("costs/"):
        value = (record.metrics.get("costs") or {}).get(metric.split("/", 1)[1])
    elif metric.startswith("shares/"):
        shares = record.metrics.get("shares") or {}
        value = shares.get(metric.split("/", 1)[1])
    else:
        value = None
    if value is None or (isinstance(value, float) and (math.isnan(value) or value < 0)):
        return None  # NaN and COCO's -1 mean "no objects of that kind": not a zero
    return float(value)


def build_cells(records: list[RunRecord], metrics_by_task: dict) -> dict:
    """{dataset: {metric: {row: Cell}}} over the metrics each dataset's task reports."""
    table: dict = {}
    for record in records:
        dataset = record.run.config["data"]["name"]
        task = DATASETS[dataset].task
        row = row_key(record.run)
        for metric in metrics_by_task[task]:
            cell = table.setdefault(dataset, {}).setdefault(metric, {}).setdefault(row, Cell())
            cell.states[record.state] = cell.states.get(record.state, 0) + 1
            value = _metric_value(record, metric)
            if value is not None:
                cell.by_seed[record.run.config["seed"]] = value
    return table


def scale(metric: str) -> float:
    """Test metrics are stored as fractions and shown in percent."""
    return 100.0 if metric.startswith("test/") else 1.0


def short(metric: str) -> str:
    return metric.split("/", 1)[1]
