"""The probe datasets (bench/data/probes.py) and the controls of `dynamic` (lesa/fusion.py):
labels checked against what was drawn, the paired split, the context probe's geometry against
resnet_tiny's measured receptive field, and the controls against explicit math."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lesa
from bench.config import ConfigError, resolve
from bench.config.experiment import run_id
from bench.data import build_datamodule
from bench.data.probes import (RESNET_TINY_RF, ContextProbe, ContextProbeData, LocalProbe,
                               LocalProbeData, glyph_pool, resized)
from bench.tasks import build_task
from lesa.fusion import FrozenGateFusion, StaticFusion

# the experiment's sizes, small counts
CONTEXT = dict(image_size=8, width=48, digit_size=8, jitter=2, classes=2, train_images=64,
               val_images=32, test_images=48)
LOCAL = dict(image_size=24, digit_size=[9, 11], distractors=[2, 3], train_images=64,
             val_images=32, test_images=48)


def context_probe(**kw) -> ContextProbe:
    o = {**CONTEXT, **kw}
    glyphs, labels = glyph_pool("test", 0)
    return ContextProbe(glyphs, labels, o["image_size"], o["width"], o["digit_size"],
                        o["jitter"], o["classes"])


def find_glyph(crop: np.ndarray, candidates: np.ndarray) -> int:
    """Index of the candidate (N, h, w) that the crop is a positive multiple of."""
    flat = candidates.reshape(len(candidates), -1).astype(np.float64)
    c = crop.reshape(-1).astype(np.float64)
    scale = (flat @ c) / np.maximum((flat * flat).sum(1), 1e-12)
    err = np.abs(flat * scale[:, None] - c).max(1)
    best = int(err.argmin())
    assert err[best] < 1e-5 and scale[best] > 0.5, err[best]
    return best


# ---------------------------------------------------------------------------------------------
# context probe

@pytest.mark.parametrize("classes", [2, 5])
def test_context_label_is_whether_the_two_drawn_digits_are_the_same(classes):
    probe = context_probe(classes=classes)
    s, j = probe.size, probe.jitter
    for i in range(40):
        image, label, (a, b) = probe.render(np.random.default_rng([7, i]))
        assert image.shape == (8, 48) and label == int(a == b)
        # read both digits back from the pixels: the glyph drawn in each end's window
        drawn = []
        for x0 in (0, probe.width - s - j):
            window = image[:, x0:x0 + s + j]
            cols = np.flatnonzero(window.any(0))
            x = x0 + cols[0] if x0 == 0 else x0 + cols[-1] - s + 1
            # a glyph with a blank first/last column sits anywhere the ink allows: try them
            for shift in range(-s, s + 1):
                xs = min(max(x + shift, 0), probe.width - s)
                if xs < x0 or xs + s > x0 + s + j:
                    continue
                try:
                    drawn.append(probe.labels[find_glyph(image[:, xs:xs + s], probe.glyphs)])
                    break
                except AssertionError:
                    continue
        assert drawn == [a, b]
    labels = [probe.render(np.random.default_rng([8, i]))[1] for i in range(400)]
    assert 0.4 < np.mean(labels) < 0.6  # half same, half different


def test_context_digits_lie_farther_apart_than_resnet_tiny_sees():
    """No location of a conv resnet_tiny's last feature map sees both ends: its receptive field
    (measured by gradients) is narrower than the span that holds ink of both digits."""
    torch.manual_seed(0)
    net = lesa.build_backbone("resnet_tiny", fusion="conv", init_seed=0).eval()
    # random inputs (so the ReLUs pass gradients), the union over several
    x = torch.randn(8, 3, 8, 48, requires_grad=True)
    features = net.forward_features(x)["layer4"]
    widest = 0
    for col in range(features.shape[-1]):
        x.grad = None
        features[:, :, :, col].sum().backward(retain_graph=True)
        cols = np.flatnonzero(x.grad.abs().sum((0, 1, 2)).numpy() > 0)
        widest = max(widest, cols[-1] - cols[0] + 1)
    assert widest > 20  # non-vacuous: the field is wide, only not wide enough
    assert widest <= RESNET_TINY_RF
    assert context_probe().min_span() > RESNET_TINY_RF
    # every rendered strip: the right digit's first ink column minus the left's last
    probe = context_probe()
    for i in range(100):
        image, _, _ = probe.render(np.random.default_rng([9, i]))
        cols = np.flatnonzero(image.any(0))
        left, right = cols[cols < 24], cols[cols >= 24]
        assert right[0] - left[-1] + 1 >= probe.min_span() > widest


def test_additive_ceiling():
    assert context_probe(classes=2).additive_ceiling() == pytest.approx(0.75)
    assert context_probe(classes=10).additive_ceiling() == pytest.approx(0.6389, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# local probe

def test_local_label_is_the_digit_in_its_box_and_distractors_are_no_digits():
    glyphs, labels = glyph_pool("val", 0)
    probe = LocalProbe(glyphs, labels, 24, (9, 11), (2, 3))
    cluttered = 0
    for i in range(60):
        image, label, (x0, y0, x1, y1) = probe.render(np.random.default_rng([3, i]))
        assert image.shape == (1, 24, 24)
        size = x1 - x0
        crop = image[0, y0:y1, x0:x1]
        assert labels[find_glyph(crop, resized(glyphs, size))] == label
        # outside the digit's box: distractors where they found room (the digit comes first)
        rest = image[0].copy()
        rest[y0:y1, x0:x1] = 0
        cluttered += rest.sum() > 0
    assert cluttered >= 0.6 * 60


# ---------------------------------------------------------------------------------------------
# both: deterministic, and the paired split

@pytest.mark.parametrize("cls, options", [(ContextProbeData, CONTEXT), (LocalProbeData, LOCAL)])
def test_probe_images_fixed_by_split_seed_batches_by_run_seed(cls, options):
    from bench.data import probes

    def build(seed, split_seed=0):
        probes._CACHE.clear()  # render anew: determinism, not the cache, is under test
        dm = cls(seed=seed, split_seed=split_seed, batch_size=16, **options)
        dm.setup()
        return dm

    a, again, b, other = build(0), build(0), build(1), build(0, split_seed=1)
    for name in ("train_set", "val_set", "test_set"):
        for x, y in ((a, again), (a, b)):
            assert torch.equal(getattr(x, name).images, getattr(y, name).images)
            assert torch.equal(getattr(x, name).labels, getattr(y, name).labels)
        assert not torch.equal(getattr(a, name).images, getattr(other, name).images)
    assert torch.equal(next(iter(a.test_dataloader()))[0], next(iter(b.test_dataloader()))[0])
    assert not torch.equal(next(iter(a.train_dataloader()))[1],
                           next(iter(b.train_dataloader()))[1])
    x, y = next(iter(a.train_dataloader()))
    assert x.shape[:2] == (16, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.max()) < a.num_classes


def test_probe_options_are_checked():
    with pytest.raises(ValueError, match="data.classes"):
        ContextProbeData(seed=0, classes=11)
    with pytest.raises(ValueError, match="does not fit"):
        ContextProbeData(seed=0, image_size=8, width=20, digit_size=8)
    with pytest.raises(ValueError, match="data.digit_size"):
        LocalProbeData(seed=0, image_size=16, digit_size=[9, 20])


# ---------------------------------------------------------------------------------------------
# the controls

def randomize_bn(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.3 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return module


@pytest.mark.parametrize("weight", [0.5, 0.0, 1.7])
def test_static_is_unary_plus_c_times_binary(weight):
    torch.manual_seed(0)
    block = lesa.LESA2d(16, heads=2, fusion="static", max_map_size=8, weight=weight)
    block = randomize_bn(block, 1).double().eval()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    fusion = block.fusion
    want = fusion.unary(x) + weight * fusion.binary(x)
    torch.testing.assert_close(block(x), want, rtol=1e-12, atol=1e-12)
    assert lesa.shares(block)["unary"] == pytest.approx(100 / (1 + weight))
    with pytest.raises(ValueError, match=">= 0"):
        StaticFusion(16, heads=2, weight=-0.1)


def test_static_default_weight_is_the_gates_initial_mean():
    """c = 0.5 = E[sigmoid(z)], z ~ N(0, 1): the dynamic gate's mean before learning."""
    z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.sigmoid(z).mean().item() == pytest.approx(0.5, abs=2e-3)
    assert StaticFusion(16, heads=2).weight == 0.5


