"""Interruptions: SIGKILL mid-training resumes from the checkpoint; Ctrl-C saves and says so."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import killpoints
from bench.store import run_dirs
from conftest import wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _sigint_as_in_a_terminal() -> None:
    # a shell starts background jobs with SIGINT ignored, and children inherit that (Python then
    # installs no KeyboardInterrupt handler): `bash .ci/run &` made the Ctrl-C test fail
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _own_terminal_group() -> None:
    # the run and its workers in a process group of their own, as a terminal's foreground job
    os.setpgid(0, 0)
    _sigint_as_in_a_terminal()


def _start(exp: Path, results: Path, *extra: str, own_group: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                             str(results), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_own_terminal_group if own_group
                            else _sigint_as_in_a_terminal)


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
    assert wait_for(lambda: any(rd.status().get("state") == "done"
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
    assert wait_for(lambda: _running_with_checkpoint(results) is not None, proc)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    (rd,) = run_dirs(results, "tiny").values()
    assert rd.status()["state"] == "interrupted"
    assert rd.last_checkpoint.exists()
    assert not (rd.path / "lock").exists()


@pytest.mark.parametrize("second_args", [(), ("--shard", "0/2")], ids=["same", "overlapping-shard"])
def test_two_processes_train_every_run_exactly_once(tiny_experiment, tmp_path, second_args):
    """Two `run` processes on one matrix (or the whole matrix and one shard of it, which
    overlap): each run is trained exactly once, both processes finish cleanly."""
    exp = tiny_experiment(trainer={"max_epochs": 2},
                          matrix={"model.fusion": ["conv", "unary", "sum"], "seed": [0, 1]})
    results = tmp_path / "results"
    first, second = _start(exp, results), _start(exp, results, *second_args)
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


# --- exact resume: killed anywhere, the run ends bit-identical to an uninterrupted one ---------

EXACT = dict(data={"augment": True},
             trainer={"max_epochs": 3, "limit_train_batches": 6, "limit_val_batches": 2,
                      "checkpoint_every_n_steps": 2},
             matrix={"model.fusion": ["dynamic"], "seed": [0]})


def _run_cli(exp: Path, results: Path, kill_at: str | None = None, timeout=300):
    env = {**killpoints.env(kill_at), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                           str(results)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _final(results: Path):
    import torch

    (rd,) = run_dirs(results, "tiny").values()
    saved = {name: torch.load(rd.checkpoints / name, map_location="cpu", weights_only=False)
             for name in ("last.ckpt", "best.ckpt")}
    # last.ckpt holds the final step, whether or not the last epoch improved the monitor
    assert saved["last.ckpt"]["global_step"] == 18  # 3 epochs x 6 batches
    return rd, {name: ckpt["state_dict"] for name, ckpt in saved.items()}, rd.metrics()


def _assert_identical(results: Path, reference: Path):
    import torch

    rd, weights, metrics = _final(results)
    _, ref_weights, ref_metrics = _final(reference)
    for name, state in weights.items():
        assert state.keys() == ref_weights[name].keys()
        for key, tensor in state.items():
            assert torch.equal(tensor, ref_weights[name][key]), f"{name}: {key} differs"
    assert metrics["test"] == ref_metrics["test"]
    assert metrics["best_val"] == ref_metrics["best_val"]
    assert metrics["epochs"] == ref_metrics["epochs"] == 3
    # the training log continues across the resumes: every row as in the uninterrupted run
    # (but the wall-clock speed), train/loss_epoch over whole epochs
    rows, ref_rows = (_log_rows(r) for r in (rd, run_dirs(reference, "tiny")[rd.id]))
    assert rows == ref_rows and any(r["train/loss_epoch"] for r in rows)
    return rd


def _log_rows(rd) -> list[dict]:
    import csv

    with open(rd.path / "logs" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "train/images_per_s"}
                for row in csv.DictReader(f)]


@pytest.fixture
def reference_run(tiny_experiment, tmp_path):
    exp = tiny_experiment(**EXACT)
    reference = tmp_path / "reference"
    code, out = _run_cli(exp, reference)
    assert code == 0, out
    return exp, reference


def test_killed_anywhere_resumes_to_identical_weights_and_metrics(reference_run, tmp_path):
    exp, reference = reference_run
    results = tmp_path / "results"
    # each process is SIGKILLed at its point, the next one resumes; steps 1-6 are epoch 1,
    # 7-12 epoch 2, 13-18 epoch 3; validation batches count per process
    kills = ["step:3",    # mid-epoch 1, one step after the step-2 checkpoint
             "val:1",     # in epoch 1's validation (resumes from step 4, replays 5-6)
             "save:2",    # mid-write of a checkpoint: the temp file is left, last.ckpt intact
             "step:11",   # mid-epoch 2
             "val:2",     # the second validation batch of epoch 2 or 3
             None]
    for i, kill_at in enumerate(kills):
        code, out = _run_cli(exp, results, kill_at)
        if kill_at:
            assert code == -9, f"{kill_at}: {out}"
        else:
            assert code == 0, out
    rd = _assert_identical(results, reference)
    status = rd.status()
    assert status["state"] == "done" and status["attempts"] == len(kills)
    assert status["resumed_from"]["global_step"] % 6 != 0  # last resumed mid-epoch
    assert not list(rd.checkpoints.glob("*.unreadable"))
    assert not list(rd.checkpoints.glob(".*.tmp"))  # the temp of the killed save is gone


def test_truncated_last_checkpoint_falls_back_and_says_so(reference_run, tmp_path):
    exp, reference = reference_run
    results = tmp_path / "results"
    code, out = _run_cli(exp, results, "step:9")
    assert code == -9, out
    (rd,) = run_dirs(results, "tiny").values()
    last = rd.last_checkpoint
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a bad copy, disk full...
    code, out = _run_cli(exp, results)
    assert code == 0, out
    assert "last.ckpt is unreadable" in " ".join(out.split())
    assert "resuming from last.prev.ckpt" in out
    status = rd.status()
    assert "last.ckpt" in status["checkpoint_fallback"]
    assert status["resumed_from"]["checkpoint"] == "last.prev.ckpt"
    assert (rd.checkpoints / "last.ckpt.unreadable").exists()
    _assert_identical(results, reference)


def test_checkpoint_of_another_config_is_refused(tiny_experiment, tmp_path):
    exp = tiny_experiment(trainer={"max_epochs": 1},
                          matrix={"model.fusion": ["conv", "sum"], "seed": [0]})
    results = tmp_path / "results"
    code, out = _run_cli(exp, results)
    assert code == 0, out
    runs = {rd.config()["model"]["fusion"]: rd for rd in run_dirs(results, "tiny").values()}
    # conv's checkpoint lands in sum's folder (a bad copy, a renamed folder); sum is re-run
    runs["conv"].last_checkpoint.replace(runs["sum"].last_checkpoint)
    runs["sum"].update_status(state="interrupted")
    before = {p: p.stat().st_mtime_ns for p in runs["conv"].path.rglob("*")}
    code, out = _run_cli(exp, results)
    text = " ".join(out.split())
    assert code == 1, out
    assert f"{runs['sum'].last_checkpoint}" in text and "another run" in text
    assert "model.fusion" in text and "Move it out of" in text
    assert runs["sum"].status()["state"] == "failed"
    assert runs["sum"].last_checkpoint.exists()  # refused, not deleted
    assert {p: p.stat().st_mtime_ns for p in runs["conv"].path.rglob("*")} == before


# --- DDP on CPU: Lightning's `ddp` re-runs the command for rank 1, which trains only rank 0's run

def test_ddp_on_cpu_finishes_resumes_and_only_rank_0_writes(tiny_experiment, tmp_path):
    settings = {**EXACT, "trainer": {**EXACT["trainer"], "devices": 2, "strategy": "ddp"},
                "matrix": {"model.fusion": ["dynamic", "conv"], "seed": [0]}}
    exp = tiny_experiment(**settings)
    reference, results = tmp_path / "reference", tmp_path / "results"
    code, out = _run_cli(exp, reference)
    assert code == 0, out
    assert out.count("epoch 3/3 val/") == 2  # one line per run: rank 1 prints nothing
    for rd in run_dirs(reference, "tiny").values():
        status, metrics = rd.status(), rd.metrics()
        assert status["state"] == "done" and status["attempts"] == 1
        assert 0 <= metrics["test"]["test/acc1"] <= 1 and metrics["epochs"] == 3
        assert not (rd.path / "lock").exists()
    # every rank SIGKILLs itself mid-epoch 2 of the first run, then rank 0 mid-save
    for kill_at in ("step:9", "save:3"):
        code, out = _run_cli(exp, results, kill_at)
        assert code == -9, f"{kill_at}: {out}"
    code, out = _run_cli(exp, results)
    assert code == 0, out
    ref = {rd.config()["model"]["fusion"]: rd for rd in run_dirs(reference, "tiny").values()}
    for rd in run_dirs(results, "tiny").values():
        fusion = rd.config()["model"]["fusion"]
        status = rd.status()
        assert status["state"] == "done", status
        assert rd.metrics()["test"] == ref[fusion].metrics()["test"]
    code, out = _run_cli(exp, results)
    assert code == 0 and "0 to run" in out, out


@pytest.mark.parametrize("how", ["kill", "kill-INT", "ctrl-c"])
def test_a_stop_of_run_jobs_reaches_its_workers_once(tiny_experiment, tmp_path, how):
    """`kill PID` or `kill -INT PID` of `run --jobs 2` reach the parent alone: it passes the stop
    on (before, the workers trained on to the end). A terminal's Ctrl-C reaches the whole group,
    and the parent's SIGTERM comes second (the workers ignore it: it must not cut their save
    short). Either way each worker saves, marks its run interrupted and stops."""
    exp = tiny_experiment(trainer={"max_epochs": 30, "limit_train_batches": 6},
                          matrix={"model.fusion": ["conv", "sum"], "seed": [0]})
    results = tmp_path / "results"
    proc = _start(exp, results, "--jobs", "2", own_group=how == "ctrl-c")

    def both_training():  # a run stopped before its fit began has nothing to save
        dirs = run_dirs(results, "tiny").values()
        return len(dirs) == 2 and all(
            rd.status().get("state") == "running" and rd.last_checkpoint.exists() for rd in dirs)

    assert wait_for(both_training, proc)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM if how == "kill" else signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    dirs = run_dirs(results, "tiny").values()
    states = [rd.status()["state"] for rd in dirs]
    assert states == ["interrupted", "interrupted"], (states, out)
    for rd in dirs:
        assert not (rd.path / "lock").exists()
        assert rd.last_checkpoint.exists()
    assert out.count("saved; run the same command to resume it") == 2, out
