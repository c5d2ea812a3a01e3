"""A windowed (local) binary term for high-resolution maps: blocked local attention with a halo.

HaloNet / SASA style. The map is cut into non-overlapping `window` x `window` query blocks; every
query of a block attends to the keys of the block grown by `halo` positions on each side, a
(window + 2 halo)^2 neighbourhood, instead of all H*W positions. Keys outside the map are masked
out (not zero-padded), so a border query attends to fewer keys, as in SASA. Cost per token is
constant: time and memory grow linearly in H*W.

Everything else is the global term's (lesa/binary.py): the same q/k/v projection, 1/sqrt(d)
scaling, the same relative position tables and scheme (s_ij = q_i.k_j / sqrt(d) +
q_i.r_h[y_j - y_i] + q_i.r_w[x_j - x_i], now only for j in i's neighbourhood), the same widening
trick (one-hot channels over the window's rows and columns, so no bias tensor is built), the
same sink key for a_ii and the same "keep" / "mask" / "report" diagonal modes, so every fusion
strategy and the share report work unchanged. Offsets inside a neighbourhood reach
window + halo - 1, so the tables need max_size >= window + halo; the map itself may be larger
than max_size. The parameters are the global term's (same names and shapes), so a state dict
moves between the two. With window >= H and W the term is exactly global attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .binary import BinaryTerm, _round_up, attend_with_sink, fused_sdpa


class WindowedBinaryTerm(BinaryTerm):
    """Local multi-head self-attention: `window` x `window` query blocks, each attending to its
    block plus a `halo` (default window // 2) on every side. Same interface as BinaryTerm."""

    def __init__(self, channels: int, heads: int = 8, max_size: int = 64, window: int = 8,
                 halo: int | None = None):
        super().__init__(channels, heads, max_size)
        halo = window // 2 if halo is None else halo
        if window < 1 or halo < 0:
            raise ValueError(f"window must be >= 1 and halo >= 0, not {window} and {halo}")
        if window + halo > max_size:
            raise ValueError(
                f"window {window} + halo {halo} reaches offsets beyond the relative position "
                f"tables (max_size {max_size}); build with max_size >= {window + halo}")
        self.window = window
        self.halo = halo

    def extra_repr(self) -> str:
        return f"window={self.window}, halo={self.halo}"

    # ------------------------------------------------------------ geometry

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        b = self.window
        return -(-height // b), -(-width // b)  # blocks down, blocks across

    def _map(self, t: torch.Tensor, height: int, width: int, top: int, bottom: int, side: int):
        """(B, heads, L, c) -> (B, heads, H + top + bottom, W + side + right) map, zero-padded;
        `bottom` and `right` also round the map up to whole blocks. A view when nothing is
        padded, one copy otherwise."""
        n_h, n_w = self._grid(height, width)
        b = self.window
        t = t.unflatten(2, (height, width))
        pads = (0, 0, side, side + n_w * b - width, top, bottom + n_h * b - height)
        return F.pad(t, pads) if any(pads) else t

    def _blocks(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, heads, L, c) -> query blocks, a (B, heads, blocks, window^2, c) view or copy."""
        b = self.window
        n_h, n_w = self._grid(height, width)
        t = self._map(t, height, width, 0, 0, 0)
        t = t.unflatten(2, (n_h, b)).unflatten(4, (n_w, b)).permute(0, 1, 2, 4, 3, 5, 6)
        return t.flatten(4, 5).flatten(2, 3) if t.is_contiguous() else t.reshape(
            *t.shape[:2], n_h * n_w, b * b, t.shape[-1])

    def _unblock(self, t: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        """(B * heads, blocks, window^2, c) -> (B, heads, L, c), in one copy whose memory is
        laid out (B, L, heads, c), the layout `merge` wants (so merge copies nothing)."""
        b = self.window
        n_h, n_w = self._grid(height, width)
        c = t.shape[-1]
        t = t.view(batch, self.heads, n_h, n_w, b, b, c).permute(0, 2, 4, 3, 5, 1, 6)
        t = t.reshape(batch, n_h * b, n_w * b, self.heads, c)
        if n_h * b != height or n_w * b != width:
            t = t[:, :height, :width].reshape(batch, height, width, self.heads, c)
        return t.flatten(1, 2).transpose(1, 2)

    def _windows(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, heads, L, c) -> key neighbourhoods, a (B, heads, n_h, n_w, win, win, c) view of
        one padded copy (neighbourhoods overlap; the caller's cat or pad makes them dense)."""
        b, h = self.window, self.halo
        win = b + 2 * h
        t = self._map(t, height, width, h, h, h)
        return t.unfold(2, win, b).unfold(3, win, b).permute(0, 1, 2, 3, 5, 6, 4)

    def _key_mask(self, height: int, width: int, like: torch.Tensor, diagonal: bool):
        """Float mask (1, blocks, window^2 or 1, win^2): -inf for keys outside the map and, with
        diagonal=True, for each query's own position."""
        b, h = self.window, self.halo
        n_h, n_w = self._grid(height, width)
        win = b + 2 * h
        t = torch.arange(win, device=like.device) - h
        rows = (torch.arange(n_h, device=like.device)[:, None] * b + t)  # (n_h, win)
        cols = (torch.arange(n_w, device=like.device)[:, None] * b + t)
        ok_rows = (rows >= 0) & (rows < height)
        ok_cols = (cols >= 0) & (cols < width)
        valid = ok_rows[:, None, :, None] & ok_cols[None, :, None, :]  # (n_h, n_w, win, win)
        valid = valid.reshape(1, n_h * n_w, 1, win * win)
        if diagonal:
            p = torch.arange(b, device=like.device)
            own = ((p[:, None] + h) * win + (p[None, :] + h)).reshape(-1)  # (b^2,)
            eye = torch.zeros(b * b, win * win, dtype=torch.bool, device=like.device)
            eye[torch.arange(b * b, device=like.device), own] = True
            valid = valid & ~eye[None, None]
        mask = torch.zeros(valid.shape, dtype=like.dtype, device=like.device)
        return mask.masked_fill_(~valid, float("-inf"))

    # ------------------------------------------------------------ the term

    def _relative(self, q_blocks: torch.Tensor, scale: float = 1.0):
        """Relative logits of block queries over the window's rows and columns, times `scale`.

        q_blocks (..., b^2, d) -> (..., b^2, win) each: out[p, t] = q_p . r[t - halo - p_axis],
        the logit for a key in window row (column) t.
        """
        b, h = self.window, self.halo
        win = b + 2 * h
        m = self.rel.max_size
        reach = b + h - 1  # largest |offset| inside a neighbourhood
        pos = torch.arange(b, device=q_blocks.device)
        index = torch.arange(win, device=q_blocks.device)[None, :] - pos[:, None] + (b - 1)
        q2d = q_blocks.unflatten(-2, (b, b))  # (..., py, px, d)
        lead = [1] * (q2d.dim() - 3)
        out = []
        for table, shape in ((self.rel.rel_h, lead + [b, 1, win]), (self.rel.rel_w, lead + [1, b, win])):
            rel = q2d @ (table[m - 1 - reach : m + reach] * scale).t()  # (..., b, b, 2 reach + 1)
            idx = index.view(shape).expand(*rel.shape[:-1], win)
            out.append(rel.gather(-1, idx).flatten(-3, -2))
        return out[0], out[1]

    def _wide(self, q, k, height: int, width: int, scale: float):
        """q' = [q, (relative logits) / scale] per block and k' = [k, onehots] per
        neighbourhood, as (B * heads, blocks, ., E): q'.k' * scale is the logit."""
        q_blocks = self._blocks(q, height, width)
        by_row, by_col = self._relative(q_blocks, 1.0 / scale)
        q_wide = torch.cat([q_blocks, by_row, by_col], dim=-1)
        win = self.window + 2 * self.halo
        eye = torch.eye(win, dtype=k.dtype, device=k.device)
        onehots = torch.stack(torch.broadcast_tensors(eye[:, None, :], eye[None, :, :]), 2)
        onehots = onehots.flatten(2)  # (win, win, 2 win): [onehot(row), onehot(col)]
        k_win = self._windows(k, height, width)
        k_wide = torch.cat([k_win, onehots.expand(*k_win.shape[:-1], -1)], dim=-1)
        flat = lambda t: t.reshape(-1, t.shape[2], t.shape[-2], t.shape[-1])  # noqa: E731
        return flat(q_wide), flat(k_wide.flatten(4, 5).flatten(2, 3))

    def widen(self, q: torch.Tensor, k: torch.Tensor, height: int, width: int):
        """Windowed q', k': q' (B * heads, blocks, window^2, d + 2 win) for the query blocks and
        k' (B * heads, blocks, win^2, d + 2 win) for their neighbourhoods, whose plain dot product
        is the full logit s_ij of query i and key j of its neighbourhood."""
        scale = self.qk_dim**-0.5
        q_wide, k_wide = self._wide(q, k, height, width, scale)
        return q_wide * scale, k_wide

    def attend(self, q, k, v, height: int, width: int, diagonal: str = "keep"):
        """As BinaryTerm.attend, with each query's keys restricted to its neighbourhood."""
        if diagonal not in ("keep", "mask", "report"):
            raise ValueError(f"diagonal must be keep, mask or report, not {diagonal!r}")
        batch, dv = q.shape[0], v.shape[-1]
        if diagonal == "mask" and height * width == 1:
            return v * 0.0, None  # nothing left after removing j = i (see BinaryTerm.attend)
        scale = self.qk_dim**-0.5  # applied by SDPA: q' carries the relative logits / scale
        q_wide, k_wide = self._wide(q, k, height, width, scale)
        mask = self._key_mask(height, width, q, diagonal == "mask")
        v_win = self._windows(v, height, width)
        if diagonal != "report":
            width_e = _round_up(max(q_wide.shape[-1], dv), 8)
            zeros = v_win.new_zeros(()).expand(*v_win.shape[:-1], width_e - dv)
            v_wide = torch.cat([v_win, zeros], dim=-1)  # one pass (F.pad fills, then copies)
            v_wide = v_wide.reshape(-1, k_wide.shape[1], k_wide.shape[2], width_e)
            out = fused_sdpa(q_wide, k_wide, v_wide, mask, scale)
            return self._unblock(out[..., :dv], batch, height, width), None
        s_ii = self._blocks(self.self_logits(q, k), height, width)
        s_ii = s_ii.reshape(-1, *s_ii.shape[2:])
        v_win = v_win.reshape(-1, k_wide.shape[1], k_wide.shape[2], dv)
        out, a_ii = attend_with_sink(q_wide, k_wide, v_win, s_ii, mask, scale)
        a_ii = self._unblock(a_ii.unsqueeze(-1), batch, height, width).squeeze(-1)
        return self._unblock(out, batch, height, width), a_ii
