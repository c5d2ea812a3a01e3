"""Training curves for the report: each run's logs/metrics.csv (every epoch's validation metric
and training loss), and per dataset and row the mean and the 95 % t band over seeds at each
epoch (bench.stats.curves). Whether a strategy learns faster or only ends higher: where the
bands part early and stay apart, or cross. Drawn by plots.py (`report --plot`, `--html`).

A run contributes the epochs it logged (ragged: stopped, resumed, still running); a band uses
the seeds that have a value at that epoch (`n`). Where data.split_seed is a matrix axis the
band is over every (split, seed) block of the row. No torch.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.report.records import cell_key, row_key, scale, short
from bench.stats.curves import Curve, curve
from bench.store import RunState

METRICS_CSV = Path("logs") / "metrics.csv"
TRAIN_LOSS = "train/loss_epoch"


@dataclass
class DatasetCurves:
    """One dataset: the validation metric and the training loss per row, in display units."""
    dataset: str
    metric: str                 # the validation metric drawn: val/acc1, val/map_50
    unit: str
    val: dict[str, Curve] = field(default_factory=dict)
    loss: dict[str, Curve] = field(default_factory=dict)


def read_log(path: Path, columns: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """{column: {epoch: value}} from a metrics.csv (the last value logged in each epoch; empty
    cells, NaN and unreadable files give nothing)."""
    out: dict[str, dict[int, float]] = {c: {} for c in columns}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                epoch = row.get("epoch")
                if not epoch:
                    continue
                for c in columns:
                    text = row.get(c)
                    if text:
                        try:
                            value = float(text)
                        except ValueError:
                            continue
                        if math.isfinite(value):
                            out[c][int(float(epoch))] = value
    except (OSError, csv.Error, UnicodeDecodeError):
        return {c: {} for c in columns}
    return out


def dataset_curves(a, confidence: float = 0.95) -> list[DatasetCurves]:
    """The curves of every dataset of the analysis (runs done, running or stopped alike)."""
    out = []
    for dataset in a.datasets:
        headline = a.headline(dataset)[0]
        metric = "val/" + short(headline)
        k = scale(headline)
        runs: dict[str, dict] = {}
        for r in a.records:
            if r.run.config["data"]["name"] != dataset or r.folder is None \
                    or r.state in ("stale", RunState.PENDING):
                continue
            log = read_log(Path(r.folder) / METRICS_CSV, (metric, TRAIN_LOSS))
            entry = runs.setdefault(row_key(r.run), {"val": {}, "loss": {}})
            key = cell_key(r.run)
            if log[metric]:
                entry["val"][key] = {e: v * k for e, v in log[metric].items()}
            if log[TRAIN_LOSS]:
                entry["loss"][key] = log[TRAIN_LOSS]
        found = DatasetCurves(dataset, metric, "%" if k == 100 else "")
        order = list(a.column(dataset, headline).rows) if (dataset, headline) in a.columns \
            else sorted(runs)
        for name in order + sorted(set(runs) - set(order)):
            entry = runs.get(name)
            if entry and entry["val"]:
                found.val[name] = curve(entry["val"], confidence)
            if entry and entry["loss"]:
                found.loss[name] = curve(entry["loss"], confidence)
        if found.val or found.loss:
            out.append(found)
    return out


__all__ = ["DatasetCurves", "dataset_curves", "read_log"]
