"""The config schema: defaults, allowed values, validation of one run's config.

`resolve` turns a raw run config (a nested dict) into the full, validated one; errors name the
key path, the bad value and what is allowed. Nothing here imports torch.
"""
from __future__ import annotations

import copy
import sys

from lesa.names import builtin_backbones, builtin_fusions, did_you_mean

from bench.config.checks import (NULLABLE, PRECISIONS, meaning_error, nullable_type_error, plain,
                                 range_error)
from bench.config.loggers import logger_error
from bench.data import COMMON_OPTIONS, DATASETS, DataError, check_options
from bench.plugins import identity as plugin_identity
from bench.tasks import TASKS


class ConfigError(ValueError):
    """A bad experiment file or override; the message names the key path, value and choices."""




def fusion_names() -> tuple[str, ...]:
    """The strategies a config may name: `lesa.FUSIONS` (the built-ins and any a plugin
    registered), read from lesa/fusion.py's registrations while nothing imported it (no torch)."""
    fusion = sys.modules.get("lesa.fusion")
    return tuple(fusion.FUSIONS) if fusion is not None else builtin_fusions()


def backbone_names() -> tuple[str, ...]:
    """The backbones a config may name: `lesa.ARCHS`, read the same way."""
    backbone = sys.modules.get("lesa.backbone")
    return tuple(backbone.ARCHS) if backbone is not None else builtin_backbones()


def strategy_options() -> dict[str, dict]:
    """{strategy: its options and defaults} of the registered strategies that declare options
    (`Fusion.options`, a plugin's), each a `model.<strategy>` section of the runs that use it;
    none while lesa is not imported (the built-ins declare none)."""
    fusion = sys.modules.get("lesa.fusion")
    found = {name: dict(cls.options) for name, cls in (fusion.FUSIONS.items() if fusion else ())
             if getattr(cls, "options", None)}
    for name in found:
        if name in DEFAULTS["model"] or name in TASKS:
            raise ConfigError(f"strategy {name!r} declares options, which configs set as "
                              f"model.{name}.*, but model.{name} is taken (a model key or a "
                              f"task's section): register the strategy under another name")
    return found


def _check_strategy_options(cfg: dict) -> None:
    """Keep the options section of the run's own strategy only, and run its check."""
    model = cfg["model"]
    for name in strategy_options():
        if name != model["fusion"]:
            model.pop(name, None)
    options = model.get(model["fusion"])
    if not isinstance(options, dict) or model["fusion"] in TASKS:
        return
    try:
        sys.modules["lesa.fusion"].FUSIONS[model["fusion"]].check_options(dict(options))
    except ValueError as err:
        text = str(err)
        where = "" if text.startswith(f"model.{model['fusion']}") else f"model.{model['fusion']}: "
        raise ConfigError(f"{where}{text}") from None


DEFAULTS: dict = {
    "name": None,
    "seed": 0,
    "data": dict(COMMON_OPTIONS),
    "model": {"backbone": "resnet_tiny", "fusion": "dynamic", "heads": 8, "output_stride": 32,
              "attention_stages": [3, 4], "max_size": 64, "stem": None, "window": None,
              "recompute_attention": False, "channels_last": False,
              "static_weight": 0.5,  # c of `static` (U + c * B)
              # the released code's choices (docs/library.md): `release` selects the task's
              # preset; the four option keys (null: the default, or the preset's) win over it
              "release": False, "logits": None, "positions": None, "unary": None,
              "deformable_stages": None, "width": 1.0,  # width: bottleneck width multiplier
              # mmdetection's training options (null: the preset's, else off)
              "norm_eval": None, "frozen_stages": None},
    "optim": {"name": "sgd", "lr": 0.1, "lr_batch": None, "momentum": 0.9, "nesterov": True,
              "weight_decay": 5e-4, "warmup_epochs": 1.0, "label_smoothing": 0.0},
    "trainer": {"max_epochs": 10, "accelerator": "cpu", "devices": 1, "strategy": "auto",
                "num_nodes": 1, "precision": "32-true", "limit_train_batches": 1.0,
                "limit_val_batches": 1.0, "limit_test_batches": 1.0,
                "gradient_clip_val": None, "accumulate_grad_batches": 1,
                "check_val_every_n_epoch": 1, "log_every_n_steps": 10,
                "checkpoint_every_n_steps": 200,
                "loggers": ["csv"], "mlflow_uri": None,  # bench/config/loggers.py
                # finer seeds (docs/statistics.md): null = the run's `seed`; set apart, init
                # seeds the weights and order the data (batch order, augmentation, canvases)
                "seeds": {"init": None, "order": None}},
}

