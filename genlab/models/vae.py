"""VAE: variational autoencoder (Kingma & Welling 2014) with the IWAE likelihood bound (Burda et al. 2016).

Encoder q(z|x) = N(mu, diag(exp(logvar))), prior p(z) = N(0, I), decoder p(x|z) either Gaussian with a learned
scale (one log-sigma per channel) or Bernoulli on binarised pixels (x > 0 in [-1, 1]). Training maximises the
ELBO E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)) with the reparameterisation z = mu + exp(logvar/2) * eps.
Convolutional networks for images, MLPs for 2-D points.

Likelihood convention: for 8-bit images the Gaussian decoder's continuous density on [-1, 1] is turned into a
(lower bound on the) discrete likelihood by uniform dequantisation: log P(x) >= log p(x) + D log(2/256), the
bin width of one 8-bit level in [-1, 1] units. Bernoulli likelihoods are of the binarised image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.dequantization import discrete_log_likelihood
from genlab.nn.autoencoder import ConvDecoder, ConvEncoder, decoder_mean, feature_sizes, mlp
from genlab.rng import SampleRNG

SAMPLERS = ("prior",)
SAMPLE_OPTIONS = ("sampler", "batch_size")
LIKELIHOOD = "bound"  # log_likelihood is the IWAE lower bound


@dataclass
class Config:
    latent_dim: int = 16  # size of z; 2 for a latent you can plot, 8-64 for images
    channels: int = 32  # conv width of the first encoder level (doubles at the second)
    mlp_hidden: int = 256  # hidden width for 2-D points
    decoder: Literal["gaussian", "bernoulli"] = "gaussian"  # learned per-channel scale | binarised pixels
    beta: float = 1.0  # KL weight; 1 = the ELBO (beta-VAE otherwise)
    lr: float = 1e-3  # Adam learning rate
    iwae_k: int = 64  # importance samples for the NLL estimate


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x",)


class VAE(nn.Module):
    """`forward(x, eps) -> (decoder output, mu, logvar)` with z = mu + sigma * eps (all through one forward for DDP)."""

    def __init__(self, cfg: Config, spec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.data_shape = shape = list(spec.shape)
        z = cfg.latent_dim
        self.log_sigma = nn.Parameter(torch.full((shape[0],), math.log(0.1)))
        if len(shape) == 1:
            self.encoder = mlp(shape[0], cfg.mlp_hidden, 2 * z)
            self.decoder = mlp(z, cfg.mlp_hidden, shape[0])
            return
        c, H, W = shape
        h4, w4 = feature_sizes(H, W)[2]
        self.encoder = nn.Sequential(ConvEncoder(c, cfg.channels, H), nn.Flatten(), nn.Linear(2 * cfg.channels * h4 * w4, 2 * z))
        self.decoder = nn.Sequential(nn.Linear(z, 2 * cfg.channels * h4 * w4), nn.Unflatten(1, (2 * cfg.channels, h4, w4)),
                                     ConvDecoder(c, cfg.channels, (H, W)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output: Gaussian mean or Bernoulli logits, shaped like the data."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        mu, logvar = self.encode(x)
        z = mu + (0.5 * logvar).exp() * eps
        return self.decode(z), mu, logvar


def build(cfg: Config, spec, deps) -> VAE:
    return VAE(cfg, spec)


def make_optimizers(model: VAE, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(model.parameters(), lr=cfg.lr)}


def _target(cfg: Config, x: torch.Tensor) -> torch.Tensor:
    return (x > 0).float() if cfg.decoder == "bernoulli" else x


def log_px_given_z(model: VAE, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z) summed over dimensions (B,), in nats (continuous density for the Gaussian decoder)."""
    cfg = model.cfg
    if cfg.decoder == "bernoulli":
        return -F.binary_cross_entropy_with_logits(out, _target(cfg, x), reduction="none").flatten(1).sum(1)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    log_sigma = model.log_sigma.reshape(shape)
    nll = 0.5 * ((x - out) / log_sigma.exp()) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)
    return -nll.flatten(1).sum(1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One optimizer step on the negative (beta-)ELBO, in nats per image."""
    vae = ctx.unwrap(model)
    cfg = vae.cfg
    assert list(batch["x"].shape[1:]) == vae.data_shape, f"batch {tuple(batch['x'].shape)} vs data {vae.data_shape}"

    def loss(mb, rng):
        x = mb["x"]
        eps = rng.randn(cfg.latent_dim).to(x.device)
        out, mu, logvar = model(x, eps)
        rec = log_px_given_z(vae, out.float(), x)
        kl = kl_standard_normal(mu.float(), logvar.float())
        value = (-rec + cfg.beta * kl).mean()
        return value, {"loss": value.item(), "rec": -rec.mean().item(), "kl": kl.mean().item()}

    return ctx.update("model", loss)


@torch.no_grad()
def encode(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Posterior means mu(x) (B, latent_dim)."""
    return model.encode(x)[0]


@torch.no_grad()
def decode(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """Decoder means for latents z, as images in [-1, 1] (or points)."""
    return decoder_mean(model.decode(z), logits=model.cfg.decoder == "bernoulli")


@torch.no_grad()
def sample(model: VAE, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None, sampler: str | None = None,
           batch_size: int = 1024) -> torch.Tensor:
    """z ~ N(0, I) per image, decoded to the decoder mean (the usual way VAE samples are shown)."""
    if cond is not None:
        raise ValueError("the VAE is unconditional; drop --class")
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for vae; expected one of: {', '.join(SAMPLERS)}")
    device = next(model.parameters()).device
    z = SampleRNG.from_generator(n, generator, device).randn(model.cfg.latent_dim)
    return torch.cat([decode(model, z[i : i + batch_size]) for i in range(0, n, batch_size)])


@torch.no_grad()
def log_likelihood(model: VAE, x: torch.Tensor, *, k: int | None = None, generator: torch.Generator | None = None,
                   chunk: int = 16) -> torch.Tensor:
    """IWAE estimate of log p(x) (B,) in nats (Burda et al. 2016, Eq. 8); a lower bound that tightens with k.

    log p(x) >= E[log (1/k) sum_i p(x, z_i) / q(z_i | x)], z_i ~ q(z | x). For 8-bit images with the Gaussian
    decoder, D log(2/256) is added (uniform dequantisation; see the module docstring).
    """
    cfg = model.cfg
    k = k or cfg.iwae_k
    mu, logvar = model.encode(x)
    std = (0.5 * logvar).exp()
    rng = SampleRNG.from_generator(x.shape[0], generator, x.device)
    log_w = []
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        eps = rng.randn(m, cfg.latent_dim)  # (B, m, Z)
        z = mu[:, None] + std[:, None] * eps
        xr = x[:, None].expand(-1, m, *x.shape[1:]).reshape(-1, *x.shape[1:])  # (B*m, ...)
        rec = log_px_given_z(model, model.decode(z.reshape(-1, cfg.latent_dim)), xr).reshape(-1, m)
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * eps.pow(2) - 0.5 * logvar[:, None] - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_w.append(rec + log_pz - log_qz)
    ll = torch.logsumexp(torch.cat(log_w, 1), dim=1) - math.log(k)
    if len(model.data_shape) == 3 and cfg.decoder == "gaussian":
        ll = discrete_log_likelihood(ll, math.prod(model.data_shape))
    return ll


@torch.no_grad()
def anomaly_score(model: VAE, x: torch.Tensor, *, generator: torch.Generator | None = None, k: int = 8) -> torch.Tensor:
    """Negative ELBO per input (B,) in nats, averaged over k posterior samples (higher = more anomalous)."""
    cfg = model.cfg
    mu, logvar = model.encode(x)
    eps = SampleRNG.from_generator(x.shape[0], generator, x.device).randn(k, cfg.latent_dim)  # (B, k, Z)
    z = mu[:, None] + (0.5 * logvar).exp()[:, None] * eps
    xr = x[:, None].expand(-1, k, *x.shape[1:]).reshape(-1, *x.shape[1:])  # (B*k, ...)
    rec = log_px_given_z(model, model.decode(z.reshape(-1, cfg.latent_dim)), xr).reshape(-1, k).mean(1)
    return -(rec - kl_standard_normal(mu, logvar))


def report_images(model: VAE, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Reconstructions: a row of originals (binarised for the Bernoulli decoder) over their reconstructions."""
    x = batch["x"][:10].to(next(model.parameters()).device)
    if x.dim() != 4:
        return {}
    recon = decode(model, encode(model, x))
    orig = _target(model.cfg, x) * 2 - 1 if model.cfg.decoder == "bernoulli" else x
    return {"reconstructions": torch.stack([orig, recon]).cpu()}  # (2, n, C, H, W)
