"""The report's tables of what each interval covers (docs/statistics.md), as plain text cells
for the terminal and every export (views.report_items calls them):

- across splits: per row its two-level verdict (splits as blocks) beside each split's own
  seed-paired verdict (`split_verdict_table`);
- the variance table: how much of a row's variance comes from the split, the seed and the test
  images, and what pairing with its baseline buys (`variance_table_view`); where
  trainer.seeds.init / .order are axes, the seed's part as initialisation vs data order
  (`seed_table_view`);
- classification over test images: the paired bootstrap of acc1, beside the seed interval, and
  McNemar's exact test per seed pair (`image_table`);
- one headline across the datasets (`headline_tables`).
"""
from __future__ import annotations

import math

from bench.report.analysis import Analysis, Column, Row
from bench.report.per_image import mcnemar_summary
from bench.report.records import SeedPair, short
from bench.report.splits import seed_split
from bench.report.text import TextTable


def _ci(diff, low, high) -> str:
    if diff is None:
        return "-"
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return f"{diff:+.2f} (no CI)"
    return f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"


def _comparison_text(c) -> str:
    if c is None:
        return "-"
    return f"{_ci(c.diff, c.ci_low, c.ci_high)} {c.verdict}"


def _split_name(split) -> str:
    return "-" if split is None else str(split)


def _compared(col: Column) -> list[Row]:
    return [r for r in col.rows.values() if r.comparison is not None and not r.is_baseline]


# --- across splits ----------------------------------------------------------------------------
def split_verdict_table(a: Analysis, dataset: str, metric: str) -> TextTable | None:
    """Each row's two-level comparison (every split) beside each split's own (its seeds)."""
    col = a.column(dataset, metric)
    rows = _compared(col)
    if not col.blocked or not rows:
        return None
    n = len(col.splits)
    header = ["strategy", f"all {n} splits: Δ vs baseline [95% CI] verdict",
              *[f"split {_split_name(s)}: Δ [95% CI] verdict" for s in col.splits]]
    table = TextTable(f"{a.experiment}: {dataset} {short(metric)} ({col.unit or 'units'}), "
                      f"verdicts across splits and on each split", header)
    for row in rows:
        c = row.comparison
        table.rows.append([f"{row.name} vs {c.baseline}",
                           _comparison_text(c),
                           *[_comparison_text(row.per_split.get(s)) for s in col.splits]])
        table.best.append(False)
    table.notes = [
        f"all {n} splits: paired within (split, seed) blocks, Δ and its CI over the {n} split "
        f"means ({n - 1} df): covers the seeds and the split (which images train, validate and "
        f"test); Holm over the family",
        "split s: the paired t over that split's seeds alone (Holm over the family there): "
        "covers the seeds, conditional on that split; a verdict that holds on every split but "
        "not across them rests on too few splits, one that flips between splits does not "
        "carry to a new split"]
    return table


def _share(var, share) -> str:
    if var is None:
        return "-"
    part = "" if share is None else f"{100 * share:.0f}% "
    return f"{part}(sd {math.sqrt(var):.2f})"


def variance_table_view(a: Analysis, dataset: str, metric: str) -> TextTable | None:
    """Where each row's variance comes from, and what pairing with its baseline buys."""
    col = a.column(dataset, metric)
    rows = [r for r in col.rows.values() if r.variance is not None]
    if not col.blocked or not rows:
        return None
    unit = col.unit or "units"
    table = TextTable(
        f"{a.experiment}: {dataset} {short(metric)}: where the variance of a run comes from",
        ["strategy", "runs (splits)", "split share (sd)", "seed share (sd)",
         "test images share (sd)", "sd of a run", "corr with baseline: all / within split",
         "Var(Δ) / (Var A + Var B)"])
    notes = []
    for row in rows:
        v, p = row.variance, row.pairing
        total = "-" if v.total is None else f"{math.sqrt(v.total):.2f}"
        corr = "-" if p is None else " / ".join(
            "-" if x is None else f"{x:+.2f}" for x in (p.corr, p.corr_within))
        ratio = "-" if p is None or p.variance_ratio is None else (
            f"{p.variance_ratio:.2f}" + ("" if p.variance_ratio_within is None else
                                         f" / {p.variance_ratio_within:.2f} within"))
        table.rows.append([row.name, f"{v.n_runs} ({v.n_splits})",
                           _share(v.var_split, v.share_split), _share(v.var_seed, v.share_seed),
                           _share(v.var_test, v.share_test), total, corr, ratio])
        table.best.append(False)
        if v.note:
            notes.append(f"{row.name}: {v.note}")
    table.notes = [
        f"components of one run's {short(metric)} ({unit}^2 as sd): split = what a new split "
        f"changes apart from its test images (the training and validation data); seed = "
        f"initialisation, data order, augmentation; test images = the binomial noise of the "
        f"finite test set with the model fixed (from the per-image records; acc1 only); random-"
        f"effects ANOVA by moments, negative estimates clamped at 0 (docs/statistics.md)",
        "corr with baseline: the correlation of paired runs (same split and seed) with the "
        "family's baseline, over all blocks and within splits; Var(Δ) / (Var A + Var B) below 1 "
        "is what pairing buys: the interval narrows by its square root",
        *notes]
    return table


