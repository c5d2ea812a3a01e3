"""Experiment configs: the schema and defaults, experiment files and their matrix, the sweep
section.

    schema.py      defaults, allowed values, validating one run's config (`resolve`)
    experiment.py  reading an experiment file, matrix expansion, --set/--only, run ids, shards
    sweep.py       the `sweep:` section: its validation and parameter specs

Nothing here imports torch: validation and `--dry-run` stay fast.
"""
from bench.config.experiment import (Experiment, Run, experiment_from_dict, load_experiment,
                                     parse_assignment, run_id, shard)
from bench.config.schema import (BACKBONE_NAMES, CHOICES, DEFAULTS, FUSION_NAMES, ConfigError,
                                 check_keys, get_dotted, resolve, schema_for, set_dotted)

__all__ = ["BACKBONE_NAMES", "CHOICES", "DEFAULTS", "FUSION_NAMES", "ConfigError", "Experiment",
           "Run", "check_keys", "experiment_from_dict", "get_dotted", "load_experiment",
           "parse_assignment", "resolve", "run_id", "schema_for", "set_dotted", "shard"]
