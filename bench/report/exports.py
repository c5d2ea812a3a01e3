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
import tempfile
from pathlib import Path

from bench.config import ConfigError, Experiment
from bench.report.analysis import Analysis, Row, analyse
from bench.report.records import FLAGGED, RunRecord, environments, flag_lines, flagged
from bench.report.shares import csv_rows, export_shares
from bench.report.views import LEGEND, tables
from bench.store import RunState

COMPARISON_KEYS = ("baseline", "method", "paired", "n_pairs", "diff", "ci_low", "ci_high", "p",
                   "p_wilcoxon", "p_adjusted", "effect_size", "verdict", "seeds_needed", "note")


def _finite(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _comparison(row: Row) -> dict | None:
    c = row.comparison
    if c is None:
        return None
    return {key: _finite(getattr(c, key)) for key in COMPARISON_KEYS}


def _cell(a: Analysis, dataset: str, metric: str, row: Row) -> dict:
    s = row.stats
    try:
        seeds = sorted(s.values)
    except TypeError:  # seeds of mixed types
        seeds = sorted(s.values, key=str)
    return {"strategy": row.name, "dataset": dataset, "metric": metric,
            "unit": a.column(dataset, metric).unit, "n": s.n, "mean": s.mean, "std": s.std,
            "ci_low": s.ci_low, "ci_high": s.ci_high, "confidence": s.confidence, "note": s.note,
            "seeds": seeds, "values": [s.values[k] for k in seeds],
            "states": dict(sorted(row.cell.states.items())), "best": row.best,
            "is_baseline": row.is_baseline, "comparison": _comparison(row)}


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


def export_records(exp: Experiment, records: list[RunRecord],
                   analysis: Analysis | None = None) -> dict:
    """Everything the tables show, and the per-seed values behind it (the JSON export)."""
    a = analysis or analyse(exp, records)
    cells = [_cell(a, d, m, row) for (d, m), col in a.columns.items() for row in col.rows.values()]
    states: dict[str, int] = {}
    for r in records:
        states[str(r.state)] = states.get(str(r.state), 0) + 1
    return {"experiment": exp.name, "runs": len(records), "states": dict(sorted(states.items())),
            "baseline": a.baseline, "baseline_note": a.baseline_note, "alpha": a.alpha,
            "min_effect": a.min_effect, "cells": cells, "buckets": _buckets(a),
            "bootstrap": _bootstrap(a),
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
              "states", "note"]


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
                         "; ".join(filter(None, [item["note"], c.get("note")]))])
    # the bootstrap over test images: metric "bootstrap/<statistic>", the same columns
    for dataset, b in report["bootstrap"].items():
        for name, s in b["strategies"].items():
            for stat, iv in s["intervals"].items():
                d = s["differences"].get(stat) or {}
                writer.writerow([name, dataset, f"bootstrap/{stat}", "%", len(s["seeds"]),
                                 iv["estimate"], None, iv["ci_low"], iv["ci_high"],
                                 b["baseline"] if d else None, d.get("estimate"),
                                 d.get("ci_low"), d.get("ci_high"), None, None, None, None,
                                 f"paired bootstrap over {b['n_images']} test images", None,
                                 None, None, json.dumps(s["seeds"]), None, None, b["note"]])
    # the share analysis: metric "share_analysis/<scope>/unary" (vs init), "share_boxes/..."
    for dataset, t in a.shares.items():
        for line in csv_rows(t, dataset) if t else []:
            writer.writerow([line.get(k) for k in CSV_HEADER])
    return buf.getvalue()


def _md(a: Analysis, records: list[RunRecord]) -> str:
    lines = []
    for dataset in a.datasets:
        for t in tables(a, dataset):
            lines += [f"**{t.title}**", "", "| " + " | ".join(t.header) + " |",
                      "|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|"]
            lines += ["| " + " | ".join(f"**{c}**" if best and c else c for c in r) + " |"
                      for r, best in zip(t.rows, t.best)]
            lines += [""] + [f"- {n}" for n in t.notes] + ([""] if t.notes else [])
    notes = [f"failed: {r.run.id}: {r.status.get('error')}" for r in records
             if r.state == RunState.FAILED] + [f"flagged: {line}" for line in flag_lines(records)]
    envs = environments(records)
    if len(envs) > 1:
        notes += [f"mixed environments: {label}: {len(ids)} run(s)" for label, ids in envs.items()]
    lines += [f"- {n}" for n in notes + ([LEGEND] if a.datasets else [])]
    return "\n".join(lines) + "\n"


def _latex(a: Analysis) -> str:
    def esc(s: str) -> str:
        for old, new in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"),
                         ("&", r"\&"), ("#", r"\#"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"),
                         ("†", r"$^\dagger$")):
            s = s.replace(old, new)
        return s

    lines = []
    for dataset in a.datasets:
        for t in tables(a, dataset):
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
    return _latex(a)


def plot_formats() -> list[str]:
    """The file suffixes matplotlib can save a figure as (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_output(path: Path, flag: str, suffixes: list[str] | None = None,
                 example: str = "report.txt") -> None:
    """ConfigError naming the flag and the path when a report output cannot be written there:
    checked before the report is computed, so nothing is half-written."""
    where = f"{flag} {path}"
    if path.is_dir():
        raise ConfigError(f"{where}: is a folder; give a file name in it, e.g. "
                          f"{path / example}")
    if suffixes is not None and path.suffix.lower().lstrip(".") not in suffixes:
        raise ConfigError(f"{where}: cannot tell the format from {path.suffix or 'no suffix'!r}; "
                          f"end the name in one of .{', .'.join(suffixes)}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{where}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: the folder {folder} is not writable (read-only or no "
                          f"permission); choose another path")


@contextlib.contextmanager
def atomic_output(path: Path, flag: str):
    """Yields a temp path beside `path` (same suffix, so a writer can tell the format); renamed
    over `path` when the block succeeds, removed when it fails: a reader never sees half a
    file. An OSError becomes a ConfigError naming the flag and the path."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp",
                                    dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        umask = os.umask(0)  # mkstemp makes 0600; the output gets the usual new-file mode
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        yield tmp
        os.replace(tmp, path)
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
