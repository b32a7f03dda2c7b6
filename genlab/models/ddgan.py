"""Denoising diffusion GAN (Xiao et al. 2022, "Tackling the Generative Learning Trilemma with Denoising Diffusion
GANs"): a diffusion model with T <= 8 large denoising steps, each step a conditional GAN.

With large steps the true denoising distribution q(x_{t-1} | x_t) is multimodal, so instead of a Gaussian the
generator models it implicitly (Sec. 3):
  1. G(x_t, z, t) predicts a clean image x_0' from the noisy x_t and a latent z ~ N(0, I);
  2. x_{t-1}' ~ q(x_{t-1} | x_t, x_0'), the Gaussian posterior of the forward process (Ho et al. 2020, Eq. 6-7),
     so p(x_{t-1} | x_t) = E_z q(x_{t-1} | x_t, G(x_t, z, t)) (Eq. 4) is a mixture, not a Gaussian;
  3. a time-conditional discriminator D(x_{t-1}, x_t, t) tells real pairs (x_{t-1} ~ q(x_{t-1} | x_0),
     x_t ~ q(x_t | x_{t-1})) from generated ones (x_t, x_{t-1}'); non-saturating GAN loss with an R1 penalty on
     the real x_{t-1} (Eq. 5-6 and Sec. 4 / App. C).
Sampling runs the T steps from x_T ~ N(0, I); at t = 1 the posterior has zero variance and x_0 = G(x_1, z, 1).

Schedule (`alpha_bars`): the paper discretises the continuous VP SDE (Song et al. 2021) rather than a 1000-step
DDPM table, so that T = 1..8 steps still span the whole noise range: at t_i = i / T,
alpha_bar_i = exp(-beta_min t_i - (beta_max - beta_min) t_i^2 / 2), beta_min = 0.1, beta_max = 20, alpha_bar_0 = 1.
(The authors' code also shifts t by a small epsilon; genlab keeps alpha_bar_0 = 1 so that step 1 lands on data.)

Networks: G is the shared U-Net for images (z enters as one context token through the U-Net's cross-attention,
i.e. a z-dependent feature shift at the attention resolutions and in the middle block; the paper uses AdaIN
from a mapping network) and an MLP for 2-D points; D is a small conv net (images) or MLP (points) on the
concatenated pair with a time embedding, and a projection term for class labels (Miyato & Koyama 2018).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.models.labels import class_labels
from genlab.nn import UNet, timestep_embedding
from genlab.rng import SampleRNG

SAMPLERS = ("posterior",)
SAMPLE_OPTIONS = ("sampler", "steps", "batch_size")
EMA_MODULES = ("G",)  # the EMA averages the generator only; D is never sampled from
STEP_CHOICES = (1, 2, 4, 8)


@dataclass
class Config:
    class_cond: bool = False  # labels into G (U-Net label embedding) and D (projection); needs labelled data
    num_steps: Literal[1, 2, 4, 8] = 4  # T, denoising steps (the paper's CIFAR-10 model uses 4); T = 1 is a one-shot GAN
    beta_min: float = 0.1  # VP SDE beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1] (Song et al. 2021)
    beta_max: float = 20.0  # see beta_min; the paper's values
    latent_dim: int = 32  # size of z (the paper: 100); 8-128
    # generator (images): the shared U-Net
    base_channels: int = 32  # width of the first level; 32-128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # width multiplier per resolution level
    num_res_blocks: int = 1  # ResBlocks per level; 1-2
    attn_resolutions: list[int] = field(default_factory=lambda: [7])  # attention (and z injection) resolutions
    # discriminator (images)
    d_channels: int = 32  # D width (c, 2c, 2c); 32-128
    # toy networks (2-D points)
    mlp_hidden: int = 128  # width of G's and D's MLPs
    mlp_layers: int = 3  # hidden layers of G's and D's MLPs
    # optimisation
    r1_gamma: float = 0.02  # R1 penalty gamma/2 E||grad_{x_{t-1}} D||^2 on real pairs; 0 disables
    lr_g: float = 1.6e-4  # Adam learning rate of G
    lr_d: float = 1.25e-4  # Adam learning rate of D
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.9  # Adam beta2


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", "y") if cfg.class_cond else ("x",)


def check_steps(steps: int) -> int:
    if steps not in STEP_CHOICES:
        raise ValueError(f"DD-GAN supports T in {{1, 2, 4, 8}} denoising steps, got {steps}")
    return steps


# ----------------------------------------------------------------------------- schedule and posterior


def alpha_bars(T: int, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """(T + 1,) float64: alpha_bar_0 = 1 (data), then the VP SDE's alpha_bar at t_i = i / T (module docstring)."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    return torch.exp(-beta_min * t - 0.5 * (beta_max - beta_min) * t**2)


