"""bench.costs.flops.count_flops: CPU attention is counted whatever the installed torch knows."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import sdpa_backward_flop_count

import lesa
from bench.costs.flops import forward_flops
from bench.costs.flops import count_flops


def test_cpu_sdpa_forward_and_backward_are_counted():
    b, heads, lq, lk, d, dv = 2, 3, 16, 24, 8, 8
    q = torch.randn(b, heads, lq, d, requires_grad=True)
    k = torch.randn(b, heads, lk, d, requires_grad=True)
    v = torch.randn(b, heads, lk, dv, requires_grad=True)
    forward = 2 * b * heads * lq * lk * (d + dv)  # q k^T and a v
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    # backward: the recomputed q k^T, a^T g, g v^T, ds k and ds^T q (torch's own formula)
    backward = sdpa_backward_flop_count((b, heads, lq, dv), q.shape, k.shape, v.shape)
    assert backward > 2 * forward
    both = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert both == forward + backward


def test_torch_formulas_still_count():
    a, m = torch.randn(32, 16), torch.randn(16, 8)
    assert count_flops(lambda: a @ m) == 2 * 32 * 16 * 8


def test_windowed_term_counts_its_attention():
    # the windowed term runs SDPA on CPU: its forward must count more than its convolutions
    torch.manual_seed(0)
    x = torch.randn(1, 32, 8, 8)
    windowed = lesa.LESA2d(32, heads=2, fusion="binary", window=4)
    projection = count_flops(lambda: windowed.fusion.binary.qkv(x))
    # each of the 64 queries attends to at least its 4x4 block: q k^T (d = 8) and a v (dv = 16)
    # over 16 keys, 2 heads
    attention = 2 * 2 * 64 * 16 * (8 + 16)
    assert forward_flops(windowed, x) >= projection + attention


def test_explicit_path_of_the_raster_positions_counts_its_attention():
    # the release's raster positions run on the explicit path: q k^T, a v, the positional
    # logits (q and k against the table's 2L - 1 columns) and the value term are all counted
    torch.manual_seed(0)
    x = torch.randn(1, 32, 4, 4)
    module = lesa.LESA2d(32, heads=2, fusion="sa", positions="raster", max_map_size=4)
    projection = count_flops(lambda: module.fusion.binary.qkv(x))
    length, d, dv = 16, 8, 16
    attention = 2 * 2 * length * length * (d + dv)  # q k^T and a v, 2 heads
    positional = 2 * 2 * length * (2 * length - 1) * (2 * d + dv)  # q.r_q, k.r_k, value term
    assert forward_flops(module, x) >= projection + attention + positional
