"""The fusion strategies: every way this project combines the unary and binary terms.

Each strategy is a drop-in for the 3x3 conv + BN of a ResNet bottleneck with one constructor
contract, `Strategy(channels, *, heads=8, stride=1, dilation=1, max_size=64, window=None)`,
and lives in `FUSIONS` under the name used in configs. A new strategy is one class plus
`@register("name")`. `window` (an int) swaps the global binary term for the windowed one of
lesa/window.py (HaloNet-style local attention for high-resolution maps); None keeps it global.

What each computes (U: unary term, B_i = sum_j a_ij v_j: binary term, heads concatenated):

    conv     3x3 conv + BN                              (CNN baseline, no shares)
    sa       B (diagonal included)                      unary share = mean a_ii
    binary   B with j = i masked, renormalised          unary share = 0
    unary    U                                          unary share = 100
    softmax  a_ii U_i + sum_{j!=i} a_ij v_j             unary share = mean a_ii
    sum      U + B                                      unary share = 50
    dynamic  U + omega * B  (LESA)                      unary share = mean 1 / (1 + omega)

In `sum` and `dynamic`, B keeps the diagonal, as in the released LESA code.
"""
from __future__ import annotations

import torch
from torch import nn

from .binary import BinaryTerm
from .layout import Pointwise, is_channels_last, to_layout
from .unary import UnaryTerm
from .window import WindowedBinaryTerm

FUSIONS: dict[str, type["Fusion"]] = {}


def register(name: str):
    def add(cls):
        FUSIONS[name] = cls
        cls.name = name
        return cls

    return add


class Fusion(nn.Module):
    """Base of all strategies: stride by average pooling and the unary/binary share record.

    The record (percent of the output attributed to the unary term) is kept for the last forward
    and as a running mean since `reset_shares()`. Strategies whose share needs extra work (`sa`)
    only do it while `record_shares` is True; training loops switch it off for speed.
    """

    name = "?"
    fixed_unary_share: float | None = None  # percent, for strategies whose share is a constant

    def __init__(self, channels: int, *, heads: int = 8, stride: int = 1, dilation: int = 1,
                 max_size: int = 64, window: int | None = None):
        super().__init__()
        self.channels = channels
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.record_shares = True
        self.reset_shares()

    def reset_shares(self) -> None:
        self.last_unary_share: float | None = None
        self._share_sum = 0.0
        self._share_count = 0

    def _record(self, unary_share: torch.Tensor | float | None) -> None:
        if unary_share is None:
            return
        value = float(unary_share) * 100.0 if isinstance(unary_share, torch.Tensor) else unary_share
        self.last_unary_share = value
        self._share_sum += value
        self._share_count += 1

    @property
    def running_unary_share(self) -> float | None:
        return self._share_sum / self._share_count if self._share_count else None

    def fuse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        """Return the fused output (same size as x) and the unary share (fraction) or None."""
        raise NotImplementedError

    # a training step on CPU runs the block channels last inside, whatever the caller's layout:
    # its 1x1 convolutions are then single GEMMs (lesa/layout.py; the dynamic block's step in
    # 0.93x the time at B=8, 256 x 16 x 16). Not in inference, where the two layout copies cost
    # more than the GEMMs gain (1.03-1.14x the time).
    channels_last_on_cpu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (self.channels_last_on_cpu and torch.is_grad_enabled()
                  and x.device.type == "cpu" and not is_channels_last(x))
        y, share = self.fuse(to_layout(x, torch.channels_last) if inside else x)
        if self.record_shares:
            self._record(share if self.fixed_unary_share is None else self.fixed_unary_share)
        y = self.pool(y)
        return to_layout(y, torch.contiguous_format) if inside else y


