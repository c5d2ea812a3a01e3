"""Every fast path of lesa/ against explicit reference math, forward AND gradients (fp32, 1e-5).

Fast paths: the global binary term through SDPA's fused kernel (q/k/v zero-padded to one width,
relative logits folded into widened q/k, the diagonal mask, the sink key for a_ii) and through
the chunked explicit path of lesa/kernels/chunked.py (kept or recomputed softmax weights), and the
windowed binary term of lesa/window.py (query blocks, halo neighbourhoods, masked borders). The
references here build the L x L logits from the module's own tables, mask by hand, and take a
plain softmax; they never call the SDPA operands, attend or SDPA. No timing is asserted anywhere.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lesa
from lesa import FUSIONS, BinaryTerm, LESA2d
from lesa.kernels import sdpa
from lesa.kernels.chunked import relative_attention
from lesa.layout import Pointwise, is_channels_last
from lesa.window import WindowedBinaryTerm
from test_lesa_math import randomize_bn

TOL = dict(rtol=1e-5, atol=1e-5)
C, HEADS, MAX = 32, 4, 12  # q/k dim 4, v dim 8 per head
ATTENTION = [name for name in FUSIONS if name not in ("conv", "unary")]
MODES = ["keep", "mask", "report"]


# ---------------------------------------------------------------- references

def ref_logits(term: BinaryTerm, q, k, height: int, width: int) -> torch.Tensor:
    """s_ij = q_i.k_j / sqrt(d) + q_i.rel_h[m-1 + y_j - y_i] + q_i.rel_w[m-1 + x_j - x_i]."""
    m = term.rel.max_map_size
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            + torch.einsum("bhid,ijd->bhij", q, term.rel.rel_h[m - 1 + dy])
            + torch.einsum("bhid,ijd->bhij", q, term.rel.rel_w[m - 1 + dx]))


def neighbourhood(height: int, width: int, window: int, halo: int) -> torch.Tensor:
    """(L, L) bool: key j is in query i's block grown by `halo` on every side (and on the map)."""
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    top, left = (ys // window) * window, (xs // window) * window
    rows = (ys[None, :] >= top[:, None] - halo) & (ys[None, :] < top[:, None] + window + halo)
    cols = (xs[None, :] >= left[:, None] - halo) & (xs[None, :] < left[:, None] + window + halo)
    return rows & cols


def ref_attend(term, q, k, v, height, width, diagonal, allowed=None):
    """(out, a_ii or None) by explicit masked softmax; `allowed` (L, L) limits the keys."""
    s = ref_logits(term, q, k, height, width)
    keep = torch.ones(s.shape[-2:], dtype=torch.bool) if allowed is None else allowed.clone()
    if diagonal == "mask":
        keep &= ~torch.eye(s.shape[-1], dtype=torch.bool)
    a = s.masked_fill(~keep, float("-inf")).softmax(-1)
    a = torch.nan_to_num(a, nan=0.0)  # a row with no key left: empty sum
    out = a @ v
    return out, (a.diagonal(dim1=-2, dim2=-1) if diagonal == "report" else None)


# ---------------------------------------------------------------- helpers

def qkv(b, length, seed=0, d=C // (2 * HEADS), dv=C // HEADS, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, HEADS, length, n, generator=g) * scale).requires_grad_(True)
            for n in (d, d, dv)]


def grads_of(fn, leaves, term, seed=0):
    """Run fn, contract its outputs with fixed random weights, return the gradients of the
    leaves and of the relative tables."""
    for t in [*leaves, term.rel.rel_h, term.rel.rel_w]:
        t.grad = None
    out, a_ii = fn()
    g = torch.Generator().manual_seed(seed + 100)
    loss = (out * torch.randn(out.shape, generator=g)).sum()
    if a_ii is not None:
        loss = loss + (a_ii * torch.randn(a_ii.shape, generator=g)).sum()
    loss.backward()
    return (out.detach(), None if a_ii is None else a_ii.detach(),
            [t.grad.clone() for t in [*leaves, term.rel.rel_h, term.rel.rel_w]])


def assert_same(fast, ref):
    out_f, a_f, g_f = fast
    out_r, a_r, g_r = ref
    torch.testing.assert_close(out_f, out_r, **TOL)
    if a_r is not None:
        torch.testing.assert_close(a_f, a_r, **TOL)
    names = ["q", "k", "v", "rel_h", "rel_w"]
    for name, got, want in zip(names, g_f, g_r):
        torch.testing.assert_close(got, want, **TOL, msg=lambda m, n=name: f"grad {n}: {m}")


def autograd_nodes(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


# ---------------------------------------------------------------- the SDPA helpers

@pytest.mark.parametrize("widths", [(5, 3), (3, 5), (8, 8), (13, 21)])
@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_pads_unequal_widths_exactly(widths, masked):
    eq, ev = widths
    g = torch.Generator().manual_seed(eq * 10 + ev)
    q, k = (torch.randn(2, 3, 7, eq, generator=g).requires_grad_(True) for _ in range(2))
    v = torch.randn(2, 3, 7, ev, generator=g).requires_grad_(True)
    mask = None
    if masked:
        mask = torch.zeros(1, 1, 7, 7)
        mask.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    readout = torch.randn(2, 3, 7, ev, generator=g)

    def run(fast):
        for t in (q, k, v):
            t.grad = None
        if fast:
            out, _ = sdpa.attend([q], [k], v, 0.7, mask)
        else:
            s = 0.7 * q @ k.transpose(-1, -2) + (0 if mask is None else mask)
            out = s.softmax(-1) @ v
        (out * readout).sum().backward()
        return out.detach(), [t.grad.clone() for t in (q, k, v)]

    (out_f, g_f), (out_r, g_r) = run(True), run(False)
    assert out_f.shape == (2, 3, 7, ev)
    torch.testing.assert_close(out_f, out_r, **TOL)
    for got, want in zip(g_f, g_r):
        torch.testing.assert_close(got, want, **TOL)


def test_sink_key_gives_attention_and_its_diagonal():
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 2, 6, 4, generator=g).requires_grad_(True) for _ in range(2))
    v = torch.randn(1, 2, 6, 5, generator=g).requires_grad_(True)
    scale = 0.5
    s = scale * q @ k.transpose(-1, -2)
    a = s.softmax(-1)
    s_ii = s.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
    out, a_ii = sdpa.attend([q], [k], v, scale, s_ii=s_ii)
    torch.testing.assert_close(out, a @ v, **TOL)
    torch.testing.assert_close(a_ii, a.diagonal(dim1=-2, dim2=-1), **TOL)
    w = torch.randn(out.shape, generator=g)
    grads_fast = torch.autograd.grad((out * w).sum() + a_ii.sum(), (q, k, v), retain_graph=True)
    grads_ref = torch.autograd.grad((a @ v * w).sum() + a.diagonal(dim1=-2, dim2=-1).sum(),
                                    (q, k, v))
    for got, want in zip(grads_fast, grads_ref):
        torch.testing.assert_close(got, want, **TOL)


