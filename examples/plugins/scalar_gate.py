"""A fusion strategy as a plugin: Y = U + sigmoid(alpha) * B, one learned scalar alpha per block.

Between `sum` (U + B) and `static` (U + c B with c fixed) and LESA's `dynamic` (a per-channel,
per-position gate): does a single learned weight for the context term do what the full gate
does? List this file under `plugins:` in an experiment file and name `scalar_gate` in
`model.fusion`; `lesa-bench check-plugin examples/plugins/scalar_gate.py` tests it against the
contract the built-in strategies are tested against (docs/plugins.md).
"""
from __future__ import annotations

import torch
from torch import nn

from lesa.fusion import AttentionFusion, register


@register("scalar_gate")
class ScalarGate(AttentionFusion):
    """U + sigmoid(alpha) B; unary share 1 / (1 + sigmoid(alpha)) (2/3 at alpha = 0)."""

    # set in an experiment as model.scalar_gate.alpha_init (the runs of this strategy only)
    options = {"alpha_init": 0.0}

    @classmethod
    def check_options(cls, options: dict) -> None:
        if abs(options["alpha_init"]) > 20:  # sigmoid saturates: alpha would never move
            raise ValueError(f"alpha_init: {options['alpha_init']} saturates the sigmoid; "
                             f"choose a value in [-20, 20]")

    # the keywords it names are what lesa.fusion.build passes it (of heads, stride, dilation,
    # max_map_size, window, logits, positions, unary, deformable, and its options)
    def __init__(self, channels: int, *, heads: int = 8, stride: int = 1,
                 max_map_size: int = 64, window: int | None = None, logits: str = "scaled",
                 positions: str = "relative2d", unary: str = "grouped",
                 alpha_init: float = 0.0):
        super().__init__(channels, heads=heads, stride=stride, max_map_size=max_map_size,
                         window=window, logits=logits, positions=positions, unary=unary)
        self.alpha_init = float(alpha_init)
        self.alpha = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Its own parameter (the terms' layers initialise themselves)."""
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init)

    def fuse(self, x):
        gate = torch.sigmoid(self.alpha)
        return self.unary(x) + gate * self.binary(x), 1.0 / (1.0 + gate.detach())

    def extra_repr(self) -> str:
        return f"alpha_init={self.alpha_init}"
