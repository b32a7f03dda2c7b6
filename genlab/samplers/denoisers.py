"""Denoisers: networks seen as D(x, sigma) -> x_0 estimate, the one interface every sampler uses.

A denoiser is any callable `D(x, sigma, cond=None) -> denoised` where x (B, ...) = x_0 + sigma * eps is in the
variance-exploding scale, sigma is a (B,) tensor or a scalar and `cond` a dict of keyword arguments for the
network (e.g. {"y": labels}) or None (Karras et al. 2022, Sec. 2 and 5: "preconditioning" wraps a network
into D). `VPDenoiser` adapts the networks genlab's DDPM family trains: eps- or v-predictors on a discrete VP
schedule alpha_bar.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genlab.samplers.diffusion import PREDICTIONS, vp_sigmas


class VPDenoiser:
    """D(x, sigma) from a network `net(x_t, t, **cond)` trained on a discrete VP schedule (Karras et al. 2022, Table 1).

    With sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t) the network input is x_t = c_in x, c_in = 1 / sqrt(1 + sigma^2)
    = sqrt(alpha_bar_t) (Ho et al. 2020, Eq. 4 divided by sqrt(alpha_bar_t)), and its output gives
      eps-prediction: D = x - sigma eps_hat                                   (c_skip = 1, c_out = -sigma),
      v-prediction:   D = c_in^2 x - sigma c_in v_hat  (Salimans & Ho 2022)  (c_skip = c_in^2, c_out = -sigma c_in).
    t is the timestep of sigma: the exact int64 index when every sigma is in the table `sigmas` (as the ones
    from `discrete_sigmas` are), otherwise a float32 t interpolated linearly in log sigma, clamped to [0, T-1].
    `clip_denoised` clamps D to [-clip, clip] (images in [-1, 1] use 1.0, as Ho et al. 2020's sampler does).

    Coefficients are computed in float64 on the CPU; tensors keep x's dtype and device. The caller sets the
    network's train/eval mode; gradients flow through unless the caller (or the sampler) disables them.
    """

    def __init__(
        self,
        net: Callable,
        alpha_bar: torch.Tensor,
        prediction: str = "eps",
        clip_denoised: float | None = None,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; expected one of: {', '.join(PREDICTIONS)}")
        if alpha_bar.dim() != 1 or len(alpha_bar) < 2:
            raise ValueError(
                f"alpha_bar must be a (T,) tensor with T >= 2, got shape {tuple(alpha_bar.shape)}"
            )
        self.net = net
        self.prediction = prediction
        self.clip_denoised = clip_denoised
        self.sigmas = vp_sigmas(alpha_bar.detach().cpu())  # (T,) float64, increasing with t
        if not (self.sigmas[1:] > self.sigmas[:-1]).all():
            raise ValueError("alpha_bar must be strictly decreasing (sigma increasing with t)")
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """Timesteps (CPU) of sigma (any shape): int64 if all sigmas are table entries, else float32 (log-sigma interpolation)."""
        sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64).contiguous()
        T = len(self.sigmas)
        idx = torch.searchsorted(self.sigmas, sigma).clamp(max=T - 1)  # first entry >= sigma
        if (self.sigmas[idx] == sigma).all():
            return idx
        lo = (idx - 1).clamp(0, T - 2)
        w = (sigma.log() - self.log_sigmas[lo]) / (self.log_sigmas[lo + 1] - self.log_sigmas[lo])
        return (lo + w).clamp(0, T - 1).to(torch.float32)

    def t_to_sigma(self, t) -> torch.Tensor:
        """sigma (float64, CPU) at timesteps t: table entries for integer t, log-sigma interpolation between them."""
        t = torch.as_tensor(t).detach().cpu()
        if not t.is_floating_point():
            return self.sigmas[t]
        t = t.to(torch.float64).clamp(0, len(self.sigmas) - 1)
        lo = t.floor().long().clamp(max=len(self.sigmas) - 2)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]).exp()

    def __call__(self, x: torch.Tensor, sigma, cond: dict | None = None) -> torch.Tensor:
        """x (B, ...) at noise level sigma ((B,) or scalar) -> x_0 estimate (B, ...), same dtype."""
        B = x.shape[0]
        sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
        sigma = sigma.expand(B) if sigma.dim() == 0 else sigma
        assert sigma.shape == (B,), f"sigma {tuple(sigma.shape)} for a batch of {B}"
        t = self.sigma_to_t(sigma).to(x.device)

        def coef(c: torch.Tensor) -> torch.Tensor:  # (B,) float64 -> (B, 1, ..., 1) in x's dtype and device
            return c.to(device=x.device, dtype=x.dtype).reshape(B, *([1] * (x.dim() - 1)))

        c_in = 1 / (1 + sigma**2).sqrt()
        out = self.net(x * coef(c_in), t, **(cond or {}))
        assert out.shape == x.shape, f"network output {tuple(out.shape)} != input {tuple(x.shape)}"
        if self.prediction == "eps":
            denoised = x - coef(sigma) * out
        else:
            denoised = coef(c_in**2) * x - coef(sigma * c_in) * out
        if self.clip_denoised:
            denoised = denoised.clamp(-self.clip_denoised, self.clip_denoised)
        return denoised.to(x.dtype)
