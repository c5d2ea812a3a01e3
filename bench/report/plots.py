"""The report's charts, drawn from the analysis (bench/report/analysis.py), never recomputed:

    ablation  per dataset, each strategy's headline metric: the mean as a point, the 95 % CI
              of the mean as a whisker (`report --plot` writes it as a PNG)
    costs     per dataset, the headline metric against GFLOPs per image and against training
              images/s, one point (with its CI whisker) per strategy
    shares    per dataset, each strategy's unary share: trained (point, CI whisker), the same
              model at initialisation (hollow), the null (red dash)
    curves    per dataset, the validation metric and the training loss against epoch: per
              strategy the mean over seeds and its pointwise 95 % band (`--plot` draws them
              under the ablation)
    headline  across datasets, per strategy against the baseline: IQM gain and P(improvement),
              the seed-bootstrap interval (thick) and the task-resampled one (thin)

Points and whiskers, never bars: a bar's length reads as the value, so bars need an axis from
0, where 1-point gaps vanish; points can sit on an axis fitted to the data. Every axis covers
every whisker and null (nothing clipped); n = 1 has no whisker and says so.
"""
from __future__ import annotations

from pathlib import Path

from bench.config import Experiment
from bench.report.analysis import Analysis, analyse
from bench.report.records import RunRecord, short

BLUE, GREY, RED = "#3b75af", "#888888", "#c0392b"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fit(ax, lows: list[float], highs: list[float], axis: str = "y") -> None:
    """Limits that hold every value and whisker, with a margin."""
    if not lows:
        return
    low, high = min(lows), max(highs)
    pad = max(0.05 * (high - low), 0.5)
    # more room above: the "n=1, no CI" notes sit over their points
    (ax.set_ylim if axis == "y" else ax.set_xlim)(low - pad, high + 2 * pad)


def _whisker(ax, x: float, s, color: str, filled: bool, note_n1: bool = True):
    """A point at the mean with its CI whisker; the (low, high) it spans."""
    low = s.ci_low if s.ci_low is not None else s.mean
    high = s.ci_high if s.ci_high is not None else s.mean
    ax.errorbar([x], [s.mean], yerr=[[s.mean - low], [high - s.mean]], fmt="o", color=color,
                capsize=4, markerfacecolor=color if filled else "white")
    if note_n1 and s.n == 1:
        ax.annotate("n=1, no CI", (x, s.mean), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=7)
    return low, high


def ablation_figure(a: Analysis, name: str):
    plt = _pyplot()
    datasets = a.datasets or ["(no results)"]
    fig = plt.figure(figsize=(max(5 * len(datasets), 7), 4.2))
    _ablation(fig, a, name)
    fig.tight_layout()
    return fig


def _ablation(fig, a: Analysis, name: str) -> None:
    """The ablation panels drawn into `fig` (a figure or a subfigure)."""
    datasets = a.datasets or ["(no results)"]
    axes = fig.subplots(1, len(datasets), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        ax.set_title(dataset)
        if dataset not in a.datasets:
            continue
        metric = a.headline(dataset)[0]
        rows = [r for r in a.column(dataset, metric).rows.values() if r.stats.mean is not None]
        lows, highs = [], []
        for x, row in enumerate(rows):
            low, high = _whisker(ax, x, row.stats, GREY if row.is_baseline else BLUE,
                                 bool(row.best))
            lows.append(low)
            highs.append(high)
        ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=30, ha="right")
        ax.set_ylabel(f"{short(metric)} (%)")
        _fit(ax, lows, highs)
        if rows:
            ax.set_xlim(-0.5, len(rows) - 0.5)
    blocked = any(c.blocked for c in a.columns.values())  # splits as blocks: over split means
    fig.suptitle(f"{name}: mean and 95% CI over "
                 f"{'the data splits (two-level)' if blocked else 'seeds'} (filled: best)")


COSTS = (("costs/gflops", "GFLOPs per image"),
         ("costs/train_images_per_s", "training images/s"))


def costs_figure(a: Analysis, name: str):
    """Metric against cost; None where no dataset has costs."""
    panels = [(d, metric, label) for d in a.datasets for metric, label in COSTS
              if (d, metric) in a.columns]
    if not panels:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.6 * len(panels), 7), 4.2),
                             squeeze=False)
    for ax, (dataset, cost, label) in zip(axes[0], panels):
        metric = a.headline(dataset)[0]
        costs = a.column(dataset, cost).rows
        lows, highs = [], []
        for row in a.column(dataset, metric).rows.values():
            x = costs[row.name].stats.mean if row.name in costs else None
            if row.stats.mean is None or x is None:
                continue
            low, high = _whisker(ax, x, row.stats, GREY if row.is_baseline else BLUE,
                                 bool(row.best), note_n1=False)
            ax.annotate(row.name, (x, row.stats.mean), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
            lows.append(low)
            highs.append(high)
        ax.set_title(f"{dataset}: {short(metric)} vs {label}", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{short(metric)} (%)")
        ax.margins(x=0.15)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # GFLOPs labels like 0.00625 collide
        _fit(ax, lows, highs)
    fig.suptitle(f"{name}: metric against cost, per strategy (mean, 95% CI; filled: best)")
    fig.tight_layout()
    return fig


def shares_figure(a: Analysis, name: str):
    """Unary shares against their nulls; None where no dataset has shares."""
    datasets = [d for d in a.datasets if a.shares.get(d)]
    if not datasets:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5 * len(datasets), 8), 4.2),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in a.shares[dataset].rows
                if r.scope == "all" and r.trained.mean is not None]
        lows, highs = [], []
        for x, row in enumerate(rows):
            low, high = _whisker(ax, x, row.trained, BLUE, True)
            lows.append(low)
            highs.append(high)
            if row.initial.mean is not None:
                ax.plot([x + 0.18], [row.initial.mean], "o", color=GREY,
                        markerfacecolor="white")
                lows.append(row.initial.mean)
                highs.append(row.initial.mean)
            if row.null is not None:
                ax.plot([x - 0.3, x + 0.3], [row.null, row.null], color=RED, lw=2)
                lows.append(row.null)
                highs.append(row.null)
        ax.set_xticks(range(len(rows)), [r.strategy for r in rows], rotation=30, ha="right")
        ax.set_ylabel("unary share (%)")
        ax.set_title(dataset)
        _fit(ax, lows, highs)
        if rows:
            ax.set_xlim(-0.6, len(rows) - 0.4)
    fig.suptitle(f"{name}: unary share trained (blue, 95% CI), at init (hollow), null (red)")
    fig.tight_layout()
    return fig