def test_dynamic_frozen_has_no_learnable_last_gate_norm_and_starts_as_dynamic():
    frozen = FrozenGateFusion(16, heads=2, max_map_size=8)
    last = frozen.gate[-2]
    assert isinstance(last, nn.BatchNorm2d) and not last.affine
    assert not list(last.parameters())
    names = {n for n, _ in frozen.named_parameters()}
    dynamic_names = {n for n, _ in lesa.FUSIONS["dynamic"](16, heads=2).named_parameters()}
    assert dynamic_names - names == {"gate.5.weight", "gate.5.bias"}
    # the same init_seed: bit-identical weights where they coincide, so the same function at
    # initialisation (the last BN's gamma 1, beta 0 in both)
    x = torch.randn(4, 3, 16, 16)
    nets = {f: lesa.build_backbone("resnet_tiny", fusion=f, num_classes=3, heads=2,
                                   init_seed=5) for f in ("dynamic", "dynamic_frozen")}
    torch.testing.assert_close(nets["dynamic"](x), nets["dynamic_frozen"](x), rtol=0, atol=0)
    # in training, the sigmoid's input stays standardised per channel: omega's level is fixed
    captured = {}
    gate = nets["dynamic_frozen"].layer3[1].conv2.fusion.gate
    gate[-2].register_forward_hook(lambda m, i, o: captured.setdefault("z", o))
    nets["dynamic_frozen"].train()(x)
    z = captured["z"].double()
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(z.shape[1], dtype=z.dtype),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("init_seed", [0, None])
@pytest.mark.parametrize("fusion", ["static", "dynamic_frozen"])
def test_controls_train_through_the_backbone(fusion, init_seed):
    torch.manual_seed(0)
    net = lesa.build_backbone("resnet_tiny", fusion=fusion, num_classes=2, heads=2,
                              init_seed=init_seed, fusion_options={"weight": 0.25})
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 8, 48), torch.randint(0, 2, (8,))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in net.named_parameters() if not torch.equal(p, before[n])]
    assert any(".fusion.unary" in n for n in changed)
    assert any(".fusion.binary" in n for n in changed)
    modules = [m for m in net.modules() if isinstance(m, lesa.Fusion) and m.name == fusion]
    assert len(modules) == 2
    if fusion == "static":
        assert all(m.weight == 0.25 for m in modules)
    net.eval()(x)
    assert lesa.shares(net)["unary"] is not None


