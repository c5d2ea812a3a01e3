"""The reports in the terminal: each run's status, and the report's tables and lines
(bench/report/views.py `report_items`, which the exports render too).

No number is ever cut: cells wrap at spaces and a column is never narrower than its longest
word (a number, a run id), and a table wider than the console is split into tables of fewer
columns, each with the row names (`fit`). A column narrower than one word folds it.
"""
from __future__ import annotations

from pathlib import Path

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.config import Experiment, Run
from bench.data import DATASETS
from bench.plugins import other_versions, versions_text
from bench.report.analysis import Analysis, analyse
from bench.report.records import FLAGGED, RunRecord, collect, is_row_axis, short, value_text
from bench.report.views import Line, TextTable, report_items
from bench.store import RunState, experiment_dir
from bench.tasks import TASKS

STATE_STYLE = {"done": "green", "running": "cyan", "failed": "red", "interrupted": "yellow",
               "pending": "dim", "pruned": "yellow", "stale": "magenta", "unreadable": "magenta"}
LINE_STYLE = {"description": "bold", "legend": "dim", "warning": "yellow", "failed": "red",
              "flagged": "magenta", "dim": "dim"}


def _longest_word(texts) -> int:
    return max((cell_len(w) for t in texts for w in str(t).split()), default=1)


def extra_axes(runs: list[Run]) -> list[str]:
    """The matrix axes a status table needs beyond strategy, data and seed to tell runs apart:
    every other axis, but a bundle whose values the dataset already tells apart."""
    values: dict[str, list] = {}
    for run in runs:
        for axis, value in run.axes.items():
            seen = values.setdefault(axis, [])
            if value not in seen:
                seen.append(value)
    out = []
    for axis, seen in values.items():
        if axis in ("model.fusion", "seed", "data.name"):
            continue
        names = [v.get("data.name") for v in seen if isinstance(v, dict)]
        if not is_row_axis(axis, seen) and len(set(map(str, names))) == len(seen):
            continue  # the data column tells them apart
        out.append(axis)
    return out


def _axis_text(axis: str, value) -> str:
    if isinstance(value, dict):  # what the fusion and data columns do not show already
        value = {k: v for k, v in value.items() if k not in ("model.fusion", "data.name")}
        return ",".join(f"{k}={v}" for k, v in value.items()).replace(" ", "") or "-"
    return value_text(axis, value)


def print_status(exp: Experiment, runs: list[Run], results: Path, console: Console,
                 title: str = "status") -> None:
    records = collect(exp, runs, results)
    from bench.cluster.queue import status_column

    jobs = status_column(records)  # each run's SLURM array task and its state, if submitted
    axes = extra_axes(runs)
    # the plugin versions the runs used (bench/plugins.py), where any run uses a plugin
    plugins = {r.id: versions_text(r.config) for r in runs}
    shown = ["plugin"] if any(plugins.values()) else []
    header = ["run", "fusion", "data", *shown, *axes, "seed", "state",
              *(["slurm job"] if jobs else []), "progress", "time", "note"]
    t = TextTable(f"{exp.name}: {title} ({len(runs)} runs) in "
                  f"{experiment_dir(results, exp.name)}", header)
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
        t.rows.append([r.run.id, r.run.config["model"]["fusion"], r.run.config["data"]["name"],
                       *([plugins[r.run.id] or "-"] if shown else []),
                       *[_axis_text(a, r.run.axes[a]) if a in r.run.axes else "-" for a in axes],
                       str(r.run.config["seed"]), r.state,
                       *([jobs.get(r.run.id, "")] if jobs else []), progress, elapsed, note])
        t.best.append(False)
        t.styles.append({header.index("state"): STATE_STYLE.get(r.state, "default")})
    right = [i for i, h in enumerate(header) if h in ("seed", "time")]
    for table in fit(t, getattr(console, "width", None), right):
        console.print(table)
    console.print("  ".join(f"[{STATE_STYLE.get(k, 'default')}]{k}: {v}[/]"
                            for k, v in counts.items()))
    for line in other_versions(experiment_dir(results, exp.name), {r.id for r in runs},
                               [r.config for r in runs]):
        console.print(f"[magenta]plugin {escape(line)}[/]", soft_wrap=True)