FIXED_CHOICES = {
    "optim.name": ("sgd", "adamw"),
    "model.output_stride": (16, 32),
    "model.stem": (None, "imagenet", "small", "cifar"),
    "model.logits": (None, "scaled", "batchnorm"),
    "model.positions": (None, "relative2d", "raster"),
    "model.unary": (None, "grouped", "deformable"),
    "trainer.accelerator": ("cpu", "gpu", "cuda", "mps", "auto"),
    "trainer.precision": PRECISIONS,
}


def choices() -> dict[str, tuple]:
    """The allowed values of the keys that take a name, each from its registry."""
    return {"model.fusion": fusion_names(), "model.backbone": backbone_names(),
            "data.name": tuple(DATASETS), **FIXED_CHOICES}
# keys that do not change what a run computes, so they stay out of its id
NOT_IN_ID = {("data", "num_workers"), ("trainer", "log_every_n_steps"),
             ("model", "recompute_attention"),  # the same weights rebuilt: memory, not results
             ("trainer", "checkpoint_every_n_steps"),
             ("trainer", "loggers"), ("trainer", "mlflow_uri")}  # where it is logged, not what
# keys added after runs were stored: in the id only when set away from this (their default)
# value, so the runs stored before them keep their ids
ID_WHEN_SET = {("model", "channels_last"): False,  # changes the gradients' rounding
               ("model", "static_weight"): 0.5, ("model", "release"): False,
               ("model", "width"): 1.0,
               # off: what every run computed before these keys (null is out of the id too)
               ("model", "norm_eval"): False, ("model", "frozen_stages"): -1,
               ("trainer", "seeds"): {}}  # both null: the run's seed, as before the key
# numbers that Lightning accepts as int or float
INT_OR_FLOAT = {"trainer.limit_train_batches", "trainer.limit_val_batches",
                "trainer.limit_test_batches", "optim.warmup_epochs"}
TOP_LEVEL = ("name", "seed", "data", "model", "optim", "trainer", "matrix", "sweep",
             "description", "analysis", "plugins")
# top-level keys about the experiment, not any one run's config (a run's config records the
# plugins it uses itself: `plugins` below)
NOT_RUN_KEYS = ("name", "matrix", "sweep", "description", "analysis", "plugins")


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
    schema["model"].update(copy.deepcopy(strategy_options()))
    return schema


def _check_value(path: str, value, default) -> None:
    allowed = choices().get(path)
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{path}: {value!r} is not allowed{did_you_mean(value, allowed)}; "
                          f"choose from {_allowed(allowed)}")
    if default is None:
        error = nullable_type_error(path, value) or range_error(path, value)
        if error:
            raise ConfigError(error)
        return
    ok = type(value) is type(default)
    if isinstance(default, float) or path in INT_OR_FLOAT:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, dict):
        ok = isinstance(value, dict)
    if not ok:
        raise ConfigError(f"{path}: expected {type_name(default)}, got {type_name(value)} "
                          f"{value!r}{_quoted_number(value, default)}")
    error = range_error(path, value, integer=type(default) is int)
    if error:
        raise ConfigError(error)


def _takes_string(path: str, default) -> bool:
    """A key whose value is a string (a name, a path): 1e3 written there is the text "1e3"."""
    allowed = choices().get(path)
    return (isinstance(default, str) or NULLABLE.get(path) is str
            or allowed is not None and any(isinstance(a, str) for a in allowed))


