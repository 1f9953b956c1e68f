"""Training: the compiled train state, the loop, checkpoints, the dry run's memory and the step benchmark."""
