"""A deformable 3x3 convolution (Dai et al. 2017, v1), the detection release's DCN.

    y(p) = sum_k w_k x(p + p_k + dp_k(p)),   dp(p) = Conv3x3(x)(p) (2 per tap, one offset group)

x is read bilinearly (zero outside the map). The offsets come from a plain 3x3 convolution with
bias, zero at initialisation (so it starts as the plain convolution), as mmcv's DCN and
torchvision.ops.DeformConv2d with its offset convolution. The sampling is torchvision's op
(`torchvision.ops.deform_conv2d`, imported on first use: importing lesa stays light); the weight
and the offset convolution are held here as parameters of one module, so that the backbone's
initialisation treats the weight as a convolution's and leaves the offsets at zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeformableConv3x3(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H', W'); `groups` as a grouped conv's (the release's unary
    term uses groups = heads), `offset_groups` (deform_groups) sets of offsets."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, offset_groups: int = 1):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must be divisible by "
                             f"groups ({groups})")
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))
        self.offset_weight = nn.Parameter(torch.empty(2 * 9 * offset_groups, in_channels, 3, 3))
        self.offset_bias = nn.Parameter(torch.empty(2 * 9 * offset_groups))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The weight as the backbone's convolutions (Kaiming normal, fan out), offsets zero."""
        with torch.no_grad():
            device = self.weight.device if generator is None else generator.device
            draw = torch.empty(self.weight.shape, device=device)
            nn.init.kaiming_normal_(draw, mode="fan_out", nonlinearity="relu",
                                    generator=generator)
            self.weight.copy_(draw)
            self.offset_weight.zero_()
            self.offset_bias.zero_()

    def offsets(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.offset_weight, self.offset_bias, self.stride, self.dilation,
                        self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import deform_conv2d

        return deform_conv2d(x, self.offsets(x), self.weight, stride=self.stride,
                             padding=self.dilation, dilation=self.dilation)

    def extra_repr(self) -> str:
        out, per_group = self.weight.shape[:2]
        return (f"{per_group * self.groups}, {out}, stride={self.stride}, "
                f"dilation={self.dilation}, groups={self.groups}, "
                f"offset_groups={self.offset_weight.shape[0] // 18}")
