"""Planned group-sequential comparisons: seeds come in planned batches ("looks") and each
comparison stops once resolved, keeping the family-wise error rate. Pure: numpy and scipy.
Procedure (docs/statistics.md):

- A ``Plan``: the looks (seeds per cell, n_1 < ... < n_K), a Lan-DeMets spending function on
  the information fraction t_k = n_k / n_K (O'Brien-Fleming-like or Pocock-like), alpha and an
  optional margin (the smallest difference of interest).
- Per comparison H_D (difference = 0; rejected: better/worse) and, with a margin, H_E
  (|difference| >= margin; rejected by the TOST: equivalent). At most one of the two is true,
  so with c comparisons not fully rejected every open hypothesis is tested at alpha / c
  (Holm over the union, Shaffer's count): alpha passes on only from a comparison whose
  hypotheses are all rejected. After a rejection the open ones are re-tested at the same look
  at the larger level (graphical weighted Holm, Maurer and Bretz 2013).
- A hypothesis at level a has its own boundary spending a: two-sided for H_D, one-sided for
  each test of H_E's TOST. Normal-theory bounds come from the joint normal law of the look
  statistics (corr sqrt(t_j / t_k)) by recursive integration; applied to t-tests with few
  seeds their error exceeds alpha, so the bounds used (``t_bounds``) are calibrated on the
  t statistics' own joint law.
- A comparison stops at the first look where a hypothesis is rejected (efficacy or
  equivalence), where the conditional power of both tests under the observed trend is below
  ``Plan.futility`` (non-binding: the bounds ignore it, it only lowers the error), or at the
  last look. Looks are read in lockstep (look k once every open comparison has its first n_k
  seeds), so decisions depend on the stored data only: a resumed loop ends as an
  uninterrupted one would. ``simulate`` checks the error rates on this very code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
from scipy import optimize, special, stats

from bench.stats import SPENDINGS
from bench.stats.compare import (BETTER, EQUIVALENT, NOT_RESOLVED, WORSE, holm_union, rounding,
                                 tost_pvalue)

VERDICTS = (NOT_RESOLVED, BETTER, WORSE, EQUIVALENT)  # the codes of Decisions.verdict
REASONS = ("open", "efficacy", "equivalence", "futility", "last look")  # Decisions.reason
OPEN, EFFICACY, EQUIVALENCE, FUTILITY, LAST_LOOK = range(5)
_ZMAX = 12.0  # a z bound never crossed in practice (two-sided p 4e-33)
_TAIL = 10.0  # the integration grid's half width in standard deviations
_PATHS, _PATHS_SEED = 2**18, 34  # null t paths that calibrate the bounds (t_bounds)
_MIN_CROSSINGS = 40  # fewer expected crossings at a look: its normal bound is used


@dataclass(frozen=True)
class Plan:
    """looks: seeds per cell at each look; spending: obrien_fleming | pocock; alpha: the
    family-wise two-sided level; margin: the smallest difference of interest (None: no
    equivalence claims); futility: stop an open comparison at an interim look when the
    conditional power under the observed trend is below this (None: never)."""
    looks: tuple[int, ...]
    spending: str = "obrien_fleming"
    alpha: float = 0.05
    margin: float | None = None
    futility: float | None = 0.10

    def __post_init__(self):
        looks = tuple(int(n) for n in self.looks)
        if (not looks or any(n != x or n < 2 for n, x in zip(looks, self.looks))
                or any(b <= a for a, b in zip(looks, looks[1:]))):
            raise ValueError(f"looks must be strictly increasing integers >= 2, got "
                             f"{list(self.looks)!r}")
        if self.spending not in SPENDINGS:
            raise ValueError(f"spending must be one of {', '.join(SPENDINGS)}, got "
                             f"{self.spending!r}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha!r}")
        if self.margin is not None and not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"margin must be positive and finite, got {self.margin!r}")
        if self.futility is not None and not 0 <= self.futility < 1:
            raise ValueError(f"futility must be in [0, 1), got {self.futility!r}")
        object.__setattr__(self, "looks", looks)

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(n / self.looks[-1] for n in self.looks)

    @classmethod
    def from_analysis(cls, analysis: dict, metric: str, **kw) -> Plan:
        """The plan of one metric from bench.config.analysis.validate_analysis's dict."""
        if not analysis.get("looks"):
            raise ValueError("the analysis section has no looks: no sequential plan")
        kw.setdefault("futility", analysis.get("futility", 0.10))
        return cls(tuple(analysis["looks"]), analysis["spending"], analysis["alpha"],
                   analysis["margin"].get(metric), **kw)


