"""Reports over the results store: status, ablation, shares and cost tables, exports, plots.

    records.py  reading the store: one record per run, flagged runs, cells over seeds
    analysis.py the statistics of every cell and comparison (stats.py), best rows, buckets
    image_bootstrap.py  detection AP over resampled test images (ap_bootstrap.py), paired
    views.py    the tables as text cells, shared by the terminal and the exports
    tables.py   the terminal tables (`status`, `report`)
    exports.py  JSON, CSV, Markdown and LaTeX (`report --format`)
    plots.py    the ablation chart: means with 95 % CI whiskers (`report --plot`)
    costs.py    `lesa-bench models`: parameters, FLOPs and shapes of every strategy
    flops.py    FLOPs of one call, CPU attention included
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bench.config import Experiment
from bench.report.analysis import Analysis, analyse
from bench.report.exports import export_records, export_text
from bench.report.plots import plot
from bench.report.records import Cell, RunRecord, build_cells, collect, flagged
from bench.report.tables import print_status, print_tables
from bench.store import RunState, experiment_dir

__all__ = ["Analysis", "analyse", "Cell", "RunRecord", "build_cells", "collect", "export_records", "export_text",
           "flagged", "main", "plot", "print_status", "print_tables"]


def main(exp: Experiment, results: Path, console: Console, fmt: str | None,
         output: Path | None, plot_path: Path | None, baseline: str | None = None,
         min_effect: float | None = None) -> int:
    """`baseline`: the strategy rows are compared with (default conv); `min_effect`: the
    difference (in the table's units) the seeds-needed column is computed for."""
    records = collect(exp, exp.runs, results)
    analysis = analyse(exp, records, baseline, min_effect)
    if not any(r.state != RunState.PENDING for r in records):
        console.print(f"[yellow]no results yet for {exp.name} in "
                      f"{experiment_dir(results, exp.name)}: run `lesa-bench run "
                      f"{exp.path or exp.name}` first")
    if fmt:
        text = export_text(exp, records, fmt, analysis)
        if output:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
            console.print(f"wrote {output}")
        else:
            print(text, end="")
    else:
        print_tables(exp, records, console, analysis)
    if plot_path:
        plot(exp, records, plot_path, analysis)
        console.print(f"wrote {plot_path}")
    return 0
