"""The binary (context) term of LESA: global multi-head self-attention with 2-D relative logits.

Logits, per head, between query position i = (y_i, x_i) and key position j = (y_j, x_j):

    s_ij = q_i . k_j / sqrt(d)  +  q_i . r_h[y_j - y_i]  +  q_i . r_w[x_j - x_i]

The release normalises each logit term with its own BatchNorm instead of scaling; we use the
1/sqrt(d) scaling (the common modern choice), which lets every strategy run through torch's
fused attention with the relative logits folded into widened q and k (lesa/kernels/sdpa.py)
instead of an L x L bias.

How the attention is computed depends on the device (`BinaryTerm.kernel`, lesa/kernels/): on
CPU explicit logits in cache-sized chunks (chunked.py), or in inference one hand-written kernel
(fused_cpu.py); elsewhere one fused SDPA call on the widened q and k (sdpa.py), whose extra
channels cost more FLOPs than the explicit path on CPU.
"""
from __future__ import annotations

import torch
from torch import nn

from .kernels import fused_cpu, sdpa
from .kernels.chunked import relative_attention
from .layout import Pointwise, is_channels_last


class RelativePosition2d(nn.Module):
    """Decomposed 2-D relative position tables on the query side (BoTNet style).

    Tables cover offsets up to `max_map_size - 1` in each direction, so any feature map up to
    max_map_size x max_map_size works (smaller maps use the central slice of the tables).
    """

    def __init__(self, dim: int, max_map_size: int = 64):
        super().__init__()
        self.max_map_size = max_map_size
        self.rel_h = nn.Parameter(torch.empty(2 * max_map_size - 1, dim))
        self.rel_w = nn.Parameter(torch.empty(2 * max_map_size - 1, dim))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """N(0, 1/dim) entries, rel_h then rel_w, from `generator` (None: torch's global RNG)."""
        with torch.no_grad():
            for table in (self.rel_h, self.rel_w):
                device = table.device if generator is None else generator.device
                draw = torch.randn(table.shape, generator=generator, device=device)
                table.copy_(draw * table.shape[1]**-0.5)

    def _logits(self, q: torch.Tensor, table: torch.Tensor, n: int, axis: int) -> torch.Tensor:
        # q: (B, heads, H, W, d). out[..., a_i, t] = q_i . table[t - a_i] for t in 0..n-1, with
        # a_i the query's row (axis 0) or column (axis 1). For coordinate a the n table rows
        # needed are one window of the 2n - 1 offsets, so this is one GEMM per coordinate (a
        # bmm over a, the queries of that coordinate as rows): n logits per query, no gather,
        # and a backward of two bmm (a broadcast matmul's backward copies per matrix).
        m = self.max_map_size
        windows = table[m - n : m + n - 1].unfold(0, n, 1).flip(0)  # (n, d, n): [a] = rows of a
        by_coord = q.movedim(2 + axis, 0)  # (n, B, heads, other, d)
        out = torch.bmm(by_coord.reshape(n, -1, q.shape[-1]), windows)  # (n, B*heads*other, n)
        return out.view(*by_coord.shape[:-1], n).movedim(0, 2 + axis)

    def forward(self, q: torch.Tensor, height: int, width: int,
                scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, heads, L, d) -> logits over key rows (B, heads, L, H) and columns (..., W),
        times `scale` (applied to the small tables, not to the logits)."""
        by_row, by_col = self.grids(q, height, width, scale)
        b, h, length, _ = q.shape
        return by_row.reshape(b, h, length, height), by_col.reshape(b, h, length, width)

    def grids(self, q: torch.Tensor, height: int, width: int,
              scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The same logits over the query grid, (B, heads, H, W, H) and (B, heads, H, W, W), as
        strided views of the GEMM results: forward's (B, heads, L, .) needs one copy each,
        which the fused CPU kernel saves by reading these in place."""
        m = self.max_map_size
        if height > m or width > m:
            raise ValueError(
                f"feature map {height}x{width} is larger than the relative position tables "
                f"({m}x{m}); build the model with a larger max_map_size"
            )
        b, h, _, d = q.shape
        q2d = q.view(b, h, height, width, d)
        rel_h, rel_w = (self.rel_h, self.rel_w) if scale == 1.0 else \
            (self.rel_h * scale, self.rel_w * scale)
        return (self._logits(q2d, rel_h, height, axis=0),
                self._logits(q2d, rel_w, width, axis=1))


