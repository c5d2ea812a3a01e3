"""Margins and planned looks through the real CLI: every verdict and every stopping reason on a
planted store, the same verdicts in every export, the `--until-resolved` loop's choice of what
to train next, `lesa-bench design`, and (slow) a loop killed and resumed ending as an
uninterrupted one."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.cli import main
from bench.config import load_experiment
from bench.store import RunDir, run_dirs

ROOT = Path(__file__).resolve().parents[1]
SEEDS = list(range(5))
STRATEGIES = ["conv", "sa", "unary", "dynamic"]


def _plant(exp_path: Path, results: Path, values: dict) -> None:
    """values: (fusion, seed) -> test/acc1 (a fraction), stored as the runner stores it."""
    exp = load_experiment(exp_path)
    by_cell = {(r.config["model"]["fusion"], r.config["seed"]): r for r in exp.runs}
    for cell, value in values.items():
        rd = RunDir(results / exp.name / by_cell[cell].id)
        rd.create(by_cell[cell].config)
        rd.write_metrics({"test": {"test/acc1": value}, "costs": {"params": 1000}})
        rd.update_status(state="done")


def _values(rng) -> dict:
    """sa far above conv, unary on conv to a hair, dynamic on conv with a wide seed spread."""
    base = {s: 0.70 + 0.02 * rng.standard_normal() for s in SEEDS}
    out = {}
    for s in SEEDS:
        out[("conv", s)] = base[s]
        out[("sa", s)] = base[s] + 0.20 + 0.001 * rng.standard_normal()
        out[("unary", s)] = base[s] + 0.0005 * rng.standard_normal()
        out[("dynamic", s)] = base[s] + 0.05 * rng.standard_normal()
    return out


@pytest.fixture
def planned(tiny_experiment):
    return tiny_experiment(analysis={"margin": 2.0, "looks": [3, 5]},
                           matrix={"model.fusion": STRATEGIES, "seed": SEEDS})


def _json(exp, results, capsys, *extra) -> dict:
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results), "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _comparisons(report) -> dict:
    return {c["strategy"]: c["comparison"] for c in report["cells"]
            if c["metric"] == "test/acc1" and c["comparison"]}


def test_each_stopping_reason_at_the_first_look(planned, tmp_path, capsys):
    results = tmp_path / "results"
    _plant(planned, results, {k: v for k, v in _values(np.random.default_rng(0)).items()
                              if k[1] < 3})
    found = _comparisons(_json(planned, results, capsys))
    assert (found["sa"]["verdict"], found["sa"]["stop_reason"], found["sa"]["look"]) == \
        ("better", "efficacy", 1)
    assert (found["unary"]["verdict"], found["unary"]["stop_reason"]) == \
        ("equivalent", "equivalence")
    assert (found["dynamic"]["verdict"], found["dynamic"]["stop_reason"]) == \
        ("not resolved", "futility")
    for c in found.values():
        assert c["looks"] == [3, 5] and c["n_pairs"] == 3 and c["p"] < 1
        assert c["method"] == "sequential paired t" and c["bound"] < 0.05
        # the repeated confidence interval of the look: it excludes 0 exactly when p < bound
        assert (c["ci_low"] > 0 or c["ci_high"] < 0) == (c["p"] < c["bound"])


def test_an_open_comparison_asks_for_the_next_look_and_the_last_look_ends_it(
        tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment(analysis={"margin": 0.5, "looks": [3, 5], "futility": 0},
                          matrix={"model.fusion": ["conv", "dynamic"], "seed": SEEDS})
    results = tmp_path / "results"
    rng = np.random.default_rng(3)
    base = {s: 0.7 + 0.02 * rng.standard_normal() for s in SEEDS}
    values = {**{("conv", s): base[s] for s in SEEDS},
              **{("dynamic", s): base[s] + 0.01 + 0.01 * rng.standard_normal() for s in SEEDS}}
    _plant(exp, results, {k: v for k, v in values.items() if k[1] < 3})
    c = _comparisons(_json(exp, results, capsys))["dynamic"]
    assert (c["verdict"], c["stop_reason"], c["look"], c["seeds_needed"]) == \
        ("not resolved", "open", None, 5)
    _plant(exp, results, {k: v for k, v in values.items() if k[1] >= 3})
    c = _comparisons(_json(exp, results, capsys))["dynamic"]
    assert c["look"] == 2 and c["n_pairs"] == 5 and c["stop_reason"] in ("last look",
                                                                         "efficacy")


def test_a_fixed_design_with_a_margin_gives_all_four_verdicts(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment(analysis={"margin": 2.0},
                          matrix={"model.fusion": STRATEGIES + ["binary"], "seed": SEEDS})
    results = tmp_path / "results"
    values = _values(np.random.default_rng(0))
    values.update({("binary", s): values[("conv", s)] - 0.1 - 0.001 * s for s in SEEDS})
    _plant(exp, results, values)
    found = _comparisons(_json(exp, results, capsys))
    assert {n: c["verdict"] for n, c in found.items()} == {
        "sa": "better", "unary": "equivalent", "dynamic": "not resolved", "binary": "worse"}
    assert all(c["look"] is None and c["looks"] is None for c in found.values())
    assert found["unary"]["p_equivalence_adjusted"] < 0.05
    lo, hi = found["unary"]["equivalence_low"], found["unary"]["equivalence_high"]
    assert -2 < lo < hi < 2


def test_a_better_smaller_than_the_margin_says_so(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment(analysis={"margin": 2.0},
                          matrix={"model.fusion": ["conv", "sa"], "seed": SEEDS})
    results = tmp_path / "results"
    _plant(exp, results, {**{("conv", s): 0.7 + 0.01 * s for s in SEEDS},
                          **{("sa", s): 0.705 + 0.01 * s + 0.0001 * s for s in SEEDS}})
    c = _comparisons(_json(exp, results, capsys))["sa"]
    assert c["verdict"] == "better" and c["within_margin"] and c["within_margin_shown"]
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results), "--format", "md"]) == 0
    assert "better, within the margin (shown)" in capsys.readouterr().out


def _row_verdicts(text: str, names) -> dict:
    """The verdict each row shows in a rendered table (terminal, md, latex)."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip(" *{}\\") for c in re.split(r"[│|&]", line)]
        cells = [re.sub(r"textbf\{?", "", c) for c in cells]
        if cells and cells[0] == "" and len(cells) > 1:
            cells = cells[1:]
        if cells and cells[0] in names and cells[0] not in out:
            out[cells[0]] = next((c for c in cells if c.startswith(
                ("better", "worse", "equivalent", "not resolved", "open", "baseline"))), None)
    return out


