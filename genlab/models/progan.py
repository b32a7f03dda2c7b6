"""Progressive growing of GANs (Karras et al. 2018, "Progressive Growing of GANs for Improved Quality,
Stability, and Variation"), with each of its contributions behind a switch for the ablation:

- growing (Sec. 2, Fig. 2): G and D start at 4x4 and double their resolution up to the data's; each new
  level fades in over `phase_steps` optimizer steps, alpha rising linearly from 0 to 1, then trains stable for
  `phase_steps`. The (level, alpha) of a step is a pure function of the step index (`schedule`), so a resume
  in the middle of a fade-in continues exactly. Real images are shown to D at the current resolution (average
  pooled) and, during a fade, blended the same way (the reference code's `lod` blend of the reals).
- minibatch standard deviation in D (Sec. 3; `genlab.nn.style.minibatch_stddev`, groups of `mbstd_group`
  consecutive samples, so micro-batches and processes see the same statistic when their batch is a multiple
  of the group).
- equalized learning rate (Sec. 4.1) and pixelwise feature normalisation in G (Sec. 4.2).
Loss: WGAN-GP with the drift term eps_drift E[D(x)^2] (Sec. A.1: lambda = 10, eps_drift = 0.001), as in the
paper, or the non-saturating loss (option). No BatchNorm anywhere (it would couple the samples of a batch).

Samples are G's output at the current level, upsampled (nearest) to the data size when growing has not
reached it yet. Logged: `resolution` and `alpha` with the losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn.style import (
    EqualConv2d,
    EqualLinear,
    GrowingDiscriminator,
    downsample,
    fade,
    forget_inactive,
    interpolation_strip,
    level_widths,
    levels_for,
    lrelu,
    pixel_norm,
    touch,
    upsample,
)  # fmt: skip
from genlab.rng import SampleRNG

SAMPLERS = ("prior",)
SAMPLE_OPTIONS = ("sampler", "batch_size")
EMA_MODULES = ("G",)  # samples come from the EMA of G (the paper's Gs, Sec. A.1); D is not averaged


@dataclass
class Config:
    latent_dim: int = 128  # size of z (512 in the paper)
    channels: int = 64  # widths of the 4x4 .. 16x16 levels (halved per level above; 512 in the paper)
    min_channels: int = 16  # the narrowest level
    growing: bool = True  # progressive growing; false: train at the full resolution from step 0
    phase_steps: int = 200  # optimizer steps per fade-in and per stable phase (600k images each in the paper)
    mbstd: bool = True  # minibatch standard deviation layer in D
    mbstd_group: int = 4  # consecutive samples per stddev group (must divide every micro-batch)
    equalized_lr: bool = True  # run-time He scaling of every weight (false: He initialisation)
    pixel_norm: bool = True  # pixelwise feature normalisation in G (and of z)
    loss: Literal["wgan-gp", "nonsaturating"] = "wgan-gp"  # the paper's WGAN-GP, or the non-saturating loss
    gp_weight: float = 10.0  # lambda of the gradient penalty (wgan-gp)
    drift: float = 0.001  # eps_drift E[D(x_real)^2], keeps the WGAN critic near 0 (wgan-gp)
    r1_gamma: float = 0.0  # R1 penalty gamma/2 E||grad D(x_real)||^2 (nonsaturating); 0 disables
    lr: float = 1e-3  # Adam learning rate of G and D (paper: 0.001)
    beta1: float = 0.0  # Adam beta1 (paper: 0)
    beta2: float = 0.99  # Adam beta2 (paper: 0.99)


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x",)


def schedule(step: int, levels: int, phase_steps: int, growing: bool = True) -> tuple[int, float]:
    """(level, alpha) at a 0-based optimizer step: level 0 (4x4) stable, then per new level a fade-in (alpha
    0 -> 1 over phase_steps steps) and a stable phase; the top level stays once reached."""
    if not growing or levels == 1:
        return levels - 1, 1.0
    phase, i = divmod(step, phase_steps)  # phases: stable 0, fade 1, stable 1, fade 2, ...
    level = (phase + 1) // 2
    if level >= levels:
        return levels - 1, 1.0
    return (level, i / phase_steps) if phase % 2 else (level, 1.0)


# ----------------------------------------------------------------------------- networks


class Generator(nn.Module):
    """z (B, Z) -> (B, C, r, r) at level r = 4 * 2^level: dense -> 4x4, 3x3 conv; per level: 2x nearest
    upsampling and two 3x3 convs; toRGB (1x1) per level, the old level's upsampled during a fade (Fig. 2)."""

    def __init__(self, cfg: Config, out_channels: int, levels: int):
        super().__init__()
        self.cfg, self.levels = cfg, levels
        w = level_widths(levels, cfg.channels, cfg.min_channels)
        eq = {"equalized": cfg.equalized_lr}
        self.input = EqualLinear(cfg.latent_dim, w[0] * 16, gain=2**0.5 / 4, **eq)  # the paper's 4x4 "conv" on z
        self.input_conv = EqualConv2d(w[0], w[0], 3, **eq)
        self.blocks = nn.ModuleList(
            [nn.Identity()] + [nn.ModuleList([EqualConv2d(w[i - 1], w[i], 3, **eq), EqualConv2d(w[i], w[i], 3, **eq)])
                               for i in range(1, levels)])  # fmt: skip
        self.to_rgb = nn.ModuleList(EqualConv2d(w[i], out_channels, 1, gain=1.0, **eq) for i in range(levels))

    def _norm(self, h: torch.Tensor) -> torch.Tensor:
        return pixel_norm(h) if self.cfg.pixel_norm else h

    def active_parameters(self, level: int, alpha: float) -> set[int]:
        mods = [self.input, self.input_conv, *self.blocks[1 : level + 1], self.to_rgb[level]]
        if alpha < 1 and level > 0:
            mods.append(self.to_rgb[level - 1])
        return {id(p) for m in mods for p in m.parameters()}

    def forward(self, z: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        level = self.levels - 1 if level is None else level
        z = self._norm(z)
        h = self._norm(lrelu(self.input(z).reshape(z.shape[0], -1, 4, 4)))  # (B, w0, 4, 4)
        h = self._norm(lrelu(self.input_conv(h)))
        prev = h
        for i in range(1, level + 1):
            prev = h
            conv1, conv2 = self.blocks[i]
            h = self._norm(lrelu(conv1(upsample(h))))
            h = self._norm(lrelu(conv2(h)))
        out = self.to_rgb[level](h)
        if level > 0 and alpha < 1:  # the old level's image, upsampled, blended with the new one
            out = fade(upsample(self.to_rgb[level - 1](prev)), out, alpha)
        return out + touch(self.parameters())


class ProGAN(nn.ModuleDict):
    """{"G": Generator, "D": GrowingDiscriminator}; G carries `step`, the optimizer steps taken (a buffer, saved
    and copied into the EMA), from which sampling knows the current level and alpha."""

    def __init__(self, cfg: Config, spec):
        shape = list(spec.shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"progan needs square images, got data of shape {tuple(shape)}")
        levels = levels_for(shape[1])
        if cfg.phase_steps < 1 or cfg.mbstd_group < 1:
            raise ValueError("model.phase_steps and model.mbstd_group must be >= 1")
        d = GrowingDiscriminator(shape[0], shape[1], channels=cfg.channels, min_channels=cfg.min_channels,
                                 mbstd=cfg.mbstd, mbstd_group=cfg.mbstd_group, equalized=cfg.equalized_lr)
        super().__init__({"G": Generator(cfg, shape[0], levels), "D": d})
        self["G"].register_buffer("step", torch.zeros((), dtype=torch.long))
        self.cfg, self.spec, self.data_shape = cfg, spec, shape


def level_alpha(model, step: int | None = None) -> tuple[int, float]:
    """(level, alpha) at `step` (default: after the steps the model has taken, its G's `step` buffer). A
    function, not a method: the loop's unwrapped model is a plain ModuleDict carrying cfg."""
    G = model["G"]
    step = int(G.step) if step is None else step
    return schedule(step, G.levels, model.cfg.phase_steps, model.cfg.growing)


def build(cfg: Config, spec, deps) -> ProGAN:
    return ProGAN(cfg, spec)


def make_optimizers(model: ProGAN, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.beta1, cfg.beta2)
    return {"D": torch.optim.Adam(model["D"].parameters(), lr=cfg.lr, betas=betas),
            "G": torch.optim.Adam(model["G"].parameters(), lr=cfg.lr, betas=betas)}


# ----------------------------------------------------------------------------- objective


def reals_at(x: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
    """Real images at the level's resolution; during a fade, blended with their 2x coarser version (upsampled)
    by the same alpha as G's output, so D compares like with like."""
    x = downsample(x, x.shape[-1] // (4 * 2**level))
    if level > 0 and alpha < 1:
        x = fade(upsample(downsample(x)), x, alpha)
    return x


def _grad_sq(D, x, level, alpha) -> torch.Tensor:
    """Per-sample squared norm ||grad_x D(x)||^2 (B,), differentiable (for the penalties)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, level, alpha).sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1)


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """A D phase on real vs fake at the step's (level, alpha), then a G phase; unused layers' Adam state is
    dropped after each (see `genlab.nn.style.forget_inactive`)."""
    gan = ctx.unwrap(model)
    cfg = gan.cfg
    assert list(batch["x"].shape[1:]) == gan.data_shape, f"batch {tuple(batch['x'].shape)} vs data {gan.data_shape}"
    G, D = model["G"], model["D"]  # the prepared (under DDP, wrapped) networks: call these
    G_raw, D_raw = ctx.unwrap(G), ctx.unwrap(D)  # their modules: read these
    level, alpha = schedule(ctx.step, G_raw.levels, cfg.phase_steps, cfg.growing)

    def d_phase(mb, rng):
        real = reals_at(mb["x"], level, alpha)
        with torch.no_grad():
            fake = G(rng.randn(cfg.latent_dim).to(real.device), level, alpha)
        d_real, d_fake = D(torch.cat([real, fake]), level, alpha).chunk(2)  # one forward for DDP
        if cfg.loss == "wgan-gp":
            eps = rng.rand(1, 1, 1).to(real.device)
            x_hat = eps * real + (1 - eps) * fake
            gp = (((_grad_sq(D, x_hat, level, alpha) + 1e-12).sqrt() - 1) ** 2).mean()  # Gulrajani et al. 2017, Eq. 3
            loss = d_fake.mean() - d_real.mean() + cfg.gp_weight * gp + cfg.drift * d_real.pow(2).mean()
        else:
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            if cfg.r1_gamma > 0:
                loss = loss + cfg.r1_gamma / 2 * _grad_sq(D, real, level, alpha).mean()
        return loss, {"loss_d": loss.item(), "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}

    def g_phase(mb, rng):
        d_fake = D(G(rng.randn(cfg.latent_dim).to(mb["x"].device), level, alpha), level, alpha)
        loss = -d_fake.mean() if cfg.loss == "wgan-gp" else F.softplus(-d_fake).mean()
        return loss, {"loss_g": loss.item()}

    logs = ctx.update("D", d_phase)
    forget_inactive(opts["D"], [p for p in D_raw.parameters() if id(p) not in D_raw.active_parameters(level, alpha)])
    logs.update(ctx.update("G", g_phase))
    forget_inactive(opts["G"], [p for p in G_raw.parameters() if id(p) not in G_raw.active_parameters(level, alpha)])
    G_raw.step.fill_(ctx.step + 1)
    return {"loss": logs["loss_d"] + logs["loss_g"], **logs, "resolution": 4.0 * 2**level, "alpha": alpha}


# ----------------------------------------------------------------------------- sampling


def generate(model: ProGAN, z: torch.Tensor) -> torch.Tensor:
    """G(z) (B, C, H, W) float at the current level, upsampled (nearest) to the data size (used by PPL in Z)."""
    level, alpha = level_alpha(model)
    x = model["G"](z, level, alpha)
    return upsample(x, model.data_shape[-1] // x.shape[-1])


@torch.no_grad()
def sample(model: ProGAN, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, batch_size: int = 1024) -> torch.Tensor:
    """G(z), z ~ N(0, I) per sample, at the current level and alpha, upsampled to the data size."""
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for progan; expected one of: {', '.join(SAMPLERS)}")
    device = next(model.parameters()).device
    G = model["G"]
    was_training = G.training
    G.eval()
    z = SampleRNG.from_generator(n, generator, device).randn(model.cfg.latent_dim)
    out = torch.cat([generate(model, z[i : i + batch_size]) for i in range(0, n, batch_size)])
    G.train(was_training)
    return out.clamp(-1, 1)


@torch.no_grad()
def report_images(model: ProGAN, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Interpolation in Z at the current level: 6 rows, 8 columns from z0 to z1 along the great circle."""
    z = SampleRNG.from_generator(12, generator, next(model.parameters()).device).randn(model.cfg.latent_dim)
    return {"interpolation-z": interpolation_strip(lambda v: generate(model, v).clamp(-1, 1), z[:6], z[6:],
                                                   spherical=True).cpu()}
