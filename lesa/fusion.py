"""The fusion strategies: every way this project combines the unary and binary terms.

Each strategy is a drop-in for the 3x3 conv + BN of a ResNet bottleneck and lives in `FUSIONS`
under the name used in configs. A new strategy is one class plus `@register("name")`; its
constructor takes `channels` and the keywords it uses of `heads`, `stride`, `dilation`,
`max_map_size`, `window`, and the terms' options `logits`, `positions`, `unary` (the attention
strategies) and `deformable` (conv), and `build` passes it just those. `window` (an int) swaps the
global binary term for the windowed one of lesa/window.py; None keeps it global.

What each computes (U: unary term, B_i = sum_j a_ij v_j: binary term, heads concatenated) and
the unary share of its output that `fuse` gives (a fraction; the reports show percent):

    conv     3x3 conv + BN                              (CNN baseline, no shares)
    sa       B (diagonal included)                      unary share = mean a_ii
    binary   B with j = i masked, renormalised          unary share = 0
    unary    U                                          unary share = 1
    softmax  a_ii U_i + sum_{j!=i} a_ij v_j             unary share = mean a_ii
    sum      U + B                                      unary share = 1/2
    dynamic  U + omega * B  (LESA)                      unary share = mean 1 / (1 + omega)

and two controls for `dynamic` (is learning omega what helps?):

    static          U + c * B, c fixed (0.5: the dynamic gate's mean at initialisation)
                                                        unary share = 1 / (1 + c)
    dynamic_frozen  dynamic with the gate's last BatchNorm frozen at gamma 1, beta 0: where
                    omega is large is learnt, its per-channel level is not
                                                        unary share = mean 1 / (1 + omega)

In `sum`, `static` and the dynamic ones, B keeps the diagonal, as in the released LESA code.

A strategy of one's own (a plugin, docs/plugins.md) is the same: a subclass of `Fusion` (or of
`AttentionFusion`, to get the binary term as `self.binary` and the unary one as `self.unary`)
registered with `@register("name")`. Its contract, which `lesa-bench check-plugin` tests:

    fuse(x) -> (y, share)   y of x's shape and dtype (Fusion.forward pools it by the stride);
                            share: the unary share as a fraction in [0, 1], a (B, k, H, W)
                            tensor of them, or None (no share to report)
    options                 {option: default}: the keywords it takes beyond the shared ones,
                            set in a config as model.<name>.<option>
    check_options(options)  raise ValueError for option values it cannot take
    reset_parameters()      where it holds parameters of its own (not in a submodule):
                            initialise them (seeded initialisation calls it)

A name is registered once: a second class under a taken name (a built-in's above all) is
refused, and so is a name that is not a plain identifier (names become run folder names).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .binary import BinaryTerm
from .deformable import DeformableConv3x3
from .layout import Pointwise, is_channels_last, to_layout
from .names import Registry, unknown
from .unary import UnaryTerm
from .window import WindowedBinaryTerm

def register(name: str):
    """Class decorator: FUSIONS[name] = the class (a Fusion subclass), by lesa.names.Registry's
    rules: the same class again is a no-op, another under a taken name a ValueError."""
    FUSIONS.check_name(name)

    def add(cls):
        FUSIONS.add(name, cls, _check_options)
        cls.name = name
        return cls

    return add


def _check_options(name: str, cls) -> None:
    options = getattr(cls, "options", None)
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise TypeError(f"{cls.__qualname__}.options must be a dict of option name -> "
                        f"default, not {options!r}")


def unregister(name: str) -> None:
    """Remove a strategy that is not a built-in (a plugin's, when it is unloaded)."""
    FUSIONS.remove(name)


def check_fusion(name: str) -> None:
    if name not in FUSIONS:
        raise ValueError(unknown("fusion", name, FUSIONS))


def build(name: str, channels: int, **options) -> "Fusion":
    """FUSIONS[name](channels, ...) with the options its constructor takes; the others do not
    apply to it (a conv has no window, the attention strategies no dilation)."""
    check_fusion(name)
    cls = FUSIONS[name]
    takes = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values()):
        options = {key: value for key, value in options.items() if key in takes}
    return cls(channels, **options)


