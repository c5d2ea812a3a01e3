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
                  mem=None, signal_s=SIGNAL_S, max_parallel=None, extra=(),
                  warn=None) -> Resources:
    """Options first, else the runs' configs: GPUs from trainer.accelerator/devices, CPUs from
    data.num_workers (per process: one core per loader worker, one for the process itself).
    Every option is checked before it reaches the script (ConfigError naming the flag and the
    value); `warn(text)` is told of a save-and-requeue notice that leaves little time to train."""
    nodes = {r.config["trainer"]["num_nodes"] for r in runs}
    if nodes != {1}:
        raise ConfigError(f"trainer.num_nodes {max(nodes)}: an array task trains a run on one "
                          f"node; launch multi-node runs with srun yourself (docs/clusters.md)")
    for flag, value in (("--partition", partition), ("--time", time_limit), ("--mem", mem),
                        *(("--sbatch", option) for option in extra)):
        if value is not None:
            check_text(flag, value)
    if partition is not None and not re.fullmatch(r"[\w.+-]+(,[\w.+-]+)*", partition):
        raise ConfigError(f"--partition {partition!r}: expected a partition name, or several "
                          f"separated by commas (letters, digits, _ . + -)")
    if mem is not None and not re.fullmatch(r"\d+[KMGT]?", mem, re.IGNORECASE):
        raise ConfigError(f"--mem {mem!r}: expected a number of megabytes, or one with a unit "
                          f"K, M, G or T (e.g. 16G); 0 asks for all of a node's memory")
    for option in extra:
        if not option.startswith(("-", "#SBATCH")):
            raise ConfigError(f"--sbatch {option!r}: expected an sbatch option such as "
                              f"--sbatch=--account=abc (or a whole '#SBATCH ...' line)")
    wall = wall_seconds(time_limit) if time_limit is not None else None
    if not 0 <= signal_s <= MAX_SIGNAL_S:
        raise ConfigError(f"--signal-seconds {signal_s}: expected 0 to {MAX_SIGNAL_S} (sbatch's "
                          f"--signal range; 0: no notice, the run is not saved before the "
                          f"wall time)")
    if wall is not None and signal_s:
        if signal_s >= wall:
            raise ConfigError(f"--signal-seconds {signal_s}: the save-and-requeue notice would "
                              f"come before the task starts (--time {time_limit} is {wall} s); "
                              f"give a longer --time or a smaller --signal-seconds")
        if wall - signal_s < SHORT_S and warn is not None:
            warn(f"--time {time_limit} with --signal-seconds {signal_s} leaves "
                 f"{wall - signal_s} s to train before each save and requeue (SLURM may send "
                 f"the signal up to a minute early)")
    needed = max((_config_gpus(r.config["trainer"]) for r in runs), default=0)
    if gpus is not None and gpus < 0:
        raise ConfigError(f"--gpus {gpus}: expected 0 or more GPUs per run")
    if gpus and not needed and not any(r.config["trainer"]["accelerator"] == "auto"
                                       for r in runs):
        accelerators = sorted({r.config["trainer"]["accelerator"] for r in runs})
        raise ConfigError(f"--gpus {gpus}: the runs train on trainer.accelerator "
                          f"{', '.join(accelerators)}, so the GPUs would sit idle; train on them "
                          f"with --set trainer.accelerator=gpu --set trainer.devices={gpus}, or "
                          f"leave --gpus out")
    if gpus is not None and gpus < needed:
        raise ConfigError(f"--gpus {gpus}: the runs use trainer.devices {needed} GPUs; ask for "
                          f"{needed}, or train on fewer with --set trainer.devices={gpus}")
    gpus = needed if gpus is None else gpus
    if cpus is None:
        # each of a run's processes (one per GPU under DDP) has its own loader workers
        cpus = max(((r.config["data"].get("num_workers", 0) + 1)
                    * max(1, _config_gpus(r.config["trainer"])) for r in runs), default=1)
    if cpus < 1:
        raise ConfigError(f"--cpus {cpus}: expected 1 or more CPUs per run")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel {max_parallel}: expected 1 or more tasks at once "
                          f"(leave it out for no limit)")
    return Resources(partition, time_limit and time_limit.strip(), gpus, cpus, mem, signal_s,
                     max_parallel, list(extra))


# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds
_WALL = {r"(\d+)": (60,), r"(\d+):(\d+)": (60, 1), r"(\d+):(\d+):(\d+)": (3600, 60, 1),
         r"(\d+)-(\d+)": (86400, 3600), r"(\d+)-(\d+):(\d+)": (86400, 3600, 60),
         r"(\d+)-(\d+):(\d+):(\d+)": (86400, 3600, 60, 1)}
_UNIT_LIMIT = {3600: 24, 60: 60, 1: 60}  # a field after the first stays below this
MAX_SIGNAL_S = 65535  # sbatch --signal's largest time (an unsigned 16-bit number)
SHORT_S = 120  # a notice leaving less time than this to train is worth a warning


def wall_seconds(text: str) -> int | None:
    """Seconds of an sbatch --time value (None: UNLIMITED/INFINITE); ConfigError naming --time
    for anything sbatch would misread or refuse."""
    if text.strip().lower() in ("unlimited", "infinite"):
        return None
    for pattern, units in _WALL.items():
        match = re.fullmatch(pattern, text.strip())
        if match is None:
            continue
        fields = [int(f) for f in match.groups()]
        for value, unit in list(zip(fields, units))[1:]:
            if value >= _UNIT_LIMIT[unit]:
                names = {3600: "hours", 60: "minutes", 1: "seconds"}
                raise ConfigError(f"--time {text!r}: {value} {names[unit]} (must be below "
                                  f"{_UNIT_LIMIT[unit]}); e.g. 1:30:00, 2-12 or 90 (minutes)")
        seconds = sum(v * u for v, u in zip(fields, units))
        if seconds <= 0:
            raise ConfigError(f"--time {text!r}: a wall time must be positive (sbatch reads 0 "
                              f"as no limit: say --time UNLIMITED for that, or leave --time "
                              f"out for the partition's default)")
        return seconds
    raise ConfigError(f"--time {text!r}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
                      f"D-HH:MM:SS (e.g. 4:00:00 or 2-00), as sbatch reads them")


def check_text(flag: str, value: str) -> None:
    """ConfigError for a value with a control character (a newline would end the #SBATCH
    header: sbatch stops reading options at the first line that is not one)."""
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ConfigError(f"{flag} {value!r}: holds the control character {bad!r}; a value "
                          f"written into the sbatch script must be one line of text")


def sbatch_path(flag: str, folder: Path, pattern: str | None = None) -> str:
    """A folder (or, with `pattern`, a file in it named with sbatch's %A/%a patterns, whose
    folder's own % are doubled) as an #SBATCH value: in double quotes where it has a space, a
    quote or # (sbatch's parsing of those lines groups quoted text and ends a line at #)."""
    text = str(folder)
    check_text(flag, text)
    if "\\" in text:
        raise ConfigError(f"{flag} {text!r}: sbatch reads a backslash in an #SBATCH line as an "
                          f"escape; use a path without one")
    if pattern is not None:
        text = f"{text.replace('%', '%%')}/{pattern}"
    if re.search(r"[\s\"'#]", text):
        text = '"' + text.replace('"', '\\"') + '"'
    return text


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
    check_text("--results", str(args.results))  # before the paths are resolved: as typed
    out = [str(Path(args.experiment).resolve())]
    for flag in ("set", "only"):
        for value in getattr(args, flag):
            check_text(f"--{flag}", value)
            out += [f"--{flag}", value]
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
             f"#SBATCH --output={sbatch_path('--results', logs, '%A_%a.out')}",
             "#SBATCH --open-mode=append",  # a requeued task goes on in the same log
             f"#SBATCH --chdir={sbatch_path('the working directory', Path.cwd())}",
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
    for word in command:
        check_text("the task's command line", word)
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