def seed_table_view(a: Analysis, dataset: str, metric: str) -> TextTable | None:
    """Where trainer.seeds.init / .order are matrix axes: each row's seed variance split into
    initialisation, data order and the residual (splits.seed_split)."""
    col = a.column(dataset, metric)
    found = {r.name: seed_split(r.values()) for r in col.rows.values()}
    found = {name: s for name, s in found.items() if s is not None}
    if not found:
        return None
    several = len(col.splits) > 1
    table = TextTable(
        f"{a.experiment}: {dataset} {short(metric)}: the seed's variance, initialisation vs "
        f"data order", ["strategy", f"runs (inits x orders{', splits' if several else ''})",
                        "init share (sd)", "order share (sd)", "residual share (sd)",
                        "sd of a run, one split"])
    notes = []
    for name, s in found.items():
        c = s.pooled
        parts = [c.var_init, c.var_order, c.var_residual]
        total = "-" if None in parts else f"{math.sqrt(sum(parts)):.2f}"
        where = f", {len([x for x in s.per_split.values() if x.var_init is not None])}" \
            if several else ""
        table.rows.append([name, f"{s.n_runs} ({c.n_init} x {c.n_order}{where})",
                           _share(c.var_init, c.share_init), _share(c.var_order, c.share_order),
                           _share(c.var_residual, c.share_residual), total])
        table.best.append(False)
        if c.note:
            notes.append(f"{name}: {c.note}")
    table.notes = [
        f"components of one run's {short(metric)} at a fixed split ({col.unit or 'units'}^2 as "
        f"sd): init = the initialisation (trainer.seeds.init); order = the data order, "
        f"augmentation and fresh training canvases (trainer.seeds.order); residual = their "
        f"interaction and whatever else moves one run (with one run per (init, order), the two "
        f"cannot be told apart); two-way random-effects ANOVA by moments over the complete "
        f"init x order grid (an init or order with missing runs is left out, named below), "
        f"negative estimates clamped at 0" + (
            "; pooled: the mean of each split's estimates" if several else "") +
        " (docs/statistics.md)",
        *notes]
    return table


# --- over test images -------------------------------------------------------------------------
def _interval(iv) -> str:
    if iv is None:
        return "-"
    if iv.ci_low != iv.ci_low:
        return f"{iv.estimate:.2f} [no CI]"
    return f"{iv.estimate:.2f} [{iv.ci_low:.2f}, {iv.ci_high:.2f}]"


def _seed_text(seed) -> str:
    """`s3`, or a SeedPair as it is (`i0/o1`)."""
    return str(seed) if isinstance(seed, SeedPair) else f"s{seed}"


def _mcnemar_cell(tests: dict) -> str:
    if not tests:
        return "-"
    parts = [f"{_seed_text(seed)} {t.a_only}:{t.b_only} p={t.p:.2g}"
             for seed, t in tests.items()]
    return "; ".join(parts) + f" ({mcnemar_summary(tests)})"


