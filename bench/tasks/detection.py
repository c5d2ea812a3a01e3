"""DetectionTask: torchvision's FCOS on a lesa backbone with an FPN from stride 4 (P2-P5).

The detector is the library's (torchvision.models.detection.FCOS: its center sampling, scale
assignment, focal/GIoU/centerness losses and post-processing), so backbones are compared with
the head and assigner held fixed. What is set for small objects: a stride-4 level (P2) with
anchor sizes from 4 px (FCOS's anchors are one box per point whose size sets the point's scale
range, 4-8x its size), native resolution (no resize to 800 px), score threshold 0.05 and up to
1500 detections per image. Options live under `model.detection.*` (TASKS["detection"].options).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict

import lightning as L
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork

import lesa
from lesa.backbone import module_seed
from bench.data.base import IMAGENET_MEAN, IMAGENET_STD
from bench.tasks import TASKS, backbone_kwargs
from bench.tasks.metrics import AITOD_BUCKETS, COCO_KEYS, DetectionMetrics
from bench.tasks.optim import build_optimizers


class LesaFPN(nn.Module):
    """A lesa ResNet's four stages (strides 4, 8, 16, 32) through torchvision's FPN: an
    OrderedDict of `out_channels`-wide maps P2..P5, the contract FCOS expects of a backbone."""

    def __init__(self, body: lesa.ResNet, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.feature_channels), out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body.forward_features(x))


class NativeResolution(GeneralizedRCNNTransform):
    """Normalise and batch (padding to a multiple of 32) without resizing: tiny objects stay
    the size they are, whatever each image's size."""

    def resize(self, image, target=None):
        return image, target


def detection_options(model: dict) -> dict:
    """`model.detection`, defaults filled in and checked (errors name the key)."""
    options = {**TASKS["detection"].options, **(model.get("detection") or {})}
    sizes = options["anchor_sizes"]
    if not (isinstance(sizes, (list, tuple)) and len(sizes) == 4
            and all(isinstance(s, (int, float)) and s > 0 for s in sizes)):
        raise ValueError(f"model.detection.anchor_sizes must be 4 positive sizes in pixels, one "
                         f"per FPN level P2-P5 (strides 4-32), got {sizes!r}")
    channels = options["fpn_channels"]
    if not isinstance(channels, int) or channels < 32 or channels % 32:
        raise ValueError(f"model.detection.fpn_channels must be a multiple of 32 (the FCOS head "
                         f"uses GroupNorm with 32 groups), got {channels!r}")
    if not isinstance(options["head_convs"], int) or options["head_convs"] < 0:
        raise ValueError(f"model.detection.head_convs must be an integer >= 0, got "
                         f"{options['head_convs']!r}")
    for key in ("min_size", "max_size"):
        value = options[key]
        if value is not None and (not isinstance(value, int) or value < 32):
            raise ValueError(f"model.detection.{key} must be null (native resolution) or an "
                             f"integer >= 32, got {value!r}")
    return options


