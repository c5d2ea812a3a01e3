"""bench/compat.py against the installed Lightning: every internal the suite relies on is there
and behaves as relied on. A Lightning release that moves one fails here, in the fast suite,
instead of breaking exact resume silently until a slow test runs."""
from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader, TensorDataset

from bench import compat

ROOT = Path(__file__).resolve().parents[1]


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.layer(x).pow(2).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(40, 4, generator=g)), batch_size=8)


class Rows(Logger):
    """Records what Lightning logs: (row, step)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    name, version = "rows", "0"

    def log_metrics(self, metrics, step=None):
        self.rows.append(({k: float(v) for k, v in metrics.items()}, step))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _trainer(callback, logger=None, **kwargs):
    return L.Trainer(max_epochs=1, accelerator="cpu", logger=logger or False,
                     callbacks=[callback], enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, **kwargs)


def test_the_installed_lightning_is_the_range_pyproject_allows():
    assert compat.supported(), compat.lightning_version()
    spec = re.search(r'"lightning>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert spec, "pyproject.toml must bound lightning on both sides"
    low, high = (tuple(int(x) for x in v.split(".")[:2]) for v in spec.groups())
    assert (low, high) == compat.SUPPORTED


def test_the_stop_flag_ends_fit_at_that_batch():
    class StopAtTwo(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                compat.set_stop_flag(trainer, True)
                assert compat.stop_flag(trainer)

    trainer = _trainer(StopAtTwo())
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException
        trainer.fit(Tiny())
    assert trainer.global_step == 2


def test_the_pending_row_is_the_row_lightning_logs_next():
    """A checkpoint saved in on_train_batch_end (or at an epoch end) carries the row Lightning
    logs right after: compat.pending_log_row must predict it, values and step."""
    seen = []

    class Predict(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            assert not compat.epoch_ended_unlogged(trainer)
            seen.append(compat.pending_log_row(trainer))

        def on_train_epoch_end(self, trainer, pl_module):
            assert compat.epoch_ended_unlogged(trainer)
            seen.append(compat.pending_log_row(trainer))

    rows = Rows()
    _trainer(Predict(), rows, log_every_n_steps=1).fit(Tiny())
    predicted = [(row, step) for row, step in filter(None, seen)]
    logged = [({k: v for k, v in row.items()}, step) for row, step in rows.rows]
    assert len(predicted) == 6 and len(logged) == 6  # 5 steps and the epoch
    for (p_row, p_step), (l_row, l_step) in zip(predicted, logged):
        assert p_step == l_step
        assert p_row.keys() == l_row.keys()
        assert all(p_row[k] == pytest.approx(l_row[k]) for k in p_row)
    assert "train/loss_epoch" in logged[-1][0]


def test_epoch_aggregates_are_the_running_sums_and_add_back():
    losses, saved, after = [], {}, {}

    class Aggregates(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))
            if batch_idx == 1:
                saved.update(compat.epoch_aggregates(trainer))
            if batch_idx == 2:
                compat.restore_epoch_aggregates(trainer, saved)
                after.update(compat.epoch_aggregates(trainer))

    _trainer(Aggregates()).fit(Tiny())
    (key,) = saved
    entry = saved[key]
    assert entry["name"] == "train/loss" and entry["reduce"] == "mean"
    assert float(entry["count"]) == 16  # two batches of 8
    assert float(entry["value"]) == pytest.approx(8 * sum(losses[:2]))
    # put back on top of three batches: the sums add, as a resumed epoch's would
    assert float(after[key]["count"]) == 16 + 24
    assert float(after[key]["value"]) == pytest.approx(8 * (sum(losses[:2]) + sum(losses[:3])))


def test_the_loader_state_of_an_unfinished_epoch_is_found_in_a_checkpoint(tmp_path):
    from bench.resume.batches import ResumableData

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = TensorDataset(torch.randn(40, 4, generator=g))
            return DataLoader(data, batch_sampler=torch.utils.data.BatchSampler(
                torch.utils.data.SequentialSampler(data), 8, False))

    class Save(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

        def on_train_epoch_end(self, trainer, pl_module):
            trainer.save_checkpoint(tmp_path / "end.ckpt")

    data = Data()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[Save(), ResumableData(data)])
    trainer.fit(Tiny(), datamodule=data)
    load = lambda name: torch.load(tmp_path / name, weights_only=False)  # noqa: E731
    assert compat.unfinished_epoch_loader_state(load("mid.ckpt")) == {"epoch": 0, "batches": 2}
    assert compat.unfinished_epoch_loader_state(load("end.ckpt")) is None


def test_slurm_auto_requeue_can_be_turned_off(monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "job", "SLURM_NODEID": "0",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "1",
                       "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(key, value)
    trainer = _trainer(L.Callback())
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    compat.disable_slurm_auto_requeue(trainer)
    assert environment.auto_requeue is False


def test_the_kept_writer_keeps_an_existing_log_that_lightnings_deletes(tmp_path):
    for cls, kept in ((ExperimentWriter, False), (compat.KeptExperimentWriter, True)):
        (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
        cls(str(tmp_path))
        assert (tmp_path / "metrics.csv").exists() == kept, cls.__name__


def test_the_csv_logger_writes_through_the_writer_it_names(tmp_path):
    class Mine(compat.KeptExperimentWriter):
        pass

    class Logger_(compat.CSVLoggerWithWriter):
        writer = Mine

    assert isinstance(Logger_(tmp_path, name="logs", version="").experiment, Mine)


def test_the_tensorboard_file_writer_writes_into_the_runs_own_folder(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, name="tensorboard", version="")
    writer = compat.tensorboard_file_writer(logger)
    assert Path(writer.get_logdir()) == Path(logger.log_dir)
