"""Classification numbers that mean what they say (issue 33): acc1/acc5 are top-k accuracy
(micro), bal_acc is balanced accuracy, a non-finite val/test loss or metric fails the run, the
metric definition is part of the run id, and every test image's prediction is recorded."""
from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from bench.config import experiment_from_dict, load_experiment, run_id
from bench.tasks import TASKS, task_spec
from bench.tasks.classification import ClassificationTask
from bench.train import Diverged
from bench.train.callbacks import DivergenceGuard

from bench.config.schema import DEFAULTS  # noqa: E402

MODEL = {**DEFAULTS["model"], "fusion": "conv", "heads": 2, "max_size": 8}
OPTIM = {**DEFAULTS["optim"], "warmup_epochs": 0}


class Planted(ClassificationTask):
    """Scores set in advance: logits[i] for the i-th image fed (inputs carry their index)."""

    def __init__(self, logits: torch.Tensor, nan_in: str | None = None):
        super().__init__(MODEL, OPTIM, num_classes=logits.shape[1], image_size=8)
        self.planted, self.nan_in = logits, nan_in

    def forward(self, x):
        # + 0 x a weight: a loss to step on in fit
        out = self.planted[x[:, 0, 0, 0].long()].clone() + 0 * next(self.parameters()).sum()
        stage = "train" if self.training else "test" if self.trainer.testing else "val"
        return out.fill_(float("nan")) if stage == self.nan_in else out


def _test(task: Planted, labels, batch_size: int = 4) -> dict:
    n = len(labels)
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    loader = DataLoader(TensorDataset(x, torch.as_tensor(labels)), batch_size=batch_size)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[DivergenceGuard()])
    (metrics,) = trainer.test(task, dataloaders=loader, verbose=False)
    return metrics


def test_acc1_is_the_fraction_right_on_an_imbalanced_set():
    # a:18 / b:2 and a model that says `a` for every image: 90 % right, balanced 50 %
    labels = np.array([0] * 18 + [1] * 2)
    logits = torch.tensor([[2.0, -1.0]]).repeat(20, 1)
    task = Planted(logits)
    metrics = _test(task, labels)
    assert metrics["test/acc1"] == pytest.approx(0.90)
    assert metrics["test/bal_acc"] == pytest.approx(0.50)
    assert "test/acc5" not in metrics  # 2 classes: top-5 is trivially 1
    arrays = task.prediction_arrays()
    assert arrays["index"].tolist() == list(range(20))
    assert arrays["labels"].tolist() == labels.tolist() and (arrays["pred"] == 0).all()
    assert arrays["correct"].mean() == pytest.approx(metrics["test/acc1"])
    assert "top5" not in arrays


def test_acc1_acc5_and_bal_acc_match_their_definitions_on_planted_scores():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    k, n = 8, 203  # a partial last batch
    labels = rng.choice(k - 1, size=n, p=[0.4, 0.3, 0.1, 0.1, 0.05, 0.03, 0.02])  # 7 absent
    logits = torch.tensor(rng.normal(size=(n, k)), dtype=torch.float32)
    logits[rng.random(n) < 0.5, 7] = 9.0  # class 7 predicted often, never a label
    task = Planted(logits)
    metrics = _test(task, labels, batch_size=16)
    top1 = logits.argmax(1).numpy()
    top5 = logits.topk(5, 1).indices.numpy()
    assert metrics["test/acc1"] == pytest.approx((top1 == labels).mean())
    assert metrics["test/acc5"] == pytest.approx((top5 == labels[:, None]).any(1).mean())
    # recall averaged over the classes present (torchmetrics' macro would count class 7 as 0)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = balanced_accuracy_score(labels, top1)
    assert metrics["test/bal_acc"] == pytest.approx(expected)
    arrays = task.prediction_arrays()
    assert arrays["index"].tolist() == list(range(n))
    assert (arrays["top5"] == top5).all() and arrays["top5"].dtype == np.int32
    assert arrays["correct"].mean() == pytest.approx(metrics["test/acc1"])


@pytest.mark.parametrize("stage", ["val", "test"])
def test_a_nan_validation_or_test_loss_fails_the_run_naming_it(stage):
    labels = np.array([0, 1, 0, 1])
    task = Planted(torch.tensor([[1.0, 0.0]]).repeat(4, 1), nan_in=stage)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    loader = DataLoader(TensorDataset(x, torch.as_tensor(labels)), batch_size=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_epochs=1,
                        num_sanity_val_steps=0, callbacks=[DivergenceGuard()])
    name = "validation loss val/loss is nan at epoch 1" if stage == "val" else \
        "test loss test/loss is nan in the final test"
    with pytest.raises(Diverged, match=name):
        if stage == "val":
            trainer.fit(task, loader, loader)
        else:
            trainer.test(task, dataloaders=loader, verbose=False)


