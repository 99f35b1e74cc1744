"""What the training loop (`seqtrain.train`) is built from, one concern per module: checkpoints,
LR schedules, loss bookkeeping, the run folder's files and its single owner, the resume check,
preemption, and the watch that ends a rank whose launcher died."""
