"""Sweeps on a real PostgreSQL server (.ci/setup/postgres.sh starts one): two workers share one
study to its exact budget, and a worker killed mid-trial has that trial failed and its
parameters run again (resuming the same run).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench.store import RunDir, run_dirs

ROOT = Path(__file__).resolve().parents[1]
SETUP = ".ci/setup/postgres.sh"
URL = os.environ.get("LESA_BENCH_TEST_POSTGRES",
                     "postgresql://lesa:lesa@127.0.0.1:5432/lesa_test")
SPACE = {"optim.lr": {"low": 0.01, "high": 0.5, "log": True},
         "optim.warmup_epochs": [0, 1]}


def test_a_missing_driver_names_the_extra_to_install(tiny_experiment, tmp_path, monkeypatch):
    from bench.config import ConfigError, load_experiment
    from bench.sweep.storage import open_storage

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as without the postgres extra
    exp = load_experiment(str(tiny_experiment()))
    with pytest.raises(ConfigError) as err:
        open_storage(exp, tmp_path, "postgresql://lesa:secret@127.0.0.1:5432/lesa_test")
    assert "pip install 'lesa-bench[postgres]'" in str(err.value)
    assert "secret" not in str(err.value) and "psycopg2" not in str(err.value)


@pytest.fixture
def postgres():
    """The test database's storage; fails (never skips) when the server is not up. Studies the
    test made are deleted afterwards (the database outlives the test)."""
    import optuna
    from optuna.storages import RDBStorage

    try:
        storage = RDBStorage(URL, engine_kwargs={"connect_args": {"connect_timeout": 5}})
    except ImportError as err:
        pytest.fail(f"no PostgreSQL driver ({err}): pip install -e '.[dev]'")
    except Exception as err:  # noqa: BLE001 - refused, auth: the server is not set up
        pytest.fail(f"PostgreSQL at {URL} is not reachable ({type(err).__name__}): run "
                    f"`sudo bash {SETUP}` first")
    name = f"pg{uuid.uuid4().hex[:8]}"
    yield storage, name
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name.startswith(f"{name}/"):
            optuna.delete_study(study_name=summary.study_name, storage=storage)
    storage.engine.dispose()


def _study(storage, name: str):
    import optuna

    from bench.tasks import TASKS

    version = TASKS["classification"].metrics_version  # study names carry it (bench/sweep/cells.py)
    return optuna.load_study(study_name=f"{name}/conv/digits/metrics=v{version}", storage=storage)


def _states(study) -> dict:
    out: dict = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@pytest.mark.slow
def test_two_workers_reach_the_budget_and_a_killed_workers_trial_runs_again(
        tiny_experiment, tmp_path, postgres):
    storage, name = postgres
    exp = tiny_experiment(name=name,
                          trainer={"max_epochs": 4, "limit_train_batches": 6,
                                   "limit_val_batches": 1, "limit_test_batches": 1,
                                   "checkpoint_every_n_steps": 2},
                          matrix={"model.fusion": ["conv"]},
                          sweep={"trials": 4, "pruner": "none", "params": SPACE,
                                 "sampler": {"name": "random", "seed": 0}})
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "sweep", str(exp), "--results",
                             str(results), "--storage", URL, "--workers", "2"], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # kill one worker once both train and its trial's run has a checkpoint
        deadline, victim = time.time() + 240, None
        while time.time() < deadline and victim is None:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                trials = _study(storage, name).trials
            except KeyError:  # the parent has not created the study yet
                trials = []
            running = [t for t in trials if t.state.name == "RUNNING"
                       and t.user_attrs.get("run_id") and t.user_attrs.get("worker")]
            for trial in running if len(running) == 2 else []:
                rd = RunDir(results / name / trial.user_attrs["run_id"])
                if rd.status().get("state") == "running" and rd.last_checkpoint.exists():
                    victim = trial
                    break
            time.sleep(0.1)
        assert victim is not None, "two trials did not start training in time"
        os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
        out, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    assert "worker died" in out and "1 worker(s) died (signal 9)" in out, out
    study = _study(storage, name)
    states = _states(study)
    assert states["COMPLETE"] == 4, (states, out)  # the budget, exactly, across both workers
    assert set(states) <= {"COMPLETE", "FAIL"}, states
    dead = study.trials[victim.number]
    assert dead.state.name == "FAIL" and dead.user_attrs["killed"]
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == victim.params
    run = RunDir(results / name / victim.user_attrs["run_id"])
    assert retried[0].user_attrs["run_id"] == run.id  # the same run, resumed
    assert run.status()["state"] == "done" and run.status()["attempts"] == 2
    assert run.status()["resumed_from"]["checkpoint"] == "last.ckpt"
    others = [t for t in study.trials if t.state.name == "FAIL" and t.number != victim.number]
    assert all(t.user_attrs.get("discarded") for t in others)  # only over-budget extras
    assert len(run_dirs(results, name)) == 4


@pytest.mark.slow
def test_a_dead_worker_on_another_machine_is_failed_by_its_heartbeat(tiny_experiment, tmp_path,
                                                                    postgres):
    """The worker "on another machine" runs in its own UTS namespace with another hostname, so
    its process cannot be checked from here: only the heartbeat tells that it died."""
    if os.geteuid() != 0:
        pytest.fail("this test starts a worker under another hostname (unshare --uts): run the "
                    "slow suite as root, as CI does")
    storage, name = postgres
    exp = tiny_experiment(name=name,
                          trainer={"max_epochs": 6, "limit_train_batches": 6,
                                   "limit_val_batches": 1, "limit_test_batches": 1,
                                   "checkpoint_every_n_steps": 2},
                          matrix={"model.fusion": ["conv"]},
                          sweep={"trials": 2, "pruner": "none", "params": SPACE,
                                 "sampler": {"name": "random", "seed": 0}})
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bench.cli", "sweep", str(exp), "--results", str(results),
               "--storage", URL, "--heartbeat", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    remote = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname node-b && exec "$@"',
                               "sh", *command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline, victim = time.time() + 240, None
        while time.time() < deadline and victim is None:
            assert remote.poll() is None, "the remote worker ended before it could be killed"
            try:
                trials = _study(storage, name).trials
            except KeyError:
                trials = []
            for trial in trials:
                rid = trial.user_attrs.get("run_id")
                if trial.state.name == "RUNNING" and rid \
                        and RunDir(results / name / rid).last_checkpoint.exists():
                    victim = trial
            time.sleep(0.1)
        assert victim is not None, "the remote worker's trial did not start in time"
        remote.kill()  # SIGKILL: the trial stays RUNNING, its run locked by node-b's pid
    finally:
        remote.kill()
        remote.wait()
    assert victim.user_attrs["worker"]["host"] == "node-b"
    here = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    assert here.returncode == 0, here.stdout + here.stderr
    assert "as its worker on node-b" in here.stdout, here.stdout
    study = _study(storage, name)
    assert _states(study) == {"COMPLETE": 2, "FAIL": 1}, _states(study)
    assert study.trials[victim.number].state.name == "FAIL"
    (retried,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retried.state.name == "COMPLETE" and retried.params == victim.params
    run = RunDir(results / name / victim.user_attrs["run_id"])
    assert retried.user_attrs["run_id"] == run.id
    assert run.status()["attempts"] == 2
    assert run.status()["resumed_from"]["checkpoint"] == "last.ckpt"
