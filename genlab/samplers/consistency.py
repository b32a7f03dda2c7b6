"""Consistency-model maths shared by the `consistency` (Song et al. 2023) and `lcm` (Luo et al. 2023) families.

A consistency function maps every point x = x_0 + sigma z of a probability-flow ODE trajectory (genlab's sigma
space, see `genlab.samplers.sampling`) to the trajectory's start, and satisfies the boundary condition
f(x, sigma_min) = x (Song et al. 2023, Sec. 3). Both families build it into the parameterisation

    f(x, sigma) = c_skip(u) x + c_out(u) D(x, sigma),    c_skip(0) = 1, c_out(0) = 0,    (`c_skip_out`)

with D a denoiser (the network in its diffusion preconditioning, an x_0 estimate) and u >= 0 the distance to the
boundary: u = sigma - sigma_min for `consistency`; a scaled timestep u = 10 t for `lcm` (the coefficients of
Luo et al.'s released code, where f equals the teacher-like D everywhere but at t = 0). The condition holds
exactly for any weights.

Also here, so the two families share one copy: `ode_step`, one per-sample Euler (DDIM) or Heun step of the
probability-flow ODE with a teacher's denoiser (the distillation target's solver; each sample has its own noise
level, which the shared samplers' one-grid signature does not take); `distance`, the consistency loss's metric;
`sample_consistency`, multistep consistency sampling with the samplers' signature.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from genlab.rng import SampleRNG

SOLVERS = ("euler", "heun")
DISTANCES = ("l2", "l1", "huber")


def c_skip_out(sigma: torch.Tensor, sigma_min: float, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at u = sigma - sigma_min: c_skip = sigma_data^2 / (u^2 + sigma_data^2), c_out = 1 - c_skip.

    c_skip is Song et al. 2023's (App. C); c_out = 1 - c_skip instead of their sigma_data u / sqrt(sigma_data^2 +
    sigma^2) because D is an x_0 estimate in data scale, not a raw unit-scale output (f = D away from the boundary,
    so a distilled student starts as its teacher's one-step estimate). Exactly (1, 0) at sigma = sigma_min.
    """
    u = sigma - sigma_min
    c_skip = sigma_data**2 / (u**2 + sigma_data**2)
    return c_skip, 1 - c_skip


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) coefficients -> (B, 1, ..., 1) in x's dtype and device."""
    return torch.as_tensor(c).to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def ode_step(denoiser: Callable, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, cond,
             solver: str) -> torch.Tensor:
    """One step of dx/dsigma = (x - D(x, sigma)) / sigma from sigma to sigma_next > 0, per sample ((B,) sigmas).

    'euler' is DDIM with eta = 0 (Song et al. 2021; Luo et al. 2023's default solver Psi); 'heun' adds the
    trapezoidal correction (Karras et al. 2022, Algorithm 1; Song et al. 2023, Algorithm 2's solver).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver '{solver}'; expected one of: {', '.join(SOLVERS)}")
    h = _bc(sigma_next - sigma, x)
    d = (x - denoiser(x, sigma, cond)) / _bc(sigma, x)
    x_euler = x + h * d
    if solver == "euler":
        return x_euler
    d_next = (x_euler - denoiser(x_euler, sigma_next, cond)) / _bc(sigma_next, x)
    return x + h * (d + d_next) / 2


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample d(a, b) (B,): squared L2 and L1 as means over the dimensions; pseudo-Huber
    sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, Sec. 3.3)."""
    if kind not in DISTANCES:
        raise ValueError(f"unknown distance '{kind}'; expected one of: {', '.join(DISTANCES)}")
    diff = (a - b).flatten(1)
    if kind == "l2":
        return diff.pow(2).mean(1)
    if kind == "l1":
        return diff.abs().mean(1)
    c = 0.00054 * math.sqrt(diff.shape[1])
    return (diff.pow(2).sum(1) + c**2).sqrt() - c


@torch.no_grad()
def sample_consistency(
    f: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: dict | None = None,
    rng: SampleRNG | None = None,
    callback: Callable | None = None,
    sigma_min: float = 0.0,
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1; Luo et al. 2023, Algorithm 3).

    `f(x, sigma, cond)` is a consistency function, `x` noise at sigmas[0]. Step i evaluates x_0 = f(x, sigma_i);
    unless sigma_{i+1} = 0 (the last step, which returns x_0) it re-noises, x = x_0 + sqrt(sigma_{i+1}^2 -
    sigma_min^2) z, z from each image's own stream. One f evaluation per step: sigmas = [sigma_max, 0] is one-step
    generation. Draws one `rng.randn_like(x)` per step except the last.
    """
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a (N + 1,) tensor with N >= 1 steps, got shape {tuple(sigmas.shape)}")
    s = sigmas.tolist()
    if any(b >= a for a, b in zip(s, s[1:])) or s[-1] < 0:
        raise ValueError(f"sigmas must decrease strictly to a value >= 0, got {s[:3]} ... {s[-3:]}")
    if any(v > 0 for v in s[1:]) and (rng is None or len(rng) != x.shape[0]):
        raise ValueError("multistep consistency sampling re-noises between steps: pass rng=SampleRNG(...) with one "
                         "stream per image")
    B = x.shape[0]
    for i in range(len(s) - 1):
        denoised = f(x, torch.full((B,), s[i], dtype=torch.float64), cond)
        x = denoised
        if s[i + 1] > 0:
            x = denoised + math.sqrt(max(s[i + 1] ** 2 - sigma_min**2, 0.0)) * rng.randn_like(denoised)
        if callback is not None:
            callback(i, s[i + 1], x, denoised)
    return x
