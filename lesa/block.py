"""LESA2d, the public drop-in module, and the share report over a whole model."""
from __future__ import annotations

import torch
from torch import nn

from .fusion import Fusion, build


class LESA2d(nn.Module):
    """Locally enhanced self-attention as a drop-in for a bottleneck's 3x3 conv + BN.

    (B, C, H, W) -> (B, C, H / stride, W / stride) for any H, W up to `max_map_size` (the reach
    of the relative position tables), non-square maps and batch size 1 included. `fusion` picks
    the strategy from `lesa.FUSIONS` (default: the paper's dynamic fusion), which takes the
    options it uses. `window` (an int) makes the binary term local (lesa/window.py): window x
    window query blocks with a halo of window // 2, for maps of any size (the tables then need
    max_map_size >= 1.5 window). Further keywords are strategy options (e.g. `weight` of
    `static`), passed to the strategies that take them.
    """

    def __init__(self, channels: int, heads: int = 8, fusion: str = "dynamic", stride: int = 1,
                 dilation: int = 1, max_map_size: int = 64, window: int | None = None,
                 **fusion_options):
        super().__init__()
        self.fusion = build(fusion, channels, heads=heads, stride=stride, dilation=dilation,
                            max_map_size=max_map_size, window=window, **fusion_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(x)


def _fusions(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, Fusion) and module.name != "conv":
            yield name.removesuffix(".fusion"), module


def shares(model: nn.Module, running: bool = False) -> dict:
    """Unary and binary shares (percent) of every attention module, and their mean.

    From each module's last forward, or (running=True) the mean over forwards since
    `reset_shares(model)`. Returns {"per_module": {name: {"unary", "binary"}}, "unary",
    "binary"}; the means are None when the model has no attention module or nothing was
    recorded.
    """
    per_module = {}
    for name, module in _fusions(model):
        value = module.running_unary_share if running else module.last_unary_share
        if value is not None:
            per_module[name] = {"unary": value, "binary": 100.0 - value}
    if not per_module:
        return {"per_module": {}, "unary": None, "binary": None}
    unary = sum(v["unary"] for v in per_module.values()) / len(per_module)
    return {"per_module": per_module, "unary": unary, "binary": 100.0 - unary}


def record_shares(model: nn.Module, on: bool = True) -> None:
    """Switch share recording on (default) or off for every attention module in model."""
    for _, module in _fusions(model):
        module.record_shares = on


def reset_shares(model: nn.Module) -> None:
    for _, module in _fusions(model):
        module.reset_shares()
