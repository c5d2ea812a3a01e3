"""The ablation as a chart (PNG): per dataset (one panel each) the headline metric of every
strategy, its mean as a point with the 95 % CI of the mean as a whisker. The axis covers every
whisker (nothing clipped); n = 1 has no whisker and says so; "best" rows are filled."""
from __future__ import annotations

from pathlib import Path

from bench.config import Experiment
from bench.report.analysis import Analysis, analyse
from bench.report.records import RunRecord, short


def plot(exp: Experiment, records: list[RunRecord], path: Path,
         analysis: Analysis | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = analysis or analyse(exp, records)
    datasets = a.datasets or ["(no results)"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        ax.set_title(dataset)
        if dataset not in a.datasets:
            continue
        metric = a.headline(dataset)[0]
        rows = [r for r in a.column(dataset, metric).rows.values() if r.stats.mean is not None]
        lows, highs = [], []
        for x, row in enumerate(rows):
            s = row.stats
            low = s.ci_low if s.ci_low is not None else s.mean
            high = s.ci_high if s.ci_high is not None else s.mean
            lows.append(low)
            highs.append(high)
            color = "#888888" if row.is_baseline else "#3b75af"
            ax.errorbar([x], [s.mean], yerr=[[s.mean - low], [high - s.mean]], fmt="o",
                        color=color, capsize=4, markerfacecolor=color if row.best else "white")
            if s.n == 1:
                ax.annotate("n=1, no CI", (x, s.mean), textcoords="offset points",
                            xytext=(0, 8), ha="center", fontsize=7)
        ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=30, ha="right")
        ax.set_ylabel(f"{short(metric)} (%)")
        if rows:
            low, high = min(lows), max(highs)
            pad = max(0.05 * (high - low), 0.5)
            ax.set_ylim(low - pad, high + pad)  # every whisker inside the axis
            ax.set_xlim(-0.5, len(rows) - 0.5)
    fig.suptitle(f"{exp.name}: mean and 95% CI over seeds (filled: best)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
