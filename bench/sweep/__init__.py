"""Optuna sweeps: one study per strategy (and dataset), every trial an ordinary run in the store.

An experiment's `sweep:` section names a search space over dotted config keys, the budget
(trials per study), the sampler and the pruner (docs/sweeps.md). Each cell of the matrix without
its seed axis (a strategy, times a dataset when there are several) gets its own study named
`<experiment>/<fusion>/<dataset>`, so every strategy is tuned with the same budget. A trial is
the cell's base run (the matrix's first seed) with the trial's parameters set: its id is the hash
of that config, it trains through bench/run/runner.py like any run, lands in results/<experiment>/,
and the objective is its best validation value of the task's monitor metric (never a test
metric). A trial whose parameters repeat a finished run reuses that run.

Budget and faults: the budget counts complete and pruned trials across all workers and
invocations, so re-running the same command continues every study to its total. A trial whose
worker died (SIGKILL, OOM killer, power) stays RUNNING in the storage; the next sweep marks it
failed and queues its parameters again (the re-queued trial resumes the same run from its
checkpoint). An exception, a NaN loss or an out-of-memory error fails that trial only.

The `sweep:` section itself (its parsing and validation, the parameter specs, grid sizes and
applying a trial's parameters to a config) is in bench/config/sweep.py, which the config
loader imports. Nothing here imports torch or optuna at module import.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.config import ConfigError, Experiment, Run, run_id
from bench.data import DATASETS
from bench.store import RunDir, experiment_dir, write_atomic
from bench.config.sweep import grid_size, grid_values, with_params
from bench.tasks import TASKS

JOURNAL = "sweep.journal"  # default storage, under results/<experiment>/
RECORD = "sweep.json"  # the storage URL the last sweep used, for report and --best-params
RUNNING_ELSEWHERE = "the last trials are running in other workers"
# how long a RUNNING trial may go without saying which worker runs it (it does so at once)
UNCLAIMED_GRACE_S = 120


# --- studies: one per strategy x dataset ------------------------------------------------------
@dataclass
class StudyCell:
    """One study: a cell of the matrix without its seed axis."""
    name: str  # <experiment>/<fusion>/<dataset>[/<axis>=<value>...]
    base: Run  # the run every trial starts from: the matrix's first seed
    runs: list[Run]  # the cell's matrix runs (all seeds)
    metric: str
    direction: str

    @property
    def short(self) -> str:
        return self.name.split("/", 1)[1]


def _first_seed(exp: Experiment) -> int:
    seeds = exp.matrix.get("seed")
    return seeds[0] if seeds else exp.base.get("seed", 0)


def study_cells(exp: Experiment) -> list[StudyCell]:
    """The studies of an experiment, in matrix order (--only filters them like runs)."""
    cells: dict[str, StudyCell] = {}
    keys: dict[str, tuple] = {}
    seed = _first_seed(exp)
    for run in exp.runs:
        fusion, dataset = run.config["model"]["fusion"], run.config["data"]["name"]
        extra = []
        for axis, value in run.axes.items():
            if axis in ("seed", "model.fusion", "data.name"):
                continue
            if isinstance(value, dict):
                if "data.name" in value:
                    continue  # a dataset bundle: the dataset already names it
                value = exp.matrix[axis].index(value) if axis in exp.matrix else value
            extra.append(f"{axis}={value}")
        name = "/".join([exp.name, fusion, dataset, *extra])
        key = tuple((a, json.dumps(v, sort_keys=True)) for a, v in run.axes.items() if a != "seed")
        if name in cells:
            if keys[name] != key:
                raise ConfigError(f"matrix: two cells would share the study {name!r} (bundle "
                                  f"values with the same data.name); set what tells them apart "
                                  f"with a dotted axis instead")
            cells[name].runs.append(run)
            continue
        task = TASKS[DATASETS[dataset].task]
        base_cfg = with_params(run.config, {}, seed=seed)
        base = Run(run_id(base_cfg), base_cfg, dict(run.axes, seed=seed))
        sweep = exp.sweep or {}
        cells[name] = StudyCell(name, base, [run], sweep.get("metric") or task.monitor,
                                sweep.get("direction")
                                or ("maximize" if task.mode == "max" else "minimize"))
        keys[name] = key
    return list(cells.values())


# --- storage ----------------------------------------------------------------------------------
def _is_journal(url: str) -> bool:
    return "://" not in url


def storage_url(exp: Experiment, results: Path, given: str | None = None) -> str | None:
    """--storage, else the sweep section's, else the last sweep's; None means the journal file."""
    if given:
        return str(Path(given).resolve()) if _is_journal(given) else given
    if exp.sweep and exp.sweep.get("storage"):
        return exp.sweep["storage"]
    try:
        return json.loads((experiment_dir(results, exp.name) / RECORD).read_text()).get("storage")
    except (OSError, ValueError):
        return None


def _journal_path(exp: Experiment, results: Path, url: str | None) -> Path | None:
    if url is None:
        return experiment_dir(results, exp.name) / JOURNAL
    return Path(url) if _is_journal(url) else None


def describe_storage(exp: Experiment, results: Path, url: str | None) -> str:
    journal = _journal_path(exp, results, url)
    return str(journal) if journal is not None else _masked(url)


def _masked(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def open_storage(exp: Experiment, results: Path, url: str | None, workers: bool = False):
    """Optuna storage: a journal file (several local processes) or an RDB URL (several machines).

    With `workers`, RDB storages get heartbeats: a trial whose machine died is failed after the
    grace period and its parameters re-queued (a journal has no heartbeat; see reap_dead_trials).
    """
    from optuna import storages
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    journal = _journal_path(exp, results, url)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    options = {"engine_kwargs": {"pool_pre_ping": True}} if not url.startswith("sqlite") else {}
    if workers:
        options.update(heartbeat_interval=60, grace_period=300)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
            options["heartbeat_stale_trial_callback"] = \
                storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        else:
            options["failed_trial_callback"] = storages.RetryFailedTrialCallback(max_retry=3)
    try:
        return RDBStorage(url, **options)
    except ImportError as err:
        raise ConfigError(f"--storage {_masked(url)}: the database driver is missing ({err}); "
                          f"e.g. pip install psycopg2-binary for postgresql://") from None
    except Exception as err:  # noqa: BLE001 - sqlalchemy's errors: bad URL, refused, auth
        raise ConfigError(f"--storage {_masked(url)}: cannot open it: "
                          f"{type(err).__name__}: {str(err).splitlines()[0]}") from None


def _quiet_optuna() -> None:
    import warnings

    import optuna

    # our own per-trial lines replace Optuna's (which print a traceback per failed trial)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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


# --- dead workers -----------------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a local process from /proc (Linux); None elsewhere or if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _this_worker() -> dict:
    stat = _proc_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": stat[1] if stat else None}


def _worker_dead(worker: dict | None, started: datetime | None) -> bool:
    if not worker:  # killed between creating the trial and claiming it (milliseconds)
        age = (datetime.now() - started).total_seconds() if started is not None else 0.0
        return age > UNCLAIMED_GRACE_S
    if worker.get("host") != socket.gethostname():
        return False  # another machine's worker: its RDB heartbeat speaks for it
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    stat = _proc_stat(int(worker["pid"]))
    if stat is not None:
        state, start = stat
        if state == "Z" or (worker.get("start") and start != worker["start"]):
            return True  # a zombie, or the pid was reused by another process
    return False


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
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        reaped += 1
        rid = trial.user_attrs.get("run_id")
        if rid:
            rd = RunDir(root / rid)
            if rd.status().get("state") == "running" and not rd.locked_by_other():
                rd.update_status(state="interrupted", error="killed: its sweep worker died")
        console.print(f"  [yellow]{study.study_name.split('/', 1)[1]} #{trial.number}: its "
                      f"worker died; marked failed, parameters queued again")
    return reaped


# --- trials -----------------------------------------------------------------------------------
class TrialFailed(Exception):
    """The trial's run failed (the run's status says why); the sweep goes on."""


class OverBudget(Exception):
    """Another worker took the study's last trial while this one was being created."""


