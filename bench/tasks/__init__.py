"""LightningModules, one per task type, looked up by the dataset's task.

Import-light (no torch here): the runner and reports read monitor metrics and report columns
from TASKS. Contract for every task class:

    class SomeTask(L.LightningModule):
        @classmethod
        def from_config(cls, cfg: dict, datamodule) -> "SomeTask"   # cfg: the resolved run config
        backbone: lesa.ResNet            # the lesa backbone (costs and shares read it)
        example_input_array: Tensor      # one input batch of size 1 (FLOPs are counted on it)

and it logs the metrics named in its TaskSpec ("val/..." during fit, "test/..." on test). It may
also define `prediction_arrays() -> dict[str, np.ndarray] | None`: its per-test-image record,
which the run saves as predictions.npz after the test (bench/train/trainer.py).

A task of one's own (a plugin, docs/plugins.md) is such a class and
`register_task(name, TaskSpec(TheClass, ...))`; TASKS is the one registry of task names.
"""
from __future__ import annotations

from dataclasses import dataclass

from lesa.names import Registry


# AI-TOD's size buckets: name -> (low, high) of sqrt(box area) in pixels
AITOD_BUCKETS = {"ap_vt": (2, 8), "ap_t": (8, 16), "ap_s": (16, 32), "ap_m": (32, 64)}


@dataclass(frozen=True)
class TaskSpec:
    target: str | type  # the class, or "module:Class" (under bench.tasks, or a dotted path)
    monitor: str  # validation metric for best checkpoints and pruning
    mode: str  # "max" or "min"
    metrics: tuple[str, ...]  # the test metrics it logs (every one in the JSON/CSV exports)
    headline: tuple[str, ...]  # the metrics with a comparison table each; the first in run lines
    options: dict | None = None  # task-specific `model.<task>.*` keys and their defaults
    buckets: dict | None = None  # size buckets it scores AP in (test/<name>)
    # what its stored numbers mean: a new definition gets a new version, which run ids hash in
    # (when not 1), so runs stored under an older definition are never mixed with new ones
    metrics_version: int = 1
    definitions: dict | None = None  # metric -> its definition (recorded in metrics.json)
    # metrics (besides every loss) that only a diverged model makes non-finite, on val and test
    finite: tuple[str, ...] = ()

    def bucket_metrics(self) -> tuple[str, ...]:
        return tuple(f"test/{name}" for name in self.buckets or {})

    def must_be_finite(self, name: str) -> bool:
        """Whether a logged "val/..." or "test/..." value that is NaN or infinite means the
        model diverged: any loss, and the task's `finite` metrics (detection's APs are NaN
        where there is nothing to score, bench/tasks/metrics.py: not listed)."""
        short = name.split("/", 1)[-1]
        return short == "loss" or short.startswith("loss_") or short in self.finite


# classification metric definitions, version 2 (version 1 stored torchmetrics' default as acc1
# and acc5: class-balanced (macro) recall)
CLASSIFICATION_METRICS = {
    "acc1": "top-1 accuracy (micro): the fraction of images whose top-scored class is the label",
    "acc5": "top-5 accuracy (micro): the fraction of images whose label is among the 5 "
            "top-scored classes; not logged with 5 classes or fewer (always 1)",
    "bal_acc": "balanced accuracy: the mean over the classes present in the split of each "
               "class's top-1 recall (equals acc1 on a balanced split)",
}

TASKS: Registry = Registry("task", TaskSpec, {
    "classification": TaskSpec("classification:ClassificationTask", "val/acc1", "max",
                               ("test/acc1", "test/acc5", "test/bal_acc"),
                               headline=("test/acc1",), metrics_version=2,
                               definitions=CLASSIFICATION_METRICS,
                               finite=("acc1", "acc5", "bal_acc")),
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
}, home="bench/tasks/__init__.py").seal()


def register_task(name: str, spec: TaskSpec) -> TaskSpec:
    """TASKS[name] = spec (a plugin's task), by lesa.names.Registry's rules."""
    return TASKS.add(name, spec, _check_spec)


def _check_spec(name: str, spec: TaskSpec) -> None:
    if spec.mode not in ("max", "min") or not spec.headline or not all(
            m in spec.metrics for m in spec.headline):
        raise ValueError(f"task {name!r}: mode must be 'max' or 'min', and headline a non-empty "
                         f"subset of metrics (its 'test/...' names)")


def unregister_task(name: str) -> None:
    """Remove a task that is not a built-in (a plugin's, when it is unloaded)."""
    TASKS.remove(name)


def _target_name(target) -> str:
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        return f"{module if '.' in module else f'{__name__}.{module}'}:{cls}"
    return f"{target.__module__}:{target.__qualname__}"


def task_spec(module) -> TaskSpec | None:
    """The TaskSpec whose target class this task module is (or derives from); None for any
    other module."""
    targets = {_target_name(spec.target): spec for spec in TASKS.values()}
    for cls in type(module).__mro__:
        spec = targets.get(f"{cls.__module__}:{cls.__qualname__}")
        if spec is not None:
            return spec
    return None


def backbone_kwargs(model: dict, task: str = "classification") -> dict:
    """`lesa.build_backbone` keyword arguments from a resolved `model` section (every task
    builds its backbone through this, so a new model key reaches all tasks). `init_seed` is
    not a config key: `build_task` sets it to the run's init seed (`run_seeds`). `task` picks
    the release preset that `model.release` selects."""
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
    if model["fusion"] == "static":  # the other built-ins take no options
        kwargs["fusion_options"] = {"weight": model.get("static_weight", 0.5)}
    elif isinstance(model.get(model["fusion"]), dict):  # a plugin's: model.<strategy>.*
        kwargs["fusion_options"] = dict(model[model["fusion"]])
    if model.get("release"):
        kwargs["release"] = task
    # null: the default, or the release's
    for key in ("logits", "positions", "unary", "norm_eval", "frozen_stages"):
        if model.get(key) is not None:
            kwargs[key] = model[key]
    if model.get("deformable_stages") is not None:
        kwargs["deformable_stages"] = tuple(model["deformable_stages"])
    if model.get("width", 1.0) != 1.0:
        kwargs["width"] = model["width"]
    return kwargs


def run_seeds(cfg: dict) -> tuple[int, int]:
    """(init, order): the seeds of a run's initialisation and of its data (batch order,
    augmentation, fresh canvases): `trainer.seeds.init` / `.order`, each the run's `seed` where
    null (or absent, as in configs stored before the key)."""
    seeds = (cfg.get("trainer") or {}).get("seeds") or {}
    return tuple(cfg["seed"] if seeds.get(k) is None else seeds[k] for k in ("init", "order"))


def build_task(cfg: dict, datamodule):
    from bench.data import dataset_spec, target_class

    spec = TASKS[dataset_spec(cfg["data"]["name"]).task]
    cls = target_class(spec.target, __name__)
    # a paired design: the init seed (trainer.seeds.init, else the run seed) initialises every
    # layer from (seed, the layer's name) (lesa.ResNet's init_seed; the detector's FPN and head
    # follow it), so the strategies of one seed start from the same weights where layers coincide
    init, _ = run_seeds(cfg)
    cfg = {**cfg, "model": {**cfg["model"], "init_seed": init}}
    return cls.from_config(cfg, datamodule)
