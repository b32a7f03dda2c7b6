"""DDPM: denoising diffusion probabilistic models (Ho et al. 2020), sampled by any of the shared samplers.

Network: the shared U-Net (`genlab.nn.UNet`) for images, an MLP for 2-D points. Objective: the "simple" loss
of Ho et al. 2020 (Eq. 14), MSE between the network output and eps, or v (Salimans & Ho 2022). Samplers and
schedules live in `genlab.samplers`; this file only wires them to the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.models.labels import class_labels
from genlab.nn import MLPDenoiser, UNet
from genlab.rng import SampleRNG
from genlab.samplers import SAMPLERS as SAMPLER_FNS
from genlab.samplers import (
    VPDenoiser,
    classifier_free_guidance,
    discrete_sigmas,
    karras_sigmas,
    make_alpha_bar,
    q_sample,
    sample_in_chunks,
    v_target,
    vp_sigmas,
)
from genlab.samplers.classifier_guidance import VPClassifier, classifier_guidance

SAMPLERS = tuple(SAMPLER_FNS)  # ddpm, ddim, euler, heun, dpmpp_2m
SAMPLE_OPTIONS = ("sampler", "steps", "eta", "sigmas", "guidance", "classifier", "callback", "batch_size")
RESUMABLE = ("guidance", "sigmas")  # sampling defaults a resumed run may change


@dataclass
class Config:
    class_cond: bool = False  # condition on class labels (needs labelled data; sample with --class)
    p_uncond: float = 0.0  # classifier-free guidance training: drop each label with this probability (0.1-0.2)
    # U-Net (images)
    base_channels: int = 64  # width of the first level; 32-128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # width multiplier per resolution level
    num_res_blocks: int = 2  # ResBlocks per level; 1-3
    attn_resolutions: list[int] = field(default_factory=lambda: [7])  # feature-map sizes with self-attention
    dropout: float = 0.1  # in ResBlocks; 0-0.3
    # MLP (2-D points)
    mlp_hidden: int = 256  # hidden width
    mlp_layers: int = 3  # residual hidden layers
    # diffusion
    schedule: Literal["linear", "cosine"] = "linear"  # linear (Ho et al. 2020) | cosine (Nichol & Dhariwal 2021)
    timesteps: int = 1000  # T, training diffusion steps
    beta_start: float = 1e-4  # linear schedule's first beta
    beta_end: float = 0.02  # linear schedule's last beta
    prediction: Literal["eps", "v"] = "eps"  # what the network predicts (v: Salimans & Ho 2022)
    # optimisation
    lr: float = 2e-4  # Adam learning rate; 1e-4 - 1e-3
    weight_decay: float = 0.0  # AdamW weight decay
    # sampling defaults
    sampler: Literal["ddim", "ddpm", "euler", "heun", "dpmpp_2m"] = "ddim"  # see genlab.samplers
    sample_steps: int = 50  # steps of the sampler; 10-1000 (Heun evaluates the network ~2x per step)
    eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 DDPM-like
    sigmas: Literal["uniform", "karras"] = "uniform"  # sampling grid: evenly spaced timesteps | Karras et al. 2022 Eq. 5
    guidance: float = 1.0  # classifier-free guidance scale s (1: conditional model, 0: unconditional; needs p_uncond > 0)


def needs(cfg: Config) -> tuple[str, ...]:
    """Batch keys the family trains on."""
    return ("x", "y") if cfg.class_cond else ("x",)


class DDPM(nn.Module):
    """The denoising network; `forward(x_t, t, y=None)` returns its raw prediction (eps or v)."""

    def __init__(self, cfg: Config, spec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.data_shape = list(spec.shape)
        self.num_classes = spec.num_classes if cfg.class_cond else 0
        if not spec.is_image:
            self.net = MLPDenoiser(spec.shape[0], cfg.mlp_hidden, cfg.mlp_layers, self.num_classes)
        else:
            c, h, w = spec.shape
            self.net = UNet(c, h, cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attn_resolutions,
                            cfg.dropout, self.num_classes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x_t, t, y=y)


def build(cfg: Config, spec, deps) -> DDPM:
    return DDPM(cfg, spec)


def make_optimizers(model: DDPM, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)}


@lru_cache(maxsize=8)
def _alpha_bar(schedule: str, T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    return make_alpha_bar(schedule, T, beta_start, beta_end)


def alpha_bar(cfg: Config) -> torch.Tensor:
    """The schedule's alpha_bar (T,) float64, computed once per setting."""
    return _alpha_bar(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end)


