"""The attention math of lesa/: every strategy against an explicit reference written here.

The reference builds the L x L logits directly from the module's own weights,

    s_ij = q_i . k_j / sqrt(d) + q_i . rel_h[m - 1 + y_j - y_i] + q_i . rel_w[m - 1 + x_j - x_i]

(m = max_map_size; table row m - 1 + o holds offset o), takes a plain softmax and a weighted
sum, and never goes through BinaryTerm.attend, the SDPA operands or SDPA. The q/k/v projection
and the head merge are re-done here with F.conv2d / F.batch_norm too, so the channel layout
documented in binary.py (q | k | v along channels, channel = head * dim + d inside each) is
checked as well.

All comparisons are in eval mode (BatchNorm uses running statistics, randomised so that it is
not the identity) and in float32 to 1e-5, unless a test says otherwise. Sizes are tiny on
purpose: the test machine has 2 shared CPU cores.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lesa
from lesa import FUSIONS, BinaryTerm, LESA2d, RelativePosition2d
from lesa.fusion import build as build_fusion

TOL = dict(rtol=1e-5, atol=1e-5)
C, HEADS, MAX = 32, 4, 8  # q/k dim 4, v dim 8 per head
ATTENTION = [name for name in FUSIONS if name not in ("conv", "unary")]


# ---------------------------------------------------------------- helpers

def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine weights and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                if m.affine:  # dynamic_frozen's gate BN has no affine weights
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.3 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return module


def make(fusion: str, seed: int = 0, channels: int = C, heads: int = HEADS, **kw) -> LESA2d:
    torch.manual_seed(seed)
    return randomize_bn(LESA2d(channels, heads=heads, fusion=fusion, max_map_size=MAX, **kw),
                        seed).eval()


def bn_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                        bn.eps)


def ref_project(binary: BinaryTerm, x: torch.Tensor):
    """q, k (B, heads, L, d) and v (B, heads, L, dv) from the raw 1x1 conv + BN weights."""
    b, c, height, width = x.shape
    heads, d, dv = binary.heads, c // (2 * binary.heads), c // binary.heads
    y = bn_eval(F.conv2d(x, binary.qkv.weight), binary.qkv_bn).flatten(2)  # (B, 2C, L)
    q = y[:, : c // 2].reshape(b, heads, d, -1).transpose(-1, -2)
    k = y[:, c // 2 : c].reshape(b, heads, d, -1).transpose(-1, -2)
    v = y[:, c:].reshape(b, heads, dv, -1).transpose(-1, -2)
    return q, k, v


def ref_merge(binary: BinaryTerm, heads_out: torch.Tensor, height: int, width: int):
    """(B, heads, L, dv) -> channel head * dv + d, then the output BN."""
    b, heads, length, dv = heads_out.shape
    y = heads_out.transpose(-1, -2).reshape(b, heads * dv, height, width)
    return bn_eval(y, binary.out_bn)


def offsets(height: int, width: int):
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    return ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]  # [i, j] = y_j - y_i, x_j - x_i


def ref_logits(rel: RelativePosition2d, q, k, height: int, width: int):
    """Explicit s_ij (B, heads, L, L) by indexing the relative tables."""
    d = q.shape[-1]
    m = rel.max_map_size
    dy, dx = offsets(height, width)
    r_h = rel.rel_h[m - 1 + dy]  # (L, L, d): r_h[i, j] = rel_h[row of offset y_j - y_i]
    r_w = rel.rel_w[m - 1 + dx]
    content = q @ k.transpose(-1, -2) / math.sqrt(d)
    return (content + torch.einsum("bhid,ijd->bhij", q, r_h)
            + torch.einsum("bhid,ijd->bhij", q, r_w))


def ref_softmax(logits: torch.Tensor, mask_diagonal: bool = False) -> torch.Tensor:
    if mask_diagonal:
        logits = logits.clone()
        logits.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    return logits.softmax(-1)


def ref_attention(binary: BinaryTerm, x: torch.Tensor, mask_diagonal: bool = False):
    """Returns the merged output (B, C, H, W), the weights a (B, heads, L, L) and q, k, v."""
    height, width = x.shape[-2:]
    q, k, v = ref_project(binary, x)
    a = ref_softmax(ref_logits(binary.rel, q, k, height, width), mask_diagonal)
    return ref_merge(binary, a @ v, height, width), a, (q, k, v)


def heads_to_map(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, heads, L, dv) -> (B, heads * dv, H, W) with channel = head * dv + d."""
    b, heads, length, dv = t.shape
    return t.transpose(-1, -2).reshape(b, heads * dv, height, width)


