"""Inside a SLURM array task (bench/cluster/slurm.py): train one run, and on the warning signal save
a checkpoint and requeue the task, which then resumes from that checkpoint.

The USR1 handler only sets a flag: the checkpoint is written by `RequeueOnSignal` at the end of
the next training batch (a point Lightning can resume from exactly), never inside the handler,
where a save can hang (Lightning issue #21406). Lightning's own SLURM auto-requeue is off:
the task hides SLURM_NTASKS from it, this handler is installed before fit (Lightning adds its
USR1 handler only where none is), and `setup` turns `auto_requeue` off should it detect SLURM.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import warnings

import lightning as L
from rich.console import Console

from bench import compat
from bench.cluster.queue import task_id
from bench.cluster.slurm import catch_warning_signal, warned
from bench.config import ConfigError, Experiment
from bench.resume.stops import RunInterrupted
from bench.run.runner import SKIPPED, execute, run_ddp_rank
from bench.store import RunDir, RunState, experiment_dir
from bench.train.ddp import is_ddp_child


class Preempted(RunInterrupted):
    """The warning signal came: the checkpoint is saved, the task is to be requeued."""


class RequeueOnSignal(L.Callback):
    """Save last.ckpt and stop at the first batch end after the warning signal."""

    def __init__(self, path):
        self.path = path
        catch_warning_signal()  # idempotent; the CLI installed it before the imports

    @property
    def signalled(self) -> bool:
        return warned()

    def setup(self, trainer, pl_module, stage):
        # what Lightning's signal connector reads when fit starts, after this hook
        compat.disable_slurm_auto_requeue(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stop = self.signalled
        if trainer.world_size > 1:  # only rank 0 got the signal; every rank takes part in a save
            stop = trainer.strategy.broadcast(stop, src=0)
        # not on an epoch's last batch: Lightning would skip that epoch's validation on resume
        if stop and batch_idx + 1 < trainer.num_training_batches:
            trainer.save_checkpoint(self.path)
            raise Preempted()


def requeue(task: str) -> bool:
    done = subprocess.run(["scontrol", "requeue", task], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  scontrol requeue {task} failed: {done.stderr.strip()}", flush=True)
    return done.returncode == 0


def _release_lock_of_earlier_attempt(run_dir: RunDir, task: str) -> None:
    """SLURM runs an array task once at a time: a lock taken by this task's earlier attempt
    (killed on another node, where the store cannot check its process) is stale."""
    try:
        lock = json.loads((run_dir.path / "lock").read_text())
    except (OSError, ValueError):
        return
    status = run_dir.status()
    earlier = status.get("slurm_job") == task and "slurm_restarts" in status
    if earlier and (lock.get("host"), lock.get("pid")) == (status.get("host"), status.get("pid")):
        (run_dir.path / "lock").unlink(missing_ok=True)


def run_task(exp: Experiment, run_id: str, results, console: Console) -> int:
    """`lesa-bench slurm EXP --run ID`: what an array task runs. Exit code."""
    if is_ddp_child():  # a DDP rank Lightning started for this task's run
        return run_ddp_rank(exp.runs, results, exp)
    run = next((r for r in exp.runs if r.id == run_id), None)
    if run is None:
        raise ConfigError(f"--run {run_id}: not a run of {exp.name} with these --set/--only "
                          f"options (the experiment file changed since submitting?)")
    # Lightning's hint to prepend srun: this task starts the run's processes itself
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
    task = task_id() or "local"
    run_dir = RunDir(experiment_dir(results, exp.name) / run.id)
    run_dir.create(run.config)
    if run_dir.status().get("state") == RunState.DONE:
        console.print(f"{run.id}: done already")
        return 0
    _release_lock_of_earlier_attempt(run_dir, task)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    run_dir.update_status(slurm_job=task, slurm_restarts=restarts)
    requeuer = RequeueOnSignal(run_dir.last_checkpoint)
    resuming = run_dir.last_checkpoint.exists()
    console.print(f"task {task}: {'resuming' if resuming else 'starting'} {run.id}"
                  + (f" (restart {restarts})" if restarts else ""))
    try:
        outcome = execute(run, run_dir, console, run.id, extra_callbacks=[requeuer])
    except RunInterrupted:
        if not requeuer.signalled:  # SIGTERM: cancelled, or pre-empted by SLURM itself
            return 130
        # slurm ends this task with SIGTERM once requeued: nothing is left to cut short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if task != "local" and requeue(task):
            run_dir.update_status(error=f"checkpoint saved at the warning signal; task {task} "
                                        f"requeued")
            console.print(f"task {task}: checkpoint saved, requeued")
            return 0
        run_dir.update_status(error="checkpoint saved at the warning signal; not requeued: "
                                    "submit again to resume")
        return 130
    if outcome == SKIPPED:
        console.print(f"{run.id}: trained by another process, left to it")
    return 0 if outcome in (RunState.DONE, SKIPPED) else 1
