"""ClassificationTask: a lesa backbone with a linear head; top-1/top-5 accuracy and balanced
accuracy from torchmetrics (their definitions: bench.tasks.CLASSIFICATION_METRICS), and a record
of every test image's prediction (`prediction_arrays`, saved as predictions.npz)."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores

import lesa
from bench.tasks import backbone_kwargs
from bench.tasks.optim import build_optimizers

TOP5 = 5  # acc5 is logged (and top5 recorded) only with more classes than this


class ClassificationTask(L.LightningModule):
    """Image classification with any fusion strategy; logs loss, acc1, acc5 (more than 5
    classes) and bal_acc on val and test."""

    def __init__(self, model: dict, optim: dict, num_classes: int, in_channels: int = 3,
                 image_size: int | tuple[int, int] = 32, max_epochs: int = 10,
                 batch_size: int = 64):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = lesa.build_backbone(
            model["backbone"], num_classes=num_classes, in_channels=in_channels,
            **backbone_kwargs(model))
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.example_input_array = torch.zeros(1, in_channels, *size)  # FLOPs are counted on it
        # micro: acc1/acc5 are the fraction of images right (torchmetrics' default, macro, is
        # class-balanced recall; that one is bal_acc, from the per-class counts)
        tops = [("acc1", 1)] + ([("acc5", TOP5)] if num_classes > TOP5 else [])
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for stage in ("val", "test") for name, k in tops})
        self.class_counts = torch.nn.ModuleDict({
            stage: MulticlassStatScores(num_classes, average=None) for stage in ("val", "test")})
        self.test_records: list[dict[str, torch.Tensor]] = []  # per test batch, filled on test

    @classmethod
    def from_config(cls, cfg: dict, datamodule) -> "ClassificationTask":
        # a datamodule with non-square images (probe_context) names their (height, width)
        size = getattr(datamodule, "example_image_size", None) or cfg["data"].get("image_size", 32)
        return cls(cfg["model"], cfg["optim"], datamodule.num_classes, datamodule.in_channels,
                   size, cfg["trainer"]["max_epochs"],
                   cfg["data"]["batch_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.optim["label_smoothing"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=len(x))
        return loss

    def _evaluate(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), batch_size=len(x), sync_dist=True)
        for key, metric in self.metrics.items():
            if key.startswith(f"{stage}_"):
                metric.update(logits, y)
                name = key.split("_", 1)[1]
                self.log(f"{stage}/{name}", metric, prog_bar=name == "acc1", batch_size=len(x))
        self.class_counts[stage].update(logits, y)
        return logits

    def _log_balanced(self, stage: str) -> None:
        # tp and support per class; classes absent from the split are left out of the mean
        # (torchmetrics' macro average would count a class only predicted as recall 0)
        counts = self.class_counts[stage].compute()
        self.class_counts[stage].reset()
        tp, support = counts[:, 0].double(), counts[:, 4].double()
        present = support > 0
        value = (tp[present] / support[present]).mean() if present.any() else torch.nan
        self.log(f"{stage}/bal_acc", float(value))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self):
        self._log_balanced("val")

    def on_test_epoch_start(self):
        self.test_records = []

    def test_step(self, batch, batch_idx):
        logits = self._evaluate(batch, "test")
        y = batch[1]
        # the image's index in the test split: the test loader does not shuffle (bench/data/
        # base.py) and under DDP rank r gets batches r, r + world, ... (bench/resume/batches.py)
        trainer = self.trainer
        if trainer.world_size == 1:
            first = sum(len(r["labels"]) for r in self.test_records)
        else:
            size = getattr(trainer.datamodule, "batch_size", None) or self.hparams.batch_size
            first = (batch_idx * trainer.world_size + trainer.global_rank) * size
        record = {"index": torch.arange(first, first + len(y)), "labels": y.detach().cpu(),
                  "pred": logits.argmax(1).detach().cpu()}
        if logits.shape[1] > TOP5:
            record["top5"] = logits.topk(TOP5, 1).indices.detach().cpu()
        self.test_records.append(record)

    def on_test_epoch_end(self):
        self._log_balanced("test")
        if self.trainer.world_size > 1:  # every rank's images (put back in order on packing)
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, self.test_records)
            self.test_records = [r for g in gathered for r in g]

    def prediction_arrays(self) -> dict[str, np.ndarray] | None:
        """Every test image, in the test split's order: `index` (its index in the split, for
        pairing runs image by image), `labels`, `pred` (top-1), `correct` (pred == label;
        its mean is test/acc1), and with more than 5 classes `top5` (the 5 top-scored
        classes, best first)."""
        if not self.test_records:
            return None
        arrays = {key: torch.cat([r[key] for r in self.test_records]).numpy()
                  for key in self.test_records[0]}
        order = np.argsort(arrays["index"], kind="stable")
        arrays = {key: value[order].astype(np.int64 if key != "top5" else np.int32)
                  for key, value in arrays.items()}
        arrays["correct"] = arrays["pred"] == arrays["labels"]
        return arrays

    def configure_optimizers(self):
        epochs = self.hparams.max_epochs
        steps = max(1, self.trainer.estimated_stepping_batches // max(1, epochs))
        return build_optimizers(self, self.hparams.optim, epochs, steps, self.hparams.batch_size)
