"""Autoencoder and denoising autoencoder (Vincent et al. 2008), with anomaly scores by reconstruction error.

An encoder maps x to a latent z (latent_dim numbers) and a decoder maps z back; training minimises the
reconstruction error, MSE on [-1, 1] values or BCE on pixel intensities in [0, 1] (the decoder then outputs
logits). In denoising mode the encoder sees a corrupted x~ and the loss still compares with the clean x:
  gaussian      x~ = x + noise * eps                     (images clamped to [-1, 1])
  mask          each value set to the data's zero (-1 = black for images, 0 for points) with prob. `noise`
                (Vincent et al.'s masking noise; dropout on the input without rescaling)
  salt-pepper   each value set to the minimum or maximum (-1 or +1), each with prob. `noise` / 2
The plain AE has no prior, so it cannot sample on its own: fit a Gaussian mixture on its latents
(`genlab train gmm model.autoencoder=RUN`) to get a generative model. Anomaly detection scores an input by its
reconstruction error (`anomaly_score`, used by `genlab anomaly`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn.autoencoder import ConvDecoder, ConvEncoder, decoder_mean, feature_sizes, mlp
from genlab.rng import SampleRNG

SAMPLERS = ()  # no prior: see the module docstring
SAMPLE_OPTIONS = ()
CORRUPTIONS = ("none", "gaussian", "mask", "salt-pepper")


@dataclass
class Config:
    latent_dim: int = 32  # size of z; 2 for a latent you can plot, 16-64 for images
    channels: int = 32  # conv width of the first encoder level (doubles at the second)
    mlp_hidden: int = 256  # hidden width for 2-D points
    loss: Literal["mse", "bce"] = "mse"  # mse on [-1, 1] values | bce on intensities in [0, 1] (logits out)
    corruption: Literal["none", "gaussian", "mask", "salt-pepper"] = "none"  # denoising AE's input corruption
    noise: float = 0.3  # gaussian: std in [-1, 1] units; mask / salt-pepper: fraction of values corrupted
    lr: float = 1e-3  # Adam learning rate


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x",)


class AE(nn.Module):
    def __init__(self, cfg: Config, spec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.data_shape = shape = list(spec.shape)
        z = cfg.latent_dim
        if len(shape) == 1:
            self.encoder = mlp(shape[0], cfg.mlp_hidden, z)
            self.decoder = mlp(z, cfg.mlp_hidden, shape[0])
            return
        c, H, W = shape
        h4, w4 = feature_sizes(H, W)[2]
        c2 = 2 * cfg.channels
        self.encoder = nn.Sequential(ConvEncoder(c, cfg.channels, H), nn.Flatten(), nn.Linear(c2 * h4 * w4, z))
        self.decoder = nn.Sequential(nn.Linear(z, c2 * h4 * w4), nn.Unflatten(1, (c2, h4, w4)),
                                     ConvDecoder(c, cfg.channels, (H, W)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output for input x: values (mse) or logits (bce), shaped like x."""
        return self.decoder(self.encoder(x))


def build(cfg: Config, spec, deps) -> AE:
    return AE(cfg, spec)


def make_optimizers(model: AE, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(model.parameters(), lr=cfg.lr)}


def corrupt(x: torch.Tensor, kind: str, noise: float, rng: SampleRNG) -> torch.Tensor:
    """The denoising AE's input x~ for clean x (B, ...), one random stream per sample (see module docstring)."""
    if kind == "none" or noise == 0:
        return x
    image = x.dim() == 4
    if kind == "gaussian":
        x_t = x + noise * rng.randn(*x.shape[1:]).to(x)
        return x_t.clamp(-1, 1) if image else x_t
    u = rng.rand(*x.shape[1:]).to(x)  # (B, ...) uniform per value
    if kind == "mask":
        return torch.where(u < noise, torch.full_like(x, -1.0 if image else 0.0), x)
    if kind == "salt-pepper":
        x_t = torch.where(u < noise / 2, torch.full_like(x, -1.0), x)
        return torch.where((u >= noise / 2) & (u < noise), torch.full_like(x, 1.0), x_t)
    raise ValueError(f"unknown corruption '{kind}'; expected one of: {', '.join(CORRUPTIONS)}")


def reconstruction_error(cfg: Config, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample error (B,), mean over values: squared error, or BCE against intensities (x + 1) / 2."""
    if cfg.loss == "bce":
        err = F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none")
    else:
        err = (out - x) ** 2
    return err.flatten(1).mean(1)


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One step on the reconstruction error of the clean x from the (possibly corrupted) input."""
    ae = ctx.unwrap(model)
    cfg = ae.cfg
    assert list(batch["x"].shape[1:]) == ae.data_shape, f"batch {tuple(batch['x'].shape)} vs data {ae.data_shape}"

    def loss(mb, rng):
        x = mb["x"]
        value = reconstruction_error(cfg, model(corrupt(x, cfg.corruption, cfg.noise, rng)).float(), x).mean()
        return value, {"loss": value.item()}

    return ctx.update("model", loss)


@torch.no_grad()
def encode(model: AE, x: torch.Tensor) -> torch.Tensor:
    """Latents z (B, latent_dim) of clean inputs."""
    return model.encoder(x)


@torch.no_grad()
def decode(model: AE, z: torch.Tensor) -> torch.Tensor:
    """Reconstructions for latents z, as images in [-1, 1] (or points)."""
    return decoder_mean(model.decoder(z), logits=model.cfg.loss == "bce")


@torch.no_grad()
def anomaly_score(model: AE, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reconstruction error per input (B,) with the training loss (higher = more anomalous); no corruption."""
    return reconstruction_error(model.cfg, model(x).float(), x)


def sample(model: AE, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None):
    raise ValueError("the autoencoder has no prior to sample from; fit a GMM on its latents "
                     "(genlab train gmm --config gmm-latent-fmnist model.autoencoder=RUN) or use a VAE")


def report_images(model: AE, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Reconstructions (originals over reconstructions) and, for a denoising AE, corrupted inputs over denoised."""
    x = batch["x"][:10].to(next(model.parameters()).device)
    if x.dim() != 4:
        return {}
    out = {"reconstructions": torch.stack([x, decode(model, encode(model, x))]).cpu()}  # (2, n, C, H, W)
    cfg = model.cfg
    if cfg.corruption != "none":
        x_t = corrupt(x, cfg.corruption, cfg.noise, SampleRNG.from_generator(len(x), generator, x.device))
        out["denoised"] = torch.stack([x_t, decode(model, encode(model, x_t)), x]).cpu()  # (3, n, C, H, W)
    return out
