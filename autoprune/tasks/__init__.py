"""Tasks: what a model is for. Data, splits, the training loop over a task's loss, metrics."""
