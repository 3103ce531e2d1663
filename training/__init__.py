"""Training: `training.train.train`, the one training function every training script calls with its model, data,
loss step and a TrainConfig (training.config); the loop, state and exact resume, data, sampler, optimiser, losses
and logs."""
