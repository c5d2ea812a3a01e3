"""Does the ranking depend on the tuning budget? Expected-best curves (Dodge et al. 2019, "Show
your work"), best-so-far curves, crossings between strategies, tuning variance across repeated
studies and the sweep loop's budget check. Pure: numpy and scipy only, no I/O, no optuna (the
report turns each Optuna trial into a ``Trial``). Conventions:

- A study's *counted* trials are its COMPLETE and PRUNED ones (what ``sweep.trials`` counts).
  FAIL, RUNNING and WAITING trials are no draws; a failed trial's time is not charged either
  (a killed trial's retry resumes the same run, whose recorded time includes the failed part).
- Expected curve (``kind="expected"``; random sampler only): each of n trials is an i.i.d.
  draw, with replacement, from the study's counted trials. A pruned draw is never the best;
  the curve is E[best of n | at least one complete], and ``p_none`` is the chance of no
  complete trial among n. Without pruned trials this is exactly
  E[max_n] = sum_i v_(i) [(i/N)^n - ((i-1)/N)^n]. Enqueued trials (``sweep.enqueue``) are
  chosen points, not draws, and are left out of it.
- Observed curve (``kind="observed"``; TPE, grid): the best value among the first n counted
  trials in trial-number order; a single realisation, so no band.
- Time axis (``axis="seconds"``; budgets in seconds of training): T buys n(T) = T / t_mean
  trials, t_mean the mean training time of a counted draw (pruned ones included, so pruning
  makes trials cheaper). A fractional n(T) is read as a count K in {floor, ceil} with
  E[K] = n(T), i.e. a linear interpolation of the trial curve; NaN below one mean trial. This
  ignores the spread of trial times and any link between a trial's time and its value; with
  varied times it is slightly optimistic (the curve is concave in n).
- Band: percentile interval over bootstrap resamples of the counted trials (value, pruned,
  time jointly), recomputing the curve: the uncertainty of the estimate from N trials. ``spread``
  is something else: the std of the best value one tuning run of n trials gets.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from bench.stats.compare import describe

EXPECTED, OBSERVED = "expected", "observed"
TRIALS, SECONDS = "trials", "seconds"
IID_SAMPLERS = frozenset({"random"})  # samplers whose trials are i.i.d. draws from the space
COUNTED = frozenset({"COMPLETE", "PRUNED"})
N_BOOT = 1000
_CHUNK = 4_000_000  # weights per block in the time-axis bootstrap (keeps memory ~100 MB)


@dataclass(frozen=True)
class Trial:
    """One Optuna trial. state: its TrialState name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING;
    any case). value: the objective (COMPLETE). seconds: the training wall time of its run
    (status.json ``elapsed_s``; a RUNNING trial's time so far). enqueued: its ``enqueued``
    user attribute (a point of ``sweep.enqueue``, not a sampler's draw)."""
    number: int
    state: str
    value: float | None = None
    seconds: float | None = None
    enqueued: bool = False

    @property
    def kind(self) -> str:
        return self.state.upper()


@dataclass
class BudgetCurve:
    """One study's best value against the budget. Arrays are aligned with ``budgets``."""
    budgets: np.ndarray          # trials (counted) or seconds of training
    value: np.ndarray            # expected best (expected) or best so far (observed)
    low: np.ndarray              # band; NaN for observed curves
    high: np.ndarray
    spread: np.ndarray           # std of the best of one run at that budget; NaN for observed
    p_none: np.ndarray           # chance of no complete trial (expected); 0/1 for observed
    extrapolated: np.ndarray     # budget beyond what the study spent (trials or seconds)
    kind: str                    # EXPECTED or OBSERVED
    axis: str                    # TRIALS or SECONDS
    direction: str               # "maximize" or "minimize"
    n_trials: int                # counted trials used (N)
    n_complete: int
    confidence: float = 0.95
    note: str = ""
    samples: np.ndarray | None = field(default=None, repr=False)  # (B, budgets) bootstrap

    def points(self) -> list[dict]:  # one row per budget, plain floats (tables, exports)
        cols = ("budgets", "value", "low", "high", "spread", "p_none", "extrapolated")
        return [{c.removesuffix("s"): getattr(self, c)[j].item() for c in cols}
                for j in range(len(self.budgets))]


# --- the estimator ----------------------------------------------------------------------------
def _quantiles(x: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    # per column, NaN resamples left out; an all-NaN column stays NaN (silently)
    q = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(x, [q, 1 - q], axis=0)
    return low, high


def _sign(direction: str) -> float:  # values are flipped so that larger is better
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction {direction!r}: expected 'maximize' or 'minimize'")
    return 1.0 if direction == "maximize" else -1.0


def _moments(v: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E[best], E[best^2] given at least one complete, and P(no complete), after n draws.

    v: (B, N), each row a set of draws, pruned as -inf (larger is better). n: (M,) shared by
    every row, or (B, M); real n >= 1 mixes floor(n) and floor(n) + 1 draws.
    """
    v = np.sort(v, axis=1)  # pruned (-inf) first: they take the bottom ranks of the CDF
    mask = np.isfinite(v).astype(float)
    vz = np.where(mask > 0, v, 0.0)
    size = v.shape[1]
    top = np.arange(1, size + 1) / size  # F at the i-th sorted draw; tied draws telescope
    bottom = np.arange(size) / size
    cols = np.stack([mask, vz, vz * vz])  # (3, B, N): sums of w, w v, w v^2 over completes

    def sums(k, c):  # P(best is the i-th draw) = F_i^k - F_(i-1)^k
        w = top ** k[..., None] - bottom ** k[..., None]
        return c @ w.T if w.ndim == 2 else np.einsum("bmn,sbn->sbm", w, c)

    def block(k, c):
        lo = np.floor(k)
        frac = k - lo
        d, s, q = (1 - frac) * sums(lo, c) + frac * sums(lo + 1, c)  # mix the two counts
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, s / d, np.nan), np.where(d > 0, q / d, np.nan), 1 - d

    n = np.asarray(n, dtype=float)
    if n.ndim == 1:  # the same budgets for every row: one matrix product
        return block(n, cols)
    rows = max(1, _CHUNK // max(1, n.shape[1] * size))  # bounded (rows, M, N) weights
    parts = [block(n[i:i + rows], cols[:, i:i + rows]) for i in range(0, len(v), rows)]
    return tuple(np.concatenate(x) for x in zip(*parts))


def expected_best(values: Sequence[float], budgets: Sequence[float],
                  direction: str = "maximize", pruned: int = 0) -> np.ndarray:
    """Expected best value after n i.i.d. draws (with replacement) from the trials, per budget.

    values: the complete trials' objective values; pruned: how many counted trials were pruned
    (draws that are never best; the result is conditional on at least one complete draw).
    budgets: n >= 1, may exceed the number of trials; fractional n interpolates linearly.
    """
    sign = _sign(direction)
    v = np.concatenate([sign * np.asarray(values, dtype=float), np.full(int(pruned), -np.inf)])
    n = _budgets_ok(budgets, integer=False)
    if not np.isfinite(v).any():
        return np.full(len(n), np.nan)
    return sign * _moments(v[None, :], n)[0][0]


def best_so_far(values: Sequence[float | None], budgets: Sequence[float],
                direction: str = "maximize") -> np.ndarray:
    """The best value among the first n trials (in order; None = pruned), per budget n.

    NaN where none of the first n is complete or n exceeds the trials."""
    sign = _sign(direction)
    v = np.array([-np.inf if x is None else sign * float(x) for x in values], dtype=float)
    run = np.maximum.accumulate(v) if len(v) else v
    out = np.full(len(budgets), np.nan)
    for j, n in enumerate(_budgets_ok(budgets, integer=True).astype(int)):
        if n <= len(v) and np.isfinite(run[n - 1]):
            out[j] = sign * run[n - 1]
    return out


def _budgets_ok(budgets, integer: bool) -> np.ndarray:
    b = np.asarray(budgets, dtype=float).reshape(-1)
    if len(b) == 0 or not np.all(np.isfinite(b)) or np.any(b < 1):
        raise ValueError(f"budgets {list(b)}: expected numbers of trials >= 1")
    if integer and np.any(b != np.round(b)):
        raise ValueError(f"budgets {list(b)}: expected whole numbers of trials")
    return b


# --- curves of a study ------------------------------------------------------------------------
def _counted(trials: Sequence[Trial]) -> tuple[list[Trial], int]:
    """The counted trials in trial-number order; complete ones without a finite value are
    left out (and counted)."""
    kept = [t for t in sorted(trials, key=lambda t: t.number) if t.kind in COUNTED]
    good = [t for t in kept if t.kind == "PRUNED" or
            (t.value is not None and math.isfinite(t.value))]
    return good, len(kept) - len(good)


def _seconds(trials: list[Trial]) -> np.ndarray:
    """Each trial's training seconds; a missing time counts as the mean of the known ones."""
    s = np.array([np.nan if t.seconds is None else float(t.seconds) for t in trials])
    known = s[np.isfinite(s)]
    if len(s) and not len(known):
        raise ValueError("no trial records its training time: the time axis needs it")
    return np.where(np.isfinite(s), s, known.mean() if len(known) else 0.0)


def default_budgets(top: float, unit: float = 1.0) -> list[float]:
    """unit, 2 unit, 4 unit, ... below top, then top (a doubling within 10 % of top left out):
    the budgets of the table."""
    out = [unit]
    while out[-1] * 2 < top * (1 - 1e-9):
        out.append(out[-1] * 2)
    if top <= unit * (1 + 1e-9):
        return out
    if len(out) > 1 and top < 1.1 * out[-1]:  # a column that would read as the top's twin
        out.pop()
    return out + [top]


def budget_curve(trials: Sequence[Trial], sampler: str, direction: str = "maximize",
                 budgets: Sequence[float] | None = None, axis: str = TRIALS,
                 n_boot: int = N_BOOT, confidence: float = 0.95, seed: int = 0) -> BudgetCurve:
    """One study's curve: expected best (random sampler) or observed best so far (others).

    trials: every trial of the study (any state). sampler: the sweep's sampler name.
    budgets: counted trials (default 1..N) or seconds of training (default: doublings of the
    mean trial time up to the study's total). The band resamples the counted trials n_boot
    times (seeded).
    """
    sign = _sign(direction)
    if axis not in (TRIALS, SECONDS):
        raise ValueError(f"axis {axis!r}: expected {TRIALS!r} or {SECONDS!r}")
    kind = EXPECTED if sampler in IID_SAMPLERS else OBSERVED
    counted, bad = _counted(trials)
    notes = [f"{bad} complete trial(s) without a finite value left out"] if bad else []
    if kind == EXPECTED and any(t.enqueued for t in counted):
        notes.append(f"{sum(t.enqueued for t in counted)} enqueued trial(s) left out "
                     f"(chosen points, not random draws)")
        counted = [t for t in counted if not t.enqueued]
    n_total = len(counted)
    n_complete = sum(t.kind == "COMPLETE" for t in counted)
    secs = _seconds(counted) if axis == SECONDS else np.ones(n_total)
    spent = float(secs.sum())
    if budgets is None:
        budgets = range(1, max(n_total, 1) + 1) if axis == TRIALS else \
            default_budgets(spent, spent / n_total) if n_total else [1.0]
    b = np.asarray(budgets, dtype=float).reshape(-1)
    if axis == TRIALS:
        _budgets_ok(b, integer=kind == OBSERVED)
    elif len(b) == 0 or np.any(~np.isfinite(b)) or np.any(b <= 0):
        raise ValueError(f"budgets {list(b)}: expected positive seconds")
    nan = np.full(m := len(b), np.nan)
    common = dict(budgets=b, kind=kind, axis=axis, direction=direction, n_trials=n_total,
                  n_complete=n_complete, confidence=confidence,
                  extrapolated=b > (n_total if axis == TRIALS else spent) * (1 + 1e-12))
    if kind == OBSERVED:
        values = [t.value if t.kind == "COMPLETE" else None for t in counted]
        if axis == TRIALS:
            value = best_so_far(values, b, direction) if n_total else nan.copy()
        else:  # the best among trials whose cumulative time (in trial order) fits in T
            done = np.searchsorted(np.cumsum(secs), b * (1 + 1e-12), side="right")
            run = best_so_far(values, np.arange(1, n_total + 1), direction) if n_total else []
            value = np.array([run[k - 1] if k else np.nan for k in done])
            value[common["extrapolated"]] = np.nan
        notes.append("observed best so far in trial order (trials are not i.i.d. draws): one "
                     "realisation, no band")
        p_none = np.where(np.isnan(value), 1.0, 0.0)
        return BudgetCurve(value=value, low=nan, high=nan.copy(), spread=nan.copy(),
                           p_none=p_none, note="; ".join(notes), **common)
    draws = np.array([sign * t.value if t.kind == "COMPLETE" else -np.inf for t in counted])
    if n_complete == 0:
        notes.append("no complete trial")
        return BudgetCurve(value=nan, low=nan.copy(), high=nan.copy(), spread=nan.copy(),
                           p_none=np.ones(m), note="; ".join(notes), **common)
    if secs.mean() <= 0:
        raise ValueError("the trials record no training time: the time axis needs it")
    n = b if axis == TRIALS else b / secs.mean()
    m1, m2, p_none = (x[0] for x in _moments(draws[None, :], np.maximum(n, 1)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_total, size=(n_boot, n_total))
    boot_n = n if axis == TRIALS else b[None, :] / secs[idx].mean(axis=1)[:, None]
    samples = _moments(draws[idx], np.maximum(boot_n, 1))[0]
    if axis == SECONDS:  # less than one mean trial's time buys no trial
        m1, m2, p_none = (np.where(n < 1, np.nan, x) for x in (m1, m2, p_none))
        samples = np.where(boot_n < 1, np.nan, samples)
    low, high = _quantiles(samples, confidence)
    lost = int((~np.isfinite(draws[idx])).all(axis=1).sum())
    if lost:
        notes.append(f"{lost} of {n_boot} resamples without a complete trial left out")
    if axis == SECONDS and np.any(boot_n < 1):
        notes.append(f"at {int(np.any(boot_n < 1, axis=0).sum())} budget(s) near one mean "
                     f"trial's time the band leaves out resamples whose mean trial is longer")
    spread = np.sqrt(np.maximum(m2 - m1 ** 2, 0.0))
    low, high = (low, high) if sign > 0 else (-high, -low)
    return BudgetCurve(value=sign * m1, low=low, high=high, spread=spread, p_none=p_none,
                       note="; ".join(notes), samples=sign * samples, **common)


def budget_table(studies: Mapping[str, Sequence[Trial]], sampler: str,
                 direction: str = "maximize", budgets: Sequence[float] | None = None,
                 axis: str = TRIALS, n_boot: int = N_BOOT, confidence: float = 0.95,
                 seed: int = 0) -> dict[str, BudgetCurve]:
    """Per strategy, its curve at the same budgets (default: 1, 2, 4, ... and the largest
    study's N trials; on the seconds axis, doublings of the fastest mean trial time up to the
    largest total).

    Every study gets the same bootstrap seed, so studies of equal N resample the same trial
    positions: where the studies proposed the same parameters in the same order (the sweep
    seeds every study's sampler alike), the difference bands of ``order`` are then paired;
    elsewhere the pairing is arbitrary, which is fine for independent studies."""
    if budgets is None:
        counted = {k: _counted(v)[0] for k, v in studies.items()}
        if axis == TRIALS:
            budgets = default_budgets(max([len(c) for c in counted.values()] + [1]))
        else:
            spent = [_seconds(c) for c in counted.values() if c] or [np.ones(1)]
            budgets = default_budgets(max(x.sum() for x in spent), min(x.mean() for x in spent))
    return {name: budget_curve(trials, sampler, direction, budgets, axis, n_boot, confidence,
                               seed) for name, trials in studies.items()}


# --- crossings --------------------------------------------------------------------------------
@dataclass
class PairOrder:
    """Which of two strategies leads at each budget of a common grid, and where that changes."""
    a: str
    b: str
    budgets: np.ndarray
    leader: list[str | None]        # per budget: a, b or None (tie, or a value missing)
    resolved: list[bool | None]     # the difference's interval excludes 0 (None: no band)
    overlap: list[bool | None]      # the two bands overlap (None: no band)
    changes: list[float]            # budgets from which a new leader leads
    sentence: str

    @property
    def crosses(self) -> bool:
        return bool(self.changes)


def fmt_budget(budget: float, axis: str) -> str:
    """'3 trials', '45 s', '20 min', '1.5 h'."""
    if axis == TRIALS:
        return f"{round(budget)} trial{'s' if round(budget) != 1 else ''}"
    if budget >= 3600:
        return f"{budget / 3600:.3g} h"
    return f"{budget / 60:.3g} min" if budget >= 60 else f"{budget:.3g} s"


def _span(lo: float, hi: float, axis: str, sep: str = "-") -> str:
    """'1-4 trials', '0.5-2 h', '30 min to 2 h' (a single budget as itself)."""
    first, last = fmt_budget(lo, axis), fmt_budget(hi, axis)
    if first == last:
        return first
    if axis == TRIALS or first.split()[1] == last.split()[1]:
        return f"{first.split()[0]}{sep}{last}"
    return f"{first} to {last}"


def _ranges(budgets, flags, axis) -> str:
    """'1-4 trials, 16 trials' for the budgets whose flag is set."""
    runs, start = [], None
    for j, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = j
        elif not f and start is not None:
            runs.append(_span(budgets[start], budgets[j - 1], axis))
            start = None
    return ", ".join(runs)


def order(a: BudgetCurve, b: BudgetCurve, name_a: str = "a", name_b: str = "b",
          confidence: float | None = None) -> PairOrder:
    """The order of two curves on the same budgets (larger is better when maximising).

    Resolved at a budget when the percentile interval of the difference of the two bootstrap
    curves (resample b against resample b; see budget_table) excludes 0; ``overlap`` is the
    cruder check of the two bands. Observed curves have no band: None."""
    if a.axis != b.axis or a.direction != b.direction or not np.allclose(a.budgets, b.budgets):
        raise ValueError(f"{name_a} and {name_b}: curves on different budgets, axes or directions")
    sign = _sign(a.direction)
    conf = confidence or a.confidence
    diff = sign * (a.value - b.value)
    tol = 1e-12 * np.maximum(1.0, np.abs(a.value))  # equal up to rounding: a tie
    leader = [None if not np.isfinite(d) or abs(d) <= t else (name_a if d > 0 else name_b)
              for d, t in zip(diff, tol)]
    resolved: list[bool | None] = [None] * len(diff)
    overlap: list[bool | None] = [None] * len(diff)
    if a.samples is not None and b.samples is not None:
        k = min(len(a.samples), len(b.samples))
        d = sign * (a.samples[:k] - b.samples[:k])
        lo, hi = _quantiles(d, conf)
        resolved = [bool(l > 0 or h < 0) if np.isfinite(l) else None for l, h in zip(lo, hi)]
        overlap = [bool(max(a.low[j], b.low[j]) <= min(a.high[j], b.high[j]))
                   if np.isfinite(a.low[j] + b.low[j]) else None for j in range(len(diff))]
    changes, segments, last = [], [], None
    for j, who in enumerate(leader):
        if who is None:
            continue
        if who != last:
            if last is not None:
                changes.append(float(a.budgets[j]))
            segments.append([who, j, j])
            last = who
        segments[-1][2] = j
    return PairOrder(name_a, name_b, a.budgets, leader, resolved, overlap, changes,
                     _sentence(segments, a, leader, resolved))


def _sentence(segments, a: BudgetCurve, leader, resolved) -> str:
    axis, bud = a.axis, a.budgets
    if not segments:
        return "no budget where both have a value"
    ties = [w is None for w in leader]
    if len(segments) == 1:
        text = f"{segments[0][0]} leads at " + (f"{_ranges(bud, [not t for t in ties], axis)}"
                                                if any(ties) else
                                                f"every budget ({_span(bud[0], bud[-1], axis)})")
    else:
        parts = [f"{segments[0][0]} leads up to {fmt_budget(bud[segments[0][2]], axis)}"]
        for who, s, e in segments[1:-1]:
            parts.append(f"{who} from {_span(bud[s], bud[e], axis, ' to ')}")
        parts.append(f"{segments[-1][0]} from {fmt_budget(bud[segments[-1][1]], axis)} on")
        text = ", ".join(parts)
    if any(ties):
        text += f"; tied or missing at {_ranges(bud, ties, axis)}"
    if a.kind == OBSERVED or all(r is None for r in resolved):
        return text + " (observed best so far: one run per study, no band)"
    open_ = [r is False for r in resolved]
    if not any(open_):
        return text + "; resolved at every budget"
    if all(r is False or w is None for r, w in zip(resolved, leader)):
        return text + "; not resolved at any budget"
    return text + f"; not resolved at {_ranges(bud, open_, axis)}"


def crossings(curves: Mapping[str, BudgetCurve]) -> list[PairOrder]:
    """Every pair of strategies (in the mapping's order) on their common budgets."""
    return [order(curves[x], curves[y], x, y) for x, y in combinations(curves, 2)]


# --- tuning variance across repeated studies --------------------------------------------------
@dataclass
class TuningSpread:
    """The best validation value of K independent studies of one strategy."""
    k: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float = 0.95
    note: str = ""


def tuning_variance(best: Mapping[str, Sequence[float | None]],
                    confidence: float = 0.95) -> dict[str, TuningSpread]:
    """Per strategy: mean, std (ddof 1), min, max and the t interval of the mean of its
    repeated studies' best values (None / NaN left out, as in bench.stats.compare)."""
    out = {}
    for name, values in best.items():
        cell = describe(dict(enumerate(values)), confidence)
        kept = list(cell.values.values())
        out[name] = TuningSpread(cell.n, cell.mean, cell.std, min(kept, default=None),
                                 max(kept, default=None), cell.ci_low, cell.ci_high,
                                 confidence, cell.note)
    return out


# --- the sweep loop's budget check ------------------------------------------------------------
BUDGET_REACHED, RUNNING_FILL = "budget reached", "the running trials fill the budget"


@dataclass
class BudgetStatus:
    reached: bool              # the finished trials fill the budget: the study is done
    start_more: bool           # a worker may start another trial now
    reason: str | None         # BUDGET_REACHED, RUNNING_FILL or None
    trials_done: int           # COMPLETE + PRUNED
    seconds_done: float        # their training time (0 without an hours budget)
    seconds_running: float     # what the running trials are expected to take in all


def budget_status(trials: Sequence[Trial], budget: Mapping[str, float]) -> BudgetStatus:
    """Whether a study has reached ``budget`` ({"trials": N} and/or {"hours": H}; with both,
    whichever comes first) and whether a worker may start another trial.

    Finished = COMPLETE and PRUNED trials; their training seconds count (a missing time as
    the mean of the known ones). A RUNNING trial is expected to take max(its time so far, the
    mean finished trial). A worker starts a trial only while finished + expected running is
    below the budget, so parallel workers wait (RUNNING_FILL) instead of overshooting H by a
    trial each. FAIL and WAITING trials do not count."""
    unknown = set(budget) - {"trials", "hours"}
    if unknown or not budget:
        raise ValueError(f"budget {dict(budget)}: expected 'trials' and/or 'hours'")
    if any(not (isinstance(v, (int, float, np.number)) and v > 0) for v in budget.values()):
        raise ValueError(f"budget {dict(budget)}: expected positive numbers")
    done = [t for t in trials if t.kind in COUNTED]
    running = [t for t in trials if t.kind == "RUNNING"]
    secs = _seconds(done) if done and "hours" in budget else np.zeros(0)
    spent = float(secs.sum())
    typical = float(secs.mean()) if len(secs) else 0.0
    ahead = sum(max(t.seconds or 0.0, typical) for t in running)
    trials, limit = budget.get("trials", math.inf), budget.get("hours", math.inf) * 3600.0
    reached = len(done) >= trials or spent >= limit
    fill = len(done) + len(running) >= trials or spent + ahead >= limit
    reason = BUDGET_REACHED if reached else (RUNNING_FILL if fill else None)
    return BudgetStatus(reached, reason is None, reason, len(done), spent, ahead)
