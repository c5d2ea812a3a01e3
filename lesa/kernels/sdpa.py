"""The binary term through torch's fused `scaled_dot_product_attention` (SDPA), no L x L bias.

The relative logits are folded in by widening q and k: q_i . r_h[y_j - y_i] depends on (i, y_j)
only, so it is [q_i . r_h[y - y_i]]_y (H numbers per query) dotted with onehot(y_j). Same for x:

    q'_i = [q_i, (q_i . r_h[y - y_i])_y / s, (q_i . r_w[x - x_i])_x / s]
    k'_j = [k_j, onehot(y_j),               onehot(x_j)]

and s q'_i . k'_j is the full logit, s = 1/sqrt(d) being SDPA's `scale`. torch's fused kernels
need q/k and v of one head width (else SDPA silently builds the L x L weights), so all three are
zero-padded to one width, a multiple of 8: zero channels change no dot product.

The diagonal weight a_ii comes out of the same call via one extra "sink" key whose logit for
query i is s_ii and whose value is a unit channel: with Z_i = sum_j exp(s_ij), the sink's weight
is e^{s_ii} / (Z_i + e^{s_ii}) = a_ii / (1 + a_ii).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def position_onehots(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(L, H + W): row j is [onehot(y_j), onehot(x_j)] for raster position j."""
    rows = torch.eye(height, dtype=like.dtype, device=like.device).repeat_interleave(width, 0)
    cols = torch.eye(width, dtype=like.dtype, device=like.device).repeat(height, 1)
    return torch.cat([rows, cols], dim=1)


def _zeros(like: torch.Tensor, n: int) -> torch.Tensor:
    """Zero channels to pad `like` with (a broadcast zero: nothing is allocated before the cat)."""
    return like.new_zeros(()).expand(*like.shape[:-1], n)


def operands(q_parts, k_parts, v, scale: float, s_ii=None):
    """SDPA operands q', k', v' of one common width (a multiple of 8), each written in one cat.

    q' = [*q_parts] and k' = [*k_parts] on the channel axis, so that scale * q'.k' is the logit;
    the parts share their leading shape, and the key axes of k_parts and v (one axis, or the
    window's two) are flattened to the query's leading shape (batch axes merged to keep SDPA's
    fused kernels, which take 4-D operands). With s_ii (the logits s_ii, shaped like a q part
    of one channel), one more key: the sink (see the module docstring).
    """
    e, dv = sum(t.shape[-1] for t in q_parts), v.shape[-1]
    sink = s_ii is not None
    width = round_up(max(e, dv) + sink, 8)
    q_parts = [*q_parts, s_ii / scale] if sink else list(q_parts)
    q_op = torch.cat(q_parts + [_zeros(q_parts[0], width - e - sink)], dim=-1)
    q_op = q_op.flatten(0, q_op.dim() - 4)
    keys = (*q_op.shape[:-2], -1, width)
    k_op = torch.cat([*k_parts, _zeros(k_parts[0], width - e)], dim=-1).reshape(keys)
    v_op = torch.cat([v, _zeros(v, width - dv)], dim=-1).reshape(keys)
    if sink:  # the sink key last: unit channel e in k', unit channel dv in v'
        k_op, v_op = F.pad(k_op, (0, 0, 0, 1)), F.pad(v_op, (0, 0, 0, 1))
        k_op[..., -1, e] = 1.0
        v_op[..., -1, dv] = 1.0
    return q_op, k_op, v_op


def attend(q_parts, k_parts, v, scale: float, mask=None, s_ii=None):
    """softmax(scale q'.k' + mask) v, and with s_ii the diagonal weights a_ii, in one SDPA call.

    Arguments as `operands`; mask, if given, is a float mask over (queries, keys) (the sink gets
    a zero column). Returns (out (..., Lq, dv), a_ii (..., Lq) or None), in q'`s leading shape.
    """
    dv = v.shape[-1]
    q_op, k_op, v_op = operands(q_parts, k_parts, v, scale, s_ii)
    if s_ii is not None and mask is not None:
        mask = F.pad(mask, (0, 1))
    out = F.scaled_dot_product_attention(q_op, k_op, v_op, attn_mask=mask, scale=scale)
    if s_ii is None:
        return out[..., :dv], None
    sink = out[..., dv]  # a_ii / (1 + a_ii), at most 1/2
    keep = 1.0 - sink
    return out[..., :dv] / keep.unsqueeze(-1), sink / keep
