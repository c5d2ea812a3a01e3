"""Experiment files: reading them, matrix expansion, --set/--only, run ids, shards.

An experiment file is YAML: `name`, `seed`, sections `data`, `model`, `optim`, `trainer`
(anything left out takes the defaults in bench/config/schema.py), a `matrix:` whose axes are
expanded as a cartesian product, an optional `sweep:` (bench/config/sweep.py) and `plugins:`
(strategies and datasets of one's own, bench/plugins.py, loaded first). Matrix axes
are either dotted config keys with a list of values (`model.fusion: [conv, dynamic]`,
`seed: [0, 1]`), or bundle axes: any other name whose values are mappings of dotted keys set
together, e.g.

    matrix:
      model.fusion: [conv, dynamic]
      task:
        - {data.name: digits}
        - {data.name: digit_scenes, model.backbone: resnet_small, optim.lr: 0.02}

Nothing here imports torch (a listed plugin may): validation and `--dry-run` stay fast.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lesa.names import did_you_mean

from bench.config.analysis import validate_analysis
from bench.config.checks import YamlFloat
from bench.config.schema import (DEFAULTS, ID_WHEN_SET, NOT_IN_ID, NOT_RUN_KEYS, TOP_LEVEL,
                                 ConfigError, check_keys, choices, get_dotted, resolve,
                                 schema_for, set_dotted, type_name)
from bench.config.sweep import leaf_keys, validate_sweep
from bench.data import DATASETS
from bench.plugins import ID_FIELDS as PLUGIN_ID_FIELDS
from bench.plugins import PluginError, activate
from bench.tasks import TASKS


def _without_nulls(value):
    # null-valued keys stay out of the id: a new optional key (default null) keeps old ids valid
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return copy.deepcopy(value)


def run_id(cfg: dict, metrics_version: int | None = None) -> str:
    """Readable prefix + a hash of the resolved config (what the run computes) and of its task's
    metric definition when that is not the first (TaskSpec.metrics_version): runs stored under
    an older definition get other ids, and are never collected with new ones. `metrics_version`
    gives the id a run had under that definition."""
    identity = _without_nulls(cfg)
    for section, key in NOT_IN_ID:
        identity.get(section, {}).pop(key, None)
    for (section, key), default in ID_WHEN_SET.items():
        if identity.get(section, {}).get(key, default) == default:
            identity.get(section, {}).pop(key, None)
    for record in (identity.get("plugins") or {}).values():  # the code, not where it lies
        for key in [k for k in record if k not in PLUGIN_ID_FIELDS]:
            record.pop(key)
    dataset = DATASETS.get(cfg["data"]["name"])
    version = metrics_version or (TASKS[dataset.task].metrics_version if dataset else 1)
    if version != 1:  # not a config key (the top-level keys are TOP_LEVEL's)
        identity["metrics_version"] = version
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
    analysis: dict = field(default_factory=dict)  # the analysis: section (bench/config/analysis.py)


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key written twice (plain YAML keeps the last one
    without a word: a second `model:` would drop the first one's keys)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
                seen[key] = seen.get(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line "
                    f"{first}); YAML would keep only the last one: merge them",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


# YAML 1.2's floats that YAML 1.1 (PyYAML) reads as strings: an exponent without a dot or
# without a sign (1e-3, 1E5, 1.0e5), a signed leading dot (-.5). Tried after PyYAML's own int
# and float patterns, so what YAML 1.1 reads as a number is read as before.
YAML12_FLOAT = "tag:lesa-bench,2026:yaml12-float"
UniqueKeyLoader.add_implicit_resolver(
    YAML12_FLOAT, re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))
UniqueKeyLoader.add_constructor(
    YAML12_FLOAT, lambda loader, node: YamlFloat(loader.construct_scalar(node)))
yaml.SafeDumper.add_representer(YamlFloat, yaml.SafeDumper.represent_float)


def parse_yaml(text: str):
    return yaml.load(text, Loader=UniqueKeyLoader)


def parse_assignment(text: str, flag: str) -> tuple[str, object]:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {flag} trainer.max_epochs=2")
    key, value = text.split("=", 1)
    try:
        parsed = parse_yaml(value) if value.strip() else ""
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(f"{flag} {text}: {err.problem}") from None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _is_section(dotted: str) -> bool:
    """A config section (a mapping of keys) in the schema of any dataset."""
    for data_name in DATASETS:
        node = schema_for(data_name)
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node:
            return True
    return False


def _flatten(key: str, value) -> list[tuple[str, object]]:
    """`--set model={fusion: sa}` -> [("model.fusion", "sa")]: a mapping set on a config section
    sets its keys (as `--set model.fusion=sa` would, a matrix axis on it included), and keeps
    the section's other keys."""
    if isinstance(value, dict) and value and _is_section(key):
        return [pair for k, v in value.items() for pair in _flatten(f"{key}.{k}", v)]
    return [(key, value)]


