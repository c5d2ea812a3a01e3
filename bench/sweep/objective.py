"""A trial: the cell's base run with the trial's parameters set, trained as an ordinary run; its
objective is the run's best validation value of the task's monitor metric (never a test
metric). A trial whose parameters repeat a finished run reuses that run.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bench.config import ConfigError, Run, run_id
from bench.config.sweep import with_params
from bench.resume.stops import RunInterrupted
from bench.run.runner import SKIPPED, execute
from bench.store import RunDir, RunState, proc_stat
from bench.sweep.cells import StudyCell
from bench.sweep.trials import TRAIN_S, retry_attrs, run_seconds


def this_worker() -> dict:
    """This process, as a trial records the worker that runs it (for reap_dead_trials)."""
    stat = proc_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": stat[1] if stat else None}


class TrialFailed(Exception):
    """The trial's run failed (the run's status says why); the sweep goes on."""


class OverBudget(Exception):
    """Another worker took the study's last trial while this one was being created."""


def trial_counts(study) -> dict:
    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "killed": 0}
    trials = study.get_trials(deepcopy=False)
    # failed by the RDB heartbeat: RetryHeartbeatStaleTrialCallback names them on the retry
    stale = {t.system_attrs.get("failed_trial") for t in trials}
    for t in trials:
        if t.user_attrs.get("discarded"):
            continue
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed",
                 "RUNNING": "running", "WAITING": "waiting"}[t.state.name]
        counts[state] += 1
        if state == "failed" and (t.user_attrs.get("killed") or t.user_attrs.get("interrupted")
                                  or t.number in stale):
            counts["killed"] += 1
    return counts


def _release_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort after an out-of-memory trial
        pass


def fmt_params(params: dict) -> str:
    shorts = [k.rsplit(".", 1)[-1] for k in params]
    names = shorts if len(set(shorts)) == len(shorts) else list(params)
    return " ".join(f"{n}={_fmt_value(v)}" for n, v in zip(names, params.values()))


def _fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _release_lock_of(run_dir: RunDir, worker: dict) -> None:
    """Remove the run's lock when the dead worker holds it: on another machine the store
    cannot tell that the holder is gone (the heartbeat did)."""
    try:
        lock = json.loads((run_dir.path / "lock").read_text())
    except (OSError, ValueError):
        return
    if (lock.get("host"), lock.get("pid")) == (worker.get("host"), worker.get("pid")):
        (run_dir.path / "lock").unlink(missing_ok=True)


