"""Statistics for benchmark tables: cells over seeds, comparisons with a baseline, "best" rows,
seeds needed, bootstrap intervals and size-bucket support.

Pure functions over plain numbers: numpy and scipy only, no I/O, no rich, no torch.
Conventions (docs: shared/reference/statistics.md):

- A cell is one strategy's metric over seeds, ``{seed: value}``. ``None`` and NaN values are
  left out (a missing value is never a 0) and the note says how many.
- A comparison is ``a - b`` (the row minus the baseline). It is *paired* on the seeds both
  cells have when they share at least two; seeds only one side has are then left out and the
  note names them. With fewer than two shared seeds it falls back to Welch's t-test over all
  values and the note says so.
- Verdict rule: a comparison is *resolved* when its Holm-adjusted p-value is below ``alpha``
  AND its (1 - alpha) confidence interval of the difference excludes 0. Resolved with the
  difference pointing the good way (up when ``higher_is_better``, down otherwise) is
  "better", the other way "worse"; everything else (including no test at all, e.g. n = 1) is
  "not resolved". The CI is per comparison (not adjusted); the adjustment is in the p-value.
- Holm's family is the comparisons in one table that have a p-value; a comparison without
  one (n = 1) can never be resolved and does not count.
- Where not resolved, ``seeds_needed`` is the smallest number of seeds per strategy whose
  t-test reaches 80 % power at two-sided alpha for the observed difference (or
  ``min_effect``): paired (noncentral t, df = n - 1, nc = d_z sqrt(n)) with the std of the
  paired differences, or two-sample (df = 2n - 2, nc = d sqrt(n / 2)) with the pooled std for
  Welch. Above the cap it is the string ">10000"; None where it cannot be computed.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

BETTER, WORSE, NOT_RESOLVED = "better", "worse", "not resolved"
SEEDS_CAP = 10000
BOX_THRESHOLD = 50


# --- cells ------------------------------------------------------------------------------------
@dataclass
class CellStats:
    """One cell over seeds: n, mean, sample std (ddof 1) and the t interval of the mean."""
    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    values: dict[Hashable, float] = field(default_factory=dict)
    confidence: float = 0.95
    note: str = ""


def _clean(values: Mapping[Hashable, float | None]) -> tuple[dict[Hashable, float], int]:
    """The finite values as floats, and how many were missing (None or NaN)."""
    kept, missing = {}, 0
    for seed, value in values.items():
        if value is None or not math.isfinite(float(value)):
            missing += 1
        else:
            kept[seed] = float(value)
    return kept, missing


def _missing_note(missing: int) -> list[str]:
    return [f"{missing} missing value{'s' if missing != 1 else ''} left out"] if missing else []


def describe(values: Mapping[Hashable, float | None], confidence: float = 0.95) -> CellStats:
    """n, mean, std and the t-distribution CI of the mean of one cell ``{seed: value}``."""
    kept, missing = _clean(values)
    notes = _missing_note(missing)
    x = np.array(list(kept.values()), dtype=float)
    n = len(x)
    if n == 0:
        return CellStats(0, None, None, None, None, kept, confidence,
                         "; ".join(["no values", *notes]))
    mean = float(x.mean())
    if n == 1:
        return CellStats(1, mean, None, None, None, kept, confidence,
                         "; ".join(["n = 1: no CI", *notes]))
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return CellStats(n, mean, std, mean - half, mean + half, kept, confidence, "; ".join(notes))


# --- multiple comparisons and power -----------------------------------------------------------
def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, same order; None stays None and does not count in the family.

    Sort ascending, multiply the k-th smallest (k from 1) by m - k + 1, running max, cap at 1.
    """
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(sorted(present), start=1):
        running = max(running, min(1.0, (m - k + 1) * float(p)))
        out[i] = running
    return out


