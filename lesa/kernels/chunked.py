"""The global binary term's attention on CPU: explicit logits, chunked over queries.

    out_i = sum_j softmax_j(s_ij) v_j,   s_ij = scale q_i.k_j + by_row_i[y_j] + by_col_i[x_j]

(by_row / by_col are the relative logits q_i . r_h[y - y_i] and q_i . r_w[x - x_i] from
RelativePosition2d.) This is BoTNet's formulation, at the real head width, but never with an
L x L tensor for the whole batch: the logits of a chunk of (batch x head) entries and query rows
(`chunk_bytes`) are built in one buffer, the relative logits first (one broadcast add on the
(H, W) view of the key axis) and q k^T accumulated onto them in the same GEMM (`baddbmm`), then
a softmax in place and one GEMM with v. A custom autograd Function does the backward chunk by
chunk with the same buffers. On CPU this beats the SDPA path (sdpa.py), whose widened q/k and
padded v multiply the FLOPs.

Memory. By default the softmax weights of every chunk are kept for the backward pass (one
B x heads x L x L tensor in all, as autograd would keep for explicit attention). With
`recompute=True` they are rebuilt chunk by chunk in the backward pass instead (as flash
attention does): memory O(L) per query, one more logits GEMM and softmax per chunk. Chunks
that are not kept (inference, recompute) live in a workspace of `chunk_bytes` per thread that
stays allocated between calls (two in a recompute backward), see `_Buffers`.
"""
from __future__ import annotations

import threading

import torch

_softmax_out = torch.ops.aten._softmax.out
_softmax_backward_out = torch.ops.aten._softmax_backward_data.out

CHUNK_BYTES = 8 * 2**20  # logits per chunk: a few cache-sized buffers


def relative_attention(q, k, v, by_row, by_col, height: int, width: int, scale: float,
                       diagonal: str = "keep", recompute: bool = False,
                       chunk_bytes: int = CHUNK_BYTES):
    """q, k (B, heads, L, d), v (B, heads, L, dv), by_row (B, heads, L, H), by_col (..., W).

    diagonal: "keep", "mask" (j = i removed and renormalised; needs L > 1) or "report" (also
    return a_ii). Returns (out (B, heads, L, dv), a_ii (B, heads, L) or None).
    """
    b, heads, length, _ = q.shape

    def flat(t):
        return t.reshape(b * heads, length, t.shape[-1])

    out, a_ii = _RelativeAttention.apply(flat(q), flat(k), flat(v), flat(by_row), flat(by_col),
                                         (height, width, scale, diagonal, recompute,
                                          chunk_bytes))
    out = out.view(b, heads, length, -1)
    return out, (a_ii.view(b, heads, length) if a_ii is not None else None)


