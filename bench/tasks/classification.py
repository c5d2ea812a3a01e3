"""ClassificationTask: a lesa backbone with a linear head, top-1/top-5 from torchmetrics."""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

import lesa
from bench.tasks import backbone_kwargs
from bench.tasks.optim import build_optimizers


class ClassificationTask(L.LightningModule):
    """Image classification with any fusion strategy; logs loss, top-1/top-5 on val and test."""

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
        top5 = min(5, num_classes)
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k)
            for stage in ("val", "test") for name, k in (("acc1", 1), ("acc5", top5))})

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

    def _evaluate(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), batch_size=len(x), sync_dist=True)
        for name in ("acc1", "acc5"):
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(logits, y)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "acc1", batch_size=len(x))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        epochs = self.hparams.max_epochs
        steps = max(1, self.trainer.estimated_stepping_batches // max(1, epochs))
        return build_optimizers(self, self.hparams.optim, epochs, steps, self.hparams.batch_size)
