"""`report --sweep` as text for other tools (`--format json|csv|md|latex`), as a chart
(`--plot`) and as one self-contained HTML page (`--html`), all from one SweepView
(bench/report/sweep_views.py), so they cannot disagree.

JSON: per group of studies, each strategy's curve on both axes (trials, seconds of training) as
lists under `expected_best` (random sampler) or `observed_best` (others), with `budgets`, the
band (`low`, `high`), `spread` and `p_none`; every pair's order and crossing; the tuning
variance; the tuned-vs-default comparison. CSV: one line per study, curve point, crossing,
repeat summary and comparison (a `section` column says which).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import time

import numpy as np

from bench.report.sweep_views import SweepView, study_table, sweep_tables, table_scale
from bench.report.views import TextTable
from bench.stats.budget import EXPECTED, SECONDS, TRIALS, BudgetCurve, PairOrder


def _f(x):
    """Plain JSON numbers: NaN and infinities as null."""
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _curve(c: BudgetCurve) -> dict:
    key = "expected_best" if c.kind == EXPECTED else "observed_best"
    return {"kind": c.kind, "budgets": [_f(b) for b in c.budgets],
            key: [_f(v) for v in c.value], "low": [_f(v) for v in c.low],
            "high": [_f(v) for v in c.high], "spread": [_f(v) for v in c.spread],
            "p_none": [_f(v) for v in c.p_none], "extrapolated": [bool(v) for v in c.extrapolated],
            "n_trials": c.n_trials, "n_complete": c.n_complete, "note": c.note}


def _order(o: PairOrder) -> dict:
    return {"a": o.a, "b": o.b, "crosses": o.crosses, "changes": [_f(x) for x in o.changes],
            "budgets": [_f(b) for b in o.budgets], "leader": o.leader, "resolved": o.resolved,
            "overlap": o.overlap, "sentence": o.sentence}


def export_sweep(view: SweepView) -> dict:
    from bench.report.tuned import export_tuned

    studies = []
    for s in view.studies:
        k, unit = table_scale(s.metric)
        studies.append({
            "study": s.short, "strategy": s.strategy, "group": s.group, "repeat": s.repeat,
            "sampler": s.sampler, "sampler_seed": s.sampler_seed, "metric": s.metric,
            "direction": s.direction, "budget": s.budget, "started": s.started,
            "trials": len(s.counted), "hours": s.seconds / 3600, **s.counts,
            "at_budget": s.at_budget, "unit": unit,
            "best": None if s.best_value is None else s.best_value * k,
            "objective": s.best_value, "best_trial": s.best_number,
            "best_params": s.best_params, "best_run": s.best_run})
    groups = []
    for g in view.groups:
        groups.append({
            "group": g.group, "metric": g.metric, "direction": g.direction, "unit": g.unit,
            "strategies": g.strategies, "kinds": g.kinds,
            "spent": {n: {"trials": c, "hours": sec / 3600} for n, (c, sec) in g.spent.items()},
            "curves": {axis: {n: _curve(c) for n, c in by.items()} for axis, by in
                       g.curves.items()},
            "table_budgets": {axis: [_f(b) for b in next(iter(by.values())).budgets]
                              for axis, by in g.tables.items()},
            "crossings": {axis: [_order(o) for o in orders] for axis, orders in g.orders.items()},
            "tuning_variance": {n: {"k": v.k, "mean": v.mean, "std": v.std, "min": v.min,
                                    "max": v.max, "ci_low": v.ci_low, "ci_high": v.ci_high,
                                    "best_per_repeat": g.repeats[n], "note": v.note,
                                    "predicted": dict(zip(("expected_best", "spread", "n"),
                                                          g.predicted[n]))
                                    if n in g.predicted else None}
                                for n, v in g.variance.items()},
            "notes": g.notes})
    return {"experiment": view.experiment, "storage": view.storage,
            "confidence": view.confidence, "studies": studies, "groups": groups,
            "tuned_vs_default": export_tuned(view.tuned) if view.tuned is not None else None}


CSV_HEADER = ["section", "group", "strategy", "study", "axis", "budget", "kind", "value", "low",
              "high", "spread", "p_none", "extrapolated", "n", "hours", "note"]


def _csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for s in report["studies"]:
        w.writerow(["study", s["group"], s["strategy"], s["study"], None, json.dumps(s["budget"]),
                    s["sampler"], s["best"], None, None, None, None, None, s["trials"],
                    s["hours"], json.dumps(s["best_params"])])
    for g in report["groups"]:
        for axis, by in g["curves"].items():
            for name, c in by.items():
                values = c.get("expected_best") or c.get("observed_best")
                for j, b in enumerate(c["budgets"]):
                    w.writerow(["curve", g["group"], name, None, axis, b, c["kind"], values[j],
                                c["low"][j], c["high"][j], c["spread"][j], c["p_none"][j],
                                c["extrapolated"][j], c["n_trials"], None, c["note"]])
        for axis, orders in g["crossings"].items():
            for o in orders:
                w.writerow(["crossing", g["group"], f"{o['a']} vs {o['b']}", None, axis,
                            o["changes"][0] if o["changes"] else None, None, None, None, None,
                            None, None, None, len(o["changes"]), None, o["sentence"]])
        for name, v in g["tuning_variance"].items():
            w.writerow(["tuning_variance", g["group"], name, None, None, None, None, v["mean"],
                        v["ci_low"], v["ci_high"], v["std"], None, None, v["k"], None,
                        json.dumps(v["best_per_repeat"])])
    tuned = report.get("tuned_vs_default") or {"columns": []}
    for col in tuned["columns"]:
        for r in col["rows"]:
            for what in ("tuned_vs_default", "vs_tuned_baseline"):
                c = r[what]
                if c is not None:
                    w.writerow([what, col["dataset"], r["strategy"], None, col["metric"], None,
                                c["method"], c["diff"], c["ci_low"], c["ci_high"], None, None,
                                None, c["n_pairs"], None, c["verdict"]])
    return buf.getvalue()


def _tables(view: SweepView) -> list[TextTable]:
    return [study_table(view.studies, f"{view.experiment}: sweep ({view.storage})"),
            *sweep_tables(view)]


def _md(view: SweepView) -> str:
    lines = []
    for t in _tables(view):
        lines += [f"**{t.title}**", "", "| " + " | ".join(t.header) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in t.rows]
        lines += [""] + [f"- {n}" for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(lines) + "\n"


def _latex(view: SweepView) -> str:
    def esc(s: str) -> str:
        for old, new in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                         ("#", r"\#"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("†", r"$^\dagger$"),
                         ("*", r"$^*$")):
            s = s.replace(old, new)
        return s

    lines = []
    for t in _tables(view):
        lines += [f"% {esc(t.title)}", r"\begin{tabular}{l" + "r" * (len(t.header) - 1) + "}",
                  r"\toprule", " & ".join(esc(h) for h in t.header) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in r) + r" \\" for r in t.rows]
        lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {esc(n)}" for n in t.notes] + [""]
    return "\n".join(lines) + "\n"


def sweep_text(view: SweepView, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(export_sweep(view), indent=2, sort_keys=True, default=_f)
    if fmt == "csv":
        return _csv(export_sweep(view))
    return _md(view) if fmt == "md" else _latex(view)


# --- the chart --------------------------------------------------------------------------------
def sweep_figure(view: SweepView):
    """Per group, the best value against trials and against training hours: a line per
    strategy, its bootstrap band shaded (expected curves) or steps (observed best so far)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    groups = view.groups or []
    rows = max(len(groups), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4.2 * rows), squeeze=False)
    if not groups:
        axes[0][0].set_title("no finished trials")
    for g, (left, right) in zip(groups, axes):
        for ax, axis in ((left, TRIALS), (right, SECONDS)):
            curves = g.curves.get(axis)
            if not curves:
                ax.set_title(f"{g.group}: no {axis} axis")
                continue
            top = max(float(c.budgets.max()) for c in curves.values())
            per, unit = (1, "s") if top < 120 else (60, "min") if top < 7200 else (3600, "h")
            for i, (name, c) in enumerate(curves.items()):
                x = c.budgets / per if axis == SECONDS else c.budgets
                color = f"C{i}"
                if c.kind == EXPECTED:
                    ax.plot(x, c.value, color=color, label=name)
                    shown = np.isfinite(c.value)  # no band where the curve has no value
                    ax.fill_between(x, np.where(shown, c.low, np.nan),
                                    np.where(shown, c.high, np.nan), color=color, alpha=0.18,
                                    linewidth=0)
                else:
                    ax.step(x, c.value, where="post", color=color, label=f"{name} (observed)")
                beyond = c.extrapolated & np.isfinite(c.value)
                if beyond.any():  # past the trials run: dotted
                    ax.plot(x[beyond], c.value[beyond], color=color, linestyle=":")
            crossing = [o for o in g.orders.get(axis, []) if o.crosses]
            for o in crossing:
                for b in o.changes:
                    ax.axvline(b / per if axis == SECONDS else b, color="#999", linewidth=0.6,
                               linestyle="--")
            if axis == SECONDS:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                # minor ticks labelled at 2 and 5 only: every one overlaps its neighbours
                ax.xaxis.set_minor_formatter(FuncFormatter(
                    lambda v, _: f"{v:g}" if v > 0 and f"{v:.0e}"[0] in "25" else ""))
                ax.set_xlabel(f"training time, {unit} (summed over trials)")
            else:
                ax.set_xlabel("trials")
            unit = f" ({g.unit})" if g.unit else ""
            ax.set_ylabel(f"best {g.metric}{unit}")
            kinds = {c.kind for c in curves.values()}
            ax.set_title(f"{g.group}: {' / '.join(sorted(kinds))}"
                         + (f"; {len(crossing)} crossing pair(s)" if crossing else ""))
            ax.legend(fontsize=8)
    fig.suptitle(f"{view.experiment}: best validation value against the tuning budget "
                 f"(bands: {view.confidence:.0%} bootstrap; dashed: a change of leader)")
    fig.tight_layout()
    return fig


def write_plot(view: SweepView, path) -> None:
    import matplotlib.pyplot as plt

    fig = sweep_figure(view)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_html(view: SweepView, lines: list[str]) -> str:
    """The sweep report as one self-contained page (bench/report/html.py's style and policy):
    the tables as the terminal prints them, `lines` (best parameters), the chart."""
    from rich.markup import escape

    from bench.report.html import CSS, POLICY, Transcript, figure_html, transcript_html
    from bench.report.tables import rich_table

    out = Transcript()
    for t in _tables(view):
        out.print(rich_table(t))
        for note in t.notes:
            out.print(escape(note), style="dim")
    for line in lines:
        out.print(escape(line))
    figure = figure_html(sweep_figure(view), "best validation value against trials and against "
                         "training hours, per strategy")
    title = f"lesa-bench sweep report: {view.experiment}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>
<p>{len(view.studies)} studies in {html.escape(view.storage)}; generated
{time.strftime("%Y-%m-%d %H:%M:%S")}</p></header>
<section id="plots"><h2>Budget curves</h2>
{figure}
</section>
<section id="tables"><h2>Tables</h2>
{transcript_html(out)}
</section>
</body></html>
"""
