"""Reports over the results store: status, ablation, shares and cost tables, exports, plots.

Cells aggregate seeds: mean +- std with n. A cell whose runs are not all done says so
(running / failed / missing); a missing value is never shown as 0. No torch here.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.config import FUSION_NAMES, Experiment, Run, run_id
from bench.data import DATASETS
from bench.store import RunDir, experiment_dir
from bench.tasks import TASKS

STATE_STYLE = {"done": "green", "running": "cyan", "failed": "red", "interrupted": "yellow",
               "pending": "dim", "pruned": "yellow", "stale": "magenta", "unreadable": "magenta"}
# runs whose results cannot be trusted: flagged in every report, never in a mean
FLAGGED = {
    "stale": "its stored config.yaml no longer hashes to its id (edited or damaged)",
    "unreadable": "marked done, but its metrics.json is missing or unreadable",
}
# headline metrics per task in the ablation table (the rest go to JSON/CSV exports)
ABLATION_METRICS = {"classification": ("test/acc1",),
                    "detection": ("test/map_50", "test/map", "test/ap_vt", "test/ap_t",
                                  "test/ap_s", "test/ap_m")}


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
    values: list[float] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)

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
        parts = [f"{n} {s}" for s, n in self.states.items() if s != "done"]
        return ", ".join(parts)


def collect(exp: Experiment, runs: list[Run], results: Path) -> list[RunRecord]:
    root = experiment_dir(results, exp.name)
    records = []
    for run in runs:
        rd = RunDir(root / run.id)
        status = rd.status()
        stale = rd.path.is_dir() and not _config_matches(rd, run.id)
        state = status.get("state", "pending")
        if state == "running" and not rd.locked_by_other():
            state = "interrupted"  # its process died without saying so
        metrics = None if stale else rd.metrics()
        if stale:
            state = "stale"
        elif state == "done" and not isinstance((metrics or {}).get("test"), dict):
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


def _flag_lines(records: list[RunRecord]) -> list[str]:
    """One line per run left out of the means because its results cannot be trusted."""
    lines = []
    for r in flagged(records):
        lines.append(f"{r.run.id}: {FLAGGED[r.state]}; left out of every mean. Delete "
                     f"{r.folder} to train it again")
    return lines


def _row_key(run: Run) -> str:
    """Row label: the strategy plus any other matrix axis that is not the seed or the data."""
    extra = [f"{axis}={value}" for axis, value in run.axes.items()
             if axis not in ("seed", "model.fusion") and not axis.startswith("data.")
             and not (isinstance(value, dict) and "data.name" in value)]
    return " ".join([run.config["model"]["fusion"], *extra])


def _sort_rows(keys) -> list[str]:
    order = {name: i for i, name in enumerate(FUSION_NAMES)}
    return sorted(keys, key=lambda k: (order.get(k.split()[0], 99), k))


def _metric_value(record: RunRecord, metric: str) -> float | None:
    if record.state != "done" or not record.metrics:
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
        row = _row_key(record.run)
        for metric in metrics_by_task[task]:
            cell = table.setdefault(dataset, {}).setdefault(metric, {}).setdefault(row, Cell())
            cell.states[record.state] = cell.states.get(record.state, 0) + 1
            value = _metric_value(record, metric)
            if value is not None:
                cell.values.append(value)
    return table


def _scale(metric: str) -> float:
    return 100.0 if metric.startswith("test/") else 1.0


def fmt_cell(cell: Cell | None, metric: str, digits: int = 2) -> str:
    if cell is None:
        return "-"
    k = _scale(metric)
    note = cell.incomplete()
    if cell.mean is None:  # every run done, none has a value: e.g. no test objects that size
        return note or "n/a"
    text = f"{cell.mean * k:.{digits}f} ± {cell.std * k:.{digits}f} (n={cell.n})"
    return f"{text} [{note}]" if note else text


def short(metric: str) -> str:
    return metric.split("/", 1)[1]


# --- status -----------------------------------------------------------------------------------
def print_status(exp: Experiment, runs: list[Run], results: Path, console: Console,
                 title: str = "status") -> None:
    records = collect(exp, runs, results)
    table = Table(title=f"{exp.name}: {title} ({len(runs)} runs) in "
                        f"{experiment_dir(results, exp.name)}")
    for col in ("run", "fusion", "data", "seed", "state", "progress", "time", "note"):
        table.add_column(col, justify="right" if col in ("seed", "time") else "left")
    counts: dict[str, int] = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1
        s = r.status
        progress = ""
        if r.state in ("running", "interrupted") and "epoch" in s:
            progress = f"epoch {s['epoch'] + 1}/{s.get('max_epochs', '?')}"
        elif r.state == "done" and r.metrics:
            progress = " ".join(f"{short(k)}={v * 100:.1f}" for k, v in r.metrics["test"].items()
                                if k in ("test/acc1", "test/map_50"))
        elapsed = f"{s['elapsed_s']:.0f}s" if s.get("elapsed_s") else ""
        note = s.get("error") or ""
        if r.state in FLAGGED:
            note = f"{FLAGGED[r.state]}: ignored"
        style = STATE_STYLE.get(r.state, "default")
        table.add_row(r.run.id, r.run.config["model"]["fusion"], r.run.config["data"]["name"],
                      str(r.run.config["seed"]), f"[{style}]{r.state}[/]", progress, elapsed,
                      note[:80])
    console.print(table)
    console.print("  ".join(f"[{STATE_STYLE.get(k, 'default')}]{k}: {v}[/]"
                            for k, v in counts.items()))


# --- report -----------------------------------------------------------------------------------
def _datasets(records) -> list[str]:
    seen = []
    for r in records:
        if r.run.config["data"]["name"] not in seen:
            seen.append(r.run.config["data"]["name"])
    return seen


def ablation_rows(cells: dict, datasets: list[str]) -> tuple[list[str], list[list]]:
    """Header and rows: the row label, then per dataset each metric's Cell (or None where the
    row has no run on that dataset) and a Delta (difference of the headline mean to conv)."""
    rows = _sort_rows({row for d in datasets for m in cells[d].values() for row in m})
    header = ["strategy"]
    for d in datasets:
        header += [f"{d} {short(m)}" for m in ABLATION_METRICS[DATASETS[d].task]]
        header.append(f"{d} Δ conv")
    body = []
    for row in rows:
        line: list = [row]
        for d in datasets:
            metrics = ABLATION_METRICS[DATASETS[d].task]
            line += [cells[d][metric].get(row) for metric in metrics]
            head = cells[d][metrics[0]]
            base = head.get(" ".join(["conv", *row.split()[1:]]))
            mine = head.get(row)
            known = base and mine and base.mean is not None and mine.mean is not None
            line.append(Delta((mine.mean - base.mean) * _scale(metrics[0]) if known else None))
        body.append(line)
    return header, body


@dataclass
class Delta:
    value: float | None

    def __str__(self) -> str:
        return "-" if self.value is None else f"{self.value:+.2f}"


def _best(column) -> float | None:
    means = [c.mean for c in column if isinstance(c, Cell) and c.mean is not None]
    return max(means) if means else None


def _text(value) -> str:
    return fmt_cell(value, "test/") if isinstance(value, Cell) else str(value or "-")


def print_tables(exp: Experiment, records: list[RunRecord], console: Console) -> None:
    cells = build_cells(records, ABLATION_METRICS)
    any_na = False
    for dataset in _datasets(records):  # one table per dataset: tasks report different metrics
        header, body = ablation_rows(cells, [dataset])
        table = Table(title=f"{exp.name}: ablation on {dataset} (test metrics in %, mean ± std "
                            f"over seeds)")
        for i, col in enumerate(header):
            table.add_column(col, justify="left" if i == 0 else "right")
        best = [None] + [_best(list(column)) for column in list(zip(*body))[1:]] if body else []
        for line in body:
            out = [line[0]]
            for i, value in enumerate(line[1:], 1):
                text = _text(value)
                any_na = any_na or text == "n/a"
                if isinstance(value, Cell) and value.mean is not None and best[i] is not None \
                        and value.mean >= best[i] - 1e-12:
                    text = f"[bold green]{text}[/]"
                out.append(text)
            table.add_row(*out)
        console.print(table)
    if any_na:
        console.print("n/a: finished, but no run has a value (an AP bucket with no test objects "
                      "of that size)", style="dim")
    console.print(_shares_table(exp, records))
    console.print(_costs_table(exp, records))
    states: dict[str, int] = {}
    for r in records:
        if r.state != "done":
            states[r.state] = states.get(r.state, 0) + 1
    if states:
        console.print("[yellow]incomplete: " + ", ".join(f"{n} {s}" for s, n in states.items())
                      + " (cells show n and what is missing)")
    for r in records:
        if r.state == "failed":
            console.print(f"  [red]failed[/] {r.run.id}: "
                          f"{escape(str(r.status.get('error') or 'no reason recorded'))}",
                          soft_wrap=True)
    for line in _flag_lines(records):
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


def environment_label(env: dict) -> str:
    """One line naming what a run's rounding depends on (bench.run.runner.environment)."""
    device = str(env.get("device"))
    if env.get("cpu_capability"):
        device += f" ({env['cpu_capability']})"
    parts = [f"torch {env.get('torch')}", f"lightning {env.get('lightning')}", device]
    if env.get("fused_attention"):  # lesa/fused_cpu.py, recorded since it exists
        parts.append("fused attention kernel" if env["fused_attention"] == "in use"
                     else "attention on torch ops")
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    threads = env.get("threads")
    parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    parts += [f"{k}={v}" for k, v in sorted((env.get("variables") or {}).items())]
    return ", ".join(parts)


