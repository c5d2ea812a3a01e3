"""The ablation as a bar chart (PNG): each dataset's headline metric, mean ± std over seeds."""
from __future__ import annotations

from pathlib import Path

from bench.config import Experiment
from bench.data import DATASETS
from bench.report.records import (ABLATION_METRICS, RunRecord, build_cells, dataset_names,
                                  short, sort_rows)


def plot(exp: Experiment, records: list[RunRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = dataset_names(records)
    cells = build_cells(records, ABLATION_METRICS)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        metric = ABLATION_METRICS[DATASETS[dataset].task][0]
        by_row = cells[dataset][metric]
        rows = [r for r in sort_rows(by_row) if by_row[r].mean is not None]
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
