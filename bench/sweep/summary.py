"""What a sweep found: the table of studies (trials and hours of the budget, counts, best value),
the best parameters, the budget report (`report --sweep`: bench/report/sweep_views.py), the
matrix with the best parameters applied (--best-params) and its comparison with the default
settings (bench/report/tuned.py), and the runs the trials trained.
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bench.config import ConfigError, Experiment, Run, run_id
from bench.config.sweep import with_params
from bench.report.sweep_views import MIXED, SweepStudy, analyse_sweep, study_table
from bench.store import RunDir, experiment_dir
from bench.sweep.cells import StudyCell, objective_text, require_sweep, stored_repeats, \
    study_cells
from bench.sweep.objective import fmt_params, trial_counts
from bench.sweep.storage import describe_storage, load_study, open_existing, storage_url
from bench.sweep.trials import as_trials, study_budget


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def all_studies(exp: Experiment, storage) -> list[StudyCell]:
    """Every study of the experiment's cells in the storage: each cell's repeat 0 (started or
    not) and the repeats `sweep --repeat` added."""
    import optuna

    names = optuna.get_all_study_names(storage) if storage is not None else []
    return stored_repeats(names, study_cells(exp))


def read_study(exp: Experiment, cell: StudyCell, storage, root: Path) -> SweepStudy:
    """One study as the report sees it (bench/report/sweep_views.py)."""
    study = load_study(storage, cell.name) if storage is not None else None
    sampler = exp.sweep["sampler"]["name"]
    base = SweepStudy(cell.name, cell.short, cell.strategy, cell.group, cell.repeat, cell.metric,
                      cell.direction, dict(exp.sweep["budget"]), sampler, started=False)
    if study is None:
        return base
    attrs = study.user_attrs
    best = _best(study)
    return replace(base, budget=study_budget(study, exp.sweep["budget"]),
                   sampler=MIXED if attrs.get("mixed_samplers") else attrs.get("sampler", sampler),
                   sampler_seed=attrs.get("sampler_seed"), trials=as_trials(study, root),
                   started=True, counts=trial_counts(study),
                   best_number=best.number if best else None,
                   best_value=best.value if best else None,
                   best_params=dict(best.params) if best else None,
                   best_run=best.user_attrs.get("run_id") if best else None)


def _best_lines(studies: list[SweepStudy]) -> list[str]:
    lines = []
    for s in studies:
        if s.best_params is not None:
            lines.append(f"  {s.short} #{s.best_number}: {fmt_params(s.best_params)} "
                         f"(run {s.best_run or '?'})")
        elif s.started:
            lines.append(f"  {s.short}: no complete trial yet")
    return lines


def summary(exp: Experiment, cells: list[StudyCell], storage, results: Path) -> list:
    """The sweep table (trials and hours of the budget, counts, best value) and the best
    parameters, as printable parts."""
    from bench.report.tables import rich_table

    url = storage_url(exp, results)
    root = experiment_dir(results, exp.name)
    studies = [read_study(exp, c, storage, root) for c in cells]
    title = f"{exp.name}: sweep ({describe_storage(exp, results, url)})"
    return [rich_table(study_table(studies, title)), "best parameters:", *_best_lines(studies)]


def tuned_view(exp: Experiment, results: Path, baseline: str | None, quiet: bool = True):
    """The tuned-vs-default comparison (bench/report/tuned.py) of the experiment: its matrix
    with each strategy's best parameters against the plain matrix, leaving out the seed the
    sweep tuned on. None when no tuned run (but the sweep's own) has finished."""
    from bench.report import collect
    from bench.report.tuned import tuned_vs_default

    cells = study_cells(exp)
    if not cells or not any(best_params(exp, results).values()):
        return None
    tuned = apply_best_params(exp, results, Console(file=io.StringIO()) if quiet else
                              Console(stderr=True))
    view = tuned_vs_default(collect(exp, exp.runs, results),
                            collect(tuned, tuned.runs, results), baseline,
                            left_out=cells[0].base.config["seed"])
    return view if view.has_results else None


def print_tuned(default: Experiment, results: Path, console: Console,
                baseline: str | None = None) -> None:
    """`report --best-params`, after the standard tables: tuned vs default and vs the tuned
    baseline (bench/report/tuned.py). `default`: the experiment without --best-params."""
    from bench.report.tables import rich_table
    from bench.report.tuned import tuned_tables

    view = tuned_view(default, results, baseline)
    if view is None:
        console.print(f"[yellow]tuned vs default: no run retrained with the best parameters has "
                      f"finished (beyond the sweep's own seed); run `lesa-bench run "
                      f"{escape(str(default.path or default.name))} --best-params`", soft_wrap=True)
        return
    for t in tuned_tables(view):
        console.print(rich_table(t))
        for note in t.notes:
            console.print(f"  {escape(note)}", style="dim", soft_wrap=True)


def print_sweep_report(exp: Experiment, results: Path, console: Console, fmt: str | None = None,
                       output: Path | None = None, plot: Path | None = None,
                       html: Path | None = None, baseline: str | None = None) -> int:
    """`report --sweep`: per study the trials and hours of its budget, counts and best value;
    per group the expected-best (or best-so-far) curves against trials and training hours,
    their crossings, the tuning variance of repeated studies and the tuned-vs-default
    comparison; as tables, an export (`fmt`, to `output` or stdout), a chart, an HTML page."""
    from bench.report import atomic_output, emit
    from bench.report.sweep_exports import sweep_html, sweep_text, write_plot
    from bench.report.tables import rich_table
    from bench.report.sweep_views import sweep_tables

    require_sweep(exp)
    storage, url = open_existing(exp, results)
    if storage is None:
        Console(stderr=True).print(f"[yellow]no sweep yet for {exp.name}: run `lesa-bench sweep "
                                   f"{escape(str(exp.path or exp.name))}` first")
        return 0
    cells = all_studies(exp, storage)
    root = experiment_dir(results, exp.name)
    studies = [read_study(exp, c, storage, root) for c in cells]
    where = describe_storage(exp, results, url)
    view = analyse_sweep(exp.name, where, studies, tuned=tuned_view(exp, results, baseline))
    lines = ["best parameters:", *_best_lines(studies)]
    if fmt:
        emit(sweep_text(view, fmt), output, console)
    else:
        console.print(rich_table(study_table(studies, f"{exp.name}: sweep ({where})")))
        for line in lines:
            console.print(escape(line), highlight=False, soft_wrap=True)
        for t in sweep_tables(view):
            console.print(rich_table(t))
            for note in t.notes:
                console.print(f"  {escape(note)}", style="dim", soft_wrap=True)
        if cells:
            console.print(f"objective: the best over epochs of {objective_text(cells)}; "
                          f"live plots: optuna-dashboard {where}", highlight=False, soft_wrap=True)
    if plot:
        with atomic_output(plot, "--plot") as tmp:
            write_plot(view, tmp)
        console.print(f"wrote {escape(str(plot))}")
    if html:
        with atomic_output(html, "--html") as tmp:
            tmp.write_text(sweep_html(view, lines), encoding="utf-8")
        console.print(f"wrote {escape(str(html))}")
    return 0


def best_params(exp: Experiment, results: Path) -> dict[str, dict | None]:
    """{cell name: the parameters of its best trial over every repeated study, or None
    without a complete trial}."""
    storage, _ = open_existing(exp, results)
    found: dict[str, tuple | None] = {c.name: None for c in study_cells(exp)}
    for cell in all_studies(exp, storage) if storage is not None else []:
        study = load_study(storage, cell.name)
        best = _best(study) if study is not None else None
        if best is None:
            continue
        sign = 1 if cell.direction == "maximize" else -1
        held = found[cell.cell]
        if held is None or sign * best.value > sign * held[0]:
            found[cell.cell] = (best.value, dict(best.params))
    return {name: None if v is None else v[1] for name, v in found.items()}


def apply_best_params(exp: Experiment, results: Path, console: Console) -> Experiment:
    """The experiment with each run's config set to its study's best parameters (the best
    over the cell's repeated studies, if `sweep --repeat` ran several).

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
    for cell in all_studies(exp, storage):
        study = load_study(storage, cell.name)
        for trial in study.get_trials(deepcopy=False) if study is not None else []:
            rid = trial.user_attrs.get("run_id")
            cfg = RunDir(root / rid).config() if rid else None
            if cfg is not None and rid not in seen:
                seen.add(rid)
                runs.append(Run(rid, cfg, dict(cell.base.axes, trial=trial.number)))
    return runs
