"""The report as plain text cells and lines, one builder for the terminal and every export, so
md, LaTeX, HTML and the rich tables show the same numbers (`report_items`, in order).

The experiment's description; per dataset a comparison table per headline metric (acc1; map_50
and map; a table per family where the strategies are compared within several settings of the
other axes), the AI-TOD bucket table with each bucket's box count, and the test-image bootstrap
(detection); the share analysis (learned or built in) and, on detection, the share inside
boxes; the legend; the shares and costs of every row; incomplete, failed and flagged runs and
the environment the runs came from.
"""
from __future__ import annotations

from bench.plugins import summary as plugin_summary
from bench.report.analysis import Analysis, Row
from bench.report.families import Family
from bench.report.interval_views import (headline_tables, image_table, seed_table_view,
                                         split_verdict_table, variance_table_view)
from bench.report.records import (COST_METRICS, SHARE_METRICS, RunRecord, build_cells,
                                  dataset_names, environments, flag_lines, short, sort_rows)
from bench.report.shares import (BOX_NOTES, NULL_HEADER, NULL_NOTES, SHARE_HEADER,
                                 SHARE_NOTES, box_header, box_table_cells, null_table_cells,
                                 share_table_cells)
from bench.report.splits import splits_of
# the text blocks live in text.py (interval_views.py builds them too); named here as before
from bench.report.text import Line, TextTable  # noqa: F401
from bench.stats.compare import NOT_RESOLVED
from bench.store import RunState
from bench.tasks import TASKS

UNPAIRED = "†"


def _p(p) -> str:
    return "-" if p is None else f"{p:.3g}"


def mean_text(row: Row) -> str:
    """mean ± std (n); over data splits as blocks, n counts runs and says how many splits (the
    mean is then the mean of the split means, splits.describe_blocks)."""
    s, note = row.stats, row.cell.incomplete()
    if s.mean is None:
        return note or "n/a"
    splits = len(splits_of(s.values))
    n = f"n={s.n}, {splits} splits" if splits > 1 else f"n={s.n}"
    text = f"{s.mean:.2f} ({n})" if s.n == 1 else f"{s.mean:.2f} ± {s.std:.2f} ({n})"
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
    """The verdict, with what qualifies it: a better/worse smaller than the margin, and under a
    planned design the look it stopped at and why (or that it is still open)."""
    if row.is_baseline:
        return "baseline"
    c = row.comparison
    if c is None:
        return "-"
    text = c.verdict
    if c.within_margin:
        text += ", within the margin" + (" (shown)" if c.within_margin_shown else
                                         " (estimate only)")
    if c.looks is None:
        return text
    if c.stop_reason == "open":
        return "open"
    reason = "" if c.stop_reason in ("efficacy", "equivalence") else f": {c.stop_reason}"
    return f"{text} (look {c.look}/{len(c.looks)}{reason})"


def seeds_text(row: Row) -> str:
    c = row.comparison
    if getattr(c, "n_splits", 0) > 1:  # two-level: splits (each with as many seeds) needed
        return "-" if c.verdict != NOT_RESOLVED or c.splits_needed is None else \
            f"{c.splits_needed} splits"
    if c is None or c.verdict != NOT_RESOLVED or c.seeds_needed is None:
        return "-"
    if c.looks is not None:  # open: the seeds per cell its next look reads
        return f"{c.seeds_needed} (next look)" if c.stop_reason == "open" else "-"
    return str(c.seeds_needed)


def p_adjusted_text(c) -> str:
    """Holm's adjusted p; under a planned design, the nominal bound the look's p met or not."""
    if c is None:
        return "-"
    if c.looks is not None:
        return "-" if c.bound is None else f"bound {c.bound:.3g}"
    return _p(c.p_adjusted)


def design_lines(a: Analysis, metric: str, planned: bool) -> list[str]:
    """What a table's verdicts rest on: its margin, and a planned design or a fixed n."""
    d = a.design or {}
    name = short(metric)
    out = []
    margin = (d.get("margin") or {}).get(name)
    if margin is not None:
        out.append(f"margin: ±{margin:g} ({name}, the table's units): 'equivalent' where the "
                   f"{100 * (1 - 2 * a.alpha):.0f}% interval of Δ lies inside it (two one-sided "
                   f"tests, in one Holm family with the difference tests)")
    if planned:
        out.append(f"planned looks {d['looks']} seeds per cell ({d['spending']} spending, alpha "
                   f"{d['alpha']:g} family-wise): each verdict is the one at the look where its "
                   f"comparison stopped; Δ's interval is that look's repeated confidence interval "
                   f"(at the look's nominal level); docs/statistics.md")
    elif d.get("looks") is None:
        out.append("fixed-n design: adding seeds after reading this table invalidates its "
                   "p-values; to add seeds, plan looks (analysis.looks) and run `lesa-bench run "
                   "EXP --until-resolved`")
    return out


