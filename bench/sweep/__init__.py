"""Optuna sweeps: one study per strategy (and dataset), every trial an ordinary run in the store.

An experiment's `sweep:` section names a search space over dotted config keys, the budget
(trials and/or training hours per study), the sampler and the pruner (docs/sweeps.md). Each cell
of the matrix without its seed axis (a strategy, times a dataset when there are several) gets
its own study named `<experiment>/<fusion>/<dataset>`, so every strategy is tuned with the same
budget; `sweep --repeat K` adds K - 1 independent studies per cell (`.../repeat=<r>`, sampler
seed + r). A trial is the cell's base run (the matrix's first seed) with the trial's parameters
set: its id is the hash of that config, it trains through the runner like any run and lands in
results/<experiment>/. An exception, a NaN loss or an out-of-memory error fails that trial only.

    cells.py      the studies of an experiment (StudyCell, study_cells, repeats)
    storage.py    the journal file or RDB storage, URLs and their masking
    objective.py  one trial: Objective, TrialFailed, OverBudget
    trials.py     trials as the budget statistics see them; the budget check; training seconds
    study.py      run_sweep, a worker's loop, dead workers' trials
    summary.py    the sweep table, `report --sweep` (budget curves: bench/report/sweep_views.py),
                  best parameters, --best-params and tuned vs default, the trials' runs

The `sweep:` section itself (its validation, the parameter specs, grid sizes and applying a
trial's parameters to a config) is bench/config/sweep.py. Nothing here imports optuna at module
import.
"""
from bench.sweep.cells import StudyCell, study_cells
from bench.sweep.objective import Objective, OverBudget, TrialFailed
from bench.sweep.storage import JOURNAL, RECORD, describe_storage, open_storage, storage_url
from bench.sweep.study import reap_dead_trials, run_sweep, sweep_worker
from bench.sweep.summary import (apply_best_params, best_params, print_sweep_report,
                                 print_tuned, trial_runs)

__all__ = ["JOURNAL", "RECORD", "Objective", "OverBudget", "StudyCell", "TrialFailed",
           "apply_best_params", "best_params", "describe_storage", "open_storage",
           "print_sweep_report", "print_tuned", "reap_dead_trials", "run_sweep", "storage_url",
           "study_cells", "sweep_worker", "trial_runs"]