def test_static_weight_config_key_reaches_the_strategy_and_is_checked():
    raw = {"data": {"name": "probe_context", **CONTEXT, "batch_size": 16},
           "model": {"backbone": "resnet_tiny", "heads": 2, "fusion": "static"}}
    cfg = resolve(raw)
    assert cfg["model"]["static_weight"] == 0.5
    cfg_set = resolve({**raw, "model": {**raw["model"], "static_weight": 0.2}})
    dm = build_datamodule(cfg_set["data"], seed=0)
    task = build_task({**cfg_set, "seed": 0}, dm)
    weights = {m.weight for m in task.modules() if isinstance(m, StaticFusion)}
    assert weights == {0.2}
    # its FLOPs input has the strip's shape
    assert tuple(task.example_input_array.shape[-2:]) == (8, 48)
    # the default stays out of the run id: runs stored before the key keep theirs
    without = resolve(raw)
    without["model"].pop("static_weight")
    assert run_id(cfg) == run_id(without) != run_id(cfg_set)
    with pytest.raises(ConfigError, match=r"model.static_weight: must be a number >= 0"):
        resolve({**raw, "model": {**raw["model"], "static_weight": -1.0}})


@pytest.mark.parametrize("setting,fragment", [
    ("data.classes=11", "data.classes must be an integer from 2 to 10, got 11"),
    ("data.jitter=-1", "data.jitter must be an integer >= 0"),
    ("data.jitter=30", "does not fit twice"),
])
def test_a_bad_probe_option_stops_before_training_with_its_key(tmp_path, capsys, setting,
                                                                fragment):
    from bench.cli import main
    exp = Path(__file__).resolve().parents[1] / "experiments" / "quick.yaml"
    code = main(["run", str(exp), "--only", "data.name=probe_context", "--only",
                 "model.fusion=conv", "--only", "seed=0", "--set", setting,
                 "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 2 and fragment in " ".join(out.split()) and "Traceback" not in out
    assert not list(tmp_path.glob("*/*"))  # no run folder left behind
