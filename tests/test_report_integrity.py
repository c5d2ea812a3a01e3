"""Failure isolation and report integrity.

A run that raises, diverges (NaN loss) or runs out of memory is marked failed with its reason;
the rest of the matrix completes; the exit code is non-zero with a summary of the failures;
`--retry-failed` re-runs only those. A report over a partial matrix shows n for every mean and
says which cells are incomplete or failed; a run whose stored config no longer matches its id
(or whose metrics are unreadable) is flagged, never mixed into a mean.
"""
from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from bench.cli import main
from bench.config import load_experiment
from bench.store import RunDir, run_dirs
from bench.tasks.classification import ClassificationTask


def _text(capsys) -> str:
    out = capsys.readouterr()
    return " ".join((out.out + out.err).split())


@pytest.fixture
def failing_steps(monkeypatch):
    """Training steps that go wrong by strategy: sum diverges, unary runs out of memory, sa
    raises; conv trains. Returns a function that restores the real training step."""
    original = ClassificationTask.training_step

    def step(self, batch, batch_idx):
        fusion = self.hparams.model["fusion"]
        loss = original(self, batch, batch_idx)
        if fusion == "sum":
            return loss * float("nan")
        if fusion == "unary":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if fusion == "sa":
            raise RuntimeError("something broke in the step")
        return loss

    monkeypatch.setattr(ClassificationTask, "training_step", step)
    return lambda: monkeypatch.setattr(ClassificationTask, "training_step", original)


def test_failures_are_isolated_summarised_and_retried(tiny_experiment, tmp_path, capsys,
                                                      failing_steps):
    exp = tiny_experiment(matrix={"model.fusion": ["conv", "sa", "unary", "sum"], "seed": [0]},
                          trainer={"max_epochs": 2, "limit_train_batches": 2,
                                   "limit_val_batches": 1, "limit_test_batches": 1})
    results = tmp_path / "results"
    assert main(["run", str(exp), "--results", str(results)]) == 1
    text = _text(capsys)
    assert "Traceback" not in text
    runs = {rd.config()["model"]["fusion"]: rd for rd in run_dirs(results, "tiny").values()}
    status = {fusion: rd.status() for fusion, rd in runs.items()}
    assert status["conv"]["state"] == "done"  # the rest of the matrix completed
    assert {f: s["state"] for f, s in status.items() if f != "conv"} == \
        {"sa": "failed", "unary": "failed", "sum": "failed"}
    assert status["sum"]["failure"] == "diverged"
    assert status["sum"]["error"].startswith("diverged: training loss is nan")
    assert status["sum"]["epoch"] == 0  # stopped in its first epoch, not trained to the end
    assert status["unary"]["failure"] == "out_of_memory"
    assert "lower data.batch_size" in status["unary"]["error"]
    assert status["sa"]["failure"] == "error"
    assert status["sa"]["error"] == "RuntimeError: something broke in the step"
    for fusion in ("sa", "unary", "sum"):  # the summary: run id + reason for each failure
        assert f"failed {runs[fusion].id}: {status[fusion]['error']}" in text
        assert "Traceback" in (runs[fusion].path / "error.log").read_text()
    assert "--retry-failed" in text
    # the report: failed cells say so, the failures are listed with their reasons
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "1 failed" in text and f"failed {runs['sum'].id}: diverged" in text
    # a plain re-run trains nothing and still exits non-zero
    assert main(["run", str(exp), "--results", str(results)]) == 1
    assert "0 to run" in _text(capsys)

    failing_steps()  # the cause is fixed
    conv_files = {p: p.read_bytes() for p in runs["conv"].path.rglob("*") if p.is_file()}
    assert main(["run", str(exp), "--results", str(results), "--retry-failed"]) == 0
    text = _text(capsys)
    assert "3 to run" in text
    for fusion in ("sa", "unary", "sum"):
        assert runs[fusion].status()["state"] == "done"
        assert runs[fusion].status()["attempts"] == 2
    assert {p: p.read_bytes() for p in runs["conv"].path.rglob("*") if p.is_file()} == conv_files


