"""GANs (Goodfellow et al. 2014): an MLP GAN for 2-D toys and DCGAN (Radford et al. 2016) for images,
optionally class-conditional (Mirza & Osindero 2014; projection discriminator of Miyato & Koyama 2018).

D maximises and G minimises the game; the alternation stays visible in `train_step` (d_steps D updates, then
one G update). Losses, on D's logits d_r = D(x), d_f = D(G(z)):
  minimax        D: -log s(d_r) - log(1 - s(d_f))   G: log(1 - s(d_f))   (saturates when D wins early)
  nonsaturating  D: as minimax                       G: -log s(d_f)       (Goodfellow et al. 2014, Sec. 3)
  hinge          D: relu(1 - d_r) + relu(1 + d_f)    G: -d_f              (Lim & Ye 2017)
  lsgan          D: (d_r - 1)^2 + d_f^2, halved      G: (d_f - 1)^2 / 2   (Mao et al. 2017)
  wgan-gp        D: d_f - d_r + lambda GP            G: -d_f              (Gulrajani et al. 2017)
Options: spectral norm on D (Miyato et al. 2018), R1 penalty on real data (Mescheder et al. 2018), PacGAN
packing of m samples per D input (Lin et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.models.labels import class_labels
from genlab.rng import SampleRNG

SAMPLERS = ("prior",)
SAMPLE_OPTIONS = ("sampler", "batch_size")
EMA_MODULES = ("G",)  # the EMA averages the generator only; D is never sampled from


@dataclass
class Config:
    class_cond: bool = False  # conditional GAN: labels into G (embedding) and D (needs labelled data)
    cond_d: Literal["projection", "concat"] = "projection"  # how D sees labels: Miyato & Koyama 2018 | Mirza & Osindero
    latent_dim: int = 64  # size of z; 2-8 for toys, 64-128 for images
    loss: Literal["minimax", "nonsaturating", "hinge", "lsgan", "wgan-gp"] = "nonsaturating"  # see the module docstring
    mlp_hidden: int = 128  # toy networks' width
    mlp_layers: int = 3  # toy networks' hidden layers
    channels: int = 64  # DCGAN width (D: c, 2c; G: 2c, c)
    spectral_norm: bool = False  # spectral normalisation on every D layer
    r1_gamma: float = 0.0  # R1 penalty weight gamma/2 E||grad D(x_real)||^2; 0 disables
    gp_weight: float = 10.0  # lambda of the WGAN-GP gradient penalty
    pack: int = 1  # PacGAN: m samples per D input (m = 1 is a plain GAN)
    d_steps: int = 1  # D updates per G update
    lr_g: float = 2e-4  # Adam learning rate of G
    lr_d: float = 2e-4  # Adam learning rate of D
    beta1: float = 0.5  # Adam beta1 (0.5 for DCGAN, 0 for WGAN-GP)
    beta2: float = 0.999  # Adam beta2 (0.9 for WGAN-GP)


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", "y") if cfg.class_cond else ("x",)


def validate(cfg: Config, shape: list[int]) -> None:
    if cfg.pack < 1 or cfg.d_steps < 1:
        raise ValueError("model.pack and model.d_steps must be >= 1")
    if len(shape) == 3 and shape[1] % 4:
        raise ValueError(f"DCGAN needs an image size divisible by 4, got {shape[1]}")


# ----------------------------------------------------------------------------- networks


class Generator(nn.Module):
    """z (B, Z) [+ labels] -> samples: an MLP for points, a DCGAN stack of transposed convs for images."""

    def __init__(self, cfg: Config, shape: list[int], n_cls: int):
        super().__init__()
        self.cfg = cfg
        self.label_emb = nn.Embedding(n_cls, cfg.latent_dim) if n_cls else None
        if len(shape) == 1:
            h, layers, d = cfg.mlp_hidden, [], cfg.latent_dim
            for _ in range(cfg.mlp_layers):
                layers += [nn.Linear(d, h), nn.ReLU()]
                d = h
            self.net = nn.Sequential(*layers, nn.Linear(d, shape[0]))
            return
        c, H, W = shape
        c1, c2 = cfg.channels, 2 * cfg.channels
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, c2 * (H // 4) * (W // 4)), nn.Unflatten(1, (c2, H // 4, W // 4)),
            nn.BatchNorm2d(c2), nn.ReLU(),
            nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.BatchNorm2d(c1), nn.ReLU(),  # H/4 -> H/2
            nn.ConvTranspose2d(c1, c, 4, 2, 1), nn.Tanh(),  # H/2 -> H
        )  # fmt: skip

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_emb is not None:
            z = z + self.label_emb(y)
        return self.net(z)


class Discriminator(nn.Module):
    """(B, *data_shape) [+ labels] -> logits (B / pack,): pack samples are concatenated into one D input."""

    def __init__(self, cfg: Config, shape: list[int], n_cls: int):
        super().__init__()
        self.cfg = cfg
        sn = nn.utils.parametrizations.spectral_norm if cfg.spectral_norm else (lambda m: m)
        concat = n_cls and cfg.cond_d == "concat"
        self.concat_emb = nn.Embedding(n_cls, shape[0] if len(shape) == 1 else shape[1] * shape[2]) if concat else None
        extra = 1 if concat and len(shape) == 3 else (shape[0] if concat else 0)
        if len(shape) == 1:
            h, layers, d = cfg.mlp_hidden, [], cfg.pack * (shape[0] + extra)
            for _ in range(cfg.mlp_layers):
                layers += [sn(nn.Linear(d, h)), nn.LeakyReLU(0.2)]
                d = h
            self.features = nn.Sequential(*layers)
        else:
            c, H, W = shape
            c1, c2 = cfg.channels, 2 * cfg.channels
            self.features = nn.Sequential(
                sn(nn.Conv2d(cfg.pack * (c + extra), c1, 4, 2, 1)), nn.LeakyReLU(0.2),  # H -> H/2
                sn(nn.Conv2d(c1, c2, 4, 2, 1)), nn.LeakyReLU(0.2),  # H/2 -> H/4
                nn.Flatten(),
            )  # fmt: skip
            d = c2 * (H // 4) * (W // 4)
        self.out = sn(nn.Linear(d, 1))
        self.proj = sn(nn.Embedding(n_cls, d)) if n_cls and cfg.cond_d == "projection" else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.concat_emb is not None:
            extra = self.concat_emb(y).reshape(x.shape[0], -1, *x.shape[2:])  # a label plane (or vector) per sample
            x = torch.cat([x, extra], dim=1)
        h = self.features(pack(x, self.cfg.pack))  # (B / m, F)
        logits = self.out(h).squeeze(1)
        if self.proj is not None:  # y^T V phi(x): per pack, the labels' embeddings averaged
            e = self.proj(y).reshape(h.shape[0], self.cfg.pack, -1).mean(1)
            logits = logits + (e * h).sum(1)
        return logits


def pack(x: torch.Tensor, m: int) -> torch.Tensor:
    """PacGAN packing: (B, C, ...) -> (B / m, m * C, ...), m consecutive samples side by side (Lin et al. 2018)."""
    if x.shape[0] % m:
        raise ValueError(f"batch size {x.shape[0]} is not divisible by model.pack={m}")
    return x.reshape(x.shape[0] // m, m * x.shape[1], *x.shape[2:])


class GAN(nn.ModuleDict):
    """{"G": Generator, "D": Discriminator}, each optimised (and, under DDP, prepared) separately."""

    def __init__(self, cfg: Config, spec):
        shape = list(spec.shape)
        validate(cfg, shape)
        n_cls = spec.num_classes if cfg.class_cond else 0
        super().__init__({"G": Generator(cfg, shape, n_cls), "D": Discriminator(cfg, shape, n_cls)})
        self.cfg, self.spec, self.data_shape, self.num_classes = cfg, spec, shape, n_cls


def build(cfg: Config, spec, deps) -> GAN:
    return GAN(cfg, spec)


def make_optimizers(model: GAN, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.beta1, cfg.beta2)
    return {"D": torch.optim.Adam(model["D"].parameters(), lr=cfg.lr_d, betas=betas),
            "G": torch.optim.Adam(model["G"].parameters(), lr=cfg.lr_g, betas=betas)}


# ----------------------------------------------------------------------------- objective


def d_loss(loss: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """D's loss (to minimise) from its logits on real and fake inputs."""
    if loss in ("minimax", "nonsaturating"):
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()  # -log s(d_r) - log(1 - s(d_f))
    if loss == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    if loss == "lsgan":
        return 0.5 * ((d_real - 1) ** 2).mean() + 0.5 * (d_fake**2).mean()
    return d_fake.mean() - d_real.mean()  # wgan-gp (the penalty is added by the caller)