def _counts(study) -> dict:
    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "killed": 0}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("discarded"):
            continue
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed",
                 "RUNNING": "running", "WAITING": "waiting"}[t.state.name]
        counts[state] += 1
        if state == "failed" and (t.user_attrs.get("killed") or t.user_attrs.get("interrupted")):
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


def _fmt_params(params: dict) -> str:
    shorts = [k.rsplit(".", 1)[-1] for k in params]
    names = shorts if len(set(shorts)) == len(shorts) else list(params)
    return " ".join(f"{n}={_fmt_value(v)}" for n, v in zip(names, params.values()))


def _fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class Objective:
    """Trains one trial as a run of the cell and returns its best validation value."""
    cell: StudyCell
    space: dict
    budget: int
    root: Path
    console: Console
    prefix: str = ""
    last: tuple[int, str] | None = None  # (trial number, outcome) of the latest trial

    def __call__(self, trial) -> float:
        import optuna

        trial.set_user_attr("worker", _this_worker())
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
            self.console.print(f"  [red]{label} failed: {err}")
            raise TrialFailed(str(err)) from None
        run = Run(run_id(cfg), cfg, dict(self.cell.base.axes, trial=trial.number))
        trial.set_user_attr("run_id", run.id)
        run_dir = RunDir(self.root / run.id)
        self.console.print(f"{label}  {_fmt_params(params)}  -> {run.id}")
        t0 = time.time()
        outcome = self._train(trial, run, run_dir, label)
        if outcome == "pruned":
            self.last = (trial.number, "pruned")
            epoch = run_dir.status().get("epoch")
            self.console.print(f"  [yellow]{label} pruned[/]"
                               + (f" at epoch {epoch + 1}" if epoch is not None else ""))
            raise optuna.TrialPruned()
        if outcome != "done":
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

        ahead = trial.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        return sum(t.number < trial.number for t in ahead) >= self.budget

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

        from bench.run.runner import RunInterrupted, execute

        for _ in range(3):
            if run_dir.status().get("state") == "done" and run_dir.metrics():
                self.console.print(f"  {label}: same config as a finished run, reused")
                return "done"
            pruning = PyTorchLightningPruningCallback(trial, monitor=self.cell.metric)
            try:
                # a NaN loss fails the run through the runner's DivergenceGuard
                outcome = execute(run, run_dir, self.console, label, extra_callbacks=[pruning])
            except RunInterrupted:
                # re-queue, so the next sweep resumes this run from the checkpoint just saved
                trial.set_user_attr("interrupted", True)
                trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                raise KeyboardInterrupt() from None
            if outcome == "done":
                try:
                    pruning.check_pruned()  # under DDP the callback only records the decision
                except optuna.TrialPruned:
                    run_dir.update_status(state="pruned")
                    return "pruned"
            if outcome != "skipped":
                return outcome
            # another worker trains this very config: wait for it, then use its result
            while run_dir.locked_by_other():
                time.sleep(2.0)
        return "failed"


