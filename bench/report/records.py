"""Reading the results store for the reports: one record per run, the runs that cannot be
trusted (flagged), and cells that aggregate a metric over seeds.

Cells aggregate seeds ({seed: value}, for the seed-paired statistics in analysis.py), or
(split, seed) blocks where `data.split_seed` is a matrix axis (`cell_key`; the two-level
statistics of bench/stats/blocks.py); where trainer.seeds.init / .order are axes, the seed is
the run's (init, order) (`SeedPair`). A cell whose runs are not all done says so (running /
failed / missing); a missing value is never shown as 0. No torch here.
"""
from __future__ import annotations

import math
import operator
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import Experiment, Run, fusion_names, run_id
from bench.data import DATASETS
from bench.environment import NOT_RECORDED, environment_label
from bench.store import RunDir, RunState, experiment_dir
from bench.tasks import TASKS, run_seeds

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


SPLIT_AXIS = "data.split_seed"
# the finer seeds (bench/config/schema.py): set apart, they take the seed's place in a cell key
SEED_KEYS = ("seed", "trainer.seeds", "trainer.seeds.init", "trainer.seeds.order")


class SeedPair(str):
    """The seed of a cell key where trainer.seeds.init / .order are matrix axes: the run's
    (init, order) (bench.tasks.run_seeds), which pairs runs across rows. A str, "i<init>/o
    <order>", so tables and exports write it as is and the block statistics (which read a
    2-tuple key as (split, seed)) take it as one seed; it sorts by (init, order)."""

    def __new__(cls, init: int, order: int):
        self = super().__new__(cls, f"i{init}/o{order}")
        self.init, self.order = init, order
        return self

    def __getnewargs__(self):
        return self.init, self.order

    def _cmp(self, other, op):
        if isinstance(other, SeedPair):
            return op((self.init, self.order), (other.init, other.order))
        return op(str(self), other)

    def __lt__(self, other):
        return self._cmp(other, operator.lt)

    def __le__(self, other):
        return self._cmp(other, operator.le)

    def __gt__(self, other):
        return self._cmp(other, operator.gt)

    def __ge__(self, other):
        return self._cmp(other, operator.ge)

    __hash__ = str.__hash__


def is_seed_axis(axis: str, values) -> bool:
    """Whether the axis sets finer seeds (trainer.seeds.init / .order, or a bundle of seed keys
    only): its runs are told apart by their (init, order), not as rows."""
    if axis in SEED_KEYS[1:]:
        return True
    bundles = [v for v in values if isinstance(v, dict)]
    return bool(bundles) and len(bundles) == len(values) and all(
        k in SEED_KEYS for v in bundles for k in v) and any(
        k in SEED_KEYS[1:] for v in bundles for k in v)


def cell_key(run: Run):
    """What pairs a run with the other rows' runs: its seed, or its (split, seed) block where
    data.split_seed is a matrix axis (bench/stats/blocks.py: cells keyed this way); where an
    axis sets the finer seeds, its SeedPair (init, order) in the seed's place."""
    seed = run.config["seed"]
    if any(is_seed_axis(axis, [value]) for axis, value in run.axes.items()):
        seed = SeedPair(*run_seeds(run.config))
    return (run.config["data"]["split_seed"], seed) if SPLIT_AXIS in run.axes else seed


def split_of(key):
    """The split of a cell key (None for a plain seed)."""
    return key[0] if isinstance(key, tuple) else None


def seed_of(key):
    return key[1] if isinstance(key, tuple) else key


@dataclass
class Cell:
    by_seed: dict = field(default_factory=dict)  # cell_key (seed or (split, seed)) -> value
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


def older_definition(rd: RunDir) -> int | None:
    """The older metric definition (TaskSpec.metrics_version) a run folder was stored under:
    its config hashes to the folder's name only with that version (its numbers mean something
    else, e.g. classification's version 1 acc1 was class-balanced recall). None for a run of
    the current definition, or a folder that is no run."""
    stored = rd.config()
    try:
        if not isinstance(stored, dict) or run_id(stored) == rd.path.name:
            return None
        current = TASKS[DATASETS[stored["data"]["name"]].task].metrics_version
        return next((v for v in range(1, current) if run_id(stored, v) == rd.path.name), None)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


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


# axes that are not a row's: the seed pairs the comparisons (the finer seeds too), the dataset
# has tables of its own, the data split is a block of the comparison (bench/stats/blocks.py)
NOT_ROW_AXES = ("seed", "data.name", "data.split_seed", *SEED_KEYS[1:])
STRATEGY = "strategy"  # a row's name: its strategy and the settings that come with it


def is_strategy_axis(axis: str, values) -> bool:
    """Whether the axis chooses the strategy (model.fusion, or a bundle that sets it)."""
    return axis == "model.fusion" or any(isinstance(v, dict) and "model.fusion" in v
                                         for v in values)


def is_row_axis(axis: str, values) -> bool:
    """Whether the axis tells report rows apart (not the seed, the dataset or the split)."""
    return axis not in NOT_ROW_AXES and not is_seed_axis(axis, values) and not any(
        isinstance(v, dict) and "data.name" in v for v in values)


def value_text(axis: str, value) -> str:
    """How a row shows an axis's value: `True`, `0.5`, a bundle's `k=v,k=v`; a bundle that sets
    the strategy as its part of the row's name (`dynamic,release=True`)."""
    if isinstance(value, dict) and "model.fusion" in value:
        return ",".join([_compact(value["model.fusion"]), *_settings(value)])
    if isinstance(value, dict):
        return ",".join(f"{k}={_compact(v)}" for k, v in value.items())
    return _compact(value)


def row_parts(run: Run) -> tuple[str, dict[str, str]]:
    """(name, {axis: value text}) of the run's row: the name is the strategy with the settings
    of an axis that chooses it (an arm `{model.fusion: dynamic, model.release: true}` is
    `dynamic,release=True`); then every other row axis (is_row_axis), in matrix order."""
    name, others = [run.config["model"]["fusion"]], {}
    for axis, value in run.axes.items():
        if axis == "model.fusion" or not is_row_axis(axis, [value]):
            continue
        if isinstance(value, dict) and "model.fusion" in value:
            name += _settings(value)
            continue
        others[axis] = value_text(axis, value)
    return ",".join(name), others


def row_key(run: Run) -> str:
    """Row label, space-free words: the row's name, then `axis=value` for its other row axes
    (row_parts); rows are compared within equal values of those (bench/report/families.py)."""
    name, others = row_parts(run)
    return " ".join([name, *(f"{axis}={text}" for axis, text in others.items())])


def _settings(bundle: dict) -> list[str]:
    """A strategy bundle's other settings, by their last key part: ["release=True"]."""
    return [f"{k.rsplit('.', 1)[-1]}={_compact(v)}" for k, v in bundle.items()
            if k != "model.fusion"]


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
                cell.by_seed[cell_key(record.run)] = value
    return table


def scale(metric: str) -> float:
    """Test metrics are stored as fractions and shown in percent."""
    return 100.0 if metric.startswith("test/") else 1.0


def short(metric: str) -> str:
    return metric.split("/", 1)[1]
