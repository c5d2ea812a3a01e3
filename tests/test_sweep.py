"""Sweeps: the sweep section's errors, budgets per strategy, resume after a kill, workers, pruning.

Studies are read back from the journal with Optuna itself, so the tests check what a dashboard
(or another worker) would see, not what the sweep printed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import ConfigError, experiment_from_dict, load_experiment
from bench.store import RunDir, run_dirs

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"optim.lr": {"low": 0.01, "high": 0.5, "log": True},
         "optim.weight_decay": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
         "optim.warmup_epochs": [0, 1]}
# smaller still than the shared tiny experiment: a trial is a few seconds on 2 busy cores
SMALL = {"trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
                     "limit_test_batches": 1}}


def _studies(results: Path, name: str) -> dict:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(results / name / "sweep.journal")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def _states(study) -> dict:
    counts: dict = {}
    for t in study.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


# --- the sweep: section -----------------------------------------------------------------------
BASE = {"name": "x", "matrix": {"model.fusion": ["conv", "sa"], "seed": [3, 4]}}


def _exp(**sweep):
    return experiment_from_dict({**BASE, "sweep": {"params": SPACE, **sweep}})


def test_sweep_section_is_normalised():
    sweep = _exp().sweep
    assert sweep["params"]["optim.lr"] == {"type": "float", "low": 0.01, "high": 0.5,
                                           "log": True, "step": None}
    assert sweep["params"]["optim.warmup_epochs"] == {"type": "categorical", "choices": [0, 1]}
    assert sweep["metric"] == "val/acc1" and sweep["direction"] == "maximize"
    assert sweep["sampler"] == {"name": "tpe"} and sweep["pruner"] == {"name": "median"}
    assert sweep["trials"] == 20
    heads = _exp(params={"model.heads": {"low": 1, "high": 4}}).sweep["params"]["model.heads"]
    assert heads["type"] == "int" and heads["step"] == 1  # ints on an int key: an int range
    grid = _exp(sampler="grid", trials=50, params={"optim.lr": [0.1, 0.2],
                                                   "model.heads": {"low": 1, "high": 2}}).sweep
    assert grid["trials"] == 4  # capped at the grid's size
    # budgets: `trials: N` is short for `budget: {trials: N}`; hours alone, or both
    assert sweep["budget"] == {"trials": 20} and _exp(trials=3).sweep["budget"] == {"trials": 3}
    hours = _exp(budget={"hours": 1.5}).sweep
    assert hours["budget"] == {"hours": 1.5} and hours["trials"] is None
    both = _exp(sampler="grid", budget={"hours": 2, "trials": 50},
                params={"optim.lr": [0.1, 0.2]}).sweep
    assert both["budget"] == {"trials": 2, "hours": 2}


@pytest.mark.parametrize("sweep, message", [
    ({"params": {"optim.lr": {"low": 0.01, "high": 0.5, "logg": True}}},
     "sweep.params.optim.lr.logg: unknown key (did you mean 'log'?)"),
    ({"params": {"optim.lrr": [0.1]}}, "sweep.params.optim.lrr: not a config key (did you mean "
                                       "'optim.lr'?)"),
    ({"params": {"optim": [0.1]}}, "sweep.params.optim: a section, not a key"),
    ({"params": {"model.fusion": ["conv"]}}, "sweep.params.model.fusion: is a matrix axis"),
    ({"params": {"seed": [1, 2]}}, "sweep.params.seed: not tunable"),
    ({"params": {"optim.lr": {"low": 0.0, "high": 1.0, "log": True}}},
     "sweep.params.optim.lr: a log-uniform range needs low > 0, got 0.0"),
    ({"params": {"optim.lr": {"low": 0.5, "high": 0.1}}}, "low (0.5) must not be above high"),
    ({"params": {"optim.lr": {"type": "flaot", "low": 0.1, "high": 0.5}}},
     "sweep.params.optim.lr.type: 'flaot' is not allowed (did you mean 'float'?)"),
    ({"params": {"model.heads": {"type": "float", "low": 1, "high": 4}}},
     "sweep.params.model.heads: 1.0 does not make a valid run: model.heads: expected int"),
    ({"params": {"optim.lr": [-0.1, 0.1]}}, "optim.lr: must be positive, got -0.1"),
    ({"params": SPACE, "sampler": "tpee"},
     "sweep.sampler.name: 'tpe"),
    ({"params": SPACE, "pruner": {"name": "median", "n_startup": 2}},
     "sweep.pruner.n_startup: not an option of the median pruner (did you mean "
     "'n_startup_trials'?)"),
    ({"params": SPACE, "trials": 0}, "sweep.trials: expected a positive int"),
    ({"params": SPACE, "metric": "test/acc1"}, "sweep.metric: 'test/acc1' is not allowed; the "
                                               "objective is the best value of the task's "
                                               "checkpoint metric: val/acc1"),
    ({"params": SPACE, "direction": "minimize"}, "sweep.direction: 'minimize', but val/acc1 is "
                                                  "maximised"),
    ({"params": SPACE, "sampler": "grid"}, "sweep.params.optim.lr: the grid sampler needs"),
    ({"params": SPACE, "enqueue": [{"optim.lr": 5.0}]}, "sweep.enqueue[0].optim.lr: 5.0 is "
                                                         "outside its range"),
    ({"params": SPACE, "sweeps": 3}, "sweep.sweeps: unknown key"),
    ({"params": SPACE, "trials": 5, "budget": {"hours": 1}},
     "sweep.trials and sweep.budget: give one of them (`trials: 5` is short for `budget: "
     "{trials: 5}`)"),
    ({"params": SPACE, "budget": {"hourz": 1}},
     "sweep.budget.hourz: unknown key (did you mean 'hours'?)"),
    ({"params": SPACE, "budget": {"hours": -1}},
     "sweep.budget.hours: expected a positive number (training hours per study), got -1"),
    ({"params": SPACE, "budget": {"hours": float("nan")}}, "sweep.budget.hours: expected a"),
    ({"params": SPACE, "budget": {"trials": 2.5}}, "sweep.budget.trials: expected a positive int"),
    ({"params": SPACE, "budget": 5}, "sweep.budget: expected a mapping with trials and/or hours"),
])
def test_bad_sweep_sections_name_key_value_and_choices(sweep, message):
    with pytest.raises(ConfigError) as err:
        experiment_from_dict({**BASE, "sweep": sweep})
    assert message in str(err.value)


def test_sweep_command_without_a_section_is_a_clean_error(tiny_experiment, tmp_path, capsys):
    exp = tiny_experiment()
    assert main(["sweep", str(exp), "--results", str(tmp_path / "r")]) == 2
    assert "no `sweep:` section" in capsys.readouterr().out


def test_example_sweep_file_loads_and_names_one_study_per_strategy():
    from bench.sweep import study_cells

    exp = load_experiment(ROOT / "experiments" / "sweep_quick.yaml")
    cells = study_cells(exp)
    assert [c.name for c in cells] == [f"sweep_quick/{f}/digits/metrics=v2" for f in
                                       ("conv", "sa", "binary", "unary", "softmax", "sum",
                                        "dynamic")]
    assert all(c.base.config["seed"] == 0 and len(c.runs) == 2 for c in cells)
    assert exp.sweep["params"]["optim.lr"]["log"] is True


# --- sweeps that train ------------------------------------------------------------------------
def test_six_trial_sweep_runs_trials_as_runs_and_resumes_to_the_budget(tiny_experiment, tmp_path,
                                                                        capsys):
    # two strategies x 3 trials: each study gets the same budget, every trial is a run
    exp = tiny_experiment(**SMALL, matrix={"model.fusion": ["conv", "sum"], "seed": [0, 1]},
                          sweep={"trials": 3, "pruner": "none", "params": SPACE,
                                 "sampler": {"name": "tpe", "seed": 1}})
    results = tmp_path / "results"
    t0 = time.time()
    assert main(["sweep", str(exp), "--results", str(results)]) == 0
    elapsed = time.time() - t0
    studies = _studies(results, "tiny")
    assert set(studies) == {"tiny/conv/digits/metrics=v2", "tiny/sum/digits/metrics=v2"}
    runs = run_dirs(results, "tiny")
    for name, study in studies.items():
        assert _states(study) == {"COMPLETE": 3}
        assert sorted(t.number for t in study.trials) == [0, 1, 2]
        for trial in study.trials:
            rd = runs[trial.user_attrs["run_id"]]
            assert rd.status()["state"] == "done"
            config = rd.config()
            assert config["seed"] == 0 and config["model"]["fusion"] == name.split("/")[1]
            assert config["optim"]["lr"] == trial.params["optim.lr"]
            # the objective is the run's best validation value, never a test metric
            assert trial.value == rd.metrics()["best_val"]["val/acc1"]
    assert len(runs) == 6
    out = capsys.readouterr().out
    assert "2 studies x 3 trials" in out

    # the same command again: every study is at its budget, nothing new
    assert main(["sweep", str(exp), "--results", str(results)]) == 0
    assert all(len(s.trials) == 3 for s in _studies(results, "tiny").values())
    # a larger --trials continues to that total, not that many more
    assert main(["sweep", str(exp), "--results", str(results), "--trials", "4",
                 "--only", "model.fusion=conv"]) == 0
    assert _states(_studies(results, "tiny")["tiny/conv/digits/metrics=v2"]) == {"COMPLETE": 4}
    capsys.readouterr()

    assert main(["report", str(exp), "--results", str(results), "--sweep"]) == 0
    report = capsys.readouterr().out
    assert "conv/digits/metrics=v2" in report and "sum/digits/metrics=v2" in report and "4/4" in report
    best = {n: s.best_trial for n, s in _studies(results, "tiny").items()}
    for trial in best.values():
        assert trial.user_attrs["run_id"] in report
    assert "optuna-dashboard" in report

    # --best-params: every seed of a strategy gets its best parameters; seed 0 is the best
    # trial's own run, already done
    from bench.sweep import apply_best_params
    from rich.console import Console

    tuned = apply_best_params(load_experiment(exp), results, Console(file=open(os.devnull, "w")))
    for run in tuned.runs:
        trial = best[f"tiny/{run.config['model']['fusion']}/digits/metrics=v2"]
        assert run.config["optim"]["lr"] == trial.params["optim.lr"]
        if run.config["seed"] == 0:
            assert run.id == trial.user_attrs["run_id"]
    assert main(["run", str(exp), "--results", str(results), "--best-params", "--dry-run"]) == 0
    assert "done: 2" in capsys.readouterr().out
    # status and report see the same tuned matrix: the best trials' runs are its seed-0 cells,
    # while the file's own (untuned) matrix has nothing done
    assert main(["status", str(exp), "--results", str(results), "--best-params"]) == 0
    assert "done: 2" in capsys.readouterr().out
    for flags, n_done in (([], 0), (["--best-params"], 2)):
        assert main(["report", str(exp), "--results", str(results), "--format", "json",
                     *flags]) == 0
        captured = capsys.readouterr()
        exported = json.loads(captured.out[captured.out.index("{"):])
        assert exported["states"].get("done", 0) == n_done, (flags, exported["states"])
        if n_done:
            done = {c["strategy"] for c in exported["cells"]
                    if c["metric"] == "test/acc1" and c["n"]}
            assert done == {"conv", "sum"}
    assert "best conv" in captured.err  # the tuned parameters, kept out of the JSON on stdout
    print(f"6-trial sweep: {elapsed:.1f}s")


def test_a_failing_or_diverging_trial_fails_alone(tiny_experiment, tmp_path, capsys):
    # a grid over heads (3 cannot split the channels) x lr (1e30 diverges): one good trial
    exp = tiny_experiment(**SMALL, matrix={"model.fusion": ["sum"]},
                          sweep={"sampler": "grid", "pruner": "none", "trials": 10,
                                 "params": {"model.heads": [2, 3], "optim.lr": [0.05, 1.0e+30]}})
    results = tmp_path / "results"
    assert main(["sweep", str(exp), "--results", str(results)]) == 0  # grid exhausted
    study = _studies(results, "tiny")["tiny/sum/digits/metrics=v2"]
    assert _states(study) == {"COMPLETE": 1, "FAIL": 3}
    errors = {(t.params["model.heads"], t.params["optim.lr"]):
              RunDir(results / "tiny" / t.user_attrs["run_id"]).status().get("error")
              for t in study.trials}
    assert errors[(2, 0.05)] is None
    assert errors[(2, 1.0e+30)].startswith("diverged: training loss is nan")
    assert "divisible" in errors[(3, 0.05)] and "divisible" in errors[(3, 1.0e+30)]
    assert "failed" in capsys.readouterr().out


def test_hopeless_learning_rate_is_pruned(tiny_experiment, tmp_path, capsys):
    # the space holds a good and a hopeless lr; enqueue fixes their order, so the median pruner
    # (after one complete trial) compares the hopeless one's first epoch against the good one's
    exp = tiny_experiment(optim={"name": "adamw", "warmup_epochs": 0},
                          trainer={"max_epochs": 1, "limit_train_batches": 6,
                                   "limit_val_batches": 2, "limit_test_batches": 1},
                          matrix={"model.fusion": ["conv"]},
                          sweep={"trials": 2, "params": {"optim.lr": [0.01, 1.0e-9]},
                                 "pruner": {"name": "median", "n_startup_trials": 1},
                                 "enqueue": [{"optim.lr": 0.01}, {"optim.lr": 1.0e-9}]})
    results = tmp_path / "results"
    assert main(["sweep", str(exp), "--results", str(results)]) == 0
    study = _studies(results, "tiny")["tiny/conv/digits/metrics=v2"]
    states = {t.params["optim.lr"]: t.state.name for t in study.trials}
    assert states == {0.01: "COMPLETE", 1.0e-9: "PRUNED"}
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert RunDir(results / "tiny" / pruned.user_attrs["run_id"]).status()["state"] == "pruned"
    capsys.readouterr()
    assert main(["report", str(exp), "--results", str(results), "--sweep"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "conv/digits/metrics=v2" in line)
    assert [cell.strip() for cell in row.split("│")[2:5]] == ["2/2", "1", "1"], row


# --- kills and workers (subprocesses) ---------------------------------------------------------
def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_exact_budget(tiny_experiment, tmp_path):
    exp = tiny_experiment(trainer={"max_epochs": 8, "limit_train_batches": 4,
                                   "limit_val_batches": 1, "limit_test_batches": 1},
                          matrix={"model.fusion": ["conv"]},
                          sweep={"trials": 3, "pruner": "none", "params": SPACE,
                                 "sampler": {"name": "random", "seed": 0}})
    results = tmp_path / "results"
    args = _cli("sweep", str(exp), "--results", str(results))
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # kill mid-trial: once the second trial's run is training (one trial done before it)
        deadline = time.time() + 240
        while time.time() < deadline:
            states = [rd.status().get("state") for rd in run_dirs(results, "tiny").values()]
            if states.count("done") == 1 and "running" in states:
                break  # kill at once: on an idle machine a tiny trial lasts about a second
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.1)
        else:
            pytest.fail("no trial started in time")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    study = _studies(results, "tiny")["tiny/conv/digits/metrics=v2"]
    assert _states(study) == {"COMPLETE": 1, "RUNNING": 1}  # what a kill leaves behind
    killed = next(t for t in study.trials if t.state.name == "RUNNING")

    done = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "worker died" in done.stdout
    study = _studies(results, "tiny")["tiny/conv/digits/metrics=v2"]
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert _states(study) == {"COMPLETE": 3, "FAIL": 1}
    dead = study.trials[killed.number]
    assert dead.state.name == "FAIL" and dead.user_attrs["killed"]
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert retried[0].state.name == "COMPLETE"
    run = RunDir(results / "tiny" / retried[0].user_attrs["run_id"])
    assert retried[0].user_attrs["run_id"] == killed.user_attrs["run_id"]  # the same run...
    assert run.status()["state"] == "done" and run.status()["attempts"] == 2  # ...resumed

    # and once more: at the budget, nothing runs
    again = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=200)
    assert again.returncode == 0
    assert len(_studies(results, "tiny")["tiny/conv/digits/metrics=v2"].trials) == 4


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill-INT", "ctrl-c"])
def test_a_stop_of_sweep_workers_saves_both_trials_and_queues_them(tiny_experiment, tmp_path,
                                                                    how):
    """`kill -INT` of `sweep --workers 2` reaches the parent alone: it passes the stop on. A
    terminal's Ctrl-C reaches every process, and the parent's copy comes second (ignored: it
    must not cut a save short). Either way both trials' runs save and stop, and both trials are
    queued again for the next sweep."""
    exp = tiny_experiment(trainer={"max_epochs": 30, "limit_train_batches": 6,
                                   "limit_val_batches": 1, "limit_test_batches": 1},
                          matrix={"model.fusion": ["conv"]},
                          sweep={"trials": 4, "pruner": "none", "params": SPACE,
                                 "sampler": {"name": "random", "seed": 0}})
    results = tmp_path / "results"

    def as_in_a_terminal():
        if how == "ctrl-c":
            os.setpgid(0, 0)  # a foreground job's own process group
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(_cli("sweep", str(exp), "--results", str(results), "--workers", "2"),
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=as_in_a_terminal)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            dirs = run_dirs(results, "tiny").values() if (results / "tiny").exists() else []
            if len(dirs) == 2 and all(rd.status().get("state") == "running"
                                      and rd.last_checkpoint.exists() for rd in dirs):
                break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        else:
            pytest.fail("the two trials did not start training in time")
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, out
    for rd in run_dirs(results, "tiny").values():
        assert rd.status()["state"] == "interrupted", (rd.status(), out)
        assert rd.last_checkpoint.exists() and not (rd.path / "lock").exists()
    study = _studies(results, "tiny")["tiny/conv/digits/metrics=v2"]
    stopped = [t for t in study.trials if t.user_attrs.get("interrupted")]
    queued = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(stopped) == 2 and len(queued) == 2, _states(study)
    assert sorted(t.user_attrs["retry_of"] for t in queued) == sorted(t.number for t in stopped)


@pytest.mark.slow
def test_two_workers_share_one_budget(tiny_experiment, tmp_path):
    exp = tiny_experiment(**SMALL, matrix={"model.fusion": ["conv"]},
                          sweep={"trials": 5, "pruner": "none", "params": SPACE})
    results = tmp_path / "results"
    done = subprocess.run(_cli("sweep", str(exp), "--results", str(results), "--workers", "2"),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout + done.stderr
    study = _studies(results, "tiny")["tiny/conv/digits/metrics=v2"]
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 5  # not 6: the budget holds across workers
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in study.trials)
    assert all(t.user_attrs.get("discarded") for t in study.trials if t.state.name == "FAIL")
    assert len({t.user_attrs["worker"]["pid"] for t in finished}) == 2  # both worked
    assert len({t.user_attrs["run_id"] for t in finished}) == 5
