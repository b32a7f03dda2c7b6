"""Model families: one file each, listed explicitly in `FAMILIES` (no registration decorators).

A family is a module that satisfies `Family` below. Adding one touches its own file, one line of `FAMILIES`,
its presets in configs/, its docs page and its tests — never the training loop.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from genlab.errors import unknown
from genlab.models import (
    ae,
    autoencoder_kl,
    bicyclegan,
    classifier,
    consistency,
    cyclegan,
    ddgan,
    ddpm,
    distill,
    flow,
    gan,
    gmm,
    lcm,
    ldm,
    pix2pix,
    pixelcnn,
    progan,
    stargan,
    stylegan,
    vae,
    vqvae,
)


class Family(Protocol):
    """The family contract (a module, checked structurally; see docs/architecture.md).

    Batches are dicts (keys in `genlab.data.BATCH_KEYS`: `x`, `y`, `x_src`, `domain`, `text_emb`, ...);
    conditions for sampling are dicts with the same keys (without `x`).
    """

    Config: type  # dataclass; every field defaulted and commented; choices are Literal types
    SAMPLERS: tuple[str, ...]  # names `sample(..., sampler=)` takes; () when the family cannot sample
    SAMPLE_OPTIONS: tuple[str, ...]  # keyword options `sample` takes (e.g. sampler, steps, eta)

    def needs(self, cfg: Any) -> tuple[str, ...]:
        """Batch keys the family trains on for this config, e.g. ("x", "y"); checked against the data spec."""

    def build(self, cfg: Any, spec: Any, deps: dict[str, Any]) -> nn.Module:
        """The model (an nn.ModuleDict when several networks are optimised separately, e.g. {"G", "D"}).

        `spec` (`genlab.data.DataSpec`): sample shape, classes, condition kinds. `deps`: the frozen runs the
        config names (fields listed in the family's optional `DEPS`), each with `.model`, `.family`, `.spec`,
        `.config`; a family registers a dependency's model as a submodule so it moves with the model, and the
        loop keeps it out of checkpoints, the EMA and the optimizers.
        """

    def make_optimizers(self, model: nn.Module, cfg: Any) -> dict[str, torch.optim.Optimizer]:
        """{"phase name": optimizer}; a closed-form family returns {} and provides `fit` instead."""

    def train_step(self, model: nn.Module, batch: dict, opts: dict, ctx: Any) -> dict[str, float]:
        """One optimizer step as named phases, `ctx.update(name, loss_fn)` each (see training/context.py)."""

    def sample(self, model: nn.Module, n: int, *, cond: dict | None = None,
               generator: torch.Generator | None = None, **opts) -> torch.Tensor:
        """(n, C, H, W) in [-1, 1] ((n, D) points for 2-D toys); one noise stream per sample."""


# Optional members: DEPS (config fields naming runs), DEP_FAMILIES ({field: allowed families}), EMA_MODULES
# (children the EMA averages; default all), RESUMABLE (extra model keys a resume may change), encode/decode,
# log_likelihood(model, x, *, generator) in nats, anomaly_score(model, x, *, generator), report_images(model,
# batch, generator), fit(model, batch, *, seed) for closed-form families; image-to-image translation:
# translate(model, x_src, *, to=None, n_outputs=1, generator=None) -> (B, K, C, H, W) for `genlab translate`
# (see genlab/translate.py), and eval_conditions(test, n) -> dict building evaluation conditions from the test
# Dataset when they are not its own batch keys (see genlab.training.data.eval_conditions).

FAMILIES = {
    # diffusion and its fast / guided relatives
    "ddpm": ddpm, "classifier": classifier, "distill": distill, "consistency": consistency, "ddgan": ddgan,
    # autoencoders, mixtures, likelihood models
    "vae": vae, "ae": ae, "vqvae": vqvae, "gmm": gmm, "pixelcnn": pixelcnn, "flow": flow,
    # GANs: unconditional / class-conditional, style-based, image-to-image
    "gan": gan, "progan": progan, "stylegan": stylegan,
    "pix2pix": pix2pix, "cyclegan": cyclegan, "bicyclegan": bicyclegan, "stargan": stargan,
    # latent diffusion: first stage, diffusion in its latent space, latent consistency
    "autoencoder-kl": autoencoder_kl, "ldm": ldm, "lcm": lcm,
}


def get_family(name: str):
    if name not in FAMILIES:
        raise unknown("family", name, FAMILIES)
    return FAMILIES[name]