# ---------------------------------------------------------------- global binary term

KERNELS = [("sdpa", False), ("chunked", False), ("chunked", True)]  # (kernel, recompute)


@pytest.mark.parametrize("kernel,recompute", KERNELS)
@pytest.mark.parametrize("diagonal", MODES)
@pytest.mark.parametrize("b,h,w", [(1, 4, 4), (2, 5, 7), (1, 1, 6), (2, 12, 3)])
def test_global_attend_forward_and_gradients(diagonal, b, h, w, kernel, recompute):
    torch.manual_seed(h * 7 + w)
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    term.kernel, term.recompute = kernel, recompute
    leaves = qkv(b, h * w, seed=h + w)
    fast = grads_of(lambda: term.attend(*leaves, h, w, diagonal), leaves, term)
    ref = grads_of(lambda: ref_attend(term, *leaves, h, w, diagonal), leaves, term)
    assert_same(fast, ref)


@pytest.mark.parametrize("kernel,recompute", KERNELS)
def test_global_report_when_self_attention_dominates(kernel, recompute):
    torch.manual_seed(0)
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    term.kernel, term.recompute = kernel, recompute
    q, k, v = qkv(1, 12, seed=4)
    with torch.no_grad():
        k.copy_(q * 6.0)  # a_ii close to 1: the sink carries about half the mass
    fast = grads_of(lambda: term.attend(q, k, v, 3, 4, "report"), [q, k, v], term)
    ref = grads_of(lambda: ref_attend(term, q, k, v, 3, 4, "report"), [q, k, v], term)
    assert ref[1].max() > 0.9
    assert_same(fast, ref)