def _notes(rows: list[Row]) -> list[str]:
    """Each comparison's note by row, against its own baseline (the Holm part is said per
    family, _family_notes)."""
    out = []
    for r in rows:
        if not r.comparison or not r.comparison.note:
            continue
        rest = "; ".join(p for p in r.comparison.note.split("; ")
                         if not p.startswith("Holm-adjusted") and SPLITS_NOTE not in p)
        if rest:
            out.append(f"{r.name} vs {r.comparison.baseline}: {rest}")
    if any(not r.comparison.paired for r in rows if r.comparison):
        out.append(f"{UNPAIRED} unpaired: the seeds do not match, so Welch's t-test on all "
                   "values (effect size: Cohen's d with the pooled std)")
    for r in rows:
        if r.stats.n == 1:
            out.append(f"{r.name}: n = 1, no CI and no test")
    return out


def _holm(col, family: Family) -> str:
    """How the family's p-values were adjusted, as bench/stats says it ('' for one test)."""
    for name in family.members:
        c = col.rows[name].comparison if name in col.rows else None
        for part in (c.note.split("; ") if c and c.note else []):
            if part.startswith("Holm-adjusted"):
                return part
    return ""


def _family_notes(a: Analysis, col, table: list[Family]) -> list[str]:
    """Which rows each family of the table holds, against which baseline, and Holm's count."""
    if a.baseline is None:
        return []
    out = []
    for f in table:
        where = f" with {f.label}" if f.label else ""
        if f.baseline is None:
            out.append(f"no {a.vs} row{where}: {', '.join(f.rows)} not compared")
        elif not f.members and not a.baseline_note:  # else the note says it for all
            out.append(f"{f.baseline}: the only row{where}, nothing to compare it with")
    compared = [f for f in table if f.baseline and f.members]
    head = []
    if len(table) == 1 and compared:
        holm = _holm(col, compared[0])
        if holm:
            head = [f"p Holm: {holm}: {', '.join(compared[0].members)} vs {compared[0].baseline}"]
    elif compared:  # several families in one table (an axis compared): each its own Holm
        head = [f"each row is compared with the row of its family that has {a.vs}, paired by "
                f"seed; p Holm within each family:"]
        head += [f"  {f.label}: {', '.join(f.members)} vs {f.baseline}; "
                 f"{_holm(col, f) or 'one comparison (p Holm = p t)'}" for f in compared]
    return head + out


# compare_blocks' per-row note that the table's split_lines says once
SPLITS_NOTE = "splits: the interval covers split-to-split variation"


def split_lines(col) -> list[str]:
    """What a two-level table's numbers are (data splits as blocks, splits.py)."""
    if not col.blocked:
        return []
    n = len(col.splits)
    return [f"two-level (data.split_seed {', '.join(map(str, col.splits))} as blocks): runs "
            f"paired within (split, seed) blocks; mean, 95% CI, Δ, p and d over the {n} split "
            f"means ({n - 1} df), so the intervals cover split-to-split variation as well as "
            f"the seeds; std over every run; seeds needed: the splits (each with as many seeds) "
            f"for 80% power (docs/statistics.md)"]


COMPARISON_HEADER = ["strategy", "mean ± std (n)", "95% CI", "Δ vs {b} [95% CI]", "p t",
                     "p W", "p Holm", "d", "verdict", "seeds needed", "best"]


def comparison_tables(a: Analysis, dataset: str, metric: str) -> list[TextTable]:
    """One table per group of families (families.tables): the strategies against their
    baseline, a table per setting of the other axes; or, with --compare, the axis's values."""
    col = a.column(dataset, metric)
    header = [h.format(b=a.vs) for h in COMPARISON_HEADER]
    title = f"{a.experiment}: ablation, {dataset} {short(metric)} (%), over seeds"
    groups = col.tables or [[]]
    out = []
    for group in groups:
        names = [n for f in group for n in f.rows if n in col.rows] if group else list(col.rows)
        label = group[0].label if len(groups) > 1 and len(group) == 1 else ""
        table = TextTable(f"{title}; {label}" if label else title, header)
        for name in names:
            row = col.rows[name]
            c = row.comparison
            table.rows.append([
                row.name, mean_text(row), ci_text(row), diff_text(row),
                _p(c.p if c else None), _p(c.p_wilcoxon if c else None),
                p_adjusted_text(c),
                "-" if not c or c.effect_size is None else f"{c.effect_size:+.3g}",
                verdict_text(row), seeds_text(row),
                "best" if row.best else ""])
            table.best.append(bool(row.best))
        planned = any(col.rows[n].comparison is not None and col.rows[n].comparison.looks
                      for n in names)
        table.notes = (_family_notes(a, col, group) + _notes([col.rows[n] for n in names])
                       + split_lines(col) + design_lines(a, metric, planned))
        out.append(table)
    return out


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
                      f"(n), verdict vs {a.vs}", ["strategy"] + [h for h, _ in heads])
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
    out = []
    for m in a.headline(dataset):
        if (dataset, m) in a.columns:  # with data splits as blocks, each split's verdicts
            out += comparison_tables(a, dataset, m)
            out += [t for t in (split_verdict_table(a, dataset, m),
                                variance_table_view(a, dataset, m),
                                seed_table_view(a, dataset, m)) if t is not None]
    image = image_table(a, dataset)  # classification over test images
    if image is not None:
        out.append(image)
    if a.task(dataset) == "detection":
        if any((dataset, m) in a.columns for m in a.bucket_metrics(dataset)):
            out.append(bucket_table(a, dataset))
        if dataset in a.bootstrap:
            out.append(bootstrap_table(a, dataset))
    return out + share_tables(a, dataset)