NOT_RECORDED = "not recorded (run before metrics.json had an environment)"


def environments(records: list[RunRecord]) -> dict[str, list[str]]:
    """Environment label -> ids of the finished runs in it."""
    found: dict[str, list[str]] = {}
    for r in records:
        if r.state == "done":
            env = (r.metrics or {}).get("environment")
            label = environment_label(env) if isinstance(env, dict) else NOT_RECORDED
            found.setdefault(label, []).append(r.run.id)
    return found


SHARE_METRICS = {"classification": ("shares/unary", "shares/binary"),
                 "detection": ("shares/unary", "shares/binary")}
COST_METRICS = {"classification": ("costs/params", "costs/gflops", "costs/train_images_per_s"),
                "detection": ("costs/params", "costs/gflops", "costs/train_images_per_s")}


def _simple_table(title: str, records, metrics_by_task, formats) -> Table:
    datasets = _datasets(records)
    cells = build_cells(records, metrics_by_task)
    table = Table(title=title)
    table.add_column("strategy")
    rows = _sort_rows({row for d in datasets for m in cells[d].values() for row in m})
    for d in datasets:
        for metric in metrics_by_task[DATASETS[d].task]:
            table.add_column(f"{d} {short(metric)}", justify="right")
    for row in rows:
        line = [row]
        for d in datasets:
            for metric in metrics_by_task[DATASETS[d].task]:
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