def _at(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] (B,) as (B, 1, ..., 1) in x's dtype and device."""
    return a.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def diffuse_pair(x0: torch.Tensor, t: torch.Tensor, eps1: torch.Tensor, eps2: torch.Tensor, ab: torch.Tensor):
    """A real pair: x_{t-1} ~ q(x_{t-1} | x_0), then x_t ~ q(x_t | x_{t-1}) (Ho et al. 2020, Eq. 2 and 4); t in 1..T."""
    ab_prev, beta = _at(ab, t - 1, x0), 1 - _at(ab, t, x0) / _at(ab, t - 1, x0)
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps1
    x_t = (1 - beta).sqrt() * x_prev + beta.sqrt() * eps2
    return x_prev, x_t


def posterior(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, ab: torch.Tensor):
    """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eq. 6-7), t in 1..T:

    mu = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
    var = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t   (zero at t = 1, where alpha_bar_0 = 1).
    """
    ab_t, ab_prev = _at(ab, t, x0), _at(ab, t - 1, x0)
    beta = 1 - ab_t / ab_prev
    mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t) * x_t
    var = (1 - ab_prev) / (1 - ab_t) * beta
    return mean, var


def sample_posterior(x0, x_t, t, ab, noise) -> torch.Tensor:
    """x_{t-1} = mu + sqrt(var) noise, the reparameterised draw from q(x_{t-1} | x_t, x_0)."""
    mean, var = posterior(x0, x_t, t, ab)
    return mean + var.sqrt() * noise


# ----------------------------------------------------------------------------- networks


def _time(t: torch.Tensor, T: int) -> torch.Tensor:
    """Step index 1..T as the U-Net's time input on its 0..1000 scale, so the sinusoidal code separates steps."""
    return t.float() * (1000.0 / T)


