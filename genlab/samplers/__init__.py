"""Stateless sampling functions. Schedules are tensors computed up front; no hidden sampler state.

Diffusion sampling is `SAMPLERS[name](denoiser, x, sigmas, *, cond=None, rng=None, callback=None, **options)`
over a denoiser D(x, sigma, cond) -> x_0 (`VPDenoiser` for networks trained on a VP schedule), with a schedule
from `discrete_sigmas` (the training timesteps) or `karras_sigmas`, optionally guided by
`classifier_free_guidance`. See `sampling.py`.
"""

from genlab.samplers.denoisers import VPDenoiser
from genlab.samplers.diffusion import (
    PREDICTIONS,
    SCHEDULES,
    ddim_timesteps,
    make_alpha_bar,
    predict_eps_x0,
    q_sample,
    v_target,
    vp_sigmas,
)
from genlab.samplers.guidance import classifier_free_guidance
from genlab.samplers.sampling import (
    SAMPLERS,
    ancestral_step,
    discrete_sigmas,
    karras_sigmas,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_in_chunks,
)

__all__ = [
    "SCHEDULES",
    "PREDICTIONS",
    "make_alpha_bar",
    "ddim_timesteps",
    "q_sample",
    "v_target",
    "predict_eps_x0",
    "vp_sigmas",
    "VPDenoiser",
    "discrete_sigmas",
    "karras_sigmas",
    "ancestral_step",
    "SAMPLERS",
    "sample_ddpm",
    "sample_ddim",
    "sample_euler",
    "sample_heun",
    "sample_in_chunks",
    "sample_dpmpp_2m",
    "classifier_free_guidance",
]
