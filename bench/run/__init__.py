"""`lesa-bench run`: the loop over an experiment's runs.

    runner.py   what is pending, locks, failures, the outcome of each run (one run's training
                is bench/train/)
    workers.py  local worker processes (run --jobs, sweep --workers)
    progress.py the parent's view of --jobs/--workers: counts, running epochs, ETA
    pipes.py    a reader of the output gone (`| head`): a run stops as interrupted
"""
