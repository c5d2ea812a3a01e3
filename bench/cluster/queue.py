"""SLURM's view of the runs submitted as array tasks: their task ids and states (squeue, else
sacct), for `status` and for resubmitting. No torch here: `status` imports this module."""
from __future__ import annotations

import os
import shutil
import subprocess


def task_id() -> str | None:
    """This process's array task as "<array job>_<task>" (plain job id outside arrays)."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID")


def job_states(tasks: list[str]) -> dict[str, str]:
    """{"4711_3": "RUNNING", ...} for the given array tasks, from squeue (queued, running and
    recently ended tasks), then sacct where accounting is on. A task neither knows is missing."""
    jobs = sorted({t.split("_")[0] for t in tasks if t})
    if not jobs or not shutil.which("squeue"):
        return {}
    states: dict[str, str] = {}
    out = _query(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ",".join(jobs)])
    for line in out.splitlines():
        task, _, state = line.partition("|")
        states[task.strip()] = state.strip()
    missing = [t for t in tasks if t and t not in states]
    if missing and shutil.which("sacct"):
        out = _query(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(jobs)])
        for line in out.splitlines():
            task, _, state = line.partition("|")
            states.setdefault(task.strip(), state.split()[0] if state else "")
    return states


def _query(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""  # e.g. sacct without accounting


def status_column(records) -> dict[str, str] | None:
    """{run id: "4711_3 RUNNING"} for `status`, or None when no run was ever submitted."""
    tasks = {r.run.id: r.status.get("slurm_job") for r in records if r.status.get("slurm_job")}
    if not tasks:
        return None
    states = job_states(list(tasks.values()))
    # a task SLURM has forgotten (MinJobAge, no accounting) shows its id alone
    return {rid: f"{task} {states.get(task, '').lower()}".strip()
            for rid, task in tasks.items()}
