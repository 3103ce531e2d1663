"""Training: the loop, state and exact resume, data, sampler, optimiser and logs, configured by typed dataclasses
(training.config) built from the flags in one place (training.args); every training script is a Job for
training.run.run."""