class Generator(nn.Module):
    """G(x_t, z, t[, y]) -> x_0' (B, *data_shape): the U-Net with z as a context token (images), or an MLP (points)."""

    def __init__(self, cfg: Config, shape: list[int], n_cls: int):
        super().__init__()
        self.cfg, self.shape = cfg, shape
        self.mapping = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.SiLU(),
                                     nn.Linear(cfg.latent_dim, cfg.latent_dim))  # z -> w, as a mapping network
        if len(shape) == 3:
            c, h, _ = shape
            self.net = UNet(c, h, cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attn_resolutions,
                            0.0, n_cls, context_dim=cfg.latent_dim)
        else:
            hd = cfg.mlp_hidden
            self.label_emb = nn.Embedding(n_cls, hd) if n_cls else None
            self.inp = nn.Linear(shape[0] + cfg.latent_dim + hd, hd)
            self.blocks = nn.ModuleList([nn.Linear(hd, hd) for _ in range(cfg.mlp_layers)])
            self.out = nn.Linear(hd, shape[0])

    def forward(self, x_t: torch.Tensor, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w = self.mapping(z)  # (B, Z)
        if len(self.shape) == 3:
            # tanh keeps x_0' in the data range, so the posterior mean stays a mix of images and x_t
            return torch.tanh(self.net(x_t, _time(t, self.cfg.num_steps), y=y, context=w[:, None, :]))
        emb = timestep_embedding(_time(t, self.cfg.num_steps), self.cfg.mlp_hidden)
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        h = self.inp(torch.cat([x_t, w, emb], dim=1))
        for lin in self.blocks:
            h = h + lin(F.silu(h))
        return self.out(F.silu(h))


class Discriminator(nn.Module):
    """D(x_{t-1}, x_t, t[, y]) -> logits (B,): the pair side by side (channels / features) plus a time embedding."""

    def __init__(self, cfg: Config, shape: list[int], n_cls: int):
        super().__init__()
        self.cfg, self.shape = cfg, shape
        if len(shape) == 3:
            c, H, W = shape
            d = cfg.d_channels
            self.emb_dim = d
            self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            self.conv_in = nn.Conv2d(2 * c, d, 3, padding=1)
            self.features = nn.Sequential(
                nn.LeakyReLU(0.2), nn.Conv2d(d, 2 * d, 4, 2, 1), nn.LeakyReLU(0.2),  # H -> H/2
                nn.Conv2d(2 * d, 2 * d, 4, 2, 1), nn.LeakyReLU(0.2),  # H/2 -> H/4
                nn.Flatten(),
            )  # fmt: skip
            feat = 2 * d * (H // 4) * (W // 4)
        else:
            hd = self.emb_dim = cfg.mlp_hidden
            self.time = nn.Sequential(nn.Linear(hd, hd), nn.SiLU(), nn.Linear(hd, hd))
            self.conv_in = nn.Linear(2 * shape[0], hd)
            layers = []
            for _ in range(cfg.mlp_layers):
                layers += [nn.LeakyReLU(0.2), nn.Linear(hd, hd)]
            self.features = nn.Sequential(*layers, nn.LeakyReLU(0.2))
            feat = hd
        self.out = nn.Linear(feat, 1)
        self.proj = nn.Embedding(n_cls, feat) if n_cls else None

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        emb = self.time(timestep_embedding(_time(t, self.cfg.num_steps), self.emb_dim))  # (B, E)
        h = self.conv_in(torch.cat([x_prev, x_t], dim=1))
        h = h + (emb[:, :, None, None] if h.dim() == 4 else emb)  # time as a per-channel shift
        h = self.features(h)  # (B, F)
        logits = self.out(h).squeeze(1)
        if self.proj is not None:  # projection discriminator: y^T V phi(x)
            logits = logits + (self.proj(y) * h).sum(1)
        return logits


class DDGAN(nn.ModuleDict):
    """{"G": Generator, "D": Discriminator}, each optimised (and, under DDP, prepared) separately."""

    def __init__(self, cfg: Config, spec):
        shape = list(spec.shape)
        check_steps(cfg.num_steps)
        if not 0 <= cfg.beta_min < cfg.beta_max:
            raise ValueError(f"model.beta_min and model.beta_max need 0 <= beta_min < beta_max, got "
                             f"{cfg.beta_min}, {cfg.beta_max}")
        if len(shape) == 3 and (shape[1] % 4 or shape[2] % 4):
            raise ValueError(f"the DD-GAN discriminator needs an image size divisible by 4, got {shape[1]}x{shape[2]}")
        n_cls = spec.num_classes if cfg.class_cond else 0
        super().__init__({"G": Generator(cfg, shape, n_cls), "D": Discriminator(cfg, shape, n_cls)})
        self.cfg, self.spec, self.data_shape, self.num_classes = cfg, spec, shape, n_cls
        # a plain attribute, not a buffer: the loop's DDP view of a ModuleDict copies attributes, and it is no state
        self.alpha_bar = alpha_bars(cfg.num_steps, cfg.beta_min, cfg.beta_max)


def build(cfg: Config, spec, deps) -> DDGAN:
    return DDGAN(cfg, spec)


def make_optimizers(model: DDGAN, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.beta1, cfg.beta2)
    return {"D": torch.optim.Adam(model["D"].parameters(), lr=cfg.lr_d, betas=betas),
            "G": torch.optim.Adam(model["G"].parameters(), lr=cfg.lr_g, betas=betas)}


# ----------------------------------------------------------------------------- objective


def r1_penalty(D, x_prev, x_t, t, y) -> torch.Tensor:
    """E||grad_{x_{t-1}} D(x_{t-1}, x_t, t)||^2 on real pairs (Mescheder et al. 2018; Xiao et al. 2022, Sec. 4)."""
    x = x_prev.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, x_t, t, y).sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One D phase on real vs generated (x_{t-1}, x_t) pairs, then one G phase (Xiao et al. 2022, Algorithm 1).

    Every draw (t ~ U{1..T}, the forward-process noise, z, the posterior noise) comes from each sample's own
    stream, so gradient accumulation and several processes see the same numbers as one big batch.
    """
    gan = ctx.unwrap(model)
    cfg, shape, T = gan.cfg, gan.data_shape, gan.cfg.num_steps
    assert list(batch["x"].shape[1:]) == shape, f"batch {tuple(batch['x'].shape)} vs data {shape}"
    G, D = model["G"], model["D"]

    def pairs(mb, rng):  # t, a real pair (x_{t-1}, x_t), and a generated x_{t-1}' from the same x_t
        x0 = mb["x"]
        y = mb["y"] if cfg.class_cond else None
        t = (rng.randint(T).squeeze(-1) + 1).to(x0.device)  # (B,) in 1..T
        ab = gan.alpha_bar.to(x0.device)
        x_prev, x_t = diffuse_pair(x0, t, rng.randn_like(x0), rng.randn_like(x0), ab)
        x0_pred = G(x_t, rng.randn(cfg.latent_dim).to(x0.device), t, y)
        fake_prev = sample_posterior(x0_pred, x_t, t, ab, rng.randn_like(x0))
        return t, y, x_prev, x_t, fake_prev

    def d_phase(mb, rng):  # D: real pairs vs generated pairs (G frozen)
        with torch.no_grad():
            t, y, x_prev, x_t, fake_prev = pairs(mb, rng)
        both = lambda a, b: torch.cat([a, b]) if a is not None else None  # noqa: E731
        logits = D(torch.cat([x_prev, fake_prev]), both(x_t, x_t), both(t, t), both(y, y))  # one forward for DDP
        d_real, d_fake = logits.chunk(2)
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        logs = {"loss_d": loss_d.item(), "d_acc_real": (d_real > 0).float().mean().item(),
                "d_acc_fake": (d_fake < 0).float().mean().item()}
        if cfg.r1_gamma > 0:
            r1 = r1_penalty(D, x_prev, x_t, t, y)
            loss_d = loss_d + cfg.r1_gamma / 2 * r1
            logs["r1"] = r1.item()
        return loss_d, logs

    def g_phase(mb, rng):  # G: non-saturating loss through D on fresh pairs
        t, y, _, x_t, fake_prev = pairs(mb, rng)
        loss_g = F.softplus(-D(fake_prev, x_t, t, y)).mean()
        return loss_g, {"loss_g": loss_g.item()}

    logs = ctx.update("D", d_phase)
    logs.update(ctx.update("G", g_phase))
    return {"loss": logs["loss_d"] + logs["loss_g"], **logs}


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample(model: DDGAN, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, steps: int | None = None, batch_size: int = 500) -> torch.Tensor:
    """T denoising steps from x_T ~ N(0, I): x_0' = G(x_t, z, t), x_{t-1} ~ q(x_{t-1} | x_t, x_0') (Sec. 3).

    `steps` may only be the T the model was trained with: each step's G is trained for its own noise level.
    """
    cfg = model.cfg
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for ddgan; expected one of: {', '.join(SAMPLERS)}")
    if steps not in (None, cfg.num_steps):
        raise ValueError(f"this DD-GAN was trained with model.num_steps={cfg.num_steps} denoising steps and samples "
                         f"with exactly that many; got steps={steps} (train another run for another T)")
    device = next(model.parameters()).device
    y = class_labels(cond, n, cfg.class_cond, model.num_classes)
    if y is None and cfg.class_cond:
        y = torch.arange(n) % model.num_classes  # balanced classes when none are asked for
    G = model["G"]
    was_training = G.training
    G.eval()
    ab = model.alpha_bar.to(device)
    rng = SampleRNG.from_generator(n, generator, device)
    out = []
    for start in range(0, n, batch_size):
        r = rng.split(start, min(n, start + batch_size))
        yb = y[start : start + len(r)].to(device) if y is not None else None
        x = r.randn(*model.data_shape)  # x_T
        for step in range(cfg.num_steps, 0, -1):
            t = torch.full((len(r),), step, dtype=torch.long, device=device)
            x0 = G(x, r.randn(cfg.latent_dim), t, yb)
            x = x0 if step == 1 else sample_posterior(x0, x, t, ab, r.randn_like(x))
        out.append(x.clamp(-1, 1) if len(model.data_shape) == 3 else x)
    G.train(was_training)
    return torch.cat(out)

