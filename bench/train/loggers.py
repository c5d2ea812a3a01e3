"""The optional experiment trackers of a run (`trainer.loggers`): TensorBoard and MLflow, beside
the CSV logger that bench/train/trainer.py always keeps.

    tensorboard  <run dir>/tensorboard/ event files; the run's matrix axes as hparams, so
                 `tensorboard --logdir results/<experiment>` compares every run
    mlflow       one MLflow run per run, in the experiment's store (default
                 sqlite:///results/<experiment>/mlflow.db, or trainer.mlflow_uri): params = the
                 flattened config, tags = strategy, dataset, seed, run id. Its MLflow run id is
                 kept in <run dir>/mlflow.json, so a resumed run continues the same MLflow run.

Which names are allowed and whether their packages are installed is checked at load time
(bench/config/loggers.py). Imported by trainer.py only: Lightning and the trackers load here.
"""
from __future__ import annotations

import fcntl
import json
import logging
from contextlib import contextmanager

from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

from bench import compat
from bench.config import Run
from bench.store import RunDir, write_atomic

MLFLOW_RECORD = "mlflow.json"  # in the run folder: {"tracking_uri", "experiment", "run_id"}
MLFLOW_DB = "mlflow.db"


def flatten(config: dict, prefix: str = "") -> dict:
    """{"model.fusion": "dynamic", ...}: nested keys joined by dots, as the experiment file and
    --set write them."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def axes_hparams(run: Run) -> dict:
    """The values that tell this run from the others of its experiment: the matrix axes (a
    bundle axis by its keys), plus strategy, dataset and seed; scalars only (TensorBoard)."""
    cfg = run.config
    params = {"model.fusion": cfg["model"]["fusion"], "data.name": cfg["data"]["name"],
              "seed": cfg["seed"]}
    for axis, value in run.axes.items():
        params.update(value if isinstance(value, dict) else {axis: value})
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}


class AxesTensorBoardLogger(TensorBoardLogger):
    """TensorBoard's hparams are the run's axes (not the task's hparams Lightning passes), with
    the task's validation and test metrics as the HParams dashboard's columns."""

    def __init__(self, run: Run, run_dir: RunDir, metrics: list[str]):
        super().__init__(run_dir.path, name="tensorboard", version="", default_hp_metric=False)
        self._axes = axes_hparams(run)
        self._metric_names = metrics

    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        from lightning.pytorch.utilities import rank_zero_only
        from torch.utils.tensorboard.summary import hparams

        if rank_zero_only.rank != 0:
            return
        self.hparams.update(self._axes)
        # the summaries name the metric columns; their values are the scalars logged under the
        # same tags (no placeholder values logged, unlike Lightning's hp_metric)
        writer = compat.tensorboard_file_writer(self)
        for summary in hparams(self._axes, {m: 0.0 for m in self._metric_names}):
            writer.add_summary(summary, step)


class ConfigMLFlowLogger(MLFlowLogger):
    """MLflow params are the run's flattened config (not the task's hparams); on a resumed run
    only the keys not logged before (MLflow refuses to change a param's value).

    `logged_steps` (a resumed run): each metric's last step in the MLflow run. A resume replays
    the steps after its checkpoint, and MLflow cannot delete points, so the replayed steps are
    not sent again: the history goes on from where it stopped, each step once."""

    def __init__(self, run: Run, logged_steps: dict[str, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._params = {k: "null" if v is None else str(v)[:500]
                        for k, v in flatten(run.config).items()}
        self._logged_steps = logged_steps or {}

    def log_metrics(self, metrics, step=None) -> None:
        if self._logged_steps:
            metrics = {k: v for k, v in metrics.items()
                       if (step or 0) > self._logged_steps.get(k, -1)}
            if not metrics:
                return
        super().log_metrics(metrics, step)

    def log_hyperparams(self, params) -> None:
        from lightning.pytorch.utilities import rank_zero_only
        from mlflow.entities import Param

        if rank_zero_only.rank != 0:
            return
        logged = self.experiment.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in self._params.items() if k not in logged]
        for i in range(0, len(new), 100):  # MLflow's batch limit
            self.experiment.log_batch(run_id=self.run_id, params=new[i:i + 100])


def mlflow_uri(run: Run, run_dir: RunDir) -> str:
    """trainer.mlflow_uri, else the SQLite store in the experiment's results folder."""
    uri = run.config["trainer"].get("mlflow_uri")
    return uri or f"sqlite:///{(run_dir.path.parent / MLFLOW_DB).resolve()}"


@contextmanager
def _store_lock(run_dir: RunDir, uri: str):
    """Workers starting together would each create the SQLite tables and the experiment; one at
    a time, they find what the first created."""
    if not uri.startswith("sqlite:"):
        yield
        return
    with open(run_dir.path.parent / f".{MLFLOW_DB}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic"):  # table creation and migration chatter
        logging.getLogger(name).setLevel(logging.WARNING)


def mlflow_logger(run: Run, run_dir: RunDir) -> ConfigMLFlowLogger:
    """The run's MLflow logger: the MLflow run recorded in mlflow.json when it is in the same
    store (a resumed run), else a new one, recorded there."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    uri = mlflow_uri(run, run_dir)
    experiment = run.config["name"]
    record_path = run_dir.path / MLFLOW_RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    cfg = run.config
    tags = {"strategy": cfg["model"]["fusion"], "dataset": cfg["data"]["name"],
            "seed": str(cfg["seed"]), "run_id": run.id}
    with _store_lock(run_dir, uri):
        client = MlflowClient(uri)
        previous = record.get("run_id") if record.get("tracking_uri") == uri else None
        logged_steps = {}
        if previous:
            try:
                for key in client.get_run(previous).data.metrics:
                    logged_steps[key] = max(m.step for m in
                                            client.get_metric_history(previous, key))
                client.update_run(previous, status="RUNNING")  # it was KILLED/FAILED/FINISHED
            except MlflowException:  # the store lost it (deleted or moved): a new run
                previous, logged_steps = None, {}
        if previous is None and client.get_experiment_by_name(experiment) is None:
            artifacts = None
            if uri.startswith("sqlite:"):  # next to the store, not in the working directory
                artifacts = (run_dir.path.parent / "mlartifacts").resolve().as_uri()
            client.create_experiment(experiment, artifact_location=artifacts)
        logger = ConfigMLFlowLogger(run, logged_steps, experiment_name=experiment,
                                    run_name=run.id, tracking_uri=uri, tags=tags,
                                    run_id=previous)
        if previous is None:
            write_atomic(record_path, json.dumps({"tracking_uri": uri, "experiment": experiment,
                                                  "run_id": logger.run_id}, indent=2))
    return logger


def extra_loggers(run: Run, run_dir: RunDir, monitor: str) -> list:
    """The loggers trainer.loggers asks for beside csv; `monitor`: the task's validation metric
    (it and its test twin are the columns of TensorBoard's HParams view). None in a DDP rank
    > 0: rank 0 logs for all of them."""
    from bench.train.ddp import is_ddp_child

    names = run.config["trainer"].get("loggers") or []
    if is_ddp_child():
        return []
    out = []
    if "tensorboard" in names:
        metrics = [monitor, monitor.replace("val/", "test/", 1)]
        out.append(AxesTensorBoardLogger(run, run_dir, metrics))
    if "mlflow" in names:
        out.append(mlflow_logger(run, run_dir))
    return out
