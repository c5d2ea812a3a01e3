"""The report's tables as plain text cells, one builder for the terminal and every export, so
md, LaTeX and the rich tables show the same numbers.

Per dataset: a comparison table per headline metric (acc1; map_50 and map), the AI-TOD bucket
table with each bucket's box count, and the test-image bootstrap (detection); the share
analysis (learned or built in) and, on detection, the share inside boxes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.report.analysis import Analysis, Row
from bench.report.records import short
from bench.report.shares import (BOX_NOTES, NULL_HEADER, NULL_NOTES, SHARE_HEADER,
                                 SHARE_NOTES, box_header, box_table_cells, null_table_cells,
                                 share_table_cells)
from bench.stats.compare import NOT_RESOLVED

UNPAIRED = "†"


@dataclass
class TextTable:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    best: list[bool] = field(default_factory=list)  # per row: shown as best (bold)
    notes: list[str] = field(default_factory=list)


def _p(p) -> str:
    return "-" if p is None else f"{p:.3g}"


def mean_text(row: Row) -> str:
    s, note = row.stats, row.cell.incomplete()
    if s.mean is None:
        return note or "n/a"
    text = f"{s.mean:.2f} (n=1)" if s.n == 1 else f"{s.mean:.2f} ± {s.std:.2f} (n={s.n})"
    return f"{text} [{note}]" if note else text


def ci_text(row: Row) -> str:
    s = row.stats
    if s.ci_low is None:
        return "no CI (n = 1)" if s.n == 1 else "-"
    return f"[{s.ci_low:.2f}, {s.ci_high:.2f}]"


def diff_text(row: Row) -> str:
    c = row.comparison
    if row.is_baseline:
        return "baseline"
    if c is None or c.diff is None:
        return "-"
    mark = "" if c.paired else UNPAIRED
    if c.ci_low is None:
        return f"{c.diff:+.2f}{mark} (no CI)"
    return f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]{mark}"


def verdict_text(row: Row) -> str:
    if row.is_baseline:
        return "baseline"
    return row.comparison.verdict if row.comparison else "-"


def seeds_text(row: Row) -> str:
    c = row.comparison
    if c is None or c.verdict != NOT_RESOLVED or c.seeds_needed is None:
        return "-"
    return str(c.seeds_needed)


def _notes(rows: list[Row], baseline: str | None) -> list[str]:
    """Each comparison's note by row; Holm's family size once."""
    out, holm = [], ""
    for r in rows:
        if not r.comparison or not r.comparison.note:
            continue
        parts = r.comparison.note.split("; ")
        holm = next((p for p in parts if p.startswith("Holm-adjusted")), holm)
        rest = "; ".join(p for p in parts if not p.startswith("Holm-adjusted"))
        if rest:
            out.append(f"{r.name} vs {baseline}: {rest}")
    if any(not r.comparison.paired for r in rows if r.comparison):
        out.append(f"{UNPAIRED} unpaired: the seeds do not match, so Welch's t-test on all "
                   "values (effect size: Cohen's d with the pooled std)")
    for r in rows:
        if r.stats.n == 1:
            out.append(f"{r.name}: n = 1, no CI and no test")
    return ([f"p Holm: {holm}"] if holm else []) + out


COMPARISON_HEADER = ["strategy", "mean ± std (n)", "95% CI", "Δ vs {b} [95% CI]", "p t",
                     "p W", "p Holm", "d", "verdict", "seeds needed", "best"]


def comparison_table(a: Analysis, dataset: str, metric: str) -> TextTable:
    col = a.column(dataset, metric)
    header = [h.format(b=a.baseline or "-") for h in COMPARISON_HEADER]
    table = TextTable(f"{a.experiment}: ablation, {dataset} {short(metric)} (%), over seeds",
                      header)
    for row in col.rows.values():
        c = row.comparison
        table.rows.append([
            row.name, mean_text(row), ci_text(row), diff_text(row),
            _p(c.p if c else None), _p(c.p_wilcoxon if c else None),
            _p(c.p_adjusted if c else None),
            "-" if not c or c.effect_size is None else f"{c.effect_size:+.3g}",
            verdict_text(row), seeds_text(row),
            "best" if row.best else ""])
        table.best.append(bool(row.best))
    table.notes = _notes(list(col.rows.values()), a.baseline)
    if a.baseline_note:
        table.notes.append(a.baseline_note)
    return table


def bucket_header(a: Analysis, dataset: str, metric: str) -> tuple[str, str]:
    """The bucket column's header (with its box count) and its warning (or '')."""
    name = a.bucket_metrics(dataset)[metric]
    low, high = a.bucket_range(dataset, name)
    support = a.buckets.get(dataset, {}).get(name)
    if support is None:
        return f"{name} ({low}-{high} px, boxes ?)", ""
    head = f"{name} ({low}-{high} px, {support.n_boxes} boxes)"
    if support.too_few:
        return head + " too few", f"{name}: {support.note}: too few to trust"
    return head, ""


