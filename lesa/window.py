"""A windowed (local) binary term for high-resolution maps: blocked local attention with a halo.

HaloNet / SASA style. The map is cut into non-overlapping `window` x `window` query blocks; every
query of a block attends to the keys of the block grown by `halo` positions on each side, a
(window + 2 halo)^2 neighbourhood, instead of all H*W positions. Keys outside the map are masked
out (not zero-padded), so a border query attends to fewer keys, as in SASA. Cost per token is
constant: time and memory grow linearly in H*W.

Everything else is the global term's (lesa/binary.py): the same q/k/v projection, 1/sqrt(d)
scaling, the same relative position tables and scheme (s_ij = q_i.k_j / sqrt(d) +
q_i.r_h[y_j - y_i] + q_i.r_w[x_j - x_i], now only for j in i's neighbourhood), the same SDPA
operands (lesa/kernels/sdpa.py: one-hot channels over the window's rows and columns, so no bias
tensor is built; the sink key for a_ii) and the same "keep" / "mask" / "report" diagonal modes,
so every fusion strategy and the share report work unchanged. Offsets inside a neighbourhood
reach window + halo - 1, so the tables need max_map_size >= window + halo; the map itself may be
larger than max_map_size. The parameters are the global term's (same names and shapes), so a
state dict moves between the two. With window >= H and W the term is exactly global attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .binary import BinaryTerm
from .kernels import sdpa


class WindowedBinaryTerm(BinaryTerm):
    """Local multi-head self-attention: `window` x `window` query blocks, each attending to its
    block plus a `halo` (default window // 2) on every side. Same interface as BinaryTerm."""

    def __init__(self, channels: int, heads: int = 8, max_map_size: int = 64, window: int = 8,
                 halo: int | None = None):
        super().__init__(channels, heads, max_map_size)
        halo = window // 2 if halo is None else halo
        if window < 1 or halo < 0:
            raise ValueError(f"window must be >= 1 and halo >= 0, not {window} and {halo}")
        if window + halo > max_map_size:
            raise ValueError(
                f"window {window} + halo {halo} reaches offsets beyond the relative position "
                f"tables (max_map_size {max_map_size}); build with max_map_size >= "
                f"{window + halo}")
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

    def _query_blocks(self, qm: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Block rows [r0, r1) of a (B, heads, Hp, Wp, c) query map -> (B, heads,
        (r1 - r0) * n_w, window^2, c), a view when possible, else one copy."""
        b = self.window
        t = qm[:, :, r0 * b : r1 * b]
        t = t.unflatten(2, (r1 - r0, b)).unflatten(4, (t.shape[3] // b, b))
        t = t.permute(0, 1, 2, 4, 3, 5, 6)
        return t.reshape(*t.shape[:2], t.shape[2] * t.shape[3], b * b, t.shape[-1])

    def _key_windows(self, km: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Neighbourhoods of block rows [r0, r1) of a (B, heads, Hp + 2h, Wp + 2h, c) key map
        (halo-padded): a (B, heads, rows, n_w, win, win, c) view (neighbourhoods overlap; the
        caller's cat makes them dense)."""
        b, h = self.window, self.halo
        win = b + 2 * h
        t = km[:, :, r0 * b : r1 * b + 2 * h]
        return t.unfold(2, win, b).unfold(3, win, b).permute(0, 1, 2, 3, 5, 6, 4)

    def _unblock(self, t: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        """(B * heads, blocks, window^2, c) -> (B, heads, L, c), in one copy whose memory is
        laid out (B, heads, c, L), so that `merge` gets the standard (B, C, H, W) layout
        without copying."""
        b = self.window
        n_h, n_w = self._grid(height, width)
        c = t.shape[-1]
        t = t.view(batch, self.heads, n_h, n_w, b, b, c).permute(0, 1, 6, 2, 4, 3, 5)
        t = t.reshape(batch, self.heads, c, n_h * b, n_w * b)
        return self._crop(t, height, width)

    def _crop(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, heads, c, Hp, Wp) -> (B, heads, L, c) (a transposed view of (B, heads, c, L))."""
        if t.shape[-2] != height or t.shape[-1] != width:
            t = t[..., :height, :width]
        return t.reshape(*t.shape[:3], height * width).transpose(2, 3)

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
        m = self.rel.max_map_size
        reach = b + h - 1  # largest |offset| inside a neighbourhood
        pos = torch.arange(b, device=q_blocks.device)
        index = torch.arange(win, device=q_blocks.device)[None, :] - pos[:, None] + (b - 1)
        q2d = q_blocks.unflatten(-2, (b, b))  # (..., py, px, d)
        lead = [1] * (q2d.dim() - 3)
        out = []
        for table, shape in ((self.rel.rel_h, lead + [b, 1, win]),
                             (self.rel.rel_w, lead + [1, b, win])):
            rel = q2d @ (table[m - 1 - reach : m + reach] * scale).t()  # (..., b, b, 2 reach + 1)
            idx = index.view(shape).expand(*rel.shape[:-1], win)
            out.append(rel.gather(-1, idx).flatten(-3, -2))
        return out[0], out[1]

    def _onehots(self, like: torch.Tensor) -> torch.Tensor:
        """(win, win, 2 win): [onehot(row), onehot(col)] of each neighbourhood position."""
        win = self.window + 2 * self.halo
        eye = torch.eye(win, dtype=like.dtype, device=like.device)
        return torch.stack(torch.broadcast_tensors(eye[:, None, :], eye[None, :, :]), 2).flatten(2)

    def _rows(self, qm, km, vm, r0: int, r1: int, mask, diagonal: str, s_map):
        """Attention for block rows [r0, r1): (out (B * heads, blocks, window^2, dv), a_ii
        (B * heads, blocks, window^2) or None), one SDPA call on the widened q and k (1/sqrt(d)
        is SDPA's `scale`, so the relative logits are divided by it)."""
        scale = self.qk_dim**-0.5
        q_blocks = self._query_blocks(qm, r0, r1)
        by_row, by_col = self._relative(q_blocks, 1.0 / scale)
        k_win = self._key_windows(km, r0, r1)
        v_win = self._key_windows(vm, r0, r1)
        onehots = self._onehots(km).expand(*k_win.shape[:-1], -1)
        s_ii = self._query_blocks(s_map, r0, r1) if diagonal == "report" else None
        return sdpa.attend([q_blocks, by_row, by_col], [k_win, onehots], v_win, scale, mask, s_ii)

    def attend(self, q, k, v, height: int, width: int, diagonal: str = "keep"):
        """As BinaryTerm.attend, with each query's keys restricted to its neighbourhood.

        Without autograd (inference), the map is processed in chunks of batch entries and block
        rows whose SDPA operands stay under `chunk_bytes` (`device_chunk_bytes` off the CPU):
        the same numbers, without building all (window + 2 halo)^2 neighbourhoods of a large
        map at once.
        """
        if diagonal not in ("keep", "mask", "report"):
            raise ValueError(f"diagonal must be keep, mask or report, not {diagonal!r}")
        batch, heads, _, dv = v.shape
        if diagonal == "mask" and height * width == 1:
            return v * 0.0, None  # nothing left after removing j = i (see BinaryTerm.attend)
        b, h = self.window, self.halo
        n_h, n_w = self._grid(height, width)
        qm = self._map(q, height, width, 0, 0, 0)
        km = self._map(k, height, width, h, h, h)
        vm = self._map(v, height, width, h, h, h)
        s_map = None
        if diagonal == "report":
            s_map = self._map(self.self_logits(q, k), height, width, 0, 0, 0)
        mask = self._key_mask(height, width, q, diagonal == "mask")
        win = b + 2 * h
        width_e = sdpa.round_up(max(q.shape[-1] + 2 * win, dv) + 1, 8)
        row_bytes = 2 * heads * n_w * win * win * width_e * q.element_size()  # k' and v'
        if torch.is_grad_enabled():
            if self.recompute and batch * n_h * row_bytes > self.chunk_bytes and n_h > 1:
                out, a_ii = self._rows_checkpointed(qm, km, vm, mask, diagonal, s_map,
                                                    max(1, self.chunk_bytes // (batch * row_bytes)))
            else:
                out, a_ii = self._rows(qm, km, vm, 0, n_h, mask, diagonal, s_map)
            out = self._unblock(out, batch, height, width)
            if a_ii is not None:
                a_ii = self._unblock(a_ii.unsqueeze(-1), batch, height, width).squeeze(-1)
            return out, a_ii
        # inference: chunks of (batch entries) x (block rows), written into the output map
        limit = self.chunk_bytes if q.device.type == "cpu" else self.device_chunk_bytes
        per_chunk = max(1, limit // row_bytes)
        rows = min(n_h, per_chunk)
        items = min(batch, max(1, per_chunk // n_h)) if rows == n_h else 1
        out = v.new_empty(batch, heads, dv, n_h * b, n_w * b)
        a_ii = v.new_empty(batch, heads, 1, n_h * b, n_w * b) if diagonal == "report" else None
        for i0 in range(0, batch, items):
            i1 = min(batch, i0 + items)
            for r0 in range(0, n_h, rows):
                r1 = min(n_h, r0 + rows)
                o, a = self._rows(qm[i0:i1], km[i0:i1], vm[i0:i1], r0, r1,
                                  mask[:, r0 * n_w : r1 * n_w], diagonal,
                                  None if s_map is None else s_map[i0:i1])
                self._place(out, o, i0, i1, r0, r1)
                if a is not None:
                    self._place(a_ii, a.unsqueeze(-1), i0, i1, r0, r1)
        out = self._crop(out, height, width)
        return out, None if a_ii is None else self._crop(a_ii, height, width).squeeze(-1)

    # chunk size (SDPA operands k' and v'), see attend. On the CPU, chunks near the cache size;
    # on a GPU every chunk costs a dozen kernel launches, so there chunks only bound memory
    chunk_bytes = 16 * 2**20
    device_chunk_bytes = 2**30  # inference on non-CPU devices

    def _rows_checkpointed(self, qm, km, vm, mask, diagonal: str, s_map, rows: int):
        """All block rows with autograd, in checkpointed chunks of `rows` block rows.

        Each chunk's q', k', v' are rebuilt in the backward pass instead of being kept: the
        operands of a large map (2 x (1 + 2 halo / window)^2 x the map, in the widened width)
        are never all alive, and the chunks are small enough for the allocator to reuse. The
        chunks come from `unbind` (whose backward is one stack), not from slicing (whose
        backward builds a zero gradient of the whole map per chunk).

        Opt-in, with the global term's switch `recompute`, and only where the operands exceed
        `chunk_bytes`: it trades one more operand build per chunk for the memory.
        """
        from torch.utils.checkpoint import checkpoint

        b, h = self.window, self.halo
        n_h = qm.shape[2] // b
        rows = min(rows, n_h)
        while n_h % rows:  # equal chunks, so that unfold/unflatten can cut them
            rows -= 1
        chunks = n_h // rows
        band = rows * b
        q_bands = qm.unflatten(2, (chunks, band)).unbind(2)
        k_bands = km.unfold(2, band + 2 * h, band).movedim(-1, 3).unbind(2)
        v_bands = vm.unfold(2, band + 2 * h, band).movedim(-1, 3).unbind(2)
        s_bands = s_map.unflatten(2, (chunks, band)).unbind(2) if s_map is not None else \
            [None] * chunks
        n_w = qm.shape[3] // b
        outs, diags = [], []
        for i in range(chunks):
            part = mask[:, i * rows * n_w : (i + 1) * rows * n_w]
            o, a = checkpoint(self._rows, q_bands[i], k_bands[i], v_bands[i], 0, rows, part,
                              diagonal, s_bands[i], use_reentrant=False)
            outs.append(o)
            diags.append(a)
        out = torch.cat(outs, dim=1)
        return out, (torch.cat(diags, dim=1) if diagonal == "report" else None)

    def _place(self, dest: torch.Tensor, part: torch.Tensor, i0: int, i1: int, r0: int, r1: int):
        """Write ((i1 - i0) * heads, rows * n_w, window^2, c) into dest (B, heads, c, Hp, Wp)."""
        b = self.window
        n_w = dest.shape[-1] // b
        c = part.shape[-1]
        part = part.view(i1 - i0, self.heads, r1 - r0, n_w, b, b, c).permute(0, 1, 6, 2, 4, 3, 5)
        dest[i0:i1, ..., r0 * b : r1 * b, :].view(
            i1 - i0, self.heads, c, r1 - r0, b, n_w, b).copy_(part)