# --- boundaries -------------------------------------------------------------------------------
def spent(spending: str, t, alpha: float) -> np.ndarray:
    """Lan-DeMets alpha spent by information fraction t: O'Brien-Fleming-like
    2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) or Pocock-like alpha ln(1 + (e - 1) t)."""
    t = np.asarray(t, dtype=float)
    if spending == "obrien_fleming":
        return 2 * stats.norm.sf(stats.norm.isf(alpha / 2) / np.sqrt(t))
    if spending == "pocock":
        return alpha * np.log1p((math.e - 1) * t)
    raise ValueError(f"unknown spending {spending!r}; choose from {', '.join(SPENDINGS)}")


@lru_cache(maxsize=512)
def z_bounds(fractions: tuple[float, ...], spend: tuple[float, ...],
             two_sided: bool = True) -> tuple[float, ...]:
    """z bounds c_k with P(first crossing at look k) = spend[k] - spend[k-1] under the null:
    |Z_k| >= c_k (two-sided) or Z_k >= c_k, for Z_k at information fractions ``fractions``.
    Recursive numerical integration of the score S_k = Z_k sqrt(t_k) (independent normal
    increments; Armitage, McPherson and Rowe 1969), Simpson's rule on the continuation region."""
    steps = np.diff((0.0,) + tuple(fractions))
    size = int(min(4001, max(401, 2 * _TAIL / (math.sqrt(min(steps)) / 8)))) | 1
    weights = np.ones(size)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    bounds, grid, mass = [], None, None
    for k, (t, total) in enumerate(zip(fractions, spend)):
        target, root = total - (spend[k - 1] if k else 0.0), math.sqrt(t)
        if k == 0:
            c = stats.norm.isf(target / 2 if two_sided else target) if target > 0 else _ZMAX
        else:
            r = math.sqrt(t - fractions[k - 1])

            def crossed(c):
                below = stats.norm.cdf((-c * root - grid) / r) if two_sided else 0.0
                return float(mass @ (stats.norm.sf((c * root - grid) / r) + below))
            if target <= crossed(_ZMAX):
                c = _ZMAX
            elif target >= crossed(0.0):
                c = 0.0
            else:
                c = optimize.brentq(lambda c: crossed(c) - target, 0.0, _ZMAX, xtol=1e-12)
        c = float(min(c, _ZMAX))
        bounds.append(c)
        top = min(c, _TAIL) * root
        y = np.linspace(-top if two_sided else -_TAIL * root, top, size)
        if k == 0:
            density = stats.norm.pdf(y, scale=root)
        else:
            density = stats.norm.pdf((y[:, None] - grid[None, :]) / r) @ mass / r
        grid, mass = y, density * weights * (y[1] - y[0]) / 3
    return tuple(bounds)


def normal_bounds(plan: Plan, level: float, two_sided: bool = True) -> np.ndarray:
    """Nominal p-value bounds per look of a normal (known variance) test spending ``level``:
    two-sided p (difference) or one-sided p (each test of the TOST)."""
    spend = tuple(float(x) for x in spent(plan.spending, plan.fractions, level))
    z = np.array(z_bounds(plan.fractions, spend, two_sided))
    return 2 * stats.norm.sf(z) if two_sided else stats.norm.sf(z)


