"""Running the studies: set each up, reap trials whose worker died, and let one or more
workers draw trials until every study reaches its budget.

The budget (trials and/or training hours; bench/sweep/trials.py) counts complete and pruned
trials across all workers and invocations, so re-running the same command continues every study
to its total. A trial whose worker died (SIGKILL, OOM killer, power) stays RUNNING in the
storage; the next sweep marks it failed and queues its parameters again (the re-queued trial
resumes the same run from its checkpoint). `--repeat K` runs K independent studies per cell
(bench/sweep/cells.py), each with its own sampler seed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console

from bench.config import ConfigError, Experiment
from bench.config.sweep import grid_size, grid_values
from bench.run.progress import sweep_progress
from bench.run.runner import preflight
from bench.run.workers import start_workers, wait_for_workers, worker_slot
from bench.store import RunDir, RunState, experiment_dir, process_gone, write_atomic
from bench.stats.budget import BUDGET_REACHED
from bench.sweep.cells import (StudyCell, objective_text, require_sweep, study_cells,
                               with_repeats)
from bench.sweep.objective import Objective, trial_counts
from bench.sweep.storage import (HEARTBEAT_S, RECORD, describe_storage, open_storage,
                                 quiet_optuna, storage_url)
from bench.sweep.summary import summary
from bench.sweep.trials import as_trials, check, fmt_hours, retry_attrs

RUNNING_ELSEWHERE = "the last trials are running in other workers"
GIVE_UP = 10  # failures in a row that end a study with an hours-only budget
# how long a RUNNING trial may go without saying which worker runs it (it does so at once)
UNCLAIMED_GRACE_S = 120
WAIT_POLL_S = 2.0  # how often a worker with nothing to start looks at the others' trials


def _sampler(spec: dict, seed: int, space: dict):
    import optuna

    options = {k: v for k, v in spec.items() if k != "name"}
    options["seed"] = seed
    if spec["name"] == "tpe":
        return optuna.samplers.TPESampler(**options)
    if spec["name"] == "random":
        return optuna.samplers.RandomSampler(**options)
    return optuna.samplers.GridSampler({k: grid_values(v) for k, v in space.items()}, **options)


def _pruner(spec: dict):
    import optuna

    options = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(**options)
    if spec["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(**options)
    return optuna.pruners.NopPruner()


def _sampler_seed(base: int, worker: int, existing: int) -> int:
    """A fresh single-worker sweep uses the seed as given; a worker or a resumed sweep gets a
    derived one, so it does not replay the first worker's (or the first session's) proposals."""
    if worker == 0 and existing == 0:
        return base
    digest = hashlib.sha1(f"{base}/{worker}/{existing}".encode()).hexdigest()
    return int(digest[:8], 16)


# --- dead workers
def _worker_dead(worker: dict | None, started: datetime | None) -> bool:
    if not worker:  # killed between creating the trial and claiming it (milliseconds)
        age = (datetime.now() - started).total_seconds() if started is not None else 0.0
        return age > UNCLAIMED_GRACE_S
    return process_gone(worker)  # another machine's worker: its RDB heartbeat speaks for it


def reap_dead_trials(study, root: Path, console: Console) -> int:
    """Fail the RUNNING trials whose worker process is gone, and queue their parameters again.

    The re-queued trial has the same config, hence the same run, which resumes from its last
    checkpoint. Safe to call from several processes at once: only the one whose FAIL lands
    re-queues.
    """
    from optuna.trial import TrialState

    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _worker_dead(trial.user_attrs.get("worker"), trial.datetime_start):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "killed", True)
            study.tell(trial.number, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - another process reaped it first
            continue
        study.enqueue_trial(trial.params, user_attrs=retry_attrs(trial))
        reaped += 1
        rid = trial.user_attrs.get("run_id")
        if rid:
            rd = RunDir(root / rid)
            if rd.status().get("state") == RunState.RUNNING and not rd.locked_by_other():
                rd.update_status(state=RunState.INTERRUPTED, error="killed: its sweep worker died")
        console.print(f"  [yellow]{study.study_name.split('/', 1)[1]} #{trial.number}: its "
                      f"worker died; marked failed, parameters queued again")
    return reaped


def _finished(study, budget: dict, sweep: dict, root: Path) -> str | None:
    """Why this worker has nothing left to start in the study, or None. With an hours budget
    the running trials are expected to take at least the mean finished trial's time, so
    parallel workers wait for them instead of overshooting the hours by a trial each."""
    from optuna.trial import TrialState

    status = check(study, budget, root)
    if status.reached:
        return BUDGET_REACHED
    if not status.start_more:
        return RUNNING_ELSEWHERE
    counts = trial_counts(study)
    if sweep["sampler"]["name"] == "grid" and not counts["waiting"]:
        started = {t.system_attrs.get("grid_id") for t in study.get_trials(deepcopy=False)
                   if "grid_id" in t.system_attrs and t.state != TrialState.WAITING}
        if len(started) >= grid_size(sweep):
            return "grid exhausted"
    return None


def _deaths_visible(study, heartbeat: bool) -> bool:
    """Whether this worker can tell that another worker's running trial is dead: by the RDB
    heartbeat, or by process id when every running trial's worker is on this host."""
    from optuna.trial import TrialState

    if heartbeat:
        return True
    host = socket.gethostname()
    return all((t.user_attrs.get("worker") or {}).get("host", host) == host
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _wait_for_others(study, cell: StudyCell, budget: dict, sweep: dict, root: Path,
                     console: Console, prefix: str, heartbeat: bool) -> str | None:
    """While the study's last trials run in other workers, wait: a trial whose worker dies is
    failed and its parameters queued again (by process id on this host, by heartbeat on
    others), and this worker runs it, so the study still reaches its budget. Returns the new
    `_finished` reason (None: a trial is there to start)."""
    from optuna.storages import fail_stale_trials

    said = False
    while True:
        reap_dead_trials(study, root, console)
        waiting = trial_counts(study)["waiting"]
        fail_stale_trials(study)  # RDB: RetryHeartbeatStaleTrialCallback queues them again
        if trial_counts(study)["waiting"] > waiting:
            console.print(f"  [yellow]{cell.short}: a worker stopped sending heartbeats; its "
                          f"trial is failed and its parameters queued again")
        reason = _finished(study, budget, sweep, root)
        if reason != RUNNING_ELSEWHERE or not _deaths_visible(study, heartbeat):
            return reason
        if not said:
            console.print(f"{prefix}{cell.short}: waiting for the trials other workers run")
            said = True
        time.sleep(WAIT_POLL_S)


def repeat_seed(exp: Experiment, cell: StudyCell) -> int:
    """The sampler seed of a cell's study: the sweep's (default: the matrix's first seed) plus
    the repeat index, so repeats draw independently and each one is reproducible."""
    return exp.sweep["sampler"].get("seed", cell.base.config["seed"]) + cell.repeat


def _load_studies(exp: Experiment, cells: list[StudyCell], storage, worker: int):
    import optuna

    studies = {}
    for cell in cells:
        existing = len(optuna.load_study(study_name=cell.name, storage=storage).trials)
        seed = repeat_seed(exp, cell)
        studies[cell.name] = optuna.load_study(
            study_name=cell.name, storage=storage,
            sampler=_sampler(exp.sweep["sampler"], _sampler_seed(seed, worker, existing),
                             exp.sweep["params"]),
            pruner=_pruner(exp.sweep["pruner"]))
    return studies


def sweep_worker(exp: Experiment, results: Path, url: str | None, budgets: dict, worker: int,
                 console: Console, workers: int = 1, heartbeat: int = HEARTBEAT_S,
                 repeats: int = 1) -> int:
    """One worker's loop: each study in turn, until its budget is reached. Exit code.
    `budgets`: each study's budget dict by study name."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    quiet_optuna()
    storage = open_storage(exp, results, url, workers=True, heartbeat=heartbeat)
    beating = bool(getattr(storage, "get_heartbeat_interval", lambda: None)())
    cells = with_repeats(study_cells(exp), range(repeats))
    studies = _load_studies(exp, cells, storage, worker)
    root = experiment_dir(results, exp.name)
    prefix = f"[w{worker}] " if workers > 1 else ""
    short = []
    for cell in cells:
        study, budget = studies[cell.name], budgets[cell.name]
        objective = Objective(cell, exp.sweep["params"], budget, root, console, prefix)
        give_up = budget.get("trials", GIVE_UP)
        # the trials budget is also checked by Optuna, against every worker, before each trial
        limit = [MaxTrialsCallback(budget["trials"], states=(
            TrialState.COMPLETE, TrialState.PRUNED))] if "trials" in budget else []
        failed_in_a_row = 0
        while True:
            reason = _finished(study, budget, exp.sweep, root)
            if reason == RUNNING_ELSEWHERE:
                reason = _wait_for_others(study, cell, budget, exp.sweep, root, console, prefix,
                                          beating)
            if reason is not None:
                break
            objective.last = None
            try:
                # one trial per call: the budget is checked against every worker before each
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                               callbacks=limit)
            except KeyboardInterrupt:
                console.print(f"[yellow]{prefix}interrupted: the trial's run is saved and its "
                              f"parameters queued; run the same command to continue")
                return 130
            outcome = objective.last[1] if objective.last else None
            failed_in_a_row = failed_in_a_row + 1 if outcome == "failed" else \
                (0 if outcome in ("complete", "pruned") else failed_in_a_row)
            if failed_in_a_row >= give_up:
                console.print(f"[red]{prefix}{cell.short}: {failed_in_a_row} trials failed in a "
                              f"row; giving up on this study (the runs' status.json and "
                              f"error.log say why)")
                short.append(cell.name)
                break
    return 1 if short else 0


def budget_text(budget: dict) -> str:
    """'8 trials', '2 h of training', '8 trials or 2 h of training, whichever comes first'."""
    parts = ([f"{budget['trials']} trials"] if "trials" in budget else []) + \
        ([f"{budget['hours']:g} h of training"] if "hours" in budget else [])
    return " or ".join(parts) + (", whichever comes first" if len(parts) > 1 else "")


def done_text(study, budget: dict, root: Path) -> str:
    """'3/8 done' and/or '0.21/2 h'; the study's finished trials against its budget."""
    status = check(study, budget, root)
    text = f"{status.trials_done}/{budget['trials']} done" if "trials" in budget else \
        f"{status.trials_done} done"
    if "hours" in budget:
        text += f", {fmt_hours(status.seconds_done)}/{budget['hours']:g} h"
    return text


def _progress_trials(study, budget: dict, root: Path, workers: int) -> int:
    """The trials the progress display expects of a study: its trials budget, or for hours
    alone the finished trials plus the hours left over their mean time (a guess, re-read at
    each start)."""
    if "trials" in budget:
        return budget["trials"]
    done = [t for t in as_trials(study, root) if t.kind in ("COMPLETE", "PRUNED")]
    spent = sum(t.seconds or 0.0 for t in done)
    if not done or spent <= 0:
        return len(done) + workers
    left = max(0.0, budget["hours"] * 3600.0 - spent)
    return len(done) + math.ceil(left / (spent / len(done)))


def sweep_budget(exp: Experiment, trials: int | None = None,
                 hours: float | None = None) -> dict:
    """The budget of every study: --trials and/or --hours replace the file's sweep.budget
    (sweep.trials); the grid sampler caps trials at the grid's size."""
    from bench.config.sweep import check_budget

    flags = {k: v for k, v in (("trials", trials), ("hours", hours)) if v is not None}
    budget = check_budget(flags, "--trials/--hours") if flags else dict(exp.sweep["budget"])
    if exp.sweep["sampler"]["name"] == "grid" and budget.get("trials", 0) > grid_size(exp.sweep):
        budget["trials"] = grid_size(exp.sweep)
    return budget


def _setup(study, exp: Experiment, cell: StudyCell, budget: dict) -> None:
    """Record on the study what the report needs: budget, metric, base run, repeat, sampler
    and its seed; a study whose trials come from more than one sampler is marked mixed (its
    trials are then no i.i.d. draws, whatever the sampler is now)."""
    sweep = exp.sweep
    if not study.trials:
        for params in sweep["enqueue"]:
            study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
    name = sweep["sampler"]["name"]
    before = study.user_attrs.get("sampler")
    if before is not None and before != name:
        study.set_user_attr("mixed_samplers", True)
    for key, value in (("budget", budget), ("metric", cell.metric), ("base_run", cell.base.id),
                       ("repeat", cell.repeat), ("sampler", name),
                       ("sampler_seed", repeat_seed(exp, cell))):
        study.set_user_attr(key, value)


def run_sweep(exp: Experiment, results: Path, console: Console, trials: int | None = None,
              storage: str | None = None, workers: int = 1, argv: list[str] | None = None,
              heartbeat: int = HEARTBEAT_S, hours: float | None = None, repeat: int = 1) -> int:
    """Run (or continue) every study of the experiment to its budget: `repeat` independent
    studies per cell (bench/sweep/cells.py), each to `trials` and/or `hours` (default: the
    file's sweep.budget).

    With `workers` > 1 that many processes re-run this command (`argv`, the command line) as
    workers (bench/run/workers.py); in a worker this is its loop over the studies.

    Exit code: 0 every study reached its budget (or exhausted its grid, or other workers are
    running its last trials), 1 a study is below its budget (it gave up after `trials` failures
    in a row), 130 interrupted.
    """
    import optuna

    sweep = require_sweep(exp)
    for flag, value, what in (("--trials", trials, "a positive number of trials per study"),
                              ("--hours", hours, "a positive number of training hours per "
                                                 "study"),
                              ("--repeat", repeat, "a positive number of studies per cell")):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{flag} {value}: expected {what}")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    if heartbeat < 1:
        raise ConfigError(f"--heartbeat {heartbeat}: expected at least 1 second")
    repeat = repeat or 1
    cells = with_repeats(study_cells(exp), range(repeat))
    if not cells:
        console.print(f"[yellow]{exp.name}: no runs selected, nothing to sweep")
        return 0
    quiet_optuna()
    url = storage_url(exp, results, storage)
    budget = sweep_budget(exp, trials, hours)
    budgets = {cell.name: budget for cell in cells}
    slot = worker_slot()
    if slot:  # the parent set the studies up
        worker, count = slot
        return sweep_worker(exp, results, url, budgets, worker, console, count, heartbeat,
                            repeat)
    root = experiment_dir(results, exp.name)
    root.mkdir(parents=True, exist_ok=True)
    if url and url.startswith("sqlite") and workers > 1:
        console.print("[yellow]SQLite and parallel workers lock each other out; prefer the "
                      "default journal file or postgresql://")
    handle = open_storage(exp, results, url)
    write_atomic(root / RECORD, json.dumps({"storage": url}, indent=2))
    if sweep["sampler"]["name"] == "grid" and budget.get("trials") == grid_size(sweep):
        console.print(f"the grid has {grid_size(sweep)} points: at most {grid_size(sweep)} "
                      f"trials per study")
    studies = "study" if len(cells) == 1 else "studies"
    repeats = f", {repeat} repeats per cell" if repeat > 1 else ""
    console.print(f"[bold]{exp.name}[/]: {len(cells)} {studies} x {budget_text(budget)} "
                  f"({sweep['sampler']['name']} sampler, {sweep['pruner']['name']} pruner"
                  f"{repeats}), objective {objective_text(cells)}; storage "
                  f"{describe_storage(exp, results, url)}")
    for cell in cells:
        study = optuna.create_study(study_name=cell.name, storage=handle, load_if_exists=True,
                                    direction=cell.direction)
        if study.direction.name.lower() != cell.direction:
            raise ConfigError(f"study {cell.name} exists with direction "
                              f"{study.direction.name.lower()}, the sweep says {cell.direction}")
        _setup(study, exp, cell, budget)
        reap_dead_trials(study, root, console)
        c = trial_counts(study)
        console.print(f"  {cell.short}: {done_text(study, budget, root)} "
                      f"({c['complete']} complete, {c['pruned']} pruned), {c['failed']} failed")
    preflight([cell.base for cell in cells if cell.repeat == 0])
    if workers == 1:
        code = sweep_worker(exp, results, url, budgets, 0, console, heartbeat=heartbeat,
                            repeats=repeat)
    else:
        expect = {c.name: _progress_trials(optuna.load_study(study_name=c.name, storage=handle),
                                           budget, root, workers) for c in cells}
        progress = sweep_progress(console, exp.name, cells, handle, expect, root, workers)
        code = _run_workers(sys.argv[1:] if argv is None else argv, workers, console, progress,
                            root / "workers")
    if code == 130:
        return code
    for part in summary(exp, cells, handle, results):
        console.print(part, highlight=False, soft_wrap=isinstance(part, str))
    reasons = [_finished(optuna.load_study(study_name=c.name, storage=handle), budgets[c.name],
                         sweep, root) for c in cells]
    elsewhere = sum(r == RUNNING_ELSEWHERE for r in reasons)
    if elsewhere:
        console.print(f"{elsewhere} of the studies are finishing their last trials in other "
                      f"workers")
    if None in reasons:
        console.print(f"[yellow]{reasons.count(None)} of the studies are below their budget: run "
                      f"the same command to continue")
    return 1 if code or None in reasons else 0


def _run_workers(argv: list[str], workers: int, console: Console, progress, logs: Path) -> int:
    """`progress`: the parent's display (bench/run/progress.py); `logs`: the workers' output."""
    # as `run --jobs`: the cores shared out, so N workers do not each start all of them
    threads = max(1, (os.cpu_count() or 1) // workers)
    started = start_workers(argv, workers, ("--workers",), threads, log_dir=logs)
    console.print(f"started {workers} workers: pids {', '.join(str(p.pid) for p in started)}; "
                  f"their full output in {logs}/", soft_wrap=True)
    with progress:
        codes = wait_for_workers(started, progress)
    if codes is None or any(code == 130 for code in codes):
        return 130
    died = [code for code in codes if code < 0]  # killed by a signal: SIGKILL, the OOM killer
    if died:
        # the others failed and re-ran its trial; the budget check after this says the rest
        console.print(f"[yellow]{len(died)} worker(s) died (signal {-died[0]})")
    return 0 if all(code <= 0 for code in codes) else 1
