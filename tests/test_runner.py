"""End to end: a tiny matrix trains, reports every cell, and a re-run trains nothing."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import RunDir, RunState, run_dirs

ROOT = Path(__file__).resolve().parents[1]


def _statuses(results, name):
    return {rid: (rd.path / "status.json").stat().st_mtime_ns
            for rid, rd in run_dirs(results, name).items()}


def test_tiny_matrix_end_to_end(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment()
    results = tmp_path / "results"
    assert main(["run", str(exp), "--results", str(results)]) == 0
    runs = run_dirs(results, "tiny")
    assert len(runs) == 4
    for rd in runs.values():
        status = rd.status()
        assert status["state"] == "done", status
        assert (rd.checkpoints / "last.ckpt").exists() and (rd.checkpoints / "best.ckpt").exists()
        assert (rd.path / "logs" / "metrics.csv").exists()
        metrics = rd.metrics()
        assert 0.0 <= metrics["test"]["test/acc1"] <= 1.0
        assert metrics["costs"]["params"] > 0 and metrics["costs"]["gflops"] > 0
        if rd.config()["model"]["fusion"] == "dynamic":
            assert 0 < metrics["shares"]["unary"] < 100
            assert set(metrics["shares"]["per_stage"]) == {"layer3", "layer4"}
        else:
            assert metrics["shares"] is None  # conv has no attention, and no fake 0 share

    out = tmp_path / "report.json"
    assert main(["report", str(exp), "--results", str(results), "--format", "json",
                 "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    acc = {c["strategy"]: c for c in report["cells"] if c["metric"] == "test/acc1"}
    assert set(acc) == {"conv", "dynamic"}
    for cell in acc.values():
        assert cell["n"] == 2 and cell["states"] == {"done": 2}
        assert abs(cell["mean"] - sum(cell["values"]) / 2) < 1e-12

    before = _statuses(results, "tiny")
    capsys.readouterr()
    assert main(["run", str(exp), "--results", str(results)]) == 0
    assert "0 to run" in capsys.readouterr().out
    assert _statuses(results, "tiny") == before  # nothing re-trained, nothing rewritten

    # the rich tables and the exports render, with the cells the JSON has
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = capsys.readouterr().out
    assert "ablation" in text and "(n=2)" in text and "unary / binary" in text
    for fmt in ("md", "csv", "latex"):
        assert main(["report", str(exp), "--results", str(results), "--format", fmt]) == 0
        assert "dynamic" in capsys.readouterr().out
    png = tmp_path / "ablation.png"
    assert main(["report", str(exp), "--results", str(results), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # status shows every run done, with its headline metric
    assert main(["status", str(exp), "--results", str(results)]) == 0
    assert capsys.readouterr().out.count("done") >= 4


def test_failed_run_is_recorded_and_the_matrix_goes_on(tiny_experiment, tmp_path, capsys,
                                                        monkeypatch):
    # heads=3 cannot split the tiny backbone's channels: every attention run fails in its
    # constructor, conv (no attention) still trains. The model check before any run refuses
    # it (tests/test_preflight.py): switched off here, so that the run itself fails
    monkeypatch.setattr("bench.train.preflight.check_models", lambda *args, **kwargs: None)
    exp = tiny_experiment(model={"heads": 3}, matrix={"model.fusion": ["sa", "conv"]})
    results = tmp_path / "results"
    assert main(["run", str(exp), "--results", str(results)]) == 1
    states = {rd.config()["model"]["fusion"]: rd.status() for rd in run_dirs(results, "tiny").values()}
    assert states["conv"]["state"] == "done"
    assert states["sa"]["state"] == "failed"
    assert "divisible" in states["sa"]["error"]
    assert "failed" in capsys.readouterr().out
    # a plain re-run leaves failed runs alone (exit code still says not everything succeeded)
    assert main(["run", str(exp), "--results", str(results)]) == 1
    assert "--retry-failed" in capsys.readouterr().out


def test_report_marks_missing_cells_instead_of_zero(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment(matrix={"model.fusion": ["conv", "sum"], "seed": [0]})
    results = tmp_path / "results"
    assert main(["run", str(exp), "--results", str(results), "--only", "model.fusion=conv"]) == 0
    out = tmp_path / "r.json"
    assert main(["report", str(exp), "--results", str(results), "--format", "json",
                 "-o", str(out)]) == 0
    cells = {c["strategy"]: c for c in json.loads(out.read_text())["cells"]
             if c["metric"] == "test/acc1"}
    assert cells["sum"]["mean"] is None and cells["sum"]["n"] == 0
    assert cells["sum"]["states"] == {"pending": 1}
    assert main(["report", str(exp), "--results", str(results), "--format", "md"]) == 0
    md = capsys.readouterr().out
    sum_row = next(line for line in md.splitlines() if line.startswith("| sum"))
    assert "1 pending" in sum_row and "0.00" not in sum_row


def test_unwritable_results_directory(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["run", str(exp), "--results", str(blocker / "results")]) == 2
    text = " ".join(capsys.readouterr().out.split())
    assert "not writable" in text and "--results" in text and "Traceback" not in text


def test_runs_record_their_environment_and_the_report_names_it(tiny_experiment, tmp_path,
                                                                capsys):
    import torch

    from lesa import fused_cpu

    exp = tiny_experiment(matrix={"model.fusion": ["conv"], "seed": [0, 1]})
    results = tmp_path / "results"
    assert main(["run", str(exp), "--results", str(results)]) == 0
    runs = list(run_dirs(results, "tiny").values())
    for rd in runs:
        env = rd.metrics()["environment"]
        assert env["torch"] == torch.__version__
        assert env["threads"] == torch.get_num_threads()
        assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert env["fused_attention"] == fused_cpu.status()
        assert env["device"]
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"environment: torch {torch.__version__}" in text and "mixed" not in text

    # one run from another thread count: the report says the table mixes two environments
    metrics = runs[1].metrics()
    metrics["environment"]["threads"] = 64
    runs[1].write_metrics(metrics)
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "mixed environments: these runs come from 2" in text
    assert "64 threads: 1 run(s)" in text
    out = tmp_path / "r.json"
    assert main(["report", str(exp), "--results", str(results), "--format", "json",
                 "-o", str(out)]) == 0
    envs = json.loads(out.read_text())["environments"]
    assert sorted(len(e["runs"]) for e in envs) == [1, 1]
    assert {runs[1].id} in [set(e["runs"]) for e in envs]

    # a run stored before environments were recorded counts as an environment of its own
    del metrics["environment"]
    runs[1].write_metrics(metrics)
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "mixed environments" in text and "not recorded (run before" in text


_SIGNALS_SCRIPT = r"""
import os, signal, sys
from bench.resume.stops import Terminated, install_stop_signals, saving_after_stop

