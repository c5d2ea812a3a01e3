"""How each device computes the binary term's attention (what it computes: lesa/binary.py).

    sdpa.py       one `scaled_dot_product_attention` call on widened q/k (GPU; any device on
                  request), also the windowed term's path
    chunked.py    explicit logits at the real head width, chunked over queries (CPU training)
    fused_cpu.py  the same as one hand-written kernel, fused_attention.cpp (CPU inference)
    explicit.py   plain autograd over materialised L x L logits (the reference path: the
                  release's raster positions, or on request)

The first three give softmax_j(q_i.k_j / sqrt(d) + q_i.r_h[y_j - y_i] + q_i.r_w[x_j - x_i]) v_j
(or, with the release's logit BatchNorm, per-head weights in place of 1/sqrt(d) and 1) and, on
request, the diagonal weights a_ii or the diagonal removed.
"""

from . import chunked, explicit, fused_cpu, sdpa  # noqa: E402,F401  (lesa.kernels.fused_cpu.status() etc.)
