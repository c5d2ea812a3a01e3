"""Reports over the results store: status, ablation, shares and cost tables, exports, plots.

    records.py  reading the store: one record per run, flagged runs, cells over seeds
    analysis.py the statistics of every cell and comparison (bench/stats/), best rows, buckets
    image_bootstrap.py  detection AP over resampled test images (bench/stats/ap.py), paired
    views.py    the tables as text cells, shared by the terminal and the exports
    tables.py   the terminal tables (`status`, `report`)
    exports.py  JSON, CSV, Markdown and LaTeX (`report --format`)
    plots.py    the charts: ablation (`report --plot`), metric vs cost, shares vs nulls
    html.py     the whole report as one self-contained HTML page (`report --html`)
    costs.py    `lesa-bench models`: parameters, FLOPs and shapes of every strategy
    flops.py    FLOPs of one call, CPU attention included
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bench.config import Experiment
from bench.report.analysis import Analysis, analyse
from bench.report.exports import atomic_output, emit, export_records, export_text
from bench.report.plots import plot
from bench.report.records import Cell, RunRecord, build_cells, collect, flagged, older_definition
from bench.report.tables import print_status, print_tables
from bench.store import RunDir, RunState, experiment_dir

__all__ = ["Analysis", "analyse", "Cell", "RunRecord", "build_cells", "collect", "export_records", "export_text",
           "flagged", "main", "plot", "print_status", "print_tables"]


def main(exp: Experiment, results: Path, console: Console, fmt: str | None,
         output: Path | None, plot_path: Path | None, baseline: str | None = None,
         min_effect: float | None = None, rerun: str | None = None,
         html_path: Path | None = None, compare: str | None = None) -> int:
    """`baseline`: the strategy rows are compared with (default conv), or with `compare` (a
    matrix axis whose values are compared) that axis's value; `min_effect`: the
    difference (in the table's units) the seeds-needed column is computed for; `rerun`: the
    command that trains these runs (the advice when none has a result)."""
    records = collect(exp, exp.runs, results)
    analysis = analyse(exp, records, baseline, min_effect, compare=compare)
    if not any(r.state != RunState.PENDING for r in records):
        _no_results(exp, results, Console(stderr=True) if fmt and not output else console,
                    rerun)
    if fmt:
        emit(export_text(exp, records, fmt, analysis), output, console)
    else:
        print_tables(exp, records, console, analysis)
    if plot_path:
        with atomic_output(plot_path, "--plot") as tmp:
            plot(exp, records, tmp, analysis)
        console.print(f"wrote {escape(str(plot_path))}")
    if html_path:  # bench/report/html.py
        from bench.report.html import write_html

        with atomic_output(html_path, "--html") as tmp:
            write_html(exp, records, results, tmp, analysis)
        console.print(f"wrote {escape(str(html_path))}")
    return 0


def _no_results(exp: Experiment, results: Path, console: Console, rerun: str | None) -> None:
    """Say so (on stderr when the export goes to stdout), with the command that trains these
    runs, and whether the folder holds runs of other configs (another --set, an edited file)."""
    folder = experiment_dir(results, exp.name)
    ids = {r.id for r in exp.runs}
    # a run folder holds config.yaml; workers/, slurm/ and sweep folders are not runs
    others = [p for p in folder.iterdir() if (p / "config.yaml").is_file() and p.name not in ids] \
        if folder.is_dir() else []
    older = [p for p in others if older_definition(RunDir(p)) is not None]
    note = (f" ({len(others) - len(older)} run folder(s) there belong to other configs: a "
            f"different --set or experiment file)" if len(others) > len(older) else "")
    if older:  # e.g. classification before acc1 became top-1 accuracy (docs/experiments.md)
        note += (f" ({len(older)} run folder(s) there were stored under an older definition of "
                 f"their metrics and are not read: train them again)")
    command = rerun or f"lesa-bench run {exp.path or exp.name}"
    console.print(f"[yellow]no results yet for {escape(exp.name)} in {escape(str(folder))}"
                  f"{escape(note)}: run `{escape(command)}` first", soft_wrap=True)
