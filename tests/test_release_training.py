"""The detection release's training options (issue 33, item 17): `norm_eval` (every BatchNorm of
the backbone, the logit and gate BatchNorms included, on its running statistics in training)
and `frozen_stages` (the stem and stages 1..k without gradients, in evaluation mode), as
mmdetection's ResNet has them; the detection preset sets norm_eval and frozen_stages=1; the
detector keeps both through Lightning's training loop; an experiment's `model.release: true`
on a detection dataset writes them into the run's config (and so its id)."""
from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lesa
from lesa import build_backbone
from lesa.logit_norm import LogitNorm

BN = nn.modules.batchnorm._BatchNorm


def _tiny(**options) -> lesa.ResNet:
    return build_backbone("resnet_tiny", "dynamic", 3, heads=4, max_map_size=4, init_seed=1,
                          **options)


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers()
            if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def _step(model: nn.Module, steps: int = 2) -> dict[str, torch.Tensor]:
    """Train `steps` SGD steps (momentum, weight decay) on random data; the parameters before."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                          momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16, generator=g)
        loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before


def test_the_detection_preset_sets_both_and_the_config_follows_it():
    from bench.config.schema import DETECTION_RELEASE_TRAINING

    assert lesa.RELEASE["detection"]["norm_eval"] is True
    assert lesa.RELEASE["detection"]["frozen_stages"] == 1
    assert {k: lesa.RELEASE["detection"][k] for k in DETECTION_RELEASE_TRAINING} \
        == DETECTION_RELEASE_TRAINING
    for key in ("norm_eval", "frozen_stages"):  # the classification release trains as usual
        assert key not in lesa.RELEASE["classification"]
    with torch.device("meta"):
        det = build_backbone("resnet26", "dynamic", release="detection", max_map_size=8)
        cls = build_backbone("resnet26", "dynamic", release=True, max_map_size=8)
        off = build_backbone("resnet26", "dynamic", release="detection", max_map_size=8,
                             norm_eval=False, frozen_stages=-1)  # given options win
    assert (det.norm_eval, det.frozen_stages) == (True, 1)
    assert (cls.norm_eval, cls.frozen_stages) == (False, -1)
    assert (off.norm_eval, off.frozen_stages) == (False, -1)
    assert all(p.requires_grad for p in off.parameters())


def test_norm_eval_keeps_every_running_statistic_and_trains_on_them():
    model = _tiny(release="detection", deformable_stages=(), unary="grouped", frozen_stages=-1)
    norms = [m for m in model.modules() if isinstance(m, BN)]
    assert any(isinstance(m, LogitNorm) for m in norms)  # the logit BN is one of them
    model.train()
    assert model.training and not any(m.training for m in norms)
    stats = _buffers(model)
    before = _step(model)
    assert all(torch.equal(stats[n], b) for n, b in _buffers(model).items())
    # training computes what evaluation computes: BatchNorm on running statistics throughout
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        trained = model.train()(x)
        evaluated = model.eval()(x)
    torch.testing.assert_close(trained, evaluated, rtol=1e-4, atol=1e-5)
    # the BatchNorms' affine parameters still learn
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.endswith("bn1.weight") for n in changed) and "fc.weight" in changed


def test_without_norm_eval_the_running_statistics_move():
    model = _tiny(release=True)
    stats = _buffers(model)
    _step(model, steps=1)
    moved = [n for n, b in _buffers(model).items() if not torch.equal(stats[n], b)]
    assert any("logit" in n or "norm" in n for n in moved) and len(moved) == len(stats)


@pytest.mark.parametrize("frozen", [0, 1, 2])
def test_frozen_stages_neither_learn_nor_update_statistics(frozen):
    model = _tiny(frozen_stages=frozen)
    frozen_modules = [model.stem] + [getattr(model, f"layer{s}") for s in range(1, frozen + 1)]
    frozen_names = {f"{name}." for name in ["stem"] + [f"layer{s}"
                                                        for s in range(1, frozen + 1)]}
    stats = _buffers(model)
    before = _step(model)
    assert model.training and all(not m.training for f in frozen_modules for m in f.modules())
    for name, p in model.named_parameters():
        is_frozen = any(name.startswith(prefix) for prefix in frozen_names)
        assert p.requires_grad != is_frozen, name
        if is_frozen:
            assert p.grad is None and torch.equal(before[name], p), name
    for name, b in _buffers(model).items():
        if any(name.startswith(prefix) for prefix in frozen_names):
            assert torch.equal(stats[name], b), name
    later = [f"layer{s}." for s in range(frozen + 1, 5)] + ["fc."]
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert all(any(n.startswith(prefix) for n in changed) for prefix in later)
    # the trainable stages' BatchNorms keep training
    assert any(not torch.equal(stats[n], b) for n, b in _buffers(model).items()
               if n.startswith(f"layer{frozen + 1}."))


@pytest.mark.parametrize("options, message", [
    ({"frozen_stages": 5}, "frozen_stages must be -1"), ({"frozen_stages": True}, "not True"),
    ({"norm_eval": "yes"}, "norm_eval must be True or False")])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**options)


# ---------------------------------------------------------------------------- the detector

def _config(**model) -> dict:
    from bench.config import resolve

    return resolve({"data": {"name": "digit_scenes", "image_size": 64},
                    "model": {"backbone": "resnet_small", "heads": 2, "max_size": 8,
                              "detection": {"fpn_channels": 32, "head_convs": 1}, **model},
                    "trainer": {"max_epochs": 1}})


def test_an_experiment_release_detection_run_carries_them_in_its_config_and_id():
    from bench.config import run_id

    release, plain = _config(release=True), _config()
    assert (release["model"]["norm_eval"], release["model"]["frozen_stages"]) == (True, 1)
    assert (plain["model"]["norm_eval"], plain["model"]["frozen_stages"]) == (None, None)
    off = _config(release=True, norm_eval=False, frozen_stages=-1)
    assert run_id(off) != run_id(release)
    # explicit "off" is what every run computed before these keys: the same id as null
    assert run_id(_config(norm_eval=False, frozen_stages=-1)) == run_id(plain)
    stored = copy.deepcopy(off)
    for key in ("norm_eval", "frozen_stages"):
        stored["model"].pop(key)  # a release run stored before the keys existed
    assert run_id(stored) == run_id(off) != run_id(release)


class _Scenes(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, 64, 64, generator=g)
        x, y = 8 + 8 * i, 12 + 4 * i
        target = {"boxes": torch.tensor([[x, y, x + 20.0, y + 16.0]]),
                  "labels": torch.tensor([1 + i % 2]), "iscrowd": torch.tensor([0])}
        return image, target


def test_the_detector_keeps_them_through_lightnings_training_loop(tmp_path):
    """A real Trainer fit (the loop that switches train/eval modes around validation): after
    training, every backbone BatchNorm's statistics and the stem and stage 1 are as built,
    and the later stages and the head have learnt."""
    from bench.tasks.detection import DetectionTask

    cfg = _config(release=True)
    task = DetectionTask(cfg["model"], cfg["optim"], num_classes=3, image_size=(64, 64),
                         max_epochs=1, batch_size=2)
    body = task.backbone
    assert body.norm_eval and body.frozen_stages == 1
    stats, params = _buffers(body), {n: p.detach().clone() for n, p in task.named_parameters()}
    loader = torch.utils.data.DataLoader(_Scenes(), batch_size=2,
                                         collate_fn=lambda b: tuple(zip(*b)))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(task, loader, loader)  # validation in between: the loop restores the modes
    assert all(torch.equal(stats[n], b) for n, b in _buffers(body).items())
    prefix = "detector.backbone.body."
    for name, p in task.named_parameters():
        if name.startswith((prefix + "stem.", prefix + "layer1.")):
            assert not p.requires_grad and torch.equal(params[name], p), name
    changed = {n for n, p in task.named_parameters() if not torch.equal(params[n], p)}
    assert any(n.startswith(prefix + "layer4.") for n in changed)
    assert any(n.startswith("detector.head.") for n in changed)
    task.train()
    assert not any(m.training for m in body.modules() if isinstance(m, BN))