def test_every_export_carries_the_same_verdicts(planned, tmp_path, capsys):
    results = tmp_path / "results"
    _plant(planned, results, {k: v for k, v in _values(np.random.default_rng(0)).items()
                              if k[1] < 3})
    want = {n: c["verdict"] for n, c in _comparisons(_json(planned, results, capsys)).items()}
    texts = {}
    for fmt in ("md", "latex", "csv"):
        assert main(["report", str(planned), "--results", str(results), "--format", fmt]) == 0
        texts[fmt] = capsys.readouterr().out
    os.environ["COLUMNS"] = "300"
    try:
        assert main(["report", str(planned), "--results", str(results)]) == 0
    finally:
        del os.environ["COLUMNS"]
    texts["terminal"] = capsys.readouterr().out
    html = tmp_path / "r.html"
    assert main(["report", str(planned), "--results", str(results), "--html", str(html)]) == 0
    texts["html"] = re.sub(r"<[^>]+>", " ", html.read_text())
    rows = list(csv.DictReader(io.StringIO(texts["csv"])))
    assert {r["strategy"]: r["verdict"] for r in rows
            if r["metric"] == "test/acc1" and r["verdict"] != "baseline"} == want
    assert {r["strategy"]: r["stop_reason"] for r in rows if r["metric"] == "test/acc1"
            and r["verdict"] != "baseline"} == {"sa": "efficacy", "unary": "equivalence",
                                                "dynamic": "futility"}
    for fmt in ("md", "latex", "terminal"):
        shown = _row_verdicts(texts[fmt], want)
        assert {n: (shown.get(n) or "").split(" (")[0].split(",")[0] for n in want} == want, fmt
    flat = " ".join(texts["html"].split())
    for name, verdict in want.items():
        assert re.search(rf"{name}\b.*?{verdict}", flat), (name, verdict)
    for text in texts.values():
        assert "margin" in text and "[3, 5]" in text


