"""The `sweep:` section of an experiment file: parsing and validation, the parameter specs.

validate_sweep checks the section against the experiment's runs and returns it normalised (the
config loader calls it); _param_spec turns one search-space entry into a normalised spec,
grid_values and grid_size give what the grid sampler visits, and with_params applies a trial's
sampled parameters to a run config. The studies and trials themselves are in bench/sweep/; the
user's guide is docs/sweeps.md.

No torch or optuna here: loading an experiment file only needs the schema.
"""
from __future__ import annotations

import copy
import json
import math

from bench.config.schema import ConfigError, check_keys, get_dotted, resolve, set_dotted
from bench.data import DATASETS
from bench.tasks import TASKS
from lesa.names import did_you_mean

SWEEP_KEYS = ("params", "trials", "budget", "metric", "direction", "sampler", "pruner",
              "enqueue", "storage")
BUDGET_KEYS = ("trials", "hours")  # per study; with both, whichever is reached first
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices")
PARAM_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("maximize", "minimize")
# options passed to the Optuna class, with their types ("auto": HyperbandPruner's max_resource)
SAMPLERS = {"tpe": {"seed": int, "n_startup_trials": int, "multivariate": bool,
                    "constant_liar": bool},
            "random": {"seed": int},
            "grid": {"seed": int}}
PRUNERS = {"median": {"n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int,
                      "n_min_trials": int},
           "hyperband": {"min_resource": int, "max_resource": (int, "auto"),
                         "reduction_factor": int},
           "none": {}}
