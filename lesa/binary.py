"""The binary (context) term of LESA: global multi-head self-attention with 2-D relative logits.

Logits, per head, between query position i = (y_i, x_i) and key position j = (y_j, x_j):

    s_ij = q_i . k_j / sqrt(d)  +  q_i . r_h[y_j - y_i]  +  q_i . r_w[x_j - x_i]

The release normalises each logit term with its own BatchNorm instead of scaling; we use the
1/sqrt(d) scaling (the common modern choice), which is what lets every strategy run through
`F.scaled_dot_product_attention` (SDPA) without an L x L bias.

The relative logits are folded into SDPA by widening q and k (no L x L tensor is built):
q_i . r_h[y_j - y_i] is a function of (i, y_j) only, so it equals [q_i . r_h[y - y_i]]_y (a
length-H vector per query) dotted with onehot(y_j) (a constant per key). Same for x. So

    q'_i = [q_i / sqrt(d), (q_i . r_h[y - y_i])_y, (q_i . r_w[x - x_i])_x]
    k'_j = [k_j,          onehot(y_j),            onehot(x_j)]

and s_ij = q'_i . k'_j exactly. The diagonal weight a_ii (needed by `softmax` and by the share
report of `sa`) comes out of the same SDPA call via one extra "sink" key whose logit for query i
is s_ii and whose value is a unit channel: the sink's weight is a_ii / (1 + a_ii).

Two paths (`BinaryTerm.kernel`; "auto" = "chunked" on CPU, "sdpa" elsewhere):

- "chunked" (for CPU): in inference (no autograd), under "auto", one hand-written kernel where
  the CPU has AVX-512 or AVX2 (lesa/fused_cpu.py: 1.2-2.1x faster than the torch ops below);
  else lesa/chunked.py, explicit logits at the real head width in cache-sized
  chunks (BoTNet's math without its L x L tensors for the whole batch), a custom autograd
  Function for the backward. Measured on two 2-core CPUs against the fused call below
  (fwd+bwd of the attention, B=8, C=256, 8 heads; L = 4096 at B=2): 0.6-1.03x its time at
  L = 256, 0.5-0.67x at L = 1024 and 0.32-0.41x at L = 4096 (`lesa-bench profile`).
- "sdpa" (and "auto" off CPU): one `scaled_dot_product_attention` call, so the fused (flash /
  memory-efficient) kernels apply. torch's fused kernels need q/k and v of one head width; with
  unequal widths SDPA silently takes its math path, which builds the L x L weights. So
  `_operands` builds q', k', v' at one common width, a multiple of 8, each in a single cat:
  zero channels change no dot product and give output channels that are sliced off;
  1/sqrt(d) is SDPA's `scale` (the relative logits are divided by it on the small tables).
  "mask" adds a rank-4 float mask without grad and "report" one sink key: both stay on the
  fused kernel, forward and backward. The cost is the width, d + H + W (144 at 64x64) against
  the real 16, with v padded to it: 2.3-6.9x the FLOPs of the explicit path, which is why
  "chunked" is faster on CPU. For large maps use the windowed term (lesa/window.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_cpu
from .chunked import relative_attention
from .layout import Pointwise, is_channels_last


class RelativePosition2d(nn.Module):
    """Decomposed 2-D relative position tables on the query side (BoTNet style).

    Tables cover offsets up to `max_size - 1` in each direction, so any feature map up to
    max_size x max_size works (smaller maps use the central slice of the tables).
    """

    def __init__(self, dim: int, max_size: int = 64):
        super().__init__()
        self.max_size = max_size
        self.rel_h = nn.Parameter(torch.randn(2 * max_size - 1, dim) * dim**-0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * max_size - 1, dim) * dim**-0.5)

    def _logits(self, q: torch.Tensor, table: torch.Tensor, n: int, axis: int) -> torch.Tensor:
        # q: (B, heads, H, W, d). out[..., a_i, t] = q_i . table[t - a_i] for t in 0..n-1, with
        # a_i the query's row (axis 0) or column (axis 1). For coordinate a the n table rows
        # needed are one window of the 2n - 1 offsets, so this is one GEMM per coordinate (a
        # bmm over a, the queries of that coordinate as rows): n logits per query, no gather,
        # and a backward of two bmm (a broadcast matmul's backward copies per matrix).
        m = self.max_size
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
        strided views of the GEMM results (forward's (B, heads, L, .) needs one copy each:
        33 MB in all at B=2, 64x64, 8 heads, which the fused CPU kernel reads in place)."""
        if height > self.max_size or width > self.max_size:
            raise ValueError(
                f"feature map {height}x{width} is larger than the relative position tables "
                f"({self.max_size}x{self.max_size}); build the model with a larger max_size"
            )
        b, h, _, d = q.shape
        q2d = q.view(b, h, height, width, d)
        rel_h, rel_w = (self.rel_h, self.rel_w) if scale == 1.0 else \
            (self.rel_h * scale, self.rel_w * scale)
        return (self._logits(q2d, rel_h, height, axis=0),
                self._logits(q2d, rel_w, width, axis=1))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def fused_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale q k^T + mask) v, through SDPA's fused kernel.

    q/k and v are zero-padded to one common width, a multiple of 8 (see the module docstring):
    the fused CPU kernel (and GPU flash) refuses unequal widths and would fall back to the math
    path. The padding is exact: zero channels add nothing to q.k and give zero output channels.
    """
    dv = v.shape[-1]
    width = _round_up(max(q.shape[-1], dv), 8)

    def pad(t):
        return t if t.shape[-1] == width else F.pad(t, (0, width - t.shape[-1]))

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask, scale=scale)
    return out if dv == width else out[..., :dv]


def _zeros(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return like.new_zeros(()).expand(*shape)


def _sink_column(rows: int, like: torch.Tensor) -> torch.Tensor:
    """(rows, 1): zeros with a 1 in the last row (the sink key's entry)."""
    col = torch.zeros(rows, 1, dtype=like.dtype, device=like.device)
    col[-1] = 1.0
    return col


def attend_with_sink(q_wide: torch.Tensor, k_wide: torch.Tensor, v: torch.Tensor,
                     s_ii: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0):
    """Plain attention plus the diagonal weights a_ii, from one fused SDPA call.

    One extra key (the sink) whose logit for query i is s_ii and whose value is a unit channel:
    with Z_i = sum_j exp(s_ij), the sink weight is e^{s_ii} / (Z_i + e^{s_ii}) = a_ii / (1 + a_ii).
    q_wide, k_wide (..., Lq / Lk, E), v (..., Lk, dv), s_ii (..., Lq, 1); mask, if given, is a
    float mask over (Lq, Lk) that gets a zero column for the sink; the logits are
    scale * q_wide . k_wide (s_ii is the logit itself). Returns (out, a_ii).
    """
    e, dv = q_wide.shape[-1], v.shape[-1]
    width = _round_up(max(e, dv) + 1, 8)
    lead, lq = q_wide.shape[:-2], q_wide.shape[-2]
    q_sink = torch.cat([q_wide, s_ii / scale, _zeros(q_wide, *lead, lq, width - e - 1)], dim=-1)
    k_sink = F.pad(k_wide, (0, width - e, 0, 1))  # sink column e, sink key last
    k_sink[..., -1, e] = 1.0
    v_sink = F.pad(v, (0, width - dv, 0, 1))  # unit channel dv on the sink key only
    v_sink[..., -1, dv] = 1.0
    if mask is not None:
        mask = F.pad(mask, (0, 1))
    out = F.scaled_dot_product_attention(q_sink, k_sink, v_sink, attn_mask=mask, scale=scale)
    return _split_sink(out, dv)


def _split_sink(out: torch.Tensor, dv: int):
    sink = out[..., dv]  # a_ii / (1 + a_ii), at most 1/2
    keep = 1.0 - sink
    return out[..., :dv] / keep.unsqueeze(-1), sink / keep


def _position_onehots(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(L, H + W): row j is [onehot(y_j), onehot(x_j)] for raster position j."""
    rows = torch.eye(height, dtype=like.dtype, device=like.device).repeat_interleave(width, 0)
    cols = torch.eye(width, dtype=like.dtype, device=like.device).repeat(height, 1)
    return torch.cat([rows, cols], dim=1)


class BinaryTerm(nn.Module):
    """Global multi-head self-attention over all H*W positions (the context term).

    One 1x1 projection C -> 2C then BN gives, per head, q and k of C/(2*heads) channels and v of
    C/heads channels (C/16 and C/8 with the paper's 8 heads). The heads are concatenated and
    BN'd; there is no output projection (the bottleneck's next 1x1 conv plays that role).
    """

    def __init__(self, channels: int, heads: int = 8, max_size: int = 64):
        super().__init__()
        if channels % (2 * heads):
            raise ValueError(f"channels ({channels}) must be divisible by 2 * heads ({2 * heads})")
        self.heads = heads
        self.qk_dim = channels // (2 * heads)
        self.v_dim = channels // heads
        self.qkv = Pointwise(channels, 2 * channels)
        self.qkv_bn = nn.BatchNorm2d(2 * channels)
        self.rel = RelativePosition2d(self.qk_dim, max_size)
        self.out_bn = nn.BatchNorm2d(channels)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> q, k (B, heads, L, C/2heads) and v (B, heads, L, C/heads), as views.

        The views are the same either way; what differs is the axis q, k and v are split on,
        which is the axis their gradients are concatenated on in the backward pass: the one
        that is outermost in memory, so the gradient reaching the BN comes back in the BN's own
        layout. (Split the other way, an NCHW map's BN backward got channels-last gradients
        and took 3.3 ms instead of 0.7 ms, B=8, 512 x 16 x 16.)"""
        c = x.shape[1]
        qkv = self.qkv_bn(self.qkv(x)).flatten(2)  # (B, 2C, L)
        sizes = [c // 2, c // 2, c]
        if is_channels_last(x):
            parts = [t.transpose(1, 2) for t in qkv.transpose(1, 2).split(sizes, dim=-1)]
        else:
            parts = qkv.split(sizes, dim=1)
        return tuple(t.unflatten(1, (self.heads, -1)).transpose(2, 3) for t in parts)

    def widen(self, q: torch.Tensor, k: torch.Tensor, height: int, width: int):
        """q', k' whose plain dot product is the full logit s_ij (see the module docstring)."""
        by_row, by_col = self.rel(q, height, width)
        q_wide = torch.cat([q * self.qk_dim**-0.5, by_row, by_col], dim=-1)
        onehots = _position_onehots(height, width, k).expand(*k.shape[:2], -1, -1)
        k_wide = torch.cat([k, onehots], dim=-1)
        return q_wide, k_wide

    # "auto": the chunked explicit path on CPU (faster there from L = 1024; in inference the fused
    # kernel of lesa/fused_cpu.py where it applies), fused SDPA elsewhere (GPU flash /
    # memory-efficient kernels); "sdpa" / "chunked" force one path on any device ("chunked":
    # the torch ops of lesa/chunked.py, also in inference)
    kernel = "auto"
    recompute = False  # chunked path: rebuild the softmax weights in backward (lesa/chunked.py)

    def uses_sdpa(self, q: torch.Tensor) -> bool:
        if self.kernel not in ("auto", "sdpa", "chunked"):
            raise ValueError(f"kernel must be auto, sdpa or chunked, not {self.kernel!r}")
        return self.kernel == "sdpa" or (self.kernel == "auto" and q.device.type != "cpu")

    def attend(self, q, k, v, height: int, width: int, diagonal: str = "keep"):
        """Attention output per head (B, heads, L, dv) and, if asked, the diagonal weights a_ii.

        diagonal: "keep" (plain attention), "mask" (j = i removed, renormalised over j != i),
        or "report" (plain attention plus a_ii (B, heads, L) from the same call). On CPU the
        chunked explicit path (lesa/chunked.py; in inference lesa/fused_cpu.py's kernel where
        it applies), elsewhere one fused SDPA call (`kernel`).
        """
        if diagonal not in ("keep", "mask", "report"):
            raise ValueError(f"diagonal must be keep, mask or report, not {diagonal!r}")
        length = q.shape[-2]
        if diagonal == "mask" and length == 1:
            # nothing is left after removing j = i: the empty sum is 0 (fused kernels on some
            # devices give NaN for a fully masked row)
            return v * 0.0, None
        if not self.uses_sdpa(q):
            scale = self.qk_dim**-0.5
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
        q_op, k_op, v_op, scale = self._operands(q, k, v, height, width, diagonal == "report")
        out = F.scaled_dot_product_attention(q_op, k_op, v_op, attn_mask=mask, scale=scale)
        if diagonal == "report":
            return _split_sink(out, v.shape[-1])
        return out[..., : v.shape[-1]], None

    def _operands(self, q, k, v, height: int, width: int, sink: bool):
        """q', k', v' of one common width (a multiple of 8) for SDPA, each written once.

        The same logits as `widen`, with 1/sqrt(d) left to SDPA's `scale` (the relative logits
        are divided by it instead, on the small tables) and the zero padding (see the module
        docstring) built in. With `sink`, one more key: q' gets s_ii / scale in channel E, the
        sink key is the unit vector of that channel and its value the unit vector of channel dv.
        Returns (q', k', v', scale).
        """
        scale = self.qk_dim**-0.5
        by_row, by_col = self.rel(q, height, width, scale=1.0 / scale)
        b, heads, length, d = q.shape
        dv = v.shape[-1]
        e = d + height + width
        width_e = _round_up(max(e, dv) + sink, 8)
        onehots = _position_onehots(height, width, k)  # (L, H + W)
        q_parts = [q, by_row, by_col]
        if sink:
            q_parts.append(self.self_logits(q, k) / scale)
        q_op = torch.cat(q_parts + [_zeros(q, b, heads, length, width_e - e - sink)], dim=-1)
        keys = length + sink
        if sink:  # one more (zero) key row everywhere, then the sink's unit entries
            k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))
            onehots = F.pad(onehots, (0, 0, 0, 1))
            unit = _sink_column(keys, k).expand(b, heads, keys, 1)
            k_op = torch.cat([k, onehots.expand(b, heads, keys, -1), unit,
                              _zeros(k, b, heads, keys, width_e - e - 1)], dim=-1)
            v_op = torch.cat([v, unit, _zeros(v, b, heads, keys, width_e - dv - 1)], dim=-1)
        else:
            k_op = torch.cat([k, onehots.expand(b, heads, keys, -1),
                              _zeros(k, b, heads, keys, width_e - e)], dim=-1)
            v_op = torch.cat([v, _zeros(v, b, heads, keys, width_e - dv)], dim=-1)
        return q_op, k_op, v_op, scale

    def self_logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """s_ii (..., L, 1): offset (0, 0), so q_i . (k_i / sqrt(d) + r_h[0] + r_w[0])."""
        m = self.rel.max_size
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