def loss_fn(model, cfg: Config, x0, y, t, eps) -> torch.Tensor:
    """L_simple (Ho et al. 2020, Eq. 14): || target - net(x_t, t) ||^2, target eps or v."""
    ab = alpha_bar(cfg).to(x0.device)
    x_t = q_sample(x0, t, eps, ab)
    target = eps if cfg.prediction == "eps" else v_target(x0, eps, ab[t])
    return F.mse_loss(model(x_t, t, y).float(), target)


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One optimizer step: t ~ U{0..T-1} and eps ~ N(0, I) per sample (from the sample's own stream)."""
    net = ctx.unwrap(model)
    cfg = net.cfg
    assert list(batch["x"].shape[1:]) == net.data_shape, f"batch {tuple(batch['x'].shape)} vs data {net.data_shape}"

    def loss(mb, rng):
        x0 = mb["x"]
        t = rng.randint(cfg.timesteps).squeeze(-1).to(x0.device)  # (B,)
        eps = rng.randn_like(x0)
        y = mb["y"] if cfg.class_cond else None
        if y is not None and cfg.p_uncond > 0:  # label dropout (Ho & Salimans 2022, Algorithm 1): the "no label" index
            drop = rng.rand().to(x0.device) < cfg.p_uncond  # (B,)
            y = torch.where(drop, torch.full_like(y, net.num_classes), y)
        value = loss_fn(model, cfg, x0, y, t, eps)
        return value, {"loss": value.item()}

    return ctx.update("model", loss)


def denoiser(model: DDPM, guidance: float = 1.0):
    """The network as a denoiser D(x, sigma, cond) -> x_0 for the shared samplers (images clipped to [-1, 1]).

    With `guidance` != 1, classifier-free guidance (the one wrapper, genlab.samplers) mixes the conditional and
    the "no label" branch; the guided estimate is clipped, not the branches.
    """
    clip = 1.0 if len(model.data_shape) == 3 else None
    if guidance == 1:
        return VPDenoiser(model, alpha_bar(model.cfg), model.cfg.prediction, clip_denoised=clip)
    if not model.cfg.class_cond:
        raise ValueError("guidance needs a class-conditional model (model.class_cond=true, model.p_uncond > 0)")
    if model.cfg.p_uncond <= 0:
        raise ValueError("this run was trained without label dropout (model.p_uncond=0), so its unconditional branch "
                         "is untrained; train with model.p_uncond=0.1 for classifier-free guidance")
    null = torch.tensor([model.num_classes], device=next(model.parameters()).device)
    D = classifier_free_guidance(VPDenoiser(model, alpha_bar(model.cfg), model.cfg.prediction), guidance, {"y": null})
    return D if clip is None else (lambda x, sigma, cond=None: D(x, sigma, cond).clamp(-clip, clip))


def classifier_guided_denoiser(model: DDPM, classifier: nn.Module, scale: float):
    """The denoiser plus classifier guidance (Dhariwal & Nichol 2021): D' = D + scale sigma^2 grad log p(y | x).

    `classifier` is a trained `classifier` run's model: `classifier(x_t, t) -> logits`, with `data_shape`,
    `num_classes` and the `alpha_bar` it was trained on, which must be this model's (the gradient is taken at the
    same x_t and t). A class-conditional model is guided from its conditional branch (Dhariwal & Nichol's best
    setting, their Table 4), an unconditional one from its only branch; the labels in `cond` go to both.
    """
    for attr in ("data_shape", "num_classes", "alpha_bar"):
        if not hasattr(classifier, attr):
            raise ValueError(f"classifier= must be a trained 'classifier' run's model (it has no '{attr}'); "
                             "train one with `genlab train classifier --data DATASET`")
    if list(classifier.data_shape) != list(model.data_shape):
        raise ValueError(f"the classifier was trained on data of shape {list(classifier.data_shape)}, this model on "
                         f"{list(model.data_shape)}; train the classifier on the model's dataset")
    if model.cfg.class_cond and classifier.num_classes != model.num_classes:
        raise ValueError(f"the classifier has {classifier.num_classes} classes, this model {model.num_classes}")
    ab = alpha_bar(model.cfg)
    if classifier.alpha_bar.shape != ab.shape or not torch.allclose(classifier.alpha_bar.double(), ab):
        raise ValueError("the classifier was trained on another noise schedule (model.schedule, timesteps, beta_start, "
                         "beta_end must match the diffusion run's)")
    D = denoiser(model)
    base = D if model.cfg.class_cond else (lambda x, sigma, cond=None: D(x, sigma, None))
    return classifier_guidance(base, VPClassifier(classifier, ab), scale)


@torch.no_grad()
def sample(
    model: DDPM,
    n: int,
    *,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    sigmas: str | None = None,
    guidance: float | None = None,
    classifier: nn.Module | None = None,
    callback=None,
    batch_size: int = 256,
) -> torch.Tensor:
    """n samples (n, *data_shape); images in [-1, 1]. Each image has its own noise stream (batch-size independent).

    x_T ~ N(0, I) per image is scaled to the first sigma (x = x_T sqrt(1 + sigma_0^2)), then any sampler of
    `genlab.samplers.SAMPLERS` runs over the denoiser on `steps` noise levels: evenly spaced training
    timesteps (`sigmas="uniform"`, what DDPM and DDIM use) or Karras et al.'s grid (`"karras"`, dense at low
    noise, where the second-order samplers heun and dpmpp_2m need their steps). `guidance` s != 1 samples with
    classifier-free guidance (Ho & Salimans 2022; their w = s - 1) and needs class labels in `cond`.
    With `classifier` (a trained `classifier` run's model), `guidance` is instead the classifier-guidance scale
    (Dhariwal & Nichol 2021; default 1, 0 = unguided) and classifier-free guidance is off; it needs labels too
    and also works for an unconditional model (see `classifier_guided_denoiser`).
    """
    cfg = model.cfg
    sampler = sampler or cfg.sampler
    if sampler not in SAMPLER_FNS:
        raise ValueError(f"unknown sampler '{sampler}' for ddpm; expected one of: {', '.join(SAMPLERS)}")
    steps = steps or cfg.sample_steps
    if not 1 <= steps <= cfg.timesteps:
        raise ValueError(f"steps must be in 1..{cfg.timesteps}, got {steps}")
    opts = {"eta": cfg.eta if eta is None else eta} if sampler == "ddim" else {}
    device = next(model.parameters()).device
    if classifier is not None:  # classifier guidance: the labels are the classifier's targets
        D = classifier_guided_denoiser(model, classifier, 1.0 if guidance is None else guidance)
        y = class_labels(cond, n, True, classifier.num_classes)
        if y is None:
            raise ValueError("classifier guidance needs class labels: pass --class (or cond={'y': labels})")
    else:
        guidance = cfg.guidance if guidance is None else guidance
        D = denoiser(model, guidance)  # first: it says when the run cannot be guided at all
        y = class_labels(cond, n, cfg.class_cond, model.num_classes)
        if guidance != 1 and y is None:
            raise ValueError("guided sampling needs class labels: pass --class (or cond={'y': labels})")
    grid = sigmas or cfg.sigmas
    if grid not in ("uniform", "karras"):
        raise ValueError(f"unknown sigmas '{grid}'; expected one of: uniform, karras")
    if grid == "karras" and steps < 2:
        raise ValueError("the karras grid needs steps >= 2")
    table = vp_sigmas(alpha_bar(cfg))  # (T,) the training noise levels; a guided D is a plain function
    sigmas = (discrete_sigmas(alpha_bar(cfg), steps) if grid == "uniform"
              else karras_sigmas(table[0].item(), table[-1].item(), steps))
    is_image = len(model.data_shape) == 3

    def run(x, c, r):
        x = SAMPLER_FNS[sampler](D, x, sigmas, cond={"y": c["y"].to(device)} if c else None, rng=r, callback=callback,
                                 **opts)
        return x.clamp(-1, 1) if is_image else x

    return sample_in_chunks(model, n, model.data_shape, sigmas[0], {"y": y} if y is not None else {}, run,
                            generator=generator, device=device, batch_size=batch_size)


def report_images(model: DDPM, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A denoising strip: rows are images, columns x_T ... x_0 (8 rows x 10 columns), in the VP scale x_t."""
    if len(model.data_shape) != 3:
        return {}
    frames = []
    steps = model.cfg.sample_steps
    keep = set(torch.linspace(0, steps - 1, 9).round().long().tolist())

    def grab(i, sigma, x, denoised):
        if i in keep:
            frames.append((x / (1 + sigma**2) ** 0.5).clamp(-1, 1).cpu())

    cond = {"y": batch["y"][:8]} if model.cfg.class_cond and "y" in batch else None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    # sample() draws x_T first from each image's stream, so this is the x_T the strip starts from
    x_T = SampleRNG.from_generator(8, torch.Generator().manual_seed(seed)).randn(*model.data_shape)
    sample(model, 8, cond=cond, generator=torch.Generator().manual_seed(seed), callback=grab)
    strip = torch.stack([x_T, *frames], dim=1)  # (8, 10, C, H, W)
    return {"denoising": strip}
