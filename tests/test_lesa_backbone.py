"""The ResNet backbones of lesa/ and the unary/binary share report.

The ImageNet-scale nets (resnet50, resnet26, wrn50) are built on the meta device wherever only
their structure or parameter count is checked, and never run forward except one resnet26 pass at
64x64: the test machine has 2 shared CPU cores. Forward checks use resnet_tiny (32x32) and
resnet_small (128x128).
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

import lesa
from lesa import FUSIONS, LESA2d, build_backbone, record_shares, reset_shares, shares
from lesa.fusion import ConvFusion


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kw) -> lesa.ResNet:
    with torch.device("meta"):
        return build_backbone(name, **kw)


def attention_modules(model: nn.Module) -> dict[str, lesa.Fusion]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, lesa.Fusion) and m.name != "conv"}


# ---------------------------------------------------------------- 8. structure and sizes

def test_resnet50_conv_matches_torchvision_exactly():
    model = build_backbone("resnet50", fusion="conv", num_classes=1000)
    assert n_params(model) == 25_557_032
    assert n_params(model) == n_params(torchvision.models.resnet50())
    assert not attention_modules(model)


def test_wrn50_conv_matches_torchvision_wide_resnet50_2():
    with torch.device("meta"):
        reference = torchvision.models.wide_resnet50_2()
    assert n_params(on_meta("wrn50", fusion="conv", num_classes=1000)) == n_params(reference)


def lesa_module_params(c: int, heads: int = 8, max_map_size: int = 64) -> int:
    """Parameters of one dynamic LESA module on c channels, counted from the design."""
    d = c // (2 * heads)
    qkv = 2 * c * c + 2 * (2 * c)            # 1x1 C -> 2C, BN(2C)
    tables = 2 * (2 * max_map_size - 1) * d      # rel_h, rel_w
    out_bn = 2 * c
    unary = c * (c // heads) * 9 + c * c + 2 * c  # grouped 3x3, 1x1, BN
    gate = 2 * c * c + 2 * c + c * c + 2 * c       # 2C -> C, BN, C -> C, BN
    return qkv + tables + out_bn + unary + gate


@pytest.mark.parametrize("name,conv_count,widths,paper_millions", [
    ("resnet50", 25_557_032, (256, 512), 23.8),
    ("wrn50", 68_883_240, (512, 1024), 61.2),
])
def test_dynamic_parameter_count_follows_the_design(name, conv_count, widths, paper_millions):
    """8 convs (5 in stage 3, 3 in stage 4) swapped for LESA: exact count, and close to the
    reference's analytic estimate (which counts the release's slightly different positions)."""
    model = on_meta(name, fusion="dynamic", num_classes=1000)
    swapped = {widths[0]: 5, widths[1]: 3}
    expected = conv_count + sum(n * (lesa_module_params(c) - (9 * c * c + 2 * c))
                                for c, n in swapped.items())
    assert n_params(model) == expected
    assert n_params(model) < conv_count
    assert abs(n_params(model) / 1e6 - paper_millions) / paper_millions < 0.02


@pytest.mark.parametrize("name,expected", [("resnet50", 8), ("wrn50", 8), ("resnet26", 3)])
def test_lesa_placement(name, expected):
    model = on_meta(name, fusion="dynamic", num_classes=1000)
    found = attention_modules(model)
    assert len(found) == expected
    assert all(m.name == "dynamic" for m in found.values())
    assert all(key.startswith(("layer3.", "layer4.")) for key in found)
    first = model.layer3[0].conv2.fusion
    assert isinstance(first, ConvFusion) and first.name == "conv"
    assert first.conv.stride == (2, 2)  # the first block of stage 3 keeps its strided conv
    for stage in (model.layer1, model.layer2):
        assert all(isinstance(block.conv2.fusion, ConvFusion) for block in stage)
    assert all(m.name == "dynamic" for m in (b.conv2.fusion for b in model.layer4))
    assert all(model.layer3[i].conv2.fusion.name == "dynamic" for i in range(1, len(model.layer3)))


def test_attention_stages_option():
    model = on_meta("resnet50", fusion="sa", attention_stages=(4,))
    assert len(attention_modules(model)) == 3
    model = on_meta("resnet50", fusion="sa", attention_stages=(2, 3, 4))
    assert len(attention_modules(model)) == 4 + 5 + 3


def test_resnet26_forward_logits():
    torch.manual_seed(0)
    model = build_backbone("resnet26", fusion="dynamic", num_classes=10).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 10) and torch.isfinite(y).all()


def test_output_stride_16():
    m32 = on_meta("resnet50", fusion="dynamic")
    m16 = on_meta("resnet50", fusion="dynamic", output_stride=16)
    assert m32.feature_strides == [4, 8, 16, 32]
    assert m16.feature_strides == [4, 8, 16, 16]
    assert m16.feature_channels == m32.feature_channels == [256, 512, 1024, 2048]
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet_tiny", output_stride=8)

    torch.manual_seed(0)
    x = torch.randn(1, 3, 128, 128)
    maps = {}
    for stride in (16, 32):
        model = build_backbone("resnet_small", fusion="dynamic", output_stride=stride).eval()
        with torch.no_grad():
            maps[stride] = model.forward_features(x)["layer4"]
        assert model.feature_strides[-1] == stride
        assert maps[stride].shape[-2:] == (128 // stride, 128 // stride)
    assert maps[16].shape[-1] == 2 * maps[32].shape[-1]


def test_output_stride_16_conv_layer4_is_dilated():
    model = on_meta("resnet50", fusion="conv", output_stride=16)
    for block in model.layer4:
        assert block.conv2.fusion.conv.stride == (1, 1)
        assert block.conv2.fusion.conv.dilation == (2, 2)
        assert block.conv2.fusion.conv.padding == (2, 2)


@pytest.mark.parametrize("name,size", [("resnet_small", 128), ("resnet_tiny", 32)])
def test_forward_features_match_advertised_channels_and_strides(name, size):
    torch.manual_seed(0)
    model = build_backbone(name, fusion="dynamic").eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, size, size))
    assert isinstance(features, OrderedDict)
    assert list(features) == ["layer1", "layer2", "layer3", "layer4"]
    for f, c, s in zip(features.values(), model.feature_channels, model.feature_strides):
        assert f.shape == (2, c, size // s, size // s)
    assert model.out_channels == model.feature_channels[-1]


def test_forward_on_sizes_that_are_not_multiples_of_the_output_stride():
    """Detection inputs: resnet_tiny at 36x44 gives a 9x11 stage-3 map; stage 4 starts with a
    strided LESA block whose output must line up with its 1x1 stride-2 shortcut."""
    torch.manual_seed(0)
    model = build_backbone("resnet_tiny", fusion="dynamic").eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 36, 44))
    assert features["layer3"].shape[-2:] == (9, 11)
    assert features["layer4"].shape[-2:] == (5, 6)


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_num_classes_gives_logits(fusion):
    torch.manual_seed(0)
    model = build_backbone("resnet_tiny", fusion=fusion, num_classes=7).eval()
    plain = build_backbone("resnet_tiny", fusion=fusion).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        assert plain(x).shape == (2, plain.out_channels) == (2, plain.feature_channels[-1])


def test_unknown_backbone_and_fusion_names():
    with pytest.raises(ValueError, match=r"did you mean 'resnet50'"):
        build_backbone("resnet05")
    with pytest.raises(ValueError, match=r"did you mean 'dynamic'"):
        build_backbone("resnet_tiny", fusion="dinamic")


# ---------------------------------------------------------------- 9. the share report

def tiny(fusion: str, seed: int = 0) -> lesa.ResNet:
    torch.manual_seed(seed)
    return build_backbone("resnet_tiny", fusion=fusion, num_classes=10).eval()


def report_names(model: nn.Module) -> list[str]:
    """The names shares() uses: the LESA2d's name (its inner ".fusion" dropped)."""
    return [name.removesuffix(".fusion") for name in attention_modules(model)]


