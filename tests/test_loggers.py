"""trainer.loggers: TensorBoard event files and an MLflow run per run (params, tags, metrics), one
MLflow run across an interruption and its resume, and a clear error for a missing extra."""
from __future__ import annotations

import json
import re
import signal
import time

import lightning as L
import mlflow  # noqa: F401 - the dev extra installs both; CI must test them, not skip
import pytest
import numpy as np
import tensorboard  # noqa: F401
import torch
from rich.console import Console

from bench.config import ConfigError, load_experiment
from bench.config import loggers as config_loggers
from bench.resume.stops import RunInterrupted
from bench.run.runner import execute
from bench.store import RunDir


LOGGERS = {"loggers": ["csv", "tensorboard", "mlflow"], "max_epochs": 3,
           "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1}


def _one_run(tiny_experiment, **trainer):
    exp = load_experiment(tiny_experiment(trainer={**LOGGERS, **trainer},
                                          matrix={"model.fusion": ["conv"], "seed": [3]}))
    return exp.runs[0]


def _mlflow(run_dir: RunDir):
    from mlflow.tracking import MlflowClient

    record = json.loads((run_dir.path / "mlflow.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    return client, record


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            raise KeyboardInterrupt()


def test_tensorboard_and_mlflow_record_a_tiny_run(tiny_experiment, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _one_run(tiny_experiment)
    run_dir = RunDir(tmp_path / "results" / "tiny" / run.id)
    assert execute(run, run_dir, Console(file=open(tmp_path / "log", "w"))) == "done"

    events = EventAccumulator(str(run_dir.path / "tensorboard"))
    events.Reload()
    assert {"val/acc1", "train/loss_epoch", "test/acc1"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("val/acc1")) == 3  # one per epoch
    hparams = events.PluginTagToContent("hparams")
    assert hparams, "no hparams summary"
    session = b"".join(hparams.values())
    assert b"model.fusion" in session and b"conv" in session and b"seed" in session

    client, record = _mlflow(run_dir)
    assert record["tracking_uri"].startswith("sqlite:///")
    assert (tmp_path / "results" / "tiny" / "mlflow.db").exists()  # inside the experiment
    found = client.get_run(record["run_id"])
    assert found.info.status == "FINISHED" and found.info.run_name == run.id
    params = found.data.params
    assert params["model.fusion"] == "conv" and params["seed"] == "3"
    assert params["trainer.max_epochs"] == "3" and params["data.name"] == "digits"
    tags = found.data.tags
    assert (tags["strategy"], tags["dataset"], tags["seed"], tags["run_id"]) == \
        ("conv", "digits", "3", run.id)
    assert [m.step for m in client.get_metric_history(record["run_id"], "val/acc1")] == [1, 3, 5]
    assert "test/acc1" in found.data.metrics


def test_a_resumed_run_continues_its_mlflow_run(tiny_experiment, tmp_path):
    run = _one_run(tiny_experiment)
    run_dir = RunDir(tmp_path / "results" / "tiny" / run.id)
    console = Console(file=open(tmp_path / "log", "w"))
    handler = signal.getsignal(signal.SIGINT)
    try:  # Lightning ignores SIGINT once it caught a KeyboardInterrupt
        with pytest.raises(RunInterrupted):
            execute(run, run_dir, console, extra_callbacks=[StopAfterFirstEpoch()])
    finally:
        signal.signal(signal.SIGINT, handler)
    client, first = _mlflow(run_dir)
    before = client.get_metric_history(first["run_id"], "val/acc1")
    assert [m.step for m in before] == [1]
    assert client.get_run(first["run_id"]).info.status != "FINISHED"

    assert execute(run, run_dir, console) == "done"
    _, second = _mlflow(run_dir)
    assert second["run_id"] == first["run_id"]
    experiment = client.get_experiment_by_name("tiny")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    after = client.get_metric_history(first["run_id"], "val/acc1")
    assert [m.step for m in after] == [1, 3, 5]  # continues where it stopped, no restart
    assert client.get_run(first["run_id"]).info.status == "FINISHED"


def test_a_missing_extra_is_a_config_error_naming_it(tiny_experiment, monkeypatch):
    monkeypatch.setattr(config_loggers, "_installed", lambda module: module != "tensorboard")
    with pytest.raises(ConfigError, match=r"tensorboard needs the optional extra 'tensorboard'.*"
                                          r"pip install -e '\.\[tensorboard\]'"):
        load_experiment(tiny_experiment(trainer={"loggers": ["csv", "tensorboard"]}))


@pytest.mark.parametrize("value, message", [
    (["csv", "wandb"], "'wandb' is not a logger; choose from csv, tensorboard, mlflow"),
    (["csv", "csv"], "names a logger twice"),
])
def test_bad_logger_names_are_refused(tiny_experiment, value, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(tiny_experiment(trainer={"loggers": value}))


def test_loggers_stay_out_of_the_run_id(tiny_experiment):
    plain = load_experiment(tiny_experiment())
    logged = load_experiment(tiny_experiment(trainer={"loggers": ["csv", "mlflow"],
                                                      "mlflow_uri": "http://localhost:5000"}))
    assert [r.id for r in plain.runs] == [r.id for r in logged.runs]


# --- trainer.mlflow_uri: its scheme at load, its store once before the matrix --------------------


@pytest.mark.parametrize("uri, message", [
    ("notascheme://x", "'notascheme://x': MLflow has no tracking store for the scheme "
                       "'notascheme'"),
    ("htp://host:5000", "for the scheme 'htp' (did you mean 'http'?)"),
    ("postgres://db/mlflow", "for the scheme 'postgres' (did you mean 'postgresql'?)"),
    ("http://", "'http://': names no host"),
])
def test_a_tracking_uri_mlflow_cannot_use_is_refused_at_load(tiny_experiment, uri, message):
    with pytest.raises(ConfigError, match=r"trainer\.mlflow_uri: .*" + re.escape(message)):
        load_experiment(tiny_experiment(trainer={"loggers": ["csv", "mlflow"],
                                                 "mlflow_uri": uri}))


@pytest.mark.parametrize("uri", ["http://mlflow.example.org:5000", "https://h/mlflow",
                                 "sqlite:///mlflow.db", "sqlite:////tmp/m.db",
                                 "postgresql+psycopg2://user@db:5432/mlflow",
                                 "mysql://u@h/m", "databricks", "databricks://profile",
                                 "/tmp/mlruns", "file:///tmp/mlruns"])
def test_every_scheme_mlflow_takes_loads(tiny_experiment, uri):
    load_experiment(tiny_experiment(trainer={"loggers": ["csv", "mlflow"], "mlflow_uri": uri}))


def test_a_tracking_server_that_does_not_answer_stops_the_command_before_any_run(
        tiny_experiment, tmp_path, capsys):
    """Before: each run waited out MLflow's retries (248 s) and then failed, one after another."""
    from bench.cli import main

    exp = tiny_experiment(trainer={"loggers": ["csv", "mlflow"],
                                   "mlflow_uri": "http://127.0.0.1:9"})
    results = tmp_path / "results"
    start = time.monotonic()
    code = main(["run", str(exp), "--results", str(results)])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 2, out
    assert time.monotonic() - start < 60
    assert ("error: trainer.mlflow_uri: cannot use the MLflow tracking store http://127.0.0.1:9 "
            "([Errno 111] Connection refused; contacted once before any run") in out, out
    assert [p.name for p in (results / "tiny").iterdir()] == []  # no run folder


def test_the_check_contacts_each_store_once(monkeypatch):
    contacted = []
    monkeypatch.setattr(config_loggers, "_contact", lambda uri: contacted.append(uri))
    configs = [{"trainer": {"loggers": ["csv", "mlflow"], "mlflow_uri": uri}}
               for uri in ("http://a:1", "http://b:2", "http://a:1")]
    configs.append({"trainer": {"loggers": ["csv"], "mlflow_uri": "http://c:3"}})  # no mlflow
    configs.append({"trainer": {"loggers": ["csv", "mlflow"], "mlflow_uri": None}})  # our own
    config_loggers.check_tracking_stores(configs)
    assert contacted == ["http://a:1", "http://b:2"]


# --- a resumed run's TensorBoard and MLflow histories equal an uninterrupted run's -----------

WALL_CLOCK = ("train/images_per_s",)
# 2 epochs x 6 steps, a checkpoint every 3 steps, every step logged
EXACT = {"loggers": ["csv", "tensorboard", "mlflow"], "max_epochs": 2, "limit_train_batches": 6,
         "limit_val_batches": 1, "limit_test_batches": 1, "checkpoint_every_n_steps": 3,
         "log_every_n_steps": 1}


def _csv_history(run_dir: RunDir) -> dict[str, list]:
    import csv as csv_module

    out: dict[str, list] = {}
    with open(run_dir.path / "logs" / "metrics.csv", newline="") as f:
        for row in csv_module.DictReader(f):
            for key, text in row.items():
                if key != "step" and text and not key.startswith("cost/"):  # the CSV's own
                    out.setdefault(key, []).append((int(row["step"]), float(np.float32(text))))
    return out


def _tensorboard_history(run_dir: RunDir) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir.path / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _mlflow_history(run_dir: RunDir) -> dict[str, list]:
    client, record = _mlflow(run_dir)
    keys = client.get_run(record["run_id"]).data.metrics
    return {key: [(m.step, float(np.float32(m.value)))
                  for m in client.get_metric_history(record["run_id"], key)] for key in keys}


def assert_trackers_match_the_csv_log(run_dir: RunDir) -> None:
    """Each tracker holds the CSV log's points, each once: the CSV log of a resumed run is an
    uninterrupted run's (tests/test_resume_signals.py), so theirs is too."""
    csv_points = {k: sorted(v) for k, v in _csv_history(run_dir).items() if k not in WALL_CLOCK}
    assert csv_points.get("train/loss_step")
    for name, history in (("tensorboard", _tensorboard_history(run_dir)),
                          ("mlflow", _mlflow_history(run_dir))):
        points = {k: sorted(v) for k, v in history.items() if k not in WALL_CLOCK}
        assert points.keys() == csv_points.keys(), name
        for key, expected in csv_points.items():
            assert points[key] == expected, f"{name} {key}"


def test_a_ctrl_c_twice_then_a_resume_leaves_each_point_once(tiny_experiment, tmp_path,
                                                              monkeypatch):
    """The second Ctrl-C stops at once, as kill -9 does, after step 5; the run resumes from
    step 3, so step 4's row (logged before the stop) is logged again: TensorBoard showed it
    twice. Each tracker now holds the CSV log's points, each once."""
    import killpoints
    from bench.resume.stops import install_stop_signals

    run = _one_run(tiny_experiment, **{**EXACT, "max_epochs": 1})
    run_dir = RunDir(tmp_path / "results" / "tiny" / run.id)
    console = Console(file=open(tmp_path / "log", "w"))
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        killpoints.install("step:5:INT,step:5:INT", monkeypatch.setattr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        install_stop_signals()
        with pytest.raises(RunInterrupted):
            execute(run, run_dir, console)
    finally:
        monkeypatch.undo()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert torch.load(run_dir.last_checkpoint, weights_only=False)["global_step"] == 3
    assert max(s for s, _ in _tensorboard_history(run_dir)["train/loss_step"]) == 3  # step 4
    assert execute(run, run_dir, console) == "done"
    assert_trackers_match_the_csv_log(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["step:3", "step:5", "val:1", "test:1"])
def test_kill_9_anywhere_then_a_resume_leaves_each_point_once(tiny_experiment, tmp_path,
                                                              kill_at):
    """kill -9 right after a checkpoint (its row not logged yet: MLflow lacked it), two steps
    after one (TensorBoard repeated a step), in a validation, in the test."""
    import subprocess
    import sys
    from pathlib import Path

    import killpoints

    root = Path(__file__).resolve().parents[1]
    exp = tiny_experiment(trainer=EXACT, matrix={"model.fusion": ["conv"], "seed": [3]})
    command = [sys.executable, "-m", "bench.cli", "run", str(exp), "--results",
               str(tmp_path / "results")]
    killed = subprocess.run(command, cwd=root, env=killpoints.env(kill_at), capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    resumed = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stdout
    (path,) = (tmp_path / "results" / "tiny").glob("conv-*")
    assert_trackers_match_the_csv_log(RunDir(path))
