"""Splits as blocks in the report: where `data.split_seed` is a matrix axis, cells are keyed
(split, seed) (records.cell_key) and every comparison pairs runs within a block, its interval
over the split means covering split-to-split variation (bench/stats/blocks.py, the two-level
model); beside it, each split's own seed-paired verdicts, and per strategy where its variance
comes from (split, seed, test images: bench/stats/variance.py) and what pairing with the
baseline buys. Where trainer.seeds.init / .order are matrix axes (cells keyed by SeedPair),
the seed part splits further into initialisation, data order and the residual (`seed_split`).
Pure numbers (numpy, scipy); views.py and split_views.py format them.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from bench.report.records import SeedPair, seed_of, split_of
from bench.stats.blocks import BlockComparison, blocks, compare_blocks_all, two_way
from bench.stats.compare import CellStats, Comparison, compare_all, describe
from bench.stats.variance import (PairingGain, SeedComponents, VarianceTable, components,
                                  pairing_gain, seed_components, variance_table)


def _sorted(keys):
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


def is_blocked(values: Mapping[Hashable, float | None]) -> bool:
    """Whether a cell is keyed by (split, seed) blocks."""
    return any(isinstance(k, tuple) for k in values)


def splits_of(values: Mapping[Hashable, float | None]) -> list:
    """The splits a cell's (finite) values come from, sorted ([None] for plain seeds)."""
    return _sorted({split_of(k) for k, v in values.items()
                    if v is not None and math.isfinite(float(v))})


def describe_blocks(values: Mapping[Hashable, float | None],
                    confidence: float = 0.95) -> CellStats:
    """A cell over (split, seed) blocks. With two or more splits: n counts runs, std is over
    every run, the mean is the mean of the split means, and its CI the t interval over the
    split means (S - 1 df; the two-level model, as the comparisons); with one split, exactly
    describe()."""
    out = describe(values, confidence)
    groups: dict = {}
    for key, value in out.values.items():
        groups.setdefault(split_of(key), []).append(value)
    if len(groups) < 2:
        return out
    means = np.array([np.mean(g) for g in groups.values()])
    s = len(means)
    out.mean = float(means.mean())
    sd = float(means.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, s - 1)) * sd / math.sqrt(s)
    out.ci_low, out.ci_high = out.mean - half, out.mean + half
    note = f"mean and CI over the {s} split means ({s - 1} df)"
    out.note = "; ".join(filter(None, [out.note, note]))
    return out


def best_blocks(rows: Mapping[str, Mapping[Hashable, float | None]],
                alpha: float = 0.05) -> set[str]:
    """best_rows' rule on blocked cells: the best mean (of split means) and every row the
    two-level comparison does not resolve against it."""
    means = {name: describe_blocks(values).mean for name, values in rows.items()}
    means = {name: m for name, m in means.items() if m is not None}
    if not means:
        return set()
    top = max(means, key=means.__getitem__)
    present = {name: rows[name] for name in means}
    found = compare_blocks_all(present, top, True, alpha)
    return {top} | {name for name, c in found.items() if not c.resolved}


def compare_family(rows: Mapping[str, Mapping[Hashable, float | None]], baseline: str,
                   alpha: float, min_effect: float | None,
                   margin: float | None) -> dict[str, Comparison]:
    """One family's comparisons: two-level (compare_blocks_all) on blocked cells, else the
    seed-paired compare_all of today."""
    if any(is_blocked(v) for v in rows.values()):
        return compare_blocks_all(rows, baseline, True, alpha, min_effect, margin)
    return compare_all(rows, baseline, True, alpha, min_effect, margin)


def per_split(rows: Mapping[str, Mapping[Hashable, float | None]], baseline: str,
              alpha: float, min_effect: float | None,
              margin: float | None) -> dict[Hashable, dict[str, Comparison]]:
    """{split: {row: comparison}}: each split's own seed-paired comparisons (compare_all on the
    runs of that split, Holm within the family there): the single-split verdicts beside the
    two-level one. Empty where the cells have fewer than two splits."""
    splits = _sorted({s for values in rows.values() for s in splits_of(values)})
    if len(splits) < 2:
        return {}
    out = {}
    for split in splits:
        cut = {name: {k[1]: v for k, v in values.items() if split_of(k) == split}
               for name, values in rows.items()}
        if cut[baseline] and any(cut[n] for n in cut if n != baseline):
            out[split] = compare_all(cut, baseline, True, alpha, min_effect, margin)
    return out