def image_table(a: Analysis, dataset: str) -> TextTable | None:
    """acc1 over resampled test images (every row on the same resamples), its difference from
    the baseline beside the seed interval, and McNemar's test per seed pair."""
    tests = a.images.get(dataset)
    if tests is None or not tests.splits:  # no run with per-image records: nothing to say
        return None
    col = a.columns.get((dataset, "test/acc1"))
    several = len(tests.splits) > 1
    sizes = sorted({s.n_images for s in tests.splits.values() if s.n_images})
    size = f"{'/'.join(map(str, sizes))} images" if sizes else "the test images"
    header = (["split"] if several else []) + [
        "strategy", "seeds", "acc1 [95% CI] test images", "Δ vs baseline [95% CI] test images",
        "Δ [95% CI] seeds", "McNemar per seed pair (right only here : only baseline)"]
    table = TextTable(f"{a.experiment}: {dataset} acc1 over test images (paired bootstrap over "
                      f"{size}, {tests.n_resamples} resamples) and McNemar per seed pair", header)
    notes = [tests.note] if tests.note else []
    for split, s in tests.splits.items():
        if s.note:
            notes.append(f"split {_split_name(split)}: {s.note}" if several else s.note)
        if s.bootstrap is None:
            continue
        for name, acc in s.bootstrap.strategies.items():
            base = tests.baselines.get(name)
            row = col.rows.get(name) if col else None
            seed_c = None
            if row is not None and base:
                seed_c = row.per_split.get(split) if several else row.comparison
            table.rows.append(([_split_name(split)] if several else []) + [
                name, ",".join(map(str, acc.seeds)), _interval(acc.interval),
                "baseline" if base is None else _ci(*_parts(s.differences.get(name))),
                "-" if seed_c is None else _ci(seed_c.diff, seed_c.ci_low, seed_c.ci_high),
                "-" if base is None else _mcnemar_cell(s.mcnemar.get(name, {}))])
            table.best.append(False)
    if not table.rows and not notes:
        return None
    table.notes = notes + [
        "test images: each row is the mean over its seeds of each seed's acc1 on the same "
        f"{tests.n_resamples} resamples of the test images (percentile interval), Δ on the same "
        "resamples: covers which test images were drawn, with every trained model fixed; "
        "seeds: the paired t interval over the seeds (on that split): covers the seeds, not "
        "the test images' draw",
        "McNemar: per seed pair, the images only this row gets right : only the baseline gets "
        "right, exact two-sided binomial test; it tests the two trained models, not the "
        "strategies, and the pairs share their images (read them side by side, do not pool)"]
    return table


def _parts(iv):
    return (None, None, None) if iv is None else (iv.estimate, iv.ci_low, iv.ci_high)


# --- across datasets --------------------------------------------------------------------------
def _estimate(e, digits: int = 2, sign: bool = True) -> str:
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = f"{fmt.format(e.estimate)} [{fmt.format(e.seeds.ci_low)}, {fmt.format(e.seeds.ci_high)}]"
    if e.tasks is not None:
        text += f" tasks [{fmt.format(e.tasks.ci_low)}, {fmt.format(e.tasks.ci_high)}]"
    return text


def _units(task: str, keys: list) -> str:
    """`digits: 5 seeds`, or with splits as blocks `probe_local: 9 (split, seed) blocks`."""
    splits = {k[0] for k in keys if isinstance(k, tuple)}
    seed = "(init, order)" if any(isinstance(k[1] if isinstance(k, tuple) else k, SeedPair)
                                  for k in keys) else "seed"
    if len(splits) > 1:
        return f"{task}: {len(keys)} (split, {seed}) blocks of {len(splits)} splits"
    return f"{task}: {len(keys)} {'seeds' if seed == 'seed' else 'seed pairs ' + seed}"


def headline_tables(a: Analysis) -> list[TextTable]:
    """One headline per group of families across the datasets (headline.py)."""
    out = []
    for h in a.headlines:
        r = h.result
        if not r.rows:
            continue
        metrics = ", ".join(f"{d} {short(m)}" for d, m in h.metrics.items())
        label = f"; {h.label}" if h.label else ""
        table = TextTable(f"{a.experiment}: headline across {len(r.tasks)} datasets ({metrics}) "
                          f"vs {h.baseline}{label}",
                          ["strategy", "mean gain [95% CI]", "per dataset", "IQM gain [95% CI]",
                           "P(improvement) [95% CI]", "P(improvement, paired)"])
        for name, row in r.rows.items():
            table.rows.append([
                name, _estimate(row.mean_gain),
                "; ".join(f"{t} {g:+.2f}" for t, g in row.per_task_gain.items()),
                _estimate(row.iqm_gain, 3), _estimate(row.p_improvement, 2, False),
                f"{row.p_improvement_paired.estimate:.2f}"])
            table.best.append(False)
        seeds = "; ".join(_units(t, s) for t, s in r.seeds.items())
        table.notes = ([r.note] if r.note else []) + [
            f"mean gain: the mean over datasets of each one's mean paired difference in its own "
            f"metric (points; read it with the per-dataset column); IQM: interquartile mean of "
            f"the runs' scores normalised per dataset to 0 (worst run) .. 1 (best run); "
            f"P(improvement): the chance that a run of the row beats a run of {h.baseline} "
            f"(Mann-Whitney, ties 1/2), averaged over datasets; paired: against its own seed "
            f"twin",
            f"[95% CI]: {r.n_resamples} resamples of the seeds within each dataset, jointly for "
            f"every row (pairs kept; {seeds}); tasks [...]: the datasets resampled too, a check "
            f"of how much the headline rests on which were run (crude with few); below about 10 "
            f"seeds per dataset the percentile intervals are too narrow: descriptive "
            f"(docs/statistics.md)"]
        out.append(table)
    return out


__all__ = ["headline_tables", "image_table", "seed_table_view", "split_verdict_table",
           "variance_table_view"]