def _quoted_number(value, default) -> str:
    """The hint for a number written in quotes ("1e-3") where a number belongs."""
    if not isinstance(value, str) or isinstance(default, (bool, str)):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return "; in quotes it is text: write the number without quotes"


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
            value = plain(value, _takes_string(path, default))
            _check_value(path, value, default)
            base[key] = copy.deepcopy(value)


def set_dotted(cfg: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    target = cfg
    for key in keys[:-1]:
        if not isinstance(target, dict):
            break
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    if not isinstance(target, dict):
        raise ConfigError(f"{dotted}: {'.'.join(keys[:-1])} is not a section")
    target[keys[-1]] = value


def get_dotted(cfg: dict, dotted: str):
    value = cfg
    for key in dotted.split("."):
        value = value[key]
    return value


def resolve(raw: dict) -> dict:
    """Defaults + raw (a nested dict without matrix/sweep), validated: the resolved run config.
    Its `plugins` entry (bench/plugins.py) is made here, from the registries: the plugins whose
    items the run uses, with their source's sha256 (a stored config's entry is replaced)."""
    raw = {key: value for key, value in raw.items() if key != "plugins"}
    for section in ("data", "model", "optim", "trainer"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: expected a mapping, got {type_name(raw[section])} "
                              f"{raw[section]!r}")
    data_name = plain((raw.get("data") or {}).get("name", DEFAULTS["data"]["name"]), True)
    _check_value("data.name", data_name, "")
    schema = schema_for(data_name)
    cfg = copy.deepcopy(schema)
    _merge(cfg, raw, schema, "")
    try:
        check_options(cfg["data"])
    except DataError as err:
        raise ConfigError(str(err)) from None
    stages = cfg["model"]["attention_stages"]
    if not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 4 for s in stages):
        raise ConfigError(f"model.attention_stages: {stages!r}: stages are numbered 1-4")
    window = cfg["model"]["window"]
    sizes = window.values() if isinstance(window, dict) else [window]
    if not all(w is None or isinstance(w, int) and not isinstance(w, bool) and w > 0
               for w in sizes) or isinstance(window, dict) and not all(
                   str(k) in "1234" and len(str(k)) == 1 for k in window):
        raise ConfigError(f"model.window: {window!r}: expected null (global attention), a "
                          f"window size like 8, or per stage like {{3: null, 4: 8}}")
    deformable = cfg["model"]["deformable_stages"]
    if deformable is not None and not (isinstance(deformable, list) and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 4 for s in deformable)):
        raise ConfigError(f"model.deformable_stages: {deformable!r}: expected null or a list of "
                          f"stages numbered 1-4, like [2, 3, 4]")
    _training_options(cfg["model"], DATASETS[data_name].task)
    _check_strategy_options(cfg)
    error = meaning_error(cfg) or logger_error(cfg["trainer"])
    if error:
        raise ConfigError(error)
    used = plugin_identity(cfg)
    if used:
        cfg["plugins"] = used
    return cfg


# the detection release's training options (lesa.RELEASE["detection"], tested equal); written
# into a release run's config, so its id says them (ids stored without them stay valid: null)
DETECTION_RELEASE_TRAINING = {"norm_eval": True, "frozen_stages": 1}


def _training_options(model: dict, task: str) -> None:
    """Check model.norm_eval and model.frozen_stages; a detection release run takes the
    release's values for those left null."""
    frozen, norm_eval = model["frozen_stages"], model["norm_eval"]
    if frozen is not None and (isinstance(frozen, bool) or frozen not in (-1, 0, 1, 2, 3, 4)):
        raise ConfigError(f"model.frozen_stages: {frozen!r}: expected null (the release "
                          f"preset's, else -1), -1 (train every stage) or 0-4 (freeze the stem "
                          f"and stages 1..k)")
    if norm_eval is not None and not isinstance(norm_eval, bool):
        raise ConfigError(f"model.norm_eval: {norm_eval!r}: expected null (the release "
                          f"preset's, else false), true or false")
    if model["release"] and task == "detection":
        for key, value in DETECTION_RELEASE_TRAINING.items():
            if model[key] is None:
                model[key] = value
