"""The studies of a sweep: one per cell of the matrix without its seed axis (a strategy, times a
dataset when there are several), each starting from the cell's run on the matrix's first seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

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

    @property
    def short(self) -> str:
        return self.name.split("/", 1)[1]


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
