"""How many seeds a comparison needs: the power of the paired (or two-sample) t-test and of the
TOST equivalence test, and the smallest seed count that reaches a power (docs/statistics.md,
"Seeds needed"). Pure: scipy's noncentral t, with a normal approximation far in its tail."""
from __future__ import annotations

import math

from scipy import stats

SEEDS_CAP = 10000


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
    if sd is None or diff is None or not (math.isfinite(sd) and math.isfinite(diff)
                                          and sd > 0 and diff != 0):
        return None
    return _smallest_n(lambda n: t_power(n, abs(diff) / sd, alpha, paired), power, cap)


def _smallest_n(power_of, power: float, cap: int) -> int | str:
    """Smallest n >= 2 with power_of(n) >= power (power_of grows with n), or f">{cap}"."""
    # double until it reaches the target, then bisect (this keeps the noncentral t near its
    # target region, where scipy evaluates it reliably)
    lo, hi = 1, 2  # invariant below: power(lo) < target <= power(hi); n = 1 has no test
    while power_of(hi) < power:
        if hi >= cap:
            return f">{cap}"
        lo, hi = hi, min(2 * hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power_of(mid) >= power else (mid, hi)
    return hi


def tost_power(n: int, margin: float, sd: float, alpha: float = 0.05,
               paired: bool = True) -> float:
    """A lower bound on the TOST's power when the true difference is 0: 1 - 2 P(one one-sided
    test fails) (noncentral t, nc = margin / se)."""
    df, se = (n - 1, sd / math.sqrt(n)) if paired else (2 * n - 2, sd * math.sqrt(2 / n))
    crit, nc = stats.t.ppf(1 - alpha, df), margin / se
    fail = float(stats.nct.cdf(crit, df, nc))
    fail = float(stats.norm.cdf(crit - nc)) if math.isnan(fail) else fail  # far tail: normal
    return max(0.0, 1 - 2 * fail)


def tost_seeds_needed(margin: float, sd: float | None, alpha: float = 0.05, power: float = 0.8,
                      paired: bool = True, cap: int = SEEDS_CAP) -> int | str | None:
    """Smallest seeds per strategy (>= 2) whose TOST shows equivalence with ``power`` when the
    true difference is 0 (``tost_power``'s bound); None when it cannot be computed."""
    if sd is None or margin is None or not (math.isfinite(sd) and math.isfinite(margin)
                                            and sd > 0 and margin > 0):
        return None
    return _smallest_n(lambda n: tost_power(n, margin, sd, alpha, paired), power, cap)
