"""The training loop, EMA, checkpoints and loading trained runs."""
