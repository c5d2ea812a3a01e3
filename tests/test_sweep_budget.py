"""Issue 37 through the real `sweep` and `report` commands, with planted training: every trial's
run is written by a stand-in for the runner (its validation value a planted function of the
parameters, its training seconds planted per strategy), so the budget loop, repeats, resume and
the report are exercised in seconds. The statistics themselves are tests/test_budget.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.cli import main
from bench.resume.stops import RunInterrupted
from bench.store import RunDir, RunState

SPACE = {"optim.lr": {"low": 0.01, "high": 1.0, "log": True}}
SECONDS = {"conv": 10.0, "dynamic": 20.0}  # planted training time per trial


def _u(config) -> float:
    return math.log10(config["optim"]["lr"] / 0.01) / 2  # the draw, mapped to [0, 1]


def planted(config) -> float:
    """conv: always about 0.6; dynamic: usually poor, sometimes far better (its curve starts
    below conv's and ends above it)."""
    u = _u(config)
    return 0.60 + 0.02 * u if config["model"]["fusion"] == "conv" else 0.20 + 0.75 * u ** 3


class FakeRunner:
    """Stands in for bench.run.runner.execute: writes a finished run with the planted value as
    its best validation value, a test value, and the planted seconds."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls: list[str] = []
        self.interrupt_at = interrupt_at

    def __call__(self, run, run_dir: RunDir, console, label="", extra_callbacks=(), **_):
        self.calls.append(run.id)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise RunInterrupted()
        run_dir.create(run.config)
        value = planted(run.config)
        run_dir.write_metrics({"best_val": {"val/acc1": value}, "test": {"test/acc1": value},
                               "epochs": 1})
        run_dir.update_status(state=RunState.DONE, attempts=1,
                              elapsed_s=SECONDS[run.config["model"]["fusion"]])
        return RunState.DONE


@pytest.fixture
def fake(monkeypatch):
    def install(**kw) -> FakeRunner:
        runner = FakeRunner(**kw)
        monkeypatch.setattr("bench.sweep.objective.execute", runner)
        # Optuna collects garbage after each trial: 0.5 s with torch loaded, nothing to free here
        monkeypatch.setattr("gc.collect", lambda *args: 0)
        return runner
    return install


def _studies(results: Path, name: str = "tiny") -> dict:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(results / name / "sweep.journal")))
    return {n: optuna.load_study(study_name=n, storage=storage)
            for n in optuna.get_all_study_names(storage)}


def _counted(study) -> list:
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def _exp(tiny_experiment, **sweep):
    return tiny_experiment(matrix={"model.fusion": ["conv", "dynamic"], "seed": [0, 1, 2, 3]},
                           sweep={"params": SPACE, "pruner": "none",
                                  "sampler": {"name": "random", "seed": 5}, **sweep})


def _json(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_hours_budget_stops_each_study_at_its_hours(tiny_experiment, tmp_path, fake, capsys):
    # 36 s of training per study: conv's 10 s trials start while 30 s < 36 (4 trials, 40 s),
    # dynamic's 20 s ones while 20 s < 36 (2 trials, 40 s); at most one trial past the hours
    exp = _exp(tiny_experiment, budget={"hours": 0.01})
    results = tmp_path / "results"
    fake()
    assert main(["sweep", str(exp), "--results", str(results)]) == 0
    studies = _studies(results)
    conv, dynamic = studies["tiny/conv/digits/metrics=v2"], studies["tiny/dynamic/digits/metrics=v2"]
    assert len(_counted(conv)) == 4 and len(_counted(dynamic)) == 2
    assert [t.user_attrs["train_s"] for t in _counted(dynamic)] == [20.0, 20.0]
    assert conv.user_attrs["budget"] == {"hours": 0.01}
    assert "0.0111/0.01" in capsys.readouterr().out  # hours used of the budget, per study
    # at its hours, the same command trains nothing more; --trials replaces the budget
    assert main(["sweep", str(exp), "--results", str(results)]) == 0
    assert len(_counted(_studies(results)["tiny/conv/digits/metrics=v2"])) == 4
    assert main(["sweep", str(exp), "--results", str(results), "--trials", "5",
                 "--only", "model.fusion=conv"]) == 0
    assert len(_counted(_studies(results)["tiny/conv/digits/metrics=v2"])) == 5
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results), "--sweep", "--format",
                 "json"]) == 0
    report = _json(capsys)
    hours = {s["study"]: s["hours"] for s in report["studies"]}
    assert hours == {"conv/digits/metrics=v2": pytest.approx(50 / 3600),
                     "dynamic/digits/metrics=v2": pytest.approx(40 / 3600)}


def test_repeats_draw_independently_reuse_runs_and_resume(tiny_experiment, tmp_path, fake):
    exp = _exp(tiny_experiment, trials=3, enqueue=[{"optim.lr": 0.1}])
    results = tmp_path / "results"
    runner = fake()
    argv = ["sweep", str(exp), "--results", str(results), "--only", "model.fusion=conv"]
    assert main([*argv, "--repeat", "2"]) == 0
    studies = _studies(results)
    assert set(studies) == {"tiny/conv/digits/metrics=v2", "tiny/conv/digits/metrics=v2/repeat=1"}
    first, second = studies["tiny/conv/digits/metrics=v2"], studies["tiny/conv/digits/metrics=v2/repeat=1"]
    assert (first.user_attrs["sampler_seed"], second.user_attrs["sampler_seed"]) == (5, 6)
    assert (first.user_attrs["repeat"], second.user_attrs["repeat"]) == (0, 1)
    drawn = [[t.params["optim.lr"] for t in s.trials if not t.user_attrs.get("enqueued")]
             for s in (first, second)]
    assert len(drawn[0]) == len(drawn[1]) == 2 and not set(drawn[0]) & set(drawn[1])
    # the enqueued point is the same config in both repeats: one run, trained once
    same = {t.user_attrs["run_id"] for s in (first, second) for t in s.trials
            if t.user_attrs.get("enqueued")}
    assert len(same) == 1 and runner.calls.count(next(iter(same))) == 1
    assert len(runner.calls) == 5

    # a third repeat joins; the first two are at their budget and untouched
    assert main([*argv, "--repeat", "3"]) == 0
    studies = _studies(results)
    assert len(studies) == 3 and studies["tiny/conv/digits/metrics=v2/repeat=2"].user_attrs[
        "sampler_seed"] == 7
    assert [len(s.trials) for s in studies.values()] == [3, 3, 3]

    # a larger budget, stopped by Ctrl-C in the second new trial: the same command continues
    # the same three studies, and the stopped trial's parameters run again in its own study
    runner = fake(interrupt_at=2)
    assert main([*argv, "--repeat", "3", "--trials", "4"]) == 130
    stopped = [(n, t) for n, s in _studies(results).items() for t in s.trials
               if t.user_attrs.get("interrupted")]
    assert len(stopped) == 1
    runner = fake()
    assert main([*argv, "--repeat", "3", "--trials", "4"]) == 0
    studies = _studies(results)
    assert len(studies) == 3 and all(len(_counted(s)) == 4 for s in studies.values())
    name, trial = stopped[0]
    retry = [t for t in studies[name].trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(retry) == 1 and retry[0].params == trial.params
    assert retry[0].state.name == "COMPLETE"
    assert retry[0].user_attrs["run_id"] == trial.user_attrs["run_id"]


def test_report_sweep_draws_curves_crossing_and_every_export(tiny_experiment, tmp_path, fake,
                                                              capsys):
    exp = _exp(tiny_experiment, trials=12)
    results = tmp_path / "results"
    fake()
    assert main(["sweep", str(exp), "--results", str(results), "--repeat", "2"]) == 0
    capsys.readouterr()
    base = ["report", str(exp), "--results", str(results), "--sweep"]
    assert main([*base, "--format", "json"]) == 0
    report = _json(capsys)
    (group,) = report["groups"]
    assert group["group"] == "digits/metrics=v2" and group["kinds"] == {"conv": "expected",
                                                             "dynamic": "expected"}
    conv = group["curves"]["trials"]["conv"]
    assert len(conv["expected_best"]) == 24 and conv["budgets"][:3] == [1, 2, 3]  # pooled
    assert conv["low"][0] <= conv["expected_best"][0] <= conv["high"][0]
    assert group["table_budgets"]["trials"] == [1, 2, 4, 8, 16, 24]
    (pair,) = group["crossings"]["trials"]
    assert pair["crosses"] and pair["leader"][0] == "conv" and pair["leader"][-1] == "dynamic"
    assert pair["sentence"].startswith("conv leads up to")
    # the time axis: dynamic's trials take twice as long, so its curve is drawn in hours
    seconds = group["curves"]["seconds"]
    assert seconds["dynamic"]["expected_best"][0] is None  # less than one of its trials
    assert set(group["tuning_variance"]) == {"conv", "dynamic"}
    assert group["tuning_variance"]["conv"]["k"] == 2
    assert report["tuned_vs_default"] is None  # no run with the best parameters yet

    for fmt, marker in (("md", "| strategy | trials | kind | 1 trial |"), ("csv", "crossing,"),
                        ("latex", r"\begin{tabular}")):
        assert main([*base, "--format", fmt]) == 0
        assert marker in capsys.readouterr().out, fmt
    plot, page = tmp_path / "budget.png", tmp_path / "sweep.html"
    assert main([*base, "--plot", str(plot), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "conv vs dynamic: conv leads up to" in out and "tuning variance" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    text = page.read_text()
    assert "data:image/png;base64" in text and "expected best" in text and "<script" not in text


def test_tpe_gives_the_observed_curve_and_says_so(tiny_experiment, tmp_path, fake, capsys):
    exp = _exp(tiny_experiment, trials=4, sampler={"name": "tpe", "seed": 0})
    results = tmp_path / "results"
    fake()
    assert main(["sweep", str(exp), "--results", str(results)]) == 0
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results), "--sweep", "--format",
                 "json"]) == 0
    (group,) = _json(capsys)["groups"]
    conv = group["curves"]["trials"]["conv"]
    assert conv["kind"] == "observed" and "observed_best" in conv and "expected_best" not in conv
    assert all(x is None for x in conv["low"])
    assert "(observed best so far: one run per study, no band)" in \
        group["crossings"]["trials"][0]["sentence"]


def test_tuned_vs_default_pairs_by_seed_and_leaves_the_sweep_seed_out(tiny_experiment,
                                                                      tmp_path, fake, capsys):
    from rich.console import Console

    from bench.config import load_experiment
    from bench.sweep import apply_best_params

    exp = _exp(tiny_experiment, trials=3)
    results = tmp_path / "results"
    fake()
    assert main(["sweep", str(exp), "--results", str(results)]) == 0
    default = load_experiment(exp)
    tuned = apply_best_params(default, results, Console(file=open("/dev/null", "w")))
    planted_test = {}  # seed-paired: tuned conv is +3 points, dynamic +1 + seed noise
    for plain, best in zip(default.runs, tuned.runs):
        fusion, seed = plain.config["model"]["fusion"], plain.config["seed"]
        for run, gain in ((plain, 0.0), (best, 0.03 if fusion == "conv" else 0.01)):
            rd = RunDir(results / "tiny" / run.id)
            if seed == 0 and run is best:
                continue  # the best trial's own run, written by the sweep
            rd.create(run.config)
            value = 0.5 + 0.02 * seed + gain + (0.002 * seed * seed if run is best else 0)
            planted_test[(fusion, seed, run is best)] = value
            rd.write_metrics({"test": {"test/acc1": value}, "epochs": 1})
            rd.update_status(state=RunState.DONE, attempts=1, elapsed_s=1.0)
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results), "--sweep", "--format",
                 "json"]) == 0
    tuned_view = _json(capsys)["tuned_vs_default"]
    assert tuned_view["left_out_seed"] == 0 and tuned_view["baseline"] == "conv"
    rows = {r["strategy"]: r for r in tuned_view["columns"][0]["rows"]}
    conv = rows["conv"]["tuned_vs_default"]
    assert rows["conv"]["tuned"]["seeds"] == [1, 2, 3]
    want = [planted_test[("conv", s, True)] - planted_test[("conv", s, False)] for s in (1, 2, 3)]
    assert conv["n_pairs"] == 3 and conv["diff"] == pytest.approx(100 * sum(want) / 3)
    assert rows["conv"]["is_baseline"] and rows["dynamic"]["vs_tuned_baseline"]["diff"] == \
        pytest.approx(-2.0)
    # report --best-params: the standard tables, then the comparison
    assert main(["report", str(exp), "--results", str(results), "--best-params"]) == 0
    out = capsys.readouterr().out
    assert "tuned vs default settings" in out and "seed 0 left out" in out
    assert out.index("ablation") < out.index("tuned vs default settings")