def _finished(study, cell: StudyCell, budget: int, sweep: dict) -> str | None:
    """Why this worker has nothing left to start in the study, or None."""
    from optuna.trial import TrialState

    counts = _counts(study)
    if counts["complete"] + counts["pruned"] >= budget:
        return "budget reached"
    if counts["complete"] + counts["pruned"] + counts["running"] >= budget:
        return RUNNING_ELSEWHERE
    if sweep["sampler"]["name"] == "grid" and not counts["waiting"]:
        started = {t.system_attrs.get("grid_id") for t in study.get_trials(deepcopy=False)
                   if "grid_id" in t.system_attrs and t.state != TrialState.WAITING}
        if len(started) >= grid_size(sweep):
            return "grid exhausted"
    return None


def _load_studies(exp: Experiment, cells: list[StudyCell], storage, worker: int):
    import optuna

    studies = {}
    for cell in cells:
        existing = len(optuna.load_study(study_name=cell.name, storage=storage).trials)
        seed = exp.sweep["sampler"].get("seed", cell.base.config["seed"])
        studies[cell.name] = optuna.load_study(
            study_name=cell.name, storage=storage,
            sampler=_sampler(exp.sweep["sampler"], _sampler_seed(seed, worker, existing),
                             exp.sweep["params"]),
            pruner=_pruner(exp.sweep["pruner"]))
    return studies


