"""The discrete likelihood of 8-bit images from a continuous density: uniform dequantisation, written once.

Images inside genlab hold 256 equally spaced levels on [-1, 1] (level k at x = 2k/255 - 1, what
`genlab.data.to_float` makes). The 256 bins [2k/256 - 1, 2(k+1)/256 - 1) tile [-1, 1), each of width 2/256,
and level k lies inside bin k. A continuous density p on that interval defines a discrete model
P(k) = integral of p over bin k, and, by Jensen's inequality (Theis et al. 2016; Ho et al. 2019, Sec. 3.1),

    log P(x) >= E_u[log p(dequantize(x, u))] + D log(2/256),   u ~ U[0, 1)^D,

with equality when p is flat across each bin. A model trained on dequantised data (a flow) maximises this
bound; a density evaluated at the level itself (the VAE's Gaussian decoder, a GMM on pixels) uses
log p(x) + D log(2/256), the same offset, an approximation that needs p to vary little across one bin.
Either way the offset D log(2/256) is added here and nowhere else (`dequantization_offset`).

A leaf module (it imports only torch): the families (through `discrete_log_likelihood`) and the metrics (unit
conversions in `genlab.metrics.likelihood`) share this one definition.
"""

from __future__ import annotations

import math

import torch

LEVELS = 256  # 8-bit images


def dequantize(x: torch.Tensor, u: torch.Tensor | float, levels: int = LEVELS) -> torch.Tensor:
    """Level x (one of `levels` equally spaced values on [-1, 1]) plus u in [0, 1) of its bin -> y in [-1, 1).

    y = 2 (k + u) / levels - 1 with k = (x + 1) (levels - 1) / 2 the level's index; affine in x and u, so it is
    also defined (and exactly invertible, `undequantize`) between levels. `u`: uniform noise of the caller's
    per-sample generator (training, likelihood) or 0.5, the bin's centre (a deterministic input).
    """
    k = (x + 1) * ((levels - 1) / 2)
    return (k + u) * (2 / levels) - 1


def undequantize(y: torch.Tensor, u: torch.Tensor | float = 0.5, levels: int = LEVELS) -> torch.Tensor:
    """The inverse of `dequantize` for a given u: y in [-1, 1) -> x on the levels' scale (not rounded).

    With u = 0.5, rounding the result to the nearest level (`genlab.data.to_uint8`) gives the bin y lies in.
    """
    k = (y + 1) * (levels / 2) - u
    return k * (2 / (levels - 1)) - 1


def dequantization_offset(num_dims: int, levels: int = LEVELS, value_range: float = 2.0) -> float:
    """D log(range / levels), the log-volume of one D-dimensional bin: continuous log-density -> discrete bound."""
    return num_dims * math.log(value_range / levels)


def discrete_log_likelihood(log_density: torch.Tensor, num_dims: int, levels: int = LEVELS) -> torch.Tensor:
    """log P(x) of the 8-bit image, in nats: a continuous log-density on [-1, 1]^D plus D log(2 / levels).

    See the module docstring for when this is a bound and when an approximation.
    """
    return log_density + dequantization_offset(num_dims, levels)