LEGEND = ("p t: paired t-test (Welch where marked †); p W: Wilcoxon signed-rank; p Holm: p t "
          "Holm-adjusted over its family (the rows compared with the same baseline row; with a "
          "margin, together with the equivalence tests); d: effect size d_z = mean(Δ) / std(Δ); "
          "verdict: better / worse where the Holm-adjusted p < alpha and the CI of Δ excludes 0, "
          "equivalent where a margin is set and Δ is shown to lie inside it, else not resolved; "
          "seeds needed: seeds per strategy for 80% power at the observed Δ (or --min-effect, "
          "or the margin); best: the best mean and every row not resolved against it "
          "(docs/statistics.md)")


def _overview(a: Analysis, records: list[RunRecord], title: str, metrics: tuple[str, ...],
              formats) -> TextTable:
    """Every row's mean of `metrics` per dataset (the shares and costs tables)."""
    datasets = dataset_names(records)
    cells = build_cells(records, {task: metrics for task in TASKS})
    rows = sort_rows({row for d in datasets for m in cells[d].values() for row in m})
    table = TextTable(f"{a.experiment}: {title}", ["strategy"] + [
        f"{d} {short(m)}" for d in datasets for m in metrics])
    for row in rows:
        line = [row]
        for d in datasets:
            for metric in metrics:
                cell = cells[d][metric].get(row)
                line.append("-" if cell is None or cell.mean is None
                            else formats[short(metric)](cell))
        table.rows.append(line)
        table.best.append(False)
    return table


def overview_tables(a: Analysis, records: list[RunRecord]) -> list[TextTable]:
    pct = lambda c: f"{c.mean:.1f} ± {c.std:.1f} (n={c.n})"  # noqa: E731
    costs = {"params": lambda c: f"{c.mean / 1e6:.3f} M", "gflops": lambda c: f"{c.mean:.3f}",
             "train_images_per_s": lambda c: f"{c.mean:.0f}"}
    return [_overview(a, records, "unary / binary shares on test (%)", SHARE_METRICS,
                      {"unary": pct, "binary": pct}),
            _overview(a, records, "costs (params, GFLOPs per image, training images/s)",
                      COST_METRICS, costs)]


def run_lines(records: list[RunRecord]) -> list[Line]:
    """Incomplete, failed and flagged runs, and the environments the finished ones came from."""
    states: dict[str, int] = {}
    for r in records:
        if r.state != RunState.DONE:
            states[r.state] = states.get(r.state, 0) + 1
    out = []
    if states:
        out.append(Line("incomplete: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                        + " (cells show n and what is missing)", "warning"))
    out += [Line(f"{r.run.id}: {r.status.get('error') or 'no reason recorded'}", "failed",
                 "failed", True) for r in records if r.state == RunState.FAILED]
    out += [Line(text, "flagged", "flagged", True) for text in flag_lines(records)]
    envs = environments(records)
    if len(envs) == 1:
        out.append(Line(f"environment: {next(iter(envs))}", "dim"))
    elif envs:
        out.append(Line(f"these runs come from {len(envs)}; float rounding differs between "
                        "them and training amplifies it, so one config can give other numbers "
                        "in each", "warning", "mixed environments:"))
        out += [Line(f"{label}: {len(ids)} run(s)", indent=True) for label, ids in envs.items()]
    used = plugin_summary([r.run.config for r in records])
    if used:  # which code the plugin rows are (bench/plugins.py)
        out.append(Line(f"plugins: {used}", "dim"))
    return out


def report_items(a: Analysis, records: list[RunRecord]) -> list[TextTable | Line]:
    """Everything the report shows, in order: what every format renders."""
    out: list[TextTable | Line] = []
    if a.description:
        out.append(Line(a.description, "description", f"{a.experiment}:"))
    if a.baseline_note:  # no comparisons at all: said before any table
        out.append(Line(a.baseline_note, "warning", "warning:"))
    for dataset in a.datasets:
        out += tables(a, dataset)
    out += headline_tables(a)  # across the datasets
    if a.datasets:
        out.append(Line(LEGEND, "legend"))
    return out + overview_tables(a, records) + run_lines(records)
