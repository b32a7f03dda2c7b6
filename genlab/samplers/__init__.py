"""Stateless sampling functions. Schedules are tensors computed up front; no hidden sampler state."""

from genlab.samplers.diffusion import (
    ddim_timesteps,
    make_alpha_bar,
    predict_eps_x0,
    q_sample,
    sample_ddim,
    sample_ddpm,
)

__all__ = ["make_alpha_bar", "ddim_timesteps", "q_sample", "predict_eps_x0", "sample_ddpm", "sample_ddim"]
