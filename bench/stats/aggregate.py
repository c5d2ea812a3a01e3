"""One headline across tasks: each strategy against the baseline over all tasks of an
experiment, with intervals from a stratified bootstrap that keeps the seed pairing.
Pure numbers: numpy and scipy only.

Input: ``scores = {task: {strategy: {seed: value}}}``, each task in its own metric and display
units; ``higher_is_better`` per task (or one bool). Within a task the runs are paired by seed.

Statistics per strategy X against the baseline Y (gain = oriented so that positive is better:
x - y where higher is better, y - x where lower is):

- ``mean_gain``: the mean over tasks of the per-task mean paired gain, each task in its own
  units (a sum of apples and pears: read it with ``per_task_gain``).
- ``iqm``: interquartile mean (scipy.stats.trim_mean, 25 % cut at each end, as rliable) of the
  normalised scores of all of X's runs pooled over tasks; ``iqm_gain`` = iqm(X) - iqm(Y).
  Normalisation per task: (x - zero) / (one - zero) with ``references = {task: (zero, one)}``
  where given (e.g. (chance, 100)), else zero = the worst and one = the best run of any strategy
  in the task (min-max over all runs, lower-is-better turned around). The references are fixed
  from the full data (not recomputed per resample), like rliable's reference scores.
- ``p_improvement``: rliable's P(X > Y): per task the Mann-Whitney probability that a run of X
  beats a run of Y (all pairs of runs, ties count 1/2), averaged over tasks with equal weight.
  ``p_improvement_paired``: the same on same-seed pairs only (the chance that X beats Y on the
  same seed). The headline is rliable's, for comparability; the pairing enters through the
  bootstrap.
- Intervals (percentile): ``seeds`` resamples the seeds of each task with replacement, JOINTLY
  for every strategy (a drawn seed brings every strategy's run of that seed: pairs are kept, so
  identical strategies differ by exactly 0 in every resample); tasks are fixed. ``tasks``
  also resamples the tasks (then the seeds within each drawn task): a check of how much the
  headline depends on which tasks were run; None with one task.

Runs enter a task only for the seeds every strategy of the headline has there (the note names
the others); strategies missing from a task are left out of the headline.

API:
    headline(scores, baseline, higher_is_better=True, references=None,
             n_resamples=2000, seed=0, confidence=0.95) -> Headline
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from bench.stats.compare import Interval, percentile_interval

N_RESAMPLES = 2000
SEED = 0
IQM_CUT = 0.25


def _sorted(keys):
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


@dataclass
class Estimate:
    """A statistic on the full data, its interval over seeds (tasks fixed) and over tasks and
    seeds (None with one task)."""
    estimate: float
    seeds: Interval
    tasks: Interval | None = None
    seed_samples: np.ndarray | None = field(default=None, repr=False)  # (n_resamples,)
    task_samples: np.ndarray | None = field(default=None, repr=False)


@dataclass
class HeadlineRow:
    name: str
    baseline: str
    mean_gain: Estimate
    iqm: Estimate
    iqm_gain: Estimate
    p_improvement: Estimate
    p_improvement_paired: Estimate
    per_task_gain: dict[str, float] = field(default_factory=dict)  # task units, + = better


@dataclass
class Headline:
    baseline: str
    tasks: list[str]
    seeds: dict[str, list]                         # per task: the seeds used
    references: dict[str, tuple[float, float]]     # per task: the scores mapped to 0 and 1
    baseline_iqm: Estimate | None
    rows: dict[str, HeadlineRow] = field(default_factory=dict)
    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    confidence: float = 0.95
    note: str = ""


def _finite(cell: Mapping) -> dict:
    return {s: float(v) for s, v in cell.items() if v is not None and np.isfinite(float(v))}


def _statistics(raw: list[np.ndarray], norm: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every statistic for B resamples at once. raw / norm: per task (K, B, n) oriented and
    normalised scores, strategy 0 the baseline. Returns (K - 1, B) arrays (iqm: (K, B))."""
    gains, p_all, p_pair = [], [], []
    for x in raw:
        y, xs = x[0], x[1:]
        gains.append((xs - y).mean(-1))
        beat = (xs[..., :, None] > y[None, :, None, :]).astype(float)
        beat += 0.5 * (xs[..., :, None] == y[None, :, None, :])
        p_all.append(beat.mean((-1, -2)))
        same = (xs > y).astype(float) + 0.5 * (xs == y)
        p_pair.append(same.mean(-1))
    iqm = stats.trim_mean(np.concatenate(norm, axis=-1), IQM_CUT, axis=-1)
    return {"mean_gain": np.mean(gains, 0), "iqm": iqm, "iqm_gain": iqm[1:] - iqm[0],
            "p_improvement": np.mean(p_all, 0), "p_improvement_paired": np.mean(p_pair, 0)}


