"""`StepContext`: what a family's `train_step` gets from the loop — named update phases, noise, the EMA network.

A training step is one or more *phases*, each an update of one optimizer (`opts[name]`): the GAN's D phase
then G phase, a VAE's single "model" phase. `ctx.update(name, loss_fn)` owns everything around the loss:

1. zero every gradient of the model (so a phase never sees another phase's gradients);
2. for each of the `grad_accum` micro-batches of this process's share of the batch: call
   `loss_fn(micro_batch, rng)`, backpropagate `loss / grad_accum`, inside DDP's `no_sync` except on the last
   micro-batch (gradients are all-reduced once per phase);
3. clip the phase's parameters' gradient norm, step the optimizer, zero every gradient again.

Phases run micro-batch-major *within* a phase and phase-major across phases, so gradient accumulation of k
micro-batches of size b is the same computation as one batch of size k*b (D is updated on the whole batch
before G sees it), and a 2-process run with batch b is the same as one process with batch 2b.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from genlab.rng import SampleRNG

LossFn = Callable[[dict, SampleRNG], "tuple[torch.Tensor, dict[str, float]]"]


def _modules(model: nn.Module) -> list[nn.Module]:
    """The separately prepared networks (ModuleDict children) or the model itself."""
    return list(model.values()) if isinstance(model, nn.ModuleDict) else [model]


def split_batch(batch: dict, k: int) -> list[dict]:
    """k equal micro-batches of a dict batch (tensors and lists are sliced along their first axis)."""
    n = len(batch["x"])
    if n % k:
        raise ValueError(f"batch of {n} does not split into {k} micro-batches")
    m = n // k
    return [{key: v[i * m : (i + 1) * m] for key, v in batch.items()} for i in range(k)]


class StepContext:
    """One training step's context (see the module docstring). Works without Accelerate (`accelerator=None`)."""

    def __init__(self, model: nn.Module, opts: dict[str, torch.optim.Optimizer], batch: dict, rng: SampleRNG, *,
                 step: int = 0, micro_batches: int = 1, grad_clip: float = 0.0, accelerator=None,
                 ema: nn.Module | None = None):
        self.model, self.opts, self.batch, self.rng = model, opts, batch, rng
        self.step = step  # 0-based index of this optimizer step
        self.micro_batches = micro_batches
        self.grad_clip = grad_clip
        self.accelerator = accelerator
        self.ema = ema  # the EMA (target) network, None when train.ema_decay = 0

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The module without its DDP wrapper (for reading `cfg`, calling helpers that are not `forward`)."""
        return self.accelerator.unwrap_model(model) if self.accelerator is not None else model

    def _zero_grad(self) -> None:
        for m in _modules(self.model):
            m.zero_grad(set_to_none=True)

    def _no_sync(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            for m in _modules(self.model):
                stack.enter_context(self.accelerator.no_sync(m))
        return stack

    def update(self, name: str, loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step of `opts[name]` on `loss_fn`'s mean loss over the step's batch; returns mean logs."""
        opt = self.opts[name]
        k = self.micro_batches
        micro = split_batch(self.batch, k)
        m = len(micro[0]["x"])
        logs: dict[str, float] = {}
        self._zero_grad()
        for i, mb in enumerate(micro):
            with self._no_sync() if i < k - 1 else contextlib.nullcontext():
                loss, out = loss_fn(mb, self.rng.split(i * m, (i + 1) * m))
                loss = loss / k
                if self.accelerator is not None:
                    self.accelerator.backward(loss)
                else:
                    loss.backward()
            for key, v in out.items():
                logs[key] = logs.get(key, 0.0) + float(v) / k
        if self.grad_clip > 0:
            params = [p for g in opt.param_groups for p in g["params"]]
            if self.accelerator is not None:
                self.accelerator.clip_grad_norm_(params, self.grad_clip)
            else:
                nn.utils.clip_grad_norm_(params, self.grad_clip)
        opt.step()
        self._zero_grad()
        return logs