# --- exports ----------------------------------------------------------------------------------
def export_records(exp: Experiment, records: list[RunRecord]) -> dict:
    """Every cell of every table with mean, std, n and run states (the JSON export)."""
    all_metrics = {task: tuple(dict.fromkeys(spec.metrics + SHARE_METRICS[task] +
                                             COST_METRICS[task]))
                   for task, spec in TASKS.items()}
    cells = build_cells(records, all_metrics)
    out = []
    for dataset, by_metric in cells.items():
        for metric, by_row in by_metric.items():
            for row, cell in by_row.items():
                out.append({"strategy": row, "dataset": dataset, "metric": metric,
                            "mean": cell.mean, "std": cell.std, "n": cell.n,
                            "values": cell.values, "states": cell.states})
    return {"experiment": exp.name, "runs": len(records),
            "states": {s: sum(r.state == s for r in records) for s in {r.state for r in records}},
            "cells": out,
            "failed": [{"run": r.run.id, "reason": r.status.get("error"),
                        "failure": r.status.get("failure")}
                       for r in records if r.state == "failed"],
            "flagged": [{"run": r.run.id, "state": r.state, "why": FLAGGED[r.state]}
                        for r in flagged(records)],
            "environments": [{"environment": label, "runs": ids}
                             for label, ids in environments(records).items()]}


def _export_text(exp, records, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(export_records(exp, records), indent=2)
    header, body = ablation_rows(build_cells(records, ABLATION_METRICS), _datasets(records))
    rows = [[line[0]] + [_text(v) for v in line[1:]] for line in body]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["strategy", "dataset", "metric", "mean", "std", "n", "states"])
        for item in export_records(exp, records)["cells"]:
            writer.writerow([item["strategy"], item["dataset"], item["metric"], item["mean"],
                             item["std"], item["n"], json.dumps(item["states"])])
        return buf.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        notes = [f"failed: {r.run.id}: {r.status.get('error')}" for r in records
                 if r.state == "failed"] + [f"flagged: {line}" for line in _flag_lines(records)]
        envs = environments(records)
        if len(envs) > 1:
            notes += [f"mixed environments: {label}: {len(ids)} run(s)"
                      for label, ids in envs.items()]
        if notes:
            lines += [""] + [f"- {note}" for note in notes]
        return "\n".join(lines) + "\n"
    # latex
    esc = lambda s: s.replace("_", r"\_").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")  # noqa
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot(exp: Experiment, records: list[RunRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = _datasets(records)
    cells = build_cells(records, ABLATION_METRICS)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        metric = ABLATION_METRICS[DATASETS[dataset].task][0]
        by_row = cells[dataset][metric]
        rows = [r for r in _sort_rows(by_row) if by_row[r].mean is not None]
        means = [by_row[r].mean * 100 for r in rows]
        stds = [by_row[r].std * 100 for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=4,
               color=["#888888" if r.startswith("conv") else "#3b75af" for r in rows])
        ax.set_xticks(range(len(rows)), rows, rotation=30, ha="right")
        ax.set_ylabel(f"{short(metric)} (%)")
        ax.set_title(dataset)
        if means:
            low = min(m - s for m, s in zip(means, stds))
            ax.set_ylim(max(0, low - 5), min(100, max(means) + 5))
    fig.suptitle(f"{exp.name}: mean ± std over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(exp: Experiment, results: Path, console: Console, fmt: str | None,
         output: Path | None, plot_path: Path | None) -> int:
    records = collect(exp, exp.runs, results)
    if not any(r.state != "pending" for r in records):
        console.print(f"[yellow]no results yet for {exp.name} in "
                      f"{experiment_dir(results, exp.name)}: run `lesa-bench run "
                      f"{exp.path or exp.name}` first")
    if fmt:
        text = _export_text(exp, records, fmt)
        if output:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
            console.print(f"wrote {output}")
        else:
            print(text, end="")
    else:
        print_tables(exp, records, console)
    if plot_path:
        plot(exp, records, plot_path)
        console.print(f"wrote {plot_path}")
    return 0