def sweep_worker(exp: Experiment, results: Path, url: str | None, budgets: dict, worker: int,
                 console: Console, workers: int = 1) -> int:
    """One worker's loop: each study in turn, until its budget is reached. Exit code."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    _quiet_optuna()
    storage = open_storage(exp, results, url, workers=True)
    cells = study_cells(exp)
    studies = _load_studies(exp, cells, storage, worker)
    root = experiment_dir(results, exp.name)
    prefix = f"[w{worker}] " if workers > 1 else ""
    short = []
    for cell in cells:
        study, budget = studies[cell.name], budgets[cell.name]
        objective = Objective(cell, exp.sweep["params"], budget, root, console, prefix)
        failed_in_a_row = 0
        while _finished(study, cell, budget, exp.sweep) is None:
            objective.last = None
            try:
                # one trial per call: the budget is checked against every worker before each
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                               callbacks=[MaxTrialsCallback(
                                   budget, states=(TrialState.COMPLETE, TrialState.PRUNED))])
            except KeyboardInterrupt:
                console.print(f"[yellow]{prefix}interrupted: the trial's run is saved and its "
                              f"parameters queued; run the same command to continue")
                return 130
            outcome = objective.last[1] if objective.last else None
            failed_in_a_row = failed_in_a_row + 1 if outcome == "failed" else \
                (0 if outcome in ("complete", "pruned") else failed_in_a_row)
            if failed_in_a_row >= budget:
                console.print(f"[red]{prefix}{cell.short}: {failed_in_a_row} trials failed in a "
                              f"row; giving up on this study (the runs' status.json and "
                              f"error.log say why)")
                short.append(cell.name)
                break
    return 1 if short else 0


def _worker_process(exp: Experiment, results: Path, url: str | None, budgets: dict, worker: int,
                    workers: int) -> None:
    import sys

    from bench.run.runner import install_stop_signals

    install_stop_signals()
    sys.exit(sweep_worker(exp, results, url, budgets, worker, Console(), workers))


def _objective_text(cells: list[StudyCell]) -> str:
    return ", ".join(sorted({f"{c.metric} ({c.direction})" for c in cells}))


def _require_sweep(exp: Experiment) -> dict:
    if not exp.sweep:
        where = exp.path or exp.name
        raise ConfigError(f"{where}: no `sweep:` section; see docs/sweeps.md "
                          f"(experiments/sweep_quick.yaml is an example)")
    return exp.sweep


def run_sweep(exp: Experiment, results: Path, console: Console, trials: int | None = None,
              storage: str | None = None, workers: int = 1) -> int:
    """Run (or continue) every study of the experiment to its budget.

    Exit code: 0 every study reached its budget (or exhausted its grid, or other workers are
    running its last trials), 1 a study is below its budget (it gave up after `trials` failures
    in a row), 130 interrupted.
    """
    import optuna

    sweep = _require_sweep(exp)
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: expected a positive number of trials per study")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    cells = study_cells(exp)
    if not cells:
        console.print(f"[yellow]{exp.name}: no runs selected, nothing to sweep")
        return 0
    _quiet_optuna()
    url = storage_url(exp, results, storage)
    root = experiment_dir(results, exp.name)
    root.mkdir(parents=True, exist_ok=True)
    if url and url.startswith("sqlite") and workers > 1:
        console.print("[yellow]SQLite and parallel workers lock each other out; prefer the "
                      "default journal file or postgresql://")
    handle = open_storage(exp, results, url)
    write_atomic(root / RECORD, json.dumps({"storage": url}, indent=2))
    budget = trials or sweep["trials"]
    if sweep["sampler"]["name"] == "grid" and budget > grid_size(sweep):
        console.print(f"the grid has {grid_size(sweep)} points: {grid_size(sweep)} trials per "
                      f"study")
        budget = grid_size(sweep)
    budgets = {cell.name: budget for cell in cells}
    studies = "study" if len(cells) == 1 else "studies"
    console.print(f"[bold]{exp.name}[/]: {len(cells)} {studies} x {budget} trials "
                  f"({sweep['sampler']['name']} sampler, {sweep['pruner']['name']} pruner), "
                  f"objective {_objective_text(cells)}; storage "
                  f"{describe_storage(exp, results, url)}")
    for cell in cells:
        study = optuna.create_study(study_name=cell.name, storage=handle, load_if_exists=True,
                                    direction=cell.direction)
        if study.direction.name.lower() != cell.direction:
            raise ConfigError(f"study {cell.name} exists with direction "
                              f"{study.direction.name.lower()}, the sweep says {cell.direction}")
        if not study.trials:
            for params in sweep["enqueue"]:
                study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
        study.set_user_attr("budget", budget)
        study.set_user_attr("metric", cell.metric)
        study.set_user_attr("base_run", cell.base.id)
        reap_dead_trials(study, root, console)
        c = _counts(study)
        console.print(f"  {cell.short}: {c['complete'] + c['pruned']}/{budget} done "
                      f"({c['complete']} complete, {c['pruned']} pruned), {c['failed']} failed")
    from bench.run.runner import preflight

    preflight([cell.base for cell in cells])
    if workers == 1:
        code = sweep_worker(exp, results, url, budgets, 0, console)
    else:
        code = _spawn_workers(exp, results, url, budgets, workers, console)
    if code == 130:
        return code
    for part in _summary(exp, cells, handle, results):
        console.print(part, highlight=False, soft_wrap=isinstance(part, str))
    reasons = [_finished(optuna.load_study(study_name=c.name, storage=handle), c,
                         budgets[c.name], sweep) for c in cells]
    elsewhere = sum(r == RUNNING_ELSEWHERE for r in reasons)
    if elsewhere:
        console.print(f"{elsewhere} of the studies are finishing their last trials in other "
                      f"workers")
    if None in reasons:
        console.print(f"[yellow]{reasons.count(None)} of the studies are below their budget: run "
                      f"the same command to continue")
    return 1 if code or None in reasons else 0


def _spawn_workers(exp, results, url, budgets, workers: int, console: Console) -> int:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no forked torch/CUDA state
    procs = [ctx.Process(target=_worker_process, args=(exp, Path(results), url, budgets, i,
                                                       workers), name=f"sweep-worker-{i}")
             for i in range(workers)]
    for proc in procs:
        proc.start()
    console.print(f"started {workers} workers: pids {', '.join(str(p.pid) for p in procs)}")
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:  # pass it on, as run --jobs does (bench/run/runner.py, run_workers)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join()
        return 130
    codes = [proc.exitcode for proc in procs]
    if any(code == 130 for code in codes):
        return 130
    return 0 if all(code == 0 for code in codes) else 1


# --- report and best parameters ---------------------------------------------------------------
def _open_existing(exp: Experiment, results: Path):
    """The storage of the experiment's last sweep, or None when there is none yet."""
    url = storage_url(exp, results)
    journal = _journal_path(exp, results, url)
    if journal is not None and not journal.exists():
        return None, url
    _quiet_optuna()
    return open_storage(exp, results, url), url


