"""The paired design (docs/statistics.md): val/test sets drawn from
data.split_seed, the same for every run seed; the same run seed gives every strategy the same
initialisation of the layers they share (lesa.ResNet's init_seed, the detector's FPN and head)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import ConfigError, resolve
from bench.data import build_datamodule
from bench.data.base import BatchKey
from bench.data.digits import DigitsData
from bench.data.scenes import DigitScenesData
from bench.tasks import build_task
from lesa import FUSIONS, RelativePosition2d, ResNet, build_backbone

# ---------------------------------------------------------------------------------------------
# data: val/test from split_seed, training from the run seed


def digits(seed, split_seed=0):
    dm = DigitsData(seed=seed, split_seed=split_seed, batch_size=32, image_size=8)
    dm.setup()
    return dm


def first_batch(loader):
    return next(iter(loader))


def test_digits_val_and_test_fixed_across_run_seeds_training_order_not():
    a, b, other_split = digits(0), digits(1), digits(0, split_seed=1)
    for split in ("train", "val", "test"):
        assert np.array_equal(a.split_indices[split], b.split_indices[split])
    for name in ("val_set", "test_set"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    for loader in ("val_dataloader", "test_dataloader"):
        (xa, ya), (xb, yb) = (first_batch(getattr(dm, loader)()) for dm in (a, b))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the training data follows the run seed: another order (and augmentation draws)
    (xa, ya), (xb, yb) = first_batch(a.train_dataloader()), first_batch(b.train_dataloader())
    assert not torch.equal(ya, yb) and not torch.equal(xa, xb)
    # another split seed: another test set
    assert not np.array_equal(other_split.split_indices["test"], a.split_indices["test"])
    assert not torch.equal(other_split.test_set.labels, a.test_set.labels)


def test_split_seed_reaches_the_datamodule_from_the_config():
    dm = build_datamodule(resolve({"data": {"name": "digits", "split_seed": 5}})["data"],
                          seed=1)
    assert (dm.seed, dm.split_seed) == (1, 5)
    assert resolve({})["data"]["split_seed"] == 0  # every dataset takes it, default 0
    assert resolve({"data": {"name": "digit_scenes"}})["data"]["split_seed"] == 0


SMALL = dict(image_size=32, object_size=[4, 10], objects=[1, 3], train_images=3,
             val_images=2, test_images=2)


def test_digit_scenes_val_test_canvases_fixed_across_run_seeds_training_canvases_not():
    a = DigitScenesData(seed=0, batch_size=3, **SMALL)
    b = DigitScenesData(seed=1, batch_size=3, **SMALL)
    for split in ("val", "test"):
        for x, y in zip(a.render(split), b.render(split)):
            assert np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
            assert np.array_equal(x.labels, y.labels)
    # the fixed training set (fresh_train: false) follows the run seed
    assert not np.array_equal(a.render("train")[0].image, b.render("train")[0].image)
    # fresh training canvases: the batch seeds come from the run seed
    a.setup("fit"), b.setup("fit")
    (xa, _), (xb, _) = first_batch(a.train_dataloader()), first_batch(b.train_dataloader())
    assert not torch.equal(xa, xb)
    # the same batch key renders the same canvases: both draw digits from the same pool
    key = BatchKey([0, 1], seed=7)
    assert torch.equal(a.train_set[key][0], b.train_set[key][0])
    # another split seed: other test canvases
    c = DigitScenesData(seed=0, split_seed=1, **SMALL)
    assert not np.array_equal(c.render("test")[0].image, a.render("test")[0].image)


@pytest.mark.parametrize("value, message", [(-1, "must be an integer >= 0"),
                                            ("x", "expected int"), (1.5, "expected int"),
                                            (True, "expected int")])
def test_bad_split_seed_is_refused_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=f"data.split_seed: {message}"):
        resolve({"data": {"name": "digits", "split_seed": value}})
    with pytest.raises(ValueError, match="data.split_seed"):
        DigitsData(seed=0, split_seed=value)


# ---------------------------------------------------------------------------------------------
# initialisation: the same seed, the same weights wherever strategies coincide


def tiny(fusion, init_seed):
    return build_backbone("resnet_tiny", fusion=fusion, num_classes=10, heads=2,
                          max_map_size=8, init_seed=init_seed)


def shared_parameters(a, b):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return [(name, pa[name], pb[name]) for name in pa
            if name in pb and pa[name].shape == pb[name].shape]


def test_same_init_seed_same_shared_parameters_across_strategies():
    models = {f: tiny(f, 3) for f in ("conv", "sa", "dynamic")}
    for x, y in (("conv", "sa"), ("conv", "dynamic"), ("sa", "dynamic")):
        shared = shared_parameters(models[x], models[y])
        different = [name for name, p, q in shared if not torch.equal(p, q)]
        assert not different, f"{x} vs {y}: {different}"
        names = [name for name, _, _ in shared]
        assert len(names) >= 50, (x, y, len(names))
        for part in ("stem.", "layer1.", "layer2.", "layer3.0.", "layer4.0.conv1", "fc."):
            assert any(n.startswith(part) for n in names), (x, y, part)
    # sa and dynamic share the binary term, relative position tables included
    shared = [n for n, _, _ in shared_parameters(models["sa"], models["dynamic"])]
    assert "layer4.0.conv2.fusion.binary.rel.rel_h" in shared
    assert "layer4.0.conv2.fusion.binary.qkv.weight" in shared
    # without the seed the later layers' init shifts with the strategy's parameter count
    torch.manual_seed(0)
    conv = tiny("conv", None)
    torch.manual_seed(0)
    dynamic = tiny("dynamic", None)
    assert not torch.equal(conv.fc.weight, dynamic.fc.weight)


def test_every_strategy_takes_a_seeded_init_and_another_seed_gives_other_weights():
    for fusion in FUSIONS:
        a, again, other = tiny(fusion, 3), tiny(fusion, 3), tiny(fusion, 4)
        for (name, p), q, r in zip(a.named_parameters(), again.parameters(),
                                   other.parameters()):
            assert torch.equal(p, q), name
            if p.unique().numel() > 1:  # drawn, not ones / zeros
                assert not torch.equal(p, r), name


def test_seeded_init_keeps_the_distributions_and_leaves_the_global_rng():
    model = tiny("dynamic", 3)
    conv = model.layer1[0].conv1.weight  # kaiming normal, fan out: std sqrt(2 / fan_out)
    assert abs(conv.std().item() / (2 / conv.shape[0]) ** 0.5 - 1) < 0.15
    bn = model.layer1[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    bound = model.fc.in_features ** -0.5  # nn.Linear's default: U(-1/sqrt(fan_in), ...)
    assert model.fc.weight.abs().max() <= bound and model.fc.bias.abs().max() <= bound
    rel = model.layer4[0].conv2.fusion.binary.rel.rel_h  # N(0, 1/dim)
    assert abs(rel.std().item() * rel.shape[1] ** 0.5 - 1) < 0.3
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    tiny("dynamic", 5)
    assert torch.equal(torch.rand(3), expected)


def _old_init_weights(self):
    """The unseeded path's init, written out: kaiming normal (fan out) on every conv, then BN
    ones / zeros, in module order, from torch's global RNG."""
    for m in self.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def test_init_seed_none_is_the_unseeded_path_unchanged(monkeypatch):
    torch.manual_seed(11)
    model = tiny("dynamic", None)
    assert model.init_seed is None
    # the old path: every module's construction draws in order, then _init_weights as before
    monkeypatch.setattr(ResNet, "_init_weights", _old_init_weights)
    torch.manual_seed(11)
    old = tiny("dynamic", None)
    for (name, p), q in zip(model.named_parameters(), old.parameters()):
        assert torch.equal(p, q), name
    # the relative position tables still draw as they did: randn(...) * dim ** -0.5, h then w
    torch.manual_seed(11)
    rel = RelativePosition2d(4, 8)
    torch.manual_seed(11)
    rel_h, rel_w = torch.randn(15, 4) * 4**-0.5, torch.randn(15, 4) * 4**-0.5
    assert torch.equal(rel.rel_h.data, rel_h) and torch.equal(rel.rel_w.data, rel_w)
    # and the unseeded path draws from the global RNG: another seed, other weights
    torch.manual_seed(12)
    assert not torch.equal(tiny("dynamic", None).fc.weight, model.fc.weight)


