"""Classifier guidance (Dhariwal & Nichol 2021) as a denoiser wrapper that any sampler takes.

A noise-conditional classifier p(y | x_t, t) adds its scaled gradient to the model's score. In genlab's sigma
space (x = x_0 + sigma eps, see `genlab.samplers.denoisers`) the score is (D(x) - x) / sigma^2 = -eps / sigma, so

    score' = score + s grad_x log p(y | x)   <=>   eps' = eps - s sigma grad_x log p(y | x)
                                             <=>   D'(x) = D(x) + s sigma^2 grad_x log p(y | x).

That is Algorithm 2 of Dhariwal & Nichol 2021 (eps' = eps - sqrt(1 - alpha_bar) grad_{x_t} log p), written for
the VE-scaled x: x_t = x / sqrt(1 + sigma^2), so sigma grad_x = sqrt(1 - alpha_bar) grad_{x_t}. Their ancestral
sampler (Algorithm 1) shifts the mean by s Sigma grad, which is the same first-order change of the score.
s = 0 returns the unguided denoiser exactly; s = 1 is the plain Bayes posterior score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from genlab.samplers.denoisers import VPDenoiser


class VPClassifier:
    """log p(y | x, sigma) (B,) in sigma space from a classifier `net(x_t, t) -> logits (B, K)` on a VP schedule.

    The classifier sees what a VP network sees: x_t = x / sqrt(1 + sigma^2) and the timestep of sigma, mapped
    by the same table the denoisers use (`VPDenoiser.sigma_to_t`), so guided and unguided runs agree on t.
    """

    def __init__(self, net: Callable, alpha_bar: torch.Tensor):
        self.net = net
        self._timesteps = VPDenoiser(net, alpha_bar)  # only for its sigma -> t map

    def __call__(self, x: torch.Tensor, sigma, y: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
        sigma = sigma.expand(B) if sigma.dim() == 0 else sigma
        t = self._timesteps.sigma_to_t(sigma).to(x.device)
        c_in = (1 / (1 + sigma**2).sqrt()).to(device=x.device, dtype=x.dtype).reshape(B, *([1] * (x.dim() - 1)))
        logits = self.net(x * c_in, t)  # (B, K)
        return F.log_softmax(logits.float(), dim=-1).gather(1, y.reshape(B, 1).to(x.device)).squeeze(1)  # (B,)


def classifier_guidance(denoiser: Callable, log_prob: Callable, scale: float, key: str = "y") -> Callable:
    """A denoiser D'(x, sigma, cond) = D(x, sigma, cond) + scale sigma^2 grad_x log_prob(x, sigma, cond[key]).

    `log_prob(x, sigma, y) -> (B,)` is log p(y | x) at noise level sigma (e.g. a `VPClassifier`); the gradient
    of its sum is taken per sample (no batch statistics), under `torch.enable_grad()` since samplers run without
    gradients. `cond[key]` holds the labels to guide towards; the whole `cond` is passed on to `denoiser`.
    """

    def guided(x: torch.Tensor, sigma, cond: dict | None = None) -> torch.Tensor:
        if cond is None or key not in cond:
            raise ValueError(f"classifier guidance needs the target labels: cond['{key}']")
        denoised = denoiser(x, sigma, cond)
        if scale == 0:
            return denoised
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob(x_in, sigma, cond[key]).sum(), x_in)
        s = torch.as_tensor(sigma, dtype=torch.float64)
        s = s.expand(x.shape[0]) if s.dim() == 0 else s
        s2 = (s**2).to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...)
        return denoised + scale * s2 * grad

    return guided
