"""The binary (context) term of LESA: global multi-head self-attention with 2-D relative logits.

Logits, per head, between query position i = (y_i, x_i) and key position j = (y_j, x_j):

    s_ij = q_i . k_j / sqrt(d)  +  q_i . r_h[y_j - y_i]  +  q_i . r_w[x_j - x_i]

That is the default. Two options give the released code's choices instead:
- logits="batchnorm": no 1/sqrt(d); each term (q.k, the positional logits) BatchNorm'd per head
  and the terms summed (lesa/logit_norm.py). With the 2-D relative logits it runs on every path
  (its batch statistics have closed forms); the default's scaling is kept because it needs no
  statistics and is the common modern choice.
- positions="raster": the classification release's 1-D embeddings over the raster offset on the
  query, key and value sides (lesa/raster.py); only the explicit reference path can compute them
  (`reference_reason`, `compute_path`).
The default's 2-D relative logits fold into widened q and k, so every strategy runs through
torch's fused attention (lesa/kernels/sdpa.py) without an L x L bias.

How the attention is computed depends on the device (`BinaryTerm.kernel`, lesa/kernels/): on
CPU explicit logits in cache-sized chunks (chunked.py), or in inference one hand-written kernel
(fused_cpu.py); elsewhere one fused SDPA call on the widened q and k (sdpa.py), whose extra
channels cost more FLOPs than the explicit path on CPU.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .kernels import explicit, fused_cpu, sdpa
from .kernels.chunked import relative_attention
from .layout import Pointwise, is_channels_last
from .logit_norm import LogitNorm, content_moments, dense_moments, from_sums, relative_moments
from .raster import RasterPosition

LOGITS = ("scaled", "batchnorm")  # q.k / sqrt(d) (default), or the release's per-term BatchNorm
POSITIONS = ("relative2d", "raster")  # 2-D relative logits (default), or the release's raster
KERNELS = ("auto", "sdpa", "chunked", "explicit")
log = logging.getLogger(__name__)
_told: set[str] = set()  # reasons already logged, once per process


def per_head(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(heads,) weights shaped to broadcast over `like` (B, heads, ...)."""
    return w.view(-1, *[1] * (like.dim() - 2))


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

    def __init__(self, channels: int, heads: int = 8, max_map_size: int = 64,
                 logits: str = "scaled", positions: str = "relative2d"):
        super().__init__()
        if channels % (2 * heads):
            raise ValueError(f"channels ({channels}) must be divisible by 2 * heads ({2 * heads})")
        if logits not in LOGITS:
            raise ValueError(f"logits must be one of {', '.join(LOGITS)}, not {logits!r}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, not {positions!r}")
        self.heads = heads
        self.qk_dim = channels // (2 * heads)
        self.v_dim = channels // heads
        self.logits, self.positions = logits, positions
        self.qkv = Pointwise(channels, 2 * channels)
        self.qkv_bn = nn.BatchNorm2d(2 * channels)
        if positions == "relative2d":
            self.rel = RelativePosition2d(self.qk_dim, max_map_size)
        else:  # the value side adds a second output term: the output BN covers both halves
            self.raster = RasterPosition(self.qk_dim, self.v_dim, max_map_size)
        self.out_bn = nn.BatchNorm2d(channels * (2 if positions == "raster" else 1))
        if logits == "batchnorm":  # one channel per logit term and head
            self.logit_norm = LogitNorm(heads, 3 if positions == "raster" else 2)

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
    # force one path on any device ("chunked": the torch ops, also in inference); "explicit"
    # the reference path over materialised L x L logits (kernels/explicit.py)
    kernel = "auto"
    recompute = False  # chunked path: rebuild the softmax weights in backward (O(L) memory)

    def uses_sdpa(self, q: torch.Tensor) -> bool:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be auto, sdpa or chunked (or explicit, the reference "
                             f"path), not {self.kernel!r}")
        return self.kernel == "sdpa" or (self.kernel == "auto" and q.device.type != "cpu")

    @property
    def reference_reason(self) -> str | None:
        """Why this term takes the explicit reference path whatever `kernel` says, or None."""
        if self.positions == "raster":
            return ("raster positions: q_i . r_q[i - j] and the value term depend on i and j "
                    "jointly, which neither SDPA's widened operands nor the chunked/fused CPU "
                    "kernels' row/column logits can express")
        return None

    def compute_path(self, q: torch.Tensor, training: bool | None = None) -> str:
        """The path `attend` takes for q: "explicit (reason)", "sdpa", "fused_cpu" or
        "chunked" (`training`: whether autograd will be on; default: as now)."""
        reason = self.reference_reason
        if reason is not None:
            return f"explicit ({reason})"
        if self.kernel == "explicit":
            return "explicit (kernel = 'explicit')"
        if self.uses_sdpa(q):
            return "sdpa"
        training = torch.is_grad_enabled() if training is None else training
        fused = (self.kernel == "auto" and not training
                 and fused_cpu.applies(q, q.new_empty(0, self.v_dim)))
        return "fused_cpu" if fused else "chunked"

    def attend(self, q, k, v, height: int, width: int, diagonal: str = "keep"):
        """Attention output per head (B, heads, L, dv) and, if asked, the diagonal weights a_ii.

        diagonal: "keep" (plain attention), "mask" (j = i removed, renormalised over j != i),
        or "report" (plain attention plus a_ii (B, heads, L) from the same call), computed by
        the path `kernel` picks (lesa/kernels/; `compute_path` says which). With the raster
        positions the output has 2 dv channels per head: the attention output, then the value
        term sum_j a_ij r_v[i - j] (`merge` takes both).
        """
        if diagonal not in ("keep", "mask", "report"):
            raise ValueError(f"diagonal must be keep, mask or report, not {diagonal!r}")
        length = q.shape[-2]
        if diagonal == "mask" and length == 1:
            # nothing is left after removing j = i: the empty sum is 0 (fused kernels on some
            # devices give NaN for a fully masked row)
            return (torch.cat([v, v], -1) if self.positions == "raster" else v) * 0.0, None
        if self.reference_reason is not None or self.kernel == "explicit":
            reason = self.reference_reason
            if reason is not None and reason not in _told:
                _told.add(reason)
                log.info("binary term on the explicit reference path: %s", reason)
            return self._attend_explicit(q, k, v, height, width, diagonal)
        if self.logits == "batchnorm":
            return self._attend_normalised(q, k, v, height, width, diagonal)
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
        # the relative logits divided by the scale on the small tables: SDPA multiplies back
        by_row, by_col = self.rel(q, height, width, scale=1.0 / scale)
        s_ii = self.self_logits(q, k) if diagonal == "report" else None
        return self._sdpa(q, k, v, by_row, by_col, scale, diagonal, s_ii)

    def _sdpa(self, q, k, v, by_row, by_col, scale: float, diagonal: str, s_ii):
        length = q.shape[-2]
        height, width = by_row.shape[-1], by_col.shape[-1]
        mask = None
        if diagonal == "mask":
            # rank-4 float mask without grad: keeps SDPA on its fused CPU kernel
            mask = torch.zeros(1, 1, length, length, dtype=q.dtype, device=q.device)
            mask.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
        onehots = sdpa.position_onehots(height, width, k).expand(*k.shape[:2], -1, -1)
        return sdpa.attend([q, by_row, by_col], [k, onehots], v, scale, mask, s_ii)

    def _attend_normalised(self, q, k, v, height: int, width: int, diagonal: str):
        """The release's logit BatchNorm with 2-D relative logits, on every path: the terms'
        batch statistics in closed form (lesa/logit_norm.py), then q.k and the relative logits
        weighted per head, in place of 1/sqrt(d) and 1."""
        sdpa_path = self.uses_sdpa(q)
        inference = not (torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k, v, *self.parameters())))
        fused = (not sdpa_path and self.kernel == "auto" and inference
                 and fused_cpu.applies(q, v))
        by_row, by_col = (self.rel.grids if fused else self.rel)(q, height, width)
        count = q.shape[0] * q.shape[-2] ** 2
        weights, shift = self.logit_norm.weights(lambda: from_sums(
            [content_moments(q, k), relative_moments(by_row, by_col)], count))
        w_qk, w_rel = (per_head(w, q) for w in weights)
        q_w = q * w_qk
        # every logit has one by_row term: the shift (BN's constants) rides on it
        by_row = by_row * per_head(weights[1], by_row) + per_head(shift, by_row)
        by_col = by_col * per_head(weights[1], by_col)
        if sdpa_path:
            s_ii = (self.self_logits(q, k, w_qk, w_rel) + per_head(shift, q)
                    if diagonal == "report" else None)
            return self._sdpa(q_w, k, v, by_row, by_col, 1.0, diagonal, s_ii)
        if fused:
            return fused_cpu.relative_attention(q_w, k, v, by_row, by_col, height, width, 1.0,
                                                diagonal)
        return relative_attention(q_w, k, v, by_row, by_col, height, width, 1.0, diagonal,
                                  self.recompute)

    def _attend_explicit(self, q, k, v, height: int, width: int, diagonal: str):
        """The reference path: every logit term materialised (B, heads, L, L), weighted per
        term (1/sqrt(d) and 1, or the logit BatchNorm's per-head weights) and summed."""
        terms = [q @ k.transpose(-1, -2)]
        if self.positions == "raster":
            terms += [self.raster.query_logits(q), self.raster.key_logits(k)]
        else:
            by_row, by_col = self.rel(q, height, width)
            terms.append((by_row.unsqueeze(-1) + by_col.unsqueeze(-2)).flatten(-2))
        if self.logits == "batchnorm":
            weights, shift = self.logit_norm.weights(lambda: dense_moments(terms))
            logits = sum(per_head(w, t) * t for w, t in zip(weights, terms)) + per_head(shift,
                                                                                        q)
        else:
            logits = terms[0] * self.qk_dim**-0.5 + sum(terms[1:])
        out, a_ii, a = explicit.attend(logits, v, diagonal)
        if self.positions == "raster":
            out = torch.cat([out, self.raster.value_term(a)], -1)
        return out, a_ii

    def self_logits(self, q: torch.Tensor, k: torch.Tensor, w_qk=None, w_rel=None):
        """s_ii (..., L, 1): offset (0, 0), so q_i . (k_i / sqrt(d) + r_h[0] + r_w[0]) (with the
        logit BatchNorm, w_qk q_i.k_i + w_rel q_i.(r_h[0] + r_w[0]), weights per head)."""
        m = self.rel.max_map_size
        at_zero = self.rel.rel_h[m - 1] + self.rel.rel_w[m - 1]
        if w_qk is None:
            return (q * (k * self.qk_dim**-0.5 + at_zero)).sum(-1, keepdim=True)
        return (q * (k * w_qk + at_zero * w_rel)).sum(-1, keepdim=True)

    def merge(self, heads_out: torch.Tensor, height: int, width: int,
              like: torch.Tensor | None = None) -> torch.Tensor:
        """(B, heads, L, dv) -> BN(concat heads) as (B, C, H, W), in one copy to the memory
        format of `like` (the block's input; contiguous if None): a result in the other
        layout would send the BN and every later op of the block (the gate, the fusion's
        sums) to slower mixed-layout kernels. With the raster positions (2 dv channels per
        head): the output BN over [attention output, value term] (2C channels), the halves
        summed, as the release's `bn_output`."""
        b, heads, _, dv = heads_out.shape
        if self.positions == "raster":
            heads_out = torch.cat(heads_out.split(dv // 2, -1), 1)  # (B, 2 heads, L, dv)
            y = self._merge(heads_out, height, width, like)
            c = y.shape[1] // 2
            return y[:, :c] + y[:, c:]
        return self._merge(heads_out, height, width, like)

    def _merge(self, heads_out, height: int, width: int, like) -> torch.Tensor:
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

