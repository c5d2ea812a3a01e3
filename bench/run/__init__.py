"""Running experiments, by job:

    runner.py       what is pending, locks, failures: the loop over an experiment's runs
    train.py        one run: build the Trainer, fit (or resume), test
    resume.py       which checkpoint a run goes on from, and whether it is the run's own
    checkpoints.py  exact resume: atomic checkpoints, RNG states, resumable batches, the
                    epoch's running loss
    metrics_log.py  metrics.csv that a resumed run continues (rows counted in each checkpoint)
    loggers.py      the optional trackers of trainer.loggers: TensorBoard, MLflow
    callbacks.py    costs and shares, progress, divergence, the stop at a safe point
    signals.py      Ctrl-C and SIGTERM: a stop lands after the step, never inside validation
    workers.py      local worker processes (run --jobs, sweep --workers)
    progress.py     the parent's view of --jobs/--workers: counts, running epochs, ETA
    slurm.py        SLURM job arrays: the sbatch script, submitting, the tasks' states
    requeue.py      inside an array task: save on the warning signal, requeue, resume
    ddp.py          the ranks Lightning starts for one run
    environment.py  what a run's numbers depend on beyond its config, and its label
"""
