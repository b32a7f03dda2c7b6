"""Load a trained run for inference: `genlab.load("runs/x").sample(16, seed=0)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.config import RunConfig, build_run_config
from genlab.errors import GenlabError
from genlab.models import get_family
from genlab.training.checkpoint import Checkpoint, latest_checkpoint, read_checkpoint
from genlab.training.loop import sample_options


@dataclass
class Run:
    dir: Path
    config: RunConfig
    family: object  # the family module
    model: torch.nn.Module  # in eval mode; EMA weights unless loaded with ema=False
    step: int
    checkpoint: Checkpoint

    @property
    def family_name(self) -> str:
        return self.config.family

    def sample(self, n: int, *, seed: int = 0, cond=None, **opts) -> torch.Tensor:
        """n samples (n, C, H, W) float in [-1, 1] (points (n, D) for 2-D toys); same seed, same images."""
        opts = sample_options(self.family, **opts)
        return self.family.sample(self.model, n, cond=cond, generator=torch.Generator().manual_seed(seed), **opts)


def load_run(run_dir, *, ema: bool = True, device: str = "cpu", checkpoint: str | Path | None = None) -> Run:
    """Rebuild the model of a run directory from its newest valid checkpoint (or a given checkpoint JSON)."""
    run_dir = Path(run_dir)
    if checkpoint is not None:
        ckpt = read_checkpoint(Path(checkpoint))
    else:
        if not run_dir.is_dir():
            raise GenlabError(f"run directory not found: {run_dir}")
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise GenlabError(f"no valid checkpoint in {run_dir / 'checkpoints'} (has the run saved one yet?)")
    family = get_family(ckpt.meta["family"])
    cfg = build_run_config(ckpt.meta["family"], family.Config, ckpt.meta["config"])
    model = family.build(cfg.model)
    use_ema = ema and ckpt.meta.get("has_ema", False)
    model.load_state_dict(ckpt.part("ema" if use_ema else "model"))
    return Run(run_dir, cfg, family, model.to(device).eval(), ckpt.step, ckpt)