def bucket_table(a: Analysis, dataset: str) -> TextTable:
    buckets = a.bucket_metrics(dataset)
    metrics = [m for m in buckets if (dataset, m) in a.columns]
    heads = [bucket_header(a, dataset, m) for m in metrics]
    table = TextTable(f"{a.experiment}: {dataset} AP by AI-TOD size bucket (%): mean [95% CI] "
                      f"(n), verdict vs {a.baseline or '-'}", ["strategy"] + [h for h, _ in heads])
    names = list(a.column(dataset, metrics[0]).rows) if metrics else []
    for name in names:
        line = [name]
        for m in metrics:
            row = a.column(dataset, m).rows[name]
            if row.stats.mean is None:
                line.append(row.cell.incomplete() or "n/a")
                continue
            parts = [f"{row.stats.mean:.2f}", ci_text(row) if row.stats.n > 1 else "no CI",
                     f"(n={row.stats.n})"]
            if row.comparison:
                parts.append(row.comparison.verdict)
            if row.best:
                parts.append("best")
            line.append(" ".join(parts))
        table.rows.append(line)
        table.best.append(False)
    table.notes = [w for _, w in heads if w]
    if any("n/a" in c for line in table.rows for c in line):
        table.notes.append("n/a: finished, but no run has a value (no test objects that size)")
    if any(a.buckets.get(dataset, {}).get(buckets[m]) is None for m in metrics):
        table.notes.append("boxes ?: no run has predictions.npz to count the test boxes from")
    return table


def _interval_text(iv) -> str:
    if iv is None:
        return "-"
    if iv.ci_low != iv.ci_low:  # NaN: no resample had a value
        return f"{iv.estimate:.2f} [no CI]"
    return f"{iv.estimate:.2f} [{iv.ci_low:.2f}, {iv.ci_high:.2f}]"


def _diff_interval_text(iv) -> str:
    if iv is None:
        return "-"
    return f"{iv.estimate:+.2f} [{iv.ci_low:+.2f}, {iv.ci_high:+.2f}]"


def bootstrap_table(a: Analysis, dataset: str) -> TextTable:
    boot = a.bootstrap[dataset]
    size = f"{boot.n_images} images" if boot.n_images else "the test images"
    b = boot.baseline or "-"
    table = TextTable(f"{a.experiment}: {dataset} test-image uncertainty (bootstrap over {size}, "
                      f"{boot.n_resamples} resamples)",
                      ["strategy", "seeds", "map_50 [95% CI]", f"Δ map_50 vs {b} [95% CI]",
                       "map [95% CI]", f"Δ map vs {b} [95% CI]"])
    for name, s in boot.strategies.items():
        base = name == " ".join([b, *name.split()[1:]])
        table.rows.append([name, ",".join(map(str, s.seeds)),
                           _interval_text(s.intervals["map_50"]),
                           "baseline" if base else _diff_interval_text(s.differences.get("map_50")),
                           _interval_text(s.intervals["map"]),
                           "baseline" if base else _diff_interval_text(s.differences.get("map"))])
        table.best.append(False)
    if boot.note:
        table.notes.append(boot.note)
    else:
        table.notes.append("each strategy: the mean over its seeds of each seed's AP on the same "
                           f"{boot.n_resamples} resamples of the test images (percentile "
                           "interval); the spread over seeds is in the tables above")
    return table


def share_tables(a: Analysis, dataset: str) -> list[TextTable]:
    """The share analysis (bench/report/shares.py) and, on detection, the share in boxes."""
    t = a.shares.get(dataset)
    if t is None:
        return []
    cells = share_table_cells(t)
    out = [TextTable(f"{a.experiment}: {dataset} unary shares, learned or built in (%)",
                     list(SHARE_HEADER), cells, [False] * len(cells), list(SHARE_NOTES))]
    cells = null_table_cells(t)
    if cells:
        out.append(TextTable(f"{a.experiment}: {dataset} unary shares against their nulls",
                             list(NULL_HEADER), cells, [False] * len(cells), list(NULL_NOTES)))
    if t.boxes:
        cells = box_table_cells(t)
        out.append(TextTable(f"{a.experiment}: {dataset} unary share inside ground-truth boxes "
                             f"by AI-TOD size bucket (%)", box_header(t), cells,
                             [False] * len(cells), list(BOX_NOTES)))
    return out


def tables(a: Analysis, dataset: str) -> list[TextTable]:
    out = [comparison_table(a, dataset, m) for m in a.headline(dataset)
           if (dataset, m) in a.columns]
    if a.task(dataset) == "detection":
        if any((dataset, m) in a.columns for m in a.bucket_metrics(dataset)):
            out.append(bucket_table(a, dataset))
        if dataset in a.bootstrap:
            out.append(bootstrap_table(a, dataset))
    return out + share_tables(a, dataset)


LEGEND = ("p t: paired t-test (Welch where marked †); p W: Wilcoxon signed-rank; p Holm: p t "
          "Holm-adjusted; d: effect size d_z = mean(Δ) / std(Δ); "
          "verdict: better / worse where the Holm-adjusted p < 0.05 and the 95% CI of Δ excludes "
          "0, else not resolved; seeds needed: seeds per strategy for 80% power at the observed "
          "Δ (or --min-effect); best: the best mean and every row not resolved against it")