@contextlib.contextmanager
def _seeded(seed: int | None, name: str):
    """torch's global RNG forked and seeded from (seed, name) for what is built inside (the
    global RNG is left as it was); no change when seed is None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(module_seed(seed, name))
        yield


def build_detector(backbone: lesa.ResNet, num_classes: int, options: dict,
                   image_mean, image_std, init_seed: int | None = None) -> FCOS:
    """FCOS on `backbone` + FPN with the small-object settings in `options`.

    torchvision's FPN and FCOS head initialise themselves from torch's global RNG. With
    `init_seed` (default: the backbone's own init_seed, which bench sets to the run seed) each is
    built under that RNG forked and seeded from (init_seed, its name in the detector), so every
    strategy of one seed gets the same FPN and head; without one, as torchvision does."""
    if init_seed is None:
        init_seed = getattr(backbone, "init_seed", None)
    levels = len(backbone.feature_channels)
    anchors = AnchorGenerator(tuple((float(s),) for s in options["anchor_sizes"]),
                              ((1.0,),) * levels)
    with _seeded(init_seed, "head"):
        head = FCOSHead(options["fpn_channels"], 1, num_classes, num_convs=options["head_convs"])
    with _seeded(init_seed, "backbone.fpn"):
        body = LesaFPN(backbone, options["fpn_channels"])
    detector = FCOS(
        body, num_classes,
        min_size=options["min_size"] or 800, max_size=options["max_size"] or 1333,
        image_mean=list(image_mean), image_std=list(image_std), anchor_generator=anchors,
        head=head, center_sampling_radius=options["center_sampling_radius"],
        score_thresh=options["score_thresh"], nms_thresh=options["nms_thresh"],
        detections_per_img=options["detections_per_img"],
        topk_candidates=options["topk_candidates"])
    if options["min_size"] is None and options["max_size"] is None:
        detector.transform = NativeResolution(0, 0, list(image_mean), list(image_std))
    return detector


def _for_training(target: dict) -> dict:
    # FCOS has no notion of ignore regions: crowd boxes are left out of the loss (the evaluator
    # still sees them)
    keep = target["iscrowd"] == 0 if "iscrowd" in target else slice(None)
    return {"boxes": target["boxes"][keep], "labels": target["labels"][keep]}


def _for_metric(target: dict) -> dict:
    return {k: target[k] for k in ("boxes", "labels", "iscrowd", "area") if k in target}


class DetectionTask(L.LightningModule):
    """Small-object detection with any fusion strategy: FCOS + FPN (P2-P5) on a lesa backbone.

    Logs train/loss (and its parts), val/map and val/map_50 every validation, and on test the
    COCO metrics and the AI-TOD buckets (TASKS["detection"].metrics; NaN where a bucket has no
    ground truth). `example_input_array` is one zero image at the data's (first) image size:
    the backbone's input, on which the cost callback counts FLOPs.
    """

    def __init__(self, model: dict, optim: dict, num_classes: int, in_channels: int = 3,
                 image_size: tuple[int, int] = (128, 128),
                 image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                 max_epochs: int = 10, batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()
        options = detection_options(model)
        backbone = lesa.build_backbone(
            model["backbone"], in_channels=in_channels, **backbone_kwargs(model, "detection"))
        if len(backbone.feature_channels) != len(options["anchor_sizes"]):
            raise ValueError(f"model.detection.anchor_sizes needs one size per backbone stage "
                             f"({len(backbone.feature_channels)})")
        self.detector = build_detector(backbone, num_classes, options, image_mean, image_std)
        self.example_input_array = torch.zeros(1, in_channels, *image_size)
        self.val_metrics = DetectionMetrics(options["detections_per_img"], size_buckets=False)
        self.test_metrics = DetectionMetrics(options["detections_per_img"], size_buckets=True)
        self.test_predictions: tuple[list, list] = ([], [])  # per test image, filled on test

    @property
    def backbone(self) -> lesa.ResNet:
        """The lesa ResNet inside the detector (what costs and shares are read from)."""
        return self.detector.backbone.body

    @classmethod
    def from_config(cls, cfg: dict, datamodule) -> "DetectionTask":
        """`datamodule` gives num_classes and in_channels, and may give example_image_size
        ((height, width); else data.image_size squared), image_mean and image_std."""
        size = getattr(datamodule, "example_image_size", None)
        if size is None:
            side = cfg["data"].get("image_size", 128)
            size = (side, side)
        return cls(cfg["model"], cfg["optim"], datamodule.num_classes, datamodule.in_channels,
                   tuple(size), tuple(getattr(datamodule, "image_mean", IMAGENET_MEAN)),
                   tuple(getattr(datamodule, "image_std", IMAGENET_STD)),
                   cfg["trainer"]["max_epochs"], cfg["data"]["batch_size"])

    def forward(self, images) -> list[dict[str, torch.Tensor]]:
        """Detections (boxes xyxy, scores, labels) for a (B, C, H, W) batch or a list of images;
        call in eval mode."""
        return self.detector(images)

    def backbone_input(self, batch):
        """The backbone's input for a batch (normalised and batched as the detector does it)
        and where its boxes lie in it, for the share inside boxes (bench/train/shares.py):
        {"frame": (H, W), "boxes": per image (N, 4) in the frame, "sizes": per image sqrt(area)
        in original pixels (NaN for crowd boxes), "image_sizes": per image (h, w) unpadded}."""
        images, targets = batch
        image_list, moved = self.detector.transform(list(images),
                                                    [{"boxes": t["boxes"]} for t in targets])
        sizes = []
        for t in targets:
            b = t["boxes"].float()
            area = t["area"].float() if "area" in t else (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            size = area.clamp(min=0).sqrt()
            if "iscrowd" in t:
                size = torch.where(t["iscrowd"] != 0, torch.full_like(size, float("nan")), size)
            sizes.append(size)
        where = {"frame": tuple(image_list.tensors.shape[-2:]),
                 "boxes": [m["boxes"] for m in moved], "sizes": sizes,
                 "image_sizes": [tuple(s) for s in image_list.image_sizes]}
        return image_list.tensors, where

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.detector(images, [_for_training(t) for t in targets])
        loss = sum(losses.values())
        n = len(targets)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        self.val_metrics.update(self.detector(images), [_for_metric(t) for t in targets])

    def on_test_epoch_start(self):
        self.test_predictions: tuple[list, list] = ([], [])

    def test_step(self, batch, batch_idx):
        images, targets = batch
        preds = self.detector(images)
        self.test_metrics.update(preds, [_for_metric(t) for t in targets])
        # every test image's detections and ground truth on the CPU, for the report's bootstrap
        # over test images (bench/stats/ap.py; the run writes predictions.npz)
        kept, truth = self.test_predictions
        for p, t in zip(preds, targets):
            kept.append({k: p[k].detach().cpu() for k in ("boxes", "scores", "labels")})
            truth.append({"boxes": t["boxes"].detach().cpu(), "labels": t["labels"].detach().cpu(),
                          "iscrowd": (t["iscrowd"] if "iscrowd" in t
                                      else torch.zeros_like(t["labels"])).detach().cpu()})

    def on_validation_epoch_end(self):
        result = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val/map", result["map"])
        self.log("val/map_50", result["map_50"], prog_bar=True)

    def on_test_epoch_end(self):
        if self.trainer.world_size > 1:  # every rank's share, rank by rank (same order per run)
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, self.test_predictions)
            self.test_predictions = ([p for g in gathered for p in g[0]],
                                     [t for g in gathered for t in g[1]])
        result = self.test_metrics.compute()
        self.test_metrics.reset()
        for key in (*COCO_KEYS, *AITOD_BUCKETS):
            self.log(f"test/{key}", result[key])

    def prediction_arrays(self) -> dict | None:
        """Every test image's detections and ground truth, packed for predictions.npz
        (bench.stats.ap.pack_detections)."""
        from bench.stats.ap import pack_detections

        preds, targets = self.test_predictions
        if not preds:
            return None
        return pack_detections([{k: v.numpy() for k, v in p.items()} for p in preds],
                               [{k: v.numpy() for k, v in t.items()} for t in targets])

    def configure_optimizers(self):
        epochs = self.hparams.max_epochs
        steps = max(1, self.trainer.estimated_stepping_batches // max(1, epochs))
        return build_optimizers(self, self.hparams.optim, epochs, steps, self.hparams.batch_size)