def capture_a_ii(monkeypatch, model) -> dict[str, list]:
    """Record, per module name, the a_ii every attention module's attend returns."""
    seen = {}
    for name, module in zip(report_names(model), attention_modules(model).values()):
        binary = module.binary
        seen[name] = []

        def attend(*args, _original=binary.attend, _log=seen[name], **kwargs):
            out, a_ii = _original(*args, **kwargs)
            _log.append(a_ii)
            return out, a_ii

        monkeypatch.setattr(binary, "attend", attend)
    return seen


def test_tiny_backbone_has_attention_modules():
    names = report_names(tiny("dynamic"))
    assert names and "layer4.0.conv2" in names
    assert "layer3.0.conv2" not in names  # the first block of stage 3 keeps its conv


@pytest.mark.parametrize("fusion", ["sa", "softmax"])
def test_backbone_attention_shares_are_mean_a_ii(monkeypatch, fusion):
    """(The single-module check against the explicit reference softmax is in test_lesa_math.)"""
    model = tiny(fusion)
    seen = capture_a_ii(monkeypatch, model)
    model(torch.randn(2, 3, 32, 32))
    report = shares(model)
    assert list(report["per_module"]) == report_names(model)
    wants = []
    for name, log in seen.items():
        assert len(log) == 1 and log[0] is not None
        want = 100 * log[0].mean().item()
        assert 0 < want < 100
        assert report["per_module"][name]["unary"] == pytest.approx(want, rel=1e-6)
        assert report["per_module"][name]["binary"] == pytest.approx(100 - want, rel=1e-6)
        wants.append(want)
    assert report["unary"] == pytest.approx(sum(wants) / len(wants), rel=1e-6)
    assert report["binary"] == pytest.approx(100 - sum(wants) / len(wants), rel=1e-6)