@register("conv")
class ConvFusion(Fusion):
    """The CNN baseline: 3x3 conv + BN (striding in the conv, as torchvision's ResNet v1.5)."""

    def __init__(self, channels, *, heads=8, stride=1, dilation=1, max_size=64, window=None):
        super().__init__(channels)
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=dilation,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class AttentionFusion(Fusion):
    """Strategies built from the binary term (and the unary term when `uses_unary`)."""

    uses_unary = True

    def __init__(self, channels, *, heads=8, stride=1, dilation=1, max_size=64, window=None):
        super().__init__(channels, heads=heads, stride=stride, max_size=max_size)
        self.binary = (BinaryTerm(channels, heads, max_size) if window is None
                       else WindowedBinaryTerm(channels, heads, max_size, window))
        self.unary = UnaryTerm(channels, heads) if self.uses_unary else None


@register("sa")
class SelfAttention(AttentionFusion):
    """Standard self-attention: a_ii v_i + sum_{j!=i} a_ij v_j."""

    uses_unary = False

    def fuse(self, x):
        height, width = x.shape[-2:]
        q, k, v = self.binary.project(x)
        out, a_ii = self.binary.attend(q, k, v, height, width,
                                       "report" if self.record_shares else "keep")
        share = a_ii.detach().mean() if a_ii is not None else None
        return self.binary.merge(out, height, width, like=x), share


@register("binary")
class BinaryOnly(AttentionFusion):
    """Self-attention with the diagonal removed and renormalised over j != i (context only)."""

    uses_unary = False
    fixed_unary_share = 0.0

    def fuse(self, x):
        height, width = x.shape[-2:]
        q, k, v = self.binary.project(x)
        out, _ = self.binary.attend(q, k, v, height, width, "mask")
        return self.binary.merge(out, height, width, like=x), None


@register("unary")
class UnaryOnly(Fusion):
    """The conv-enhanced local term alone."""

    fixed_unary_share = 100.0

    def __init__(self, channels, *, heads=8, stride=1, dilation=1, max_size=64, window=None):
        super().__init__(channels, heads=heads, stride=stride, max_size=max_size)
        self.unary = UnaryTerm(channels, heads)

    def fuse(self, x):
        return self.unary(x), None


@register("softmax")
class SoftmaxFusion(AttentionFusion):
    """The enhanced unary term competes inside the softmax: a_ii U_i + sum_{j!=i} a_ij v_j."""

    def fuse(self, x):
        height, width = x.shape[-2:]
        q, k, v = self.binary.project(x)
        out, a_ii = self.binary.attend(q, k, v, height, width, "report")
        u = self.unary(x).flatten(2).transpose(1, 2).unflatten(-1, (self.binary.heads, -1))
        u = u.transpose(1, 2)  # (B, heads, L, dv), the same channel split as v
        out = out + a_ii.unsqueeze(-1) * (u - v)
        return self.binary.merge(out, height, width, like=x), a_ii.detach().mean()


@register("sum")
class SumFusion(AttentionFusion):
    """Static fusion with equal weights: U + B."""

    fixed_unary_share = 50.0

    def fuse(self, x):
        return self.unary(x) + self.binary(x), None


@register("dynamic")
class DynamicFusion(AttentionFusion):
    """LESA: Y = U + omega * B, omega = sigmoid(BN(FC(ReLU(BN(FC(ReLU([U, B]))))))) per channel
    and position (FC = 1x1 conv, 2C -> C -> C)."""

    def __init__(self, channels, *, heads=8, stride=1, dilation=1, max_size=64, window=None):
        super().__init__(channels, heads=heads, stride=stride, max_size=max_size, window=window)
        self.gate = nn.Sequential(  # in-place ReLUs: on the fresh cat and BN outputs
            nn.ReLU(inplace=True),
            Pointwise(2 * channels, channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            Pointwise(channels, channels),
            nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )

    def fuse(self, x):
        u = self.unary(x)
        b = self.binary(x)
        omega = self.gate(torch.cat([u, b], dim=1))
        share = (1.0 / (1.0 + omega.detach())).mean() if self.record_shares else None
        return torch.addcmul(u, omega, b), share  # u + omega * b in one pass