# ---------------------------------------------------------------------------------------------
# reports over stored results (no training: run folders as the runner leaves them)


def _store(exp_path, results, outcomes: dict):
    """Write run folders: outcomes maps (fusion, seed) -> acc1 (done) or an error (failed)."""
    exp = load_experiment(exp_path)
    by_cell = {(r.config["model"]["fusion"], r.config["seed"]): r for r in exp.runs}
    dirs = {}
    for cell, outcome in outcomes.items():
        run = by_cell[cell]
        rd = RunDir(results / exp.name / run.id)
        rd.create(run.config)
        if isinstance(outcome, float):
            rd.write_metrics({"test": {"test/acc1": outcome}, "costs": {"params": 1000},
                              "shares": {"unary": 60.0, "binary": 40.0}})
            rd.update_status(state="done")
        else:
            rd.update_status(state="failed", error=outcome, failure="error")
        dirs[cell] = rd
    return dirs


@pytest.fixture
def stored(tiny_experiment, tmp_path):
    exp = tiny_experiment(matrix={"model.fusion": ["conv", "sum"], "seed": [0, 1, 2]})
    results = tmp_path / "results"
    dirs = _store(exp, results, {("conv", 0): 0.5, ("conv", 1): 0.7, ("conv", 2): 0.9,
                                 ("sum", 0): 0.4, ("sum", 1): "RuntimeError: boom"})
    return exp, results, dirs


def _json_report(exp, results, tmp_path) -> dict:
    out = tmp_path / "report.json"
    assert main(["report", str(exp), "--results", str(results), "--format", "json",
                 "-o", str(out)]) == 0
    return json.loads(out.read_text())


def _acc(report) -> dict:
    return {c["strategy"]: c for c in report["cells"] if c["metric"] == "test/acc1"}


def test_partial_matrix_report_shows_n_and_what_is_missing(stored, tmp_path, capsys):
    exp, results, dirs = stored
    report = _json_report(exp, results, tmp_path)
    acc = _acc(report)
    assert acc["conv"]["n"] == 3 and acc["conv"]["mean"] == pytest.approx(70.0)  # in %
    assert acc["sum"]["n"] == 1 and acc["sum"]["states"] == {"done": 1, "failed": 1, "pending": 1}
    assert report["failed"] == [{"run": dirs[("sum", 1)].id, "reason": "RuntimeError: boom",
                                 "failure": "error"}]
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "70.00 ± 20.00 (n=3)" in text
    assert "40.00 (n=1) [1 failed, 1 pending]" in text  # n = 1: no std, no CI
    assert "60.0 ± 0.0 (n=3)" in text and "60.0 ± 0.0 (n=1)" in text  # shares show n too
    assert f"failed {dirs[('sum', 1)].id}: RuntimeError: boom" in text
    # every mean in the rich tables carries its n
    means = re.findall(r"\d+\.\d+ ± \d+\.\d+(?: \(n=\d+\))?", text)
    assert means and all("(n=" in m for m in means)
    assert main(["report", str(exp), "--results", str(results), "--format", "md"]) == 0
    md = _text(capsys)
    assert "[1 failed, 1 pending]" in md and "- failed: " in md


def test_edited_config_is_flagged_and_left_out_of_the_means(stored, tmp_path, capsys):
    exp, results, dirs = stored
    edited = dirs[("conv", 2)]
    config = yaml.safe_load((edited.path / "config.yaml").read_text())
    config["optim"]["lr"] = 0.5  # someone edited the stored config after the run
    (edited.path / "config.yaml").write_text(yaml.safe_dump(config))
    report = _json_report(exp, results, tmp_path)
    acc = _acc(report)
    assert acc["conv"]["n"] == 2 and acc["conv"]["mean"] == pytest.approx(60.0)
    assert acc["conv"]["states"] == {"done": 2, "stale": 1}
    assert report["flagged"] == [{"run": edited.id, "state": "stale",
                                  "why": "its stored config.yaml no longer hashes to its id "
                                         "(edited or damaged)"}]
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "60.00 ± 14.14 (n=2) [1 stale]" in text
    assert f"flagged {edited.id}: its stored config.yaml no longer hashes to its id" in text
    assert "left out of every mean" in text and str(edited.path) in text.replace(" ", " ")
    assert main(["status", str(exp), "--results", str(results)]) == 0
    assert "stale" in _text(capsys)


