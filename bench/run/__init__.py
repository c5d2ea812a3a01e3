"""Running experiments, by job:

    runner.py       what is pending, locks, failures: the loop over an experiment's runs
    train.py        one run: build the Trainer, fit (or resume), test
    resume.py       which checkpoint a run goes on from, and whether it is the run's own
    checkpoints.py  exact resume: atomic checkpoints, RNG states, resumable batches
    callbacks.py    costs and shares, progress, divergence, save on a stop
    signals.py      Ctrl-C and SIGTERM: stop, save, never cut a save short
    workers.py      local worker processes (run --jobs, sweep --workers)
    ddp.py          the ranks Lightning starts for one run
    environment.py  what a run's numbers depend on beyond its config, and its label
"""
