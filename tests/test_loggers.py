"""trainer.loggers: TensorBoard event files and an MLflow run per run (params, tags, metrics), one
MLflow run across an interruption and its resume, and a clear error for a missing extra."""
from __future__ import annotations

import json
import signal

import lightning as L
import mlflow  # noqa: F401 - the dev extra installs both; CI must test them, not skip
import pytest
import tensorboard  # noqa: F401
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
