"""Diffusion noise schedules, parameterisation conversions and the DDPM / DDIM samplers.

Notation (Ho et al. 2020): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t = 0..T-1, with
alpha_bar_t = prod_{s<=t} (1 - beta_s). Samplers take `eps_model(x_t, t) -> eps` (the family wraps its network
and converts v- or x0-predictions), the schedule `alpha_bar` (T,), and the decreasing list of `timesteps` to
visit, so a sampler can run on any sub-sequence of the training steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from genlab.rng import SampleRNG

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _x0_from_eps(x_t, eps, ab, clip):
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return x0.clamp(-clip, clip) if clip else x0


def _steps(alpha_bar: torch.Tensor, timesteps: torch.Tensor):
    """(i, t, s, alpha_bar_t, alpha_bar_s) for each move t -> s along `timesteps` (alpha_bar_s = 1 after the last)."""
    steps = timesteps.tolist()
    for i, t in enumerate(steps):
        s = steps[i + 1] if i + 1 < len(steps) else -1
        ab_t = alpha_bar[t]
        yield i, t, s, ab_t, (alpha_bar[s] if s >= 0 else torch.ones_like(ab_t))


@torch.no_grad()
def sample_ddpm(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    rng: SampleRNG,
    clip_x0: float | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) over `timesteps`, using the posterior q(x_s | x_t, x_0).

    With all T timesteps this is exactly Algorithm 2 with sigma_t^2 = beta_tilde_t (Eq. 7); with a
    sub-sequence the betas are respaced as beta_t = 1 - alpha_bar_t / alpha_bar_s (Nichol & Dhariwal 2021).
    `callback(i, t, x_t, x0_pred)` is called after every step.
    """
    x = x_T
    for i, t, s, ab_t, ab_s in _steps(alpha_bar, timesteps):
        eps = eps_model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x0 = _x0_from_eps(x, eps, _bcast(ab_t, x), clip_x0)
        # 1. posterior mean mu_tilde(x_t, x_0) = c0 x_0 + ct x_t  (Ho et al. 2020, Eq. 7)
        beta_t = 1 - ab_t / ab_s
        c0 = ab_s.sqrt() * beta_t / (1 - ab_t)
        ct = (1 - beta_t).sqrt() * (1 - ab_s) / (1 - ab_t)
        mean = _bcast(c0, x) * x0 + _bcast(ct, x) * x
        # 2. add noise with variance beta_tilde = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta_t, except at the last step
        if s >= 0:
            var = (1 - ab_s) / (1 - ab_t) * beta_t
            x = mean + _bcast(var.sqrt(), x) * rng.randn_like(x)
        else:
            x = mean
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.no_grad()
def sample_ddim(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    eta: float = 0.0,
    rng: SampleRNG | None = None,
    clip_x0: float | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, Eq. 12): deterministic for eta=0; eta=1 matches DDPM's posterior variance.

    `callback(i, t, x_t, x0_pred)` is called after every step.
    """
    if eta > 0 and rng is None:
        raise ValueError("DDIM with eta > 0 needs per-sample noise: pass rng=SampleRNG(...)")
    x = x_T
    for i, t, s, ab_t, ab_s in _steps(alpha_bar, timesteps):
        eps = eps_model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        # 1. predicted x_0 ("predicted x_0" term of Eq. 12)
        x0 = _x0_from_eps(x, eps, _bcast(ab_t, x), clip_x0)
        if clip_x0:  # keep eps consistent with the clipped x_0
            eps = (x - _bcast(ab_t.sqrt(), x) * x0) / _bcast((1 - ab_t).sqrt(), x)
        # 2. sigma_t (Eq. 16), scaled by eta
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
        # 3. direction pointing to x_t, then the random noise
        x = _bcast(ab_s.sqrt(), x) * x0 + _bcast((1 - ab_s - sigma**2).clamp(min=0).sqrt(), x) * eps
        if eta > 0 and s >= 0:
            x = x + _bcast(sigma, x) * rng.randn_like(x)
        if callback is not None:
            callback(i, t, x, x0)
    return x
