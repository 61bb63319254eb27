"""Planning, running and recording trials: settings, sweeps, the training loop, executors and the
result files of a run folder."""