# ---------------------------------------------------------------------------------------------
# detection: the FPN and the FCOS head follow the run seed too


def detection_task(fusion, seed):
    cfg = resolve({
        "seed": seed,
        "data": {"name": "digit_scenes", **SMALL, "batch_size": 2},
        "model": {"backbone": "resnet_small", "fusion": fusion, "heads": 2, "max_size": 8,
                  "detection": {"fpn_channels": 32, "head_convs": 1}},
    })
    dm = build_datamodule(cfg["data"], cfg["seed"])
    return build_task(cfg, dm)


def test_detection_fpn_and_head_identical_across_strategies_of_one_seed():
    conv, dynamic, other = (detection_task("conv", 2), detection_task("dynamic", 2),
                            detection_task("conv", 3))
    assert conv.backbone.init_seed == 2
    parts = {"fpn": lambda t: t.detector.backbone.fpn, "head": lambda t: t.detector.head}
    for part, get in parts.items():
        a, b, c = (dict(get(t).named_parameters()) for t in (conv, dynamic, other))
        assert len(a) > 4 and a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{part}.{name}"
        assert any(not torch.equal(a[n], c[n]) for n in a), part  # another seed, another init
    # and the backbone layers both strategies have
    shared = shared_parameters(conv.backbone, dynamic.backbone)
    assert len(shared) > 20 and all(torch.equal(p, q) for _, p, q in shared)