def _curves(fig, found: list, name: str) -> None:
    """Per dataset two panels, the validation metric and the training loss against epoch: per
    row the mean over seeds (line) and its pointwise t band (shaded)."""
    from matplotlib.ticker import MaxNLocator

    axes = fig.subplots(1, 2 * len(found), squeeze=False)[0]
    colours = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for k, d in enumerate(found):
        for ax, curves, label in ((axes[2 * k], d.val, f"{d.metric}" + (f" ({d.unit})"
                                                                         if d.unit else "")),
                                  (axes[2 * k + 1], d.loss, "training loss")):
            for i, (row, c) in enumerate(curves.items()):
                colour = colours[i % len(colours)]
                x = c.epochs + 1  # epochs completed
                ax.plot(x, c.mean, color=colour, lw=1.6, label=row, marker="o", ms=3)
                ok = c.n > 1
                ax.fill_between(x[ok], c.ci_low[ok], c.ci_high[ok], color=colour, alpha=0.18,
                                lw=0)
            ax.set_title(f"{d.dataset}: {label}", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            if curves:
                ax.legend(fontsize=7)
    fig.suptitle(f"{name}: mean over seeds and pointwise 95% band per epoch")


def curves_figure(a: Analysis, name: str):
    """The training curves; None where no run logged any."""
    found = a.curves
    if not found:
        return None
    fig = _pyplot().figure(figsize=(max(4.6 * 2 * len(found), 7), 4.2))
    _curves(fig, found, name)
    fig.tight_layout()
    return fig


def headline_figure(a: Analysis, name: str):
    """The headline across datasets: per row its IQM gain and P(improvement) with the seed
    bootstrap interval (thick) and the task-resampled one (thin, grey); None without one."""
    found = [h for h in a.headlines if h.result.rows]
    if not found:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(found), 2, figsize=(10, 3.6 * len(found)), squeeze=False)
    for (ax_iqm, ax_p), h in zip(axes, found):
        rows = list(h.result.rows.values())
        for ax, key, null, label in ((ax_iqm, "iqm_gain", 0.0, "IQM gain (normalised)"),
                                     (ax_p, "p_improvement", 0.5, "P(improvement)")):
            lows, highs = [null], [null]
            for x, row in enumerate(rows):
                e = getattr(row, key)
                if e.tasks is not None:
                    ax.plot([x + 0.15] * 2, [e.tasks.ci_low, e.tasks.ci_high], color=GREY, lw=1)
                    lows.append(e.tasks.ci_low)
                    highs.append(e.tasks.ci_high)
                ax.errorbar([x], [e.estimate], yerr=[[e.estimate - e.seeds.ci_low],
                                                     [e.seeds.ci_high - e.estimate]],
                            fmt="o", color=BLUE, capsize=4, lw=2)
                lows.append(e.seeds.ci_low)
                highs.append(e.seeds.ci_high)
            ax.axhline(null, color=RED, lw=1, ls="--")
            ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=30, ha="right")
            ax.set_xlim(-0.5, len(rows) - 0.5)
            ax.set_ylabel(label)
            ax.set_title(f"vs {h.baseline} over {', '.join(h.datasets)}"
                         + (f"; {h.label}" if h.label else ""), fontsize=9)
            low, high = min(lows), max(highs)
            pad = max(0.05 * (high - low), 0.02)
            ax.set_ylim(low - pad, high + pad)
    fig.suptitle(f"{name}: headline across datasets (95% CI: seeds, thick; datasets too, "
                 f"thin grey; red: no difference)")
    fig.tight_layout()
    return fig


def plot(exp: Experiment, records: list[RunRecord], path: Path,
         analysis: Analysis | None = None) -> None:
    """`report --plot FILE.png`: the ablation chart and, under it, the training curves."""
    a = analysis or analyse(exp, records)
    plt = _pyplot()
    found = a.curves
    width = max(5 * max(len(a.datasets), 1), 7, 4.6 * 2 * len(found))
    fig = plt.figure(figsize=(width, 8.6 if found else 4.2), layout="constrained")
    if found:
        top, bottom = fig.subfigures(2, 1)
        _ablation(top, a, exp.name)
        _curves(bottom, found, exp.name)
    else:
        _ablation(fig, a, exp.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
