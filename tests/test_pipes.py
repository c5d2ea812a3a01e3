"""Losing the output's reader never fails a run (bench/run/pipes.py): `run | head -2`, a Ctrl-C
that also ended the `tee` the output went through, the parent of `run --jobs` killed. The run
stops as for Ctrl-C (saved, interrupted, exit 130) and a plain re-run resumes it; other commands
drop the rest of their output. And the lines of a stop say what was saved."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import killpoints
from bench.run import pipes
from bench.store import RunDir, run_dirs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY, wait_for  # noqa: E402

ONE_RUN = {**TINY, "trainer": {"max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 1,
                               "limit_test_batches": 1},
           "matrix": {"model.fusion": ["conv"], "seed": [0]}}


# --- the guard itself, on a pipe of this process: fast ---------------------------------------


@pytest.fixture
def closed_pipe():
    """A text stream on a pipe whose reader is closed, on a spare descriptor."""
    read, write = os.pipe()
    os.close(read)
    stream = io.TextIOWrapper(os.fdopen(write, "wb", buffering=0), write_through=True)
    yield stream, write
    stream.close()


def test_a_write_to_a_pipe_without_reader_is_dropped(closed_pipe, monkeypatch):
    stream, fd = closed_pipe
    with pytest.raises(BrokenPipeError):  # what failed runs before
        stream.write("x")
    monkeypatch.setattr(pipes._State, "identity", {fd: pipes._identity(fd)})
    guarded = pipes.GuardedStream(stream, fd)
    assert guarded.write("a line\n") == len("a line\n")
    guarded.flush()
    guarded.write("more\n")  # the descriptor now points at /dev/null
    assert os.path.samestat(os.fstat(fd), os.stat(os.devnull))


def test_a_closed_stdout_stops_a_training_command(monkeypatch):
    """A closed stdout asks the run to stop as SIGTERM does, once; in other commands not."""
    stopped = []
    monkeypatch.setattr(pipes, "request_stop", lambda: stopped.append(True))
    monkeypatch.setattr(pipes._State, "stop", True)
    monkeypatch.setattr(pipes._State, "stdout_closed", False)
    assert not pipes.output_closed()
    pipes._closed()
    pipes._closed()  # once
    assert stopped == [True] and pipes.output_closed()
    monkeypatch.setattr(pipes._State, "stop", False)  # a command that does not train
    monkeypatch.setattr(pipes._State, "stdout_closed", False)
    pipes._closed()
    assert stopped == [True] and pipes.output_closed()


def test_main_gives_its_streams_back(tmp_path):
    from bench.cli import main

    before = sys.stdout, sys.stderr
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(ONE_RUN))
    assert main(["run", str(tmp_path / "tiny.yaml"), "--results", str(tmp_path / "r"),
                 "--dry-run"]) == 0
    assert (sys.stdout, sys.stderr) == before


# --- real commands ------------------------------------------------------------------------------


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _own_group() -> None:
    os.setpgid(0, 0)
    _sigint_as_in_a_terminal()


def _start(exp: Path, results: Path, *extra: str, own_group=False, env=None) -> subprocess.Popen:
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                             str(results), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_own_group if own_group
                            else _sigint_as_in_a_terminal)


def _experiment(tmp_path: Path, **config) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**ONE_RUN, **config}))
    return path


def _rerun(exp: Path, results: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                           str(results)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_run_piped_into_head_stops_as_interrupted_and_resumes(tmp_path):
    """`lesa-bench run EXP | head -2`: head exits after two lines; the run's next line finds no
    reader. Before: `failed: BrokenPipeError`, exit 1, and a re-run refused it."""
    exp, results = _experiment(tmp_path), tmp_path / "results"
    proc = _start(exp, results)
    lines = [proc.stdout.readline() for _ in range(2)]  # the header and "starting"
    assert b"starting" in lines[1], lines
    proc.stdout.close()  # head exits
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 130, err
    (rd,) = run_dirs(results, "tiny").values()
    status = rd.status()
    assert status["state"] == "interrupted", status
    assert rd.last_checkpoint.exists() and not (rd.path / "lock").exists()
    assert "standard output closed" in err and "Traceback" not in err, err
    # what the run still printed went to stderr: the line that says it was saved
    assert f"interrupted: {rd.id} saved; run the same command to resume it" in err, err
    out = _rerun(exp, results)
    assert f"resuming {rd.id}" in out and rd.status()["state"] == "done", out
    assert rd.status()["attempts"] == 2


def test_report_piped_into_head_drops_the_rest(tmp_path):
    """A command that does not train finishes; the rest of its output goes nowhere."""
    exp, results = _experiment(tmp_path, matrix={"model.fusion": ["conv"],
                                                 "seed": list(range(400))}), tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                             str(results), "--dry-run"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == "", err


@pytest.mark.slow
def test_ctrl_c_with_the_output_pipe_closed(tmp_path):
    """`run 2>&1 | tee log`, Ctrl-C: the terminal's SIGINT ends tee too, so the stop handler's
    line to stderr (and every line after) finds no reader."""
    exp, results = _experiment(tmp_path, trainer={**ONE_RUN["trainer"], "max_epochs": 4,
                                                  "limit_train_batches": 6}), tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                             str(results)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_own_group,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def training():
        dirs = list(run_dirs(results, "tiny").values())
        return dirs and dirs[0].last_checkpoint.exists() and dirs[0].status().get("epoch", 0) >= 1

    assert wait_for(training, proc)
    proc.stdout.close()  # tee is gone
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    (rd,) = run_dirs(results, "tiny").values()
    assert rd.status()["state"] == "interrupted", rd.status()
    assert not (rd.path / "lock").exists()
    assert "resuming" in _rerun(exp, results) and rd.status()["state"] == "done"


@pytest.mark.slow
def test_killing_the_jobs_parent_stops_its_workers_as_interrupted(tmp_path):
    """kill -9 of `run --jobs 2`: each worker gets SIGTERM (PR_SET_PDEATHSIG), saves and marks
    its run interrupted, instead of training on unseen and failing at its next print."""
    exp = _experiment(tmp_path, trainer={**ONE_RUN["trainer"], "max_epochs": 4,
                                         "limit_train_batches": 6},
                      matrix={"model.fusion": ["conv", "sum"], "seed": [0]})
    results = tmp_path / "r"
    proc = _start(exp, results, "--jobs", "2", own_group=True)

    def both_training():
        dirs = list(run_dirs(results, "tiny").values())
        return len(dirs) == 2 and all(rd.status().get("state") == "running"
                                      and rd.last_checkpoint.exists() for rd in dirs)

    assert wait_for(both_training, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    dirs = list(run_dirs(results, "tiny").values())
    deadline = time.time() + 120
    while time.time() < deadline and any(rd.status()["state"] == "running" or
                                         (rd.path / "lock").exists() for rd in dirs):
        time.sleep(0.2)
    assert [rd.status()["state"] for rd in dirs] == ["interrupted", "interrupted"]
    out = _rerun(exp, results)
    assert out.count("resuming") == 2, out
    assert [rd.status()["state"] for rd in dirs] == ["done", "done"]


def test_the_line_of_a_stop_says_what_was_saved(tmp_path):
    import torch

    from bench.run.runner import interrupted_line

    rd = RunDir(tmp_path / "conv-digits-s0-abc")
    assert interrupted_line(rd.id, rd, saved=False) == (
        f"interrupted: {rd.id} before its first checkpoint; run the same command to start it "
        f"again")
    rd.checkpoints.mkdir(parents=True)
    torch.save({"epoch": 0, "global_step": 7}, rd.last_checkpoint)
    assert interrupted_line(rd.id, rd, saved=True) == (
        f"interrupted: {rd.id} saved; run the same command to resume it")
    assert interrupted_line(rd.id, rd, saved=False) == (
        f"interrupted: {rd.id} not saved at the stop: it resumes from its last checkpoint "
        f"(step 7); run the same command to resume it")


@pytest.mark.slow
def test_a_second_ctrl_c_does_not_say_saved(tmp_path):
    """The first Ctrl-C in a validation waits for its end; the second stops at once, saving
    nothing: the line says where the resume starts, not "saved"."""
    exp, results = _experiment(tmp_path, trainer={**ONE_RUN["trainer"], "limit_val_batches": 2,
                                                  "checkpoint_every_n_steps": 2}), tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                           str(results)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=killpoints.env("val:1:INT,val:2:INT"),
                          preexec_fn=_sigint_as_in_a_terminal)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out
    (rd,) = run_dirs(results, "tiny").values()
    assert rd.status()["state"] == "interrupted"
    assert "saved;" not in out, out
    assert re.search(rf"interrupted: {rd.id} not saved at the stop: it resumes from its last "
                     rf"checkpoint \(step 2\); run the same command to resume it", out), out


@pytest.mark.slow
def test_the_jobs_parent_prints_the_summary_once(tmp_path):
    """Each worker prints its runs' lines; the header, the totals and the failed runs are the
    parent's, once (before, every worker printed its own header and totals)."""
    exp = _experiment(tmp_path, trainer={**ONE_RUN["trainer"], "max_epochs": 1},
                      matrix={"model.fusion": ["conv", "sum"], "seed": [0]})
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                           str(tmp_path / "r"), "--jobs", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert out.count("done in") == 2, out
    assert "runs in" not in out and "to run ->" not in out, out  # the workers' header, totals
    assert out.count("all workers finished") == 1, out
