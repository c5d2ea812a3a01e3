"""SLURM job arrays: `lesa-bench slurm EXP` submits an experiment's pending runs as one array,
one array task per run, each training its run in the shared results directory.

The array is a generated sbatch script (kept under results/<experiment>/slurm/ and printed by
--dry-run): it maps $SLURM_ARRAY_TASK_ID to a run id and `exec`s `lesa-bench slurm EXP --run
ID`, so the batch shell *is* the training process and `--signal=B:USR1@SECS` reaches it. That
process is bench/cluster/requeue.py: on USR1 it saves a checkpoint at the next safe point, requeues
its own array task (`scontrol requeue`), and the requeued task resumes from the checkpoint.

Each run's status.json records its array task (`slurm_job`, e.g. "4711_3"); `status` shows it
with the task's SLURM state (squeue, else sacct: queue.py), and submitting again skips runs that
are done or whose task is still queued or running.
"""
from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from bench.cluster.queue import job_states
from bench.config import ConfigError, Experiment, Run
from bench.store import RunDir, RunState, experiment_dir

# a task in one of these states is still the run's: submitting again leaves the run to it
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
SIGNAL_S = 300  # default warning before the wall time: time to save a checkpoint
SLURM_DIR = "slurm"  # under results/<experiment>/: the scripts and the tasks' logs


@dataclass
class Resources:
    """What each array task asks for (every run of an array gets the same)."""
    partition: str | None = None
    time: str | None = None  # sbatch's --time: minutes, HH:MM:SS or D-HH
    gpus: int = 0
    cpus: int = 1
    mem: str | None = None
    signal_s: int = SIGNAL_S
    max_parallel: int | None = None
    extra: list[str] = field(default_factory=list)  # further sbatch options or #SBATCH lines


def resources_for(runs: list[Run], partition=None, time_limit=None, gpus=None, cpus=None,
                  mem=None, signal_s=SIGNAL_S, max_parallel=None, extra=()) -> Resources:
    """Options first, else the runs' configs: GPUs from trainer.accelerator/devices, CPUs from
    data.num_workers (per process: one core per loader worker, one for the process itself)."""
    nodes = {r.config["trainer"]["num_nodes"] for r in runs}
    if nodes != {1}:
        raise ConfigError(f"trainer.num_nodes {max(nodes)}: an array task trains a run on one "
                          f"node; launch multi-node runs with srun yourself (docs/clusters.md)")
    needed = max((_config_gpus(r.config["trainer"]) for r in runs), default=0)
    if gpus is not None and gpus < needed:
        raise ConfigError(f"--gpus {gpus}: the runs use trainer.devices {needed} GPUs; ask for "
                          f"{needed}, or train on fewer with --set trainer.devices={gpus}")
    gpus = needed if gpus is None else gpus
    if cpus is None:
        # each of a run's processes (one per GPU under DDP) has its own loader workers
        cpus = max(((r.config["data"].get("num_workers", 0) + 1)
                    * max(1, _config_gpus(r.config["trainer"])) for r in runs), default=1)
    if gpus < 0 or cpus < 1:
        raise ConfigError(f"--gpus {gpus} --cpus {cpus}: expected gpus >= 0 and cpus >= 1")
    if signal_s < 0:
        raise ConfigError(f"--signal-seconds {signal_s}: expected 0 or more")
    return Resources(partition, time_limit, gpus, cpus, mem, signal_s, max_parallel, list(extra))


def _config_gpus(trainer: dict) -> int:
    devices = trainer["devices"]
    if trainer["accelerator"] in ("gpu", "cuda"):
        return devices if isinstance(devices, int) else len(devices)
    return 0


_warned = False  # the warning signal came (catch_warning_signal)


def catch_warning_signal(signum: int = signal.SIGUSR1) -> None:
    """From here on the warning signal only sets a flag (`warned`): installed first thing in a
    task, since a USR1 before the handler would kill the process (its default action)."""

    def on_signal(signum, frame):
        global _warned
        _warned = True  # no saving in a handler: bench/cluster/requeue.py saves at a batch end

    signal.signal(signum, on_signal)


def warned() -> bool:
    return _warned


def to_submit(runs: list[Run], root: Path, retry_failed: bool = False):
    """(runs to submit, {reason: count} of those left out): done runs, runs whose array task is
    still queued or running, and failed runs unless retry_failed."""
    status = {r.id: RunDir(root / r.id).status() for r in runs}
    states = job_states([s.get("slurm_job") for s in status.values() if s.get("slurm_job")])
    todo, skipped = [], {}
    for run in runs:
        s = status[run.id]
        state, task = s.get("state", RunState.PENDING), s.get("slurm_job")
        if task and states.get(task) in ACTIVE:
            reason = f"in job {task.split('_')[0]}"
        elif state == RunState.DONE:
            reason = "done"
        elif state == RunState.FAILED and not retry_failed:
            reason = "failed (--retry-failed)"
        else:
            todo.append(run)
            continue
        skipped[reason] = skipped.get(reason, 0) + 1
    return todo, skipped


