"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper that any sampler takes.

Convention (the family-level `--guidance` option uses the same number): the guidance *scale* s gives

    D_guided(x, sigma, cond) = D(x, sigma, uncond) + s * (D(x, sigma, cond) - D(x, sigma, uncond)),

so s = 1 is the plain conditional model, s = 0 the unconditional one and s > 1 strengthens the condition.
Ho & Salimans 2022 (Eq. 6) write eps_guided = (1 + w) eps_cond - w eps_uncond: their w is s - 1. Because
D = c_skip x + c_out * (network output) with the same x and sigma in both branches, mixing denoised outputs is
the same as mixing eps (or v) predictions. This module is the only place the combination is computed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _batched(value, B: int, key: str, which: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        raise ValueError(
            f"classifier-free guidance: {which}['{key}'] must be a tensor with a batch dimension"
        )
    if value.shape[0] == 1 and B != 1:
        return value.expand(B, *value.shape[1:])
    if value.shape[0] != B:
        raise ValueError(
            f"classifier-free guidance: {which}['{key}'] has batch {value.shape[0]}, expected {B} or 1"
        )
    return value


def classifier_free_guidance(denoiser: Callable, scale: float, uncond: dict) -> Callable:
    """A denoiser `D_guided(x, sigma, cond)` = D(x, sigma, uncond) + scale (D(x, sigma, cond) - D(x, sigma, uncond)).

    Both branches run as one batch of 2B: `cond` and `uncond` are dicts with the same keys whose tensors have a
    leading batch dimension, B (or 1 in `uncond`, repeated), concatenated [cond; uncond]; a (B,) sigma is repeated.
    `uncond` holds the network's "no condition" input, e.g. {"y": torch.tensor([num_classes])} for genlab's U-Net.
    scale = 1 calls only the conditional branch and scale = 0 only the unconditional one, so both are exact.
    A denoiser that clips its output clips each branch before they are mixed (the guided estimate can leave the range).
    """
    if not isinstance(uncond, dict):
        raise ValueError(
            f"classifier-free guidance: uncond must be a dict of tensors, got {type(uncond).__name__}"
        )

    def guided(x: torch.Tensor, sigma, cond: dict | None = None) -> torch.Tensor:
        B = x.shape[0]
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition: cond=None")
        if set(cond) != set(uncond):
            raise ValueError(
                f"classifier-free guidance: cond keys {sorted(cond)} != uncond keys {sorted(uncond)}"
            )
        if scale == 1:
            return denoiser(x, sigma, cond)
        u = {k: _batched(v, B, k, "uncond") for k, v in uncond.items()}
        if scale == 0:
            return denoiser(x, sigma, u)
        both = {k: torch.cat([_batched(cond[k], B, k, "cond"), u[k].to(cond[k].device)]) for k in cond}
        sigma = torch.as_tensor(sigma)
        sigma2 = torch.cat([sigma, sigma]) if sigma.dim() > 0 else sigma
        d_cond, d_uncond = denoiser(torch.cat([x, x]), sigma2, both).chunk(2)  # each (B, ...)
        return d_uncond + scale * (d_cond - d_uncond)

    return guided