class Fusion(nn.Module):
    """Base of all strategies: stride by average pooling and the unary/binary share record.

    `fuse` gives the unary share of its output as a fraction (or None); the record keeps it in
    percent, the unit of every report: for the last forward and as a running mean since
    `reset_shares()`. Strategies whose share needs extra work (`sa`) only do it while
    `record_shares` is True; training loops switch it off for speed.
    """

    name = "?"
    # the options a strategy takes beyond the shared keywords, with their defaults (configs:
    # model.<name>.<option>); the constructor takes each as a keyword
    options: dict = {}

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise ValueError (naming the option) for values the strategy cannot take; run on
        every run's config at load time, before anything is built."""

    def __init__(self, channels: int, *, stride: int = 1):
        super().__init__()
        self.channels = channels
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.record_shares = True
        self.capture_share_map = False  # keep last_share_map (lesa.capture_share_maps)
        self.reset_shares()

    def reset_shares(self) -> None:
        self.last_unary_share: float | None = None  # percent
        self.last_share_map: torch.Tensor | None = None  # (B, H, W) fraction, when captured
        self.last_map_size: tuple[int, int] | None = None  # (H, W) of the input map
        self._share_sum = 0.0
        self._share_count = 0

    def _record(self, unary_share: torch.Tensor | float | None, x: torch.Tensor) -> None:
        """`unary_share`: a number or a (B, k, H, W) tensor of per-position shares over k
        channels or heads (fractions); the share is its mean."""
        if unary_share is None:
            return
        self.last_map_size = tuple(x.shape[-2:])
        if isinstance(unary_share, torch.Tensor) and unary_share.dim() == 4:
            if self.capture_share_map:
                self.last_share_map = unary_share.float().mean(1)
            unary_share = unary_share.mean()
        elif self.capture_share_map:
            self.last_share_map = x.new_full((x.shape[0], *x.shape[-2:]), float(unary_share),
                                             dtype=torch.float32)
        value = float(unary_share) * 100.0
        self.last_unary_share = value
        self._share_sum += value
        self._share_count += 1

    @property
    def running_unary_share(self) -> float | None:
        """Percent, the mean since `reset_shares()`."""
        return self._share_sum / self._share_count if self._share_count else None

    def fuse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        """Return the fused output (same size as x) and the unary share (fraction): a number,
        a (B, k, H, W) tensor of per-position shares (the share is its mean), or None."""
        raise NotImplementedError

    # in a CPU training step the block runs channels last inside, whatever the caller's layout:
    # its 1x1 convolutions are then single GEMMs (lesa/layout.py); not in inference, where the
    # two layout copies cost more than the GEMMs gain
    channels_last_on_cpu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (self.channels_last_on_cpu and torch.is_grad_enabled()
                  and x.device.type == "cpu" and not is_channels_last(x))
        y, share = self.fuse(to_layout(x, torch.channels_last) if inside else x)
        if self.record_shares:
            self._record(share, x)
        y = self.pool(y)
        return to_layout(y, torch.contiguous_format) if inside else y


# name -> strategy class: the strategies below register here; sealed as the built-ins at the end
FUSIONS = Registry("strategy", Fusion, home="lesa/fusion.py", classes=True)


