"""The reports in the terminal: each run's status, and the ablation, shares and costs tables."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.config import Experiment, Run
from bench.data import DATASETS
from bench.report.analysis import Analysis, analyse
from bench.report.records import (COST_METRICS, FLAGGED, SHARE_METRICS, RunRecord, build_cells,
                                  collect, dataset_names, environments, flag_lines, short,
                                  sort_rows)
from bench.report.views import LEGEND, TextTable, tables
from bench.store import RunState, experiment_dir
from bench.tasks import TASKS

STATE_STYLE = {"done": "green", "running": "cyan", "failed": "red", "interrupted": "yellow",
               "pending": "dim", "pruned": "yellow", "stale": "magenta", "unreadable": "magenta"}


def print_status(exp: Experiment, runs: list[Run], results: Path, console: Console,
                 title: str = "status") -> None:
    records = collect(exp, runs, results)
    table = Table(title=f"{exp.name}: {title} ({len(runs)} runs) in "
                        f"{escape(str(experiment_dir(results, exp.name)))}")
    from bench.cluster.queue import status_column

    jobs = status_column(records)  # each run's SLURM array task and its state, if submitted
    for col in ("run", "fusion", "data", "seed", "state", "progress", "time", "note"):
        table.add_column(col, justify="right" if col in ("seed", "time") else "left")
        if col == "state" and jobs:
            table.add_column("slurm job")
    counts: dict[str, int] = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1
        s = r.status
        progress = ""
        if r.state in (RunState.RUNNING, RunState.INTERRUPTED) and "epoch" in s:
            progress = f"epoch {s['epoch'] + 1}/{s.get('max_epochs', '?')}"
        elif r.state == RunState.DONE and r.metrics:
            first = TASKS[DATASETS[r.run.config["data"]["name"]].task].headline[0]
            value = r.metrics["test"].get(first)
            progress = f"{short(first)}={value * 100:.1f}" if value is not None else ""
        elapsed = f"{s['elapsed_s']:.0f}s" if s.get("elapsed_s") else ""
        note = s.get("error") or ""
        if r.state in FLAGGED:
            note = f"{FLAGGED[r.state]}: ignored"
        style = STATE_STYLE.get(r.state, "default")
        job = [jobs.get(r.run.id, "")] if jobs else []
        table.add_row(r.run.id, r.run.config["model"]["fusion"], r.run.config["data"]["name"],
                      str(r.run.config["seed"]), f"[{style}]{r.state}[/]", *job, progress,
                      elapsed, escape(note[:80]))
    console.print(table)
    console.print("  ".join(f"[{STATE_STYLE.get(k, 'default')}]{k}: {v}[/]"
                            for k, v in counts.items()))


def rich_table(t: TextTable) -> Table:
    table = Table(title=escape(t.title))
    for i, col in enumerate(t.header):
        table.add_column(escape(col), justify="left" if i == 0 else "right", no_wrap=True)
    for line, best in zip(t.rows, t.best):
        cells = [escape(c) for c in line]
        table.add_row(*([f"[bold green]{c}[/]" for c in cells] if best else cells))
    return table


def print_tables(exp: Experiment, records: list[RunRecord], console: Console,
                 analysis: Analysis | None = None) -> None:
    a = analysis or analyse(exp, records)
    # one set of tables per dataset: tasks report different metrics
    for dataset in a.datasets:
        for t in tables(a, dataset):
            console.print(rich_table(t))
            for note in t.notes:
                console.print(f"  {escape(note)}", style="dim", soft_wrap=True)
    if a.datasets:
        console.print(escape(LEGEND), style="dim", soft_wrap=True)
    console.print(_shares_table(exp, records))
    console.print(_costs_table(exp, records))
    states: dict[str, int] = {}
    for r in records:
        if r.state != RunState.DONE:
            states[r.state] = states.get(r.state, 0) + 1
    states = dict(sorted(states.items()))
    if states:
        console.print("[yellow]incomplete: " + ", ".join(f"{n} {s}" for s, n in states.items())
                      + " (cells show n and what is missing)")
    for r in records:
        if r.state == RunState.FAILED:
            console.print(f"  [red]failed[/] {r.run.id}: "
                          f"{escape(str(r.status.get('error') or 'no reason recorded'))}",
                          soft_wrap=True)
    for line in flag_lines(records):
        console.print(f"  [magenta]flagged[/] {escape(line)}", soft_wrap=True)
    envs = environments(records)
    if len(envs) == 1:
        console.print(f"environment: {escape(next(iter(envs)))}", style="dim", soft_wrap=True)
    elif envs:
        console.print(f"[yellow]mixed environments:[/] these runs come from {len(envs)}; float "
                      "rounding differs between them and training amplifies it, so one config "
                      "can give other numbers in each")
        for label, ids in envs.items():
            console.print(f"  {escape(label)}: {len(ids)} run(s)", soft_wrap=True)


def _simple_table(title: str, records, metrics: tuple[str, ...], formats) -> Table:
    datasets = dataset_names(records)
    cells = build_cells(records, {task: metrics for task in TASKS})
    table = Table(title=title)
    table.add_column("strategy")
    rows = sort_rows({row for d in datasets for m in cells[d].values() for row in m})
    for d in datasets:
        for metric in metrics:
            table.add_column(f"{d} {short(metric)}", justify="right")
    for row in rows:
        line = [row]
        for d in datasets:
            for metric in metrics:
                cell = cells[d][metric].get(row)
                if cell is None or cell.mean is None:
                    line.append("-")
                else:
                    line.append(formats[short(metric)](cell))
        table.add_row(*line)
    return table


def _shares_table(exp, records) -> Table:
    pct = lambda c: f"{c.mean:.1f} ± {c.std:.1f} (n={c.n})"  # noqa: E731
    return _simple_table(f"{exp.name}: unary / binary shares on test (%)", records,
                         SHARE_METRICS, {"unary": pct, "binary": pct})


def _costs_table(exp, records) -> Table:
    formats = {"params": lambda c: f"{c.mean / 1e6:.3f} M",
               "gflops": lambda c: f"{c.mean:.3f}",
               "train_images_per_s": lambda c: f"{c.mean:.0f}"}
    return _simple_table(f"{exp.name}: costs (params, GFLOPs per image, training images/s)",
                         records, COST_METRICS, formats)
