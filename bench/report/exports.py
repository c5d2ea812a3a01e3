"""The report as text for other tools: JSON (every cell), CSV, Markdown and LaTeX."""
from __future__ import annotations

import csv
import io
import json

from bench.config import Experiment
from bench.report.records import (ABLATION_METRICS, COST_METRICS, FLAGGED, SHARE_METRICS,
                                  RunRecord, ablation_rows, build_cells, cell_text,
                                  dataset_names, environments, flag_lines, flagged)
from bench.store import RunState
from bench.tasks import TASKS


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
                       for r in records if r.state == RunState.FAILED],
            "flagged": [{"run": r.run.id, "state": r.state, "why": FLAGGED[r.state]}
                        for r in flagged(records)],
            "environments": [{"environment": label, "runs": ids}
                             for label, ids in environments(records).items()]}


def export_text(exp, records, fmt: str) -> str:
    """The report in `fmt`: json, csv, md or latex."""
    if fmt == "json":
        return json.dumps(export_records(exp, records), indent=2)
    header, body = ablation_rows(build_cells(records, ABLATION_METRICS),
                                 dataset_names(records))
    rows = [[line[0]] + [cell_text(v) for v in line[1:]] for line in body]
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
                 if r.state == RunState.FAILED] + [f"flagged: {line}" for line in flag_lines(records)]
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