@pytest.mark.parametrize("diagonal", MODES)
def test_global_attend_stays_on_the_fused_cpu_kernel(diagonal):
    """Unequal q/k and v widths (or a rank-3 or grad-requiring mask) would silently send SDPA
    to its math path, which builds the L x L weights; the padding keeps the fused kernel."""
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    term.kernel = "sdpa"  # the path off CPU ("auto" takes the chunked path on CPU)
    q, k, v = qkv(2, 20, seed=1)
    out, _ = term.attend(q, k, v, 4, 5, diagonal)
    nodes = autograd_nodes(out)
    assert "ScaledDotProductFlashAttentionForCpuBackward0" in nodes, sorted(nodes)
    assert not {"SoftmaxBackward0", "SafeSoftmaxBackward0"} & nodes, sorted(nodes)


# ---------------------------------------------------------------- chunked explicit path

@pytest.mark.parametrize("diagonal", MODES)
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("chunk_bytes", [1, 5 * 4 * 35, 3 * 4 * 35 * 35])  # 1 row; 5; 3 x all
def test_chunked_attention_in_uneven_chunks(diagonal, recompute, chunk_bytes):
    """Chunks of one query row, of 5 rows (the last one ragged), and of 3 whole (batch x head)
    entries (8 in all: the last chunk has 2): the same numbers as the reference, forward and
    gradients."""
    torch.manual_seed(3)
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    leaves = qkv(2, 35, seed=5)

    def fast():
        by_row, by_col = term.rel(leaves[0], 5, 7)
        return relative_attention(*leaves, by_row, by_col, 5, 7, term.qk_dim**-0.5, diagonal,
                                  recompute, chunk_bytes)

    assert_same(grads_of(fast, leaves, term),
                grads_of(lambda: ref_attend(term, *leaves, 5, 7, diagonal), leaves, term))


def test_chunk_workspace_is_reused_and_right_across_shapes():
    """Inference chunks are carved from one workspace kept between calls (lesa/kernels/chunked.py,
    _Buffers): calls at a large, a smaller and again the large shape all equal the reference,
    and all use the memory the first call set up (held here, so it cannot be freed and handed
    out again by chance)."""
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    held = []
    with torch.no_grad():
        for b, h, w in [(3, 5, 7), (1, 3, 2), (3, 5, 7)]:
            q, k, v = qkv(b, h * w, seed=b + h)
            out, _ = term.attend(q, k, v, h, w)
            torch.testing.assert_close(out, ref_attend(term, q, k, v, h, w, "keep")[0], **TOL)
            held.append(lesa.kernels.chunked._Buffers(q, "logits").get(1, 1, 1))
    assert len({t.untyped_storage().data_ptr() for t in held}) == 1


def test_chunked_attention_keeps_probabilities_unless_recompute():
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    q, k, v = qkv(2, 20, seed=1)  # "auto" takes the chunked path on CPU
    out, _ = term.attend(q, k, v, 4, 5)
    assert "_RelativeAttentionBackward" in autograd_nodes(out)
    node = out.grad_fn.next_functions[0][0]  # out is a view of the Function's output
    kept = node.kept  # the autograd node is the Function's ctx
    assert sum(p.numel() for p in kept) == 2 * HEADS * 20 * 20
    term.recompute = True
    out, _ = term.attend(q, k, v, 4, 5)
    assert out.grad_fn.next_functions[0][0].kept is None
    out.sum().backward()  # rebuilt in the backward pass
    assert q.grad.abs().sum() > 0
    with torch.no_grad():  # inference keeps nothing either way
        term.recompute = False
        assert term.attend(q, k, v, 4, 5)[0].grad_fn is None


@pytest.mark.parametrize("diagonal", ["keep", "mask", "report"])
def test_recompute_gives_bit_identical_gradients(diagonal):
    """The rebuilt weights are the kept ones bit for bit (same chunks, same kernels), which is
    why `model.recompute_attention` is not part of a run's id."""
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    leaves = qkv(2, 20, seed=3)
    grads = []
    for recompute in (False, True):
        term.recompute = recompute
        grads.append(grads_of(lambda: term.attend(*leaves, 4, 5, diagonal), leaves, term))
    (out_k, a_k, g_k), (out_r, a_r, g_r) = grads
    assert torch.equal(out_k, out_r) and (a_k is None) == (diagonal != "report")
    assert a_k is None or torch.equal(a_k, a_r)
    assert len(g_k) == 5 and all(torch.equal(k, r) for k, r in zip(g_k, g_r))


