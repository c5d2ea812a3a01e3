"""The report as text for other tools: JSON (every cell with its per-seed values, CI,
comparison and verdict, plus the detection bootstrap), CSV (one line per cell), Markdown and
LaTeX (the terminal's tables, from the same builder: bench/report/views.py); the share
analysis in each (bench/report/shares.py)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path

from rich.markup import escape

from bench.config import ConfigError, Experiment
from bench.plugins import versions_text
from bench.report.analysis import Analysis, Row, analyse
from bench.report.interval_exports import cell_extras, csv_lines, headline_export, images_export
from bench.report.records import FLAGGED, RunRecord, environments, flagged
from bench.report.shares import csv_rows, export_shares
from bench.report.views import Line, report_items
from bench.store import RunState

COMPARISON_KEYS = ("baseline", "method", "paired", "n_pairs", "diff", "ci_low", "ci_high", "p",
                   "p_wilcoxon", "p_adjusted", "effect_size", "verdict", "seeds_needed", "note",
                   # with a margin (equivalence) and under a planned sequential design
                   "margin", "p_equivalence", "p_equivalence_adjusted", "equivalence_low",
                   "equivalence_high", "within_margin", "within_margin_shown", "looks", "look",
                   "stop_reason", "bound")


def _finite(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _comparison(row: Row) -> dict | None:
    c = row.comparison
    if c is None:
        return None
    out = {key: _finite(getattr(c, key)) for key in COMPARISON_KEYS}
    out["looks"] = list(c.looks) if c.looks is not None else None
    return out


def _cell(a: Analysis, dataset: str, metric: str, row: Row) -> dict:
    s = row.stats
    try:
        seeds = sorted(s.values)
    except TypeError:  # seeds of mixed types
        seeds = sorted(s.values, key=str)
    comparison = _comparison(row)
    return {"strategy": row.name, "dataset": dataset, "metric": metric,
            "unit": a.column(dataset, metric).unit, "n": s.n, "mean": s.mean, "std": s.std,
            "ci_low": s.ci_low, "ci_high": s.ci_high, "confidence": s.confidence, "note": s.note,
            "seeds": seeds, "values": [s.values[k] for k in seeds],
            "states": dict(sorted(row.cell.states.items())), "best": row.best,
            "is_baseline": row.is_baseline, "comparison": comparison,
            # data splits as blocks: each split's comparison, the variance table, pairing
            **cell_extras(row, comparison, COMPARISON_KEYS)}


def _interval(iv) -> dict | None:
    if iv is None:
        return None
    return {"estimate": _finite(iv.estimate), "ci_low": _finite(iv.ci_low),
            "ci_high": _finite(iv.ci_high), "nan_resamples": iv.nan_resamples}


def _bootstrap(a: Analysis) -> dict:
    out = {}
    for dataset, b in sorted(a.bootstrap.items()):
        out[dataset] = {
            "n_images": b.n_images, "n_resamples": b.n_resamples, "seed": b.seed,
            "confidence": b.confidence, "method": "percentile, paired over test images",
            "baseline": b.baseline, "note": b.note,
            "strategies": {name: {"seeds": s.seeds,
                                  "intervals": {k: _interval(v) for k, v in s.intervals.items()},
                                  "differences": {k: _interval(v)
                                                  for k, v in s.differences.items()}}
                           for name, s in b.strategies.items()}}
    return out


def _buckets(a: Analysis) -> dict:
    return {dataset: {name: {"range_px": list(a.bucket_range(dataset, name)),
                             "n_boxes": s.n_boxes if s else None,
                             "too_few": s.too_few if s else None,
                             "threshold": s.threshold if s else None,
                             "note": s.note if s else "no predictions.npz to count boxes from"}
                      for name, s in by_name.items()}
            for dataset, by_name in sorted(a.buckets.items())}


def _families(a: Analysis) -> dict:
    """Per dataset, which rows are compared with which (bench/report/families.py)."""
    return {d: [{"baseline": f.baseline, "members": list(f.members),
                 "fixed": {axis: text for axis, text in f.fixed}} for f in found]
            for d, found in sorted(a.families.items())}


def export_records(exp: Experiment, records: list[RunRecord],
                   analysis: Analysis | None = None) -> dict:
    """Everything the tables show, and the per-seed values behind it (the JSON export)."""
    a = analysis or analyse(exp, records)
    cells = [_cell(a, d, m, row) for (d, m), col in a.columns.items() for row in col.rows.values()]
    states: dict[str, int] = {}
    for r in records:
        states[str(r.state)] = states.get(str(r.state), 0) + 1
    return {"experiment": exp.name, "description": a.description, "runs": len(records),
            "states": dict(sorted(states.items())), "compare": a.compare, "varies": a.varies,
            "families": _families(a),
            "baseline": a.baseline, "baseline_note": a.baseline_note, "alpha": a.alpha,
            "analysis": a.design, "min_effect": a.min_effect, "cells": cells,
            "plugins": {r.run.id: versions_text(r.run.config) for r in records
                        if versions_text(r.run.config)},  # the plugin code each run used
            "buckets": _buckets(a),
            "bootstrap": _bootstrap(a),
            "images": images_export(a),  # classification: tests over test images
            "headline": headline_export(a),  # across datasets
            "shares": {d: export_shares(t) for d, t in sorted(a.shares.items()) if t},
            "failed": [{"run": r.run.id, "reason": r.status.get("error"),
                        "failure": r.status.get("failure")}
                       for r in records if r.state == RunState.FAILED],
            "flagged": [{"run": r.run.id, "state": r.state, "why": FLAGGED[r.state]}
                        for r in flagged(records)],
            "environments": [{"environment": label, "runs": ids}
                             for label, ids in environments(records).items()]}


CSV_HEADER = ["strategy", "dataset", "metric", "unit", "n", "mean", "std", "ci_low", "ci_high",
              "baseline", "diff", "diff_ci_low", "diff_ci_high", "p", "p_wilcoxon", "p_adjusted",
              "effect_size", "method", "verdict", "seeds_needed", "best", "seeds", "values",
              "states", "note", "margin", "p_equivalence", "p_equivalence_adjusted",
              "within_margin", "within_margin_shown", "look", "stop_reason", "bound"]
# the comparison's columns after "note", as the JSON names them
CSV_TAIL = ("margin", "p_equivalence", "p_equivalence_adjusted", "within_margin",
            "within_margin_shown", "look", "stop_reason", "bound")


def _csv(a: Analysis, report: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for item in report["cells"]:
        c = item["comparison"] or {}
        writer.writerow([item["strategy"], item["dataset"], item["metric"], item["unit"],
                         item["n"], item["mean"], item["std"], item["ci_low"], item["ci_high"],
                         c.get("baseline"), c.get("diff"), c.get("ci_low"), c.get("ci_high"),
                         c.get("p"), c.get("p_wilcoxon"), c.get("p_adjusted"),
                         c.get("effect_size"), c.get("method"),
                         "baseline" if item["is_baseline"] else c.get("verdict"),
                         c.get("seeds_needed"), item["best"], json.dumps(item["seeds"]),
                         json.dumps(item["values"]), json.dumps(item["states"]),
                         "; ".join(filter(None, [item["note"], c.get("note")])),
                         *(c.get(key) for key in CSV_TAIL)])
    # the bootstrap over test images: metric "bootstrap/<statistic>", the same columns
    for dataset, b in report["bootstrap"].items():
        for name, s in b["strategies"].items():
            for statistic, iv in s["intervals"].items():
                d = s["differences"].get(statistic) or {}
                writer.writerow([name, dataset, f"bootstrap/{statistic}", "%", len(s["seeds"]),
                                 iv["estimate"], None, iv["ci_low"], iv["ci_high"],
                                 b["baseline"] if d else None, d.get("estimate"),
                                 d.get("ci_low"), d.get("ci_high"), None, None, None, None,
                                 f"paired bootstrap over {b['n_images']} test images", None,
                                 None, None, json.dumps(s["seeds"]), None, None, b["note"]])
    # per split, the variance table, the tests over test images, the headline
    writer.writerows(csv_lines(report, CSV_HEADER))
    # the share analysis: metric "share_analysis/<scope>/unary" (vs init), "share_boxes/..."
    for dataset, t in a.shares.items():
        for line in csv_rows(t, dataset) if t else []:
            writer.writerow([line.get(k) for k in CSV_HEADER])
    return buf.getvalue()


def _md(a: Analysis, records: list[RunRecord]) -> str:
    """Every table and line the terminal shows (views.report_items), as Markdown."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = []
    for item in report_items(a, records):
        if isinstance(item, Line):
            if item.kind == "description":
                lines += [f"**{item.label}** {item.text}", ""]
            else:
                lines.append(("  " if item.indent else "") + f"- {item.plain()}")
            continue
        if lines and lines[-1].startswith(("-", " ")):
            lines.append("")
        t = item
        lines += [f"**{t.title}**", "", "| " + " | ".join(map(cell, t.header)) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|"]
        lines += ["| " + " | ".join(f"**{cell(c)}**" if best and c else cell(c) for c in r)
                  + " |" for r, best in zip(t.rows, t.best)]
        # a note indented under the one before it (a family of several) is a nested item
        lines += [""] + [f"  - {n.strip()}" if n.startswith("  ") else f"- {n}"
                         for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(lines).rstrip("\n") + "\n"


LATEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
         "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
         "±": r"$\pm$", "Δ": r"$\Delta$", "†": r"$^\dagger$"}


def _latex(a: Analysis, records: list[RunRecord]) -> str:
    """Every table (a tabular each) and line (a comment) the terminal shows, as LaTeX."""
    def esc(s: str) -> str:
        return "".join(LATEX.get(ch, ch) for ch in s)

    lines = []
    for item in report_items(a, records):
        if isinstance(item, Line):  # a comment per line of it (a description may have several)
            lines += [f"% {part}" for part in esc(item.plain()).splitlines()]
            continue
        t = item
        lines += [f"% {esc(t.title)}", r"\begin{tabular}{l" + "r" * (len(t.header) - 1) + "}",
                  r"\toprule", " & ".join(esc(h) for h in t.header) + r" \\", r"\midrule"]
        lines += [" & ".join(r"\textbf{" + esc(c) + "}" if best and c else esc(c)
                             for c in r) + r" \\" for r, best in zip(t.rows, t.best)]
        lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {esc(n)}" for n in t.notes] + [""]
    return "\n".join(lines) + "\n"


def export_text(exp, records, fmt: str, analysis: Analysis | None = None) -> str:
    """The report in `fmt`: json, csv, md or latex."""
    a = analysis or analyse(exp, records)
    if fmt == "json":
        return json.dumps(export_records(exp, records, a), indent=2, sort_keys=True)
    if fmt == "csv":
        return _csv(a, export_records(exp, records, a))
    if fmt == "md":
        return _md(a, records)
    return _latex(a, records)


def plot_formats() -> list[str]:
    """The file suffixes matplotlib can save a figure as (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def output_target(path: Path, flag: str) -> Path:
    """Where writing `path` lands: the file a link (or a chain of links) points to, else `path`.
    Writing replaces the target's content, never the link."""
    if not path.is_symlink():
        return path
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's symlink loop
        raise ConfigError(f"{flag} {path}: is a link loop; choose another path") from None


def _special(target: Path) -> bool:
    """A FIFO, a device, ...: written directly (a temp file renamed over it would replace it)."""
    return target.exists() and not target.is_file() and not target.is_dir()


def check_output(path: Path, flag: str, suffixes: list[str] | None = None,
                 example: str = "report.txt") -> None:
    """ConfigError naming the flag and the path when a report output cannot be written there:
    checked before the report is computed, so nothing is half-written. A missing folder is
    refused, not created (a typo in it would scatter reports)."""
    where = f"{flag} {path}"
    if path.is_dir():
        raise ConfigError(f"{where}: is a folder; give a file name in it, e.g. "
                          f"{path / example}")
    if suffixes is not None and path.suffix.lower().lstrip(".") not in suffixes:
        raise ConfigError(f"{where}: cannot tell the format from {path.suffix or 'no suffix'!r}; "
                          f"end the name in one of .{', .'.join(suffixes)}")
    target = output_target(path, flag)
    if target != path:
        where = f"{where} (a link to {target})"
    if target.is_socket():
        raise ConfigError(f"{where}: is a socket, not a file; choose another path")
    if _special(target):  # a FIFO or a device: written in place
        if not os.access(target, os.W_OK):
            raise ConfigError(f"{where}: is not writable (no permission); choose another path")
        return
    folder = target.parent
    if not folder.exists():
        raise ConfigError(f"{where}: the folder {folder} does not exist; create it first "
                          f"(mkdir -p {folder}) or choose another path")
    if not folder.is_dir():
        raise ConfigError(f"{where}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: the folder {folder} is not writable (read-only or no "
                          f"permission); choose another path")
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{where}: is read-only; make it writable or choose another path")


@contextlib.contextmanager
def atomic_output(path: Path, flag: str):
    """Yields a temp path (same suffix as `path`, so a writer can tell the format). When the
    block succeeds, it is renamed over `path`'s target (through a link; the file's mode is
    kept), or copied into it when that is a FIFO or a device; when it fails it is removed: a
    reader never sees half a file. An OSError becomes a ConfigError naming the flag and the
    path (a full disk, /dev/full)."""
    tmp = None
    try:
        target = output_target(path, flag)
        special = _special(target)
        # beside the target, for an atomic rename; a FIFO's or device's folder may be /dev
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=path.suffix or ".tmp",
                                    dir=None if special else target.parent)
        os.close(fd)
        tmp = Path(name)
        if target.is_file():
            mode = stat.S_IMODE(target.stat().st_mode)
        else:  # mkstemp makes 0600; a new output gets the usual new-file mode
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        tmp.chmod(mode)
        yield tmp
        if special:
            with open(tmp, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            os.replace(tmp, target)
            tmp = None
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write it ({err.strerror or err}); choose "
                          f"another path") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_output(path: Path, text: str, flag: str = "--output") -> None:
    with atomic_output(path, flag) as tmp:
        tmp.write_text(text)


def emit(text: str, output: Path | None, console) -> None:
    """An export: written to `output` (and said on the console), else printed to stdout."""
    if output:
        write_output(output, text)
        console.print(f"wrote {escape(str(output))}")
    else:
        print(text, end="")