DEFAULT_TRIALS = 20


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def leaf_keys(cfg: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a nested config ("model.fusion", ...), as --set and axes write them."""
    keys = []
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _named_options(value, where: str, table: dict, default: str) -> dict:
    """`sampler: tpe` or `sampler: {name: tpe, seed: 1}` -> {"name": "tpe", "seed": 1}."""
    if value is None:
        value = "none" if where == "sweep.pruner" else default
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a name ({', '.join(table)}) or a mapping with "
                          f"`name:` and options, got {value!r}")
    options = dict(value)
    name = options.pop("name", default)
    if name not in table:
        raise ConfigError(f"{where}.name: {name!r} is not allowed{did_you_mean(name, table)}; "
                          f"choose from {', '.join(table)}")
    allowed = table[name]
    for key, option in options.items():
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: not an option of the {name} {where.split('.')[1]}"
                              f"{did_you_mean(key, allowed)}; allowed: "
                              f"{', '.join(allowed) or 'none'}")
        kinds = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        ok = any(option == k if isinstance(k, str) else
                 (type(option) is k if k is bool else isinstance(option, k)
                  and not isinstance(option, bool)) for k in kinds)
        if not ok:
            names = " or ".join(repr(k) if isinstance(k, str) else k.__name__ for k in kinds)
            raise ConfigError(f"{where}.{key}: expected {names}, got {option!r}")
    return {"name": name, **options}


def _param_spec(key: str, spec, base_value) -> dict:
    """One search-space entry, normalised to {"type", "low", "high", "log", "step"|"choices"}."""
    where = f"sweep.params.{key}"
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a list of choices or a mapping with low/high "
                          f"(float or int) or choices, got {spec!r}")
    check_keys(where, spec, PARAM_KEYS)
    kind = spec.get("type")
    if kind is None:  # inferred: choices, or ints on an int key, else float
        if "choices" in spec:
            kind = "categorical"
        elif all(isinstance(spec.get(b), int) and not isinstance(spec.get(b), bool)
                 for b in ("low", "high")) and isinstance(base_value, int) \
                and not isinstance(base_value, bool):
            kind = "int"
        else:
            kind = "float"
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not allowed{did_you_mean(kind, PARAM_TYPES)}; "
                          f"choose from {', '.join(PARAM_TYPES)}")
    if kind == "categorical":
        choices = spec.get("choices")
        extra = set(spec) - {"type", "choices"}
        if extra:
            raise ConfigError(f"{where}: a categorical parameter takes only `choices`, not "
                              f"{', '.join(sorted(extra))}")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        for choice in choices:
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise ConfigError(f"{where}.choices: {choice!r}: choices must be numbers, "
                                  f"strings, booleans or null (Optuna stores nothing else)")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}.choices: values repeat: {choices!r}")
        return {"type": kind, "choices": list(choices)}
    if "choices" in spec:
        raise ConfigError(f"{where}: `choices` belongs to a categorical parameter, not {kind}")
    low, high = spec.get("low"), spec.get("high")
    for bound, value in (("low", low), ("high", high)):
        if not _is_number(value) or (kind == "int" and not isinstance(value, int)):
            wanted = "an int" if kind == "int" else "a number"
            raise ConfigError(f"{where}.{bound}: expected {wanted}, got {value!r}")
    if not low <= high:
        raise ConfigError(f"{where}: low ({low!r}) must not be above high ({high!r})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-uniform range needs low > 0, got {low!r}")
    step = spec.get("step")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: `step` and `log: true` cannot be combined")
        if not _is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            wanted = "int" if kind == "int" else "number"
            raise ConfigError(f"{where}.step: expected a positive {wanted}, got {step!r}")
    if kind == "int" and step is None:
        step = 1
    if kind == "float":
        low, high = float(low), float(high)
    return {"type": kind, "low": low, "high": high, "log": log, "step": step}


def grid_values(spec: dict) -> list:
    """The values a grid sampler visits for one parameter."""
    if spec["type"] == "categorical":
        return list(spec["choices"])
    if spec["step"] is None:
        return []
    count = int(math.floor((spec["high"] - spec["low"]) / spec["step"] + 1e-9)) + 1
    values = [spec["low"] + i * spec["step"] for i in range(count)]
    return values if spec["type"] == "int" else [round(v, 12) for v in values]


def grid_size(sweep: dict) -> int:
    size = 1
    for spec in sweep["params"].values():
        size *= len(grid_values(spec))
    return size


def _contains(spec: dict, value) -> bool:
    if spec["type"] == "categorical":
        return any(json.dumps(value) == json.dumps(c) for c in spec["choices"])
    if not _is_number(value) or (spec["type"] == "int" and not isinstance(value, int)):
        return False
    return spec["low"] <= value <= spec["high"]


def _probe_values(spec: dict) -> list:
    return spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]


def validate_sweep(sweep, runs: list) -> dict:
    """Check an experiment's `sweep:` section against its runs (bench.config.Run); returns it
    normalised.

    Raises ConfigError naming the key path, the value and what is allowed. Every value the space
    can produce at its bounds (every choice) is resolved against every cell's config, so a
    wrong type or an impossible value stops here, before any trial.
    """
    if not isinstance(sweep, dict):
        raise ConfigError(f"sweep: expected a mapping with params, trials, sampler, pruner, got "
                          f"{sweep!r}")
    check_keys("sweep", sweep, SWEEP_KEYS)
    params = sweep.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError("sweep.params: expected a mapping of dotted config keys to their range, "
                          "e.g. {optim.lr: {low: 0.01, high: 0.5, log: true}}")
    budget = sweep_budget(sweep)
    trials = budget.get("trials")
    axes = set()
    for run in runs:
        for axis, value in run.axes.items():
            axes |= set(value) if isinstance(value, dict) else {axis}
    examples = {}  # one config per dataset: their keys differ (model.detection.*, data.*)
    for run in runs:
        examples.setdefault(run.config["data"]["name"], run.config)
    space = {}
    for key, spec in params.items():
        key = str(key)
        if key in ("seed", "name"):
            raise ConfigError(f"sweep.params.{key}: not tunable; each study trains on the "
                              f"matrix's first seed")
        if key in axes:
            raise ConfigError(f"sweep.params.{key}: is a matrix axis (one study per value); "
                              f"remove it from the sweep or from the matrix")
        base_value = None
        for dataset, example in examples.items():
            leaves = leaf_keys(example)
            if key not in leaves:
                section = any(k.startswith(f"{key}.") for k in leaves)
                what = ("a section, not a key" if section else
                        f"not a config key{did_you_mean(key, leaves)}")
                where = f" (of the {dataset} runs)" if len(examples) > 1 else ""
                raise ConfigError(f"sweep.params.{key}: {what}{where}")
            base_value = get_dotted(example, key)
        space[key] = _param_spec(key, spec, base_value)
    metric, direction = sweep.get("metric"), sweep.get("direction")
    monitors = {(TASKS[DATASETS[r.config["data"]["name"]].task].monitor,
                 TASKS[DATASETS[r.config["data"]["name"]].task].mode) for r in runs}
    if metric is not None:
        allowed = sorted({m for m, _ in monitors})
        if not isinstance(metric, str) or (allowed and [metric] != allowed):
            hint = (f"; the objective is the best value of the task's checkpoint metric: "
                    f"{', '.join(allowed)}" if len(allowed) == 1 else
                    "; this matrix mixes tasks, so leave it out (each study uses its task's "
                    f"checkpoint metric: {', '.join(allowed)})")
            raise ConfigError(f"sweep.metric: {metric!r} is not allowed{hint}")
    if direction is not None:
        if direction not in DIRECTIONS:
            raise ConfigError(f"sweep.direction: {direction!r} is not allowed"
                              f"{did_you_mean(direction, DIRECTIONS)}; choose from maximize, minimize")
        wrong = [m for m, mode in monitors if (mode == "max") != (direction == "maximize")]
        if wrong:
            raise ConfigError(f"sweep.direction: {direction!r}, but {wrong[0]} is "
                              f"{'maximised' if direction == 'minimize' else 'minimised'} "
                              f"(its best checkpoint is the objective)")
    if len(monitors) == 1:
        (monitor, mode), = monitors
        metric = metric or monitor
        direction = direction or ("maximize" if mode == "max" else "minimize")
    sampler = _named_options(sweep.get("sampler", "tpe"), "sweep.sampler", SAMPLERS, "tpe")
    pruner = _named_options(sweep.get("pruner", "median"), "sweep.pruner", PRUNERS, "median")
    normalised = {"params": space, "trials": trials, "budget": budget, "metric": metric,
                  "direction": direction, "sampler": sampler, "pruner": pruner,
                  "storage": sweep.get("storage")}
    if normalised["storage"] is not None and not isinstance(normalised["storage"], str):
        raise ConfigError(f"sweep.storage: expected a storage URL string, got "
                          f"{normalised['storage']!r}")
    if sampler["name"] == "grid":
        for key, spec in space.items():
            if not grid_values(spec):
                raise ConfigError(f"sweep.params.{key}: the grid sampler needs choices, an int "
                                  f"range or a float range with `step`")
        if trials is not None:
            normalised["trials"] = budget["trials"] = min(trials, grid_size(normalised))
    enqueue = sweep.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) and e for e in enqueue):
        raise ConfigError(f"sweep.enqueue: expected a list of mappings {{param: value}} to try "
                          f"first, got {enqueue!r}")
    for i, entry in enumerate(enqueue):
        for key, value in entry.items():
            if key not in space:
                raise ConfigError(f"sweep.enqueue[{i}].{key}: not a swept parameter"
                                  f"{did_you_mean(key, space)}; swept: {', '.join(space)}")
            if not _contains(space[key], value):
                raise ConfigError(f"sweep.enqueue[{i}].{key}: {value!r} is outside its range")
        if sampler["name"] == "grid" and set(entry) != set(space):
            raise ConfigError(f"sweep.enqueue[{i}]: with the grid sampler an enqueued trial sets "
                              f"every parameter ({', '.join(space)})")
    normalised["enqueue"] = [dict(e) for e in enqueue]
    _probe(space, runs)
    return normalised


def check_budget(budget, where: str = "sweep.budget") -> dict:
    """A study's budget, {"trials": N} and/or {"hours": H} (training hours of its trials),
    checked; ConfigError naming the key and the value otherwise."""
    if not isinstance(budget, dict) or not budget:
        raise ConfigError(f"{where}: expected a mapping with trials and/or hours, e.g. "
                          f"{{trials: 20}} or {{hours: 2}}, got {budget!r}")
    check_keys(where, budget, BUDGET_KEYS)
    trials, hours = budget.get("trials"), budget.get("hours")
    if "trials" in budget and (not isinstance(trials, int) or isinstance(trials, bool)
                               or trials < 1):
        raise ConfigError(f"{where}.trials: expected a positive int (trials per study), got "
                          f"{trials!r}")
    if "hours" in budget and (not _is_number(hours) or not math.isfinite(hours) or hours <= 0):
        raise ConfigError(f"{where}.hours: expected a positive number (training hours per "
                          f"study), got {hours!r}")
    return {k: budget[k] for k in BUDGET_KEYS if k in budget}


def sweep_budget(sweep: dict) -> dict:
    """`trials: N` is short for `budget: {trials: N}`; one of them, or neither (20 trials)."""
    if "trials" in sweep and "budget" in sweep:
        raise ConfigError(f"sweep.trials and sweep.budget: give one of them (`trials: "
                          f"{sweep['trials']!r}` is short for `budget: {{trials: "
                          f"{sweep['trials']!r}}}`)")
    if "budget" in sweep:
        return check_budget(sweep["budget"])
    trials = sweep.get("trials", DEFAULT_TRIALS)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"sweep.trials: expected a positive int (trials per study), got "
                          f"{trials!r}")
    return {"trials": trials}


def _probe(space: dict, runs: list) -> None:
    """Resolve every bound/choice against each distinct cell config: errors now, not at trial 40."""
    seen = set()
    for run in runs:
        cell = (run.config["model"]["fusion"], run.config["data"]["name"])
        if cell in seen:
            continue
        seen.add(cell)
        for key, spec in space.items():
            for value in _probe_values(spec):
                try:
                    with_params(run.config, {key: value})
                except ConfigError as err:
                    raise ConfigError(f"sweep.params.{key}: {value!r} does not make a valid run: "
                                      f"{err}") from None


def with_params(config: dict, params: dict, seed: int | None = None) -> dict:
    """A resolved run config with the sweep's parameters (and optionally another seed) set."""
    raw = copy.deepcopy(config)
    for key, value in params.items():
        set_dotted(raw, key, value)
    if seed is not None:
        raw["seed"] = seed
    cfg = resolve(raw)
    cfg["name"] = config.get("name")
    return cfg
