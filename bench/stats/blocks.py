"""Splits as blocks: seed-paired comparisons across several test splits (the two-level model)
and the random-effects ANOVA helpers. Pure numbers: numpy and scipy only.

Cells are ``{(split, seed): value}`` in display units; a plain ``{seed: value}`` is one split.
None and NaN values are left out (never a 0) and the note counts them.

The model of one comparison (a minus the baseline b), paired within each (split, seed) block::

    d_sr = a_sr - b_sr = mu + u_s + e_sr,   u_s ~ N(0, sd_split^2),  e_sr ~ N(0, sd_within^2)

u_s is how much the difference itself moves from split to split (the data the split puts in
train, validation and test), e_sr how much it moves from seed to seed within a split (init, data
order, augmentation, plus the run-specific part of the test-image noise). mu is the difference
over the population of splits, which is what the interval covers.

- Inference on mu uses the split means m_s = mean_r d_sr: mu_hat = mean_s m_s, standard error
  sd(m_s) / sqrt(S), t at S - 1 df. Balanced (R pairs in every split) this is exactly the nested
  ANOVA (and REML MixedLM) interval: SE^2 = MS_between / (S R). With one split it reduces to the
  ordinary paired t-test over seeds (``compare``), which covers seeds only.
- Unbalanced (missing runs): every split with at least one pair counts once (unweighted mean of
  the split means). var(m_s) / S stays unbiased for the variance of mu_hat, the t at S - 1 df is
  then an approximation; splits are the replication unit, so a split with fewer pairs is not
  down-weighted (weights 1 / (sd_split^2 + sd_within^2 / R_s) would need components estimated
  from a handful of splits). Blocks only one side has are left out and named in the note.
- Variance components: one-way random-effects ANOVA by the method of moments (``one_way``);
  unbalanced with n0 = (N - sum R_s^2 / N) / (S - 1). A negative estimate is clamped at 0 and
  the note says so.

API (all return dataclasses; display units in, display units out):

    compare_blocks(values_a, values_b, higher_is_better=True, alpha=0.05, min_effect=None,
                   name="a", baseline="b", margin=None) -> BlockComparison
        (a bench.stats.compare.Comparison: compare() run on the split means, or on the seeds
        when there is one split, so verdicts, Holm and the margin follow compare's rules)
    compare_blocks_all(rows, baseline, higher_is_better=True, alpha=0.05, min_effect=None,
                       margin=None) -> {name: BlockComparison}, adjusted as compare_all
    one_way(groups) -> OneWay;  two_way(grid) -> TwoWay   random-effects ANOVA helpers
    blocks(values) -> ({(split, seed): value}, n missing);  by_split(cells) -> {split: {seed: v}}

The variance table, what pairing buys and init vs data order are in bench/stats/variance.py.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from bench.stats.compare import Comparison, compare, holm, holm_union
# compare's verdict and seeds-needed rule, reused (not copied) so block rows cannot drift from
# seed rows; private there: ask its owner to keep it (or make it public) if it moves
from bench.stats.compare import _conclude

TWO_LEVEL = "two-level t (splits)"


# --- cells ------------------------------------------------------------------------------------
def _sorted(keys):
    try:
        return sorted(keys)
    except TypeError:  # mixed key types: any fixed order will do
        return sorted(keys, key=repr)


def _key(key) -> tuple:
    """(split, seed) of a cell key: a 2-tuple is one, anything else a seed of split None."""
    return key if isinstance(key, tuple) and len(key) == 2 else (None, key)


def blocks(values: Mapping[Hashable, float | None]) -> tuple[dict[tuple, float], int]:
    """The finite values keyed (split, seed), and how many were missing. A key that is not a
    2-tuple is a seed of the single split None; mixing the two forms is an error."""
    kept, missing, forms = {}, 0, set()
    for key, value in values.items():
        forms.add(isinstance(key, tuple) and len(key) == 2)
        if value is None or not math.isfinite(float(value)):
            missing += 1
            continue
        kept[_key(key)] = float(value)
    if len(forms) > 1:
        raise ValueError("cell keys mix (split, seed) tuples and plain seeds")
    return kept, missing


def by_split(cells: Mapping[tuple, float]) -> dict[Hashable, dict[Hashable, float]]:
    """{(split, seed): v} -> {split: {seed: v}}, splits and seeds in sorted order."""
    out: dict = {}
    for split, seed in _sorted(cells):
        out.setdefault(split, {})[seed] = cells[(split, seed)]
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- random-effects ANOVA (method of moments) -------------------------------------------------
@dataclass
class OneWay:
    """y_gi = m + u_g + e_gi: mean squares and the moment estimates of var(u) and var(e)."""
    n_groups: int
    n: int
    grand_mean: float
    ms_between: float | None    # None with one group
    ms_within: float | None     # None when no group has two values
    df_between: int
    df_within: int
    n0: float | None            # the group size in E[MS_between] = var_e + n0 var_u
    var_between_raw: float | None  # (MS_b - MS_w) / n0, may be negative
    var_between: float | None   # clamped at 0
    var_within: float | None

    @property
    def clamped(self) -> bool:
        return self.var_between_raw is not None and self.var_between_raw < 0


def one_way(groups: Sequence[Sequence[float]]) -> OneWay:
    """One-way random-effects ANOVA over groups of values (unbalanced allowed; empty groups
    are dropped). Moment estimates: var_within = MS_w, var_between = (MS_b - MS_w) / n0."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    sizes = np.array([len(g) for g in groups])
    n, k = int(sizes.sum()), len(groups)
    if n == 0:
        raise ValueError("one_way needs at least one value")
    grand = float(np.concatenate(groups).mean())
    means = np.array([g.mean() for g in groups])
    ss_b = float((sizes * (means - grand) ** 2).sum())
    ss_w = float(sum(((g - g.mean()) ** 2).sum() for g in groups))
    df_b, df_w = k - 1, n - k
    ms_b = ss_b / df_b if df_b > 0 else None
    ms_w = ss_w / df_w if df_w > 0 else None
    n0 = (n - float((sizes ** 2).sum()) / n) / df_b if df_b > 0 else None
    raw = (ms_b - ms_w) / n0 if ms_b is not None and ms_w is not None else None
    return OneWay(k, n, grand, ms_b, ms_w, df_b, df_w, n0, raw,
                  None if raw is None else max(0.0, raw), ms_w)