def _load(storage, name: str):
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def _summary(exp: Experiment, cells: list[StudyCell], storage, results: Path) -> list:
    """The sweep table (trials of the budget, counts, best value) and the best parameters."""
    url = storage_url(exp, results)
    table = Table(title=f"{exp.name}: sweep ({describe_storage(exp, results, url)})")
    table.add_column("study")
    for col in ("trials", "complete", "pruned", "failed", "best"):
        table.add_column(col, justify="right")
    lines = []
    for cell in cells:
        study = _load(storage, cell.name)
        if study is None:
            table.add_row(cell.short, "-", "", "", "", "not started")
            continue
        c = _counts(study)
        budget = study.user_attrs.get("budget", exp.sweep["trials"])
        best = _best(study)
        failed = str(c["failed"])
        if c["killed"]:
            failed += f" ({c['killed']} interrupted, re-queued)"
        running = f" +{c['running']} running" if c["running"] else ""
        table.add_row(cell.short, f"{c['complete'] + c['pruned']}/{budget}{running}",
                      str(c["complete"]), str(c["pruned"]), failed,
                      f"{best.value:.4f}" if best else "-")
        if best:
            lines.append(f"  {cell.short} #{best.number}: {_fmt_params(best.params)} "
                         f"(run {best.user_attrs.get('run_id', '?')})")
        else:
            lines.append(f"  {cell.short}: no complete trial yet")
    return [table, "best parameters:", *lines]


