"""Memory layout on CPU: a LESA block trains channels last inside, whatever the caller's layout.

A LESA block is mostly 1x1 convolutions (the qkv projection, the unary term's mix, the gate's
two) and batch norms. On CPU a 1x1 convolution on an NCHW map is slower, forward and backward,
than the same product as one GEMM over the (B x H x W, C) rows of a channels-last map
(`Pointwise`). So in a training step on CPU a block given an NCHW map converts it once on the
way in and once on the way out (`to_layout`, called by lesa/fusion.py's `Fusion.forward`), and
each conversion's backward converts the gradient back: a gradient in the other layout than its
tensor sends batch norms and convolutions to much slower kernels. Inference stays in the
caller's layout: there the two copies cost more than the GEMMs gain. A channels-last network
(`build_backbone(..., channels_last=True)`) needs no conversion at all.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a (B, C, H, W) map is laid out channels last (B, H, W, C) in memory."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _ToLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, memory_format):
        ctx.back = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.back), None


def to_layout(x: torch.Tensor, memory_format) -> torch.Tensor:
    """x in `memory_format`, its gradient in x's own layout (`Tensor.contiguous` would pass the
    gradient on in the new layout). x itself where it is laid out so already (a 1x1 map is in
    both layouts): a custom Function may not return its input, or an in-place op on the result
    (the bottleneck's ReLU) fails."""
    if x.is_contiguous(memory_format=memory_format):
        return x
    return _ToLayout.apply(x, memory_format)


class Pointwise(nn.Conv2d):
    """A 1x1 convolution without bias that runs as one GEMM on a channels-last map on CPU
    (the parameters and state dict of nn.Conv2d; elsewhere nn.Conv2d's own forward)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not is_channels_last(x):
            return super().forward(x)
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view: x is channels last
        out = F.linear(rows, self.weight.flatten(1))
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)