def _expand(base: dict, matrix: dict) -> list[tuple[dict, dict]]:
    if not isinstance(matrix, dict):
        raise ConfigError(f"matrix: expected a mapping of axis -> list of values, got "
                          f"{type_name(matrix)}")
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
        raw = parse_yaml(path.read_text())
    except yaml.constructor.ConstructorError as err:
        where = f"line {err.problem_mark.line + 1}: " if err.problem_mark else ""
        raise ConfigError(f"{path}: {where}{err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the experiment file: {err}") from None
    try:
        return experiment_from_dict(raw, path, overrides, only)
    except ConfigError as err:
        raise ConfigError(_where(str(err), path, overrides)) from None


def _where(message: str, path: Path, overrides) -> str:
    """Say where the bad value came from: the --set that set the key, else the file."""
    if message.startswith(("--", str(path))):
        return message
    key = message.replace(":", " ").split(" ", 1)[0]
    for text in overrides:
        set_key = text.split("=", 1)[0].strip()
        if key == set_key or key.startswith(f"{set_key}.") or set_key.startswith(f"{key}."):
            return f"--set {text}: {message}"
    return f"{path}: {message}"


def experiment_from_dict(raw, path: Path | None = None, overrides=(), only=()) -> Experiment:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'experiment'}: expected a mapping at the top level, got "
                          f"{type_name(raw)}")
    check_keys("", raw, TOP_LEVEL, "unknown top-level key")
    # before the matrix is resolved: the plugins' names, options and checks are the schema's
    try:
        activate(raw.get("plugins"), path.parent if path else Path.cwd())
    except PluginError as err:
        raise ConfigError(str(err)) from None
    if any(text.split("=", 1)[0].strip().split(".")[0] == "plugins" for text in overrides):
        raise ConfigError("--set plugins: list the plugins in the experiment file (`plugins:`); "
                          "each run's config records the ones it uses")
    name = raw.get("name") or (path.stem if path else None)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"name: {name!r} must be a string of letters, digits, - and _")
    base = {k: copy.deepcopy(v) for k, v in raw.items() if k not in NOT_RUN_KEYS}
    for section in ("data", "model", "optim", "trainer"):
        if section in base and not isinstance(base[section], dict):
            raise ConfigError(f"{section}: expected a mapping, got {type_name(base[section])}")
    matrix = copy.deepcopy(raw.get("matrix") or {})
    late = []  # set after the matrix: --set wins over a bundle axis that sets the same key
    for text in overrides:
        for key, value in _flatten(*parse_assignment(text, "--set")):
            if key in matrix:
                matrix[key] = [value]
            else:
                late.append((key, value, text))
    expanded = _expand(base, matrix)
    # a key of one task or dataset (model.detection.*, a dataset's data.* option) goes to the
    # runs that have it; a key no run has, to the runs that know most of it (the unknown-key
    # error then names the closest key: model.detection.head_conv -> head_convs)
    for key, value, _ in late:
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
    seen = {}
    for run in runs:
        if run.id in seen:
            raise ConfigError(_same_config(seen[run.id], run, late))
        seen[run.id] = run
    _check_seed_axis(runs, matrix)
    runs = _select(runs, only)
    sweep = raw.get("sweep")
    if sweep is not None:
        sweep = validate_sweep(sweep, runs)
    return Experiment(name, path, base, matrix, runs, sweep, raw, _analysis(raw, runs, matrix))


def _check_seed_axis(runs: list[Run], matrix: dict) -> None:
    """A seed axis over runs that all set both finer seeds (trainer.seeds) would train the
    same computation under several ids."""
    seeds = matrix.get("seed")
    finer = [(r.config["trainer"].get("seeds") or {}) for r in runs]
    if isinstance(seeds, list) and len(seeds) > 1 and finer and all(
            f.get("init") is not None and f.get("order") is not None for f in finer):
        raise ConfigError(f"matrix.seed: {seeds!r}: every run sets both trainer.seeds.init and "
                          f"trainer.seeds.order, so the run seed changes nothing a run "
                          f"computes; keep seed at one value (the finer seeds are the axes)")


