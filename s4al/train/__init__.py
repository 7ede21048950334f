"""The training loop, its sampling, checkpoints and live monitoring."""
