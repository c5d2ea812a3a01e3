"""`lesa-bench slurm`: the array script (fast), and against a real single-node SLURM cluster
(slow; .ci/setup/slurm.sh starts one): a 4-run matrix finishes, and a task signalled as at
pre-emption is requeued and resumes to the metrics of an uninterrupted run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.store import RunDir, run_dirs

ROOT = Path(__file__).resolve().parents[1]
SETUP = ".ci/setup/slurm.sh"


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_dry_run_prints_one_array_task_per_pending_run(tiny_experiment, tmp_path):
    exp = tiny_experiment()
    done = _cli("slurm", str(exp), "--results", str(tmp_path / "r"), "--dry-run", "--time",
                "2:00:00", "--gpus", "2", "--partition", "gpu", "--sbatch=--account=lab",
                "--sbatch", "#SBATCH --qos=low", "--signal-seconds", "120",
                "--set", "trainer.accelerator=gpu", "--set", "trainer.devices=2")
    assert done.returncode == 0, done.stderr
    script = done.stdout[done.stdout.index("#!/bin/bash"):]
    for line in ("#SBATCH --array=0-3", "#SBATCH --time=2:00:00", "#SBATCH --gres=gpu:2",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --qos=low",
                 "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --cpus-per-task=2"):
        assert line in script.splitlines(), line
    assert 'exec ' in script and '--run "${RUNS[$SLURM_ARRAY_TASK_ID]}"' in script
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def test_done_runs_and_multi_node_runs(tiny_experiment, tmp_path):
    from bench.config import ConfigError, load_experiment
    from bench.cluster.slurm import resources_for, to_submit

    exp = load_experiment(str(tiny_experiment()))
    root = tmp_path / "tiny"
    RunDir(root / exp.runs[0].id).create(exp.runs[0].config)
    RunDir(root / exp.runs[0].id).update_status(state="done")
    todo, skipped = to_submit(exp.runs, root)
    assert len(todo) == 3 and skipped == {"done": 1}
    gpu = {**exp.runs[0].config, "trainer": {**exp.runs[0].config["trainer"],
                                             "accelerator": "gpu", "devices": 2}}
    gpu_run = exp.runs[0].__class__("g", gpu, {})
    assert resources_for([gpu_run]).gpus == 2
    with pytest.raises(ConfigError, match="trainer.devices=1"):
        resources_for([gpu_run], gpus=1)
    with pytest.raises(ConfigError, match="num_nodes"):
        resources_for([exp.runs[0].__class__(
            "x", {**exp.runs[0].config, "trainer": {**exp.runs[0].config["trainer"],
                                                    "num_nodes": 2}}, {})])


# --- against the cluster of .ci/setup/slurm.sh -------------------------------------------------

def _require_slurm() -> None:
    """Fail (never skip) when no SLURM node is up: the slow suite is meant to run these."""
    if not shutil.which("sbatch"):
        pytest.fail(f"SLURM is not installed: run `sudo bash {SETUP}` first")
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or not any(s.strip() in ("idle", "mix", "alloc")
                                        for s in state.stdout.splitlines()):
        pytest.fail(f"no SLURM node is up (sinfo: {state.stdout.strip() or state.stderr.strip()})"
                    f": run `sudo bash {SETUP}` first")


def _wait(predicate, what: str, timeout: float = 300.0, logs: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    text = ""
    if logs is not None and logs.exists():
        text = "\n".join(p.read_text()[-2000:] for p in sorted(logs.glob("*.out")))
    squeue = subprocess.run(["squeue", "--states=all"], capture_output=True, text=True).stdout
    pytest.fail(f"{what} did not happen in {timeout:.0f}s\n{squeue}\n{text}")


def _task_state(task: str) -> str:
    from bench.cluster.queue import job_states

    return job_states([task]).get(task, "")


def _submitted_job(out: str) -> str:
    return out.split("submitted job array ", 1)[1].split()[0]


@pytest.mark.slow
def test_four_run_matrix_runs_as_a_job_array(tiny_experiment, tmp_path):
    _require_slurm()
    exp = tiny_experiment(name="slurm4")
    results = tmp_path / "results"
    # held until checked: a queued array's runs are not submitted twice
    done = _cli("slurm", str(exp), "--results", str(results), "--time", "10", "--sbatch=--hold")
    assert done.returncode == 0, done.stdout + done.stderr
    job = _submitted_job(done.stdout)
    again = _cli("slurm", str(exp), "--results", str(results))
    assert "0 to submit (4 in job" in again.stdout, again.stdout
    status = _cli("status", str(exp), "--results", str(results))
    assert f"{job}_0 pending" in status.stdout, status.stdout
    assert f"{job}_3 pending" in status.stdout, status.stdout
    subprocess.run(["scontrol", "release", job], check=True)

    def all_done():
        dirs = run_dirs(results, "slurm4")
        return len(dirs) == 4 and all(rd.status().get("state") == "done" for rd in dirs.values())

    _wait(all_done, "all four runs done", logs=results / "slurm4" / "slurm")
    report = _cli("report", str(exp), "--results", str(results))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "incomplete" not in report.stdout
    for fusion in ("conv", "dynamic"):
        assert fusion in report.stdout
    status = _cli("status", str(exp), "--results", str(results))
    assert status.stdout.count("completed") == 4, status.stdout
    assert "0 to submit (4 done)" in _cli("slurm", str(exp), "--results", str(results)).stdout


@pytest.mark.slow
def test_results_path_with_a_space_hash_and_percent_runs(tiny_experiment, tmp_path):
    """sbatch reads the quoted #SBATCH --output and its doubled %: the task writes its log under
    the awkward path and trains the run there (unquoted, sbatch refuses the whole script)."""
    _require_slurm()
    exp = tiny_experiment(name="awkward", matrix={"model.fusion": ["conv"], "seed": [0]})
    results = tmp_path / "my results #1 100%"
    done = _cli("slurm", str(exp), "--results", str(results), "--time", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    job = _submitted_job(done.stdout)
    logs = results / "awkward" / "slurm"
    _wait(lambda: all(rd.status().get("state") == "done"
                      for rd in run_dirs(results, "awkward").values()) and run_dirs(
                          results, "awkward"), "the run done", logs=logs)
    assert (logs / f"{job}_0.out").exists(), sorted(p.name for p in logs.iterdir())


# long enough that the signal lands mid-training: 3 epochs x 30 steps, a checkpoint every 5
PREEMPT = dict(trainer={"max_epochs": 3, "limit_train_batches": 30, "limit_val_batches": 2,
                        "limit_test_batches": 2, "checkpoint_every_n_steps": 5},
               matrix={"model.fusion": ["conv"], "seed": [0]})


@pytest.mark.slow
def test_signalled_task_is_requeued_and_resumes_to_identical_metrics(tiny_experiment, tmp_path):
    import torch

    _require_slurm()
    exp = tiny_experiment(name="preempt", **PREEMPT)
    reference = tmp_path / "reference"
    # the uninterrupted run, beside the task, with the task's thread count (one CPU per task)
    ref = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                            str(reference)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    results = tmp_path / "results"
    done = _cli("slurm", str(exp), "--results", str(results), "--cpus", "1", "--time", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    task = f"{_submitted_job(done.stdout)}_0"
    logs = results / "preempt" / "slurm"

    def run_dir():
        dirs = list(run_dirs(results, "preempt").values())
        return dirs[0] if dirs else None

    # mid-epoch 1, once the step-5 checkpoint exists: as the scheduler would before wall time
    rd = _wait(lambda: (d := run_dir()) and d.status().get("state") == "running"
               and d.last_checkpoint.exists() and d, "the task training", logs=logs)
    signal = subprocess.run(["scancel", "--signal=USR1", "--batch", task], capture_output=True,
                            text=True)
    assert signal.returncode == 0, signal.stderr
    _wait(lambda: "requeued" in str(rd.status().get("error")), "the requeue", logs=logs)
    # SLURM holds a requeued job back ~2 minutes (its EligibleTime); once pending, release it
    _wait(lambda: _task_state(task) == "PENDING", "the task pending again", 60, logs)
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True)
    _wait(lambda: rd.status().get("state") == "done", "the resumed run done", logs=logs)

    status = rd.status()
    assert status["attempts"] == 2 and status["slurm_restarts"] == 1, status
    assert status["resumed_from"]["checkpoint"] == "last.ckpt"
    assert 5 <= status["resumed_from"]["global_step"] < 89, status  # mid-training
    log = (logs / f"{task}.out").read_text()
    assert "checkpoint saved, requeued" in log and "resuming" in log, log
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    (ref_rd,) = run_dirs(reference, "preempt").values()
    assert rd.metrics()["test"] == ref_rd.metrics()["test"]
    assert rd.metrics()["best_val"] == ref_rd.metrics()["best_val"]
    for name in ("last.ckpt", "best.ckpt"):
        ours = torch.load(rd.checkpoints / name, map_location="cpu", weights_only=False)
        theirs = torch.load(ref_rd.checkpoints / name, map_location="cpu", weights_only=False)
        assert ours["global_step"] == theirs["global_step"]
        for key, tensor in ours["state_dict"].items():
            assert torch.equal(tensor, theirs["state_dict"][key]), f"{name}: {key} differs"
