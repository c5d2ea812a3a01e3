"""One headline across the tasks of an experiment (bench.stats.aggregate.headline): for each row
against its baseline, over every dataset the experiment runs, the mean of the per-task paired
differences in each task's own headline metric (acc1, map_50), the IQM of min-max normalised
scores and the probability of improvement, with intervals from a bootstrap that resamples the
seeds of each task jointly for every row (so the pairs are kept) and, as a check, the tasks.

Families that agree on what they share (families.Family.fixed) are one headline: rows are
named alike in every dataset, so a row is in the headline where every dataset has it. Where
data.split_seed is a matrix axis, each (split, seed) block is a unit of the resampling: the
headline treats a task's blocks as exchangeable (docs/statistics.md). No torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.report.records import scale
from bench.stats.aggregate import Headline, headline


@dataclass
class CrossTask:
    """One headline: the families it joins (what they share), their baseline and datasets."""
    label: str
    baseline: str
    datasets: list[str]
    metrics: dict[str, str]  # dataset -> the metric of its task that enters
    result: Headline


def cross_task(a, confidence: float = 0.95) -> list[CrossTask]:
    """The experiment's headlines: one per group of families with a baseline, where the
    experiment has two or more datasets (one task is its own table)."""
    if len(a.datasets) < 2:
        return []
    groups: dict[tuple, dict] = {}
    for dataset in a.datasets:
        metric = a.headline(dataset)[0]
        col = a.columns.get((dataset, metric))
        if col is None:
            continue
        for f in a.families.get(dataset, []):
            if f.baseline is None or not f.members:
                continue
            g = groups.setdefault((f.fixed, f.baseline), {"label": f.label, "scores": {},
                                                           "metrics": {}})
            k = scale(metric)
            g["scores"][dataset] = {name: {s: v * k for s, v in col.rows[name].cell.by_seed
                                           .items()}
                                    for name in f.rows if name in col.rows}
            g["metrics"][dataset] = metric
    out = []
    for (_, baseline), g in groups.items():
        if len(g["scores"]) < 2:
            continue
        result = headline(g["scores"], baseline, True, confidence=confidence)
        out.append(CrossTask(g["label"], baseline, list(g["scores"]), g["metrics"], result))
    return out


__all__ = ["CrossTask", "cross_task"]
