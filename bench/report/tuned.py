"""Tuned, then tested (`report --best-params`, `report --sweep`): each strategy retrained with
its best sweep parameters, compared on the test set (a) with the same strategy at the
experiment's default settings (the plain matrix) and (b) with the tuned baseline strategy, both
paired by seed with the report's statistics (bench.stats.compare: paired t, CI, Holm across the
strategies of a table). Test metrics of the retrained runs only, never the sweep's validation
values; the seed the sweep tuned on is left out, because its tuned run is the best trial, chosen
on that very seed's validation value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.data import DATASETS
from bench.report.analysis import choose_baseline
from bench.report.records import RunRecord, build_cells, scale, short, sort_rows
from bench.report.views import TextTable
from bench.stats.compare import CellStats, Comparison, compare, compare_all, describe, holm, \
    verdict
from bench.tasks import TASKS

ALPHA = 0.05


@dataclass
class TunedRow:
    name: str
    tuned: CellStats
    default: CellStats
    vs_default: Comparison | None       # tuned - default, same strategy
    vs_baseline: Comparison | None      # tuned - tuned baseline
    is_baseline: bool = False


@dataclass
class TunedColumn:
    dataset: str
    metric: str
    unit: str
    rows: list[TunedRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class TunedView:
    columns: list[TunedColumn]
    baseline: str | None
    baseline_note: str
    left_out: object | None   # the seed the sweep tuned on
    alpha: float = ALPHA

    @property
    def has_results(self) -> bool:
        return any(r.tuned.n for c in self.columns for r in c.rows)


def _values(cell, k: float, left_out) -> dict:
    return {} if cell is None else {s: v * k for s, v in cell.by_seed.items() if s != left_out}


def _adjust(comparisons: list[Comparison], alpha: float) -> None:
    """Holm across one table's tuned-vs-default comparisons (each strategy against its own
    default, so not one compare_all family), then the verdict by the module's rule."""
    for c, p in zip(comparisons, holm([c.p for c in comparisons])):
        c.p_adjusted = p
        c.verdict = verdict(c.diff, c.ci_low, c.ci_high, p, alpha, c.higher_is_better)
        c.seeds_needed = None  # computed unadjusted by compare(); not shown
        if len(comparisons) > 1 and p is not None:
            c.note = "; ".join(filter(None, [c.note, f"Holm-adjusted over {len(comparisons)} "
                                                     f"comparisons"]))


def tuned_vs_default(default: list[RunRecord], tuned: list[RunRecord], baseline: str | None,
                     left_out=None, alpha: float = ALPHA) -> TunedView:
    """`default`: the plain matrix's runs; `tuned`: the same matrix with the best parameters
    (run --best-params); `left_out`: the seed the sweep tuned on."""
    chosen, note = choose_baseline(tuned or default, baseline)
    metrics = {task: spec.headline for task, spec in TASKS.items()}
    cells_d, cells_t = build_cells(default, metrics), build_cells(tuned, metrics)
    columns = []
    for dataset in dict.fromkeys([*cells_t, *cells_d]):
        for metric in TASKS[DATASETS[dataset].task].headline:
            k = scale(metric)
            by_d = cells_d.get(dataset, {}).get(metric, {})
            by_t = cells_t.get(dataset, {}).get(metric, {})
            col = TunedColumn(dataset, metric, "%" if k == 100 else "")
            values_t = {n: _values(by_t.get(n), k, left_out) for n in sort_rows({*by_d, *by_t})}
            values_d = {n: _values(by_d.get(n), k, left_out) for n in values_t}
            own = {n: compare(values_t[n], values_d[n], True, alpha, name=f"{n} tuned",
                              baseline=f"{n} default") for n in values_t}
            _adjust(list(own.values()), alpha)
            against: dict[str, Comparison] = {}
            groups: dict[tuple, list[str]] = {}
            for n in values_t:  # rows are compared within equal values of the other axes
                groups.setdefault(tuple(n.split()[1:]), []).append(n)
            bases = set()
            for extra, names in groups.items():
                base = " ".join([chosen, *extra]) if chosen else None
                if base in names and values_t[base]:
                    bases.add(base)
                    against.update(compare_all({n: values_t[n] for n in names}, base, True,
                                               alpha))
            for n in values_t:
                col.rows.append(TunedRow(n, describe(values_t[n]), describe(values_d[n]),
                                         own[n], against.get(n), n in bases))
            seeds = sorted({s for v in [*values_t.values(), *values_d.values()] for s in v},
                           key=str)
            col.notes.append(f"test {short(metric)} of the runs retrained with each strategy's "
                             f"best parameters (tuned) and of the plain matrix (default), paired "
                             f"by seed over seeds {', '.join(map(str, seeds)) or 'none'}; never "
                             f"the sweep's validation values")
            if left_out is not None:
                col.notes.append(f"seed {left_out} left out: the sweep tuned on it (its tuned "
                                 f"run is the best trial, chosen on that seed's validation "
                                 f"value)")
            col.notes.append(f"better / worse: Holm-adjusted p < {alpha:g} and the CI excludes 0 "
                             f"(Holm across this table's rows, in each comparison)")
            columns.append(col)
    return TunedView(columns, chosen, note, left_out, alpha)