def _analysis(raw: dict, runs: list[Run], matrix: dict) -> dict:
    """The validated analysis: section; its metrics are those of the experiment's tasks, its
    seed pool the matrix's seed axis."""
    tasks = list(dict.fromkeys(DATASETS[r.config["data"]["name"]].task for r in runs))
    specs = [TASKS[t] for t in tasks]
    metrics = [m.split("/", 1)[1] for spec in specs
               for m in dict.fromkeys(spec.headline + spec.metrics)]
    headline = [spec.headline[0].split("/", 1)[1] for spec in specs]
    seeds = len(matrix["seed"]) if isinstance(matrix.get("seed"), list) else 1
    out = validate_analysis(raw.get("analysis"), list(dict.fromkeys(metrics)), headline, seeds)
    finer = [axis for axis in matrix if axis.startswith("trainer.seeds")]
    if out["looks"] and finer:
        raise ConfigError(f"analysis.looks: {out['looks']}: a planned sequential design reads "
                          f"the seeds of the seed axis in its order, but {', '.join(finer)} "
                          f"draws them apart here; remove analysis.looks, or the finer seed axes")
    splits = sorted({r.config["data"]["split_seed"] for r in runs})
    if out["looks"] and "data.split_seed" in matrix and len(splits) > 1:
        raise ConfigError(
            f"analysis.looks: {out['looks']}: a planned sequential design reads the seeds of one "
            f"pool on one data split, but data.split_seed is a matrix axis here "
            f"({', '.join(map(str, splits))}), so its comparisons are two-level (splits as "
            f"blocks); remove analysis.looks (the two-level table is then read once), or fix "
            f"data.split_seed to one value (e.g. --only data.split_seed=0)")
    return out


def _same_config(first: Run, second: Run, late: list) -> str:
    """Why two runs of the matrix resolve to one config: a --set that overrides what an axis
    varies, else the experiment file's axes."""
    varied = [axis for axis in first.axes if first.axes[axis] != second.axes.get(axis)]
    keys = {k for axis in varied for k in (first.axes[axis] if isinstance(first.axes[axis], dict)
                                           else {axis: None})}
    for key, _, text in late:
        if key in keys:
            return (f"--set {text}: sets {key}, which the matrix axis {', '.join(varied)} "
                    f"varies, so its runs become one config ({first.id}); drop the --set, or "
                    f"pick runs with --only")
    return (f"matrix: two runs resolve to the same config ({first.id}); an axis repeats a value "
            f"or sets a key another axis also sets")


def _select(runs: list[Run], only) -> list[Run]:
    """--only KEY=VALUE (repeatable; values of one key are alternatives): a key no run has, or
    a value no run has, is an error naming the values there are."""
    filters: dict[str, list] = {}
    texts: dict[str, list] = {}
    for text in only:
        key, value = parse_assignment(text, "--only")
        filters.setdefault(key, []).append(value)
        texts.setdefault(key, []).append(text)
    selected = runs
    for key, values in filters.items():
        present = [value for run in runs for value in _value_of(run, key)]
        if not present:  # no run has it (a key of one dataset only matches that one's runs)
            leaves = sorted({k for run in runs for k in leaf_keys(run.config)})
            raise ConfigError(f"--only {key}: not a config key{did_you_mean(key, leaves)}; give "
                              f"a dotted key and a value, e.g. --only model.fusion=sa")
        names = list(dict.fromkeys(str(v) for v in present))
        allowed = choices().get(key)
        for value, text in zip(values, texts[key]):
            if allowed is not None and value not in allowed:
                raise ConfigError(f"--only {text}: {key}: {value!r} is not allowed"
                                  f"{did_you_mean(value, allowed)}; choose from "
                                  f"{', '.join(map(str, allowed))} (this matrix has "
                                  f"{', '.join(names)})")
            if not any(_matches(p, value) for p in present):
                raise ConfigError(f"--only {text}: no run has {key} = {value!r}"
                                  f"{did_you_mean(str(value), names)}; this matrix has "
                                  f"{', '.join(names)}")
        selected = [r for r in selected
                    if any(_matches(p, v) for p in _value_of(r, key) for v in values)]
    runs = selected
    if only and not runs:
        raise ConfigError(f"--only {' --only '.join(only)}: no run matches all of these "
                          f"together")
    return runs


def _value_of(run: Run, key: str) -> list:
    """[the run's value of a dotted key], or [] where its config has no such key."""
    try:
        return [run.get(key)]
    except (KeyError, TypeError):
        return []


def _matches(present, wanted) -> bool:
    return present == wanted or str(present) == str(wanted)




def shard(runs: list[Run], spec: str | None) -> list[Run]:
    """Deterministic split by run id hash: shard i/n keeps the runs whose hash % n == i.

    By hash rather than position, so a shard keeps its runs when the matrix grows.
    """
    if not spec:
        return runs
    error = ConfigError(f"--shard {spec!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4")
    try:
        index, count = (int(p) for p in spec.split("/"))
    except ValueError:
        raise error from None
    if not (count >= 1 and 0 <= index < count):
        raise error
    return [r for r in runs if int(r.id.rsplit("-", 1)[1], 16) % count == index]
