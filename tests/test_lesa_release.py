"""The released code's choices as options, against explicit reference math written here.

The reference builds every logit term as an L x L tensor by indexing the module's own tables at
offsets computed with Python loops, normalises the terms with BatchNorm written out (batch mean
and biased variance over (batch, i, j) per term and head in training, running statistics in
evaluation) or scales q.k by 1/sqrt(d), takes a plain softmax, and merges the heads through the
output BatchNorm (over 2C channels, halves summed, with the raster value term). It never calls
BinaryTerm.attend, the kernels, LogitNorm or RasterPosition's methods. Everything in float64,
forward and gradients (of the input and of every parameter), training and evaluation, on
non-square maps. Sizes are tiny: the test machine has 2 shared CPU cores.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lesa import LESA2d, build_backbone

C, HEADS, MAX = 16, 2, 5  # q/k dim 4, v dim 8 per head; raster tables reach 25 positions
TOL = dict(rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- reference

def bn(x: torch.Tensor, module: nn.BatchNorm2d, training: bool) -> torch.Tensor:
    """BatchNorm over channel axis 1 written out."""
    axes = [a for a in range(x.dim()) if a != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    if training:
        mean = x.mean(axes, keepdim=True)
        var = ((x - mean) ** 2).mean(axes, keepdim=True)
    else:
        mean, var = module.running_mean.view(shape), module.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight.view(shape) \
        + module.bias.view(shape)


def project(binary, x, training):
    b, c, h, w = x.shape
    y = bn(F.conv2d(x, binary.qkv.weight), binary.qkv_bn, training).flatten(2)
    d, dv = c // (2 * HEADS), c // HEADS
    q = y[:, : c // 2].reshape(b, HEADS, d, -1).transpose(-1, -2)
    k = y[:, c // 2 : c].reshape(b, HEADS, d, -1).transpose(-1, -2)
    v = y[:, c:].reshape(b, HEADS, dv, -1).transpose(-1, -2)
    return q, k, v


def offsets(h: int, w: int):
    """(L, L) integer tensors over (query i, key j): y_j - y_i, x_j - x_i and j - i (raster)."""
    n = h * w
    dy, dx, dr = (torch.zeros(n, n, dtype=torch.long) for _ in range(3))
    for i in range(n):
        for j in range(n):
            dy[i, j] = j // w - i // w
            dx[i, j] = j % w - i % w
            dr[i, j] = j - i
    return dy, dx, dr


def logit_terms(binary, q, k, h, w):
    dy, dx, dr = offsets(h, w)
    terms = [torch.einsum("bhic,bhjc->bhij", q, k)]
    if binary.positions == "relative2d":
        m = binary.rel.max_map_size
        r = binary.rel.rel_h[m - 1 + dy] + binary.rel.rel_w[m - 1 + dx]  # (L, L, d)
        terms.append(torch.einsum("bhic,ijc->bhij", q, r))
    else:
        table, d = binary.raster.relative, q.shape[-1]
        big = MAX * MAX
        r_q = table[:d, big - 1 - dr]          # column of offset i - j
        r_k = table[d : 2 * d, big - 1 + dr]   # column of offset j - i
        terms.append(torch.einsum("bhic,cij->bhij", q, r_q))
        terms.append(torch.einsum("bhjc,cij->bhij", k, r_k))
    return terms


def reference(module: LESA2d, x: torch.Tensor, training: bool, mask: bool = False):
    """Output of an `sa` (or, mask=True, `binary`) module, and a, v, the value term."""
    binary = module.fusion.binary
    h, w = x.shape[-2:]
    q, k, v = project(binary, x, training)
    terms = logit_terms(binary, q, k, h, w)
    if binary.logits == "batchnorm":
        stacked = bn(torch.cat(terms, 1), binary.logit_norm, training)
        logits = sum(stacked.split(HEADS, 1))
    else:
        logits = terms[0] / math.sqrt(q.shape[-1]) + sum(terms[1:])
    if mask:
        logits = logits.masked_fill(torch.eye(h * w, dtype=torch.bool), float("-inf"))
    a = logits.softmax(-1)
    out = a @ v
    b = x.shape[0]
    heads_out = out.transpose(-1, -2).reshape(b, C, h, w)
    value = None
    if binary.positions == "raster":
        _, _, dr = offsets(h, w)
        r_v = binary.raster.relative[2 * q.shape[-1]:, MAX * MAX - 1 - dr]  # (dv, L, L)
        value = torch.einsum("bhij,cij->bhic", a, r_v)
        value_map = value.transpose(-1, -2).reshape(b, C, h, w)
        y = bn(torch.cat([heads_out, value_map], 1), binary.out_bn, training)
        return y[:, :C] + y[:, C:], a, v, value
    return bn(heads_out, binary.out_bn, training), a, v, value


# ---------------------------------------------------------------- helpers

def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(n, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(0.3 * torch.randn(n, generator=g, dtype=m.bias.dtype))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g, dtype=m.bias.dtype))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g, dtype=m.bias.dtype))
    return module


def make(fusion="sa", seed=0, **options) -> LESA2d:
    torch.manual_seed(seed)
    return randomize(LESA2d(C, heads=HEADS, fusion=fusion, max_map_size=MAX, **options),
                     seed).double()


def check_against(module, x, want_fn, training):
    """Forward and gradients (input and every parameter) of module(x) against want_fn(x)."""
    module.train(training)
    params = [p for p in module.parameters()]
    x = x.clone().requires_grad_(True)
    want = want_fn(x)
    readout = torch.randn_like(want)
    want_grads = torch.autograd.grad((want * readout).sum(), [x, *params], allow_unused=True)
    got = module(x)
    got_grads = torch.autograd.grad((got * readout).sum(), [x, *params], allow_unused=True)
    torch.testing.assert_close(got, want, **TOL)
    names = ["x"] + [n for n, _ in module.named_parameters()]
    for name, g, r in zip(names, got_grads, want_grads):
        assert (g is None) == (r is None), name
        if g is not None:
            torch.testing.assert_close(g, r, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    return got


OPTIONS = [("scaled", "relative2d"), ("batchnorm", "relative2d"), ("scaled", "raster"),
           ("batchnorm", "raster")]
SIZES = [(2, 3, 5), (3, 4, 2)]


# ---------------------------------------------------------------- the binary term's options

@pytest.mark.parametrize("kernel", ["auto", "sdpa", "explicit"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("b,h,w", SIZES)
@pytest.mark.parametrize("logits,positions", OPTIONS)
def test_sa_options_equal_reference(logits, positions, b, h, w, training, kernel):
    module = make("sa", seed=h * 7 + w, logits=logits, positions=positions)
    module.fusion.binary.kernel = kernel
    x = torch.randn(b, C, h, w, dtype=torch.float64)
    check_against(module, x, lambda x: reference(module, x, training)[0], training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kernel", ["auto", "sdpa"])
@pytest.mark.parametrize("logits,positions", OPTIONS)
def test_binary_strategy_masks_the_diagonal_with_every_option(logits, positions, kernel,
                                                              training):
    module = make("binary", seed=3, logits=logits, positions=positions)
    module.fusion.binary.kernel = kernel
    x = torch.randn(2, C, 3, 4, dtype=torch.float64)
    check_against(module, x, lambda x: reference(module, x, training, mask=True)[0], training)


@pytest.mark.parametrize("kernel", ["auto", "sdpa"])
@pytest.mark.parametrize("logits,positions", OPTIONS)
def test_sa_share_is_the_reference_diagonal_with_every_option(logits, positions, kernel):
    module = make("sa", seed=5, logits=logits, positions=positions).eval()
    module.fusion.binary.kernel = kernel
    x = torch.randn(2, C, 4, 3, dtype=torch.float64)
    module(x)
    _, a, _, _ = reference(module, x, False)
    want = 100 * a.diagonal(dim1=-2, dim2=-1).mean().item()
    assert module.fusion.last_unary_share == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("logits,positions", OPTIONS)
def test_softmax_strategy_with_every_option(logits, positions, training):
    """a_ii U_i + sum_{j != i} a_ij v_j; the raster value term keeps every j."""
    module = make("softmax", seed=6, logits=logits, positions=positions)
    fusion = module.fusion

    def want(x):
        binary = fusion.binary
        h, w = x.shape[-2:]
        _, a, v, value = reference(module, x, training)
        u = bn(F.conv2d(F.conv2d(x, fusion.unary.local.weight, padding=1, groups=HEADS),
                        fusion.unary.mix.weight), fusion.unary.bn, training)
        u = u.flatten(2).reshape(x.shape[0], HEADS, C // HEADS, -1).transpose(-1, -2)
        eye = torch.eye(h * w, dtype=torch.bool)
        out = a.masked_fill(eye, 0.0) @ v + a.diagonal(dim1=-2, dim2=-1).unsqueeze(-1) * u
        out_map = out.transpose(-1, -2).reshape(x.shape[0], C, h, w)
        if value is None:
            return bn(out_map, binary.out_bn, training)
        value_map = value.transpose(-1, -2).reshape(x.shape[0], C, h, w)
        y = bn(torch.cat([out_map, value_map], 1), binary.out_bn, training)
        return y[:, :C] + y[:, C:]

    check_against(module, torch.randn(2, C, 3, 4, dtype=torch.float64), want, training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_dynamic_release_block_is_u_plus_omega_b(training):
    module = make("dynamic", seed=8, logits="batchnorm", positions="raster")
    fusion = module.fusion
    seen = {}
    fusion.gate.register_forward_hook(lambda m, i, o: seen.update(omega=o))

    def want(x):
        u = bn(F.conv2d(F.conv2d(x, fusion.unary.local.weight, padding=1, groups=HEADS),
                        fusion.unary.mix.weight), fusion.unary.bn, training)
        b = reference(module, x, training)[0]
        z = F.relu(torch.cat([u, b], 1))
        z = F.relu(bn(F.conv2d(z, fusion.gate[1].weight), fusion.gate[2], training))
        omega = torch.sigmoid(bn(F.conv2d(z, fusion.gate[4].weight), fusion.gate[5], training))
        return u + omega * b

    check_against(module, torch.randn(2, C, 4, 3, dtype=torch.float64), want, training)
    assert seen["omega"].std() > 1e-3


def test_float32_inference_paths_equal_reference():
    """Evaluation without autograd: the fused CPU kernel (where built) or the chunked path,
    with the logit BatchNorm's per-head weights."""
    torch.manual_seed(0)
    module = randomize(LESA2d(C, heads=HEADS, fusion="sa", max_map_size=MAX,
                              logits="batchnorm")).eval()
    x = torch.randn(2, C, 4, 3)
    with torch.no_grad():
        got = module(x)
        want = reference(module, x, False)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("positions", ["relative2d", "raster"])
