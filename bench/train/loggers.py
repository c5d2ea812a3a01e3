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

A resumed run's history in either tracker equals an uninterrupted run's (`resume_rows`): a run
killed after its last checkpoint had logged steps it now trains (and logs) again, and may have
died before logging the row its checkpoint carries (bench/resume/metrics_log.py). TensorBoard
purges every point from the first step logged again (a SessionLog START event, SummaryWriter's
purge_step), which is then logged from the CSV log; MLflow cannot delete points, so the replayed
ones it already has are not sent again and the ones it lacks are sent.
"""
from __future__ import annotations

import csv
import fcntl
import json
import logging
from collections import Counter
from contextlib import contextmanager

from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

from bench import compat
from bench.config import Run
from bench.store import RunDir, write_atomic

# keys of the CSV log no tracker gets (CostsAndShares logs them once, to the CSV log alone)
CSV_ONLY = ("cost/",)
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


def _first_rows(path, count: int) -> list[tuple[dict, int]]:
    """The first `count` rows of a metrics.csv as (metrics, step), its empty cells left out."""
    out = []
    try:
        with open(path, newline="") as f:
            for _, row in zip(range(count), csv.DictReader(f)):
                values = {}
                for key, text in row.items():
                    try:
                        values[key] = float(text)
                    except (TypeError, ValueError):  # an empty cell: not logged in that row
                        pass
                step = values.pop("step", None)
                values = {k: v for k, v in values.items() if not k.startswith(CSV_ONLY)}
                if step is not None and values:
                    out.append((values, int(step)))
    except FileNotFoundError:
        pass
    return out


def resume_rows(trainer) -> tuple[int, list[tuple[dict, int]]] | None:
    """For the fit starting now: (P, rows), the step from which a tracker's earlier points are
    replaced and the rows at steps >= P this run logs no more (the CSV log's kept rows at that
    step, and the row the checkpoint carried; bench/resume/metrics_log.py), as (metrics, step).
    With what the run logs from here on, they make an uninterrupted run's history. (0, []) for a
    fit from scratch; None outside a fit, or before the checkpoint is restored (strategies that
    restore it later: the history is left as it is)."""
    from bench.resume.metrics_log import ContinuingCSVLogger

    if trainer.state.fn != "fit" or trainer.strategy.restore_checkpoint_after_setup:
        return None
    writer = next((logger.experiment for logger in trainer.loggers
                   if isinstance(logger, ContinuingCSVLogger)), None)
    if writer is None:
        return None
    if trainer.ckpt_path is None:
        return 0, []
    kept = _first_rows(writer.metrics_file_path, writer.keep)
    pending = [(dict(writer.pending[0]), int(writer.pending[1]))] if writer.pending else []
    first = kept[-1][1] if kept else pending[0][1] if pending else 0
    return first, [(row, step) for row, step in kept if step >= first] + pending


class AxesTensorBoardLogger(TensorBoardLogger):
    """TensorBoard's hparams are the run's axes (not the task's hparams Lightning passes), with
    the task's validation and test metrics as the HParams dashboard's columns.

    Lightning calls log_graph(model) once per fit or test, after the checkpoint is restored and
    before anything is logged: there a resumed run's history is made exact (module docstring),
    then the hparams are written (after the purge, which would take them too)."""

    def __init__(self, run: Run, run_dir: RunDir, metrics: list[str]):
        super().__init__(run_dir.path, name="tensorboard", version="", default_hp_metric=False)
        self._axes = axes_hparams(run)
        self._metric_names = metrics
        self._hparams_due = False

    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        self.hparams.update(self._axes)
        self._hparams_due = True  # written in log_graph, which Lightning calls next

    def log_graph(self, model, input_array=None) -> None:
        from lightning.pytorch.utilities import rank_zero_only
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from torch.utils.tensorboard.summary import hparams

        if rank_zero_only.rank != 0:
            return
        writer = compat.tensorboard_file_writer(self)
        resumed = resume_rows(model.trainer) if model is not None else None
        if resumed is not None:
            first, rows = resumed
            writer.add_event(Event(session_log=SessionLog(status=SessionLog.START)), step=first)
            for row, step in rows:
                super().log_metrics(row, step)
        if self._hparams_due:
            self._hparams_due = False
            # the summaries name the metric columns; their values are the scalars logged under
            # the same tags (no placeholder values logged, unlike Lightning's hp_metric)
            for summary in hparams(self._axes, {m: 0.0 for m in self._metric_names}):
                writer.add_summary(summary)
        super().log_graph(model, input_array)


class ConfigMLFlowLogger(MLFlowLogger):
    """MLflow params are the run's flattened config (not the task's hparams); on a resumed run
    only the keys not logged before (MLflow refuses to change a param's value).

    `history` (a resumed run): how many points each metric has at each step in the MLflow run.
    At the fit's start (log_graph, see AxesTensorBoardLogger) the points from the first step
    logged again on are matched with the rows before the checkpoint: those missing are sent,
    those left over (logged after the checkpoint) are the replay's, which is not sent again."""

    def __init__(self, run: Run, history: dict[str, Counter] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._params = {k: "null" if v is None else str(v)[:500]
                        for k, v in flatten(run.config).items()}
        self._history = history or {}
        self._skip: Counter = Counter()  # (key, step) -> points of the replay not to send

    def log_graph(self, model, input_array=None) -> None:
        resumed = resume_rows(model.trainer) if model is not None else None
        if resumed is None:
            return
        first, rows = resumed
        have = Counter({(key, step): n for key, steps in self._history.items()
                        for step, n in steps.items() if step >= first})
        for row, step in rows:
            missing = {}
            for key, value in row.items():
                if have[(key, step)] > 0:
                    have[(key, step)] -= 1
                else:
                    missing[key] = value
            if missing:
                super().log_metrics(missing, step)
        self._skip = +have

    def log_metrics(self, metrics, step=None) -> None:
        if self._skip:
            kept = {}
            for key, value in metrics.items():
                if self._skip[(key, step or 0)] > 0:
                    self._skip[(key, step or 0)] -= 1
                else:
                    kept[key] = value
            metrics = kept
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
        history = {}
        if previous:
            try:
                for key in client.get_run(previous).data.metrics:
                    history[key] = Counter(m.step for m in
                                           client.get_metric_history(previous, key))
                client.update_run(previous, status="RUNNING")  # it was KILLED/FAILED/FINISHED
            except MlflowException:  # the store lost it (deleted or moved): a new run
                previous, history = None, {}
        if previous is None and client.get_experiment_by_name(experiment) is None:
            artifacts = None
            if uri.startswith("sqlite:"):  # next to the store, not in the working directory
                artifacts = (run_dir.path.parent / "mlartifacts").resolve().as_uri()
            client.create_experiment(experiment, artifact_location=artifacts)
        logger = ConfigMLFlowLogger(run, history, experiment_name=experiment,
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
