"""Noise-conditional classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

Trained by the loop on noisy images x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps with t ~ U{0..T-1},
on the same VP schedule as the `ddpm` family (same config fields and defaults), with cross-entropy on the labels.
Network: the downsampling half of the diffusion U-Net (time-conditioned ResBlocks of `genlab.nn`), then global
average pooling and a linear layer (Dhariwal & Nichol pool with attention at 8x8; a mean is enough at 28x28).

It does not sample. Use it to guide a diffusion run:
`genlab sample DDPM_RUN --classifier CLASSIFIER_RUN --guidance S --class K` (see docs/classifier.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn import timestep_embedding
from genlab.nn.unet import ResBlock
from genlab.samplers import make_alpha_bar, q_sample

SAMPLERS = ()  # a classifier cannot sample; it guides a ddpm run
SAMPLE_OPTIONS = ()


@dataclass
class Config:
    base_channels: int = 32  # width of the first level; 16-128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # width multiplier per resolution level
    num_res_blocks: int = 1  # ResBlocks per level; 1-2
    dropout: float = 0.0  # in ResBlocks; 0-0.3
    # diffusion: must equal the guided ddpm run's (checked when sampling)
    schedule: Literal["linear", "cosine"] = "linear"  # linear (Ho et al. 2020) | cosine (Nichol & Dhariwal 2021)
    timesteps: int = 1000  # T
    beta_start: float = 1e-4  # linear schedule's first beta
    beta_end: float = 0.02  # linear schedule's last beta
    # optimisation
    lr: float = 1e-3  # AdamW learning rate; 1e-4 - 1e-3
    weight_decay: float = 0.0  # AdamW weight decay (Dhariwal & Nichol use 0.05 on ImageNet)


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", "y")


class Classifier(nn.Module):
    """`forward(x_t, t) -> logits (B, K)` for VP-noised images x_t (B, C, H, W) at timesteps t (B,)."""

    def __init__(self, cfg: Config, spec):
        super().__init__()
        if not spec.is_image:
            raise ValueError(f"the classifier family needs images; {spec.name} has samples of shape {list(spec.shape)}")
        if spec.num_classes < 2:
            raise ValueError(f"the classifier family needs labelled data with >= 2 classes; {spec.name} has "
                             f"{spec.num_classes}")
        self.cfg, self.spec = cfg, spec
        self.data_shape = list(spec.shape)
        self.num_classes = spec.num_classes
        # the schedule it was trained on, read by the guided sampler to check it matches (not saved: it follows cfg)
        self.alpha_bar = make_alpha_bar(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end)  # (T,) float64
        c, ch = spec.shape[0], cfg.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(c, ch, 3, padding=1)
        self.blocks = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = ResBlock(ch, cfg.base_channels * mult, emb_dim, cfg.dropout)
                ch = cfg.base_channels * mult  # (ResBlock's norms keep >= 4 channels a group: t stays visible)
                self.blocks.append(block)
            if level < len(cfg.channel_mult) - 1:
                self.blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        # one group (a LayerNorm over C, H, W): a per-channel norm here would cancel every per-channel shift of the
        # residual stream (the biases before it would get exactly zero gradient); one group keeps them
        self.norm_out = nn.GroupNorm(1, ch)
        self.head = nn.Linear(ch, self.num_classes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert list(x_t.shape[1:]) == self.data_shape, f"input {tuple(x_t.shape)} vs data {self.data_shape}"
        emb = self.time_mlp(timestep_embedding(t, self.cfg.base_channels))  # (B, E)
        h = self.conv_in(x_t)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))  # (B, C) global average pool
        return self.head(h)


def build(cfg: Config, spec, deps) -> Classifier:
    return Classifier(cfg, spec)


def make_optimizers(model: Classifier, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)}


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """Cross-entropy of p(y | x_t, t) at t ~ U{0..T-1}, eps ~ N(0, I) per sample (Dhariwal & Nichol 2021, Sec. 4)."""
    net = ctx.unwrap(model)
    cfg = net.cfg
    assert list(batch["x"].shape[1:]) == net.data_shape, f"batch {tuple(batch['x'].shape)} vs data {net.data_shape}"

    def loss(mb, rng):
        x0, y = mb["x"], mb["y"]
        t = rng.randint(cfg.timesteps).squeeze(-1).to(x0.device)  # (B,)
        x_t = q_sample(x0, t, rng.randn_like(x0), net.alpha_bar.to(x0.device))
        logits = model(x_t, t)
        value = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(-1) == y).float().mean()
        return value, {"loss": value.item(), "acc": acc.item()}

    return ctx.update("model", loss)


def sample(model, n, *, cond=None, generator=None, **opts):
    """A classifier has no sampler: it guides a diffusion run."""
    raise ValueError("a classifier run cannot sample; use it to guide a ddpm run: "
                     "genlab sample DDPM_RUN --classifier CLASSIFIER_RUN --guidance S --class K")


@torch.no_grad()
def accuracy_by_noise(model: Classifier, x0: torch.Tensor, y: torch.Tensor, timesteps=(0, 100, 250, 500, 750, 999),
                      *, generator: torch.Generator | None = None, batch_size: int = 500) -> dict[int, float]:
    """Top-1 accuracy on x_t for each timestep t in `timesteps`: how much label information survives the noise.

    x0 (N, C, H, W) in [-1, 1] (e.g. a test split), y (N,) labels; the same eps per image at every t.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=g)
    ab = model.alpha_bar.float()
    was_training = model.training
    model.eval()
    out = {}
    for t in timesteps:
        if not 0 <= t < len(ab):
            raise ValueError(f"timestep {t} out of range 0..{len(ab) - 1}")
        correct = 0
        for s in range(0, len(x0), batch_size):
            xb, eb = x0[s : s + batch_size], eps[s : s + batch_size]
            tt = torch.full((len(xb),), t, dtype=torch.long)
            logits = model(q_sample(xb, tt, eb, ab), tt)
            correct += (logits.argmax(-1) == y[s : s + batch_size]).sum().item()
        out[int(t)] = correct / len(x0)
    model.train(was_training)
    return out
