"""Where the variance of a strategy's metric comes from: split, seed and test images (a
one-way random-effects ANOVA over splits plus the runs' test-image bootstrap variance), what
pairing two strategies buys, and init vs data order from a crossed design. Pure numbers: numpy
and scipy only. Cells as in bench/stats/blocks.py: ``{(split, seed): value}`` or ``{seed: value}``.

Components are moment estimates (bench.stats.blocks.one_way / two_way); a negative estimate is
clamped at 0 and listed in ``clamped``. The test set is drawn with the split, so its noise is
partly shared by a split's runs (c, the mean covariance of two runs' test noise) and partly
run-specific (v - c, v = a run's test-image variance):

    E[between-split component] = var_split + c,   E[within-split MS] = var_seed + v - c

so var_split = between - c, var_seed = within - (v - c), var_test = v; they add up to the
variance of one run's metric over fresh splits, seeds and test draws.

API:
    variance_table(values, test_var=None, test_cov=None) -> VarianceTable
        test_var {(split, seed): v}, test_cov {split: c}: bench.stats.images.image_noise /
        replicate_noise per split, then images.noise_by_split
    pairing_gain(values_a, values_b) -> PairingGain   corr, Var(A - B) vs Var A + Var B
    seed_components(values) -> SeedComponents   {(init, order): value} at one split
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

from bench.stats.blocks import _key, _plural, _sorted, blocks, by_split, one_way, two_way


# --- where a strategy's variance comes from ---------------------------------------------------
@dataclass
class VarianceTable:
    """One strategy's metric: variance components (display units squared) and their shares.

    split: what changing the split moves apart from its test images (training and validation
    data); seed: init, data order, augmentation; test: test-image sampling with the model fixed
    (the mean per-run bootstrap variance). None where the design cannot estimate it; shares are
    over the components that are estimated."""
    n_splits: int
    n_runs: int
    mean: float | None
    var_split: float | None
    var_seed: float | None
    var_test: float | None
    share_split: float | None = None
    share_seed: float | None = None
    share_test: float | None = None
    total: float | None = None
    test_shared: float | None = None  # mean covariance of two runs' test noise on one split
    clamped: list[str] = field(default_factory=list)
    note: str = ""


def variance_table(values: Mapping[Hashable, float | None],
                   test_var: Mapping[Hashable, float] | None = None,
                   test_cov: Mapping[Hashable, float] | None = None) -> VarianceTable:
    """Split / seed / test-image variance of one strategy's metric ``{(split, seed): value}``.

    ``test_var``: per run ``{(split, seed): v}`` the bootstrap variance of its metric over test
    images (model fixed). ``test_cov``: per split the mean covariance of two runs' bootstrap
    replicates on that split's shared test images (bench.stats.images.image_noise). The test
    set is drawn with the split, so its noise sits partly in the split component (the part the
    seeds share, c) and partly in the seed component (v - c): E[between] = var_split + c,
    E[within] = var_seed + v - c. Without test_cov, c = 0 (test noise assumed run-specific).
    Negative estimates are clamped at 0 and listed in ``clamped``."""
    cells, missing = blocks(values)
    notes = [f"{_plural(missing, 'missing value')} left out"] if missing else []
    if not cells:
        return VarianceTable(0, 0, None, None, None, None, note="; ".join(["no values", *notes]))
    groups = by_split(cells)
    anova = one_way([list(g.values()) for g in groups.values()])
    out = VarianceTable(len(groups), len(cells), anova.grand_mean, None, None, None)
    v = c = None
    if test_var is not None:
        tv = {_key(k): x for k, x in test_var.items()}
        found = [tv[k] for k in cells if k in tv and tv[k] is not None]
        if len(found) < len(cells):
            notes.append(f"test-image variance for {len(found)} of {len(cells)} runs")
        if found:
            v = float(np.mean(found))
            covs = [test_cov[s] for s in groups if test_cov and test_cov.get(s) is not None]
            c = float(np.mean(covs)) if covs else 0.0
            if not covs:
                notes.append("no test_cov: test-image noise taken as run-specific")
            out.var_test, out.test_shared = v, c
    run_noise = v - c if v is not None else 0.0  # the test noise seeds do not share
    raw_seed = None if anova.var_within is None else anova.var_within - run_noise
    raw_split = None if anova.var_between_raw is None else anova.var_between_raw - (c or 0.0)
    for label, raw in (("split", raw_split), ("seed", raw_seed)):
        if raw is not None and raw < 0:
            out.clamped.append(label)
        setattr(out, f"var_{label}", None if raw is None else max(0.0, raw))
    if out.clamped:
        notes.append(f"negative estimate(s) clamped at 0: {', '.join(out.clamped)}")
    if len(groups) == 1:
        notes.append("one split: no split component")
    if anova.var_within is None:
        notes.append("one run per split: split and seed cannot be told apart")
    parts = {k: getattr(out, f"var_{k}") for k in ("split", "seed", "test")}
    present = {k: x for k, x in parts.items() if x is not None}
    if out.var_split is not None or out.var_seed is not None:
        out.total = float(sum(present.values()))
        for k, x in present.items():
            setattr(out, f"share_{k}", x / out.total if out.total > 0 else None)
    out.note = "; ".join(notes)
    return out


@dataclass
class PairingGain:
    """What pairing buys: Var(A - B) = Var A + Var B - 2 Cov(A, B) over the paired blocks.
    ``variance_ratio`` = Var(A - B) / (Var A + Var B): below 1 pairing narrows the interval by
    its square root. The within-split figures use deviations from the split means (what seed
    pairing buys once the split is accounted for); None without within-split df."""
    n_blocks: int
    n_splits: int
    var_a: float | None
    var_b: float | None
    cov: float | None
    corr: float | None
    var_diff: float | None
    variance_ratio: float | None
    corr_within: float | None = None
    variance_ratio_within: float | None = None
    note: str = ""


def _corr(va: float, vb: float, cov: float) -> float | None:
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else None


def pairing_gain(values_a: Mapping[Hashable, float | None],
                 values_b: Mapping[Hashable, float | None]) -> PairingGain:
    """Correlation of paired runs of two strategies across their shared (split, seed) blocks."""
    a, _ = blocks(values_a)
    b, _ = blocks(values_b)
    common = [k for k in _sorted(a) if k in b]
    x = np.array([a[k] for k in common])
    y = np.array([b[k] for k in common])
    splits = by_split({k: 0.0 for k in common})
    out = PairingGain(len(common), len(splits), None, None, None, None, None, None)
    if len(common) < 2:
        out.note = "fewer than 2 paired blocks"
        return out
    m = np.cov(x, y)
    out.var_a, out.var_b, out.cov = float(m[0, 0]), float(m[1, 1]), float(m[0, 1])
    out.corr = _corr(out.var_a, out.var_b, out.cov)
    out.var_diff = float(np.var(x - y, ddof=1))
    both = out.var_a + out.var_b
    out.variance_ratio = out.var_diff / both if both > 0 else None
    df = len(common) - len(splits)
    if len(splits) > 1 and df > 0:
        dx, dy = x.copy(), y.copy()
        for s in splits:
            sel = np.array([sp == s for sp, _ in common])
            dx[sel] -= x[sel].mean()
            dy[sel] -= y[sel].mean()
        va, vb, cv = (float((p * q).sum()) / df for p, q in ((dx, dx), (dy, dy), (dx, dy)))
        out.corr_within = _corr(va, vb, cv)
        out.variance_ratio_within = (va + vb - 2 * cv) / (va + vb) if va + vb > 0 else None
    return out


# --- init vs data order (crossed seeds) -------------------------------------------------------
@dataclass
class SeedComponents:
    """Crossed design {(init, order): value} at one split: two-way random-effects ANOVA."""
    n_init: int
    n_order: int
    var_init: float | None
    var_order: float | None
    var_residual: float | None  # interaction + everything else (one run per cell)
    share_init: float | None = None
    share_order: float | None = None
    share_residual: float | None = None
    dropped: list = field(default_factory=list)  # ("init" | "order", key) left out
    clamped: list[str] = field(default_factory=list)
    note: str = ""


def seed_components(values: Mapping[tuple, float | None]) -> SeedComponents:
    """Init vs data-order variance from a crossed grid of runs keyed (init, order). Missing
    cells: the init or order value with the most missing cells is dropped until the grid is
    complete (greedy; ``dropped`` names them)."""
    cells, missing = blocks(values)
    inits, orders = _sorted({i for i, _ in cells}), _sorted({o for _, o in cells})
    dropped = []
    while inits and orders:
        gaps_i = {i: sum((i, o) not in cells for o in orders) for i in inits}
        gaps_o = {o: sum((i, o) not in cells for i in inits) for o in orders}
        worst_i, worst_o = max(gaps_i, key=gaps_i.get), max(gaps_o, key=gaps_o.get)
        if gaps_i[worst_i] == 0:
            break
        # drop whichever loses the larger fraction of its line (fewer real values go with it)
        if gaps_i[worst_i] / len(orders) >= gaps_o[worst_o] / len(inits):
            inits.remove(worst_i)
            dropped.append(("init", worst_i))
        else:
            orders.remove(worst_o)
            dropped.append(("order", worst_o))
    notes = [f"{_plural(missing, 'missing value')} left out"] if missing else []
    if dropped:
        notes.append("to complete the grid, left out " +
                     ", ".join(f"{kind} {key}" for kind, key in dropped))
    if len(inits) < 2 or len(orders) < 2:
        notes.append("needs a complete grid of at least 2 inits x 2 orders")
        return SeedComponents(len(inits), len(orders), None, None, None, dropped=dropped,
                              note="; ".join(notes))
    tw = two_way([[cells[(i, o)] for o in orders] for i in inits])
    return components(len(inits), len(orders), tw.var_rows_raw, tw.var_cols_raw, tw.var_error,
                      notes, dropped)


def components(n_init: int, n_order: int, var_init: float, var_order: float,
               var_residual: float, notes: list[str], dropped=()) -> SeedComponents:
    """SeedComponents from raw moment estimates: negatives clamped at 0 (and said), shares of
    their sum."""
    out = SeedComponents(n_init, n_order, max(0.0, var_init), max(0.0, var_order),
                         var_residual, dropped=list(dropped))
    out.clamped = [k for k, raw in (("init", var_init), ("order", var_order)) if raw < 0]
    notes = list(notes)
    if out.clamped:
        notes.append(f"negative estimate(s) clamped at 0: {', '.join(out.clamped)}")
    total = out.var_init + out.var_order + out.var_residual
    if total > 0:
        out.share_init, out.share_order, out.share_residual = (
            out.var_init / total, out.var_order / total, out.var_residual / total)
    out.note = "; ".join(notes)
    return out


__all__ = ["PairingGain", "SeedComponents", "VarianceTable", "pairing_gain", "seed_components",
           "variance_table"]
