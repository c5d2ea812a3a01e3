"""LightningModules, one per task type, looked up by the dataset's task.

Import-light (no torch here): the runner and reports read monitor metrics and report columns
from TASKS. Contract for every task class:

    class SomeTask(L.LightningModule):
        @classmethod
        def from_config(cls, cfg: dict, datamodule) -> "SomeTask"   # cfg: the resolved run config
        backbone: lesa.ResNet            # the lesa backbone (costs and shares read it)
        example_input_array: Tensor      # one input batch of size 1 (FLOPs are counted on it)

and it logs the metrics named in its TaskSpec ("val/..." during fit, "test/..." on test).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


# AI-TOD's size buckets: name -> (low, high) of sqrt(box area) in pixels
AITOD_BUCKETS = {"ap_vt": (2, 8), "ap_t": (8, 16), "ap_s": (16, 32), "ap_m": (32, 64)}


@dataclass(frozen=True)
class TaskSpec:
    target: str  # "module:Class" under bench.tasks
    monitor: str  # validation metric for best checkpoints and pruning
    mode: str  # "max" or "min"
    metrics: tuple[str, ...]  # the test metrics it logs (every one in the JSON/CSV exports)
    headline: tuple[str, ...]  # the metrics with a comparison table each; the first in run lines
    options: dict | None = None  # task-specific `model.<task>.*` keys and their defaults
    buckets: dict | None = None  # size buckets it scores AP in (test/<name>)

    def bucket_metrics(self) -> tuple[str, ...]:
        return tuple(f"test/{name}" for name in self.buckets or {})


TASKS: dict[str, TaskSpec] = {
    "classification": TaskSpec("classification:ClassificationTask", "val/acc1", "max",
                               ("test/acc1", "test/acc5"), headline=("test/acc1",)),
    "detection": TaskSpec("detection:DetectionTask", "val/map_50", "max",
                          ("test/map", "test/map_50", "test/map_75", "test/map_small",
                           "test/map_medium", "test/map_large", "test/ap_vt", "test/ap_t",
                           "test/ap_s", "test/ap_m"),
                          headline=("test/map_50", "test/map"), buckets=AITOD_BUCKETS,
                          # FCOS + FPN P2-P5 (bench/tasks/detection.py); anchor_sizes: one per
                          # level, px; min_size/max_size null = native resolution (no resize);
                          # fpn_channels/head_convs default to torchvision's 256/4
                          options={"fpn_channels": 256, "head_convs": 4,
                                   "anchor_sizes": [4, 8, 16, 32],
                                   "center_sampling_radius": 1.5, "score_thresh": 0.05,
                                   "nms_thresh": 0.6, "detections_per_img": 1500,
                                   "topk_candidates": 1000, "min_size": None,
                                   "max_size": None}),
}


def backbone_kwargs(model: dict, task: str = "classification") -> dict:
    """`lesa.build_backbone` keyword arguments from a resolved `model` section (every task
    builds its backbone through this, so a new model key reaches all tasks). `init_seed` is
    not a config key: `build_task` sets it to the run's seed. `task` picks the release preset
    that `model.release` selects."""
    kwargs = dict(fusion=model["fusion"], heads=model["heads"],
                  output_stride=model["output_stride"],
                  attention_stages=tuple(model["attention_stages"]),
                  max_map_size=model["max_size"],
                  stem=model.get("stem"))
    if model.get("window"):
        kwargs["window"] = model["window"]
    if model.get("recompute_attention"):
        kwargs["recompute_attention"] = True
    if model.get("channels_last"):
        kwargs["channels_last"] = True
    if model.get("init_seed") is not None:
        kwargs["init_seed"] = model["init_seed"]
    if model["fusion"] == "static":  # the other strategies take no options
        kwargs["fusion_options"] = {"weight": model.get("static_weight", 0.5)}
    if model.get("release"):
        kwargs["release"] = task
    for key in ("logits", "positions", "unary"):  # null: the default, or the release's
        if model.get(key) is not None:
            kwargs[key] = model[key]
    if model.get("deformable_stages") is not None:
        kwargs["deformable_stages"] = tuple(model["deformable_stages"])
    if model.get("width", 1.0) != 1.0:
        kwargs["width"] = model["width"]
    return kwargs


def build_task(cfg: dict, datamodule):
    from bench.data import dataset_spec

    spec = TASKS[dataset_spec(cfg["data"]["name"]).task]
    module_name, class_name = spec.target.split(":")
    cls = getattr(importlib.import_module(f"bench.tasks.{module_name}"), class_name)
    # a paired design: the run seed initialises every layer from (seed, the layer's name)
    # (lesa.ResNet's init_seed; the detector's FPN and head follow it), so the strategies of
    # one seed start from the same weights wherever their layers coincide
    cfg = {**cfg, "model": {**cfg["model"], "init_seed": cfg["seed"]}}
    return cls.from_config(cfg, datamodule)
