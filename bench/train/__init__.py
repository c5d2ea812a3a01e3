"""One run: build its datamodule, task and Trainer, fit (or resume), test, return its metrics.

    trainer.py   the Trainer and one run's fit and test (`train_run`)
    callbacks.py costs and shares, status progress, divergence, plain log lines
    shares.py    the share analysis: trained vs the same model at initialisation, per stage,
                 inside boxes
    loggers.py   the optional trackers of trainer.loggers: TensorBoard, MLflow
    ddp.py       the ranks Lightning starts for one run

Stopping and resuming exactly is bench/resume/'s; the loop over runs, bench/run/'s.
"""


class Diverged(RuntimeError):
    """A run's training, validation or test loss or metric is no longer finite (the run is
    marked failed: diverged)."""
