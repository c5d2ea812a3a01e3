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

    The terms' options (docs/library.md, "The release's choices"), each taken by the strategies
    it applies to: `logits` "scaled" (q.k / sqrt(d), default) or "batchnorm" (the release's
    per-term, per-head BatchNorm, summed); `positions` "relative2d" (default) or "raster" (the
    classification release's q/k/v embeddings over the raster offset; maps of up to
    max_map_size^2 positions); `unary` "grouped" (default) or "deformable" (the detection
    release's); `deformable` (conv only) makes the baseline's 3x3 deformable.
    """

    def __init__(self, channels: int, heads: int = 8, fusion: str = "dynamic", stride: int = 1,
                 dilation: int = 1, max_map_size: int = 64, window: int | None = None,
                 logits: str = "scaled", positions: str = "relative2d", unary: str = "grouped",
                 deformable: bool = False, **fusion_options):
        super().__init__()
        self.fusion = build(fusion, channels, heads=heads, stride=stride, dilation=dilation,
                            max_map_size=max_map_size, window=window, logits=logits,
                            positions=positions, unary=unary, deformable=deformable,
                            **fusion_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(x)


def attention_modules(model: nn.Module):
    """(name, strategy module) of every attention module (every strategy but conv) of a model;
    the name is the block's, without ".fusion"."""
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
    for name, module in attention_modules(model):
        value = module.running_unary_share if running else module.last_unary_share
        if value is not None:
            per_module[name] = {"unary": value, "binary": 100.0 - value}
    if not per_module:
        return {"per_module": {}, "unary": None, "binary": None}
    unary = sum(v["unary"] for v in per_module.values()) / len(per_module)
    return {"per_module": per_module, "unary": unary, "binary": 100.0 - unary}


def reference_paths(model: nn.Module) -> dict[str, str]:
    """{module name: reason} of the attention modules whose binary term takes the explicit
    reference path whatever its `kernel` (e.g. the release's raster positions); {} if none."""
    out = {}
    for name, module in attention_modules(model):
        reason = getattr(getattr(module, "binary", None), "reference_reason", None)
        if reason is not None:
            out[name] = reason
    return out


def record_shares(model: nn.Module, on: bool = True) -> None:
    """Switch share recording on (default) or off for every attention module in model."""
    for _, module in attention_modules(model):
        module.record_shares = on


def reset_shares(model: nn.Module) -> None:
    for _, module in attention_modules(model):
        module.reset_shares()


# --- what the share analysis needs beside the shares (the suite's bench/train/shares.py) -------
DIAGONAL_SHARE = ("sa", "softmax")  # strategies whose unary share is mean a_ii


def capture_share_maps(model: nn.Module, on: bool = True) -> None:
    """Keep (on) or drop each attention module's per-position unary share of its last
    recorded forward, `last_share_map` (B, H, W) at the module's input resolution: mean over
    channels of 1 / (1 + omega) (dynamic), mean over heads of a_ii (sa, softmax), a constant
    for the fixed strategies. Needs share recording on."""
    for _, module in attention_modules(model):
        module.capture_share_map = on
        module.last_share_map = None


def share_maps(model: nn.Module) -> dict:
    """{module name: (B, H, W) unary share per position (fraction)} of the last forward."""
    return {name: module.last_share_map for name, module in attention_modules(model)
            if getattr(module, "last_share_map", None) is not None}


def _mean_inverse_keys(side: int, window: int, halo: int) -> float:
    """Mean over the positions of one axis of 1 / (keys along it) for windowed attention."""
    total = 0.0
    for y in range(side):
        start = (y // window) * window
        total += 1 / (min(side, start + window + halo) - max(0, start - halo))
    return total / side


def attention_geometry(model: nn.Module) -> dict:
    """Per attention module with a binary term, from its last recorded forward: the map
    [H, W], L (keys per query: H x W; for windowed attention the harmonic mean over queries)
    and `uniform`, uniform attention's weight on the diagonal, mean 1 / L (percent): the null
    of mean a_ii. `diagonal_share`: whether the module's unary share is mean a_ii."""
    out = {}
    for name, module in attention_modules(model):
        size = getattr(module, "last_map_size", None)
        binary = getattr(module, "binary", None)
        if size is None or binary is None:
            continue
        h, w = size
        window = getattr(binary, "window", None)
        if window is None:
            inverse = 1 / (h * w)
        else:
            inverse = (_mean_inverse_keys(h, window, binary.halo)
                       * _mean_inverse_keys(w, window, binary.halo))
        out[name] = {"map": [h, w], "L": 1 / inverse, "uniform": 100 * inverse,
                     "diagonal_share": module.name in DIAGONAL_SHARE}
    return out


class _GateRecord:
    """A forward hook on a dynamic gate: a histogram of omega over [0, 1] and per-channel sums
    (over images and positions), accumulated until removed."""

    def __init__(self, module: nn.Module, bins: int):
        self.bins = bins
        self.hist = None
        self.channel_sum = None
        self.count = 0
        self.handle = module.gate.register_forward_hook(self)

    def __call__(self, gate, inputs, omega):
        omega = omega.detach().float()
        hist = torch.histc(omega, self.bins, 0.0, 1.0).double()
        channel = omega.sum((0, 2, 3)).double()
        self.hist = hist if self.hist is None else self.hist + hist
        self.channel_sum = channel if self.channel_sum is None else self.channel_sum + channel
        self.count += omega.shape[0] * omega.shape[2] * omega.shape[3]


def record_gates(model: nn.Module, on: bool = True, bins: int = 1000) -> None:
    """Start (afresh) or stop recording omega in every module with a gate (`dynamic` and its
    variants): see `gate_records`."""
    for _, module in attention_modules(model):
        if not isinstance(getattr(module, "gate", None), nn.Sequential):
            continue
        old = getattr(module, "_gate_record", None)
        if old is not None:
            old.handle.remove()
        module._gate_record = _GateRecord(module, bins) if on else None


def gate_records(model: nn.Module) -> dict:
    """{module: {"hist", "channel_sum", "count", "gamma", "beta"}} of the modules recording
    their gate: omega's histogram over [0, 1], its per-channel sums and the number of
    (image, position) pairs summed, and the gate's last BatchNorm weight and bias (None where
    frozen)."""
    out = {}
    for name, module in attention_modules(model):
        record = getattr(module, "_gate_record", None)
        if record is None or record.hist is None:
            continue
        norm = module.gate[-2]
        out[name] = {"hist": record.hist, "channel_sum": record.channel_sum,
                     "count": record.count, "gamma": getattr(norm, "weight", None),
                     "beta": getattr(norm, "bias", None)}
    return out