def test_recompute_attention_reaches_every_global_term():
    import lesa

    for flag in (False, True):
        net = lesa.build_backbone("resnet_tiny", fusion="dynamic", recompute_attention=flag)
        terms = [m for m in net.modules() if isinstance(m, BinaryTerm)]
        assert terms and all(m.recompute is flag for m in terms)
        net = lesa.build_backbone("resnet_tiny", fusion="dynamic", window={3: 2, 4: None},
                                  recompute_attention=flag)
        windowed = [m for m in net.modules() if isinstance(m, WindowedBinaryTerm)]
        assert windowed and all(m.recompute is flag for m in windowed)


def test_unknown_kernel_is_a_clear_error():
    term = BinaryTerm(C, HEADS, max_map_size=MAX)
    term.kernel = "flash"
    with pytest.raises(ValueError, match="kernel must be auto, sdpa or chunked"):
        term.attend(*qkv(1, 4), 2, 2)


# ---------------------------------------------------------------- windowed binary term

WINDOW_CASES = [  # (b, H, W, window, halo)
    (1, 8, 8, 4, 2),     # whole blocks
    (2, 5, 7, 2, 1),     # ragged last blocks in both directions
    (1, 3, 9, 4, 0),     # no halo: attention inside each block only
    (1, 6, 5, 3, 2),     # odd block
    (2, 4, 4, 8, 4),     # one block covering the map: plain global attention
    (1, 1, 6, 2, 1),     # a single row
]


@pytest.mark.parametrize("diagonal", MODES)
@pytest.mark.parametrize("b,h,w,window,halo", WINDOW_CASES)
def test_windowed_attend_equals_explicit_masked_attention(diagonal, b, h, w, window, halo):
    torch.manual_seed(window * 10 + halo)
    term = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=window, halo=halo)
    leaves = qkv(b, h * w, seed=h * w)
    allowed = neighbourhood(h, w, window, halo)
    assert not allowed.all() or window >= max(h, w)  # non-vacuous: keys really are cut
    fast = grads_of(lambda: term.attend(*leaves, h, w, diagonal), leaves, term)
    ref = grads_of(lambda: ref_attend(term, *leaves, h, w, diagonal, allowed), leaves, term)
    assert_same(fast, ref)


def test_windowed_report_when_self_attention_dominates():
    torch.manual_seed(1)
    term = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=3, halo=1)
    q, k, v = qkv(1, 30, seed=5)
    with torch.no_grad():
        k.copy_(q * 6.0)
    allowed = neighbourhood(5, 6, 3, 1)
    fast = grads_of(lambda: term.attend(q, k, v, 5, 6, "report"), [q, k, v], term)
    ref = grads_of(lambda: ref_attend(term, q, k, v, 5, 6, "report", allowed), [q, k, v], term)
    assert ref[1].max() > 0.9
    assert_same(fast, ref)


@pytest.mark.parametrize("diagonal", MODES)
@pytest.mark.parametrize("chunk_bytes", [1, 6000])
def test_windowed_inference_chunks_equal_the_reference(diagonal, chunk_bytes, monkeypatch):
    """Without autograd the map goes through SDPA in chunks of batch entries and block rows
    (1 byte: one block row of one image at a time); the result must not change."""
    monkeypatch.setattr(WindowedBinaryTerm, "chunk_bytes", chunk_bytes)
    torch.manual_seed(6)
    b, h, w, window, halo = 3, 9, 7, 2, 1
    term = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=window, halo=halo)
    q, k, v = (t.detach() for t in qkv(b, h * w, seed=7))
    with torch.no_grad():
        out, a_ii = term.attend(q, k, v, h, w, diagonal)
        ref_out, ref_a = ref_attend(term, q, k, v, h, w, diagonal,
                                    neighbourhood(h, w, window, halo))
    torch.testing.assert_close(out, ref_out, **TOL)
    if ref_a is not None:
        torch.testing.assert_close(a_ii, ref_a, **TOL)


