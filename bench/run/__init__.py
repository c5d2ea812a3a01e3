"""Running experiments: the runner, one run's training, resume, callbacks, stop signals, workers."""