@dataclass
class TwoWay:
    """y_ij = m + r_i + c_j + e_ij, crossed, one value per cell (interaction is in e)."""
    n_rows: int
    n_cols: int
    ms_rows: float
    ms_cols: float
    ms_error: float
    var_rows_raw: float
    var_cols_raw: float
    var_rows: float             # clamped at 0
    var_cols: float
    var_error: float


def two_way(grid) -> TwoWay:
    """Two-way random-effects ANOVA without replication on a complete (I, J) grid, I, J >= 2:
    var_rows = (MS_r - MS_e) / J, var_cols = (MS_c - MS_e) / I, var_error = MS_e."""
    y = np.asarray(grid, dtype=float)
    i, j = y.shape
    if i < 2 or j < 2 or not np.isfinite(y).all():
        raise ValueError("two_way needs a complete grid of at least 2 x 2 finite values")
    g, r, c = y.mean(), y.mean(1), y.mean(0)
    ms_r = j * float(((r - g) ** 2).sum()) / (i - 1)
    ms_c = i * float(((c - g) ** 2).sum()) / (j - 1)
    ms_e = float(((y - r[:, None] - c[None, :] + g) ** 2).sum()) / ((i - 1) * (j - 1))
    vr, vc = (ms_r - ms_e) / j, (ms_c - ms_e) / i
    return TwoWay(i, j, ms_r, ms_c, ms_e, vr, vc, max(0.0, vr), max(0.0, vc), ms_e)