def test_the_sanity_check_counts_and_only_losses_and_task_metrics_are_watched():
    task = Planted(torch.tensor([[1.0, 0.0]]).repeat(4, 1), nan_in="val")
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1, 0, 1])), batch_size=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_epochs=1,
                        callbacks=[DivergenceGuard()])
    with pytest.raises(Diverged, match="val/loss is nan in the sanity check before training"):
        trainer.fit(task, loader, loader)
    assert trainer.global_step == 0
    classification, detection = TASKS["classification"], TASKS["detection"]
    assert task_spec(task) is classification and task_spec(torch.nn.Linear(1, 1)) is None
    for name in ("val/loss", "test/loss", "val/acc1", "test/acc5", "test/bal_acc"):
        assert classification.must_be_finite(name)
    assert not classification.must_be_finite("val/unary_share")
    # a detection AP is NaN where there is nothing to score (no box of that size): no verdict
    assert not any(detection.must_be_finite(f"test/{m}") for m in ("map", "map_50", "ap_vt"))
    assert detection.must_be_finite("val/loss")


def test_the_metric_definition_is_part_of_classification_run_ids_only():
    exp = load_experiment("experiments/digits.yaml")
    ids = {(r.config["data"]["name"], r.config["model"]["fusion"]): r.id
           for r in exp.runs if r.config["seed"] == 0}
    # detection keeps the ids its runs were stored under (version 1 hashes nothing in)
    assert ids[("digit_scenes", "conv")] == "conv-digit_scenes-s0-d9219ed557"
    assert ids[("digit_scenes", "dynamic")] == "dynamic-digit_scenes-s0-6f1ccc4583"
    # classification's acc1 changed meaning: its runs are other runs now (before: 9e9eae3be2)
    assert ids[("digits", "conv")] == "conv-digits-s0-e75d664e68"
    run = next(r for r in exp.runs if r.config["data"]["name"] == "digits")
    assert run_id(run.config, metrics_version=1) != run.id == run_id(run.config)
    assert run_id(run.config, metrics_version=1).endswith("9e9eae3be2")


def test_a_run_folder_of_the_older_definition_is_told_apart(tmp_path):
    from bench.report.records import older_definition
    from bench.store import RunDir

    run = next(r for r in load_experiment("experiments/digits.yaml").runs
               if r.config["data"]["name"] == "digits")
    old = RunDir(tmp_path / run_id(run.config, metrics_version=1))
    new = RunDir(tmp_path / run.id)
    for rd in (old, new):
        rd.create(run.config)
    assert older_definition(old) == 1 and older_definition(new) is None
    assert older_definition(RunDir(tmp_path / "not-a-run")) is None


def test_a_report_of_runs_stored_under_the_older_definition_says_so(tmp_path, capsys):
    """Runs of the old acc1 are never read; the report names them instead of 'other configs'."""
    from bench.cli import main
    from bench.store import RunDir

    exp = load_experiment("experiments/digits.yaml", only=["data.name=digits"])
    for run in exp.runs[:3]:
        RunDir(tmp_path / exp.name / run_id(run.config, metrics_version=1)).create(run.config)
    assert main(["report", "experiments/digits.yaml", "--only", "data.name=digits",
                 "--results", str(tmp_path)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "3 run folder(s) there were stored under an older definition" in text
    assert "other configs" not in text


def test_the_test_images_come_in_the_same_order_for_every_seed():
    from bench.data.digits import DigitsData

    orders = []
    for seed in (0, 1):
        dm = DigitsData(seed=seed, batch_size=50)
        dm.setup()
        for _ in range(2):  # and every epoch
            orders.append(torch.cat([y for _, y in dm.test_dataloader()]))
    assert all(torch.equal(orders[0], o) for o in orders[1:])
    assert torch.equal(orders[0], dm.test_set.labels)  # the test split's own order


def test_a_run_records_its_predictions_and_metric_definitions(tmp_path, capsys):
    from bench.cli import main
    from bench.store import run_dirs
    from conftest import TINY

    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["matrix"] = {"model.fusion": ["conv"], "seed": [0]}
    cfg["trainer"].update(limit_train_batches=1, limit_test_batches=3)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--results", str(tmp_path / "results")]) == 0
    (rd,) = run_dirs(tmp_path / "results", "tiny").values()
    metrics = json.loads((rd.path / "metrics.json").read_text())
    assert metrics["metrics_version"] == 2
    assert set(metrics["metric_definitions"]) == {"acc1", "acc5", "bal_acc"}
    assert "micro" in metrics["metric_definitions"]["acc1"]
    assert set(metrics["test"]) >= {"test/acc1", "test/acc5", "test/bal_acc", "test/loss"}
    arrays = rd.predictions()
    assert set(arrays) == {"index", "labels", "pred", "correct", "top5"}
    n = 3 * 32  # three test batches of 32
    assert arrays["index"].tolist() == list(range(n))
    (run,) = experiment_from_dict(cfg).runs
    from bench.data import build_datamodule

    dm = build_datamodule(run.config["data"], 0)
    dm.setup()
    assert arrays["labels"].tolist() == dm.test_set.labels[:n].tolist()
    assert arrays["correct"].mean() == pytest.approx(metrics["test"]["test/acc1"])
    assert (rd.path / "predictions.npz").stat().st_size < 4096