def g_loss(loss: str, d_fake: torch.Tensor) -> torch.Tensor:
    """G's loss (to minimise) from D's logits on fakes."""
    if loss == "minimax":
        return -F.softplus(d_fake).mean()  # log(1 - s(d_f)): its gradient vanishes when s(d_f) -> 0
    if loss == "nonsaturating":
        return F.softplus(-d_fake).mean()  # -log s(d_f)
    if loss == "lsgan":
        return 0.5 * ((d_fake - 1) ** 2).mean()
    return -d_fake.mean()  # hinge, wgan-gp


def gradient_penalty(D, real, fake, y, eps) -> torch.Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] at x_hat = eps x + (1 - eps) x_fake (Gulrajani et al. 2017, Eq. 3)."""
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat, y).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(D, real, y) -> torch.Tensor:
    """E||grad D(x_real)||^2 (Mescheder et al. 2018, Eq. 9, without gamma/2)."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, y).sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """d_steps D phases on the batch (fresh z each), then one G phase. Each network through its own forward.

    Each phase is one optimizer step over the whole batch (`ctx.update`), so with gradient accumulation D is
    updated on all micro-batches before G trains against it, as with one big batch.
    """
    gan = ctx.unwrap(model)
    cfg, shape = gan.cfg, gan.data_shape
    assert list(batch["x"].shape[1:]) == shape, f"batch {tuple(batch['x'].shape)} vs data {shape}"
    G, D = model["G"], model["D"]

    def d_phase(mb, rng):  # D: maximise the game on real vs fake (G frozen)
        x, y = mb["x"], mb["y"] if cfg.class_cond else None
        with torch.no_grad():
            fake = G(rng.randn(cfg.latent_dim).to(x.device), y)
        logits = D(torch.cat([x, fake]), torch.cat([y, y]) if y is not None else None)  # one forward for DDP
        d_real, d_fake = logits.chunk(2)
        loss_d = d_loss(cfg.loss, d_real, d_fake)
        if cfg.loss == "wgan-gp":
            eps = rng.rand(*([1] * len(shape))).to(x.device)
            loss_d = loss_d + cfg.gp_weight * gradient_penalty(D, x, fake, y, eps)
        if cfg.r1_gamma > 0:
            loss_d = loss_d + cfg.r1_gamma / 2 * r1_penalty(D, x, y)
        return loss_d, {"loss_d": loss_d.item(), "d_acc_real": (d_real > 0).float().mean().item(),
                        "d_acc_fake": (d_fake < 0).float().mean().item()}

    def g_phase(mb, rng):  # G: minimise its loss through D's judgement of fresh fakes
        y = mb["y"] if cfg.class_cond else None
        loss_g = g_loss(cfg.loss, D(G(rng.randn(cfg.latent_dim).to(mb["x"].device), y), y))
        return loss_g, {"loss_g": loss_g.item()}

    for _ in range(cfg.d_steps):
        logs = ctx.update("D", d_phase)
    logs.update(ctx.update("G", g_phase))
    return {"loss": logs["loss_d"] + logs["loss_g"], **logs}


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample(model: GAN, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None, sampler: str | None = None,
           batch_size: int = 1024) -> torch.Tensor:
    """G(z), z ~ N(0, I) per sample; class-conditional with `cond` (labels, or one label for all)."""
    cfg = model.cfg
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for gan; expected one of: {', '.join(SAMPLERS)}")
    device = next(model.parameters()).device
    cond = class_labels(cond, n, cfg.class_cond, model.num_classes)
    if cond is None and cfg.class_cond:
        cond = torch.arange(n) % model.num_classes  # balanced classes when none are asked for
    G = model["G"]
    was_training = G.training
    G.eval()
    z = SampleRNG.from_generator(n, generator, device).randn(cfg.latent_dim)
    out = torch.cat([G(z[i : i + batch_size], cond[i : i + batch_size].to(device) if cond is not None else None)
                     for i in range(0, n, batch_size)])
    G.train(was_training)
    return out