SIZES = [(1, 4, 4), (1, 5, 7), (2, 7, 5), (2, 1, 6)]


# ---------------------------------------------------------------- the reference itself

def test_reference_logits_match_a_plain_loop():
    """Guard the reference: the indexed-table logits equal a double loop over (i, j)."""
    torch.manual_seed(0)
    rel = RelativePosition2d(3, max_map_size=5)
    height, width = 3, 4
    q, k = torch.randn(1, 1, 12, 3), torch.randn(1, 1, 12, 3)
    s = ref_logits(rel, q, k, height, width)
    for i in range(12):
        yi, xi = divmod(i, width)
        for j in range(12):
            yj, xj = divmod(j, width)
            expected = (q[0, 0, i] @ k[0, 0, j] / math.sqrt(3)
                        + q[0, 0, i] @ rel.rel_h[4 + yj - yi]
                        + q[0, 0, i] @ rel.rel_w[4 + xj - xi])
            torch.testing.assert_close(s[0, 0, i, j], expected, **TOL)


def test_project_and_merge_follow_the_documented_channel_layout():
    binary = make("sa").fusion.binary
    x = torch.randn(2, C, 3, 5)
    for got, want in zip(binary.project(x), ref_project(binary, x)):
        torch.testing.assert_close(got, want, **TOL)
    out = torch.randn(2, HEADS, 15, C // HEADS)
    torch.testing.assert_close(binary.merge(out, 3, 5), ref_merge(binary, out, 3, 5), **TOL)


def test_unary_term_is_bn_of_pointwise_of_grouped_3x3():
    unary = make("unary").fusion.unary
    x = torch.randn(1, C, 5, 6)
    w = unary.local.weight
    assert w.shape == (C, C // HEADS, 3, 3)  # groups = heads
    want = bn_eval(F.conv2d(F.conv2d(x, w, padding=1, groups=HEADS), unary.mix.weight), unary.bn)
    torch.testing.assert_close(unary(x), want, **TOL)


# ---------------------------------------------------------------- 1. sa

@pytest.mark.parametrize("record", [True, False], ids=["report-path", "keep-path"])
@pytest.mark.parametrize("b,h,w", SIZES)
def test_sa_equals_reference_attention(b, h, w, record):
    module = make("sa", seed=h * 10 + w)
    module.fusion.record_shares = record  # True goes through attend("report"), False "keep"
    x = torch.randn(b, C, h, w)
    want, _, _ = ref_attention(module.fusion.binary, x)
    torch.testing.assert_close(module(x), want, **TOL)


def test_sa_output_depends_on_the_relative_tables():
    """Non-vacuity: the output changes with the tables, and still matches the reference."""
    module = make("sa", seed=3)
    x = torch.randn(1, C, 4, 5)
    before = module(x)
    with torch.no_grad():
        module.fusion.binary.rel.rel_w.add_(0.5 * torch.randn_like(module.fusion.binary.rel.rel_w))
    after = module(x)
    assert (before - after).abs().max() > 1e-3
    torch.testing.assert_close(after, ref_attention(module.fusion.binary, x)[0], **TOL)


# ---------------------------------------------------------------- 2. binary, softmax, dynamic

@pytest.mark.parametrize("b,h,w", SIZES)
def test_binary_equals_reference_with_masked_diagonal(b, h, w):
    module = make("binary", seed=h + w)
    x = torch.randn(b, C, h, w)
    want, a, _ = ref_attention(module.fusion.binary, x, mask_diagonal=True)
    assert torch.all(a.diagonal(dim1=-2, dim2=-1) == 0)
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]), **TOL)
    got = module(x)
    torch.testing.assert_close(got, want, **TOL)
    # and it really differs from plain attention
    assert (got - ref_attention(module.fusion.binary, x)[0]).abs().max() > 1e-3


