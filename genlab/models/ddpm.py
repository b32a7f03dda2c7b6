"""DDPM: denoising diffusion probabilistic models (Ho et al. 2020), sampled with DDPM or DDIM (Song et al. 2021).

Network: the shared U-Net (`genlab.nn.UNet`) for images, an MLP for 2-D points. Objective: the "simple" loss
of Ho et al. 2020 (Eq. 14), MSE between the network output and eps, or v (Salimans & Ho 2022). Samplers and
schedules live in `genlab.samplers`; this file only wires them to the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from genlab.models.labels import class_labels
from genlab.nn import MLPDenoiser, UNet
from genlab.rng import SampleRNG
from genlab.samplers import ddim_timesteps, make_alpha_bar, predict_eps_x0, q_sample, sample_ddim, sample_ddpm
from genlab.samplers.diffusion import PREDICTIONS, SCHEDULES, v_target

SAMPLERS = ("ddim", "ddpm")


@dataclass
class Config:
    data_shape: list[int] = field(default_factory=lambda: [1, 28, 28])  # set from the dataset: [C, H, W] or [D]
    num_classes: int = 0  # set from the dataset when class_cond is true
    class_cond: bool = False  # condition on class labels (sample with --class)
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
    schedule: str = "linear"  # linear (Ho et al. 2020) | cosine (Nichol & Dhariwal 2021)
    timesteps: int = 1000  # T, training diffusion steps
    beta_start: float = 1e-4  # linear schedule's first beta
    beta_end: float = 0.02  # linear schedule's last beta
    prediction: str = "eps"  # eps | v (what the network predicts)
    # optimisation
    lr: float = 2e-4  # Adam learning rate; 1e-4 - 1e-3
    weight_decay: float = 0.0  # AdamW weight decay
    # sampling defaults
    sampler: str = "ddim"  # ddim | ddpm
    sample_steps: int = 50  # steps of the sampler; 10-1000
    eta: float = 0.0  # DDIM stochasticity: 0 deterministic, 1 DDPM-like


def validate(cfg: Config) -> None:
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{cfg.schedule}'; expected one of: {', '.join(SCHEDULES)}")
    if cfg.prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction '{cfg.prediction}'; expected one of: {', '.join(PREDICTIONS)}")
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{cfg.sampler}'; expected one of: {', '.join(SAMPLERS)}")


class DDPM(nn.Module):
    """The denoising network; `forward(x_t, t, y)` returns its raw prediction (eps or v)."""

    def __init__(self, cfg: Config):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        num_classes = cfg.num_classes if cfg.class_cond else 0
        if len(cfg.data_shape) == 1:
            self.net = MLPDenoiser(cfg.data_shape[0], cfg.mlp_hidden, cfg.mlp_layers, num_classes)
        else:
            c, h, w = cfg.data_shape
            self.net = UNet(c, h, cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attn_resolutions,
                            cfg.dropout, num_classes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x_t, t, y)


def build(cfg: Config) -> DDPM:
    return DDPM(cfg)


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
    x0, y = batch
    cfg = ctx.unwrap(model).cfg
    assert list(x0.shape[1:]) == list(cfg.data_shape), f"batch {tuple(x0.shape)} vs data_shape {cfg.data_shape}"
    t = ctx.rng.randint(cfg.timesteps).squeeze(-1).to(x0.device)  # (B,)
    eps = ctx.rng.randn_like(x0)
    loss = loss_fn(model, cfg, x0, y if cfg.class_cond else None, t, eps)
    ctx.backward(loss)
    ctx.optimizer_step(opts["model"], model)
    return {"loss": loss.item()}


def eps_model(model: DDPM, y: torch.Tensor | None = None):
    """The network as an eps-predictor `f(x_t, t) -> eps`, whatever it was trained to predict."""
    ab = alpha_bar(model.cfg)

    def f(x_t, t):
        out = model(x_t, t, y)
        return predict_eps_x0(out, x_t, ab.to(x_t.device)[t], model.cfg.prediction)[0]

    return f


@torch.no_grad()
def sample(
    model: DDPM,
    n: int,
    *,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    callback=None,
    batch_size: int = 256,
) -> torch.Tensor:
    """n samples (n, *data_shape); images in [-1, 1]. Each image has its own noise stream (batch-size independent)."""
    cfg = model.cfg
    sampler = sampler or cfg.sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}' for ddpm; expected one of: {', '.join(SAMPLERS)}")
    steps = steps or cfg.sample_steps
    eta = cfg.eta if eta is None else eta
    device = next(model.parameters()).device
    cond = class_labels(cond, n, cfg.class_cond, cfg.num_classes)
    rng = SampleRNG.from_generator(n, generator, device)
    ab = alpha_bar(cfg)
    timesteps = ddim_timesteps(cfg.timesteps, steps)
    is_image = len(cfg.data_shape) == 3
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        r = rng.split(start, min(n, start + batch_size))
        x_T = r.randn(*cfg.data_shape)
        y = cond[start : start + len(r)].to(device) if cond is not None else None
        f = eps_model(model, y)
        if sampler == "ddim":
            x = sample_ddim(f, x_T, ab, timesteps, eta=eta, rng=r, clip_x0=1.0 if is_image else None, callback=callback)
        else:
            x = sample_ddpm(f, x_T, ab, timesteps, rng=r, clip_x0=1.0 if is_image else None, callback=callback)
        out.append(x.clamp(-1, 1) if is_image else x)
    model.train(was_training)
    return torch.cat(out)


def report_images(model: DDPM, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A denoising strip: rows are images, columns x_T ... x_0 (8 rows x 10 columns)."""
    if len(model.cfg.data_shape) != 3:
        return {}
    frames = []
    steps = model.cfg.sample_steps
    keep = set(torch.linspace(0, steps - 1, 9).round().long().tolist())

    def grab(i, t, x_t, x0):
        if i in keep:
            frames.append(x_t.clamp(-1, 1).cpu())

    cond = batch[1][:8] if model.cfg.class_cond and batch[1] is not None else None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    # sample() draws x_T first from each image's stream, so this is the x_T the strip starts from
    x_T = SampleRNG.from_generator(8, torch.Generator().manual_seed(seed)).randn(*model.cfg.data_shape)
    sample(model, 8, cond=cond, generator=torch.Generator().manual_seed(seed), callback=grab)
    strip = torch.stack([x_T, *frames], dim=1)  # (8, 10, C, H, W)
    return {"denoising": strip}