class BinaryTerm(nn.Module):
    """Global multi-head self-attention over all H*W positions (the context term).

    One 1x1 projection C -> 2C then BN gives, per head, q and k of C/(2*heads) channels and v of
    C/heads channels (C/16 and C/8 with the paper's 8 heads). The heads are concatenated and
    BN'd; there is no output projection (the bottleneck's next 1x1 conv plays that role).
    """

    def __init__(self, channels: int, heads: int = 8, max_map_size: int = 64):
        super().__init__()
        if channels % (2 * heads):
            raise ValueError(f"channels ({channels}) must be divisible by 2 * heads ({2 * heads})")
        self.heads = heads
        self.qk_dim = channels // (2 * heads)
        self.v_dim = channels // heads
        self.qkv = Pointwise(channels, 2 * channels)
        self.qkv_bn = nn.BatchNorm2d(2 * channels)
        self.rel = RelativePosition2d(self.qk_dim, max_map_size)
        self.out_bn = nn.BatchNorm2d(channels)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> q, k (B, heads, L, C/2heads) and v (B, heads, L, C/heads), as views.

        The split is on the axis outermost in memory: the backward pass concatenates the
        gradients on that axis, so the gradient reaching the BN comes back in the BN's own
        layout (in the other layout the BN backward takes a much slower kernel)."""
        c = x.shape[1]
        qkv = self.qkv_bn(self.qkv(x)).flatten(2)  # (B, 2C, L)
        sizes = [c // 2, c // 2, c]
        if is_channels_last(x):
            parts = [t.transpose(1, 2) for t in qkv.transpose(1, 2).split(sizes, dim=-1)]
        else:
            parts = qkv.split(sizes, dim=1)
        return tuple(t.unflatten(1, (self.heads, -1)).transpose(2, 3) for t in parts)

    # "auto": on CPU the chunked explicit path (in inference the fused CPU kernel where it
    # applies), elsewhere fused SDPA (GPU flash / memory-efficient kernels); "sdpa" / "chunked"
    # force one path on any device ("chunked": the torch ops, also in inference)
    kernel = "auto"
    recompute = False  # chunked path: rebuild the softmax weights in backward (O(L) memory)

    def uses_sdpa(self, q: torch.Tensor) -> bool:
        if self.kernel not in ("auto", "sdpa", "chunked"):
            raise ValueError(f"kernel must be auto, sdpa or chunked, not {self.kernel!r}")
        return self.kernel == "sdpa" or (self.kernel == "auto" and q.device.type != "cpu")

    def attend(self, q, k, v, height: int, width: int, diagonal: str = "keep"):
        """Attention output per head (B, heads, L, dv) and, if asked, the diagonal weights a_ii.

        diagonal: "keep" (plain attention), "mask" (j = i removed, renormalised over j != i),
        or "report" (plain attention plus a_ii (B, heads, L) from the same call), computed by
        the path `kernel` picks (lesa/kernels/).
        """
        if diagonal not in ("keep", "mask", "report"):
            raise ValueError(f"diagonal must be keep, mask or report, not {diagonal!r}")
        length = q.shape[-2]
        if diagonal == "mask" and length == 1:
            # nothing is left after removing j = i: the empty sum is 0 (fused kernels on some
            # devices give NaN for a fully masked row)
            return v * 0.0, None
        scale = self.qk_dim**-0.5
        if not self.uses_sdpa(q):
            inference = not (torch.is_grad_enabled() and any(
                t.requires_grad for t in (q, k, v, self.rel.rel_h, self.rel.rel_w)))
            if self.kernel == "auto" and inference and fused_cpu.applies(q, v):
                by_row, by_col = self.rel.grids(q, height, width)
                return fused_cpu.relative_attention(q, k, v, by_row, by_col, height, width,
                                                    scale, diagonal)
            by_row, by_col = self.rel(q, height, width)
            return relative_attention(q, k, v, by_row, by_col, height, width, scale, diagonal,
                                      self.recompute)
        mask = None
        if diagonal == "mask":
            # rank-4 float mask without grad: keeps SDPA on its fused CPU kernel
            mask = torch.zeros(1, 1, length, length, dtype=q.dtype, device=q.device)
            mask.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
        # the relative logits divided by the scale on the small tables: SDPA multiplies back
        by_row, by_col = self.rel(q, height, width, scale=1.0 / scale)
        onehots = sdpa.position_onehots(height, width, k).expand(*k.shape[:2], -1, -1)
        s_ii = self.self_logits(q, k) if diagonal == "report" else None
        return sdpa.attend([q, by_row, by_col], [k, onehots], v, scale, mask, s_ii)

    def self_logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """s_ii (..., L, 1): offset (0, 0), so q_i . (k_i / sqrt(d) + r_h[0] + r_w[0])."""
        m = self.rel.max_map_size
        at_zero = self.rel.rel_h[m - 1] + self.rel.rel_w[m - 1]
        return (q * (k * self.qk_dim**-0.5 + at_zero)).sum(-1, keepdim=True)

    def merge(self, heads_out: torch.Tensor, height: int, width: int,
              like: torch.Tensor | None = None) -> torch.Tensor:
        """(B, heads, L, dv) -> BN(concat heads) as (B, C, H, W), in one copy to the memory
        format of `like` (the block's input; contiguous if None): a result in the other
        layout would send the BN and every later op of the block (the gate, the fusion's
        sums) to slower mixed-layout kernels."""
        b, heads, _, dv = heads_out.shape
        if like is not None and is_channels_last(like):
            out = heads_out.transpose(1, 2).reshape(b, height, width, heads * dv).contiguous()
            return self.out_bn(out.permute(0, 3, 1, 2))
        return self.out_bn(heads_out.transpose(2, 3).reshape(b, heads * dv, height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        q, k, v = self.project(x)
        out, _ = self.attend(q, k, v, height, width)
        return self.merge(out, height, width, like=x)

