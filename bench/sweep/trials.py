"""A study's trials as the budget statistics see them (bench/stats/budget.py): each Optuna trial
as a `Trial` with its state, value, training seconds and whether it was enqueued; the budget
check of the sweep loop; the budget a study records.

A trial's seconds are its run's training wall time (status.json `elapsed_s`, kept on the trial
as the user attribute `train_s` when it ends). A run that an earlier trial already trained is
reused, and the trial is still charged its run's time: the budget measures what the trials cost
to train, so a repeat that proposes the same parameters as another pays the same.
"""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

from bench.config import ConfigError
from bench.stats.budget import BudgetStatus, Trial, budget_status
from bench.store import RunDir

TRAIN_S = "train_s"  # user attribute: the trial's run's training seconds (status elapsed_s)


def run_seconds(root: Path, run_id: str | None) -> float | None:
    if not run_id:
        return None
    value = RunDir(root / run_id).status().get("elapsed_s")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def trial_seconds(trial, root: Path, now: datetime | None = None) -> float | None:
    """Training seconds of a finished trial; a running trial's time so far."""
    if trial.state.name == "RUNNING":
        if trial.datetime_start is None:
            return 0.0
        return max(0.0, ((now or datetime.now()) - trial.datetime_start).total_seconds())
    value = trial.user_attrs.get(TRAIN_S)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return run_seconds(root, trial.user_attrs.get("run_id"))


def as_trials(study, root: Path, seconds: bool = True) -> list[Trial]:
    """Every trial of the study but the discarded ones (a race for the last slot: no draw)."""
    now = datetime.now()
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("discarded"):
            continue
        state = t.state.name
        out.append(Trial(t.number, state, t.value if state == "COMPLETE" else None,
                         trial_seconds(t, root, now) if seconds and state != "FAIL" else None,
                         bool(t.user_attrs.get("enqueued"))))
    return out


def study_budget(study, fallback: dict) -> dict:
    """The budget the study's last sweep set (an int from before hours budgets: trials)."""
    value = study.user_attrs.get("budget")
    if isinstance(value, int) and not isinstance(value, bool):
        return {"trials": value}
    return dict(value) if isinstance(value, dict) and value else dict(fallback)


def check(study, budget: dict, root: Path) -> BudgetStatus:
    """Whether the study reached its budget and whether a worker may start another trial."""
    try:
        return budget_status(as_trials(study, root, seconds="hours" in budget), budget)
    except ValueError as err:  # finished trials whose runs record no time: hours unknown
        raise ConfigError(f"study {study.study_name}: {err} (an hours budget reads each "
                          f"trial's run's status.json elapsed_s); give a trials budget") from None


def retry_attrs(trial) -> dict:
    """The user attributes of a trial queued again: which one it retries, and whether it is a
    point of sweep.enqueue (not a sampler's draw, for the expected-best curves)."""
    return {"retry_of": trial.number, **({"enqueued": True} if trial.user_attrs.get("enqueued")
                                         else {})}


def fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g}"
