"""Likelihood units: nats per image <-> bits per dimension.

Convention: images are 8-bit, so a model of continuous values must be turned into a discrete likelihood
before comparison. genlab families report log P(x) of the 8-bit image in nats; a continuous density p on
[-1, 1] pixel units becomes (a lower bound on) it by uniform dequantisation, log P(x) >= log p(x) + D log(2/256)
(Theis et al. 2016; the bin of one 8-bit level is 2/256 wide in [-1, 1] units; `genlab.dequantization` holds
that offset, once). Bits/dim = -log P(x) / (D ln 2).
"""

from __future__ import annotations

import math

import torch

from genlab.dequantization import dequantization_offset

__all__ = ["bits_per_dim", "dequantization_offset", "nats_from_bits_per_dim"]


def bits_per_dim(log_likelihood_nats, num_dims: int):
    """-log P(x) / (D ln 2): nats per image (higher is better) -> bits per dimension (lower is better)."""
    return -torch.as_tensor(log_likelihood_nats, dtype=torch.float64) / (num_dims * math.log(2))


def nats_from_bits_per_dim(bpd, num_dims: int):
    """The inverse of `bits_per_dim`: log P(x) in nats per image."""
    return -torch.as_tensor(bpd, dtype=torch.float64) * num_dims * math.log(2)