def test_softmax_equals_reference_formula():
    """softmax: a_ii U_i + sum_{j != i} a_ij v_j, with U the module's own unary term."""
    module = make("softmax", seed=5)
    x = torch.randn(2, C, 5, 4)
    fusion = module.fusion
    _, a, (q, k, v) = ref_attention(fusion.binary, x)
    u = fusion.unary(x).flatten(2).reshape(2, HEADS, C // HEADS, -1).transpose(-1, -2)
    eye = torch.eye(20, dtype=torch.bool)
    off_diagonal = a.masked_fill(eye, 0.0)
    out = off_diagonal @ v + a.diagonal(dim1=-2, dim2=-1).unsqueeze(-1) * u
    torch.testing.assert_close(module(x), ref_merge(fusion.binary, out, 5, 4), **TOL)


def test_softmax_with_unary_replaced_by_v_equals_sa(monkeypatch):
    soft = make("softmax", seed=6)
    sa = make("sa", seed=99)
    missing, unexpected = sa.load_state_dict(soft.state_dict(), strict=False)
    assert not missing and all(key.startswith("fusion.unary.") for key in unexpected)
    binary = soft.fusion.binary
    monkeypatch.setattr(soft.fusion.unary, "forward",
                        lambda x: heads_to_map(binary.project(x)[2], *x.shape[-2:]))
    x = torch.randn(1, C, 6, 5)
    torch.testing.assert_close(soft(x), sa(x), **TOL)
    torch.testing.assert_close(sa(x), ref_attention(sa.fusion.binary, x)[0], **TOL)


def test_dynamic_with_gate_forced_to_one_equals_sum(monkeypatch):
    dyn = make("dynamic", seed=7)
    total = make("sum", seed=70)
    missing, unexpected = total.load_state_dict(dyn.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("fusion.gate.") for k in unexpected)
    monkeypatch.setattr(dyn.fusion.gate, "forward", lambda z: torch.ones_like(z[:, :C]))
    x = torch.randn(2, C, 4, 6)
    torch.testing.assert_close(dyn(x), total(x), **TOL)
    # sum itself is U + B with B the reference attention (diagonal kept)
    want = total.fusion.unary(x) + ref_attention(total.fusion.binary, x)[0]
    torch.testing.assert_close(total(x), want, **TOL)


def test_dynamic_is_u_plus_omega_b_with_a_real_gate():
    dyn = make("dynamic", seed=8)
    x = torch.randn(1, C, 5, 5)
    seen = {}
    # the gate's first ReLU works in place on its input: keep a copy of what came in
    dyn.fusion.gate.register_forward_pre_hook(lambda m, i: seen.update(z=i[0].clone()))
    dyn.fusion.gate.register_forward_hook(lambda m, i, o: seen.update(omega=o))
    y = dyn(x)
    u = dyn.fusion.unary(x)
    b = ref_attention(dyn.fusion.binary, x)[0]
    torch.testing.assert_close(seen["z"], torch.cat([u, b], 1), **TOL)
    omega = seen["omega"]
    assert omega.shape == (1, C, 5, 5)  # per channel and per position
    assert omega.std() > 1e-3
    torch.testing.assert_close(y, u + omega * b, **TOL)


# ---------------------------------------------------------------- 3. the reported a_ii

@pytest.mark.parametrize("b,h,w", SIZES)
def test_report_diagonal_equals_reference_softmax_diagonal(b, h, w):
    binary = make("sa", seed=11 + h).fusion.binary
    x = torch.randn(b, C, h, w)
    q, k, v = binary.project(x)
    out_report, a_ii = binary.attend(q, k, v, h, w, diagonal="report")
    out_keep, none = binary.attend(q, k, v, h, w, diagonal="keep")
    assert none is None
    a = ref_softmax(ref_logits(binary.rel, q, k, h, w))
    assert a_ii.shape == (b, HEADS, h * w)
    torch.testing.assert_close(a_ii, a.diagonal(dim1=-2, dim2=-1), **TOL)
    torch.testing.assert_close(out_report, a @ v, **TOL)
    torch.testing.assert_close(out_keep, a @ v, **TOL)


def test_report_diagonal_when_attention_is_peaked_on_self():
    """a_ii close to 1 (the sink carries about half the mass): still exact."""
    binary = make("sa", seed=12).fusion.binary
    h, w = 3, 3
    q = torch.randn(1, HEADS, 9, C // (2 * HEADS))
    k = q * 6.0  # large q_i . k_i
    v = torch.randn(1, HEADS, 9, C // HEADS)
    _, a_ii = binary.attend(q, k, v, h, w, diagonal="report")
    want = ref_softmax(ref_logits(binary.rel, q, k, h, w)).diagonal(dim1=-2, dim2=-1)
    assert want.max() > 0.9
    torch.testing.assert_close(a_ii, want, **TOL)


def test_attend_rejects_unknown_diagonal_mode():
    binary = make("sa").fusion.binary
    q, k, v = binary.project(torch.randn(1, C, 2, 2))
    with pytest.raises(ValueError, match="keep, mask or report"):
        binary.attend(q, k, v, 2, 2, diagonal="drop")


def test_sa_share_is_the_reference_mean_diagonal():
    """The share a single sa module reports: 100 * mean a_ii of the explicit softmax."""
    module = make("sa", seed=21)
    x = torch.randn(2, C, 5, 6)
    module(x)
    _, a, _ = ref_attention(module.fusion.binary, x)
    want = 100 * a.diagonal(dim1=-2, dim2=-1).mean().item()
    assert 0 < want < 100
    assert module.fusion.last_unary_share == pytest.approx(want, rel=1e-5, abs=1e-5)
    report = lesa.shares(module)
    assert report["unary"] == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert report["binary"] == pytest.approx(100 - want, rel=1e-5, abs=1e-5)


def test_binary_on_a_single_position_has_an_empty_context():
    """1x1 map: nothing is left after masking j = i; the empty sum is 0 (finite, not NaN)."""
    module = make("binary", seed=13)
    x = torch.randn(2, C, 1, 1, requires_grad=True)
    y = module(x)
    empty = torch.zeros(2, HEADS, 1, C // HEADS)
    torch.testing.assert_close(y, ref_merge(module.fusion.binary, empty, 1, 1), **TOL)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- 4. gradients

@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_reach_every_parameter(fusion, stride):
    torch.manual_seed(0)
    module = LESA2d(C, heads=HEADS, fusion=fusion, stride=stride, max_map_size=MAX).train()
    x = torch.randn(2, C, 4, 6, requires_grad=True)
    y = module(x)
    # a random readout: a plain sum would give zero gradients behind a train-mode BatchNorm
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    names = [name for name, _ in module.named_parameters()]
    assert names, fusion
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{fusion}: no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"{fusion}: non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"{fusion}: zero gradient for {name}"


# ---------------------------------------------------------------- 5. gradcheck

@pytest.mark.parametrize("diagonal", ["keep", "mask", "report"])
@pytest.mark.parametrize("heads", [1, 2])
def test_attend_gradcheck_float64(diagonal, heads):
    torch.manual_seed(1)
    channels, height, width = 4 * heads, 3, 4
    binary = BinaryTerm(channels, heads, max_map_size=4).double()
    d, dv, length = binary.qk_dim, binary.v_dim, height * width
    q = torch.randn(1, heads, length, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, heads, length, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, heads, length, dv, dtype=torch.float64, requires_grad=True)
    rel_h = binary.rel.rel_h.detach().clone().requires_grad_(True)
    rel_w = binary.rel.rel_w.detach().clone().requires_grad_(True)

    class Attend(nn.Module):  # functional_call runs forward; attend is a method
        def __init__(self):
            super().__init__()
            self.binary = binary

        def forward(self, q, k, v):
            return self.binary.attend(q, k, v, height, width, diagonal=diagonal)

    wrapper = Attend()

    def call(q, k, v, rel_h, rel_w):
        tables = {"binary.rel.rel_h": rel_h, "binary.rel.rel_w": rel_w}
        return torch.func.functional_call(wrapper, tables, (q, k, v))

    def f(q, k, v, rel_h, rel_w):
        out, a_ii = call(q, k, v, rel_h, rel_w)
        return (out, a_ii) if a_ii is not None else out

    assert torch.autograd.gradcheck(f, (q, k, v, rel_h, rel_w), eps=1e-6, atol=1e-6)
    # the double-precision module also agrees with the reference
    out, a_ii = call(q, k, v, rel_h, rel_w)
    a = ref_softmax(ref_logits(binary.rel, q, k, height, width), diagonal == "mask")
    torch.testing.assert_close(out, a @ v, rtol=1e-10, atol=1e-10)
    if diagonal == "report":
        torch.testing.assert_close(a_ii, a.diagonal(dim1=-2, dim2=-1), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- 6. relative positions

def relative_logits(rel: RelativePosition2d, q: torch.Tensor, height: int, width: int):
    """(L, L) relative part of the logits for one head: by_row[i, y_j] + by_col[i, x_j]."""
    by_row, by_col = rel(q, height, width)
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    return by_row[0, 0][:, ys] + by_col[0, 0][:, xs]


def test_relative_logits_depend_only_on_the_offset():
    torch.manual_seed(2)
    d, height, width = 4, 5, 6
    rel = RelativePosition2d(d, max_map_size=MAX)
    length = height * width
    shared = torch.randn(d)
    checked = 0
    for dy, dx in [(1, 0), (0, 2), (2, 3), (1, -1), (-2, 1)]:
        for i in range(length):
            yi, xi = divmod(i, width)
            yi2, xi2 = yi + dy, xi + dx
            if not (0 <= yi2 < height and 0 <= xi2 < width):
                continue
            i2 = yi2 * width + xi2
            q = torch.randn(1, 1, length, d)  # other positions: anything
            q[0, 0, i] = shared
            q[0, 0, i2] = shared  # the same q vector at i and i + shift
            s = relative_logits(rel, q, height, width)
            for j in range(length):
                yj, xj = divmod(j, width)
                yj2, xj2 = yj + dy, xj + dx
                if not (0 <= yj2 < height and 0 <= xj2 < width):
                    continue
                j2 = yj2 * width + xj2
                torch.testing.assert_close(s[i, j], s[i2, j2], **TOL)
                checked += 1
    assert checked > 100


def test_relative_logits_index_the_tables_by_offset():
    torch.manual_seed(3)
    d, height, width = 3, 4, 7
    rel = RelativePosition2d(d, max_map_size=MAX)
    q = torch.randn(1, 1, height * width, d)
    dy, dx = offsets(height, width)
    want = (q[0, 0] @ rel.rel_h.t()).gather(1, MAX - 1 + dy) \
        + (q[0, 0] @ rel.rel_w.t()).gather(1, MAX - 1 + dx)
    torch.testing.assert_close(relative_logits(rel, q, height, width), want, **TOL)
    # non-vacuity: with one q everywhere, different offsets still give different logits
    s = relative_logits(rel, q[:, :, :1].expand(1, 1, height * width, d), height, width)
    assert s[0].std() > 1e-3


def test_relative_logits_do_not_depend_on_the_map_size():
    """The same offset gives the same logit on a 3x4 and on a 6x8 map (central table slice)."""
    torch.manual_seed(4)
    rel = RelativePosition2d(4, max_map_size=MAX)
    qv = torch.randn(4)
    small = relative_logits(rel, qv.expand(1, 1, 12, 4), 3, 4)
    large = relative_logits(rel, qv.expand(1, 1, 48, 4), 6, 8)
    # query (1, 2) and key (2, 0) on the small map; the same offset from query (4, 5) on the large
    torch.testing.assert_close(small[1 * 4 + 2, 2 * 4 + 0], large[4 * 8 + 5, 5 * 8 + 3], **TOL)
    torch.testing.assert_close(small[0, 11], large[0, 2 * 8 + 3], **TOL)


# ---------------------------------------------------------------- 7. shapes and errors

@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("stride", [1, 2])
def test_shapes_any_size_batch_one(fusion, stride):
    torch.manual_seed(0)
    module = LESA2d(16, heads=2, fusion=fusion, stride=stride, max_map_size=MAX).train()
    for h, w in [(4, 8), (6, 2), (8, 8)]:  # sizes are not fixed at construction
        y = module(torch.randn(1, 16, h, w))
        assert y.shape == (1, 16, h // stride, w // stride), (fusion, stride, h, w)
        assert torch.isfinite(y).all()
    module.eval()
    assert module(torch.randn(2, 16, 2, 6)).shape == (2, 16, 2 // stride, 6 // stride)


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f != "conv"])
def test_stride_two_on_odd_maps_matches_conv_and_downsample(fusion):
    """A strided block's 3x3 conv (and its 1x1 stride-2 shortcut) give ceil(H / 2); a strategy
    that gives anything else cannot be added to the shortcut in a ResNet bottleneck."""
    torch.manual_seed(0)
    conv = LESA2d(16, heads=2, fusion="conv", stride=2)
    module = LESA2d(16, heads=2, fusion=fusion, stride=2, max_map_size=MAX).eval()
    shortcut = nn.Conv2d(16, 16, 1, stride=2)
    x = torch.randn(1, 16, 5, 7)
    assert conv(x).shape == shortcut(x).shape == (1, 16, 3, 4)
    assert module(x).shape == conv(x).shape


@pytest.mark.parametrize("fusion", ATTENTION)
def test_map_larger_than_max_map_size_raises(fusion):
    module = LESA2d(16, heads=2, fusion=fusion, max_map_size=4)
    module(torch.randn(1, 16, 4, 4))  # the limit itself is fine
    with pytest.raises(ValueError, match=r"5x3.*max_map_size"):
        module(torch.randn(1, 16, 5, 3))
    with pytest.raises(ValueError, match="max_map_size"):
        module(torch.randn(1, 16, 2, 6))


def test_unknown_fusion_suggests_the_closest_name():
    with pytest.raises(ValueError, match=r"did you mean 'dynamic'"):
        LESA2d(16, fusion="dynamik")
    with pytest.raises(ValueError, match=r"did you mean 'softmax'"):
        LESA2d(16, fusion="sofmax")
    with pytest.raises(ValueError, match="choose from"):
        LESA2d(16, fusion="zzzzzz")


def test_channels_must_split_into_heads():
    with pytest.raises(ValueError, match="divisible"):
        LESA2d(24, heads=8, fusion="sa")


def test_registry_contract():
    """Every registered strategy builds from the factory, which passes each constructor the
    options it takes."""
    assert set(FUSIONS) >= {"conv", "sa", "binary", "unary", "softmax", "sum", "dynamic"}
    for name, cls in FUSIONS.items():
        assert cls.name == name and issubclass(cls, lesa.Fusion)
        module = build_fusion(name, 16, heads=2, stride=1, dilation=1, max_map_size=4,
                              window=None)
        assert isinstance(module, nn.Module)
