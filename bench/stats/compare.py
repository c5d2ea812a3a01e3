"""Statistics for benchmark tables: cells over seeds, comparisons with a baseline, "best" rows,
seeds needed, bootstrap intervals and size-bucket support.

Pure functions over plain numbers: numpy and scipy only, no I/O, no rich, no torch.
Conventions (docs/statistics.md):

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
- With a ``margin`` (the smallest difference of interest, the values' units) each comparison
  also gets the TOST of |difference| >= margin; not better/worse with its adjusted p below
  alpha is "equivalent" (the (1 - 2 alpha) interval inside +-margin). Both tests of every
  comparison are adjusted together (``holm_union``). Better/worse by less than the margin
  sets ``within_margin``.
- Where not resolved, ``seeds_needed`` is the smallest number of seeds per strategy whose
  t-test reaches 80 % power at two-sided alpha for the observed difference (or
  ``min_effect``): paired (noncentral t, df = n - 1, nc = d_z sqrt(n)) with the std of the
  paired differences, or two-sample (df = 2n - 2, nc = d sqrt(n / 2)) with the pooled std for
  Welch. Above the cap it is the string ">10000"; None where it cannot be computed. With a
  margin: the larger of the seeds for the difference test at ``min_effect`` (default: the
  margin) and for the TOST at a true difference of 0, both at alpha / m.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from bench.stats.power import seeds_needed, tost_seeds_needed

BETTER, WORSE, NOT_RESOLVED = "better", "worse", "not resolved"
EQUIVALENT = "equivalent"
_MARGIN_NOTE = " by less than the margin "
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


# --- equivalence (TOST) and the union family ----------------------------------------------------
def tost_pvalue(diff, se, df, margin):
    """TOST of H0: |true difference| >= margin, the larger of P(T >= (diff + margin) / se) and
    P(T <= (diff - margin) / se), T ~ t(df): below a exactly when diff +- t_{1-a} se lies inside
    +-margin. se = 0: 0 inside the margin, 1 outside; NaN stays NaN. Arrays broadcast."""
    diff, se, df, margin = np.broadcast_arrays(
        *(np.asarray(x, dtype=float) for x in (diff, se, df, margin)))
    with np.errstate(divide="ignore", invalid="ignore"):
        low = stats.t.sf((diff + margin) / se, df)   # H0: difference <= -margin
        high = stats.t.cdf((diff - margin) / se, df)  # H0: difference >= +margin
    p = np.where(se == 0, np.where(np.abs(diff) < margin, 0.0, 1.0), np.maximum(low, high))
    return np.where(np.isnan(diff) | np.isnan(se) | np.isnan(df), np.nan, p)


def holm_union(p_difference, p_equivalence=None) -> tuple[np.ndarray, np.ndarray]:
    """Adjusted p of the difference and equivalence tests of m comparisons together (arrays
    ``(..., m)``, NaN = no test). Holm's step-down over all tests, the k-th smallest p times
    the comparisons not yet fully rejected: at most one of a comparison's two hypotheses can
    be true (Shaffer 1986). Without equivalence tests this is Holm exactly."""
    pd = np.asarray(p_difference, dtype=float)
    pe = np.full(pd.shape, np.nan) if p_equivalence is None else np.broadcast_to(
        np.asarray(p_equivalence, dtype=float), pd.shape)
    shape, m = pd.shape, pd.shape[-1]
    if m == 0:
        return pd.copy(), pe.copy()
    both = np.concatenate([pd, pe], axis=-1).reshape(-1, 2 * m)
    tests = ~np.isnan(both)
    need = tests[:, :m].astype(int) + tests[:, m:]  # hypotheses per comparison
    order = np.argsort(np.where(tests, both, np.inf), axis=1, kind="stable")
    rows, done = np.arange(len(both)), np.zeros_like(need)
    count, running, out = (need > 0).sum(axis=1), np.zeros(len(both)), np.full(both.shape, np.nan)
    for k in range(2 * m):
        col = order[:, k]
        p, valid = both[rows, col], tests[rows, col]
        running = np.where(valid, np.maximum(running, np.minimum(1.0, count * p)), running)
        out[rows, col] = np.where(valid, running, np.nan)
        done[rows, col % m] += valid
        count = ((need > 0) & (done < need)).sum(axis=1)
    out = out.reshape(*shape[:-1], 2 * m)
    return out[..., :m], out[..., m:]


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
    verdict: str            # "better" / "worse" / "equivalent" / "not resolved"
    seeds_needed: int | str | None  # seeds per strategy for 80 % power, where not resolved
    note: str = ""
    method: str | None = None  # "paired t" / "Welch t" / None (no test possible)
    n_a: int = 0
    n_b: int = 0
    sd: float | None = None  # std of the differences (paired) or pooled std (Welch)
    alpha: float = 0.05
    higher_is_better: bool = True
    min_effect: float | None = None
    # with a margin (None: no equivalence test, and the fields below stay None)
    margin: float | None = None
    p_equivalence: float | None = None  # TOST p (the larger one-sided p), unadjusted
    p_equivalence_adjusted: float | None = None  # holm_union over the table (alone: = p)
    equivalence_low: float | None = None  # the (1 - 2 alpha) interval of diff (TOST's)
    equivalence_high: float | None = None
    df: float | None = None  # the t-test's degrees of freedom
    within_margin: bool | None = None  # better/worse, yet |diff| < margin (else None)
    # read by a planned sequential design (bench/stats/sequential.py); None: read once
    looks: tuple[int, ...] | None = None  # the plan's seeds per cell at each look
    look: int | None = None  # the look it stopped at (1-based); None while open
    stop_reason: str | None = None  # efficacy / equivalence / futility / last look / open
    bound: float | None = None  # the nominal p bound the difference test met at that look
    equivalence_shown: bool | None = None  # the plan's own within-margin-shown decision

    @property
    def resolved(self) -> bool:
        return self.verdict != NOT_RESOLVED

    @property
    def within_margin_shown(self) -> bool:
        """Better/worse and the equivalence test shows |difference| < margin as well."""
        if self.equivalence_shown is not None:
            return self.equivalence_shown
        return bool(self.within_margin and self.p_equivalence_adjusted is not None
                    and self.p_equivalence_adjusted < self.alpha)


def verdict(diff: float | None, ci_low: float | None, ci_high: float | None,
            p_adjusted: float | None, alpha: float = 0.05, higher_is_better: bool = True,
            p_equivalence_adjusted: float | None = None) -> str:
    """The module's rule: better/worse iff p_adjusted < alpha and the CI excludes 0; else
    equivalent iff p_equivalence_adjusted < alpha; else not resolved."""
    if diff is None or p_adjusted is None or ci_low is None or ci_high is None:
        return NOT_RESOLVED
    if not (p_adjusted < alpha and (ci_low > 0 or ci_high < 0)):
        if p_equivalence_adjusted is not None and p_equivalence_adjusted < alpha:
            return EQUIVALENT
        return NOT_RESOLVED
    return BETTER if (diff > 0) == higher_is_better else WORSE


def _conclude(c: Comparison, family: int = 1) -> Comparison:
    """Set verdict and seeds_needed from p_adjusted (in place; returns c).

    Seeds needed are powered at alpha / family (the Bonferroni bound of Holm's adjustment, so
    that many seeds resolve the difference after it) and are at least one more than the seeds
    at hand: the observed difference was not resolved with those."""
    c.verdict = verdict(c.diff, c.ci_low, c.ci_high, c.p_adjusted, c.alpha, c.higher_is_better,
                        c.p_equivalence_adjusted)
    c.seeds_needed = None
    c.within_margin = None
    # compare_all concludes again after adjusting: the margin note is rewritten, not repeated
    notes = [x for x in c.note.split("; ") if x and _MARGIN_NOTE not in x]
    if c.margin is not None and c.verdict in (BETTER, WORSE):
        c.within_margin = abs(c.diff) < c.margin
        if c.within_margin:
            how = ("the equivalence test shows it" if c.within_margin_shown
                   else "an estimate: the equivalence test does not show it")
            notes.append(f"{c.verdict}{_MARGIN_NOTE}{c.margin:g} ({how})")
    c.note = "; ".join(notes)
    if c.verdict == NOT_RESOLVED and c.diff is not None:
        level = c.alpha / max(1, family)
        if c.margin is None:
            target = c.min_effect if c.min_effect is not None else c.diff
            needed = seeds_needed(target, c.sd, level, 0.8, c.paired)
            have = max(c.n_pairs, min(c.n_a, c.n_b)) if c.min_effect is None else 1
        else:  # resolved either way: better/worse at the effect, or equivalent at 0
            both = [seeds_needed(c.margin if c.min_effect is None else c.min_effect, c.sd, level,
                                 0.8, c.paired), tost_seeds_needed(c.margin, c.sd, level, 0.8,
                                                                   c.paired)]
            capped, have = [n for n in both if isinstance(n, str)], 1
            needed = None if None in both else capped[0] if capped else max(both)
        c.seeds_needed = max(needed, have + 1) if isinstance(needed, int) else needed
    return c


def rounding(scale) -> np.ndarray:
    """What float rounding leaves of an exact tie between values of this magnitude: metrics
    are computed and stored in float32 (7 digits), so 100 * 346/359 - 100 * 341/359 and
    100 * 350/359 - 100 * 345/359 differ by ~1e-6 although the same 5 images separate both."""
    return 1e-6 * np.maximum(1.0, np.abs(np.asarray(scale, dtype=float)))


def _no_spread(sd: float, diff: float, scale: float) -> bool:
    """Zero spread, up to float rounding (equal differences of a discrete metric)."""
    return sd <= rounding(scale)


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.all(a - b == 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(a, b).pvalue)


def _equivalence(c: Comparison, se: float | None) -> Comparison:
    """Fill the TOST fields of c from its diff, standard error and df (in place)."""
    if c.margin is None or c.diff is None or se is None or c.df is None:
        return c
    c.p_equivalence = c.p_equivalence_adjusted = float(tost_pvalue(c.diff, se, c.df, c.margin))
    half = float(stats.t.ppf(1 - c.alpha, c.df)) * se if se > 0 else 0.0
    c.equivalence_low, c.equivalence_high = c.diff - half, c.diff + half
    return c


def compare(values_a: Mapping[Hashable, float | None], values_b: Mapping[Hashable, float | None],
            higher_is_better: bool = True, alpha: float = 0.05, min_effect: float | None = None,
            name: str = "a", baseline: str = "b", margin: float | None = None) -> Comparison:
    """Compare cell a with cell b (``{seed: value}`` each): difference a - b, its (1 - alpha)
    CI, paired t (+ Wilcoxon) or Welch, effect size, verdict and seeds needed; with a
    ``margin`` (> 0, the values' units) also the TOST of |difference| >= margin. Alone, the
    p-values are not adjusted (p_adjusted = p); compare_all adjusts across a table."""
    if margin is not None and not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be positive and finite, got {margin!r}")
    a_vals, miss_a = _clean(values_a)
    b_vals, miss_b = _clean(values_b)
    notes = [f"{side}: {text}" for side, m in ((name, miss_a), (baseline, miss_b))
             for text in _missing_note(m)]
    common = [s for s in a_vals if s in b_vals]
    kw = dict(name=name, baseline=baseline, alpha=alpha, higher_is_better=higher_is_better,
              min_effect=min_effect, n_a=len(a_vals), n_b=len(b_vals), margin=margin)
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
        scale = float(max(np.abs(a).max(), np.abs(b).max()))
        if _no_spread(sd, diff, scale):
            # t = 0/0 or +-inf: the t-test says nothing (a discrete metric, e.g. 7 of 359 images
            # both times); every difference has one sign: the exact sign test's p
            sd, p = 0.0, 1.0 if abs(diff) <= rounding(scale) else 2.0 ** (1 - n)
            ci_low = ci_high = diff
            notes.append(f"the paired differences have zero spread: no t-test; the exact sign "
                         f"test gives p = {p:.3g}")
        else:
            ci_low, ci_high = float(ci.low), float(ci.high)
        p_w = _wilcoxon(a, b)
        min_w = 2.0 ** (1 - n)  # smallest two-sided exact Wilcoxon p with n pairs
        if p_w is not None and min_w >= alpha:
            notes.append(f"Wilcoxon cannot go below p = {min_w:.3g} with {n} pairs")
        effect = diff / sd if sd > 0 else None
        c = Comparison(n_pairs=n, paired=True, diff=diff, ci_low=ci_low, ci_high=ci_high, p=p,
                       p_wilcoxon=p_w, p_adjusted=p, effect_size=effect, verdict=NOT_RESOLVED,
                       seeds_needed=None, note="; ".join(notes), method="paired t", sd=sd,
                       df=n - 1, **kw)
        return _conclude(_equivalence(c, sd / math.sqrt(n)))
    # unpaired fallback
    notes.append("seeds do not match: unpaired Welch t-test" if a_vals and b_vals
                 else "a cell has no values: no comparison")
    a = np.array(list(a_vals.values()))
    b = np.array(list(b_vals.values()))
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else None
    ci_low = ci_high = p = effect = sd = se = df = None
    if len(a) >= 2 and len(b) >= 2:
        var_a, var_b = float(a.var(ddof=1)), float(b.var(ddof=1))
        sd = math.sqrt((var_a + var_b) / 2)
        scale = float(max(np.abs(a).max(), np.abs(b).max()))
        if _no_spread(sd, diff, scale):  # the t-test says nothing; the exact Mann-Whitney p instead
            tie = abs(diff) <= rounding(scale)
            sd, p = 0.0, 1.0 if tie else 2.0 / math.comb(len(a) + len(b), len(a))
            ci_low = ci_high = diff
            se, df = 0.0, float(len(a) + len(b) - 2)
            notes.append(f"both cells have zero spread: no t-test; the exact Mann-Whitney test "
                         f"gives p = {p:.3g}")
        else:
            res = stats.ttest_ind(a, b, equal_var=False)
            ci = res.confidence_interval(conf)
            p, ci_low, ci_high = float(res.pvalue), float(ci.low), float(ci.high)
            se, df = math.sqrt(var_a / len(a) + var_b / len(b)), float(res.df)
            effect = diff / sd
            notes.append("effect size is Cohen's d with the pooled std")
    elif diff is not None:
        notes.append("Welch needs at least 2 values per cell: no CI, no test")
    c = Comparison(n_pairs=0, paired=False, diff=diff, ci_low=ci_low, ci_high=ci_high, p=p,
                   p_wilcoxon=None, p_adjusted=p, effect_size=effect, verdict=NOT_RESOLVED,
                   seeds_needed=None, note="; ".join(notes),
                   method="Welch t" if p is not None else None, sd=sd, df=df, **kw)
    return _conclude(_equivalence(c, se))


def compare_all(rows: Mapping[str, Mapping[Hashable, float | None]], baseline: str,
                higher_is_better: bool = True, alpha: float = 0.05,
                min_effect: float | None = None,
                margin: float | None = None) -> dict[str, Comparison]:
    """Every row except ``baseline`` compared with it; p-values Holm-adjusted across them
    (with a ``margin``: the difference and equivalence tests together, ``holm_union``)."""
    if baseline not in rows:
        raise KeyError(f"baseline {baseline!r} is not a row")
    out = {name: compare(values, rows[baseline], higher_is_better, alpha, min_effect,
                         name=name, baseline=baseline, margin=margin)
           for name, values in rows.items() if name != baseline}
    adjusted, adjusted_eq, what = holm([c.p for c in out.values()]), [None] * len(out), ""
    if margin is not None and out:
        both = holm_union([math.nan if c.p is None else c.p for c in out.values()],
                          [math.nan if c.p_equivalence is None else c.p_equivalence
                           for c in out.values()])
        adjusted, adjusted_eq = ([None if np.isnan(x) else float(x) for x in a] for a in both)
        what = " (difference and equivalence tests)"
    m = sum(p is not None for p in adjusted)
    for c, p_adj, p_eq in zip(out.values(), adjusted, adjusted_eq):
        c.p_adjusted = p_adj
        c.p_equivalence_adjusted = p_eq
        if m > 1 and p_adj is not None:
            c.note = "; ".join(filter(None, [c.note, f"Holm-adjusted over {m} comparisons{what}"]))
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


# --- bootstrap intervals (the resampling is in bench/stats/ap.py) -----------------------------
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
