"""last.ckpt holds the final step even when the last epoch does not improve the monitor.

Lightning 2.6's ModelCheckpoint(save_last=True) writes last.ckpt at a validation end only when
that validation saved a top-k checkpoint too; bench/resume/checkpoints.py's PeriodicCheckpoint saves
the final step when training ends. (Found when a numerics change made the exact-resume test
compare an uninterrupted run's step-16 last.ckpt with a resumed run's step-18 one.)
"""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.resume.checkpoints import AtomicCheckpointIO, PeriodicCheckpoint


class Worsening(L.LightningModule):
    """Its monitored val/score is best after epoch 1 and worse ever after."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", -float(self.current_epoch))  # mode max: epoch 0 is the best

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    return DataLoader(TensorDataset(torch.randn(12, 4)), batch_size=4)


def test_last_checkpoint_is_the_final_step_when_the_last_epoch_does_not_improve(tmp_path):
    last = tmp_path / "last.ckpt"
    trainer = L.Trainer(
        accelerator="cpu",  # the comparison below is on the CPU, also where a GPU is seen
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, plugins=[AtomicCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/score",
                                   mode="max", save_last=True, enable_version_counter=False),
                   PeriodicCheckpoint(last, every_n_steps=2)])
    model = Worsening()
    trainer.fit(model, _loader(), _loader())
    assert trainer.global_step == 9
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 9  # without the final save: 8, the last periodic one
    assert torch.equal(saved["state_dict"]["layer.weight"], model.layer.weight.detach())
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["global_step"] == 3