@pytest.mark.parametrize("diagonal", MODES)
@pytest.mark.parametrize("b,h,w,window,halo", [(2, 9, 7, 2, 1), (1, 12, 8, 4, 2)])
def test_windowed_checkpointed_chunks_forward_and_gradients(diagonal, b, h, w, window, halo,
                                                            monkeypatch):
    """With autograd and `recompute`, maps whose operands exceed chunk_bytes go through
    checkpointed chunks of block rows (forced here with a tiny threshold); output and every
    gradient must equal the explicit reference."""
    monkeypatch.setattr(WindowedBinaryTerm, "chunk_bytes", 1)  # one block row per chunk
    torch.manual_seed(8)
    term = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=window, halo=halo)
    term.recompute = True
    leaves = qkv(b, h * w, seed=9)
    out, _ = term.attend(*leaves, h, w, diagonal)
    assert "UnbindBackward0" in autograd_nodes(out)  # the chunked path was taken
    allowed = neighbourhood(h, w, window, halo)
    fast = grads_of(lambda: term.attend(*leaves, h, w, diagonal), leaves, term)
    ref = grads_of(lambda: ref_attend(term, *leaves, h, w, diagonal, allowed), leaves, term)
    assert_same(fast, ref)


@pytest.mark.parametrize("diagonal", MODES)
def test_windowed_recompute_gives_the_same_gradients(diagonal, monkeypatch):
    """`recompute` checkpoints the windowed term only where its operands exceed chunk_bytes,
    and then gives the plain path's output and gradients (the relative tables' gradients are
    summed over the chunks in another order: equal to float rounding, ~1e-6 relative):
    `model.recompute_attention` changes memory, not results."""
    monkeypatch.setattr(WindowedBinaryTerm, "chunk_bytes", 1)
    torch.manual_seed(8)
    term = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=2, halo=1)
    leaves = qkv(2, 9 * 7, seed=9)
    runs = []
    for recompute in (False, True):
        term.recompute = recompute
        out, _ = term.attend(*leaves, 9, 7, diagonal)
        assert ("UnbindBackward0" in autograd_nodes(out)) is recompute
        runs.append(grads_of(lambda: term.attend(*leaves, 9, 7, diagonal), leaves, term))
    assert_same(runs[1], runs[0])
    monkeypatch.setattr(WindowedBinaryTerm, "chunk_bytes", 2**30)  # small map: not chunked
    assert "UnbindBackward0" not in autograd_nodes(term.attend(*leaves, 9, 7, diagonal)[0])


def windowed_widen(term: WindowedBinaryTerm, q, k, height: int, width: int):
    """The windowed term's SDPA q' and k' for all block rows, built as its `_rows` builds them,
    with SDPA's scale folded into q': q' (B * heads, blocks, window^2, E) . k' (..., win^2, E)
    is the full logit of a query and a key of its neighbourhood."""
    scale, halo = term.qk_dim**-0.5, term.halo
    n_h, _ = term._grid(height, width)
    q_blocks = term._query_blocks(term._map(q, height, width, 0, 0, 0), 0, n_h)
    by_row, by_col = term._relative(q_blocks, 1.0 / scale)
    k_win = term._key_windows(term._map(k, height, width, halo, halo, halo), 0, n_h)
    onehots = term._onehots(k).expand(*k_win.shape[:-1], -1)
    q_op, k_op, _ = sdpa.operands([q_blocks, by_row, by_col], [k_win, onehots], k_win, scale)
    return q_op * scale, k_op


