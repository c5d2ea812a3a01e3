"""Interruptions: SIGKILL mid-training resumes from the checkpoint; Ctrl-C saves and says so."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.store import run_dirs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _start(exp: Path, results: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                             str(results)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, timeout=240.0):
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _running_with_checkpoint(results: Path):
    for rd in run_dirs(results, "tiny").values():
        status = rd.status()
        if status.get("state") == "running" and rd.last_checkpoint.exists() \
                and status.get("epoch", 0) >= 1:
            return rd
    return None


def test_sigkill_mid_training_resumes_from_checkpoint(tiny_experiment, tmp_path):
    exp = tiny_experiment(trainer={"max_epochs": 4, "limit_train_batches": 6},
                          matrix={"model.fusion": ["conv", "sum"], "seed": [0]})
    results = tmp_path / "results"
    proc = _start(exp, results)
    # let the first run finish and the second get past its first epoch, then kill -9
    assert _wait_for(lambda: any(rd.status().get("state") == "done"
                                 for rd in run_dirs(results, "tiny").values())
                     and _running_with_checkpoint(results) is not None, proc), proc.communicate()
    victim = _running_with_checkpoint(results)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {rid: (rd.path / "status.json").stat().st_mtime_ns
                   for rid, rd in run_dirs(results, "tiny").items()
                   if rd.status()["state"] == "done"}
    assert len(done_before) == 1 and victim.status()["state"] == "running"  # died unannounced

    proc = _start(exp, results)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "resuming" in out and "1 to run" in out
    status = victim.status()
    assert status["state"] == "done" and status["attempts"] == 2
    assert status["resumed_from"]["global_step"] >= 6  # from its checkpoint, not from step 0
    assert victim.metrics()["epochs"] == 4
    for rid, mtime in done_before.items():  # the finished run was not re-run
        assert (run_dirs(results, "tiny")[rid].path / "status.json").stat().st_mtime_ns == mtime


def test_ctrl_c_saves_marks_interrupted_and_resumes(tiny_experiment, tmp_path):
    exp = tiny_experiment(trainer={"max_epochs": 30, "limit_train_batches": 6},
                          matrix={"model.fusion": ["conv"], "seed": [0]})
    results = tmp_path / "results"
    proc = _start(exp, results)
    assert _wait_for(lambda: _running_with_checkpoint(results) is not None, proc)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    (rd,) = run_dirs(results, "tiny").values()
    assert rd.status()["state"] == "interrupted"
    assert rd.last_checkpoint.exists()
    assert not (rd.path / "lock").exists()


def test_two_processes_train_every_run_exactly_once(tiny_experiment, tmp_path):
    exp = tiny_experiment(trainer={"max_epochs": 2},
                          matrix={"model.fusion": ["conv", "unary", "sum"], "seed": [0, 1]})
    results = tmp_path / "results"
    first, second = _start(exp, results), _start(exp, results)
    outs = [p.communicate(timeout=900)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    runs = run_dirs(results, "tiny")
    assert len(runs) == 6
    for rd in runs.values():
        status = rd.status()
        assert status["state"] == "done" and status["attempts"] == 1, status
        assert not (rd.path / "lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tiny_experiment, tmp_path):
    import json

    exp = tiny_experiment(matrix={"model.fusion": ["conv"], "seed": [0]})
    results = tmp_path / "results"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from bench.config import load_experiment
    (run,) = load_experiment(exp).runs
    run_path = results / "tiny" / run.id
    run_path.mkdir(parents=True)
    (run_path / "lock").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    proc = _start(exp, results)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert run_dirs(results, "tiny")[run.id].status()["state"] == "done"
