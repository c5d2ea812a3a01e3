"""Exact resume after every kind of stop, and run writes that fail cleanly.

A run stopped by SIGKILL, Ctrl-C (SIGINT) or SIGTERM inside a training step, in validation or
while a checkpoint is written, then resumed, ends with the weights, optimizer state,
metrics.json and logs/metrics.csv of a run never stopped. A checkpoint write that fails (disk
full) fails the run with one message naming the file, in status.json and error.log, and leaves
no temp file.

Stops are sent from inside the run at a chosen point (LESA_BENCH_TEST_KILL_AT, see
bench/resume/checkpoints.py): "optim:N" is inside training step N, after its backward pass and
before its optimizer step. The csv is compared without train/images_per_s, a wall-clock speed.
"""
from __future__ import annotations

import csv
import errno
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import killpoints
from bench.config import load_experiment
from bench.store import RunDir, StoreWriteError, write_atomic

ROOT = Path(__file__).resolve().parents[1]
# conftest's TINY, 2 epochs x 4 steps, a checkpoint every 2 steps, every step logged
SMALL = {
    "name": "tiny", "seed": 0,
    "data": {"name": "digits", "image_size": 16, "batch_size": 32, "augment": True},
    "model": {"backbone": "resnet_tiny", "heads": 2, "max_size": 16},
    "optim": {"lr": 0.1, "warmup_epochs": 0},
    "trainer": {"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2,
                "limit_test_batches": 1, "checkpoint_every_n_steps": 2, "log_every_n_steps": 1},
    "matrix": {"model.fusion": ["dynamic"], "seed": [0]},
}
WALL_CLOCK = ("train/images_per_s",)
DETERMINISTIC = ("test", "best_val", "epochs", "shares", "shares_init", "val_shares")


def _run_dir(results: Path) -> RunDir:
    (path,) = [p for p in (results / "tiny").iterdir() if p.is_dir()]
    return RunDir(path)