@lru_cache(maxsize=4)
def _null_paths(looks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Paired t statistics at the looks, (_PATHS, looks), of data with true mean 0, from their
    exact laws per batch of seeds (sum normal, within-batch sum of squares chi-square), and
    the z statistics of the same sums with the variance known. Uniform draws of a fixed
    generator through ndtri/gammaincinv: the same numbers every run."""
    rng = np.random.Generator(np.random.PCG64(_PATHS_SEED))
    total, squares = np.zeros(_PATHS), np.zeros(_PATHS)
    out, z, before = np.empty((_PATHS, len(looks))), np.empty((_PATHS, len(looks))), 0
    for k, n in enumerate(looks):
        batch = n - before
        u = rng.random((2, _PATHS))
        batch_sum = special.ndtri(u[0]) * math.sqrt(batch)
        within = 2 * special.gammaincinv((batch - 1) / 2, u[1]) if batch > 1 else 0.0
        between = before * batch / n * (total / before - batch_sum / batch) ** 2 if before else 0
        squares += within + between
        total += batch_sum
        out[:, k] = total / np.sqrt(n * squares / (n - 1))  # sqrt(n) mean / sd
        z[:, k] = total / math.sqrt(n)
        before = n
    return out, z


def t_bounds(plan: Plan, level: float, two_sided: bool = True) -> np.ndarray:
    """Nominal p bounds per look for the paired t-test at df = n_k - 1 spending ``level``, from
    the t statistics' own joint law under the null (the fixed draws of _null_paths): on the
    same draws, each look's t bound lets as many paths first cross there as the normal bounds
    let the known-variance z statistics (whose expected share is the spent increment; sharing
    the draws cancels most Monte Carlo error). The first look (a t-test's p is exact there)
    and looks with too few expected crossings to calibrate take the normal bound."""
    normal = normal_bounds(plan, level, two_sided)
    expected = np.diff(spent(plan.spending, plan.fractions, level), prepend=0.0)
    t_paths, z_paths = _null_paths(plan.looks)
    sides = (np.abs,) if two_sided else (lambda x: x, lambda x: -x)  # -T has T's law
    stat = np.concatenate([side(t_paths) for side in sides])
    z = np.concatenate([side(z_paths) for side in sides])
    z_limit = stats.norm.isf(normal / 2 if two_sided else normal)
    alive, z_alive = np.ones(len(stat), dtype=bool), np.ones(len(stat), dtype=bool)
    out = normal.copy()
    for k, n in enumerate(plan.looks):
        crossing = z_alive & (z[:, k] > z_limit[k])
        z_alive &= ~crossing
        r = int(crossing.sum())
        if k == 0 or expected[k] * len(stat) < _MIN_CROSSINGS:
            limit = stats.t.isf(normal[k] / 2 if two_sided else normal[k], n - 1)
        else:  # between the r-th and (r + 1)-th largest t of the paths still going
            left = -stat[alive, k]
            limit = (0.0 if r >= len(left) else math.inf if r == 0
                     else -np.partition(left, [r - 1, r])[[r - 1, r]].mean())
            out[k] = (2 if two_sided else 1) * stats.t.sf(limit, n - 1)
        alive &= ~(stat[:, k] > limit)
    return out


@lru_cache(maxsize=256)
def _table(looks: tuple, spending: str, alpha: float, m: int) -> tuple[np.ndarray, np.ndarray]:
    plan = Plan(looks, spending, alpha)
    tables = [np.array([t_bounds(plan, alpha / c, sided) for c in range(1, m + 1)])
              for sided in (True, False)]
    # a larger level may never give a smaller bound (the procedure's proof needs it)
    tables = tuple(np.minimum.accumulate(table, axis=0) for table in tables)
    for table in tables:
        table.setflags(write=False)  # shared by every caller through the cache
    return tables


def bound_table(plan: Plan, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(difference, equivalence) nominal p bounds for the paired t-test, each (m, looks): row
    c - 1 at level alpha / c, for c comparisons not yet fully rejected. Cached."""
    return _table(plan.looks, plan.spending, float(plan.alpha), int(m))


def complete_looks(plan: Plan, n_seeds: int) -> int:
    """How many of the plan's looks n_seeds consecutive seeds complete."""
    return sum(n <= n_seeds for n in plan.looks)


# --- decisions --------------------------------------------------------------------------------
def t_pvalue(diff, se, df, scale=1.0):
    """Two-sided p of t = diff / se at ``df`` (arrays broadcast). se = 0 (equal differences of a
    discrete metric, up to the float rounding of values of magnitude ``scale``): the exact sign
    test's p, 2^-df (1 where diff == 0); NaN stays NaN."""
    diff, se, df = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (diff, se, df)))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.t.sf(np.abs(diff / se), df)
    tol = rounding(scale)  # all n = df + 1 differences agree: the exact sign test
    p = np.where(se <= tol, np.where(np.abs(diff) <= tol, 1.0, 2.0 ** -df), p)
    return np.where(np.isnan(diff) | np.isnan(se) | np.isnan(df), np.nan, p)