# --- the comparison ---------------------------------------------------------------------------
@dataclass
class BlockComparison(Comparison):
    """A Comparison paired within (split, seed) blocks, from ``compare`` on its units: the seeds
    when there is one split (every field exactly compare's), the split means of the paired
    differences when there are several. Then diff, CI, p (t at n_splits - 1 df), Wilcoxon,
    effect_size and ``sd`` are over the split means; n_pairs / n_a / n_b count runs and blocks;
    where not resolved the power analysis gives ``splits_needed`` (each with as many seeds as
    now) and seeds_needed stays None."""
    df: float | None = None
    n_splits: int = 0
    sd_split: float | None = None    # between-split std of the difference (clamped at 0)
    sd_within: float | None = None   # within-split (seed) std of the difference
    pairs_per_split: dict = field(default_factory=dict)
    splits_needed: int | str | None = None


@dataclass
class _Units:
    """What compare() sees (a, b), and the block structure to put back afterwards."""
    a: dict
    b: dict
    n_splits: int
    n_pairs: int = 0
    n_a: int = 0
    n_b: int = 0
    pairs_per_split: dict = field(default_factory=dict)
    sd_split: float | None = None
    sd_within: float | None = None
    notes: list = field(default_factory=list)
    none: bool = False  # several splits and no block with both sides: no comparison


def _units(values_a, values_b, name: str, baseline: str) -> _Units:
    a, miss_a = blocks(values_a)
    b, miss_b = blocks(values_b)
    common = [k for k in _sorted(a) if k in b]
    diffs = by_split({k: a[k] - b[k] for k in common})
    splits = _sorted({s for s, _ in a} | {s for s, _ in b})
    if len(diffs) <= 1:
        # one split (or none paired): the ordinary seed comparison on that split
        split = next(iter(diffs)) if diffs else (splits[0] if splits else None)
        # the raw values (None and NaN included) so that compare() counts the missing ones
        raw = lambda values: {_key(k)[1]: v for k, v in values.items()  # noqa: E731
                              if _key(k)[0] == split}
        out = _Units(raw(values_a), raw(values_b), 1 if diffs else 0)
        if not diffs and len(splits) > 1:  # nothing to pair, nor one split to compare within
            notes = [f"{side}: {_plural(m, 'missing value')} left out"
                     for side, m in ((name, miss_a), (baseline, miss_b)) if m]
            notes.append("no (split, seed) block has both sides: no comparison")
            return _Units({}, {}, 0, n_a=len(a), n_b=len(b), notes=notes, none=True)
        others = [str(s) for s in splits if s != split]
        if others:
            out.notes.append(f"split(s) {', '.join(others)} left out (no pairs)")
        if diffs:
            out.notes.append("one split: the interval covers seeds, not the choice of split")
            out.pairs_per_split = {split: len(diffs[split])}
        return out
    groups = [list(d.values()) for d in diffs.values()]
    anova = one_way(groups)
    # equal split means on both sides keep compare()'s paired t exactly the one on d's means
    out = _Units({s: float(np.mean([a[(s, r)] for r in d])) for s, d in diffs.items()},
                 {s: float(np.mean([b[(s, r)] for r in d])) for s, d in diffs.items()},
                 len(diffs), len(common), len(a), len(b),
                 {s: len(d) for s, d in diffs.items()})
    notes = [f"{side}: {_plural(m, 'missing value')} left out"
             for side, m in ((name, miss_a), (baseline, miss_b)) if m]
    only = _sorted(set(a) ^ set(b))
    if only:
        notes.append(f"{_plural(len(only), 'block')} in one cell only left out: "
                     + ", ".join(f"({s}, {r})" for s, r in only))
    if len(set(out.pairs_per_split.values())) > 1:
        notes.append("unbalanced (" + ", ".join(f"{s}: {n}" for s, n in
                                                 out.pairs_per_split.items())
                     + " pairs): every split's mean counts once")
    if anova.clamped:
        notes.append("split variance estimate negative, clamped at 0")
    if anova.var_within is None:
        notes.append("one pair per split: no within-split (seed) variance")
    out.sd_split = math.sqrt(anova.var_between) if anova.var_between is not None else None
    out.sd_within = math.sqrt(anova.var_within) if anova.var_within is not None else None
    notes.append(f"{out.n_splits} splits: the interval covers split-to-split variation "
                 f"({out.n_splits - 1} df)")
    out.notes = notes
    return out