def rich_table(t: TextTable, columns=None, title: str | None = None,
               widths: list[int] | None = None, right=None) -> Table:
    """The text table as a rich Table (those of `columns`, default all; `widths`: their content
    widths, default natural; `right`: the columns aligned right, default all but the first):
    cells wrap at spaces, the best rows bold green, a cell of `t.styles` in its colour."""
    columns = list(range(len(t.header))) if columns is None else list(columns)
    table = Table(title=escape(t.title if title is None else title))
    for k, i in enumerate(columns):
        aligned = i in right if right is not None else i > 0
        table.add_column(escape(t.header[i]), justify="right" if aligned else "left",
                         overflow="fold", width=widths[k] if widths else None)
    for n, (line, best) in enumerate(zip(t.rows, t.best)):
        styles = t.styles[n] if n < len(t.styles) else {}
        cells = [f"[{styles[i]}]{escape(line[i])}[/]" if i in styles else escape(line[i])
                 for i in columns]
        table.add_row(*([f"[bold green]{c}[/]" for c in cells] if best else cells))
    return table


def _widths(t: TextTable, columns: list[int], width: int) -> list[int] | None:
    """Content widths for `columns` within `width` where no column is narrower than its longest
    word (the widest columns give way first); None where they fit as they are; [] where they
    cannot fit. A rich table adds 3 per column and 1 (borders and padding)."""
    texts = [[t.header[i]] + [r[i] for r in t.rows] for i in columns]
    low = [_longest_word(c) for c in texts]
    high = [max(max((cell_len(x) for x in c), default=1), lo) for c, lo in zip(texts, low)]
    room = width - 3 * len(columns) - 1
    if sum(high) <= room:
        return None
    if sum(low) > room:
        return []
    widths = list(high)
    for _ in range(sum(high) - room):
        k = max((k for k in range(len(widths)) if widths[k] > low[k]), key=widths.__getitem__)
        widths[k] -= 1
    return widths


def fit(t: TextTable, width: int | None, right=None) -> list[Table]:
    """The table as one rich Table within `width` (None: no limit), no word cut; where even that
    cannot fit, as several tables of fewer columns, each led by the row names."""
    every = list(range(len(t.header)))
    widths = None if width is None else _widths(t, every, width)
    if widths != [] or len(every) < 3:
        return [rich_table(t, widths=widths or None, right=right)]
    chunks, current = [], [0]
    for i in every[1:]:
        if len(current) == 1 or _widths(t, current + [i], width) != []:
            current.append(i)
        else:
            chunks.append(current)
            current = [0, i]
    chunks.append(current)
    return [rich_table(t, c, t.title if k == 0 else
                       f"{t.title} (continued: {', '.join(t.header[i] for i in c[1:])})",
                       _widths(t, c, width) or None, right)
            for k, c in enumerate(chunks)]


def line_markup(line: Line) -> str:
    style = LINE_STYLE.get(line.kind)
    indent = "  " if line.indent else ""
    if line.label:
        label = f"[{style}]{escape(line.label)}[/]" if style else escape(line.label)
        return f"{indent}{label} {escape(line.text)}"
    return f"{indent}[{style}]{escape(line.text)}[/]" if style else indent + escape(line.text)


def print_tables(exp: Experiment, records: list[RunRecord], console: Console,
                 analysis: Analysis | None = None) -> None:
    """Every table and line of the report (views.report_items), fitted to the console's width
    (a console without one, the HTML transcript, gets each table whole)."""
    a = analysis or analyse(exp, records)
    width = getattr(console, "width", None)
    for item in report_items(a, records):
        if isinstance(item, Line):
            console.print(line_markup(item), soft_wrap=True)
            continue
        for table in fit(item, width):
            console.print(table)
        for note in item.notes:
            console.print(f"  {escape(note)}", style="dim", soft_wrap=True)