def test_a_fixed_design_says_adding_seeds_breaks_it(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment(matrix={"model.fusion": ["conv", "sa"], "seed": SEEDS})
    results = tmp_path / "results"
    _plant(exp, results, {(f, s): 0.7 + 0.01 * s for f in ("conv", "sa") for s in SEEDS})
    assert main(["report", str(exp), "--results", str(results)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "fixed-n design" in text and "--until-resolved" in text


def test_the_loop_trains_only_the_cells_an_open_comparison_needs(planned, tmp_path):
    from bench.looks import step

    results = tmp_path / "results"
    exp = load_experiment(planned)
    first = step(exp, results)  # nothing stored: the first look of every cell
    assert first.look == 1 and len(first.todo) == 4 * 3
    assert {r.config["seed"] for r in first.todo} == {0, 1, 2}
    values = _values(np.random.default_rng(0))
    values.update({("dynamic", s): values[("conv", s)] + 0.01 + 0.004 * (-1) ** s
                   for s in SEEDS})  # small and steady: neither resolved nor futile at look 1
    _plant(planned, results, {k: v for k, v in values.items() if k[1] < 3})
    second = step(exp, results)
    assert second.look == 2 and second.open == 1
    assert {(r.config["model"]["fusion"], r.config["seed"]) for r in second.todo} == {
        (f, s) for f in ("conv", "dynamic") for s in (3, 4)}
    _plant(planned, results, {k: v for k, v in values.items() if k[1] >= 3
                              and k[0] in ("conv", "dynamic")})
    assert step(exp, results).look is None  # every comparison stopped


def test_design_prints_bounds_and_simulated_rates(planned, tmp_path, capsys):
    argv = ["design", str(planned), "--results", str(tmp_path), "--sd", "1.5", "--format", "json"]
    assert main(argv) == 0
    (d,) = json.loads(capsys.readouterr().out)
    assert d["looks"] == [3, 5] and len(d["bounds"]) == 2 and d["bounds"][0] < d["bounds"][1]
    assert d["m"] == 3 and d["margin"] == 2.0 and d["sd"] == 1.5
    for key in ("fwer", "power", "false_equivalence", "expected_seeds", "fixed_seeds"):
        assert key in d
    assert d["fwer"] <= 0.05 + 3 * d["fwer_mcse"] and d["fixed_seeds"] == 5
    assert main(["design", str(planned), "--results", str(tmp_path)]) == 2  # no --sd, no runs
    assert "--sd" in capsys.readouterr().out


# --- slow: the loop itself, killed and resumed ---------------------------------------------------

LOOP = {"data": {"augment": False}, "trainer": {"max_epochs": 1, "limit_train_batches": 2,
                                                "limit_val_batches": 1, "limit_test_batches": 2},
        "analysis": {"margin": 5.0, "looks": [2, 3]},
        "matrix": {"model.fusion": ["conv", "unary", "dynamic"], "seed": [0, 1, 2]}}


def _loop(exp: Path, results: Path, **popen):
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
                             str(results), "--until-resolved"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


@pytest.mark.slow
def test_a_killed_loop_resumes_at_its_look_and_ends_as_an_uninterrupted_one(tiny_experiment,
                                                                             tmp_path):
    exp = tiny_experiment(**LOOP)
    reference, results = tmp_path / "reference", tmp_path / "results"
    proc = _loop(exp, reference)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "design finished" in out
    proc = _loop(exp, results)
    deadline = time.time() + 600
    while len([d for d in run_dirs(results, "tiny").values()
               if d.status().get("state") == "done"]) < 4:  # inside the first look
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = _loop(exp, results)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    done = {name for name, d in run_dirs(results, "tiny").items()
            if d.status().get("state") == "done"}
    assert done == {name for name, d in run_dirs(reference, "tiny").items()
                    if d.status().get("state") == "done"}
    reports = []
    for folder in (reference, results):
        text = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(exp), "--results",
                               str(folder), "--format", "json"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
        reports.append({(c["strategy"], c["metric"]): c["comparison"]
                        for c in json.loads(text)["cells"] if c["comparison"]})
    assert reports[0] == reports[1]
    assert yaml.safe_load(exp.read_text())["analysis"]["looks"] == [2, 3]


def test_a_failed_run_holds_the_loop_until_retried(planned, tmp_path, monkeypatch):
    """A run the next look reads has failed: the loop says so and stops; with --retry-failed
    it trains that run again first (retrying failures only), then goes on with the look."""
    import io

    from rich.console import Console

    import bench.run.runner as runner
    from bench.looks import run_until_resolved

    results = tmp_path / "results"
    exp = load_experiment(planned)
    values = _values(np.random.default_rng(0))
    _plant(planned, results, {k: v for k, v in values.items() if k[1] < 3})
    failed = next(r for r in exp.runs if (r.config["model"]["fusion"], r.config["seed"])
                  == ("conv", 2))
    RunDir(results / "tiny" / failed.id).update_status(state="failed", error="planted")
    calls = []

    def fake(exp_, runs, results_, console, retry_failed=False):
        calls.append(([r.id for r in runs], retry_failed))
        _plant(planned, results, {(r.config["model"]["fusion"], r.config["seed"]):
                                  values[(r.config["model"]["fusion"], r.config["seed"])]
                                  for r in runs})
        return 0

    monkeypatch.setattr(runner, "run_experiment", fake)
    console = Console(file=io.StringIO(), width=200)
    assert run_until_resolved(exp, results, console) == 1 and not calls
    assert "runs that failed" in console.file.getvalue() and failed.id in console.file.getvalue()
    assert run_until_resolved(exp, results, console, retry_failed=True) == 0
    assert calls[0] == ([failed.id], True)  # the failed run first, as a retry
    assert all(not retry for _, retry in calls[1:])
    assert "design finished" in console.file.getvalue()
