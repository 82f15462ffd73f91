"""Training: the pure train steps, the optimizer, the one train loop, checkpoints."""