def test_backbone_dynamic_share_is_mean_one_over_one_plus_omega():
    model = tiny("dynamic")
    omegas = {}
    for name, module in zip(report_names(model), attention_modules(model).values()):
        module.gate.register_forward_hook(
            lambda m, i, o, _name=name: omegas.setdefault(_name, []).append(o.detach()))
    model(torch.randn(2, 3, 32, 32))
    report = shares(model)
    assert set(omegas) == set(report["per_module"]) == set(report_names(model))
    wants = []
    for name, log in omegas.items():
        assert len(log) == 1
        want = 100 * (1 / (1 + log[0])).mean().item()
        assert 50 < want < 100  # omega in (0, 1)
        assert report["per_module"][name]["unary"] == pytest.approx(want, rel=1e-6)
        wants.append(want)
    assert report["unary"] == pytest.approx(sum(wants) / len(wants), rel=1e-6)
    assert report["binary"] == pytest.approx(100 - sum(wants) / len(wants), rel=1e-6)


@pytest.mark.parametrize("fusion,unary", [("unary", 100.0), ("binary", 0.0), ("sum", 50.0)])
def test_fixed_shares(fusion, unary):
    model = tiny(fusion)
    assert shares(model)["unary"] is None  # nothing recorded before a forward
    model(torch.randn(1, 3, 32, 32))
    report = shares(model)
    assert report["unary"] == unary and report["binary"] == 100.0 - unary
    assert report["per_module"] == {name: {"unary": unary, "binary": 100.0 - unary}
                                    for name in report_names(model)}


def test_conv_model_reports_no_shares():
    model = tiny("conv")
    model(torch.randn(1, 3, 32, 32))
    assert shares(model) == {"per_module": {}, "unary": None, "binary": None}
    assert shares(model, running=True)["unary"] is None


@pytest.mark.parametrize("fusion", ["sa", "softmax", "dynamic", "sum"])
def test_running_shares_average_two_forwards(fusion):
    model = tiny(fusion)
    model(torch.randn(1, 3, 32, 32))  # recorded before the reset: must not count
    reset_shares(model)
    assert shares(model, running=True)["unary"] is None
    lasts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model(torch.randn(2, 3, 32, 32) * seed)
        lasts.append(shares(model)["unary"])
    running = shares(model, running=True)
    assert running["unary"] == pytest.approx(sum(lasts) / 2, rel=1e-9)
    assert running["binary"] == pytest.approx(100 - sum(lasts) / 2, rel=1e-9)
    if fusion != "sum":
        assert lasts[0] != lasts[1]  # the two forwards really differ


@pytest.mark.parametrize("fusion", ["sa", "softmax", "dynamic", "unary"])
def test_record_shares_off_stops_updates(fusion):
    model = tiny(fusion)
    model(torch.randn(1, 3, 32, 32))
    before, before_running = shares(model), shares(model, running=True)
    record_shares(model, False)
    assert all(not m.record_shares for m in attention_modules(model).values())
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32) * 3)
    assert shares(model) == before
    assert shares(model, running=True) == before_running
    record_shares(model, True)
    model(torch.randn(2, 3, 32, 32) * 3)
    if fusion != "unary":
        assert shares(model)["unary"] != before["unary"]
    assert all(m._share_count == 2 for m in attention_modules(model).values())


def test_sa_without_recording_skips_the_diagonal_report(monkeypatch):
    """Training loops switch recording off for speed: sa must then use the plain path."""
    model = tiny("sa")
    record_shares(model, False)
    seen = capture_a_ii(monkeypatch, model)
    model(torch.randn(1, 3, 32, 32))
    assert seen and all(log == [None] for log in seen.values())  # "keep" reports no a_ii


def test_single_lesa2d_share_name():
    module = LESA2d(16, heads=2, fusion="sum", max_map_size=8)
    module(torch.randn(1, 16, 4, 4))
    assert shares(module)["per_module"] == {"fusion": {"unary": 50.0, "binary": 50.0}}