def test_damaged_config_and_missing_metrics_are_flagged(stored, tmp_path, capsys):
    exp, results, dirs = stored
    (dirs[("conv", 0)].path / "config.yaml").write_text("model: [unclosed\n")
    (dirs[("conv", 1)].path / "metrics.json").write_text("{ truncated")
    report = _json_report(exp, results, tmp_path)
    acc = _acc(report)
    assert acc["conv"]["n"] == 1 and acc["conv"]["mean"] == pytest.approx(90.0)
    assert acc["conv"]["states"] == {"stale": 1, "unreadable": 1, "done": 1}
    assert {f["run"]: f["state"] for f in report["flagged"]} == \
        {dirs[("conv", 0)].id: "stale", dirs[("conv", 1)].id: "unreadable"}
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = _text(capsys)
    assert "metrics.json is missing or unreadable" in text and "Traceback" not in text


def test_folder_whose_id_does_not_match_its_config_is_flagged(stored, tmp_path, capsys):
    # a run folder copied over another one's (the folder name is the id, the config another's)
    exp, results, dirs = stored
    a, b = dirs[("conv", 0)], dirs[("conv", 1)]
    (a.path / "config.yaml").write_bytes((b.path / "config.yaml").read_bytes())
    report = _json_report(exp, results, tmp_path)
    assert [f["run"] for f in report["flagged"]] == [a.id]
    assert _acc(report)["conv"]["n"] == 2


def test_arms_of_an_axis_that_sets_the_strategy_are_rows_compared_paired(tiny_experiment,
                                                                         tmp_path, capsys):
    """An axis whose values set model.fusion with other keys (the release experiment's arms)
    names each row by its strategy and settings; --baseline takes such a name and the report
    pairs the arms by seed (one row per arm, not one comparison-free group per arm)."""
    exp_path = tiny_experiment()
    cfg = yaml.safe_load(exp_path.read_text())
    cfg["matrix"] = {"seed": [0, 1, 2], "arm": [
        {"model.fusion": "conv", "model.width": 1.5}, {"model.fusion": "dynamic"},
        {"model.fusion": "dynamic", "model.static_weight": 0.25}]}
    exp_path.write_text(yaml.safe_dump(cfg))
    exp = load_experiment(exp_path)
    results = tmp_path / "results"
    acc = {"conv,width=1.5": [0.50, 0.60, 0.70], "dynamic": [0.55, 0.66, 0.77],
           "dynamic,static_weight=0.25": [0.51, 0.62, 0.70]}
    for run in exp.runs:
        arm = run.axes["arm"]
        name = ",".join([arm["model.fusion"], *(f"{k.split('.')[-1]}={v}"
                                                for k, v in arm.items() if k != "model.fusion")])
        rd = RunDir(results / exp.name / run.id)
        rd.create(run.config)
        rd.write_metrics({"test": {"test/acc1": acc[name][run.config["seed"]]}})
        rd.update_status(state="done")
    out = tmp_path / "report.json"
    assert main(["report", str(exp_path), "--results", str(results), "--format", "json",
                 "-o", str(out), "--baseline", "conv,width=1.5"]) == 0
    cells = _acc(json.loads(out.read_text()))
    assert set(cells) == set(acc)
    assert cells["conv,width=1.5"]["n"] == 3
    # dynamic - conv is +0.05, +0.06, +0.07 (in %: 5, 6, 7): mean 6, paired
    assert cells["dynamic"]["comparison"]["diff"] == pytest.approx(6.0)
    assert cells["dynamic,static_weight=0.25"]["comparison"]["diff"] == pytest.approx(1.0)
    assert cells["conv,width=1.5"]["is_baseline"]
    # a name that is not a row is refused with the rows' names
    assert main(["report", str(exp_path), "--results", str(results), "--baseline", "conv"]) == 2
    assert "conv,width=1.5" in _text(capsys)