@dataclass
class Objective:
    """Trains one trial as a run of the cell and returns its best validation value."""
    cell: StudyCell
    space: dict
    budget: dict  # {"trials": N} and/or {"hours": H}
    root: Path
    console: Console
    prefix: str = ""
    last: tuple[int, str] | None = None  # (trial number, outcome) of the latest trial

    def __call__(self, trial) -> float:
        import optuna

        # a trial re-queued by the heartbeat keeps the dead worker's record (and its run's lock)
        dead = trial.user_attrs.get("worker")
        trial.set_user_attr("worker", this_worker())
        if self._over_budget(trial):
            trial.set_user_attr("discarded", "over budget: another worker took the last trial")
            self.last = (trial.number, "discarded")
            raise OverBudget()
        params = {key: self._suggest(trial, key, spec) for key, spec in self.space.items()}
        label = f"{self.prefix}{self.cell.short} #{trial.number}"
        self.last = (trial.number, "failed")
        try:
            cfg = with_params(self.cell.base.config, params)
        except ConfigError as err:
            self.console.print(f"  [red]{label} failed:[/] {escape(str(err))}")
            raise TrialFailed(str(err)) from None
        run = Run(run_id(cfg), cfg, dict(self.cell.base.axes, trial=trial.number))
        trial.set_user_attr("run_id", run.id)
        run_dir = RunDir(self.root / run.id)
        self.console.print(f"{label}  {escape(fmt_params(params))}  -> {run.id}")
        t0 = time.time()
        if dead:
            self.console.print(f"  {label}: again, as its worker on {dead.get('host')} (pid "
                               f"{dead.get('pid')}) stopped sending heartbeats")
            _release_lock_of(run_dir, dead)
        outcome = self._train(trial, run, run_dir, label)
        if outcome in (RunState.PRUNED, RunState.DONE):  # what the trial cost (hours budgets)
            seconds = run_seconds(self.root, run.id)
            if seconds is not None:
                trial.set_user_attr(TRAIN_S, seconds)
        if outcome == RunState.PRUNED:
            self.last = (trial.number, "pruned")
            epoch = run_dir.status().get("epoch")
            self.console.print(f"  [yellow]{label} pruned[/]"
                               + (f" at epoch {epoch + 1}" if epoch is not None else ""))
            raise optuna.TrialPruned()
        if outcome != RunState.DONE:
            _release_memory()
            raise TrialFailed(run_dir.status().get("error") or outcome)
        value = ((run_dir.metrics() or {}).get("best_val") or {}).get(self.cell.metric)
        if value is None or not math.isfinite(value):
            self.console.print(f"  [red]{label} failed: no finite {self.cell.metric} ({value})")
            raise TrialFailed(f"no finite {self.cell.metric}: {value}")
        self.last = (trial.number, "complete")
        self.console.print(f"  [green]{label} {self.cell.metric}={value:.4f}[/] "
                           f"({time.time() - t0:.1f}s)")
        return value

    def _over_budget(self, trial) -> bool:
        # exact under concurrency: the storage numbers trials atomically, so the trials numbered
        # before this one that are running or finished (not failed) decide whether it fits
        from optuna.trial import TrialState

        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)) if t.number < trial.number]
        if "trials" in self.budget and len(ahead) >= self.budget["trials"]:
            return True
        if "hours" in self.budget:  # the finished trials before it already spent the hours
            spent = sum(run_seconds(self.root, t.user_attrs.get("run_id")) or 0.0
                        if t.user_attrs.get(TRAIN_S) is None else t.user_attrs[TRAIN_S]
                        for t in ahead if t.state != TrialState.RUNNING)
            return spent >= self.budget["hours"] * 3600.0
        return False

    @staticmethod
    def _suggest(trial, key: str, spec: dict):
        if spec["type"] == "categorical":
            return trial.suggest_categorical(key, spec["choices"])
        if spec["type"] == "int":
            return trial.suggest_int(key, spec["low"], spec["high"], step=spec["step"] or 1,
                                     log=spec["log"])
        return trial.suggest_float(key, spec["low"], spec["high"], step=spec["step"],
                                   log=spec["log"])

    def _train(self, trial, run: Run, run_dir: RunDir, label: str) -> str:
        """Train the trial's run (or reuse it when an earlier trial finished the same config)."""
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback

        for _ in range(3):
            if run_dir.status().get("state") == RunState.DONE and run_dir.metrics():
                self.console.print(f"  {label}: same config as a finished run, reused")
                return RunState.DONE
            pruning = PyTorchLightningPruningCallback(trial, monitor=self.cell.metric)
            try:
                # a NaN loss fails the run through the runner's DivergenceGuard
                outcome = execute(run, run_dir, self.console, label, extra_callbacks=[pruning])
            except RunInterrupted:
                # re-queue, so the next sweep resumes this run from the checkpoint just saved
                trial.set_user_attr("interrupted", True)
                trial.study.enqueue_trial(trial.params, user_attrs=retry_attrs(trial))
                raise KeyboardInterrupt() from None
            if outcome == RunState.DONE:
                try:
                    pruning.check_pruned()  # under DDP the callback only records the decision
                except optuna.TrialPruned:
                    run_dir.update_status(state=RunState.PRUNED)
                    return RunState.PRUNED
            if outcome != SKIPPED:
                return outcome
            # another worker trains this very config: wait for it, then use its result
            while run_dir.locked_by_other():
                time.sleep(2.0)
        return RunState.FAILED