def test_windowed_widen_dot_products_are_the_logits():
    torch.manual_seed(2)
    window, halo, h, w = 3, 2, 5, 7
    term = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=window, halo=halo)
    q, k, _ = qkv(1, h * w, seed=6)
    q_wide, k_wide = windowed_widen(term, q, k, h, w)
    s = q_wide @ k_wide.transpose(-1, -2)  # (heads, blocks, window^2, win^2)
    full = ref_logits(term, q, k, h, w)[0]  # (heads, L, L)
    win = window + 2 * halo
    n_w = -(-w // window)
    checked = 0
    for i in range(h * w):
        y, x = divmod(i, w)
        block = (y // window) * n_w + x // window
        p = (y % window) * window + x % window
        for t in range(win * win):
            ky = (y // window) * window - halo + t // win
            kx = (x // window) * window - halo + t % win
            if 0 <= ky < h and 0 <= kx < w:
                torch.testing.assert_close(s[:, block, p, t], full[:, i, ky * w + kx], **TOL)
                checked += 1
    assert checked > 200


def test_windowed_term_with_a_covering_window_is_the_global_term():
    torch.manual_seed(3)
    glob = BinaryTerm(C, HEADS, max_map_size=MAX).eval()
    local = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=8, halo=4).eval()
    local.load_state_dict(glob.state_dict())  # same parameters, same names
    x = torch.randn(2, C, 6, 7, requires_grad=True)
    torch.testing.assert_close(local(x), glob(x), **TOL)
    gx_local, = torch.autograd.grad(local(x).square().sum(), x)
    gx_glob, = torch.autograd.grad(glob(x).square().sum(), x)
    torch.testing.assert_close(gx_local, gx_glob, **TOL)


def test_windowed_term_handles_maps_larger_than_max_map_size():
    term = WindowedBinaryTerm(16, 2, max_map_size=6, window=4, halo=2)
    y = term(torch.randn(1, 16, 20, 13))
    assert y.shape == (1, 16, 20, 13) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="max_map_size"):
        WindowedBinaryTerm(16, 2, max_map_size=5, window=4, halo=2)


def test_windowed_mask_on_a_single_position_is_an_empty_sum():
    term = WindowedBinaryTerm(16, 2, max_map_size=8, window=4)
    q, k, v = (torch.randn(1, 2, 1, n, requires_grad=True) for n in (4, 4, 8))
    out, _ = term.attend(q, k, v, 1, 1, "mask")
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(v.grad).all()


@pytest.mark.parametrize("diagonal", MODES)
def test_windowed_attend_stays_on_the_fused_cpu_kernel(diagonal):
    term = WindowedBinaryTerm(C, HEADS, max_map_size=MAX, window=3, halo=1)
    q, k, v = qkv(1, 35, seed=2)
    out, _ = term.attend(q, k, v, 5, 7, diagonal)
    nodes = autograd_nodes(out)
    assert "ScaledDotProductFlashAttentionForCpuBackward0" in nodes, sorted(nodes)


# ---------------------------------------------------------------- strategies with a window

def _randomize_bn(module, seed=0):
    """test_lesa_math's non-trivial BatchNorm statistics, in eval mode (running stats used)."""
    return randomize_bn(module, seed).eval()


@pytest.mark.parametrize("fusion", ATTENTION)
def test_every_strategy_with_a_covering_window_equals_its_global_self(fusion):
    torch.manual_seed(4)
    glob = _randomize_bn(LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX))
    local = _randomize_bn(LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, window=8))
    local.load_state_dict(glob.state_dict())
    assert isinstance(local.fusion.binary, WindowedBinaryTerm)
    x = torch.randn(1, C, 5, 6, requires_grad=True)
    y_local, y_glob = local(x), glob(x)
    torch.testing.assert_close(y_local, y_glob, **TOL)
    if fusion in ("sa", "softmax"):
        assert local.fusion.last_unary_share == pytest.approx(glob.fusion.last_unary_share,
                                                              rel=1e-5)
    w = torch.randn(y_glob.shape)
    params_local = [p for _, p in sorted(local.named_parameters())]
    params_glob = [p for _, p in sorted(glob.named_parameters())]
    for got, want in zip(torch.autograd.grad((y_local * w).sum(), [x, *params_local]),
                         torch.autograd.grad((y_glob * w).sum(), [x, *params_glob])):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("fusion", ["sa", "binary", "softmax"])
def test_strategy_with_a_small_window_uses_the_neighbourhood(fusion):
    """sa / binary / softmax on a 3x3 window with halo 1: the head outputs are the explicit
    neighbourhood attention (the softmax strategy also reports the neighbourhood a_ii)."""
    torch.manual_seed(5)
    module = _randomize_bn(LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, window=3))
    term = module.fusion.binary
    assert (term.window, term.halo) == (3, 1)
    h, w = 7, 5
    x = torch.randn(2, C, h, w)
    seen = {}
    original = term.attend

    def spy(*a, **kw):
        out = original(*a, **kw)
        seen["args"], seen["out"] = a, out
        return out

    term.attend = spy
    module(x)
    q, k, v, hh, ww, diagonal = seen["args"]
    ref_out, ref_a = ref_attend(term, q, k, v, h, w, diagonal, neighbourhood(h, w, 3, 1))
    torch.testing.assert_close(seen["out"][0], ref_out, **TOL)
    if ref_a is not None:
        torch.testing.assert_close(seen["out"][1], ref_a, **TOL)