def headline(scores: Mapping[str, Mapping[str, Mapping[Hashable, float | None]]], baseline: str,
             higher_is_better: bool | Mapping[str, bool] = True,
             references: Mapping[str, tuple[float, float]] | None = None,
             n_resamples: int = N_RESAMPLES, seed: int = SEED,
             confidence: float = 0.95) -> Headline:
    """Every strategy against ``baseline`` over the tasks (see the module docstring)."""
    notes = []
    tasks = [t for t in scores if _finite(scores[t].get(baseline, {}))]
    if len(tasks) < len(scores):
        notes.append("left out (no baseline runs): "
                     + ", ".join(t for t in scores if t not in tasks))
    names = [baseline] + _sorted({n for t in tasks for n in scores[t] if n != baseline})
    kept = [n for n in names if all(_finite(scores[t].get(n, {})) for t in tasks)]
    if len(kept) < len(names):
        notes.append("left out (not in every task): "
                     + ", ".join(n for n in names if n not in kept))
    out = Headline(baseline, tasks, {}, {}, None, n_resamples=n_resamples, seed=seed,
                   confidence=confidence)
    raw, norm = [], []
    for t in tasks:
        cells = {n: _finite(scores[t][n]) for n in kept}
        shared = _sorted(set.intersection(*(set(c) for c in cells.values())))
        dropped = _sorted(set().union(*(set(c) for c in cells.values())) - set(shared))
        if dropped:
            notes.append(f"{t}: seed(s) {', '.join(map(str, dropped))} not in every strategy, "
                         "left out")
        if not shared:
            notes.append(f"{t}: no seed shared by every strategy: no headline")
            out.note = "; ".join(notes)
            return out
        hib = higher_is_better if isinstance(higher_is_better, bool) else higher_is_better[t]
        values = np.array([[cells[n][s] for s in shared] for n in kept])  # (K, n)
        oriented = values if hib else -values
        if references is not None and t in references:
            zero, one = map(float, references[t])
        else:  # min-max over every run of every strategy kept in this task
            zero, one = ((values.min(), values.max()) if hib else (values.max(), values.min()))
            zero, one = float(zero), float(one)
        scale = one - zero
        normalised = (values - zero) / scale if scale != 0 else np.zeros_like(values)
        if scale == 0:
            notes.append(f"{t}: every run scores the same: normalised to 0")
        out.seeds[t], out.references[t] = shared, (zero, one)
        raw.append(oriented)
        norm.append(normalised)
    if len(kept) < 2 or not tasks:
        out.note = "; ".join([*notes, "no strategy to compare with the baseline"])
        return out
    full = _statistics([x[:, None, :] for x in raw], [x[:, None, :] for x in norm])
    rng = np.random.default_rng(seed)
    # seeds resampled jointly across strategies within each task; tasks fixed
    draws = [rng.integers(0, x.shape[1], size=(n_resamples, x.shape[1])) for x in raw]
    boot = _statistics([x[:, i] for x, i in zip(raw, draws)],
                       [x[:, i] for x, i in zip(norm, draws)])
    tasks_boot = _task_bootstrap(raw, norm, n_resamples, rng) if len(tasks) > 1 else None
    if tasks_boot is None:
        notes.append("one task: no task-resampled interval")

    def estimate(key: str, k: int) -> Estimate:
        value = float(full[key][k, 0])
        by_task = None if tasks_boot is None else tasks_boot[key][k]
        return Estimate(value, percentile_interval(value, boot[key][k], confidence),
                        None if by_task is None else
                        percentile_interval(value, by_task, confidence),
                        boot[key][k], by_task)

    out.baseline_iqm = estimate("iqm", 0)
    for k, name in enumerate(kept[1:]):
        per_task = {t: float((x[k + 1] - x[0]).mean()) for t, x in zip(tasks, raw)}
        out.rows[name] = HeadlineRow(
            name, baseline, estimate("mean_gain", k), estimate("iqm", k + 1),
            estimate("iqm_gain", k), estimate("p_improvement", k),
            estimate("p_improvement_paired", k), per_task)
    out.note = "; ".join(notes)
    return out


def _task_bootstrap(raw, norm, n_resamples: int, rng) -> dict[str, np.ndarray]:
    """Tasks drawn with replacement, then each drawn task's seeds (jointly across strategies).
    Resamples that draw the same task multiset are computed together."""
    n_tasks = len(raw)
    picks = np.sort(rng.integers(0, n_tasks, size=(n_resamples, n_tasks)), axis=1)
    out: dict[str, np.ndarray] = {}
    patterns, inverse = np.unique(picks, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for p, pattern in enumerate(patterns):
        rows = np.flatnonzero(inverse == p)
        draws = [rng.integers(0, raw[t].shape[1], size=(len(rows), raw[t].shape[1]))
                 for t in pattern]
        part = _statistics([raw[t][:, i] for t, i in zip(pattern, draws)],
                           [norm[t][:, i] for t, i in zip(pattern, draws)])
        for key, value in part.items():
            out.setdefault(key, np.empty((value.shape[0], n_resamples)))[:, rows] = value
    return out


__all__ = ["Estimate", "Headline", "HeadlineRow", "headline"]
