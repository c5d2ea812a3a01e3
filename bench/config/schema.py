"""The config schema: defaults, allowed values, validation of one run's config.

`resolve` turns a raw run config (a nested dict) into the full, validated one; errors name the
key path, the bad value and what is allowed. Nothing here imports torch.
"""
from __future__ import annotations

import copy

from lesa.names import did_you_mean

from bench.data import COMMON_OPTIONS, DATASETS
from bench.tasks import TASKS


class ConfigError(ValueError):
    """A bad experiment file or override; the message names the key path, value and choices."""


# the last two are controls for `dynamic` (docs/library.md)
FUSION_NAMES = ("conv", "sa", "binary", "unary", "softmax", "sum", "dynamic", "static",
                "dynamic_frozen")
BACKBONE_NAMES = ("resnet_tiny", "resnet_small", "resnet26", "resnet50", "wrn50")

DEFAULTS: dict = {
    "name": None,
    "seed": 0,
    "data": dict(COMMON_OPTIONS),
    "model": {"backbone": "resnet_tiny", "fusion": "dynamic", "heads": 8, "output_stride": 32,
              "attention_stages": [3, 4], "max_size": 64, "stem": None, "window": None,
              "recompute_attention": False, "channels_last": False,
              "static_weight": 0.5},  # c of `static` (U + c * B)
    "optim": {"name": "sgd", "lr": 0.1, "lr_batch": None, "momentum": 0.9, "nesterov": True,
              "weight_decay": 5e-4, "warmup_epochs": 1.0, "label_smoothing": 0.0},
    "trainer": {"max_epochs": 10, "accelerator": "cpu", "devices": 1, "strategy": "auto",
                "num_nodes": 1, "precision": "32-true", "limit_train_batches": 1.0,
                "limit_val_batches": 1.0, "limit_test_batches": 1.0,
                "gradient_clip_val": None, "accumulate_grad_batches": 1,
                "check_val_every_n_epoch": 1, "log_every_n_steps": 10,
                "checkpoint_every_n_steps": 200},
}

CHOICES = {
    "model.fusion": FUSION_NAMES,
    "model.backbone": BACKBONE_NAMES,
    "data.name": tuple(DATASETS),
    "optim.name": ("sgd", "adamw"),
    "model.output_stride": (16, 32),
    "model.stem": (None, "imagenet", "small", "cifar"),
    "trainer.accelerator": ("cpu", "gpu", "cuda", "mps", "auto"),
}
# keys that do not change what a run computes, so they stay out of its id
NOT_IN_ID = {("data", "num_workers"), ("trainer", "log_every_n_steps"),
             ("model", "recompute_attention"),  # the same weights rebuilt: memory, not results
             ("trainer", "checkpoint_every_n_steps")}
# keys added after runs were stored: in the id only when set away from this (their default)
# value, so the runs stored before them keep their ids
ID_WHEN_SET = {("model", "channels_last"): False,  # changes the gradients' rounding
               ("model", "static_weight"): 0.5}
# numbers that Lightning accepts as int or float
INT_OR_FLOAT = {"trainer.limit_train_batches", "trainer.limit_val_batches",
                "trainer.limit_test_batches", "optim.warmup_epochs"}
POSITIVE = {"data.batch_size", "trainer.max_epochs", "trainer.devices", "model.heads",
            "optim.lr", "model.max_size"}
NON_NEGATIVE = {"data.split_seed", "model.static_weight"}
TOP_LEVEL = ("name", "seed", "data", "model", "optim", "trainer", "matrix", "sweep",
             "description")


def _allowed(options) -> str:
    return ", ".join(str(o) for o in options)


def check_keys(where: str, mapping: dict, allowed, what: str = "unknown key") -> None:
    """ConfigError naming the first key of `mapping` not in `allowed` ("<where>.<key>"), with a
    did-you-mean and the allowed keys."""
    for key in mapping:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{path}: {what}{did_you_mean(key, allowed)}; allowed: "
                              f"{_allowed(allowed)}")


def type_name(value) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def schema_for(data_name: str) -> dict:
    """The full defaults for runs on this dataset (dataset- and task-specific keys included)."""
    schema = copy.deepcopy(DEFAULTS)
    spec = DATASETS.get(data_name)
    if spec is not None:
        schema["data"].update(copy.deepcopy(spec.options))
        options = TASKS[spec.task].options
        if options:
            schema["model"][spec.task] = copy.deepcopy(options)
    return schema


def _check_value(path: str, value, default) -> None:
    if path in CHOICES and value not in CHOICES[path]:
        raise ConfigError(f"{path}: {value!r} is not allowed{did_you_mean(value, CHOICES[path])}; "
                          f"choose from {_allowed(CHOICES[path])}")
    if default is None or value is None and default is None:
        return
    ok = type(value) is type(default)
    if isinstance(default, float) or path in INT_OR_FLOAT:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, dict):
        ok = isinstance(value, dict)
    if not ok:
        raise ConfigError(f"{path}: expected {type_name(default)}, got {type_name(value)} "
                          f"{value!r}")
    if path in POSITIVE and value <= 0:
        raise ConfigError(f"{path}: must be positive, got {value!r}")
    if path in NON_NEGATIVE and value < 0:
        kind = "a number" if isinstance(default, float) else "an integer"
        raise ConfigError(f"{path}: must be {kind} >= 0, got {value!r}")


def _merge(base: dict, update: dict, schema: dict, prefix: str) -> None:
    """Merge update into base, validating each key against schema."""
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"{path}: unknown key{did_you_mean(key, schema)}; allowed here: "
                              f"{_allowed(schema)}")
        default = schema[key]
        if isinstance(default, dict) and isinstance(value, dict) and default:
            _merge(base[key], value, default, f"{path}.")
        else:
            _check_value(path, value, default)
            base[key] = copy.deepcopy(value)


def set_dotted(cfg: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    target = cfg
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    target[keys[-1]] = value


def get_dotted(cfg: dict, dotted: str):
    value = cfg
    for key in dotted.split("."):
        value = value[key]
    return value


def resolve(raw: dict) -> dict:
    """Defaults + raw (a nested dict without matrix/sweep), validated: the resolved run config."""
    data_name = (raw.get("data") or {}).get("name", DEFAULTS["data"]["name"])
    _check_value("data.name", data_name, "")
    schema = schema_for(data_name)
    cfg = copy.deepcopy(schema)
    _merge(cfg, raw, schema, "")
    stages = cfg["model"]["attention_stages"]
    if not all(isinstance(s, int) and 1 <= s <= 4 for s in stages):
        raise ConfigError(f"model.attention_stages: {stages!r}: stages are numbered 1-4")
    window = cfg["model"]["window"]
    sizes = window.values() if isinstance(window, dict) else [window]
    if not all(w is None or isinstance(w, int) and not isinstance(w, bool) and w > 0
               for w in sizes) or isinstance(window, dict) and not all(
                   str(k) in "1234" and len(str(k)) == 1 for k in window):
        raise ConfigError(f"model.window: {window!r}: expected null (global attention), a "
                          f"window size like 8, or per stage like {{3: null, 4: 8}}")
    return cfg