@dataclass
class Decision:
    """One comparison's state. look: the index of the look it stopped at (None: open); the
    numbers are those of that look (open: of the last look read; n = 0: none read yet)."""
    index: int
    verdict: str
    reason: str
    look: int | None
    n: int
    diff: float | None
    sd: float | None
    p: float | None
    bound: float | None
    p_equivalence: float | None
    bound_equivalence: float | None
    level: float | None
    within_margin: bool  # better/worse by less than the margin (the estimate)
    within_margin_shown: bool  # ... and the equivalence test rejected as well
    conditional_power: float | None
    next_seeds: int  # seeds per cell the next look needs (0: stopped)

    @property
    def open(self) -> bool:
        return self.look is None


class Decisions:
    """decide()'s result: one array (experiments, comparisons) per Decision field, same name
    (verdict and reason: codes into VERDICTS and REASONS; look: -1 while open; NaN where
    nothing was read), and the plan."""

    def __init__(self, plan: Plan, **arrays: np.ndarray):
        self.plan = plan
        self.__dict__.update(arrays)

    def rows(self, experiment: int = 0) -> list[Decision]:
        """The comparisons of one experiment as Decision objects (what a report shows)."""
        out = []
        for j in range(self.verdict.shape[1]):
            row = {f.name: getattr(self, f.name)[experiment, j].item()  # numpy -> Python
                   for f in fields(Decision)[1:]}
            row = {k: None if isinstance(v, float) and math.isnan(v) else v
                   for k, v in row.items()}
            row.update(verdict=VERDICTS[row["verdict"]], reason=REASONS[row["reason"]],
                       look=None if row["look"] < 0 else row["look"])
            out.append(Decision(j, **row))
        return out


def _conditional_power(plan, k, mean, sd, crit_d, crit_e):
    """Conditional power at look k under the observed trend (the mean continues) of the final
    difference test and (with a margin) the final TOST; normal approximation."""
    n, last = plan.looks[k], plan.looks[-1]
    se_last = sd / math.sqrt(last)
    tau = np.maximum(sd * math.sqrt(last - n) / last, 1e-300)  # sd of the final mean
    norm = stats.norm.cdf
    power_d = norm((np.abs(mean) - crit_d * se_last) / tau) + norm(
        (-crit_d * se_last - np.abs(mean)) / tau)
    if plan.margin is None:
        return power_d, np.zeros_like(power_d)
    upper = plan.margin - crit_e * se_last
    power_e = np.where(upper > 0, norm((upper - mean) / tau) - norm((-upper - mean) / tau), 0.0)
    return power_d, power_e


