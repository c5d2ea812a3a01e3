"""The matrix progress of `run --jobs N` (bench/run/progress.py): counts, running runs with their
epoch, an ETA from finished runs of the same task; drawn live in a terminal, as plain lines in a
log file; run numbers that count across workers."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from bench.config import load_experiment
from bench.run.progress import (MatrixProgress, Running, Snapshot, clock, past_durations,
                                runs_snapshot, summary)
from bench.run.workers import EPOCH_LINE
from bench.store import RunDir, now

ROOT = Path(__file__).resolve().parents[1]


def test_eta_schedules_the_pending_runs_over_the_workers():
    snap = Snapshot(total=5, done=2, durations={"digits": [10.0, 10.0]},
                    running=[Running("a", "digits", elapsed_s=4.0)], pending=["digits"] * 2)
    # worker 1 frees at 6 s, worker 2 now: the pending runs end at 10 and 16 s
    assert snap.eta_s(workers=2) == pytest.approx(16.0)
    assert snap.eta_s(workers=1) == pytest.approx(26.0)
    assert Snapshot(total=1, pending=["scenes"]).eta_s(2) is None  # no estimate for the task
    # before any run finished: a running run's epochs (2 of 4 in 30 s: 30 s left)
    early = Snapshot(total=2, running=[Running("a", "digits", 30.0, epoch=2, max_epochs=4)],
                     pending=["digits"])
    assert early.eta_s(workers=1) == pytest.approx(90.0)
    assert (clock(16), clock(150), clock(7300), clock(None)) == ("16s", "2m30s", "2h01m", "?")


@pytest.fixture
def store(tiny_experiment, tmp_path):
    """Four runs: one done (20 s), one failed, one running at epoch 2 of 3, one pending."""
    exp = load_experiment(tiny_experiment(trainer={"max_epochs": 3}))
    root = tmp_path / "results" / "tiny"
    runs = exp.runs
    for run, status in zip(runs, [{"state": "done", "elapsed_s": 20.0},
                                  {"state": "failed", "error": "boom"},
                                  {"state": "running", "started": now(), "epoch": 1,
                                   "max_epochs": 3}]):
        rd = RunDir(root / run.id)
        rd.create(run.config)
        rd.update_status(**status)
    return runs, root


def test_the_snapshot_reads_each_runs_status(store):
    runs, root = store
    snap = runs_snapshot(runs, root)
    assert (snap.total, snap.done, snap.failed, len(snap.running), snap.pending) == \
        (4, 1, 1, 1, ["digits/resnet_tiny/3"])
    assert snap.running[0].label == "dynamic digits s0" and snap.running[0].epoch == 1
    line = summary(snap, workers=2)
    assert line.startswith("1/4 done, 1 failed, 1 running (dynamic digits s0 epoch 2/3); ETA ")
    # a selection without a finished run (run --only ...) takes the ETA from the experiment's
    # other finished runs of the same dataset, backbone and epochs
    past = past_durations(root, {r.id for r in runs[1:]})
    assert past == {"digits/resnet_tiny/3": [20.0]}
    assert runs_snapshot(runs[1:], root).durations == {}
    assert runs_snapshot(runs[1:], root, past).durations == past


def test_progress_in_a_terminal_is_a_live_display(store):
    runs, root = store
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with MatrixProgress(console, "tiny", lambda: runs_snapshot(runs, root), 2) as progress:
        progress.print("[1/4] conv digits seed 0  starting")
    text = out.getvalue()
    assert "\x1b[" in text  # cursor control: a live display, not lines
    last = text.split("\x1b[2K")[-3:]  # the final frame's lines
    frame = " ".join(last)
    assert "2/4" in frame and "1 failed" in frame and "ETA" in frame, frame
    assert "dynamic digits s0" in frame and "epoch 2/3" in frame, frame
    assert "[1/4] conv digits seed 0  starting" in text


def test_progress_in_a_log_file_is_plain_lines(store):
    runs, root = store
    out = io.StringIO()
    console = Console(file=out, width=160)
    with MatrixProgress(console, "tiny", lambda: runs_snapshot(runs, root), 2) as progress:
        progress.refresh()  # no change: no new line
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert lines[0].startswith("[tiny] 1/4 done, 1 failed, 1 running (dynamic digits s0 epoch "
                               "2/3); ETA ")
    assert len(lines) == 1  # a line when the counts change (or every 30 s), not on each poll


def test_epoch_lines_stay_in_the_worker_logs():
    assert EPOCH_LINE.match("  [3/28] conv     digits       seed 1 epoch 2/5 val/acc1=0.9")
    assert EPOCH_LINE.match("  [w1] conv/digits #3 epoch 1/5 batch 10/31")
    assert not EPOCH_LINE.match("[3/28] conv     digits       seed 1  starting conv-x")
    assert not EPOCH_LINE.match("  [3/28] conv     digits       seed 1 done in 3.1s")


def _jobs_command(exp: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "run", str(exp), "--results", str(results),
            "--jobs", "2"]


def _check_numbering(text: str, total: int) -> None:
    """Each number names one run and each run one number, across both workers (a worker also
    prints the runs it then finds done or locked by the other)."""
    starts = re.findall(r"\[(\d+)/(\d+)\] \S+ +\S+ +seed \d+ +(?:starting|resuming) (\S+)", text)
    by_number = {}
    for number, of, run_id in starts:
        assert int(of) == total
        assert by_number.setdefault(int(number), run_id) == run_id, starts
    assert sorted(by_number) == list(range(1, total + 1)), starts
    assert len(set(by_number.values())) == total


@pytest.mark.slow
def test_run_jobs_in_a_log_file(tiny_experiment, tmp_path):
    # runs of several seconds: the parent reads the store once a second (workers.POLL_S), and it
    # must see a state with some runs done and some not
    exp = tiny_experiment(trainer={"max_epochs": 6, "limit_train_batches": 10})
    results = tmp_path / "results"
    log = tmp_path / "run.log"
    with open(log, "w") as f:
        code = subprocess.run(_jobs_command(exp, results), cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT, timeout=600).returncode
    text = log.read_text()
    assert code == 0, text
    _check_numbering(text, 4)  # one numbering across the two workers
    assert re.search(r"\[tiny\] 0/4 done, 0 failed, \d running", text), text
    assert "[tiny] 4/4 done, 0 failed, 0 running" in text
    assert re.search(r"\[tiny\] [1-3]/4 done, .*; ETA \d+(m\d\ds|s)", text), text
    assert not [line for line in text.splitlines() if EPOCH_LINE.match(line)]
    worker_logs = sorted((results / "tiny" / "workers").glob("worker-*.log"))
    assert len(worker_logs) == 2
    assert any(EPOCH_LINE.match(line) for w in worker_logs for line in w.read_text().splitlines())


@pytest.mark.slow
def test_run_jobs_in_a_terminal(tiny_experiment, tmp_path):
    exp = tiny_experiment(trainer={"max_epochs": 2})
    results = tmp_path / "results"
    master, slave = pty.openpty()
    proc = subprocess.Popen(_jobs_command(exp, results), cwd=ROOT, stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, "COLUMNS": "140", "TERM": "xterm"})
    os.close(slave)
    chunks, deadline = [], time.time() + 600
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "\x1b[" in text and "━" in text  # rich's live bar
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    _check_numbering(plain, 4)
    assert "4/4" in plain and "ETA" in plain
    assert re.search(r"digits s\d +.*epoch \d/2", plain), plain[-3000:]


def test_a_sweeps_progress_counts_trials_against_the_budget(tmp_path):
    import optuna
    from optuna.trial import TrialState, create_trial

    from bench.run.progress import trials_snapshot

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        study.add_trial(create_trial(state=state,
                                     value=0.5 if state == TrialState.COMPLETE else None))
    running = study.ask()
    rd = RunDir(tmp_path / "conv-digits-s0-abc")
    rd.path.mkdir()
    rd.update_status(state="running", started=now(), epoch=1, max_epochs=4)
    running.set_user_attr("run_id", rd.id)
    snap = trials_snapshot({"conv/digits": study}, {"conv/digits": 6}, tmp_path)
    assert (snap.total, snap.done, snap.failed) == (6, 3, 1)
    assert [r.label for r in snap.running] == [f"conv/digits #{running.number}"]
    assert snap.running[0].epoch == 1 and snap.running[0].max_epochs == 4
    assert snap.pending == ["conv/digits"] * 2  # 6 - 3 done - 1 running
    assert summary(snap, 2).startswith(f"3/6 done, 1 failed, 1 running (conv/digits "
                                       f"#{running.number} epoch 2/4); ETA ")
