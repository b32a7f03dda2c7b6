"""Exponential moving average of weights, used for sampling (Polyak averaging; Ho et al. 2020 use 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """ema = decay_t * ema + (1 - decay_t) * weights after every optimizer step.

    decay_t = min(decay, (1 + n) / (10 + n)) with n the number of updates so far, so early averages are not
    dominated by the random initialisation (the warm-up used by TensorFlow's ExponentialMovingAverage).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        d = min(self.decay, (1 + num_updates) / (10 + num_updates))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