def print_sweep_report(exp: Experiment, results: Path, console: Console) -> int:
    """Per study: trials done of the budget, complete/pruned/failed counts, best value/params."""
    _require_sweep(exp)
    cells = study_cells(exp)
    storage, url = _open_existing(exp, results)
    if storage is None:
        console.print(f"[yellow]no sweep yet for {exp.name}: run `lesa-bench sweep "
                      f"{exp.path or exp.name}` first")
        return 0
    for part in _summary(exp, cells, storage, results):
        console.print(part, highlight=False, soft_wrap=isinstance(part, str))
    if cells:
        console.print(f"objective: the best over epochs of {_objective_text(cells)}; "
                      f"live plots: optuna-dashboard {describe_storage(exp, results, url)}",
                      highlight=False, soft_wrap=True)
    return 0


def best_params(exp: Experiment, results: Path) -> dict[str, dict | None]:
    """{study name: the best trial's parameters, or None without a complete trial}."""
    storage, _ = _open_existing(exp, results)
    found = {}
    for cell in study_cells(exp):
        study = _load(storage, cell.name) if storage is not None else None
        best = _best(study) if study is not None else None
        found[cell.name] = dict(best.params) if best else None
    return found


def apply_best_params(exp: Experiment, results: Path, console: Console) -> Experiment:
    """The experiment with each run's config set to its study's best parameters.

    Every seed of a cell gets the same parameters; the sweep's own seed thus reuses the best
    trial's run. A cell without a complete trial keeps the file's values (and says so).
    """
    _require_sweep(exp)
    found = best_params(exp, results)
    if not any(found.values()):
        raise ConfigError(f"no finished sweep trials for {exp.name} in "
                          f"{experiment_dir(results, exp.name)}: run `lesa-bench sweep "
                          f"{exp.path or exp.name}` first")
    by_run = {run.id: cell for cell in study_cells(exp) for run in cell.runs}
    runs = []
    for run in exp.runs:
        params = found.get(by_run[run.id].name)
        if params is None:
            runs.append(run)
            continue
        cfg = with_params(run.config, params)
        runs.append(Run(run_id(cfg), cfg, run.axes))
    for cell in study_cells(exp):
        params = found[cell.name]
        text = _fmt_params(params) if params else "[yellow]no complete trial: the file's values"
        console.print(f"  best {cell.short}: {text}")
    return replace(exp, runs=runs)


def trial_runs(exp: Experiment, results: Path) -> list[Run]:
    """The runs the sweep's trials trained (for `status`), from their stored configs."""
    root = experiment_dir(results, exp.name)
    storage, _ = _open_existing(exp, results)
    runs, seen = [], set()
    if storage is None:
        return runs
    for cell in study_cells(exp):
        study = _load(storage, cell.name)
        for trial in study.get_trials(deepcopy=False) if study is not None else []:
            rid = trial.user_attrs.get("run_id")
            cfg = RunDir(root / rid).config() if rid else None
            if cfg is not None and rid not in seen:
                seen.add(rid)
                runs.append(Run(rid, cfg, dict(cell.base.axes, trial=trial.number)))
    return runs