def test_backbone_window_per_stage():
    torch.manual_seed(0)
    model = lesa.build_backbone("resnet_tiny", fusion="dynamic", num_classes=10,
                                window={3: None, 4: 2})
    kinds = {name: type(m.binary).__name__ for name, m in model.named_modules()
             if isinstance(m, lesa.Fusion) and m.name != "conv"}
    assert kinds and all(v == ("WindowedBinaryTerm" if n.startswith("layer4") else "BinaryTerm")
                         for n, v in kinds.items()), kinds
    y = model(torch.randn(2, 3, 32, 32))
    y.sum().backward()
    assert y.shape == (2, 10)
    every = lesa.build_backbone("resnet_tiny", fusion="sa", window=2)
    assert all(isinstance(m.binary, WindowedBinaryTerm) for m in every.modules()
               if isinstance(m, lesa.Fusion) and m.name != "conv")
    plain = lesa.build_backbone("resnet_tiny", fusion="sa")
    assert not any(isinstance(m, WindowedBinaryTerm) for m in plain.modules())
    # the window changes no parameter: same state dict keys and shapes
    assert {k: v.shape for k, v in every.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}


# ---------------------------------------------------------------- memory layout

CL = torch.channels_last


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_strategy_in_channels_last_equals_nchw(fusion, window):
    """A channels-last input gives the NCHW result, output and every gradient, and keeps its
    layout (merge writes the heads in the block input's layout)."""
    if window is not None and fusion in ("conv", "unary"):
        pytest.skip("no binary term to window")
    torch.manual_seed(6)
    extra = {} if window is None else {"window": window}
    nchw = _randomize_bn(LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, **extra))
    cl = _randomize_bn(LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, **extra))
    cl.load_state_dict(nchw.state_dict())
    cl.to(memory_format=CL)
    x = torch.randn(2, C, 5, 6)
    x_cl = x.contiguous(memory_format=CL).requires_grad_()
    x = x.requires_grad_()
    y, y_cl = nchw(x), cl(x_cl)
    assert y.is_contiguous() and y_cl.is_contiguous(memory_format=CL) and not y_cl.is_contiguous()
    torch.testing.assert_close(y_cl, y, **TOL)
    w = torch.randn(y.shape)
    names = [n for n, _ in nchw.named_parameters()]
    got = torch.autograd.grad((y_cl * w).sum(), [x_cl, *cl.parameters()])
    want = torch.autograd.grad((y * w).sum(), [x, *nchw.parameters()])
    for name, g, r in zip(["x", *names], got, want):
        torch.testing.assert_close(g, r, **TOL, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_pointwise_equals_the_1x1_convolution(layout):
    """lesa.layout.Pointwise: a GEMM over the rows of a channels-last map, nn.Conv2d's own
    forward on any other; the output, input and weight gradients of the 1x1 convolution."""
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(C, 2 * C, 1, bias=False)
    point = Pointwise(C, 2 * C)
    point.load_state_dict(conv.state_dict())
    x = torch.randn(3, C, 5, 6).contiguous(memory_format=layout).requires_grad_()
    y, want = point(x), conv(x)
    torch.testing.assert_close(y, want, **TOL)
    assert y.is_contiguous(memory_format=layout)
    w = torch.randn(want.shape)
    got = torch.autograd.grad((y * w).sum(), [x, point.weight])
    ref = torch.autograd.grad((want * w).sum(), [x, conv.weight])
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, **TOL)


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f != "conv"])
def test_a_training_step_runs_channels_last_inside_and_equals_nchw(fusion, window):
    """On CPU with autograd on, a block given an NCHW map works channels last inside
    (Fusion.channels_last_on_cpu): the same output, input and parameter gradients and batch-norm
    statistics as the block kept in NCHW; the output and the input's gradient stay NCHW, and
    every batch norm inside gets its gradient in its own input's layout (the other layout
    sends its backward to a kernel up to 10x slower). Without autograd it stays NCHW."""
    if window is not None and fusion == "unary":
        pytest.skip("no binary term to window")
    torch.manual_seed(8)
    extra = {} if window is None else {"window": window}
    inside = LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, **extra)
    plain = LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, **extra)
    plain.load_state_dict(inside.state_dict())
    plain.fusion.channels_last_on_cpu = False
    seen = []  # (what, name, tensor) for every batch norm's input and output gradient

    def watch(name):
        def hook(module, args, out):
            seen.append(("input", name, args[0]))
            if out.requires_grad:
                out.register_hook(lambda g: seen.append(("gradient", name, g)))
        return hook

    for name, bn in inside.named_modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.register_forward_hook(watch(name))
    x = torch.randn(2, C, 5, 6)
    x_in, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, want = inside(x_in), plain(x_plain)
    torch.testing.assert_close(y, want, **TOL)
    assert y.is_contiguous()
    w = torch.randn(y.shape)
    names = ["x"] + [n for n, _ in plain.named_parameters()]
    got = torch.autograd.grad((y * w).sum(), [x_in, *inside.parameters()])
    ref = torch.autograd.grad((want * w).sum(), [x_plain, *plain.parameters()])
    assert got[0].is_contiguous()
    for name, g, r in zip(names, got, ref):  # batch statistics of 60 positions amplify
        scale = max(r.abs().max().item(), 1.0)  # rounding: relative to the gradient's size
        assert (g - r).abs().max().item() <= 1e-5 * scale, name
    for (name, a), b in zip(inside.named_buffers(), plain.buffers()):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert {what for what, _, _ in seen} == {"input", "gradient"}
    for what, name, t in seen:
        assert t.is_contiguous(memory_format=CL) and not t.is_contiguous(), (what, name)
    seen.clear()
    with torch.no_grad():
        inside(x)
    assert seen and not any(is_channels_last(t) for _, _, t in seen)