def send(name):
    if name == "saving":  # what SaveOnInterrupt calls before it saves
        saving_after_stop()
        return "saving"
    try:
        os.kill(os.getpid(), getattr(signal, name))
        signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary: the handler has run
        return "nothing"
    except Terminated:
        return "Terminated"
    except KeyboardInterrupt:
        return "KeyboardInterrupt"

if sys.argv[1] == "ignore-sigint":  # as in a background job of a non-interactive shell
    signal.signal(signal.SIGINT, signal.SIG_IGN)
install_stop_signals()
print(", ".join(send(name) for name in sys.argv[2:]))
"""


@pytest.mark.parametrize("sigint, sent, seen", [
    # a terminal's Ctrl-C, the run saves, the SIGTERM the parent passes on is ignored
    ("default", "SIGINT saving SIGTERM", "KeyboardInterrupt, saving, nothing"),
    # `kill PID`, the run saves, a second `kill PID` is ignored
    ("default", "SIGTERM saving SIGTERM", "Terminated, saving, nothing"),
    # an interrupt that never reached a save (Python swallows one raised in a finalizer): the
    # parent's SIGTERM still stops the worker
    ("default", "SIGINT SIGTERM", "KeyboardInterrupt, Terminated"),
    # a background job of a non-interactive shell: SIGINT stays ignored, SIGTERM still stops
    ("ignore-sigint", "SIGINT SIGTERM", "nothing, Terminated"),
    # the terminal closed: a stop like SIGTERM, not a kill
    ("default", "SIGHUP saving SIGHUP", "Terminated, saving, nothing"),
])
def test_a_saving_process_ignores_the_stop_its_parent_passes_on(sigint, sent, seen):
    """A `run --jobs` / `sweep --workers` worker hit by a terminal's Ctrl-C is sent a SIGTERM by
    its parent as well: once the worker saves, it must not cut the save short; before, it must
    still stop the worker."""
    def defaults():  # a shell started under nohup passes SIGHUP on ignored, which is respected
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)

    proc = subprocess.run([sys.executable, "-c", _SIGNALS_SCRIPT, sigint, *sent.split()],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          preexec_fn=defaults)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == seen


_HELD_SCRIPT = r"""
import os, signal
from bench.resume.stops import Terminated, install_stop_signals, stops_held

install_stop_signals()
steps = []
try:
    with stops_held():  # what every checkpoint write runs in
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary: the handler has run
        steps.append("write finished")
    steps.append("not stopped")
except Terminated:
    steps.append("Terminated after the write")
print(", ".join(steps))
"""


def test_a_stop_during_a_checkpoint_write_waits_for_the_write():
    """Raised inside torch.save, a stop became the zip writer's RuntimeError and failed the run:
    it is held until the write is done, then acts."""
    proc = subprocess.run([sys.executable, "-c", _HELD_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "write finished, Terminated after the write"


def test_run_states_are_stored_and_printed_as_their_values(tmp_path):
    """status.json holds the same strings as before the enum, and output shows "done", never
    "RunState.DONE"; a state read back from JSON (a plain str) equals and finds its member."""
    assert str(RunState.DONE) == f"{RunState.DONE}" == "%s" % RunState.DONE == "done"
    assert f"{RunState.FAILED:<8}|" == "failed  |"
    assert {"pruned": 1}[RunState.PRUNED] == 1 and "interrupted" == RunState.INTERRUPTED
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    assert run.status()["state"] == "pending"
    run.update_status(state=RunState.INTERRUPTED)
    assert json.loads((run.path / "status.json").read_text())["state"] == "interrupted"
    assert run.status()["state"] == RunState.INTERRUPTED