def selection_args(args) -> list[str]:
    """The command line that selects the same runs inside a task (absolute paths: the task may
    start elsewhere)."""
    out = [str(Path(args.experiment).resolve())]
    for value in args.set:
        out += ["--set", value]
    for value in args.only:
        out += ["--only", value]
    return out + ["--results", str(Path(args.results).resolve())]


# a generated script, not submitit: readable, resubmittable by hand, nothing pickled, and no
# second USR1 requeue handler to fight ours (docs/clusters.md)
def batch_script(exp: Experiment, runs: list[Run], res: Resources, root: Path,
                 selection: list[str]) -> str:
    """The sbatch script of one array: task i trains runs[i]."""
    logs = root.resolve() / SLURM_DIR
    array = f"0-{len(runs) - 1}" + (f"%{res.max_parallel}" if res.max_parallel else "")
    lines = ["#!/bin/bash",
             f"# lesa-bench slurm: {len(runs)} runs of {exp.name}, one array task per run "
             f"(docs/clusters.md)",
             f"#SBATCH --job-name=lesa-{exp.name}",
             f"#SBATCH --array={array}",
             f"#SBATCH --output={logs}/%A_%a.out",
             "#SBATCH --open-mode=append",  # a requeued task goes on in the same log
             f"#SBATCH --chdir={Path.cwd()}",
             "#SBATCH --nodes=1",
             "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={res.cpus}",
             "#SBATCH --requeue"]
    if res.signal_s:
        # B: the batch shell, which exec's the training process: it saves and requeues
        lines.append(f"#SBATCH --signal=B:USR1@{res.signal_s}")
    if res.gpus:
        lines.append(f"#SBATCH --gres=gpu:{res.gpus}")
    for option, value in (("partition", res.partition), ("time", res.time), ("mem", res.mem)):
        if value:
            lines.append(f"#SBATCH --{option}={value}")
    for line in res.extra:
        lines.append(line if line.startswith("#SBATCH") else f"#SBATCH {line}")
    command = [sys.executable, "-m", "bench.cli", "slurm", *selection]
    lines += ["",
              "RUNS=(", *(f"    {r.id}" for r in runs), ")",
              "# the task's own CPUs, not the threads of the shell that submitted it",
              "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
              "# one process per task: Lightning starts a run's own GPU processes; with",
              "# SLURM_NTASKS set it would wait for srun to start them instead",
              "unset SLURM_NTASKS SLURM_NPROCS",
              "exec " + " ".join(shlex.quote(c) for c in command)
              + ' --run "${RUNS[$SLURM_ARRAY_TASK_ID]}"', ""]
    return "\n".join(lines)


def submit(exp: Experiment, runs: list[Run], res: Resources, results: Path, selection: list[str],
           console: Console, dry_run: bool = False, retry_failed: bool = False) -> int:
    """Submit the runs not done (nor queued, nor failed) as one array. Exit code."""
    root = experiment_dir(results, exp.name)
    todo, skipped = to_submit(runs, root, retry_failed)
    left = ", ".join(f"{n} {why}" for why, n in skipped.items())
    if dry_run:  # stdout is the script alone, ready for `> file.sbatch`
        console = Console(stderr=True)
    console.print(f"[bold]{exp.name}[/]: {len(runs)} runs, {len(todo)} to submit"
                  + (f" ({left})" if left else ""), highlight=False)
    if not todo:
        return 0
    script = batch_script(exp, todo, res, root, selection)
    if dry_run:
        print(script, end="")
        return 0
    if not shutil.which("sbatch"):
        raise ConfigError("sbatch not found: `lesa-bench slurm` runs on a SLURM login node "
                          "(without SLURM: `lesa-bench run --shard I/N`, docs/clusters.md)")
    (root / SLURM_DIR).mkdir(parents=True, exist_ok=True)
    path = root / SLURM_DIR / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(script)
    done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"sbatch {path} failed: {done.stderr.strip() or done.stdout.strip()}")
    job = done.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job):
        raise ConfigError(f"sbatch {path}: unexpected answer {done.stdout.strip()!r}")
    for i, run in enumerate(todo):
        rd = RunDir(root / run.id)
        rd.create(run.config)
        rd.update_status(slurm_job=f"{job}_{i}", slurm_script=str(path))
    console.print(f"submitted job array {job} ({len(todo)} tasks): {path}\n"
                  f"  logs {root / SLURM_DIR}/{job}_<task>.out; `lesa-bench status` shows each "
                  f"run's task and its SLURM state", highlight=False, soft_wrap=True)
    return 0