@pytest.mark.parametrize("shape,stride", [((2, C, 1, 1), 1), ((2, C, 2, 2), 2)])
@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f != "conv"])
def test_a_block_with_a_1x1_map_takes_an_in_place_op_on_its_output(fusion, shape, stride):
    """A 1x1 map is NCHW and channels last at once: nothing is converted there, in or out (a
    custom Function returning its own input makes an in-place op on the result, such as the
    bottleneck's ReLU after the block, fail)."""
    block = LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, stride=stride)
    x = torch.randn(*shape, requires_grad=True)
    y = block(x * 1.0)
    y.relu_()
    y.sum().backward()
    assert y.shape == (2, C, 1, 1) and x.grad.shape == x.shape and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_projection_gradients_come_back_in_the_bn_layout(layout):
    """q, k and v are split on the axis that is outermost in memory, so the gradient reaching
    the qkv BN is laid out as its input (a mismatch sends the BN backward to a 4x slower
    kernel on CPU)."""
    term = BinaryTerm(C, HEADS, max_map_size=MAX).to(memory_format=layout)
    x = torch.randn(2, C, 5, 6).contiguous(memory_format=layout)
    seen = {}
    term.qkv_bn.register_full_backward_hook(lambda m, g_in, g_out: seen.update(g=g_out[0]))
    q, k, v = term.project(x)
    (q.sum() + 2 * k.sum() + 3 * v.sum()).backward()
    assert seen["g"].is_contiguous(memory_format=layout)
    assert (q.shape, v.shape) == ((2, HEADS, 30, C // (2 * HEADS)), (2, HEADS, 30, C // HEADS))


def test_channels_last_backbone_equals_nchw():
    """`channels_last=True`: weights and feature maps channels last, the same logits and
    gradients as the NCHW network, each within float rounding of the network in float64. The
    channels-last gradients round less well near the input (the stem's batch norm: 1.5e-5 of
    the largest gradient, NCHW 5e-6), so its bound is wider; compared with each other, as this
    test did first, the two fp32 networks differ by up to the sum of their errors."""
    torch.manual_seed(0)
    nchw = lesa.build_backbone("resnet_tiny", fusion="dynamic", num_classes=10,
                               window={3: None, 4: 2})
    cl = lesa.build_backbone("resnet_tiny", fusion="dynamic", num_classes=10,
                             window={3: None, 4: 2}, channels_last=True)
    cl.load_state_dict(nchw.state_dict())
    assert cl.layer3[1].conv2.fusion.binary.qkv.weight.is_contiguous(memory_format=CL)
    x = torch.randn(2, 3, 32, 32)
    exact = lesa.build_backbone("resnet_tiny", fusion="dynamic", num_classes=10,
                                window={3: None, 4: 2})
    exact.load_state_dict(nchw.state_dict())
    exact.double()
    feats = cl.forward_features(x)
    assert all(f.is_contiguous(memory_format=CL) for f in feats.values())
    y, y_cl, y_exact = nchw(x), cl(x), exact(x.double())
    torch.testing.assert_close(y_cl, y, **TOL)
    for out in (y, y_cl, y_exact):
        out.sum().backward()
    for (name, r), p, q in zip(exact.named_parameters(), nchw.parameters(), cl.parameters()):
        scale = max(r.grad.abs().max().item(), 1.0)  # sums over a whole network: relative
        for layout, g, tol in (("nchw", p.grad, 1e-5), ("channels last", q.grad, 3e-5)):
            assert (g.double() - r.grad).abs().max().item() <= tol * scale, (layout, name)
