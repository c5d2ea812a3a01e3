"""The classification release's positions: 1-D relative embeddings over the raster offset.

One table `relative` (d_q + d_k + d_v, 2K - 1), K = max_map_size^2, shared by the heads, read at
the offset between raster (row-major) positions i (query) and j (key) of the actual map:

    logits   s_ij += q_i . r_q[i - j]  +  k_j . r_k[j - i]
    output   y_i  += sum_j a_ij r_v[i - j]          (a second output term, the value side)

(r[o] is column K - 1 + o, as the release's `flatten_index`; the release fixes the map at
construction, here any map with H * W <= K reads the central columns.) A raster offset is a 2-D
offset only for one map width, and q_i . r_q[i - j] depends on i and j jointly: it cannot be
folded into widened SDPA operands, so the binary term computes these logits explicitly.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class RasterPosition(nn.Module):
    """The table and its three reads (query logits, key logits, value term)."""

    def __init__(self, qk_dim: int, v_dim: int, max_map_size: int = 64):
        super().__init__()
        self.qk_dim, self.v_dim = qk_dim, v_dim
        self.max_map_size = max_map_size
        self.length = max_map_size * max_map_size
        self.relative = nn.Parameter(torch.empty(2 * qk_dim + v_dim, 2 * self.length - 1))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """N(0, 1 / d_v) entries, the release's initialisation."""
        with torch.no_grad():
            device = self.relative.device if generator is None else generator.device
            draw = torch.randn(self.relative.shape, generator=generator, device=device)
            self.relative.copy_(draw / math.sqrt(self.v_dim))

    def extra_repr(self) -> str:
        return f"max_map_size={self.max_map_size} (maps of up to {self.length} positions)"

    def _window(self, rows: slice, length: int) -> torch.Tensor:
        """(rows, 2L - 1) columns of offsets -(L - 1) .. L - 1, after checking the reach."""
        if length > self.length:
            m = self.max_map_size
            raise ValueError(f"feature map of {length} positions is larger than the raster "
                             f"position table ({m}x{m} = {self.length}); build the model with a "
                             f"larger max_map_size")
        k = self.length
        return self.relative[rows, k - length : k + length - 1]

    @staticmethod
    def _offsets(length: int, device) -> torch.Tensor:
        """(L, L) column index of offset i - j in a window: i - j + L - 1."""
        i = torch.arange(length, device=device)
        return i[:, None] - i[None, :] + (length - 1)

    def query_logits(self, q: torch.Tensor) -> torch.Tensor:
        """q (B, heads, L, d_q) -> (B, heads, L, L): q_i . r_q[i - j]."""
        length = q.shape[-2]
        by_offset = q @ self._window(slice(0, self.qk_dim), length)  # (..., L, 2L - 1)
        index = self._offsets(length, q.device).expand(*q.shape[:-2], length, length)
        return by_offset.gather(-1, index)

    def key_logits(self, k: torch.Tensor) -> torch.Tensor:
        """k (B, heads, L, d_k) -> (B, heads, L, L) over (query i, key j): k_j . r_k[j - i]."""
        length = k.shape[-2]
        by_offset = k @ self._window(slice(self.qk_dim, 2 * self.qk_dim), length)
        index = self._offsets(length, k.device).expand(*k.shape[:-2], length, length)
        return by_offset.gather(-1, index).transpose(-1, -2)  # [j, i] = k_j . r_k[j - i]

    def value_term(self, a: torch.Tensor) -> torch.Tensor:
        """Weights a (B, heads, L, L) -> (B, heads, L, d_v): sum_j a_ij r_v[i - j], as one GEMM
        of the weights gathered by offset (each offset holds at most one j per query)."""
        length = a.shape[-1]
        index = self._offsets(length, a.device).expand_as(a)
        by_offset = a.new_zeros(*a.shape[:-1], 2 * length - 1).scatter(-1, index, a)
        table = self._window(slice(2 * self.qk_dim, None), length)  # (d_v, 2L - 1)
        return by_offset @ table.t()
