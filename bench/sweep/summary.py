"""What a sweep found: the table of studies (trials of the budget, counts, best value), the best
parameters, the matrix with them applied (--best-params) and the runs the trials trained.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.config import ConfigError, Experiment, Run, run_id
from bench.config.sweep import with_params
from bench.store import RunDir, experiment_dir
from bench.sweep.cells import StudyCell, objective_text, require_sweep, study_cells
from bench.sweep.objective import fmt_params, trial_counts
from bench.sweep.storage import describe_storage, load_study, open_existing, storage_url


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def summary(exp: Experiment, cells: list[StudyCell], storage, results: Path) -> list:
    """The sweep table (trials of the budget, counts, best value) and the best parameters."""
    url = storage_url(exp, results)
    table = Table(title=f"{exp.name}: sweep ({escape(describe_storage(exp, results, url))})")
    table.add_column("study")
    for col in ("trials", "complete", "pruned", "failed", "best"):
        table.add_column(col, justify="right")
    lines = []
    for cell in cells:
        study = load_study(storage, cell.name)
        if study is None:
            table.add_row(cell.short, "-", "", "", "", "not started")
            continue
        c = trial_counts(study)
        budget = study.user_attrs.get("budget", exp.sweep["trials"])
        best = _best(study)
        failed = str(c["failed"])
        if c["killed"]:
            failed += f" ({c['killed']} interrupted, re-queued)"
        running = f" +{c['running']} running" if c["running"] else ""
        table.add_row(cell.short, f"{c['complete'] + c['pruned']}/{budget}{running}",
                      str(c["complete"]), str(c["pruned"]), failed,
                      f"{best.value:.4f}" if best else "-")
        if best:
            lines.append(f"  {cell.short} #{best.number}: {fmt_params(best.params)} "
                         f"(run {best.user_attrs.get('run_id', '?')})")
        else:
            lines.append(f"  {cell.short}: no complete trial yet")
    return [table, "best parameters:", *lines]


def print_sweep_report(exp: Experiment, results: Path, console: Console) -> int:
    """Per study: trials done of the budget, complete/pruned/failed counts, best value/params."""
    require_sweep(exp)
    cells = study_cells(exp)
    storage, url = open_existing(exp, results)
    if storage is None:
        console.print(f"[yellow]no sweep yet for {exp.name}: run `lesa-bench sweep "
                      f"{escape(str(exp.path or exp.name))}` first")
        return 0
    for part in summary(exp, cells, storage, results):
        console.print(part, highlight=False, soft_wrap=isinstance(part, str))
    if cells:
        console.print(f"objective: the best over epochs of {objective_text(cells)}; "
                      f"live plots: optuna-dashboard {describe_storage(exp, results, url)}",
                      highlight=False, soft_wrap=True)
    return 0


def best_params(exp: Experiment, results: Path) -> dict[str, dict | None]:
    """{study name: the best trial's parameters, or None without a complete trial}."""
    storage, _ = open_existing(exp, results)
    found = {}
    for cell in study_cells(exp):
        study = load_study(storage, cell.name) if storage is not None else None
        best = _best(study) if study is not None else None
        found[cell.name] = dict(best.params) if best else None
    return found


def apply_best_params(exp: Experiment, results: Path, console: Console) -> Experiment:
    """The experiment with each run's config set to its study's best parameters.

    Every seed of a cell gets the same parameters; the sweep's own seed thus reuses the best
    trial's run. A cell without a complete trial keeps the file's values (and says so).
    """
    require_sweep(exp)
    found = best_params(exp, results)
    if not any(found.values()):
        raise ConfigError(f"no finished sweep trials for {exp.name} in "
                          f"{experiment_dir(results, exp.name)}: run `lesa-bench sweep "
                          f"{exp.path or exp.name}` first")
    by_run = {run.id: cell for cell in study_cells(exp) for run in cell.runs}
    runs = []
    for run in exp.runs:
        params = found.get(by_run[run.id].name)
        if params is None:
            runs.append(run)
            continue
        cfg = with_params(run.config, params)
        runs.append(Run(run_id(cfg), cfg, run.axes))
    for cell in study_cells(exp):
        params = found[cell.name]
        text = escape(fmt_params(params)) if params else \
            "[yellow]no complete trial: the file's values"
        console.print(f"  best {cell.short}: {text}")
    return replace(exp, runs=runs)


def trial_runs(exp: Experiment, results: Path) -> list[Run]:
    """The runs the sweep's trials trained (for `status`), from their stored configs."""
    root = experiment_dir(results, exp.name)
    storage, _ = open_existing(exp, results)
    runs, seen = [], set()
    if storage is None:
        return runs
    for cell in study_cells(exp):
        study = load_study(storage, cell.name)
        for trial in study.get_trials(deepcopy=False) if study is not None else []:
            rid = trial.user_attrs.get("run_id")
            cfg = RunDir(root / rid).config() if rid else None
            if cfg is not None and rid not in seen:
                seen.add(rid)
                runs.append(Run(rid, cfg, dict(cell.base.axes, trial=trial.number)))
    return runs
