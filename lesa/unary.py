"""The unary (local) term of LESA: a convolution that strengthens a position's view of itself."""
from __future__ import annotations

import torch
from torch import nn

from .deformable import DeformableConv3x3
from .layout import Pointwise

UNARY = ("grouped", "deformable")


class UnaryTerm(nn.Module):
    """U = BN(Conv1x1(GroupConv3x3(x, groups=heads))), C channels in and out.

    This is the classification release's unary branch; `local="deformable"` makes the grouped
    3x3 deformable (lesa/deformable.py, one offset group), as the detection release's.
    Grouping by heads keeps channel groups aligned with the attention heads, so head h of the
    unary term sits next to head h of the binary term in `softmax`.
    """

    def __init__(self, channels: int, heads: int = 8, local: str = "grouped"):
        super().__init__()
        if local not in UNARY:
            raise ValueError(f"unary must be one of {', '.join(UNARY)}, not {local!r}")
        self.local = (nn.Conv2d(channels, channels, 3, padding=1, groups=heads, bias=False)
                      if local == "grouped" else DeformableConv3x3(channels, channels,
                                                                   groups=heads))
        self.mix = Pointwise(channels, channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.mix(self.local(x)))
