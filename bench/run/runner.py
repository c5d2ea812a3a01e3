"""The runner: trains the runs of an experiment that are not done yet, one after another.

Each run owns its folder in the store (bench/store.py). A run that is done is skipped; one that
is unfinished resumes from its last checkpoint; a run locked by a live process elsewhere is left
to it. A failing run is marked failed with its reason and the matrix goes on; Ctrl-C (or
SIGTERM) saves a checkpoint, marks the run interrupted and stops.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
import warnings
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bench.config import Experiment, Run
from bench.store import RunDir, experiment_dir, now

_DONE, _FAILED, _SKIPPED, _INTERRUPTED = "done", "failed", "skipped", "interrupted"
CHECKPOINT_EVERY_N_STEPS = 200  # trainer.checkpoint_every_n_steps when the config has none
# set by rank 0 for the other DDP ranks, which Lightning starts by re-running this command
_DDP_RUN, _DDP_RESUME = "LESA_BENCH_DDP_RUN", "LESA_BENCH_DDP_RESUME"
_PRUNED = "pruned"  # a sweep trial stopped early by Optuna's pruner (bench/sweep.py)


def _is_pruned(err: Exception) -> bool:
    optuna = sys.modules.get("optuna")  # only a sweep imports it; runs stay Optuna-free
    return optuna is not None and isinstance(err, optuna.TrialPruned)


class RunInterrupted(Exception):
    pass


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*number of training batches.*",
                    ".*LeafSpec.*", ".*treespec.*", ".*Checkpoint directory.*exists.*",
                    ".*Experiment logs directory.*exists.*", ".*TreeSpec.*",
                    # under DDP: train/loss and images/s are rank 0's; test metrics are synced
                    ".*sync_dist=True.*when logging on epoch level.*"):
        warnings.filterwarnings("ignore", message=pattern)


def build_trainer(run: Run, run_dir: RunDir, callbacks: list, label: str, monitor: str, mode: str):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from bench.run.callbacks import DivergenceGuard, LogLines, SaveOnInterrupt, StatusProgress
    from bench.run.checkpoints import AtomicCheckpointIO, PeriodicCheckpoint, RunState

    t = run.config["trainer"]
    interactive = sys.stdout.isatty() and not _is_ddp_child()
    every = t.get("checkpoint_every_n_steps", CHECKPOINT_EVERY_N_STEPS)
    callbacks = [
        ModelCheckpoint(dirpath=run_dir.checkpoints, filename="best", monitor=monitor, mode=mode,
                        save_top_k=1, save_last=True, auto_insert_metric_name=False,
                        enable_version_counter=False),  # last.ckpt is shared with PeriodicCheckpoint
        PeriodicCheckpoint(run_dir.last_checkpoint, every),
        RunState(run.id, run.config),
        SaveOnInterrupt(run_dir.last_checkpoint),
        StatusProgress(run_dir),
        DivergenceGuard(),
        RichProgressBar() if interactive else LogLines(label),
        *callbacks,
    ]
    return L.Trainer(
        default_root_dir=run_dir.path,
        logger=CSVLogger(run_dir.path, name="logs", version=""),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        # the datamodules' samplers are sharded by rank in bench/run/checkpoints.py, which can resume
        # mid-epoch; Lightning's DistributedSampler wrapper could not
        use_distributed_sampler=False,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        max_epochs=t["max_epochs"], accelerator=t["accelerator"], devices=t["devices"],
        strategy=t["strategy"], num_nodes=t["num_nodes"], precision=t["precision"],
        limit_train_batches=t["limit_train_batches"], limit_val_batches=t["limit_val_batches"],
        limit_test_batches=t["limit_test_batches"], gradient_clip_val=t["gradient_clip_val"],
        accumulate_grad_batches=t["accumulate_grad_batches"],
        check_val_every_n_epoch=t["check_val_every_n_epoch"],
        log_every_n_steps=t["log_every_n_steps"],
    )


def train_run(run: Run, run_dir: RunDir, label: str = "", extra_callbacks=()) -> dict:
    """Train (or resume) and test one run; write metrics.json. Returns the metrics.

    Raises RunInterrupted on Ctrl-C/SIGTERM (after Lightning saved a checkpoint).
    """
    import lightning as L
    import torch

    from bench.run.callbacks import CostsAndShares
    from bench.run.checkpoints import ResumableData
    from bench.data import build_datamodule, dataset_spec
    from bench.tasks import TASKS, build_task

    _quiet_lightning()
    cfg = run.config
    spec = TASKS[dataset_spec(cfg["data"]["name"]).task]
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(cfg["data"], cfg["seed"])
    datamodule.check()
    task = build_task(cfg, datamodule)
    costs = CostsAndShares()
    callbacks = [costs, ResumableData(datamodule), *extra_callbacks]
    trainer = build_trainer(run, run_dir, callbacks, label, spec.monitor, spec.mode)
    if _is_ddp_child():  # rank 0 chose the checkpoint (and set unreadable ones aside)
        resume = os.environ.get(_DDP_RESUME) or None
    else:
        resume = resume_point(run_dir, run, dict(task.hparams))
    # read before training: if it could fail, it fails before hours of work, not after
    env = environment(trainer.strategy.root_device.type)
    launched = _announce_ddp_run(run, resume) if trainer.world_size > 1 else {}
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
        if trainer.interrupted:
            raise RunInterrupted()
        best = trainer.checkpoint_callback.best_model_path
        tested = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    except SystemExit:  # Lightning's answer to KeyboardInterrupt, after on_exception hooks ran
        raise RunInterrupted() from None
    finally:
        if launched:
            _end_ddp_run(launched)
    test_metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    score = trainer.checkpoint_callback.best_model_score
    return {
        "test": test_metrics,
        "best_val": {spec.monitor: float(score) if score is not None else None},
        "epochs": trainer.current_epoch,
        "costs": {k: costs.summary.get(k) for k in ("params", "backbone_params", "gflops",
                                                    "train_images_per_s")},
        "shares": costs.summary.get("test_shares"),
        "val_shares": costs.summary.get("val_shares"),
        "environment": env,
    }


# variables that change which CPU kernels run (and so the float rounding), recorded if set
_KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                     "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "LESA_FUSED_CPU")


def environment(device_type: str) -> dict:
    """What a run's numbers depend on beyond its config (metrics.json "environment"): library
    versions, the device and the kernels it runs, the thread count. They all change float
    rounding, which training amplifies: the quick experiment's conv digits run, seed 0, ends at
    94.14 % test accuracy with this CPU's AVX-512 kernels and at 94.71 % with its AVX2 ones.
    A resumed run records the process that finished it. `report` says which environments a
    table's runs come from."""
    import platform

    import lightning
    import torch

    env = {"torch": torch.__version__, "lightning": lightning.__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads()}
    if device_type == "cuda":
        env.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    elif device_type == "cpu":
        from lesa import fused_cpu

        env.update(device=_cpu_name() or platform.processor() or platform.machine(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   fused_attention=fused_cpu.status())  # evaluation's attention kernel
    else:
        env["device"] = device_type
    variables = {k: os.environ[k] for k in _KERNEL_VARIABLES if k in os.environ}
    if variables:
        env["variables"] = variables
    return env


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def resume_point(run_dir: RunDir, run: Run | None = None,
                 hparams: dict | None = None) -> Path | None:
    """The checkpoint to resume from: last.ckpt, else last.prev.ckpt, else best.ckpt.

    Checkpoints are written atomically (bench/run/checkpoints.py), so a kill mid-save leaves the
    previous one; a file damaged some other way (disk full, a bad copy) is set aside, not
    trusted, and the fallback is said on the console and in status.json. A checkpoint written by
    another config's run is refused (ForeignCheckpoint), never loaded.
    """
    from bench.run.checkpoints import check_owner, read_checkpoint

    for tmp in run_dir.checkpoints.glob(".*.tmp"):  # left by a kill mid-save (we hold the lock)
        tmp.unlink(missing_ok=True)
    set_aside = []
    for path in (run_dir.last_checkpoint, run_dir.checkpoints / "last.prev.ckpt",
                 run_dir.checkpoints / "best.ckpt"):
        if not path.exists():
            continue
        try:
            state = read_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is set aside
            aside = path.with_suffix(".ckpt.unreadable")
            path.replace(aside)
            set_aside.append(f"{path.name} ({type(err).__name__}) moved to {aside.name}")
            print(f"  warning: checkpoint {path} is unreadable ({type(err).__name__}); moved to "
                  f"{aside.name}, trying the previous one", flush=True)
            continue
        if run is not None:
            check_owner(state, path, run.id, run.config, hparams)
        epoch, step = state["epoch"], state["global_step"]
        del state
        if set_aside:
            print(f"  resuming from {path.name} (epoch {epoch + 1}, step {step}) instead",
                  flush=True)
        run_dir.update_status(resumed_from={"checkpoint": path.name, "epoch": epoch,
                                            "global_step": step},
                              checkpoint_fallback="; ".join(set_aside) or None)
        return path
    if set_aside:
        print("  no readable checkpoint left: training from scratch", flush=True)
        run_dir.update_status(resumed_from=None, checkpoint_fallback="; ".join(set_aside)
                              + "; no readable checkpoint left, trained from scratch")
    return None


# --- DDP: Lightning's `ddp` starts ranks 1.. by re-running this very command with LOCAL_RANK set.
# Those ranks train only the run rank 0 names, and write nothing of their own: no lock, no
# status, no metrics, no tables (checkpoints and logs are rank 0's already).

def _is_ddp_child() -> bool:
    return bool(os.environ.get(_DDP_RUN)) and os.environ.get("LOCAL_RANK", "0") != "0"


_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _announce_ddp_run(run: Run, resume: Path | None) -> dict:
    """Tell the ranks Lightning is about to start which run to train and from where."""
    if _is_ddp_child():
        return {}
    before = {k: os.environ.get(k) for k in (*_DDP_ENV, _DDP_RUN, _DDP_RESUME)}
    os.environ[_DDP_RUN] = run.id
    os.environ[_DDP_RESUME] = str(resume or "")
    return before


def _end_ddp_run(before: dict) -> None:
    """Leave no process group and none of Lightning's launch variables behind, so the next run
    of the matrix starts its own ranks (Lightning would take LOCAL_RANK as 'already launched')."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_ddp_rank(runs: list[Run], results: Path, exp: Experiment) -> int:
    """A DDP rank > 0: train the run rank 0 named, quietly, then exit."""
    wanted = os.environ[_DDP_RUN]
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


def _describe(run: Run) -> str:
    c = run.config
    return f"{c['model']['fusion']:<8} {c['data']['name']:<12} seed {c['seed']}"


def execute(run: Run, run_dir: RunDir, console: Console, label: str = "",
            extra_callbacks=()) -> str:
    """Run one cell: lock, mark running, train/resume, record done/failed/interrupted."""
    run_dir.create(run.config)
    if not run_dir.try_lock():
        console.print(f"  [yellow]{label} {run.id}: running in another process, left to it")
        return _SKIPPED
    previous = run_dir.status()
    if previous.get("state") == "done":  # another process finished it since we looked
        run_dir.unlock()
        return _SKIPPED
    start = time.time()
    run_dir.update_status(state="running", error=None, host=socket.gethostname(),
                          pid=os.getpid(), started=now(),
                          attempts=previous.get("attempts", 0) + 1)
    try:
        metrics = train_run(run, run_dir, label, extra_callbacks)
        metrics["elapsed_s"] = time.time() - start + previous.get("elapsed_s", 0.0)
        run_dir.write_metrics(metrics)
        run_dir.update_status(state="done", finished=now(), elapsed_s=metrics["elapsed_s"])
        return _DONE
    except (RunInterrupted, KeyboardInterrupt):
        run_dir.update_status(state="interrupted", error="interrupted (Ctrl-C or SIGTERM)",
                              elapsed_s=time.time() - start + previous.get("elapsed_s", 0.0))
        raise RunInterrupted() from None
    except Exception as err:  # noqa: BLE001 - one run's failure must not stop the matrix
        if _is_pruned(err):  # a sweep's pruner stopped this trial early: not a failure
            run_dir.update_status(state=_PRUNED, error=None, finished=now(),
                                  elapsed_s=time.time() - start + previous.get("elapsed_s", 0.0))
            return _PRUNED
        (run_dir.path / "error.log").write_text(traceback.format_exc())
        kind, reason = _failure(err)
        run_dir.update_status(state="failed", error=reason, failure=kind, finished=now(),
                              elapsed_s=time.time() - start + previous.get("elapsed_s", 0.0))
        console.print(f"  [red]{escape(label)} failed:[/] {escape(reason)}", soft_wrap=True)
        return _FAILED
    finally:
        run_dir.unlock()


def _failure(err: BaseException) -> tuple[str, str]:
    """(kind, reason) of a failed run: kind is diverged, out_of_memory or error."""
    name = type(err).__name__
    if name == "Diverged":
        return "diverged", f"diverged: {err}"
    if isinstance(err, MemoryError) or name == "OutOfMemoryError":
        first = (str(err).strip().splitlines() or [""])[0]
        return "out_of_memory", (f"out of memory ({name}: {first}); lower data.batch_size (with "
                                 f"trainer.accumulate_grad_batches to keep the effective batch) "
                                 f"or use trainer.precision: 16-mixed")
    return "error", f"{name}: {err}"


def preflight(runs: list[Run]) -> None:
    """Check every distinct dataset before anything trains (a bad root fails now, not later)."""
    from bench.data import build_datamodule

    seen = set()
    for run in runs:
        key = repr(sorted(run.config["data"].items()))
        if key not in seen:
            seen.add(key)
            build_datamodule(run.config["data"], run.config["seed"]).check()


def check_writable(root: Path) -> None:
    """Fail before training, not at the first checkpoint, when results cannot be written."""
    from bench.config import ConfigError

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
        state = RunDir(root / run.id).status().get("state", "pending")
        counts[state] = counts.get(state, 0) + 1
        if (state == "failed") if retry_failed else state not in ("done", "failed"):
            todo.append(run)
    return todo, counts


def run_experiment(exp: Experiment, runs: list[Run], results: Path, console: Console,
                   retry_failed: bool = False) -> int:
    """Train the runs not done yet. Exit code: 0 all done, 1 some failed, 130 interrupted."""
    if _is_ddp_child():
        return run_ddp_rank(runs, results, exp)
    root = experiment_dir(results, exp.name)
    check_writable(root)
    todo, counts = select(runs, root, retry_failed)
    known = ", ".join(f"{n} {state}" for state, n in counts.items())
    console.print(f"[bold]{exp.name}[/]: {len(runs)} runs ({known}); {len(todo)} to run "
                  f"-> {root}")
    if counts.get("failed") and not retry_failed:
        console.print(f"  {counts['failed']} failed before: not retried (add --retry-failed)")
    if todo:
        preflight(todo)
    worker = os.environ.get("LESA_BENCH_WORKER")
    if worker:  # worker k of n starts k/n of the way down the list, so workers rarely collide
        k, n = (int(x) for x in worker.split("/"))
        todo = todo[k * len(todo) // n:] + todo[:k * len(todo) // n]
    outcomes = {}
    t0 = time.time()
    for i, run in enumerate(todo, 1):
        run_dir = RunDir(root / run.id)
        label = f"[{i}/{len(todo)}] {_describe(run)}"
        resuming = run_dir.last_checkpoint.exists()
        console.print(f"{label}  {'resuming' if resuming else 'starting'} {run.id}")
        t = time.time()
        try:
            outcome = execute(run, run_dir, console, label)
        except RunInterrupted:
            if run_dir.last_checkpoint.exists():
                console.print(f"[yellow]interrupted: {run.id} saved; run the same command to "
                              f"resume it")
            else:  # stopped before its fit began
                console.print(f"[yellow]interrupted: {run.id} before its first checkpoint; run "
                              f"the same command to start it again")
            return 130
        outcomes[run.id] = outcome
        if outcome == _DONE:
            headline = _headline(run_dir)
            console.print(f"  [green]done[/] in {time.time() - t:.1f}s {headline}")
    failed = [r for r, o in outcomes.items() if o == _FAILED]
    console.print(f"finished {len(outcomes)} runs in {time.time() - t0:.0f}s: "
                  f"{sum(o == _DONE for o in outcomes.values())} done, {len(failed)} failed, "
                  f"{sum(o == _SKIPPED for o in outcomes.values())} left to other processes")
    for run_id in failed:
        error = str(RunDir(root / run_id).status().get("error"))
        console.print(f"  [red]failed[/] {run_id}: {escape(error)}", soft_wrap=True)
    if failed:
        console.print(f"  (tracebacks in {root}/<run-id>/error.log; fix the cause, then re-run "
                      f"them with --retry-failed)", soft_wrap=True)
    still_failed = [r.id for r in runs if RunDir(root / r.id).status().get("state") == "failed"]
    if still_failed and not failed:
        console.print(f"  {len(still_failed)} runs are failed from before (--retry-failed)")
    return 1 if still_failed else 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a Ctrl-C would be: every `except KeyboardInterrupt` treats it so."""


_saving = False  # set once an interrupted run starts saving (SaveOnInterrupt)


def saving_after_stop() -> None:
    """Mark this process as saving after a stop: a SIGTERM is ignored from here on."""
    global _saving
    _saving = True


def install_stop_signals() -> None:
    """SIGTERM (SLURM and other schedulers send it before killing) raises `Terminated`, so the
    run saves a checkpoint and is marked interrupted, as on Ctrl-C.

    Once the run is saving (`saving_after_stop`), a SIGTERM is ignored: a worker of `run --jobs`
    or `sweep --workers` that got a terminal's Ctrl-C (the whole process group gets it) is sent
    a SIGTERM by its parent too, which must not cut the checkpoint save short (Lightning ignores
    further Ctrl-Cs then, for the same reason). Before that point the SIGTERM still stops: a
    first interrupt that Python swallowed (one raised inside a finalizer is only printed) must
    not leave the worker training on."""
    import signal

    def on_term(signum, frame):
        if not _saving:
            raise Terminated()

    signal.signal(signal.SIGTERM, on_term)


def run_workers(argv: list[str], jobs: int, exp: Experiment, runs: list[Run], results: Path,
                console: Console) -> int:
    """`run --jobs N`: N worker processes run the same command; the run locks share the matrix
    out between them. Each worker gets cores / N threads."""
    import subprocess

    if _is_ddp_child():  # a DDP rank re-ran this command: it trains one run, no workers
        return run_ddp_rank(runs, results, exp)
    root = experiment_dir(results, exp.name)
    check_writable(root)
    plain, skip = [], False
    for token in argv:  # the same command without --jobs
        if skip:
            skip = False
        elif token in ("--jobs", "-j"):
            skip = True
        elif not token.startswith(("--jobs=", "-j=")):
            plain.append(token)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    console.print(f"[bold]{exp.name}[/]: {jobs} workers x {threads} thread(s)")
    t0 = time.time()
    workers = [subprocess.Popen([sys.executable, "-m", "bench.cli", *plain],
                                env={**env, "LESA_BENCH_WORKER": f"{k}/{jobs}"})
               for k in range(jobs)]
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:
        # pass it on: a terminal's Ctrl-C reached the workers already (a worker that is saving
        # ignores this second stop, see install_stop_signals), a `kill` or `kill -INT` of this
        # process did not
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            w.wait()
        return 130
    states: dict[str, int] = {}
    for run in runs:
        state = RunDir(root / run.id).status().get("state", "pending")
        states[state] = states.get(state, 0) + 1
    console.print(f"all workers finished in {time.time() - t0:.0f}s: "
                  + ", ".join(f"{n} {s}" for s, n in states.items()))
    if 130 in codes:
        return 130
    return 0 if states.get("done", 0) == len(runs) else 1


def _headline(run_dir: RunDir) -> str:
    metrics = (run_dir.metrics() or {}).get("test", {})
    shown = [f"{k}={v:.4f}" for k, v in metrics.items()
             if k in ("test/acc1", "test/map_50", "test/map")]
    return " ".join(shown)