def test_logit_norm_running_statistics_follow_batchnorm(positions, momentum):
    """Running mean and (unbiased) variance per term and head, as BatchNorm2d keeps them."""
    module = make("sa", seed=9, logits="batchnorm", positions=positions).train()
    norm = module.fusion.binary.logit_norm
    norm.momentum = momentum
    before_mean, before_var = norm.running_mean.clone(), norm.running_var.clone()
    tracked = int(norm.num_batches_tracked)
    x = torch.randn(2, C, 3, 4, dtype=torch.float64)
    q, k, _ = project(module.fusion.binary, x, True)
    stacked = torch.cat(logit_terms(module.fusion.binary, q, k, 3, 4), 1).detach()
    n = stacked.shape[0] * stacked.shape[2] * stacked.shape[3]
    mean = stacked.mean((0, 2, 3))
    var = ((stacked - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3)) / (n - 1)
    factor = 0.1 if momentum is not None else 1 / (tracked + 1)
    module(x)
    assert int(norm.num_batches_tracked) == tracked + 1
    torch.testing.assert_close(norm.running_mean, (1 - factor) * before_mean + factor * mean,
                               **TOL)
    torch.testing.assert_close(norm.running_var, (1 - factor) * before_var + factor * var,
                               rtol=1e-9, atol=1e-9)


