"""Experiment files: defaults, validation with helpful errors, matrix expansion, run ids.

An experiment file is YAML: `name`, `seed`, sections `data`, `model`, `optim`, `trainer`
(anything left out takes the defaults below), a `matrix:` whose axes are expanded as a cartesian
product, and an optional `sweep:` (see bench/sweep.py). Matrix axes are either dotted config keys
with a list of values (`model.fusion: [conv, dynamic]`, `seed: [0, 1]`), or bundle axes: any
other name whose values are mappings of dotted keys set together, e.g.

    matrix:
      model.fusion: [conv, dynamic]
      task:
        - {data.name: digits}
        - {data.name: digit_scenes, model.backbone: resnet_small, optim.lr: 0.02}

Nothing here imports torch: validation and `--dry-run` stay fast.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lesa.names import did_you_mean

from bench.data import COMMON_OPTIONS, DATASETS
from bench.tasks import TASKS


class ConfigError(ValueError):
    """A bad experiment file or override; the message names the key path, value and choices."""


FUSION_NAMES = ("conv", "sa", "binary", "unary", "softmax", "sum", "dynamic")
BACKBONE_NAMES = ("resnet_tiny", "resnet_small", "resnet26", "resnet50", "wrn50")

DEFAULTS: dict = {
    "name": None,
    "seed": 0,
    "data": dict(COMMON_OPTIONS),
    "model": {"backbone": "resnet_tiny", "fusion": "dynamic", "heads": 8, "output_stride": 32,
              "attention_stages": [3, 4], "max_size": 64, "stem": None, "window": None,
              "recompute_attention": False, "channels_last": False},
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
ID_WHEN_SET = {("model", "channels_last"): False}  # changes the gradients' rounding (README)
# numbers that Lightning accepts as int or float
INT_OR_FLOAT = {"trainer.limit_train_batches", "trainer.limit_val_batches",
                "trainer.limit_test_batches", "optim.warmup_epochs"}
POSITIVE = {"data.batch_size", "trainer.max_epochs", "trainer.devices", "model.heads",
            "optim.lr", "model.max_size"}
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


def _type_name(value) -> str:
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
        raise ConfigError(f"{path}: expected {_type_name(default)}, got {_type_name(value)} "
                          f"{value!r}")
    if path in POSITIVE and value <= 0:
        raise ConfigError(f"{path}: must be positive, got {value!r}")


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


def _without_nulls(value):
    # null-valued keys stay out of the id: a new optional key (default null) keeps old ids valid
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return copy.deepcopy(value)


def run_id(cfg: dict) -> str:
    """Readable prefix + a hash of the resolved config (what the run computes)."""
    identity = _without_nulls(cfg)
    for section, key in NOT_IN_ID:
        identity.get(section, {}).pop(key, None)
    for (section, key), default in ID_WHEN_SET.items():
        if identity.get(section, {}).get(key, default) == default:
            identity.get(section, {}).pop(key, None)
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg['model']['fusion']}-{cfg['data']['name']}-s{cfg['seed']}-{digest}"


@dataclass
class Run:
    id: str
    config: dict
    axes: dict  # the matrix values that made this run: {axis: value}

    def get(self, dotted: str):
        return get_dotted(self.config, dotted)


@dataclass
class Experiment:
    name: str
    path: Path | None
    base: dict  # the raw file without matrix/sweep, overrides applied
    matrix: dict
    runs: list[Run]
    sweep: dict | None = None
    raw: dict = field(default_factory=dict)


def parse_assignment(text: str, flag: str) -> tuple[str, object]:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {flag} trainer.max_epochs=2")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _expand(base: dict, matrix: dict) -> list[tuple[dict, dict]]:
    if not isinstance(matrix, dict):
        raise ConfigError(f"matrix: expected a mapping of axis -> list of values, got "
                          f"{_type_name(matrix)}")
    axes = []
    for axis, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"matrix.{axis}: expected a non-empty list of values, got "
                              f"{values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"matrix.{axis}: values repeat: {values!r}")
        is_key = axis == "seed" or "." in axis
        if not is_key and not all(isinstance(v, dict) for v in values):
            raise ConfigError(f"matrix.{axis}: not a dotted config key (like model.fusion), so "
                              f"its values must be mappings of dotted keys (a bundle axis)")
        axes.append((axis, values, is_key))
    combos = []
    for choice in itertools.product(*[values for _, values, _ in axes]):
        raw = copy.deepcopy(base)
        labels = {}
        for (axis, _, is_key), value in zip(axes, choice):
            updates = {axis: value} if is_key else value
            for dotted, v in updates.items():
                set_dotted(raw, str(dotted), v)
            labels[axis] = value
        combos.append((raw, labels))
    return combos


def _with_axis_errors(fn, labels: dict):
    try:
        return fn()
    except ConfigError as err:
        where = ", ".join(f"{k}={v}" for k, v in labels.items() if not isinstance(v, dict))
        raise ConfigError(f"{err} (in the matrix run {where})" if where else str(err)) from None


def _known_depth(raw_run: dict, dotted: str) -> int:
    """How many leading parts of a dotted key a run (raw, before resolve) on its dataset has:
    all of them where the key is one of its config keys."""
    schema = schema_for((raw_run.get("data") or {}).get("name", DEFAULTS["data"]["name"]))
    parts = dotted.split(".")
    for depth, key in enumerate(parts):
        if not isinstance(schema, dict) or key not in schema:
            return depth
        schema = schema[key]
    return len(parts)


def load_experiment(path: str | Path, overrides: list[str] = (), only: list[str] = ()) -> Experiment:
    """Read, validate and expand an experiment file. Raises ConfigError on any problem."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            options = [p.name for p in path.parent.glob("*.yaml")]
            hint = did_you_mean(path.name, options)
        raise ConfigError(f"experiment file {str(path)!r} not found{hint}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return experiment_from_dict(raw, path, overrides, only)
    except ConfigError as err:
        raise ConfigError(_where(str(err), path, overrides)) from None


def _where(message: str, path: Path, overrides) -> str:
    """Say where the bad value came from: the --set that set the key, else the file."""
    if message.startswith(("--", str(path))):
        return message
    key = message.split(":", 1)[0]
    for text in overrides:
        set_key = text.split("=", 1)[0].strip()
        if key == set_key or key.startswith(f"{set_key}.") or set_key.startswith(f"{key}."):
            return f"--set {text}: {message}"
    return f"{path}: {message}"


def experiment_from_dict(raw, path: Path | None = None, overrides=(), only=()) -> Experiment:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'experiment'}: expected a mapping at the top level, got "
                          f"{_type_name(raw)}")
    check_keys("", raw, TOP_LEVEL, "unknown top-level key")
    name = raw.get("name") or (path.stem if path else None)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"name: {name!r} must be a string of letters, digits, - and _")
    base = {k: copy.deepcopy(v) for k, v in raw.items()
            if k not in ("matrix", "sweep", "description", "name")}
    for section in ("data", "model", "optim", "trainer"):
        if section in base and not isinstance(base[section], dict):
            raise ConfigError(f"{section}: expected a mapping, got {_type_name(base[section])}")
    matrix = copy.deepcopy(raw.get("matrix") or {})
    late = []  # set after the matrix: --set wins over a bundle axis that sets the same key
    for text in overrides:
        key, value = parse_assignment(text, "--set")
        if key in matrix:
            matrix[key] = [value]
        else:
            late.append((key, value))
    expanded = _expand(base, matrix)
    # a key of one task or dataset (model.detection.*, a dataset's data.* option) goes to the
    # runs that have it; a key no run has, to the runs that know most of it (the unknown-key
    # error then names the closest key: model.detection.head_conv -> head_convs)
    for key, value in late:
        set_dotted(base, key, value)
        depths = [_known_depth(raw, key) for raw, _ in expanded]
        for (raw_run, _), depth in zip(expanded, depths):
            if depth == max(depths):
                set_dotted(raw_run, key, copy.deepcopy(value))
    runs = []
    for raw_run, labels in expanded:
        cfg = _with_axis_errors(lambda: resolve(raw_run), labels)
        cfg["name"] = name
        runs.append(Run(run_id(cfg), cfg, labels))
    filters: dict[str, list] = {}
    for text in only:
        key, value = parse_assignment(text, "--only")
        filters.setdefault(key, []).append(value)
    for key, values in filters.items():
        try:
            for run in runs:
                run.get(key)
        except (KeyError, TypeError):
            raise ConfigError(f"--only {key}: not a config key; give a dotted key and a value, "
                              f"e.g. --only model.fusion=sa") from None
        runs = [r for r in runs if r.get(key) in values or str(r.get(key)) in map(str, values)]
    seen = {}
    for run in runs:
        if run.id in seen:
            raise ConfigError(f"matrix: two runs resolve to the same config ({run.id}); an axis "
                              f"repeats a value or sets a key another axis also sets")
        seen[run.id] = run
    sweep = raw.get("sweep")
    if sweep is not None:
        from bench.config.sweep import validate_sweep  # the sweep section's own schema

        sweep = validate_sweep(sweep, runs)
    return Experiment(name, path, base, matrix, runs, sweep, raw)


def shard(runs: list[Run], spec: str | None) -> list[Run]:
    """Deterministic split by run id hash: shard i/n keeps the runs whose hash % n == i.

    By hash rather than position, so a shard keeps its runs when the matrix grows.
    """
    if not spec:
        return runs
    try:
        index, count = (int(p) for p in spec.split("/"))
        assert count >= 1 and 0 <= index < count
    except (ValueError, AssertionError):
        raise ConfigError(f"--shard {spec!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4")
    return [r for r in runs if int(r.id.rsplit("-", 1)[1], 16) % count == index]
