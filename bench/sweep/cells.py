"""The studies of a sweep: one per cell of the matrix without its seed axis (a strategy, times a
dataset when there are several), each starting from the cell's run on the matrix's first seed;
with `sweep --repeat K`, K independent studies per cell: repeat 0 keeps the cell's name, repeat
r > 0 is `<cell>/repeat=<r>`, and its sampler's seed is the sweep's seed + r.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from bench.config import ConfigError, Experiment, Run, run_id
from bench.config.sweep import with_params
from bench.data import DATASETS
from bench.tasks import TASKS


@dataclass
class StudyCell:
    """One study: a cell of the matrix without its seed axis."""
    name: str  # <experiment>/<fusion>/<dataset>[/<axis>=<value>...]
    base: Run  # the run every trial starts from: the matrix's first seed
    runs: list[Run]  # the cell's matrix runs (all seeds)
    metric: str
    direction: str
    repeat: int = 0  # which of the cell's independent studies (sweep --repeat)

    @property
    def short(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def cell(self) -> str:
        """The cell's name, the same for every repeat."""
        return self.name.removesuffix(f"{REPEAT}{self.repeat}") if self.repeat else self.name

    @property
    def strategy(self) -> str:
        return self.base.config["model"]["fusion"]

    @property
    def group(self) -> str:
        """The cell without its strategy (dataset and other axes): strategies are compared
        within a group."""
        return "/".join(p for i, p in enumerate(self.cell.split("/")) if i not in (0, 1))


REPEAT = "/repeat="


def repeat_name(cell: str, repeat: int) -> str:
    return f"{cell}{REPEAT}{repeat}" if repeat else cell


def with_repeats(cells: list[StudyCell], repeats) -> list[StudyCell]:
    """Each cell's studies for the repeat indices given, repeat by repeat (every strategy's
    repeat 0 first: a sweep stopped half way leaves the strategies equally tuned)."""
    return [replace(c, name=repeat_name(c.name, r), repeat=r) for r in sorted(set(repeats))
            for c in cells]


def stored_repeats(names, cells: list[StudyCell]) -> list[StudyCell]:
    """The studies of `cells` among the stored study names: every cell's repeat 0 (stored or
    not) and each repeat r > 0 that is stored."""
    found = {0}
    for cell in cells:
        pattern = re.compile(re.escape(cell.name + REPEAT) + r"([1-9][0-9]*)")
        found |= {int(m.group(1)) for n in names if (m := pattern.fullmatch(n))}
    out = with_repeats(cells, found)
    stored = set(names)
    return [c for c in out if c.repeat == 0 or c.name in stored]


def _first_seed(exp: Experiment) -> int:
    seeds = exp.matrix.get("seed")
    return seeds[0] if seeds else exp.base.get("seed", 0)


def study_cells(exp: Experiment) -> list[StudyCell]:
    """The studies of an experiment, in matrix order (--only filters them like runs)."""
    cells: dict[str, StudyCell] = {}
    keys: dict[str, tuple] = {}
    seed = _first_seed(exp)
    for run in exp.runs:
        fusion, dataset = run.config["model"]["fusion"], run.config["data"]["name"]
        extra = []
        for axis, value in run.axes.items():
            if axis in ("seed", "model.fusion", "data.name"):
                continue
            if isinstance(value, dict):
                if "data.name" in value:
                    continue  # a dataset bundle: the dataset already names it
                value = exp.matrix[axis].index(value) if axis in exp.matrix else value
            extra.append(f"{axis}={value}")
        version = TASKS[DATASETS[dataset].task].metrics_version
        if version != 1:  # a study's values are its metric's: one of another definition is apart
            extra.insert(0, f"metrics=v{version}")
        name = "/".join([exp.name, fusion, dataset, *extra])
        key = tuple((a, json.dumps(v, sort_keys=True)) for a, v in run.axes.items() if a != "seed")
        if name in cells:
            if keys[name] != key:
                raise ConfigError(f"matrix: two cells would share the study {name!r} (bundle "
                                  f"values with the same data.name); set what tells them apart "
                                  f"with a dotted axis instead")
            cells[name].runs.append(run)
            continue
        task = TASKS[DATASETS[dataset].task]
        base_cfg = with_params(run.config, {}, seed=seed)
        base = Run(run_id(base_cfg), base_cfg, dict(run.axes, seed=seed))
        sweep = exp.sweep or {}
        cells[name] = StudyCell(name, base, [run], sweep.get("metric") or task.monitor,
                                sweep.get("direction")
                                or ("maximize" if task.mode == "max" else "minimize"))
        keys[name] = key
    return list(cells.values())


def objective_text(cells: list[StudyCell]) -> str:
    return ", ".join(sorted({f"{c.metric} ({c.direction})" for c in cells}))


def require_sweep(exp: Experiment) -> dict:
    if not exp.sweep:
        where = exp.path or exp.name
        raise ConfigError(f"{where}: no `sweep:` section; see docs/sweeps.md "
                          f"(experiments/sweep_quick.yaml is an example)")
    return exp.sweep