def test_logit_norm_set_to_one_over_sqrt_d_equals_the_scaled_default():
    """Eval-mode logit BatchNorm with gamma_qk = sqrt(var + eps) / sqrt(d), gamma_rel =
    sqrt(var + eps) and any beta and running mean is the default's scaling."""
    scaled = make("sa", seed=10)
    normed = make("sa", seed=11, logits="batchnorm")
    normed.load_state_dict(scaled.state_dict(), strict=False)
    norm = normed.fusion.binary.logit_norm
    with torch.no_grad():
        scale = torch.sqrt(norm.running_var + norm.eps)
        norm.weight.copy_(scale * torch.tensor([0.5] * HEADS + [1.0] * HEADS,
                                               dtype=scale.dtype))  # 1/sqrt(4) for q.k
    scaled.eval(), normed.eval()
    x = torch.randn(1, C, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(normed(x), scaled(x), **TOL)


# ---------------------------------------------------------------- reach and paths

def test_raster_reach_is_in_positions_and_non_square_maps_work():
    module = make("sa", positions="raster").eval()
    module(torch.randn(1, C, 2, 12, dtype=torch.float64))  # 24 <= MAX^2 positions, 12 > MAX
    module(torch.randn(1, C, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"26 positions.*max_map_size"):
        module(torch.randn(1, C, 2, 13, dtype=torch.float64))


def test_paths_that_cannot_express_an_option_say_why():
    raster = make("sa", positions="raster").fusion.binary
    q = torch.zeros(1, HEADS, 6, 4, dtype=torch.float64)
    assert raster.compute_path(q).startswith("explicit (raster positions")
    raster.kernel = "sdpa"
    assert raster.compute_path(q).startswith("explicit (raster")  # sdpa cannot: still explicit
    normed = make("sa", logits="batchnorm").fusion.binary
    assert normed.reference_reason is None
    normed.kernel = "sdpa"
    assert normed.compute_path(q) == "sdpa"
    normed.kernel = "chunked"
    assert normed.compute_path(q) == "chunked"


def test_windowed_term_refuses_the_release_options():
    with pytest.raises(ValueError, match="windowed"):
        LESA2d(C, heads=HEADS, window=2, max_map_size=MAX, logits="batchnorm")
    with pytest.raises(ValueError, match="positions"):
        LESA2d(C, heads=HEADS, positions="rastr")


# ---------------------------------------------------------------- deformable 3x3

def bilinear(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) read at real positions py, px (B, ...) with zeros outside: (B, C, ...)."""
    b, c, h, w = x.shape
    y0, x0 = torch.floor(py).long(), torch.floor(px).long()
    out = 0
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            weight = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            flat = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).flatten(1)
            read = x.flatten(2).gather(2, flat.unsqueeze(1).expand(b, c, -1))
            out = out + read.view(b, c, *py.shape[1:]) * (weight * inside).unsqueeze(1)
    return out


def deformable_reference(x, weight, offset_weight, offset_bias, stride=1, dilation=1,
                         groups=1):
    """y(p) = sum_k w_k x(p stride - dilation + k dilation + dp_k(p)), dp from a 3x3 conv
    (channels 2k, 2k + 1 = dy, dx of tap k, taps row-major), per group of channels."""
    off = F.conv2d(x, offset_weight, offset_bias, stride, dilation, dilation)
    b, _, ho, wo = off.shape
    base_y = (torch.arange(ho, dtype=x.dtype) * stride - dilation).view(1, -1, 1)
    base_x = (torch.arange(wo, dtype=x.dtype) * stride - dilation).view(1, 1, -1)
    cin = x.shape[1] // groups
    cout = weight.shape[0] // groups
    out = x.new_zeros(b, weight.shape[0], ho, wo)
    for tap in range(9):
        ky, kx = divmod(tap, 3)
        py = base_y + ky * dilation + off[:, 2 * tap]
        px = base_x + kx * dilation + off[:, 2 * tap + 1]
        sampled = bilinear(x, py, px)  # (B, C_in, Ho, Wo)
        for g in range(groups):
            w_tap = weight[g * cout : (g + 1) * cout, :, ky, kx]  # (cout, cin)
            part = sampled[:, g * cin : (g + 1) * cin]
            out[:, g * cout : (g + 1) * cout] += torch.einsum("oc,bchw->bohw", w_tap, part)
    return out


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_deformable_unary_term_equals_reference(training):
    module = make("unary", seed=12, unary="deformable")
    unary = module.fusion.unary
    with torch.no_grad():  # non-zero offsets (they start at zero)
        unary.local.offset_weight.normal_(0, 0.3)
        unary.local.offset_bias.normal_(0, 0.5)

    def want(x):
        local = deformable_reference(x, unary.local.weight, unary.local.offset_weight,
                                     unary.local.offset_bias, groups=HEADS)
        return bn(F.conv2d(local, unary.mix.weight), unary.bn, training)

    check_against(module, torch.randn(2, C, 4, 5, dtype=torch.float64), want, training)


@pytest.mark.parametrize("stride,dilation", [(2, 1), (1, 2)])
def test_deformable_conv_baseline_equals_reference(stride, dilation):
    module = make("conv", seed=13, stride=stride, dilation=dilation, deformable=True)
    conv = module.fusion.conv
    with torch.no_grad():
        conv.offset_weight.normal_(0, 0.3)
        conv.offset_bias.normal_(0, 0.5)

    def want(x):
        return bn(deformable_reference(x, conv.weight, conv.offset_weight, conv.offset_bias,
                                       stride, dilation), module.fusion.bn, True)

    check_against(module, torch.randn(2, C, 5, 6, dtype=torch.float64), want, True)


def test_deformable_starts_as_the_plain_convolution():
    module = make("unary", seed=14, unary="deformable").eval()
    local = module.fusion.unary.local
    assert local.offset_weight.abs().sum() == 0 and local.offset_bias.abs().sum() == 0
    x = torch.randn(1, C, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(local(x), F.conv2d(x, local.weight, padding=1, groups=HEADS),
                               **TOL)


# ---------------------------------------------------------------- the preset

def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_release_preset_has_the_official_parameter_count():
    """LESA-ResNet-50, 1000 classes, the release's map size 14 (the tables' reach)."""
    with torch.device("meta"):
        release = build_backbone("resnet50", "dynamic", 1000, release=True, max_map_size=14)
        default = build_backbone("resnet50", "dynamic", 1000)
    assert n_params(release) == 23_777_512
    tables = sum(p.numel() for name, p in release.named_parameters() if "raster" in name)
    assert tables == 275_264 and n_params(release) - tables == 23_502_248
    assert n_params(default) == 23_540_936


def test_release_presets_select_the_tasks_choices():
    with torch.device("meta"):
        cls = build_backbone("resnet26", "dynamic", 10, release=True, max_map_size=8)
        det = build_backbone("resnet26", "dynamic", release="detection", max_map_size=8)
        mixed = build_backbone("resnet26", "dynamic", release=True, positions="relative2d",
                               max_map_size=8)
    binaries = [m.fusion.binary for m in cls.modules() if isinstance(m, LESA2d)
                and hasattr(m.fusion, "binary")]
    assert binaries and all(b.logits == "batchnorm" and b.positions == "raster"
                            for b in binaries)
    names = [type(m).__name__ for m in cls.modules()]
    assert "DeformableConv3x3" not in names
    blocks = {f"layer{s}": getattr(det, f"layer{s}") for s in range(1, 5)}
    assert not any(type(m).__name__ == "DeformableConv3x3" for m in blocks["layer1"].modules())
    for stage in ("layer2", "layer3", "layer4"):
        for block in blocks[stage]:
            fusion = block.conv2.fusion
            local = fusion.conv if fusion.name == "conv" else fusion.unary.local
            assert type(local).__name__ == "DeformableConv3x3", stage
            if fusion.name != "conv":
                assert fusion.binary.logits == "batchnorm"
                assert fusion.binary.positions == "relative2d"
    assert all(m.fusion.binary.positions == "relative2d" for m in mixed.modules()
               if isinstance(m, LESA2d) and hasattr(m.fusion, "binary"))


def test_release_backbone_trains_a_step():
    torch.manual_seed(0)
    model = build_backbone("resnet_tiny", "dynamic", 3, heads=4, release=True, max_map_size=4,
                           init_seed=1)
    x = torch.randn(2, 3, 16, 16)
    loss = F.cross_entropy(model(x), torch.tensor([0, 2]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_reference_paths_name_the_modules_and_why():
    import lesa

    with torch.device("meta"):
        cls = build_backbone("resnet26", "dynamic", 10, release=True, max_map_size=8)
        det = build_backbone("resnet26", "dynamic", release="detection", max_map_size=8)
    paths = lesa.reference_paths(cls)
    assert len(paths) == 3 and all("raster" in why for why in paths.values())
    assert lesa.reference_paths(det) == {}
