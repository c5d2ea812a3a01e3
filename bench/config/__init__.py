"""Experiment configs: the schema and defaults, experiment files and their matrix, the sweep
section.

    schema.py      defaults, allowed values (`choices`, the strategy and backbone names from
                   lesa's registries), validating one run's config (`resolve`)
    checks.py      what a value must be beyond its type: ranges, nullable keys' types, checks
                   across keys
    loggers.py     `trainer.loggers` and `trainer.mlflow_uri`: the trackers and their extras
    experiment.py  reading an experiment file, matrix expansion, --set/--only, run ids, shards
    sweep.py       the `sweep:` section: its validation and parameter specs

Nothing here imports torch: validation and `--dry-run` stay fast.
"""
from bench.config.experiment import (Experiment, Run, experiment_from_dict, load_experiment,
                                     parse_assignment, run_id, shard)
from bench.config.schema import (DEFAULTS, ConfigError, backbone_names, check_keys, choices,
                                 fusion_names, get_dotted, resolve, schema_for, set_dotted)

__all__ = ["DEFAULTS", "ConfigError", "Experiment", "Run", "backbone_names", "check_keys",
           "choices", "experiment_from_dict", "fusion_names", "get_dotted", "load_experiment",
           "parse_assignment", "resolve", "run_id", "schema_for", "set_dotted", "shard",
           "check_flags"]


def check_flags(args, **wanted: str) -> None:
    """ConfigError naming the flag when a numeric command-line option is not positive and
    finite (argparse checks the type only); wanted: option name -> what it must be ("a positive
    integer (worker processes)")."""
    import math

    for name, allowed in wanted.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if value <= 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be {allowed}")
