"""Diffusion noise schedules and parameterisation conversions (VP, Ho et al. 2020), and their sigma view.

Notation (Ho et al. 2020): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t = 0..T-1, with
alpha_bar_t = prod_{s<=t} (1 - beta_s). The samplers (`genlab.samplers.sampling`) work on the same process in
the variance-exploding scale x = x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps, sigma_t = `vp_sigmas(alpha_bar)`
(Karras et al. 2022, Sec. 2 and Table 1).

The former VP-space samplers over `eps_model(x_t, t)` (`sample_ddpm` / `sample_ddim` here, up to commit e72f649)
live on as `tests/data/sampler_golden.safetensors`, which the sigma-space samplers reproduce.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


def make_alpha_bar(schedule: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alpha_bar (T,) float64 for the 'linear' (Ho et al. 2020) or 'cosine' (Nichol & Dhariwal 2021) schedule."""
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif schedule == "cosine":
        # Nichol & Dhariwal 2021, Eq. 17: f(t) = cos^2((t/T + s) / (1 + s) * pi/2), s = 0.008; betas clipped at 0.999.
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"unknown schedule '{schedule}'; expected one of: {', '.join(SCHEDULES)}")
    return torch.cumprod(1 - betas, dim=0)


def ddim_timesteps(T: int, steps: int) -> torch.Tensor:
    """`steps` evenly spaced training timesteps from T-1 down to 0 (int64, decreasing)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    return torch.linspace(T - 1, 0, steps).round().long()


def vp_sigmas(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (T,) float64, increasing: x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps.

    Karras et al. 2022, Table 1 (VP column, discrete time); the one place the VP -> sigma map is computed, so that
    schedules and denoisers see bit-identical values.
    """
    ab = alpha_bar.to(torch.float64)
    return ((1 - ab) / ab).sqrt()


def _bcast(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return a.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, Eq. 4)."""
    ab = _bcast(alpha_bar.to(x0.device)[t], x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022, Sec. 4)."""
    ab = _bcast(alpha_bar_t, x0)
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def predict_eps_x0(out: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor, prediction: str):
    """(eps, x0) from a network output that predicts `prediction` ('eps' or 'v')."""
    ab = _bcast(alpha_bar_t, x_t)
    if prediction == "eps":
        eps = out
        x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    elif prediction == "v":
        x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * out
        eps = (1 - ab).sqrt() * x_t + ab.sqrt() * out
    else:
        raise ValueError(f"unknown prediction '{prediction}'; expected one of: {', '.join(PREDICTIONS)}")
    return eps, x0
