"""`lesa-bench design EXP`: the experiment's planned analysis before (or while) training it.

For each table the report will decide in (a dataset's headline metric), with the experiment's
`analysis:` section (looks, spending, alpha, margin): the nominal p-value bound at each look and,
by simulation of the very decision code the report runs (bench/stats/sequential.py), the
family-wise false-positive rate with no true differences, the power at an effect equal to the
margin, the chance of a false "equivalent" at |effect| = margin, the expected seeds per cell, and
the fixed design that trains every cell to the last look. The spread of the paired differences
to plan with is `--sd`, else estimated from the runs already in the store.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.config import ConfigError, Experiment
from bench.data import DATASETS
from bench.report.analysis import analyse
from bench.report.records import collect, row_key, short
from bench.tasks import TASKS

N_SIM = 20000


def families(exp: Experiment, dataset: str) -> int:
    """The comparisons in the largest family of a dataset's table: its rows (strategy and the
    settings that come with it) less the baseline, within equal values of the other axes."""
    rows: dict[str, set[str]] = {}
    for run in exp.runs:
        if run.config["data"]["name"] == dataset:
            first, *rest = row_key(run).split()
            rows.setdefault(" ".join(rest), set()).add(first)
    return max((len(names) - 1 for names in rows.values()), default=0)


def pooled_sd(column) -> tuple[float | None, int]:
    """The pooled std of the paired differences over a column's comparisons, and its degrees
    of freedom (0: nothing stored to estimate it from)."""
    num, dof = 0.0, 0
    for row in column.rows.values():
        c = row.comparison
        if c is not None and c.paired and c.sd is not None and c.n_pairs >= 2:
            num += (c.n_pairs - 1) * c.sd ** 2
            dof += c.n_pairs - 1
    return (math.sqrt(num / dof) if dof else None), dof


def plan_designs(exp: Experiment, results: Path, sd: float | None = None,
                 effect: float | None = None, baseline: str | None = None,
                 n_sim: int = N_SIM) -> list[dict]:
    """One design per (dataset, headline metric): bench.stats.sequential.design's keys plus
    dataset, metric, sd_source and m."""
    from bench.stats.sequential import Plan, design

    a = exp.analysis
    if not a.get("looks"):
        raise ConfigError(f"{exp.path or exp.name}: no analysis.looks: add a planned design to "
                          f"the experiment file, e.g. analysis: {{margin: 1.0, looks: [5, 10, 20]}}"
                          f" (docs/statistics.md)")
    analysis = None
    out = []
    for dataset in dict.fromkeys(r.config["data"]["name"] for r in exp.runs):
        for metric in TASKS[DATASETS[dataset].task].headline:
            name = short(metric)
            plan = Plan.from_analysis(a, name)
            m = families(exp, dataset)
            if m < 1:
                continue
            planning, source = sd, "--sd"
            if planning is None:
                if analysis is None:
                    records = collect(exp, exp.runs, results)
                    analysis = analyse(exp, records, baseline, image_bootstrap=False)
                column = analysis.columns.get((dataset, metric))
                planning, dof = pooled_sd(column) if column else (None, 0)
                source = f"pooled from the stored runs ({dof} degrees of freedom)"
            if planning is None:
                raise ConfigError(f"design: no stored runs of {dataset} to estimate the spread "
                                  f"of the paired differences from; give --sd S (in the "
                                  f"table's units, e.g. 2.0 accuracy points)")
            size = effect if effect is not None else plan.margin
            if size is None:
                raise ConfigError(f"design: {name} has no margin (analysis.margin) to compute "
                                  f"the power at; set one, or give --effect X")
            result = design(plan, planning, m, size, n_sim=n_sim)
            out.append({"dataset": dataset, "metric": name, "sd_source": source, **result})
    if not out:
        raise ConfigError(f"design: {exp.name} has no comparisons (one row per dataset)")
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_designs(designs: list[dict], console: Console) -> None:
    for d in designs:
        margin = d["margin"]
        console.print(f"[bold]{escape(d['dataset'])} {d['metric']}[/]: {d['m']} comparisons, "
                      f"{d['spending']} spending, alpha {d['alpha']} family-wise, margin "
                      f"{margin if margin is not None else 'none'}, sd {d['sd']:.3g} "
                      f"({escape(d['sd_source'])}), effect {d['effect']:.3g}", soft_wrap=True)
        looks = Table(title="looks: a comparison stops at the first look whose bound it crosses")
        for col in ("look", "seeds per cell", "nominal p bound (difference)",
                    "nominal p bound (equivalence, one-sided)"):
            looks.add_column(col, justify="right")
        eq = d["equivalence_bounds"] or [None] * len(d["looks"])
        for k, (n, b, e) in enumerate(zip(d["looks"], d["bounds"], eq), start=1):
            looks.add_row(str(k), str(n), f"{b:.3g}", "-" if e is None else f"{e:.3g}")
        console.print(looks)
        rates = Table(title=f"by simulation ({d['n_sim']} experiments of this design)")
        for col in ("", "sequential", f"fixed: {d['fixed_seeds']} seeds per cell"):
            rates.add_column(col, justify="right" if col else "left")
        rates.add_row("false positive, family-wise (no true difference)",
                      f"{_pct(d['fwer'])} ± {_pct(d['fwer_mcse'])}", "-")
        rates.add_row(f"power at effect {d['effect']:.3g}",
                      f"{_pct(d['power'])} ± {_pct(d['power_mcse'])}",
                      f"{_pct(d['fixed_power'])}")
        rates.add_row("false 'equivalent' at |effect| = margin", _pct(d["false_equivalence"]),
                      "-")
        rates.add_row("seeds per cell, expected (no difference / at the effect)",
                      f"{d['expected_seeds']['null']:.1f} / {d['expected_seeds']['effect']:.1f}",
                      str(d["fixed_seeds"]))
        console.print(rates)
        console.print(f"  re-testing at alpha after every look instead (no plan): false "
                      f"positives {_pct(d['naive_fwer'])}", style="dim")


def main(exp: Experiment, results: Path, console: Console, sd: float | None = None,
         effect: float | None = None, fmt: str | None = None,
         baseline: str | None = None) -> int:
    designs = plan_designs(exp, results, sd, effect, baseline)
    if fmt == "json":
        print(json.dumps(designs, indent=2))
    else:
        print_designs(designs, console)
    return 0