@register("conv")
class ConvFusion(Fusion):
    """The CNN baseline: 3x3 conv + BN (striding in the conv, as torchvision's ResNet v1.5)."""

    def __init__(self, channels: int, *, stride: int = 1, dilation: int = 1,
                 deformable: bool = False):
        super().__init__(channels)
        self.conv = (DeformableConv3x3(channels, channels, stride, dilation) if deformable else
                     nn.Conv2d(channels, channels, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False))
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class AttentionFusion(Fusion):
    """Strategies built from the binary term (and the unary term when `uses_unary`)."""

    uses_unary = True

    def __init__(self, channels: int, *, heads: int = 8, stride: int = 1,
                 max_map_size: int = 64, window: int | None = None, logits: str = "scaled",
                 positions: str = "relative2d", unary: str = "grouped"):
        super().__init__(channels, stride=stride)
        if window is not None and (logits, positions) != ("scaled", "relative2d"):
            raise ValueError(f"the windowed binary term takes the default logits and positions "
                             f"only (scaled, relative2d), not {logits}, {positions}")
        self.binary = (BinaryTerm(channels, heads, max_map_size, logits, positions)
                       if window is None
                       else WindowedBinaryTerm(channels, heads, max_map_size, window))
        self.unary = UnaryTerm(channels, heads, unary) if self.uses_unary else None

    def attend(self, x: torch.Tensor, diagonal: str):
        """The binary term's attention on x: (out, a_ii or None, v) per head, before the merge."""
        q, k, v = self.binary.project(x)
        out, a_ii = self.binary.attend(q, k, v, *x.shape[-2:], diagonal)
        return out, a_ii, v

    def merge(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.binary.merge(out, *x.shape[-2:], like=x)


@register("sa")
class SelfAttention(AttentionFusion):
    """Standard self-attention: a_ii v_i + sum_{j!=i} a_ij v_j."""

    uses_unary = False

    def fuse(self, x):
        out, a_ii, _ = self.attend(x, "report" if self.record_shares else "keep")
        share = a_ii.detach().unflatten(-1, x.shape[-2:]) if a_ii is not None else None
        return self.merge(out, x), share


@register("binary")
class BinaryOnly(AttentionFusion):
    """Self-attention with the diagonal removed and renormalised over j != i (context only)."""

    uses_unary = False

    def fuse(self, x):
        out, _, _ = self.attend(x, "mask")
        return self.merge(out, x), 0.0


@register("unary")
class UnaryOnly(Fusion):
    """The conv-enhanced local term alone."""

    def __init__(self, channels: int, *, heads: int = 8, stride: int = 1,
                 unary: str = "grouped"):
        super().__init__(channels, stride=stride)
        self.unary = UnaryTerm(channels, heads, unary)

    def fuse(self, x):
        return self.unary(x), 1.0


@register("softmax")
class SoftmaxFusion(AttentionFusion):
    """The enhanced unary term competes inside the softmax: a_ii U_i + sum_{j!=i} a_ij v_j."""

    def fuse(self, x):
        out, a_ii, v = self.attend(x, "report")
        u = self.unary(x).flatten(2).transpose(1, 2).unflatten(-1, (self.binary.heads, -1))
        u = u.transpose(1, 2)  # (B, heads, L, dv), the same channel split as v
        swap = a_ii.unsqueeze(-1) * (u - v)
        if out.shape[-1] > swap.shape[-1]:  # raster positions: the value term stays as it is
            swap = F.pad(swap, (0, out.shape[-1] - swap.shape[-1]))
        out = out + swap
        return self.merge(out, x), a_ii.detach().unflatten(-1, x.shape[-2:])


@register("sum")
class SumFusion(AttentionFusion):
    """Static fusion with equal weights: U + B."""

    def fuse(self, x):
        return self.unary(x) + self.binary(x), 0.5


@register("dynamic")
class DynamicFusion(AttentionFusion):
    """LESA: Y = U + omega * B, omega = sigmoid(BN(FC(ReLU(BN(FC(ReLU([U, B]))))))) per channel
    and position (FC = 1x1 conv, 2C -> C -> C)."""

    def __init__(self, channels: int, *, heads: int = 8, stride: int = 1,
                 max_map_size: int = 64, window: int | None = None, logits: str = "scaled",
                 positions: str = "relative2d", unary: str = "grouped"):
        super().__init__(channels, heads=heads, stride=stride, max_map_size=max_map_size,
                         window=window, logits=logits, positions=positions, unary=unary)
        self.gate = nn.Sequential(  # in-place ReLUs: on the fresh cat and BN outputs
            nn.ReLU(inplace=True),
            Pointwise(2 * channels, channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            Pointwise(channels, channels),
            self.last_norm(channels),
            nn.Sigmoid(),
        )

    @staticmethod
    def last_norm(channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels)

    def fuse(self, x):
        u = self.unary(x)
        b = self.binary(x)
        omega = self.gate(torch.cat([u, b], dim=1))
        share = 1.0 / (1.0 + omega.detach()) if self.record_shares else None
        return torch.addcmul(u, omega, b), share  # u + omega * b in one pass


@register("static")
class StaticFusion(AttentionFusion):
    """U + c * B with a fixed c: the dynamic gate's output replaced by its mean at
    initialisation (c = 0.5 = E[sigmoid(z)], z ~ N(0, 1)), nothing learnt about omega."""

    def __init__(self, channels: int, *, heads: int = 8, stride: int = 1,
                 max_map_size: int = 64, window: int | None = None, weight: float = 0.5,
                 logits: str = "scaled", positions: str = "relative2d", unary: str = "grouped"):
        super().__init__(channels, heads=heads, stride=stride, max_map_size=max_map_size,
                         window=window, logits=logits, positions=positions, unary=unary)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"static fusion weight must be a number >= 0, got {weight!r}")
        self.weight = float(weight)

    def fuse(self, x):
        return torch.add(self.unary(x), self.binary(x), alpha=self.weight), 1 / (1 + self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


@register("dynamic_frozen")
class FrozenGateFusion(DynamicFusion):
    """`dynamic` with the gate's last BatchNorm frozen at gamma 1, beta 0 (affine=False): the
    sigmoid's input stays standardised per channel, so the gate learns where omega is large
    but not its level; the unary share stays near its built-in 68 % by construction."""

    @staticmethod
    def last_norm(channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels, affine=False)


FUSIONS.seal()
