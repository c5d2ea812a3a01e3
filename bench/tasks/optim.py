"""Optimiser and schedule from the `optim:` config section, shared by every task."""
from __future__ import annotations

import math

import torch


def build_optimizers(module: torch.nn.Module, optim: dict, max_epochs: int,
                     steps_per_epoch: int, batch_size: int) -> dict:
    """SGD (Nesterov) or AdamW with linear warm-up then cosine decay, stepped every batch.

    optim.lr is for optim.lr_batch images per step when lr_batch is set (the paper: 0.05 per
    128), and scaled linearly to the real batch; otherwise used as is. Weight decay skips
    biases, norms and the relative position tables (1-D or table parameters), as timm does.
    """
    lr = optim["lr"] * (batch_size / optim["lr_batch"] if optim.get("lr_batch") else 1.0)
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("rel_h", "rel_w")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    if optim["name"] == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=optim["momentum"],
                              nesterov=optim["nesterov"] and optim["momentum"] > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=lr)
    total = max(1, max_epochs * steps_per_epoch)
    warmup = min(total - 1, int(optim["warmup_epochs"] * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