def _compare_units(u: _Units, higher_is_better, alpha, min_effect, name, baseline, margin):
    kw = {} if margin is None else {"margin": margin}  # compare() without margins still works
    return compare(u.a, u.b, higher_is_better, alpha, min_effect, name=name,
                   baseline=baseline, **kw)


def _wrap(c: Comparison, u: _Units) -> BlockComparison:
    out = BlockComparison(**{f.name: getattr(c, f.name) for f in fields(Comparison)})
    out.n_splits, out.pairs_per_split = u.n_splits, u.pairs_per_split
    if u.none:  # compare() saw two empty cells: no test, not resolved
        out.n_a, out.n_b, out.note = u.n_a, u.n_b, "; ".join(u.notes)
        return out
    if u.n_splits >= 2:
        out.method = TWO_LEVEL
        out.n_pairs, out.n_a, out.n_b = u.n_pairs, u.n_a, u.n_b
        out.sd_split, out.sd_within = u.sd_split, u.sd_within
        out.splits_needed, out.seeds_needed = c.seeds_needed, None
        out.note = "; ".join(filter(None, [*u.notes, c.note]))
    else:
        out.sd_within = c.sd if c.paired else None
        out.note = "; ".join(filter(None, [c.note, *u.notes]))
    return out


def compare_blocks(values_a: Mapping[Hashable, float | None],
                   values_b: Mapping[Hashable, float | None], higher_is_better: bool = True,
                   alpha: float = 0.05, min_effect: float | None = None, name: str = "a",
                   baseline: str = "b", margin: float | None = None) -> BlockComparison:
    """a - b paired within (split, seed) blocks; with two or more splits holding pairs, the
    (1 - alpha) CI of mu covers split-to-split variation (see the module docstring). ``margin``
    (optional) adds compare()'s equivalence test on the same units."""
    u = _units(values_a, values_b, name, baseline)
    return _wrap(_compare_units(u, higher_is_better, alpha, min_effect, name, baseline, margin),
                 u)


def compare_blocks_all(rows: Mapping[str, Mapping[Hashable, float | None]], baseline: str,
                       higher_is_better: bool = True, alpha: float = 0.05,
                       min_effect: float | None = None,
                       margin: float | None = None) -> dict[str, BlockComparison]:
    """Every row except ``baseline`` against it (compare_blocks); p adjusted across them as
    compare_all does (Holm; holm_union with a margin), verdicts by compare's own rule."""
    if baseline not in rows:
        raise KeyError(f"baseline {baseline!r} is not a row")
    units = {name: _units(values, rows[baseline], name, baseline)
             for name, values in rows.items() if name != baseline}
    out = {name: _compare_units(u, higher_is_better, alpha, min_effect, name, baseline, margin)
           for name, u in units.items()}
    adjusted, adjusted_eq, what = holm([c.p for c in out.values()]), [None] * len(out), ""
    if margin is not None:
        both = holm_union(*([math.nan if x is None else x for x in xs] for xs in
                            zip(*((c.p, c.p_equivalence) for c in out.values()))))
        adjusted, adjusted_eq = ([None if np.isnan(x) else float(x) for x in a] for a in both)
        what = " (difference and equivalence tests)"
    m = sum(p is not None for p in adjusted)
    for c, p_adj, p_eq in zip(out.values(), adjusted, adjusted_eq):
        c.p_adjusted = p_adj
        if margin is not None:
            c.p_equivalence_adjusted = p_eq
        if m > 1 and p_adj is not None:
            c.note = "; ".join(filter(None, [c.note, f"Holm-adjusted over {m} comparisons{what}"]))
        _conclude(c, family=m)  # compare's rule, so a block row reads like any other row
    return {name: _wrap(out[name], u) for name, u in units.items()}


__all__ = ["BlockComparison", "OneWay", "TwoWay", "blocks", "by_split", "compare_blocks",
           "compare_blocks_all", "one_way", "two_way"]
