"""Stateless diffusion samplers in one parameterisation: x = x_0 + sigma eps, over a denoiser D(x, sigma) -> x_0.

Every sampler has the signature

    sample_NAME(denoiser, x, sigmas, *, cond=None, rng=None, callback=None, <its own options>) -> x_0

- `denoiser(x, sigma, cond) -> denoised` (see `genlab.samplers.denoisers`); `cond` is passed through unchanged.
- `x` (B, ...) is noise at level sigmas[0]. For a VP model (`VPDenoiser`) start at x = randn * sqrt(1 + sigma_0^2):
  that is x_T / sqrt(alpha_bar_T) for x_T ~ N(0, I), the VP prior, which includes the unit data variance; a
  variance-exploding model starts at randn * sigma_0 instead.
- `sigmas` (N + 1,) is the decreasing schedule, computed up front (e.g. `discrete_sigmas`), usually ending at 0.
- `rng` (`genlab.rng.SampleRNG`, one stream per image) feeds stochastic samplers; they raise without one.
  Deterministic samplers ignore it.
- `callback(i, sigma, x, denoised)` runs after step i with the new state x at noise level sigma = sigmas[i + 1]
  (so x / sqrt(1 + sigma^2) is the VP x_t) and the denoiser's estimate made during the step.
- Options beyond these are keyword-only with defaults (`sample_ddim(..., eta=0.0)`); `SAMPLERS` maps names to
  the functions. They run under `torch.no_grad()`; a denoiser that needs gradients (classifier guidance) enables
  them inside.

The Euler-type updates use d = (x - D(x, sigma)) / sigma, the probability-flow ODE dx/dsigma (Karras et al. 2022,
Eq. 3 with sigma(t) = t, s(t) = 1). An Euler step is written D + sigma_next d rather than x + (sigma_next - sigma) d:
the same number, but without cancelling two terms of size sigma (a VP start can have sigma_0 > 10^4 in float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from genlab.rng import SampleRNG
from genlab.samplers.diffusion import ddim_timesteps, vp_sigmas

Denoiser = Callable[..., torch.Tensor]


def discrete_sigmas(alpha_bar: torch.Tensor, steps: int) -> torch.Tensor:
    """(steps + 1,) float64: the sigmas of `ddim_timesteps(T, steps)` (T-1 down to 0), then a final 0."""
    t = ddim_timesteps(len(alpha_bar), steps)
    return torch.cat([vp_sigmas(alpha_bar.detach().cpu())[t], torch.zeros(1, dtype=torch.float64)])


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """(steps + 1,) float64: sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0.

    Karras et al. 2022, Eq. 5 (rho = 7): steps concentrate at low noise, where second-order samplers need them;
    for a `VPDenoiser` pass its `sigma_min`, `sigma_max` (sigmas off its table get interpolated timesteps).
    """
    if steps < 2 or not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"karras_sigmas needs steps >= 2, 0 < sigma_min < sigma_max; got {steps}, {sigma_min}, {sigma_max}"
        )
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact ends, so they hit a denoiser's table entries
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def _schedule(x: torch.Tensor, sigmas: torch.Tensor) -> list[float]:
    """sigmas as floats, checked: 1-D, at least one step, decreasing, non-negative."""
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(
            f"sigmas must be a (N + 1,) tensor with N >= 1 steps, got shape {tuple(sigmas.shape)}"
        )
    s = sigmas.tolist()
    if any(b >= a for a, b in zip(s, s[1:])) or s[-1] < 0:
        raise ValueError(f"sigmas must decrease strictly to a value >= 0, got {s[:3]} ... {s[-3:]}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    return s


def _need_rng(rng: SampleRNG | None, x: torch.Tensor, name: str) -> SampleRNG:
    if rng is None:
        raise ValueError(
            f"{name} draws noise at every step: pass rng=SampleRNG(...) with one stream per image"
        )
    if len(rng) != x.shape[0]:
        raise ValueError(f"{name}: rng has {len(rng)} streams for a batch of {x.shape[0]}")
    return rng


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a DDIM step sigma -> sigma_next (Song et al. 2021, Eq. 12 and 16, in sigma space).

    Divide Eq. 12 by sqrt(alpha_bar_s), with sigma^2 = (1 - alpha_bar) / alpha_bar:
      x_s = x_0 + sqrt(sigma_s^2 - sigma_up^2) eps + sigma_up z,  sigma_up = sigma_DDIM(eta) / sqrt(alpha_bar_s),
    and Eq. 16 becomes sigma_up^2 = eta^2 sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2. The deterministic part is
    an Euler step to sigma_down = sqrt(sigma_s^2 - sigma_up^2) (clamped at 0 for eta > 1, as Eq. 12's square root).
    eta = 1 is DDPM's posterior variance beta_tilde (Ho et al. 2020, Eq. 7); eta = 0 is plain Euler.
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = eta * sigma_next * math.sqrt((sigma**2 - sigma_next**2) / sigma**2)
    return math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0)), sigma_up


def _ancestral(denoiser, x, sigmas, cond, rng, callback, eta, name):
    """Euler steps to sigma_down plus fresh noise sigma_up z, one draw per step except the last (sigma_next = 0)."""
    s = _schedule(x, sigmas)
    if eta > 0:
        _need_rng(rng, x, name)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoiser(x, sigmas[i], cond)
        # 1. split the target noise level into a deterministic part and fresh noise
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        # 2. Euler step along d = (x - D) / sigma to sigma_down: x_0 estimate plus DDIM's "direction pointing to x_t"
        x = denoised + sigma_down * ((x - denoised) / sigma)
        # 3. fresh noise from each image's own stream
        if sigma_up > 0:
            x = x + sigma_up * rng.randn_like(x)
        if callback is not None:
            callback(i, sigma_next, x, denoised)
    return x


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: dict | None = None,
    rng: SampleRNG | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2): x_s ~ q(x_s | x_t, x_0 = D(x_t)), on any sub-sequence.

    With sigmas from `discrete_sigmas(alpha_bar, T)` it is Algorithm 2 with sigma_t^2 = beta_tilde_t; on fewer steps
    the betas are respaced, beta = 1 - alpha_bar_t / alpha_bar_s (Nichol & Dhariwal 2021, Sec. 4). Same as
    `sample_ddim(eta=1)`. Draws one `rng.randn_like(x)` per step except the last.
    """
    return _ancestral(denoiser, x, sigmas, cond, rng, callback, 1.0, "sample_ddpm")


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: dict | None = None,
    rng: SampleRNG | None = None,
    callback: Callable | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, Eq. 12): eta = 0 deterministic (= `sample_euler`), eta = 1 = `sample_ddpm`.

    See `ancestral_step` for the form in sigma space. With eta > 0, draws one `rng.randn_like(x)` per step except
    the last.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    return _ancestral(denoiser, x, sigmas, cond, rng, callback, eta, "sample_ddim with eta > 0")


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: dict | None = None,
    rng: SampleRNG | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Eq. 3; Algorithm 1 without its Heun correction)."""
    s = _schedule(x, sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, sigmas[i], cond)
        d = (x - denoised) / s[i]  # dx/dsigma
        # = x + (sigma_next - sigma) d, without cancelling two large terms at large sigma
        x = denoised + s[i + 1] * d
        if callback is not None:
            callback(i, s[i + 1], x, denoised)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: dict | None = None,
    rng: SampleRNG | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 with S_churn = 0); the step to sigma = 0 is Euler.

    Two denoiser calls per step except the last. `callback` gets the first (Euler-point) estimate.
    """
    s = _schedule(x, sigmas)
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        # 1. Euler step (Algorithm 1, lines 5-7)
        denoised = denoiser(x, sigmas[i], cond)
        d = (x - denoised) / sigma
        x_next = denoised + sigma_next * d  # = x + (sigma_next - sigma) d, see sample_euler
        # 2. trapezoidal correction with the slope at sigma_next (lines 9-11), undefined at sigma_next = 0
        if sigma_next > 0:
            d_next = (x_next - denoiser(x_next, sigmas[i + 1], cond)) / sigma_next
            # = x + (sigma_next - sigma) (d + d_next) / 2
            x_next = x_next + (sigma_next - sigma) * (d_next - d) / 2
        x = x_next
        if callback is not None:
            callback(i, sigma_next, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: dict | None = None,
    rng: SampleRNG | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep on the data prediction D.

    With alpha = 1 and lambda = -log sigma, step i moves x to (sigma_next / sigma) x - (e^{-h} - 1) D_hat, h =
    lambda_next - lambda, where D_hat = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_{i-1} / h, extrapolates the last
    two estimates (D_hat = D_0 on the first step: DDIM). The step to sigma = 0 (h infinite) returns D itself.
    The extrapolation assumes steps of similar size in lambda: where they grow sharply, as on `discrete_sigmas`
    grids near t = 0, it overshoots (samples of a Gaussian come out 10% too wide at 50 steps); use `karras_sigmas`.
    """
    s = _schedule(x, sigmas)
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoiser(x, sigmas[i], cond)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            if old_denoised is None:
                d_hat = denoised
            else:
                r = h_last / h
                d_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * d_hat
            h_last = h
        old_denoised = denoised
        if callback is not None:
            callback(i, sigma_next, x, denoised)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


def sample_in_chunks(model: torch.nn.Module, n: int, shape, sigma_max: torch.Tensor | float, cond: dict,
                     run: Callable[[torch.Tensor, dict, SampleRNG], torch.Tensor], *,
                     generator: torch.Generator | None, device, batch_size: int) -> torch.Tensor:
    """n samples made `batch_size` at a time, the same however they are chunked: each image draws its own x_T from
    its own noise stream (`SampleRNG`), x_T ~ N(0, (1 + sigma_max^2) I) -- the VP x_T / sqrt(alpha_bar_T) of
    sigma-space samplers -- and its rows of the per-image conditions `cond` (tensors or lists of length n);
    `run(x_T, cond_chunk, rng_chunk)` returns the chunk's images. `model` is in eval mode meanwhile."""
    rng = SampleRNG.from_generator(n, generator, device)
    scale = (1 + torch.as_tensor(sigma_max) ** 2).sqrt().item()
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, n, batch_size):
            r = rng.split(start, min(n, start + batch_size))
            c = {k: v[start : start + len(r)] for k, v in cond.items()}
            out.append(run(r.randn(*shape) * scale, c, r))
    finally:
        model.train(was_training)
    return torch.cat(out)
