"""The new options' plumbing: width multiplier, deformable stages, seeded initialisation, the
config keys (run ids unchanged at their defaults) and the matched-width search of the cost
table. The options' math is checked against reference math in test_lesa_release.py."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.config.experiment import run_id
from bench.config.schema import ConfigError, resolve
from bench.costs.models import matched_width
from bench.tasks import backbone_kwargs
from lesa import DeformableConv3x3, LESA2d, build_backbone


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kw):
    with torch.device("meta"):
        return build_backbone(name, **kw)


# ---------------------------------------------------------------- width

def test_width_scales_bottleneck_widths_and_rounds_attention_stages_to_the_heads():
    conv = on_meta("resnet_tiny", fusion="conv", width=1.1)
    assert conv.stage_widths == [9, 18, 35, 70]
    dyn = on_meta("resnet_tiny", fusion="dynamic", heads=4, width=0.9)
    assert dyn.stage_widths == [7, 14, 32, 56]  # stages 3, 4: multiples of 2 * heads = 8
    assert dyn.feature_channels == [28, 56, 128, 224]
    conv50 = n_params(on_meta("resnet50", fusion="conv", num_classes=1000, width=1.0))
    assert conv50 == 25_557_032
    with pytest.raises(ValueError, match="width"):
        on_meta("resnet_tiny", width=0)


def test_width_model_runs():
    model = build_backbone("resnet_tiny", "conv", 3, width=0.6)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_matched_width_bisects_a_monotone_measure():
    assert matched_width(49.0, lambda w: 100 * w * w) == 0.7
    assert matched_width(1e9, lambda w: w) == 4.0  # beyond the range: its end


# ---------------------------------------------------------------- deformable stages

def test_deformable_stages_reach_every_conv_3x3_there():
    model = on_meta("resnet26", fusion="conv", deformable_stages=(2, 4))
    for stage, deformable in ((1, False), (2, True), (3, False), (4, True)):
        for block in getattr(model, f"layer{stage}"):
            assert isinstance(block.conv2.fusion.conv, DeformableConv3x3) == deformable
    with pytest.raises(ValueError, match="1-4"):
        on_meta("resnet26", deformable_stages=(5,))


def test_seeded_init_is_deterministic_and_leaves_offsets_at_zero():
    a = build_backbone("resnet_tiny", "dynamic", 2, heads=4, release="detection",
                       max_map_size=4, init_seed=3)
    b = build_backbone("resnet_tiny", "dynamic", 2, heads=4, release="detection",
                       max_map_size=4, init_seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    offsets = [m for m in a.modules() if isinstance(m, DeformableConv3x3)]
    assert offsets and all(m.offset_weight.abs().sum() == 0 for m in offsets)
    assert all(m.weight.std() > 0 for m in offsets)


def test_lesa2d_passes_each_option_to_the_strategies_that_take_it():
    conv = LESA2d(16, heads=2, fusion="conv", logits="batchnorm", positions="raster")
    assert isinstance(conv.fusion.conv, nn.Conv2d)  # the binary options do not apply
    dyn = LESA2d(16, heads=2, fusion="dynamic", unary="deformable", logits="batchnorm")
    assert isinstance(dyn.fusion.unary.local, DeformableConv3x3)
    assert dyn.fusion.binary.logits == "batchnorm"
    with pytest.raises(ValueError, match="unary must be"):
        LESA2d(16, heads=2, unary="deform")


# ---------------------------------------------------------------- config

BASE = {"data": {"name": "probe_context"}, "model": {"fusion": "dynamic"}}


def _resolved(**model):
    raw = copy.deepcopy(BASE)
    raw["model"].update(model)
    return resolve(raw)


def test_new_keys_at_their_defaults_keep_run_ids():
    plain = run_id(_resolved())
    assert run_id(_resolved(release=False, width=1.0, logits=None, positions=None,
                            unary=None, deformable_stages=None)) == plain
    assert run_id(_resolved(release=True)) != plain
    assert run_id(_resolved(width=1.1)) != plain
    assert run_id(_resolved(logits="batchnorm")) != plain


@pytest.mark.parametrize("key,value,match", [
    ("logits", "bn", "model.logits"), ("positions", "raster2d", "model.positions"),
    ("unary", "dcn", "model.unary"), ("width", 0, "model.width"),
    ("release", "yes", "model.release"), ("deformable_stages", [5], "model.deformable_stages"),
])
def test_bad_option_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        _resolved(**{key: value})


def test_backbone_kwargs_carry_the_options_and_the_task_preset():
    model = _resolved(release=True, width=1.5, unary="deformable",
                      deformable_stages=[3])["model"]
    kwargs = backbone_kwargs(model)
    assert kwargs["release"] == "classification" and kwargs["width"] == 1.5
    assert kwargs["unary"] == "deformable" and kwargs["deformable_stages"] == (3,)
    assert backbone_kwargs(model, "detection")["release"] == "detection"
    plain = backbone_kwargs(_resolved()["model"])
    assert not {"release", "width", "logits", "positions", "unary",
                "deformable_stages"} & set(plain)
