"""Exponential moving average of weights, used for sampling (Polyak averaging; Ho et al. 2020 use 0.9999).

The EMA network is a copy of the model that *shares* every tensor it does not average: frozen dependencies
(an autoencoder under a latent model, a teacher) and the networks a family leaves out (`EMA_MODULES`: the
GAN averages G only, not D). So the EMA costs memory for trainable weights only, and its checkpoint entries
(`state_dict`) hold only what it averages.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _tensors(module: nn.Module):
    yield from module.parameters()
    yield from module.buffers()


class EMA:
    """ema = decay_t * ema + (1 - decay_t) * weights after every optimizer step.

    decay_t = min(decay, (1 + n) / (10 + n)) with n the number of updates so far, so early averages are not
    dominated by the random initialisation (the warm-up used by TensorFlow's ExponentialMovingAverage).
    `shared` holds the ids of tensors that are not averaged (see the module docstring); `keep` lists other
    objects the copy must share rather than copy (the dependencies' run records, which hold family modules).
    """

    def __init__(self, model: nn.Module, decay: float, shared: set[int] = frozenset(), keep=()):
        self.decay = decay
        memo = {i: t for t in _tensors(model) if (i := id(t)) in shared}
        memo.update({id(o): o for o in keep})
        self.model = copy.deepcopy(model, memo).eval()
        self.shared = set(shared)
        src = dict(model.named_parameters())
        # (ema tensor, model tensor) pairs, by name, for what is averaged (parameters) or copied (buffers)
        self._params = [(p, src[n]) for n, p in self.model.named_parameters() if id(src[n]) not in shared]
        bsrc = dict(model.named_buffers())
        self._buffers = [(b, bsrc[n]) for n, b in self.model.named_buffers() if id(bsrc[n]) not in shared]
        for e, _ in self._params:
            e.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        d = min(self.decay, (1 + num_updates) / (10 + num_updates))
        for e, p in self._params:
            e.lerp_(p.detach().to(e.dtype), 1 - d)
        for e, b in self._buffers:
            e.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged entries only (shared tensors live in the model's own entries, or in a dependency)."""
        own = {id(e) for e, _ in self._params} | {id(e) for e, _ in self._buffers}
        return {k: v for k, v in self.model.state_dict(keep_vars=True).items() if id(v) in own}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        expected = self.state_dict()
        if set(sd) != set(expected):
            raise KeyError(f"EMA entries differ: missing {sorted(set(expected) - set(sd))[:5]}, "
                           f"unexpected {sorted(set(sd) - set(expected))[:5]}")
        with torch.no_grad():
            for k, v in sd.items():
                expected[k].copy_(v)
