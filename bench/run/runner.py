"""The runner: trains the runs of an experiment that are not done yet, one after another.

Each run owns its folder in the store (bench/store.py). A run that is done is skipped; one that
is unfinished resumes from its last checkpoint (bench/resume/point.py); a run locked by a live
process elsewhere is left to it. A failing run is marked failed with its reason and the matrix
goes on; Ctrl-C (or SIGTERM) saves a checkpoint, marks the run interrupted and stops
(bench/resume/stops.py). One run's training is bench/train/trainer.py.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bench.config import ConfigError, Experiment, Run
from bench.config.loggers import check_tracking_stores
from bench.resume.stops import RunInterrupted
from bench.run.progress import MatrixProgress, past_durations, runs_snapshot, summary
from bench.run.workers import start_workers, wait_for_workers, worker_slot
from bench.store import RunDir, RunState, experiment_dir, now
from bench.train import Diverged
from bench.train.ddp import ddp_run_id, is_ddp_child
from bench.train.trainer import train_run

SKIPPED = "skipped"  # execute's outcome for a run another process trains (no run state)


def _is_pruned(err: Exception) -> bool:
    optuna = sys.modules.get("optuna")  # only a sweep imports it; runs stay Optuna-free
    return optuna is not None and isinstance(err, optuna.TrialPruned)


def _describe(run: Run) -> str:
    c = run.config
    return f"{c['model']['fusion']:<8} {c['data']['name']:<12} seed {c['seed']}"


def execute(run: Run, run_dir: RunDir, console: Console, label: str = "",
            extra_callbacks=(), announce: bool = False) -> str:
    """Run one cell: lock, mark running, train/resume, record done/failed/interrupted.
    `announce`: print "LABEL starting/resuming ID" once the run is ours (the runner's line)."""
    run_dir.create(run.config)
    if not run_dir.try_lock():
        console.print(f"  [yellow]{label} {run.id}: running in another process, left to it")
        return SKIPPED
    previous = run_dir.status()
    if previous.get("state") == RunState.DONE:  # another process finished it since we looked
        run_dir.unlock()
        return SKIPPED
    start = time.time()
    resuming = run_dir.last_checkpoint.exists()
    try:  # from here the lock is released whatever happens (a stop during the line below too)
        run_dir.update_status(state=RunState.RUNNING, error=None, host=socket.gethostname(),
                              pid=os.getpid(), started=now(),
                              attempts=previous.get("attempts", 0) + 1)
        if announce:  # once the run is ours: a --jobs worker finding it locked or done is quiet
            console.print(f"{escape(label)}  {'resuming' if resuming else 'starting'} {run.id}")
        metrics = train_run(run, run_dir, label, extra_callbacks)
        metrics["elapsed_s"] = time.time() - start + previous.get("elapsed_s", 0.0)
        run_dir.write_metrics(metrics)
        run_dir.update_status(state=RunState.DONE, finished=now(), elapsed_s=metrics["elapsed_s"])
        return RunState.DONE
    except (RunInterrupted, KeyboardInterrupt) as stop:
        run_dir.update_status(state=RunState.INTERRUPTED, error="interrupted (Ctrl-C or SIGTERM)",
                              elapsed_s=time.time() - start + previous.get("elapsed_s", 0.0))
        interrupted = RunInterrupted()
        interrupted.saved = getattr(stop, "saved", False)
        raise interrupted from None
    except Exception as err:  # noqa: BLE001 - one run's failure must not stop the matrix
        if _is_pruned(err):  # a sweep's pruner stopped this trial early: not a failure
            run_dir.update_status(state=RunState.PRUNED, error=None, finished=now(),
                                  elapsed_s=time.time() - start + previous.get("elapsed_s", 0.0))
            return RunState.PRUNED
        run_dir.write_error_log(traceback.format_exc())  # atomic; False on a full disk
        kind, reason = _failure(err)
        run_dir.update_status(state=RunState.FAILED, error=reason, failure=kind, finished=now(),
                              elapsed_s=time.time() - start + previous.get("elapsed_s", 0.0))
        console.print(f"  [red]{escape(label)} failed:[/] {escape(reason)}", soft_wrap=True)
        return RunState.FAILED
    finally:
        run_dir.unlock()


# how torch words a failed allocation outside OutOfMemoryError (the CPU allocator's
# RuntimeError, cuBLAS/cuDNN failing to get their workspace)
OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory",
                 "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def _failure(err: BaseException) -> tuple[str, str]:
    """(kind, reason) of a failed run: kind is diverged, out_of_memory or error."""
    name = type(err).__name__
    if isinstance(err, Diverged):
        return "diverged", f"diverged: {err}"
    first = (str(err).strip().splitlines() or [""])[0]
    torch = sys.modules.get("torch")  # a run that failed before torch loaded had no OOM
    if isinstance(err, MemoryError) or (torch is not None and isinstance(
            err, torch.OutOfMemoryError)) or any(text in first for text in OUT_OF_MEMORY):
        return "out_of_memory", (f"out of memory ({name}: {first}); lower data.batch_size (with "
                                 f"trainer.accumulate_grad_batches to keep the effective batch) "
                                 f"or data.image_size, or use trainer.precision: 16-mixed (GPU) "
                                 f"/ bf16-mixed")
    return "error", f"{name}: {err}"


def preflight(runs: list[Run]) -> None:
    """Before anything trains: check every distinct dataset (a bad root fails now, not later),
    then the models whose input shape only the data gives (COCO at native resolution; the CLI
    checked the others), and warn where a detection config's training memory exceeds what the
    machine has now (bench/train/preflight.py). Of --jobs workers, the first warns for all."""
    import warnings

    from bench.data import build_datamodule
    from bench.train.preflight import FitWarning, check_models, input_size, memory_check

    modules, by_data = {}, {}
    for run in runs:
        key = repr(sorted(run.config["data"].items()))
        if key not in by_data:
            by_data[key] = build_datamodule(run.config["data"], run.config["seed"])
            by_data[key].check()
        modules[run.id] = by_data[key]
    # the CLI checked the models whose input the config gives (`_check_models`); these, the data
    check_models([r for r in runs if input_size(r.config) is None], datamodules=modules)
    slot = worker_slot()
    if slot is None or slot[0] == 0:
        for message in memory_check(runs, modules, workers=slot[1] if slot else 1):
            warnings.warn(message, FitWarning, stacklevel=2)


def check_writable(root: Path) -> None:
    """Fail before training, not at the first checkpoint, when results cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"results directory {str(root)!r} is not writable ({err.strerror}); "
                          f"fix its permissions or pass --results DIR") from None


def select(runs: list[Run], root: Path, retry_failed: bool = False) -> tuple[list[Run], dict]:
    """The runs to train: everything not done and not failed, or (retry_failed) only failed."""
    todo, counts = [], {}
    for run in runs:
        state = RunDir(root / run.id).status().get("state", RunState.PENDING)
        counts[state] = counts.get(state, 0) + 1
        if (state == RunState.FAILED) if retry_failed else \
                state not in (RunState.DONE, RunState.FAILED):
            todo.append(run)
    return todo, counts


def run_experiment(exp: Experiment, runs: list[Run], results: Path, console: Console,
                   retry_failed: bool = False) -> int:
    """Train the runs not done yet. Exit code: 0 all done, 1 some failed, 130 interrupted."""
    if is_ddp_child():
        return run_ddp_rank(runs, results, exp)
    root = experiment_dir(results, exp.name)
    check_writable(root)
    todo, counts = select(runs, root, retry_failed)
    slot = worker_slot()  # a --jobs worker prints its runs' lines; the matrix's are the parent's
    known = ", ".join(f"{n} {state}" for state, n in counts.items())
    if not slot:
        console.print(f"[bold]{exp.name}[/]: {len(runs)} runs ({known}); {len(todo)} to run "
                      f"-> {escape(str(root))}")
    if counts.get(RunState.FAILED) and not retry_failed and not slot:
        console.print(f"  {counts[RunState.FAILED]} failed before: not retried "
                      f"(add --retry-failed)")
    if todo and not slot:  # the --jobs parent contacted the stores already
        check_tracking_stores([run.config for run in todo])
    if todo:
        preflight(todo)
    number = {run.id: i for i, run in enumerate(todo, 1)}  # before the rotation: one numbering
    if slot:  # across workers, no two "[1/28]"; worker k of n starts k/n of the way down the
        # list, so workers rarely collide
        k, n = slot
        todo = todo[k * len(todo) // n:] + todo[:k * len(todo) // n]
    outcomes = {}
    t0 = time.time()
    for run in todo:
        run_dir = RunDir(root / run.id)
        label = f"[{number[run.id]}/{len(todo)}] {_describe(run)}"
        t = time.time()
        try:
            outcome = execute(run, run_dir, console, label, announce=True)
        except RunInterrupted as stop:
            console.print(f"[yellow]{interrupted_line(run.id, run_dir, stop.saved)}")
            return 130
        outcomes[run.id] = outcome
        if outcome == RunState.DONE:
            headline = _headline(run, run_dir)
            console.print(f"  {escape(label)} [green]done[/] in {time.time() - t:.1f}s {headline}")
            if not slot:  # the matrix so far (with --jobs the parent shows it: progress.py)
                console.print(f"  {summary(runs_snapshot(runs, root), 1)}", style="dim")
    failed = [r for r, o in outcomes.items() if o == RunState.FAILED]
    done = sum(o == RunState.DONE for o in outcomes.values())
    if slot:  # the parent prints the matrix's summary, once
        return 1 if failed else 0
    console.print(f"finished {len(outcomes)} runs in {time.time() - t0:.0f}s: "
                  f"{done} done, {len(failed)} failed, "
                  f"{sum(o == SKIPPED for o in outcomes.values())} left to other processes")
    return failures(runs, root, failed, console)


def interrupted_line(run_id: str, run_dir: RunDir, saved: bool) -> str:
    """What a stopped run says: saved at the stop, or where its resume starts from (a second
    Ctrl-C stops without saving), or that it had no checkpoint yet."""
    again = "run the same command to resume it"
    if saved:
        return f"interrupted: {run_id} saved; {again}"
    if not run_dir.last_checkpoint.exists():  # stopped before its fit began
        return (f"interrupted: {run_id} before its first checkpoint; run the same command to "
                f"start it again")
    step = _checkpoint_step(run_dir.last_checkpoint)
    return (f"interrupted: {run_id} not saved at the stop: it resumes from its last checkpoint"
            f"{f' (step {step})' if step is not None else ''}; {again}")


def _checkpoint_step(path: Path) -> int | None:
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=False,
                              mmap=True)["global_step"])
    except Exception:  # noqa: BLE001 - only a detail of a message
        return None


def failures(runs: list[Run], root: Path, failed: list[str], console: Console) -> int:
    """The lines of the runs that failed in this command (`failed`, their ids) and the exit
    code: 1 while any run of the matrix is failed, else 0."""
    for run_id in failed:
        error = str(RunDir(root / run_id).status().get("error"))
        console.print(f"  [red]failed[/] {run_id}: {escape(error)}", soft_wrap=True)
    if failed:
        console.print(f"  (tracebacks in {escape(str(root))}/<run-id>/error.log; fix the cause, "
                      f"then re-run "
                      f"them with --retry-failed)", soft_wrap=True)
    still_failed = [r.id for r in runs
                    if RunDir(root / r.id).status().get("state") == RunState.FAILED]
    if still_failed and not failed:
        console.print(f"  {len(still_failed)} runs are failed from before (--retry-failed)")
    return 1 if still_failed else 0


def run_ddp_rank(runs: list[Run], results: Path, exp: Experiment) -> int:
    """A DDP rank > 0 (bench/train/ddp.py): train the run rank 0 named, quietly, then exit."""
    wanted = ddp_run_id()
    run = next((r for r in runs if r.id == wanted), None)
    if run is None:
        print(f"error: DDP rank {os.environ.get('LOCAL_RANK')}: run {wanted} is not in this "
              f"command's matrix", file=sys.stderr)
        return 1
    try:
        train_run(run, RunDir(experiment_dir(results, exp.name) / run.id))
    except RunInterrupted:
        return 130
    return 0


def run_workers(argv: list[str], jobs: int, exp: Experiment, runs: list[Run], results: Path,
                console: Console) -> int:
    """`run --jobs N`: N worker processes run the same command (bench/run/workers.py); the run
    locks share the matrix out between them. Each worker gets cores / N threads."""
    if is_ddp_child():  # a DDP rank re-ran this command: it trains one run, no workers
        return run_ddp_rank(runs, results, exp)
    root = experiment_dir(results, exp.name)
    check_writable(root)
    before = {r.id: RunDir(root / r.id).status() for r in runs}
    check_tracking_stores([r.config for r in runs
                           if before[r.id].get("state") != RunState.DONE])
    threads = max(1, (os.cpu_count() or 1) // jobs)
    logs = root / "workers"
    console.print(f"[bold]{exp.name}[/]: {jobs} workers x {threads} thread(s); their full "
                  f"output in {escape(str(logs))}/")
    t0 = time.time()
    workers = start_workers(argv, jobs, ("--jobs", "-j"), threads, log_dir=logs)
    past = past_durations(root, {r.id for r in runs})
    with MatrixProgress(console, exp.name, lambda: runs_snapshot(runs, root, past),
                        jobs) as progress:
        codes = wait_for_workers(workers, progress)
    if codes is None:
        return 130
    states: dict[str, int] = {}
    for run in runs:
        state = RunDir(root / run.id).status().get("state", RunState.PENDING)
        states[state] = states.get(state, 0) + 1
    console.print(f"all workers finished in {time.time() - t0:.0f}s: "
                  + ", ".join(f"{n} {s}" for s, n in states.items()))
    failed = [r.id for r in runs if _failed_since(RunDir(root / r.id).status(), before[r.id])]
    failures(runs, root, failed, console)
    if 130 in codes:
        return 130
    return 0 if states.get(RunState.DONE, 0) == len(runs) else 1


def _failed_since(status: dict, before: dict) -> bool:
    """Whether a run failed in this command (its attempts went up since `before`)."""
    return status.get("state") == RunState.FAILED and \
        status.get("attempts", 0) != before.get("attempts", 0)


def _headline(run: Run, run_dir: RunDir) -> str:
    """The run's headline test metrics (its task's), as one line."""
    from bench.data import DATASETS
    from bench.tasks import TASKS

    metrics = (run_dir.metrics() or {}).get("test", {})
    headline = TASKS[DATASETS[run.config["data"]["name"]].task].headline
    return " ".join(f"{k}={metrics[k]:.4f}" for k in headline if k in metrics)