def decide(plan: Plan, diffs, higher_is_better: bool = True, scale: float = 1.0) -> Decisions:
    """The verdicts of a sequential plan from paired differences (row - baseline, the values'
    units) shaped (experiments, comparisons, seeds) or (comparisons, seeds), in seed-pool
    order, NaN for seeds not trained (yet). Look k reads each comparison's first n_k seeds
    (extra seeds are ignored); it is read once every comparison still open has them all.
    Stateless: the same data give the same decisions. ``scale``: the magnitude of the values
    the differences come from (float rounding below it is no spread)."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim not in (2, 3):
        raise ValueError(f"diffs must be (comparisons, seeds) or (experiments, comparisons, "
                         f"seeds), got shape {d.shape}")
    d = d[None] if d.ndim == 2 else d
    n_exp, m, have = d.shape
    looks, K, margin = plan.looks, len(plan.looks), plan.margin
    if have < looks[-1]:
        d = np.concatenate([d, np.full((n_exp, m, looks[-1] - have), np.nan)], axis=2)
    table_d, table_e = bound_table(plan, max(m, 1))
    crit_d = stats.t.isf(table_d[:, -1] / 2, looks[-1] - 1)  # final critical t per level
    crit_e = stats.t.isf(table_e[:, -1], looks[-1] - 1)
    shape = (n_exp, m)
    out = {name: np.full(shape, np.nan) for name in ("diff", "sd", "p", "bound", "p_equivalence",
                                                     "bound_equivalence", "level",
                                                     "conditional_power")}
    n_read = np.zeros(shape, dtype=int)
    look, reason = np.full(shape, -1), np.zeros(shape, dtype=np.int8)
    rej_d, rej_e = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    sign = np.zeros(shape)
    count = np.full(n_exp, m)
    active = np.ones(n_exp, dtype=bool)
    for k, n in enumerate(looks):
        x = d[:, :, :n]
        stopped = look >= 0
        active &= np.all(np.isfinite(x).all(axis=2) | stopped, axis=1)  # lockstep
        test = active[:, None] & ~stopped
        if not test.any():
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            mean, sd = x.mean(axis=2), x.std(axis=2, ddof=1)
        se = sd / math.sqrt(n)
        p_d = t_pvalue(mean, se, n - 1, scale)
        p_e = tost_pvalue(mean, se, n - 1, margin) if margin is not None else np.ones(shape)
        while True:  # re-test at this look while rejections raise the level
            level = np.maximum(count, 1) - 1
            new_d = test & ~rej_d & (p_d < table_d[level, k][:, None])
            new_e = test & ~rej_e & (p_e < table_e[level, k][:, None]) if margin else new_d & False
            if not (new_d.any() or new_e.any()):
                break
            rej_d |= new_d
            rej_e |= new_e
            count = m - (rej_d & (rej_e | (margin is None))).sum(axis=1)
        level = np.maximum(count, 1) - 1
        for name, value in (("diff", mean), ("sd", sd), ("p", p_d),
                            ("bound", table_d[level, k][:, None]),
                            ("p_equivalence", p_e if margin is not None else np.nan),
                            ("bound_equivalence", table_e[level, k][:, None] if margin else np.nan),
                            ("level", (plan.alpha / np.maximum(count, 1))[:, None])):
            out[name] = np.where(test, value, out[name])
        n_read[test] = n
        sign = np.where(test, np.sign(mean), sign)
        stop = test & (rej_d | rej_e)
        reason[stop] = np.where(rej_d[stop], EFFICACY, EQUIVALENCE)
        power = (np.full(shape, np.nan) if k == K - 1 else np.maximum(*_conditional_power(
            plan, k, mean, sd, crit_d[level][:, None], crit_e[level][:, None])))
        out["conditional_power"] = np.where(test, power, out["conditional_power"])
        if k == K - 1:
            reason[test & ~stop] = LAST_LOOK
            stop = test
        elif plan.futility is not None:
            futile = test & ~stop & (power < plan.futility)
            reason[futile] = FUTILITY
            stop |= futile
        look[stop] = k
    verdict = np.zeros(shape, dtype=np.int8)
    good = (sign > 0) == higher_is_better
    verdict[rej_d] = np.where(good[rej_d], 1, 2)
    verdict[rej_e & ~rej_d] = 3
    last_read = np.searchsorted(looks, n_read)  # index of the last look read (0 when none)
    following = np.asarray(looks)[np.minimum(np.where(n_read > 0, last_read + 1, 0), K - 1)]
    next_seeds = np.where(look < 0, following, 0)
    small = rej_d & (np.abs(out["diff"]) < (math.inf if margin is None else margin))
    return Decisions(plan, verdict=verdict, reason=reason, look=look, n=n_read,
                     within_margin=small & (margin is not None), within_margin_shown=rej_d & rej_e,
                     next_seeds=next_seeds, **out)


def next_seeds(decisions: Decisions, experiment: int = 0) -> dict[int, int]:
    """For the runner: each open comparison's index -> the seeds per cell its next look needs
    (both its cells; the baseline needs the largest). Empty when every comparison stopped."""
    row = decisions.next_seeds[experiment]
    return {int(j): int(n) for j, n in enumerate(row) if decisions.look[experiment, j] < 0}


# --- simulation and design --------------------------------------------------------------------
def _differences(rng, n_sim: int, effects, sd: float, seeds: int, rho: float) -> np.ndarray:
    """Paired differences (n_sim, m, seeds): effect + sd * noise, noise correlated rho between
    comparisons (0.5: one shared baseline, equal spread per strategy)."""
    effects = np.asarray(effects, dtype=float)
    shared = rng.standard_normal((n_sim, 1, seeds))
    own = rng.standard_normal((n_sim, len(effects), seeds))
    return effects[None, :, None] + sd * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own)


def _mcse(rate: float, n: int) -> float:
    return math.sqrt(max(rate * (1 - rate), 1e-12) / n)


def simulate(plan: Plan, effects, sd: float = 1.0, n_sim: int = 20000, seed: int = 0,
             rho: float = 0.5) -> dict:
    """decide() on n_sim simulated experiments: true differences ``effects`` (+ = better),
    normal paired differences of std ``sd``. Rates (and *_mcse): fwer (any false claim:
    better/worse of the wrong sign or at 0, equivalent or shown within the margin at
    |effect| >= margin), false_equivalence, power (right better/worse where effect != 0),
    equivalence (where |effect| < margin); expected seeds per comparison and baseline cell."""
    effects = np.asarray(effects, dtype=float)
    dec = decide(plan, _differences(np.random.default_rng(seed), n_sim, effects, sd,
                                    plan.looks[-1], rho))
    v, mu = dec.verdict, effects[None, :]
    margin = math.inf if plan.margin is None else plan.margin
    claims_small = (v == 3) | dec.within_margin_shown
    false_eq = claims_small & (np.abs(mu) >= margin)
    false = ((v == 1) & (mu <= 0)) | ((v == 2) & (mu >= 0)) | false_eq
    out = {"n_sim": n_sim, "fwer": float(false.any(axis=1).mean()),
           "false_equivalence": float(false_eq.any(axis=1).mean())}
    moving, still = effects != 0, np.abs(effects) < margin
    correct = np.where(mu > 0, v == 1, v == 2)
    out["power"] = float(correct[:, moving].mean()) if moving.any() else None
    out["equivalence"] = (float(claims_small[:, still].mean())
                          if plan.margin is not None and still.any() else None)
    for key in ("fwer", "false_equivalence", "power", "equivalence"):
        if out[key] is not None:
            trials = n_sim * (1 if key in ("fwer", "false_equivalence")
                              else int((moving if key == "power" else still).sum()))
            out[key + "_mcse"] = _mcse(out[key], trials)
    out["expected_seeds"] = float(dec.n.mean())
    out["expected_baseline_seeds"] = float(dec.n.max(axis=1).mean())
    out["verdicts"] = {name: (v == code).mean(axis=0).tolist() for code, name in
                       enumerate(VERDICTS)}
    return out


def naive_fwer(looks, m: int = 1, alpha: float = 0.05, n_sim: int = 20000, seed: int = 0,
               rho: float = 0.5) -> dict:
    """The family-wise false-positive rate of re-reading a fixed analysis (Holm at alpha)
    after every look, stopping at the first better/worse, when all true differences are 0."""
    looks = Plan(tuple(looks)).looks
    d = _differences(np.random.default_rng(seed), n_sim, np.zeros(m), 1.0, looks[-1], rho)
    claimed = np.zeros(n_sim, dtype=bool)
    for n in looks:
        x = d[:, :, :n]
        p = t_pvalue(x.mean(axis=2), x.std(axis=2, ddof=1) / math.sqrt(n), n - 1)
        claimed |= (holm_union(p)[0] < alpha).any(axis=1)
    rate = float(claimed.mean())
    return {"fwer": rate, "fwer_mcse": _mcse(rate, n_sim), "n_sim": n_sim}


def design(plan: Plan, sd: float, m: int, effect: float | None = None, n_sim: int = 20000,
           seed: int = 0, rho: float = 0.5) -> dict:
    """Before training: what the plan does for m comparisons with a planning std ``sd`` of the
    paired differences. ``effect`` (default: the margin) is the true difference for power.
    Keys: looks, bounds (nominal two-sided p of the difference test per look at alpha / m),
    equivalence_bounds (one-sided, per TOST test), fwer (all true differences 0), power
    (all at +effect), false_equivalence (all at |effect| = margin, else None), equivalence
    (the rate of "equivalent" at a true 0), expected_seeds / expected_baseline_seeds
    ({"null": .., "effect": ..}), fixed_seeds / fixed_power (one analysis at the last look),
    naive_fwer (re-reading a fixed analysis at every look), their *_mcse, n_sim."""
    if effect is None:
        effect = plan.margin
    if effect is None or not (math.isfinite(effect) and effect != 0):
        raise ValueError("design needs an effect (or a plan with a margin) for the power")
    if not (math.isfinite(sd) and sd > 0) or m < 1:
        raise ValueError(f"design needs sd > 0 and m >= 1, got sd={sd!r}, m={m!r}")
    table_d, table_e = bound_table(plan, m)
    null = simulate(plan, np.zeros(m), sd, n_sim, seed, rho)
    alt = simulate(plan, np.full(m, float(effect)), sd, n_sim, seed + 1, rho)
    fixed = simulate(Plan((plan.looks[-1],), plan.spending, plan.alpha, plan.margin, None),
                     np.full(m, float(effect)), sd, n_sim, seed + 1, rho)
    naive = naive_fwer(plan.looks, m, plan.alpha, n_sim, seed + 2, rho)
    at_margin = plan.margin is not None and abs(effect) >= plan.margin
    return {
        "looks": list(plan.looks), "spending": plan.spending, "alpha": plan.alpha,
        "margin": plan.margin, "sd": sd, "m": m, "effect": float(effect), "rho": rho,
        "level": plan.alpha / m, "futility": plan.futility, "bounds": table_d[m - 1].tolist(),
        "equivalence_bounds": table_e[m - 1].tolist() if plan.margin is not None else None,
        "fwer": null["fwer"], "fwer_mcse": null["fwer_mcse"],
        "power": alt["power"], "power_mcse": alt["power_mcse"],
        "false_equivalence": alt["false_equivalence"] if at_margin else None,
        "false_equivalence_mcse": alt["false_equivalence_mcse"] if at_margin else None,
        "equivalence": null["equivalence"],
        "expected_seeds": {"null": null["expected_seeds"], "effect": alt["expected_seeds"]},
        "expected_baseline_seeds": {"null": null["expected_baseline_seeds"],
                                    "effect": alt["expected_baseline_seeds"]},
        "fixed_seeds": plan.looks[-1], "fixed_power": fixed["power"],
        "fixed_power_mcse": fixed["power_mcse"],
        "naive_fwer": naive["fwer"], "naive_fwer_mcse": naive["fwer_mcse"], "n_sim": n_sim,
    }