def _chunks(n: int, length: int, itemsize: int, chunk_bytes: int):
    """(entries, rows) slices covering (n, length) with at most chunk_bytes of logits each:
    whole entries while one entry's L x L logits fit, else row blocks of one entry. Either way
    a chunk is one contiguous block of every (n, L, .) operand, so results are written in place
    (`out=`) with no copy."""
    rows = max(1, min(length, chunk_bytes // (length * itemsize)))
    if rows < length:
        return [(slice(e, e + 1), slice(r, min(r + rows, length)))
                for e in range(n) for r in range(0, length, rows)]
    group = max(1, min(n, chunk_bytes // (length * length * itemsize)))
    return [(slice(e, min(e + group, n)), slice(0, length)) for e in range(0, n, group)]


def _probabilities(buf, q_s, kt, by_row, by_col, start: int, height: int, width: int,
                   mask: bool) -> torch.Tensor:
    """softmax over keys of the chunk's logits, written into buf (entries, rows, L)."""
    entries, rows = buf.shape[:2]
    torch.add(by_row[..., None], by_col[..., None, :], out=buf.view(entries, rows, height, width))
    torch.baddbmm(buf, q_s, kt, out=buf)  # in place (out= rather than baddbmm_: FLOPs counted)
    if mask:
        buf.diagonal(offset=start, dim1=1, dim2=2).fill_(float("-inf"))
    return _softmax_out(buf, -1, False, out=buf)


class _Buffers:
    """Chunk buffers carved from one flat workspace per (role, dtype, device), kept between
    calls in a thread-local cache: a fresh buffer that big per call is handed back to the OS on
    free and page-faulted in again by its first write."""

    _cache = threading.local()

    def __init__(self, like: torch.Tensor, role: str):
        self.like, self.role = like, role

    def get(self, entries: int, rows: int, length: int) -> torch.Tensor:
        cache = self._cache.__dict__  # this thread's {(role, dtype, device): flat buffer}
        key = (self.role, self.like.dtype, self.like.device)
        numel = entries * rows * length
        flat = cache.get(key)
        if flat is None or flat.numel() < numel:
            flat = cache[key] = self.like.new_empty(numel)
        return flat[:numel].view(entries, rows, length)


class _RelativeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, by_row, by_col, args):
        height, width, scale, diagonal, recompute, chunk_bytes = args
        n, length, _ = q.shape
        chunks = _chunks(n, length, q.element_size(), chunk_bytes)
        keep = any(ctx.needs_input_grad[:5]) and not recompute
        q_s, kt = q * scale, k.transpose(1, 2).contiguous()
        out = v.new_empty(n, length, v.shape[-1])
        a_ii = q.new_empty(n, length) if diagonal == "report" else None
        buffers, kept = _Buffers(q, "logits"), []
        for e, r in chunks:
            entries, rows = e.stop - e.start, r.stop - r.start
            buf = q.new_empty(entries, rows, length) if keep else \
                buffers.get(entries, rows, length)
            p = _probabilities(buf, q_s[e, r], kt[e], by_row[e, r], by_col[e, r], r.start,
                               height, width, diagonal == "mask")
            torch.bmm(p, v[e], out=out[e, r])
            if a_ii is not None:
                a_ii[e, r] = p.diagonal(offset=r.start, dim1=1, dim2=2)
            if keep:
                kept.append(p)
        ctx.save_for_backward(q, k, v, by_row, by_col)
        ctx.args, ctx.chunks, ctx.kept = args, chunks, kept if keep else None
        return out, a_ii

    @staticmethod
    def backward(ctx, g_out, g_diag):
        q, k, v, by_row, by_col = ctx.saved_tensors
        height, width, scale, diagonal, _, _ = ctx.args
        kept, ctx.kept = ctx.kept, None
        length = q.shape[1]
        g_out = g_out.contiguous()
        q_s, k_s = q * scale, k * scale
        kt = k.transpose(1, 2).contiguous() if kept is None else None
        vt = v.transpose(1, 2).contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        d_row, d_col = torch.empty_like(by_row), torch.empty_like(by_col)
        logits, grads = _Buffers(q, "logits"), _Buffers(q, "grads")
        for i, (e, r) in enumerate(ctx.chunks):
            entries, rows = e.stop - e.start, r.stop - r.start
            if kept is None:
                p = _probabilities(logits.get(entries, rows, length), q_s[e, r], kt[e],
                                   by_row[e, r], by_col[e, r], r.start, height, width,
                                   diagonal == "mask")
            else:
                p, kept[i] = kept[i], None  # freed as soon as used
            go = g_out[e, r]
            dp = torch.bmm(go, vt[e], out=grads.get(entries, rows, length))
            if g_diag is not None:
                dp.diagonal(offset=r.start, dim1=1, dim2=2).add_(g_diag[e, r])
            ds = _softmax_backward_out(dp, p, -1, p.dtype, grad_input=dp)  # in place
            torch.baddbmm(dv[e], p.transpose(1, 2), go, out=dv[e])
            torch.bmm(ds, k_s[e], out=dq[e, r])
            torch.baddbmm(dk[e], ds.transpose(1, 2), q_s[e, r], out=dk[e])
            ds = ds.view(entries, rows, height, width)
            torch.sum(ds, -1, out=d_row[e, r])
            torch.sum(ds, -2, out=d_col[e, r])
        return dq, dk, dv, d_row, d_col, None
