"""What a config value must be beyond its type: numeric ranges, the types of keys whose default
is null, and the checks across keys (what makes no sense for an optimiser, a trainer, a model).

schema.py runs these on every run config at load time, so `--dry-run` refuses what training
would refuse later. Each function returns an error message (key path, value, what is allowed)
or None; schema.py raises it. Nothing here imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SEED_MAX = 2**32 - 1  # numpy and Lightning take unsigned 32-bit seeds


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is excluded
    open_high: bool = False
    why: str = ""

    def __contains__(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def text(self, integer: bool) -> str:
        if self.low == 0 and self.open_low and self.high is None:
            return "positive"
        kind = "an integer" if integer else "a number"
        parts = [f"{'>' if self.open_low else '>='} {self.low}"] if self.low is not None else []
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {self.high}")
        return f"{kind} {' and '.join(parts)}" + (f" ({self.why})" if self.why else "")


POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
_SEED = Range(0, SEED_MAX, why="seeds are unsigned 32-bit numbers")

RANGES = {
    "seed": _SEED, "data.split_seed": _SEED, "trainer.seeds.init": _SEED,
    "trainer.seeds.order": _SEED,
    "data.batch_size": POSITIVE, "data.num_workers": NON_NEGATIVE, "data.image_size": POSITIVE,
    "model.heads": POSITIVE, "model.max_size": POSITIVE, "model.static_weight": NON_NEGATIVE,
    "model.width": POSITIVE,
    "optim.lr": POSITIVE, "optim.lr_batch": POSITIVE, "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": Range(0, 1, open_high=True), "optim.warmup_epochs": NON_NEGATIVE,
    "optim.label_smoothing": Range(0, 1, open_high=True),
    "trainer.max_epochs": POSITIVE, "trainer.devices": POSITIVE, "trainer.num_nodes": POSITIVE,
    "trainer.limit_train_batches": POSITIVE, "trainer.limit_val_batches": POSITIVE,
    "trainer.limit_test_batches": POSITIVE, "trainer.gradient_clip_val": POSITIVE,
    "trainer.accumulate_grad_batches": POSITIVE, "trainer.check_val_every_n_epoch": POSITIVE,
    "trainer.log_every_n_steps": POSITIVE,
    "trainer.checkpoint_every_n_steps": Range(0, why="0 = only at epoch ends"),
    "model.detection.fpn_channels": Range(32), "model.detection.head_convs": NON_NEGATIVE,
    "model.detection.center_sampling_radius": POSITIVE,
    "model.detection.score_thresh": PROBABILITY, "model.detection.nms_thresh": PROBABILITY,
    "model.detection.detections_per_img": POSITIVE, "model.detection.topk_candidates": POSITIVE,
    "model.detection.min_size": Range(32), "model.detection.max_size": Range(32),
}
# keys whose default is null: the type a value must have when it is set
NULLABLE = {"data.root": str, "optim.lr_batch": int, "trainer.gradient_clip_val": float,
            "model.detection.min_size": int, "model.detection.max_size": int,
            "data.test.images": str, "data.test.annotations": str,
            "trainer.seeds.init": int, "trainer.seeds.order": int}
# a fraction of the batches (float) or a count of them (int)
BATCH_LIMITS = ("trainer.limit_train_batches", "trainer.limit_val_batches",
                "trainer.limit_test_batches")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")


class YamlFloat(float):
    """A number YAML 1.2 reads as a float where PyYAML (YAML 1.1) reads a string: 1e-3, 1E5,
    1.0e5, -.5 (bench/config/experiment.py's loader). It keeps the text as written, which a key
    that takes a string gets back (data.root: 1e3 stays "1e3"); `plain` turns it into either."""

    __slots__ = ("text",)

    def __new__(cls, text: str):
        number = super().__new__(cls, float(text))
        number.text = text
        return number

    def __reduce__(self):
        return YamlFloat, (self.text,)


def plain(value, takes_string: bool = False):
    """`value` with every YamlFloat in it a float, or its text where `takes_string` (a key whose
    value is a string, such as a path or a name)."""
    if isinstance(value, YamlFloat):
        return value.text if takes_string else float(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def nullable_type_error(path: str, value) -> str | None:
    kind = NULLABLE.get(path)
    if kind is None or value is None:
        return None
    ok = _is_number(value) if kind is float else type(value) is kind
    if not ok:
        names = {str: "a string (a path)", int: "an integer", float: "a number"}
        return f"{path}: expected null or {names[kind]}, got {value!r}"
    return None


def range_error(path: str, value, integer: bool | None = None) -> str | None:
    """The value of a key of the right type out of its range (or not finite); `integer`: the
    key holds integers (else: the value's own type says)."""
    if not _is_number(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path}: must be a finite number, got {value!r}"
    allowed = RANGES.get(path)
    if allowed is not None and value not in allowed:
        integer = isinstance(value, int) if integer is None else integer
        return f"{path}: must be {allowed.text(integer)}, got {value!r}"
    if path in BATCH_LIMITS and isinstance(value, float) and value > 1:
        return (f"{path}: {value!r}: a float is the fraction of the batches (at most 1.0); "
                f"give a whole number of batches as an integer")
    return None


def meaning_error(cfg: dict) -> str | None:
    """Checks across keys of a resolved run config."""
    model, trainer = cfg["model"], cfg["trainer"]
    stages = model["attention_stages"]
    if len(set(map(repr, stages))) != len(stages):
        return f"model.attention_stages: {stages!r}: a stage is listed twice"
    if not stages and model["fusion"] != "conv":
        return (f"model.attention_stages: [] with model.fusion: {model['fusion']} would build a "
                f"network without a single LESA module; list the stages that attend (1-4, "
                f"e.g. [3, 4]) or use model.fusion: conv")
    if trainer["accelerator"] == "cpu" and trainer["precision"] in ("16-mixed", "16-true"):
        return (f"trainer.precision: {trainer['precision']!r} is not supported on the CPU "
                f"(trainer.accelerator: cpu); use bf16-mixed or 32-true there")
    if trainer["check_val_every_n_epoch"] > trainer["max_epochs"]:
        return (f"trainer.check_val_every_n_epoch: {trainer['check_val_every_n_epoch']} is more "
                f"than trainer.max_epochs ({trainer['max_epochs']}), so validation (which picks "
                f"the best checkpoint) would never run; lower it")
    detection = model.get("detection") or {}
    channels = detection.get("fpn_channels")
    if isinstance(channels, int) and channels % 32:
        return (f"model.detection.fpn_channels: must be a multiple of 32 (the FCOS head uses "
                f"GroupNorm with 32 groups), got {channels!r}")
    sizes = detection.get("anchor_sizes")
    if "anchor_sizes" in detection and not (
            isinstance(sizes, list) and len(sizes) == 4
            and all(_is_number(s) and math.isfinite(s) and s > 0 for s in sizes)):
        return (f"model.detection.anchor_sizes: must be 4 positive sizes in pixels, one per FPN "
                f"level P2-P5, got {sizes!r}")
    return None