def t_power(n: int, effect: float, alpha: float = 0.05, paired: bool = True) -> float:
    """Two-sided t-test power with n seeds per strategy at standardised effect ``effect``.

    paired: one-sample t on n differences (df = n - 1, nc = effect sqrt(n)); otherwise a
    two-sample t with n per group (df = 2n - 2, nc = effect sqrt(n / 2)).
    """
    df, nc = (n - 1, effect * math.sqrt(n)) if paired else (2 * n - 2, effect * math.sqrt(n / 2))
    crit = stats.t.ppf(1 - alpha / 2, df)
    value = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isnan(value):  # scipy's nct fails far in the tail (huge nc): normal approximation
        value = float(stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc))
    return value


def seeds_needed(diff: float, sd: float | None, alpha: float = 0.05, power: float = 0.8,
                 paired: bool = True, cap: int = SEEDS_CAP) -> int | str | None:
    """Smallest seeds per strategy (>= 2) whose t-test power reaches ``power``.

    ``sd``: the std of the paired differences (paired) or the pooled within-strategy std
    (unpaired). Returns f">{cap}" when even ``cap`` seeds fall short, None when it cannot be
    computed (no or zero spread, zero difference, non-finite input).
    """
    if sd is None or diff is None or not (math.isfinite(sd) and math.isfinite(diff)):
        return None
    if sd <= 0 or diff == 0:
        return None
    effect = abs(diff) / sd
    # power grows with n: double until it reaches the target, then bisect (this keeps the
    # noncentral t near its target region, where scipy evaluates it reliably)
    lo, hi = 1, 2  # invariant below: power(lo) < target <= power(hi); n = 1 has no test
    while t_power(hi, effect, alpha, paired) < power:
        if hi >= cap:
            return f">{cap}"
        lo, hi = hi, min(2 * hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if t_power(mid, effect, alpha, paired) >= power:
            hi = mid
        else:
            lo = mid
    return hi


# --- comparisons ------------------------------------------------------------------------------
@dataclass
class Comparison:
    """``name`` against ``baseline``: the difference name - baseline and what it resolves."""
    name: str
    baseline: str
    n_pairs: int            # seeds used as pairs (0 when unpaired)
    paired: bool
    diff: float | None      # mean paired difference, or difference of the means (Welch)
    ci_low: float | None    # (1 - alpha) CI of diff
    ci_high: float | None
    p: float | None         # paired t (or Welch) two-sided p-value, unadjusted
    p_wilcoxon: float | None
    p_adjusted: float | None  # Holm over the table (compare() alone: = p)
    effect_size: float | None  # d_z = mean(d) / std(d); Cohen's d with the pooled std for Welch
    verdict: str            # "better" / "worse" / "not resolved"
    seeds_needed: int | str | None  # seeds per strategy for 80 % power, where not resolved
    note: str = ""
    method: str | None = None  # "paired t" / "Welch t" / None (no test possible)
    n_a: int = 0
    n_b: int = 0
    sd: float | None = None  # std of the differences (paired) or pooled std (Welch)
    alpha: float = 0.05
    higher_is_better: bool = True
    min_effect: float | None = None

    @property
    def resolved(self) -> bool:
        return self.verdict != NOT_RESOLVED


def verdict(diff: float | None, ci_low: float | None, ci_high: float | None,
            p_adjusted: float | None, alpha: float = 0.05,
            higher_is_better: bool = True) -> str:
    """The module's rule: resolved iff p_adjusted < alpha and the CI excludes 0."""
    if diff is None or p_adjusted is None or ci_low is None or ci_high is None:
        return NOT_RESOLVED
    if not (p_adjusted < alpha and (ci_low > 0 or ci_high < 0)):
        return NOT_RESOLVED
    return BETTER if (diff > 0) == higher_is_better else WORSE


def _conclude(c: Comparison, family: int = 1) -> Comparison:
    """Set verdict and seeds_needed from p_adjusted (in place; returns c).

    Seeds needed are powered at alpha / family (the Bonferroni bound of Holm's adjustment, so
    that many seeds resolve the difference after it) and are at least one more than the seeds
    at hand: the observed difference was not resolved with those."""
    c.verdict = verdict(c.diff, c.ci_low, c.ci_high, c.p_adjusted, c.alpha, c.higher_is_better)
    c.seeds_needed = None
    if c.verdict == NOT_RESOLVED and c.diff is not None:
        target = c.min_effect if c.min_effect is not None else c.diff
        needed = seeds_needed(target, c.sd, c.alpha / max(1, family), 0.8, c.paired)
        have = max(c.n_pairs, min(c.n_a, c.n_b)) if c.min_effect is None else 1
        c.seeds_needed = max(needed, have + 1) if isinstance(needed, int) else needed
    return c


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.all(a - b == 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(a, b).pvalue)


def compare(values_a: Mapping[Hashable, float | None], values_b: Mapping[Hashable, float | None],
            higher_is_better: bool = True, alpha: float = 0.05, min_effect: float | None = None,
            name: str = "a", baseline: str = "b") -> Comparison:
    """Compare cell a with cell b (``{seed: value}`` each): difference a - b, its (1 - alpha)
    CI, paired t (+ Wilcoxon) or Welch, effect size, verdict and seeds needed. Alone, the
    p-value is not adjusted (p_adjusted = p); compare_all adjusts across a table."""
    a_vals, miss_a = _clean(values_a)
    b_vals, miss_b = _clean(values_b)
    notes = [f"{side}: {text}" for side, m in ((name, miss_a), (baseline, miss_b))
             for text in _missing_note(m)]
    common = [s for s in a_vals if s in b_vals]
    kw = dict(name=name, baseline=baseline, alpha=alpha, higher_is_better=higher_is_better,
              min_effect=min_effect, n_a=len(a_vals), n_b=len(b_vals))
    conf = 1 - alpha
    if len(common) >= 2 or (len(common) == 1 and len(a_vals) == len(b_vals) == 1):
        only = sorted(map(str, set(a_vals) ^ set(b_vals)))
        if only:
            notes.append(f"paired on the {len(common)} shared seeds; left out seed(s) "
                         f"{', '.join(only)} (in one cell only)")
        a = np.array([a_vals[s] for s in common])
        b = np.array([b_vals[s] for s in common])
        d = a - b
        n = len(d)
        diff = float(d.mean())
        if n == 1:
            notes.append("n = 1 pair: no CI, no test")
            return _conclude(Comparison(n_pairs=1, paired=True, diff=diff, ci_low=None,
                                        ci_high=None, p=None, p_wilcoxon=None, p_adjusted=None,
                                        effect_size=None, verdict=NOT_RESOLVED,
                                        seeds_needed=None, note="; ".join(notes), method=None,
                                        sd=None, **kw))
        sd = float(d.std(ddof=1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.ttest_rel(a, b)
            ci = res.confidence_interval(conf)
        p = float(res.pvalue)
        if sd == 0:
            p = 1.0 if diff == 0 else 0.0  # t = 0/0 or +-inf: the test's limits
            ci_low = ci_high = diff
            notes.append("the paired differences have zero spread")
        else:
            ci_low, ci_high = float(ci.low), float(ci.high)
        p_w = _wilcoxon(a, b)
        min_w = 2.0 ** (1 - n)  # smallest two-sided exact Wilcoxon p with n pairs
        if p_w is not None and min_w >= alpha:
            notes.append(f"Wilcoxon cannot go below p = {min_w:.3g} with {n} pairs")
        effect = diff / sd if sd > 0 else None
        return _conclude(Comparison(n_pairs=n, paired=True, diff=diff, ci_low=ci_low,
                                    ci_high=ci_high, p=p, p_wilcoxon=p_w, p_adjusted=p,
                                    effect_size=effect, verdict=NOT_RESOLVED, seeds_needed=None,
                                    note="; ".join(notes), method="paired t", sd=sd, **kw))
    # unpaired fallback
    notes.append("seeds do not match: unpaired Welch t-test" if a_vals and b_vals
                 else "a cell has no values: no comparison")
    a = np.array(list(a_vals.values()))
    b = np.array(list(b_vals.values()))
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else None
    ci_low = ci_high = p = effect = sd = None
    if len(a) >= 2 and len(b) >= 2:
        var_a, var_b = float(a.var(ddof=1)), float(b.var(ddof=1))
        sd = math.sqrt((var_a + var_b) / 2)
        if sd == 0:
            p = 1.0 if diff == 0 else 0.0
            ci_low = ci_high = diff
            notes.append("both cells have zero spread")
        else:
            res = stats.ttest_ind(a, b, equal_var=False)
            ci = res.confidence_interval(conf)
            p, ci_low, ci_high = float(res.pvalue), float(ci.low), float(ci.high)
            effect = diff / sd
            notes.append("effect size is Cohen's d with the pooled std")
    elif diff is not None:
        notes.append("Welch needs at least 2 values per cell: no CI, no test")
    return _conclude(Comparison(n_pairs=0, paired=False, diff=diff, ci_low=ci_low,
                                ci_high=ci_high, p=p, p_wilcoxon=None, p_adjusted=p,
                                effect_size=effect, verdict=NOT_RESOLVED, seeds_needed=None,
                                note="; ".join(notes), method="Welch t" if p is not None else None,
                                sd=sd, **kw))


def compare_all(rows: Mapping[str, Mapping[Hashable, float | None]], baseline: str,
                higher_is_better: bool = True, alpha: float = 0.05,
                min_effect: float | None = None) -> dict[str, Comparison]:
    """Every row except ``baseline`` compared with it; p-values Holm-adjusted across them."""
    if baseline not in rows:
        raise KeyError(f"baseline {baseline!r} is not a row")
    out = {name: compare(values, rows[baseline], higher_is_better, alpha, min_effect,
                         name=name, baseline=baseline)
           for name, values in rows.items() if name != baseline}
    adjusted = holm([c.p for c in out.values()])
    m = sum(p is not None for p in adjusted)
    for c, p_adj in zip(out.values(), adjusted):
        c.p_adjusted = p_adj
        if m > 1 and p_adj is not None:
            c.note = "; ".join(filter(None, [c.note, f"Holm-adjusted over {m} comparisons"]))
        _conclude(c, family=m)
    return out


def best_rows(rows: Mapping[str, Mapping[Hashable, float | None]], higher_is_better: bool = True,
              alpha: float = 0.05) -> set[str]:
    """The best-mean row and every row not resolved against it (paired where possible, Holm
    across those comparisons). Rows without values are never best."""
    means = {name: describe(values).mean for name, values in rows.items()}
    means = {name: m for name, m in means.items() if m is not None}
    if not means:
        return set()
    pick = max if higher_is_better else min
    top = pick(means, key=means.__getitem__)
    present = {name: rows[name] for name in means}
    comparisons = compare_all(present, top, higher_is_better, alpha)
    return {top} | {name for name, c in comparisons.items() if not c.resolved}


# --- bootstrap intervals (the resampling is in bench/stats/ap.py) --------------------------------------------------------
@dataclass
class Interval:
    """A statistic on the full set and its bootstrap percentile interval."""
    estimate: float
    ci_low: float
    ci_high: float
    nan_resamples: int = 0  # resamples where the statistic was NaN (left out of the interval)

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def percentile_interval(estimate: float, samples: np.ndarray, confidence: float) -> Interval:
    """The bootstrap percentile interval of `samples` (NaN resamples left out and counted)."""
    nan = int(np.isnan(samples).sum())
    if nan == len(samples):
        return Interval(estimate, math.nan, math.nan, nan)
    q = (1 - confidence) / 2
    low, high = np.nanquantile(samples, [q, 1 - q])
    return Interval(float(estimate), float(low), float(high), nan)


# --- detection size buckets -------------------------------------------------------------------
@dataclass
class BoxSupport:
    n_boxes: int
    threshold: int
    too_few: bool
    note: str


def box_support(n_boxes: int, threshold: int = BOX_THRESHOLD) -> BoxSupport:
    """Flag a size bucket with fewer than ``threshold`` ground-truth boxes (AP there is noisy)."""
    too_few = n_boxes < threshold
    note = f"only {n_boxes} boxes (< {threshold}): AP here is noisy" if too_few else ""
    return BoxSupport(int(n_boxes), int(threshold), too_few, note)
