"""The statistics behind every report: per cell n, mean, std and the CI of the mean; per row
its seed-paired comparison with its family's baseline row (bench/report/families.py: the
strategies, or with `--compare AXIS` the values of one matrix axis; Holm within each family);
the "best" rows of each table; AI-TOD bucket box counts; the detection bootstrap over test
images; the share analysis (shares.py). Where data.split_seed is a matrix axis the runs are
paired within (split, seed) blocks and the comparisons are two-level (splits.py), with each
split's own verdicts and the variance table beside them; for classification the tests over
test images (per_image.py); over several datasets one headline (headline.py). Built once per
report; tables, exports and plots only format it (the curves are read when drawn, curves.py).

All numbers are in the units the tables show (test metrics in %), so `--min-effect` is too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from bench.config import ConfigError, Experiment
from bench.config.experiment import parse_yaml
from bench.data import DATASETS
from bench.report.families import Family, families, tables, value_of
from bench.report.headline import CrossTask, cross_task
from bench.report.image_bootstrap import ImageBootstrap, bootstrap_dataset, bucket_support
from bench.report.per_image import ImageTests, image_tests
from bench.report.records import (COST_METRICS, SHARE_METRICS, STRATEGY, Cell,
                                  RunRecord, build_cells, cell_key, dataset_names, is_row_axis,
                                  is_strategy_axis, row_key, row_name, row_parts, scale, short,
                                  sort_rows, split_of, value_text)
from bench.report.shares import ShareTables, analyse_shares
from bench.report.splits import (best_blocks, compare_family, describe_blocks,
                                 pairing, per_split, seeds_only, split_variance,
                                 splits_of)
from bench.stats.compare import BoxSupport, CellStats, Comparison, best_rows, describe
from bench.stats.variance import PairingGain, VarianceTable
from bench.tasks import TASKS
from lesa.names import did_you_mean, unknown

DEFAULT_BASELINE = "conv"
ALPHA = 0.05


@dataclass
class Row:
    name: str
    cell: Cell             # the stored values (fractions for test metrics)
    stats: CellStats       # in display units
    comparison: Comparison | None = None  # against the baseline row; None for the baseline
    best: bool | None = None  # None where "best" is not defined (shares, costs)
    is_baseline: bool = False
    family: Family | None = None  # the rows it is compared with (test metrics only)
    # data splits as blocks (two or more splits; headline metrics): each split's own
    # comparison, where the row's variance comes from, what pairing with its baseline buys
    per_split: dict = field(default_factory=dict)  # split -> Comparison
    variance: VarianceTable | None = None
    pairing: PairingGain | None = None

    def values(self) -> dict:
        return self.stats.values


@dataclass
class Column:
    """One dataset's metric: a row per strategy (and other non-seed axes); on test metrics the
    families as its tables show them (families.tables), "best" within each table."""
    dataset: str
    metric: str
    unit: str
    rows: dict[str, Row] = field(default_factory=dict)
    tables: list[list[Family]] = field(default_factory=list)
    splits: list = field(default_factory=list)  # the data splits its cells come from

    @property
    def blocked(self) -> bool:
        """Two or more data splits: the comparisons are two-level (splits.py)."""
        return len(self.splits) > 1


@dataclass
class Analysis:
    experiment: str
    records: list[RunRecord]
    baseline: str | None
    baseline_note: str
    min_effect: float | None
    alpha: float
    columns: dict[tuple[str, str], Column]
    datasets: list[str]
    buckets: dict[str, dict[str, BoxSupport | None]]   # detection datasets only
    bootstrap: dict[str, ImageBootstrap]               # detection datasets only
    shares: dict[str, ShareTables | None] = field(default_factory=dict)  # share analysis
    varies: str = STRATEGY      # what the comparisons compare: STRATEGY or a matrix axis
    compare: str | None = None  # --compare AXIS as given
    description: str | None = None  # the experiment file's `description:`
    families: dict[str, list[Family]] = field(default_factory=dict)  # per dataset
    design: dict = field(default_factory=dict)  # the experiment's analysis: section
    images: dict[str, ImageTests] = field(default_factory=dict)  # classification datasets
    headlines: list[CrossTask] = field(default_factory=list)  # across datasets
    _curves: list | None = field(default=None, repr=False)

    @property
    def curves(self) -> list:
        """Every dataset's training curves (curves.py), read from the runs' logs once."""
        if self._curves is None:
            from bench.report.curves import dataset_curves

            self._curves = dataset_curves(self, 1 - self.alpha)
        return self._curves

    @property
    def vs(self) -> str:
        """The baseline as the headers say it: `conv`, `model.release=False`."""
        if self.baseline is None:
            return "-"
        return self.baseline if self.varies == STRATEGY else f"{self.varies}={self.baseline}"

    def column(self, dataset: str, metric: str) -> Column:
        return self.columns[(dataset, metric)]

    def headline(self, dataset: str) -> tuple[str, ...]:
        """The metrics with a table of their own (the task's headline: acc1; map_50 and map)."""
        return TASKS[DATASETS[dataset].task].headline

    def bucket_metrics(self, dataset: str) -> dict[str, str]:
        """{"test/ap_vt": "ap_vt", ...}: the size buckets the dataset's task scores."""
        return {f"test/{name}": name for name in TASKS[DATASETS[dataset].task].buckets or {}}

    def bucket_range(self, dataset: str, name: str) -> tuple[float, float]:
        return TASKS[DATASETS[dataset].task].buckets[name]

    def task(self, dataset: str) -> str:
        return DATASETS[dataset].task


def all_metrics() -> dict[str, tuple[str, ...]]:
    """Per task, every metric the report reads: the headline and bucket metrics first."""
    return {task: tuple(dict.fromkeys(spec.headline + spec.bucket_metrics() + spec.metrics +
                                      SHARE_METRICS + COST_METRICS))
            for task, spec in TASKS.items()}


def strategies(records: list[RunRecord]) -> list[str]:
    """What --baseline can name: the strategies, and rows' first words where an axis brings
    settings with its strategy (`dynamic,release=True`)."""
    return sort_rows({row_name(row_key(r.run)) for r in records})


def choose_baseline(records: list[RunRecord], baseline: str | None) -> tuple[str | None, str]:
    """The baseline strategy, and a note where there is none. An explicit name that is not
    one of the experiment's strategies is an error naming the choices."""
    names = strategies(records)
    if baseline is not None:
        if baseline not in names:
            raise ConfigError(f"--baseline: {unknown('strategy', baseline, names)}")
        return baseline, ""
    if DEFAULT_BASELINE in names:
        return DEFAULT_BASELINE, ""
    return None, (f"no {DEFAULT_BASELINE} row in this experiment: no comparisons; choose a "
                  f"baseline with --baseline ({', '.join(names)})")


def _comparable_axes(exp: Experiment) -> list[str]:
    return [axis for axis, values in exp.matrix.items() if is_row_axis(axis, values)]


def choose_comparison(exp: Experiment, records: list[RunRecord], compare: str | None,
                      baseline: str | None) -> tuple[str, str | None, list[str], str]:
    """(what varies, the baseline value, the values in matrix order, a note where there is no
    baseline) for `--compare` and `--baseline`. Without --compare the strategies are compared
    (baseline: conv unless named). With it, the values of that matrix axis: the first one the
    runs have is the baseline unless --baseline names another. An axis the matrix does not
    have, or one that cannot be compared (the seed, the dataset, the split), and a --baseline
    that is not one of its values are errors naming the choices."""
    if compare is None:
        chosen, note = choose_baseline(records, baseline)
        return STRATEGY, chosen, [], note
    axes = _comparable_axes(exp)
    choices = f"compare one of: {', '.join(axes)}" if axes else \
        "this matrix has no axis to compare (every axis is the seed, the dataset or the split)"
    if compare not in exp.matrix:
        raise ConfigError(f"--compare {compare}: not an axis of this matrix"
                          f"{did_you_mean(compare, list(exp.matrix))}; {choices}")
    if compare not in axes:
        why = {"seed": "the seeds pair every comparison",
               "data.split_seed": "the data splits are blocks of every comparison"}.get(
            compare, "the seeds pair every comparison" if compare.startswith("trainer.seeds")
            else "each dataset has tables of its own")
        raise ConfigError(f"--compare {compare}: {why}, so its values are not rows; {choices}")
    values = exp.matrix[compare]
    texts = [value_text(compare, v) for v in values]
    varies = STRATEGY if is_strategy_axis(compare, values) else compare
    if baseline is not None:
        try:
            parsed = parse_yaml(baseline)
        except yaml.YAMLError:  # not YAML: matched as text
            parsed = baseline
        for value, text in zip(values, texts):
            if baseline == text or value == parsed or text == value_text(compare, parsed):
                return varies, text, texts, ""
        close = did_you_mean(baseline.lower(), [t.lower() for t in texts])  # `ture`: True
        close = next((f" (did you mean {t!r}?)" for t in texts if f"{t.lower()!r}" in close), "")
        raise ConfigError(f"--baseline {baseline}: not a value of {compare}{close}; choose "
                          f"from {', '.join(texts)}")
    present = {value_of(row_parts(r.run), varies) for r in records}
    return varies, next((t for t in texts if t in present), texts[0]), texts, ""


def _no_comparison(a: "Analysis") -> str:
    """Why the selection leaves nothing to compare, or ''."""
    found = [f for d in a.datasets for f in a.families.get(d, [])]
    if a.baseline is None or not found or any(f.comparisons for f in found):
        return ""
    if not any(f.baseline for f in found):
        return f"no row has {a.vs}: no comparisons"
    rows = sorted({r for f in found for r in f.rows})
    what = "strategy" if a.varies == STRATEGY else f"value of {a.varies}"
    return (f"nothing to compare with {a.vs}: no row differs from it in its {what} alone (the "
            f"rows: {', '.join(rows)}); a --only or --set may have left the others out")


def sequential(rows: dict[str, dict], baseline: str, plan, pool: list,
               higher_is_better: bool = True) -> dict[str, Comparison]:
    """The family's comparisons under a planned sequential design: the paired differences in
    the seed pool's order, decided look by look (bench.stats.sequential.decide, the code the
    simulations check), each as a Comparison whose interval is the repeated confidence
    interval of the look it stopped at (or the last look read)."""
    import math

    import numpy as np
    from scipy import stats

    from bench.stats.sequential import decide

    members = [n for n in rows if n != baseline]
    base = rows[baseline]
    diffs = np.full((len(members), len(pool)), np.nan)
    for j, name in enumerate(members):
        for i, seed in enumerate(pool):
            if seed in rows[name] and seed in base:
                diffs[j, i] = rows[name][seed] - base[seed]
    out = {}
    looks = list(plan.looks)
    scale = max((abs(v) for r in rows.values() for v in r.values() if v is not None and math.isfinite(v)),
                default=1.0)
    decisions = decide(plan, diffs, higher_is_better, scale).rows() if members else []
    for name, d in zip(members, decisions):
        low = high = effect = None
        if d.n >= 2 and d.sd is not None and d.bound is not None:
            half = float(stats.t.isf(d.bound / 2, d.n - 1)) * d.sd / math.sqrt(d.n)
            low, high = d.diff - half, d.diff + half
            effect = d.diff / d.sd if d.sd > 0 else None
        k = None if d.open else d.look + 1
        if k is not None:
            where = f"stopped at look {k} of {len(looks)} ({d.n} seeds): {d.reason}"
        elif d.n:
            where = f"open after {d.n} seeds; the next look reads {d.next_seeds}"
        else:
            where = f"open: no look read yet (the first needs {d.next_seeds} seeds)"
        out[name] = Comparison(
            name=name, baseline=baseline, n_pairs=d.n, paired=True, diff=d.diff, ci_low=low,
            ci_high=high, p=d.p, p_wilcoxon=None, p_adjusted=None, effect_size=effect,
            verdict=d.verdict, seeds_needed=None if k else d.next_seeds,
            note=f"planned looks {looks}: {where}",
            method="sequential paired t", n_a=len(rows[name]), n_b=len(base), sd=d.sd,
            alpha=plan.alpha, higher_is_better=higher_is_better, margin=plan.margin,
            p_equivalence=d.p_equivalence, df=d.n - 1 if d.n else None,
            within_margin=d.within_margin if d.within_margin else None, looks=tuple(looks),
            look=k, stop_reason=d.reason, bound=d.bound,
            equivalence_shown=d.within_margin_shown)
    return out


def _column(dataset: str, metric: str, cells: dict[str, Cell], found: list[Family],
            min_effect: float | None, alpha: float, margin: float | None = None,
            plan=None, pool: list | None = None) -> Column:
    """`margin`: the metric's smallest difference of interest (equivalence tests); `plan`: a
    planned sequential design (bench.stats.sequential.Plan) its comparisons are decided by,
    over the seeds of `pool` in its order."""
    k = scale(metric)
    unit = "%" if k == 100 or metric.startswith("shares/") else ""
    col = Column(dataset, metric, unit)
    col.splits = sorted({s for c in cells.values() for s in splits_of(c.by_seed)}, key=repr)
    cell_stats = describe_blocks if col.blocked else describe
    order = [key for family in found for key in family.rows if key in cells]
    for name in order + sort_rows(set(cells) - set(order)):
        cell = cells[name]
        col.rows[name] = Row(name, cell, cell_stats({s: v * k for s, v in cell.by_seed.items()}))
    if not metric.startswith("test/"):
        return col  # shares and costs: no "better"
    values = {name: row.values() for name, row in col.rows.items()}
    col.tables = tables(found)
    for table in col.tables:
        names = [n for family in table for n in family.rows if n in col.rows]
        best = (best_blocks if col.blocked else best_rows)(
            {n: values[n] for n in names}, alpha=alpha)
        for name in names:
            col.rows[name].best = name in best
    for family in found:
        for name in family.rows:
            col.rows[name].family = family
        if family.baseline is None or family.baseline not in col.rows:
            continue
        col.rows[family.baseline].is_baseline = True
        rows = {n: values[n] for n in family.rows if n in col.rows}
        if plan is not None:  # one split at most (refused at load otherwise): the seed pool
            found_ = sequential({n: seeds_only(v) for n, v in rows.items()}, family.baseline,
                                plan, pool or [])
        else:
            found_ = compare_family(rows, family.baseline, alpha, min_effect, margin)
        for name, comparison in found_.items():
            col.rows[name].comparison = comparison
        if col.blocked and metric in TASKS[DATASETS[dataset].task].headline:
            for split, by_row in per_split(rows, family.baseline, alpha, min_effect,
                                           margin).items():
                for name, comparison in by_row.items():
                    col.rows[name].per_split[split] = comparison
    return col


def _variance(col: Column, images: ImageTests | None) -> None:
    """The variance table of each row of a blocked headline column and, against its family's
    baseline, what pairing buys; acc1's test component from the per-image records."""
    for name, row in col.rows.items():
        noise = images.noise(name) if images is not None and col.metric == "test/acc1" \
            else None
        row.variance = split_variance(row.values(), noise)
        base = row.family.baseline if row.family else None
        if base and base != name and base in col.rows:
            row.pairing = pairing(row.values(), col.rows[base].values())


def _plan(design: dict, dataset: str, metric: str):
    """The planned sequential design of a headline table (None: the table is read once)."""
    if not design.get("looks") or metric not in TASKS[DATASETS[dataset].task].headline:
        return None
    from bench.stats.sequential import Plan

    return Plan.from_analysis(design, short(metric))


def analyse(exp: Experiment, records: list[RunRecord], baseline: str | None = None,
            min_effect: float | None = None, alpha: float = ALPHA,
            image_bootstrap: bool = True, compare: str | None = None) -> Analysis:
    """`compare`: the matrix axis whose values are compared (None: the strategies);
    `baseline`: the strategy, or that axis's value, the others are compared with."""
    varies, chosen, order, note = choose_comparison(exp, records, compare, baseline)
    design = exp.analysis or {}
    alpha = design.get("alpha", alpha)
    cells = build_cells(records, all_metrics())
    datasets = dataset_names(records)
    parts = {}
    for r in records:
        parts.setdefault(r.run.config["data"]["name"], {})[row_key(r.run)] = row_parts(r.run)
    found = {d: families({k: parts[d][k] for k in sort_rows(parts[d])}, varies, chosen, order)
             for d in datasets}
    pool = list(exp.matrix["seed"]) if isinstance(exp.matrix.get("seed"), list) else None
    columns = {(d, m): _column(d, m, by_row, found[d], min_effect, alpha,
                               (design.get("margin") or {}).get(short(m)),
                               _plan(design, d, m), pool)
               for d in datasets for m, by_row in cells.get(d, {}).items()}
    buckets, boots, images = {}, {}, {}
    shares = {d: analyse_shares([r for r in records if r.run.config["data"]["name"] == d],
                                alpha) for d in datasets}
    # the bootstrap pairs rows by strategy (image_bootstrap.py): comparing an axis, against
    # the default strategy baseline
    strategy = chosen if varies == STRATEGY else choose_baseline(records, None)[0]
    for d in datasets:
        mine = [r for r in records if r.run.config["data"]["name"] == d]
        if DATASETS[d].task == "classification" and image_bootstrap:
            images[d] = image_tests(d, mine, lambda r: row_key(r.run), found[d],
                                    confidence=1 - alpha)
        if DATASETS[d].task != "detection":
            continue
        buckets[d] = bucket_support(mine, TASKS["detection"].buckets)
        splits = {split_of(cell_key(r.run)) for r in mine}
        if image_bootstrap and len(splits) > 1:  # one set of test images per split
            boots[d] = ImageBootstrap(d, baseline=strategy, confidence=1 - alpha, note=(
                f"the {len(splits)} data splits test different images and the bootstrap "
                f"resamples one test set: see one split with --only data.split_seed=S"))
        elif image_bootstrap:
            boots[d] = bootstrap_dataset(d, mine, lambda r: row_key(r.run), strategy,
                                         confidence=1 - alpha)
    description = exp.raw.get("description") if isinstance(exp.raw, dict) else None
    a = Analysis(exp.name, records, chosen, note, min_effect, alpha, columns, datasets,
                 buckets, boots, shares, varies, compare,
                 None if description is None else str(description).strip(), found)
    a.baseline_note = a.baseline_note or _no_comparison(a)
    a.design = design
    a.images = images
    for (d, m), col in columns.items():
        if col.blocked and m in a.headline(d):
            _variance(col, images.get(d))
    a.headlines = cross_task(a, 1 - alpha)
    return a