def split_variance(values: Mapping[Hashable, float | None], noise=None) -> VarianceTable:
    """variance_table of one row; `noise`: (test_var, test_cov) from the per-image records
    (images.noise_by_split), None where the metric has none."""
    test_var, test_cov = noise if noise is not None else (None, None)
    return variance_table(values, test_var, test_cov)


def pairing(values: Mapping[Hashable, float | None],
            baseline: Mapping[Hashable, float | None]) -> PairingGain:
    return pairing_gain(values, baseline)


@dataclass
class SeedSplit:
    """A row's seed variance split into initialisation, data order and the residual: `pooled`
    over the splits (each component the mean of the splits' moment estimates, clamped after
    averaging; with one split exactly seed_components), `per_split` each split's own."""
    pooled: SeedComponents
    per_split: dict = field(default_factory=dict)  # split -> SeedComponents
    n_runs: int = 0  # the runs of the complete grids used


def has_seed_pairs(values: Mapping[Hashable, float | None]) -> bool:
    """Whether a cell is keyed by (init, order) (trainer.seeds.* as matrix axes)."""
    return bool(values) and all(isinstance(seed_of(k), SeedPair) for k in values)


def _grid(values: Mapping[Hashable, float | None], split) -> dict:
    return {(seed_of(k).init, seed_of(k).order): v for k, v in values.items()
            if split_of(k) == split}


def seed_split(values: Mapping[Hashable, float | None]) -> SeedSplit | None:
    """Init vs data order of one row (bench.stats.variance.seed_components per split, pooled);
    None where the cell is not keyed by (init, order)."""
    if not has_seed_pairs(values):
        return None
    splits = _sorted({split_of(k) for k in values})
    per = {s: seed_components(_grid(values, s)) for s in splits}
    raw, used, inits, orders = [], 0, set(), set()
    for split, sc in per.items():
        if sc.var_init is None:
            continue
        # the grid seed_components kept, for the unclamped estimates the pooled mean needs
        cells = {k: v for k, v in blocks(_grid(values, split))[0].items()
                 if ("init", k[0]) not in sc.dropped and ("order", k[1]) not in sc.dropped}
        rows, cols = _sorted({i for i, _ in cells}), _sorted({o for _, o in cells})
        tw = two_way([[cells[(i, o)] for o in cols] for i in rows])
        raw.append((tw.var_rows_raw, tw.var_cols_raw, tw.var_error))
        used += len(cells)
        inits.update(rows)
        orders.update(cols)
    if len(per) == 1:
        return SeedSplit(next(iter(per.values())), per, used)
    # each split's holes and missing grid (its clamping is not the pooled figures')
    notes = [f"split {s}: {part}" for s, sc in per.items() for part in sc.note.split("; ")
             if part and not part.startswith("negative estimate")]
    if not raw:
        notes.append("no split has a complete grid of at least 2 inits x 2 orders")
        return SeedSplit(SeedComponents(0, 0, None, None, None, note="; ".join(notes)), per)
    v_init, v_order, v_res = (float(np.mean(x)) for x in zip(*raw))
    pooled = components(len(inits), len(orders), v_init, v_order, v_res, notes)
    if len(raw) < len(per):
        pooled.note = "; ".join(filter(None, [
            pooled.note, f"pooled over the {len(raw)} of {len(per)} splits with a grid"]))
    return SeedSplit(pooled, per, used)


def seeds_only(values: Mapping[Hashable, float | None]) -> dict:
    """A one-split blocked cell keyed by seed (what a sequential plan's pool holds)."""
    return {k[1] if isinstance(k, tuple) else k: v for k, v in values.items()}


__all__ = ["BlockComparison", "SeedSplit", "best_blocks", "compare_family",
           "describe_blocks", "has_seed_pairs", "is_blocked", "pairing", "per_split",
           "seed_split", "seeds_only", "split_variance", "splits_of"]