def _csv_rows(rd: RunDir) -> list[dict]:
    with open(rd.path / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in WALL_CLOCK:
            row.pop(key, None)
    return rows


def _assert_same_run(results: Path, reference: Path, steps: int = 8) -> RunDir:
    rd, ref = _run_dir(results), _run_dir(reference)
    ckpt, ref_ckpt = (torch.load(r.last_checkpoint, map_location="cpu", weights_only=False)
                      for r in (rd, ref))
    assert ckpt["global_step"] == ref_ckpt["global_step"] == steps
    assert ckpt["state_dict"].keys() == ref_ckpt["state_dict"].keys()
    for key, tensor in ckpt["state_dict"].items():
        assert torch.equal(tensor, ref_ckpt["state_dict"][key]), f"weight {key} differs"
    (opt,), (ref_opt,) = ckpt["optimizer_states"], ref_ckpt["optimizer_states"]
    assert opt["state"].keys() == ref_opt["state"].keys() and opt["state"]
    for index, state in opt["state"].items():
        for name, value in state.items():
            other = ref_opt["state"][index][name]
            same = torch.equal(value, other) if torch.is_tensor(value) else value == other
            assert same, f"optimizer state {index}.{name} differs"
    metrics, ref_metrics = rd.metrics(), ref.metrics()
    for key in DETERMINISTIC:
        assert metrics[key] == ref_metrics[key], key
    rows, ref_rows = _csv_rows(rd), _csv_rows(ref)
    assert len(rows) == len(ref_rows)
    for i, (row, ref_row) in enumerate(zip(rows, ref_rows)):
        assert row == ref_row, f"metrics.csv row {i + 2} differs"
    assert any(r.get("train/loss_epoch") for r in rows)  # the epoch aggregate is compared
    assert not list(rd.path.rglob("*.tmp"))
    return rd


# --- in this process: a fast representative -----------------------------------------------


def _execute(exp: Path, results: Path, monkeypatch, stop_at: str | None = None) -> str:
    """Run the experiment's one run as `lesa-bench run` would, in this process (stopped at
    `stop_at`: tests/killpoints.py; the stops are gone again when it returns)."""
    from bench.resume.stops import RunInterrupted, install_stop_signals
    from bench.run.runner import execute

    (run,) = load_experiment(exp).runs
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if stop_at:
            killpoints.install(stop_at, monkeypatch.setattr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        install_stop_signals()
        return str(execute(run, RunDir(results / "tiny" / run.id), Console(file=io.StringIO())))
    except RunInterrupted:
        return "interrupted"
    finally:
        monkeypatch.undo()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, with what it printed."""
    import contextlib

    tmp = tmp_path_factory.mktemp("reference")
    exp = _write_experiment(tmp)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        assert _execute(exp, tmp / "results", mp) == "done"
    return exp, tmp / "results", out.getvalue()


def _write_experiment(folder: Path) -> Path:
    import yaml

    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def test_ctrl_c_inside_a_training_step_resumes_exactly(reference, tmp_path, monkeypatch):
    """Ctrl-C inside step 3: the step finishes, its row is logged, the run saves there and is
    marked interrupted; the resumed run ends as the uninterrupted one (weights, optimizer,
    metrics.json, every csv row: the rows before the stop are kept, train/loss_epoch averages
    the whole epoch)."""
    exp, ref_results, _ = reference
    results = tmp_path / "results"
    assert _execute(exp, results, monkeypatch, "optim:3:INT") == "interrupted"
    rd = _run_dir(results)
    assert rd.status()["state"] == "interrupted"
    saved = torch.load(rd.last_checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3  # the step in flight finished, nothing after it
    assert len(_csv_rows(rd)) == 1 + 3  # the cost row and steps 1-3
    assert _execute(exp, results, monkeypatch) == "done"
    assert rd.status()["resumed_from"]["global_step"] == 3
    _assert_same_run(results, ref_results)


def test_epoch_line_shows_that_epochs_validation(reference):
    """The per-epoch console line shows the epoch's own validation values, not the previous
    epoch's (val/unary_share is logged by a callback, after the line was printed)."""
    _, ref_results, printed = reference
    val_rows = [r for r in _csv_rows(_run_dir(ref_results)) if r["val/acc1"]]
    lines = [line for line in printed.splitlines() if " val/" in line]
    assert len(lines) == len(val_rows) == 2
    for line, row in zip(lines, val_rows):
        for key in ("val/acc1", "val/loss", "val/unary_share"):
            assert f"{key}={float(row[key]):.4g}" in line, (key, line)


def _fail_with_a_full_disk(exp: Path, results: Path, monkeypatch) -> RunDir:
    """Run until best.ckpt is written at epoch 1's end, where the disk is full."""
    import bench.resume.checkpoints as checkpoints

    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if "best" in getattr(f, "name", ""):
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(checkpoints.torch, "save", disk_full)
        assert _execute(exp, results, monkeypatch) == "failed"
    return _run_dir(results)


def test_disk_full_during_a_save_fails_cleanly(reference, tmp_path, monkeypatch):
    """ENOSPC while best.ckpt is written: the run is failed with one reason naming the file,
    in status.json and error.log; no temp file is left; last.ckpt survives."""
    rd = _fail_with_a_full_disk(reference[0], tmp_path / "results", monkeypatch)
    status = rd.status()
    assert status["state"] == "failed"
    assert "No space left on device" in status["error"]
    assert str(rd.checkpoints / "best.ckpt") in status["error"]
    log = (rd.path / "error.log").read_text()
    assert log.count("Traceback") == 1 and "No space left on device" in log
    assert not list(rd.path.rglob("*.tmp")) and not (rd.checkpoints / "best.ckpt").exists()
    assert torch.load(rd.last_checkpoint, weights_only=False)["global_step"] == 2


@pytest.mark.slow
def test_a_run_failed_by_a_full_disk_resumes_exactly(reference, tmp_path, monkeypatch):
    exp, ref_results, _ = reference
    results = tmp_path / "results"
    rd = _fail_with_a_full_disk(exp, results, monkeypatch)
    assert _execute(exp, results, monkeypatch) == "done"  # as `--retry-failed` does
    assert rd.status()["resumed_from"]["global_step"] == 2
    _assert_same_run(results, ref_results)


def test_a_failed_status_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import bench.store as store

    target = tmp_path / "status.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(StoreWriteError, match=f"could not write {target}: No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


# --- end to end: every stop at every kind of point, through the CLI ------------------------


def _cli(exp: Path, results: Path, stop_at: str | None = None) -> tuple[int, str]:
    env = {**killpoints.env(stop_at), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                           str(results)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                        signal.SIG_DFL))
    return proc.returncode, proc.stdout + proc.stderr


POINTS = {"training-step": "optim:3", "validation": "val:2", "save": "save:2",
          "epoch-2-step-1": "optim:5", "last-validation": "val:3", "test": "test:1"}
CASES = [(where, sig) for where in ("training-step", "validation", "save")
         for sig in ("KILL", "INT", "TERM")] + [
    ("epoch-2-step-1", "KILL"),  # resumes from epoch 1's end, before its train/loss_epoch row
    ("last-validation", "INT"), ("test", "TERM")]


@pytest.mark.slow
@pytest.mark.parametrize("where, sig", CASES, ids=[f"{w}-{s}" for w, s in CASES])
def test_any_stop_anywhere_resumes_exactly(reference, tmp_path, where, sig):
    """save:2 is the write of best.ckpt at epoch 1's end, val:2 epoch 1's last validation batch,
    val:3 the final epoch's first: a stop there or in the test resumes after the last epoch."""
    point = POINTS[where]
    exp, ref_results, _ = reference
    results = tmp_path / "results"
    code, out = _cli(exp, results, f"{point}:{sig}")
    assert code == (-9 if sig == "KILL" else 130), out
    assert "Traceback" not in out
    rd = _run_dir(results)
    assert rd.status()["state"] == ("running" if sig == "KILL" else "interrupted")
    code, out = _cli(exp, results)
    assert code == 0, out
    _assert_same_run(results, ref_results)
    assert rd.status()["attempts"] == 2


def test_a_second_ctrl_c_stops_at_once_and_resumes_exactly(reference, tmp_path, monkeypatch):
    """The first Ctrl-C in a validation waits for its end; a second one stops at once, saving
    nothing: the run is interrupted at its last checkpoint (step 2's: epoch 1's end is saved
    after its validation) and its resume ends as the uninterrupted run."""
    exp, ref_results, _ = reference
    results = tmp_path / "results"
    assert _execute(exp, results, monkeypatch, "val:1:INT,val:2:INT") == "interrupted"
    rd = _run_dir(results)
    assert rd.status()["state"] == "interrupted"
    saved = torch.load(rd.last_checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2 and not (rd.checkpoints / "best.ckpt").exists()
    assert _execute(exp, results, monkeypatch) == "done"
    _assert_same_run(results, ref_results)