def _stats(s: CellStats) -> str:
    if s.mean is None:
        return "-"
    return f"{s.mean:.2f} (n=1)" if s.n == 1 else f"{s.mean:.2f} ± {s.std:.2f} (n={s.n})"


def _diff(c: Comparison | None) -> str:
    if c is None or c.diff is None:
        return "-"
    mark = "" if c.paired else "†"
    if c.ci_low is None:
        return f"{c.diff:+.2f}{mark} (no CI)"
    return f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]{mark}"


def _p(c: Comparison | None) -> str:
    return "-" if c is None or c.p_adjusted is None else f"{c.p_adjusted:.3g}"


def tuned_tables(view: TunedView) -> list[TextTable]:
    out = []
    base = view.baseline or "baseline"
    for col in view.columns:
        unit = f" ({col.unit})" if col.unit else ""
        t = TextTable(f"{col.dataset} {short(col.metric)}{unit}: tuned vs default settings, and "
                      f"vs tuned {base}",
                      ["strategy", "tuned", "default", "tuned - default [95% CI]", "p Holm",
                       "verdict", f"Δ vs tuned {base} [95% CI]", "p Holm", "verdict"])
        for r in col.rows:
            b = r.vs_baseline
            t.rows.append([r.name, _stats(r.tuned), _stats(r.default), _diff(r.vs_default),
                           _p(r.vs_default), r.vs_default.verdict if r.vs_default else "-",
                           "baseline" if r.is_baseline else _diff(b), _p(b),
                           "baseline" if r.is_baseline else (b.verdict if b else "-")])
            t.best.append(False)
        t.notes = list(col.notes) + ([view.baseline_note] if view.baseline_note else []) + \
            (["†: unpaired (Welch), the seeds do not match"]
             if any("†" in c for row in t.rows for c in row) else [])
        out.append(t)
    return out


def _comparison(c: Comparison | None) -> dict | None:
    if c is None:
        return None
    return {k: getattr(c, k) for k in ("n_pairs", "paired", "diff", "ci_low", "ci_high", "p",
                                       "p_wilcoxon", "p_adjusted", "effect_size", "method",
                                       "verdict", "note")}


def _cell(s: CellStats) -> dict:
    return {"n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
            "seeds": sorted(s.values, key=str),
            "values": [s.values[k] for k in sorted(s.values, key=str)]}


def export_tuned(view: TunedView) -> dict:
    return {"baseline": view.baseline, "baseline_note": view.baseline_note,
            "left_out_seed": view.left_out, "alpha": view.alpha,
            "columns": [{"dataset": c.dataset, "metric": c.metric, "unit": c.unit,
                         "notes": c.notes,
                         "rows": [{"strategy": r.name, "tuned": _cell(r.tuned),
                                   "default": _cell(r.default), "is_baseline": r.is_baseline,
                                   "tuned_vs_default": _comparison(r.vs_default),
                                   "vs_tuned_baseline": _comparison(r.vs_baseline)}
                                  for r in c.rows]} for c in view.columns]}
