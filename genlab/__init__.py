"""genlab: train, sample and evaluate generative image models side by side."""

__version__ = "0.1.0"


def load(run_dir, *, ema: bool = True, device: str = "cpu"):
    """Rebuild a trained model from a run directory's newest good checkpoint (EMA weights by default).

    >>> run = genlab.load("runs/quickstart")
    >>> images = run.sample(16, seed=0)  # (16, C, H, W) float in [-1, 1]
    """
    from genlab.training.run import load_run

    return load_run(run_dir, ema=ema, device=device)
