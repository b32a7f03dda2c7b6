"""VQ-VAE: vector-quantised autoencoder (van den Oord et al. 2017, "Neural Discrete Representation Learning").

The encoder output z_e(x) is snapped to its nearest code e_k of a codebook of K vectors of size D, one code per
position of the quarter-resolution feature map (images) or one per point (2-D toys). The decoder sees
z_q = e_k; gradients pass the non-differentiable lookup by the straight-through estimator. The objective is
Eq. 3 of the paper with an MSE reconstruction term on [-1, 1] data:

    loss = ||x - D(z_q)||^2 + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2    (means over elements)

With `codebook="ema"` the middle (codebook) term is dropped and the codes are moving averages of the encoder
outputs assigned to them (van den Oord et al. 2017, App. A.1), with Laplace-smoothed cluster sizes as in the
authors' released Sonnet implementation. Codes whose moving-average usage drops below `restart_threshold`
are re-initialised to random encoder outputs of the current batch (random restarts: Dhariwal et al. 2020,
Jukebox). The model has no prior over codes of its own: it encodes and decodes; to sample, train an
autoregressive prior over its code indices (`genlab train pixelcnn model.vqvae=RUN`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genlab.nn.autoencoder import ConvDecoder, ConvEncoder, mlp

SAMPLERS = ()  # no prior over codes here: see `sample` (the pixelcnn family learns one)
SAMPLE_OPTIONS = ()


@dataclass
class Config:
    codebook_size: int = 256  # K, number of codes; 64-1024
    code_dim: int = 16  # D, size of each code vector; 8-64
    channels: int = 32  # conv width of the first encoder level (doubles at the second)
    mlp_hidden: int = 256  # hidden width for 2-D points
    beta: float = 0.25  # commitment weight (the paper's 0.25; results are robust over 0.1-2)
    codebook: Literal["ema", "loss"] = "ema"  # moving-average k-means updates | codebook loss term (Adam)
    decay: float = 0.99  # EMA decay of code usage counts (and of the code sums in "ema" mode)
    eps: float = 1e-5  # Laplace smoothing of the cluster sizes in "ema" mode
    restart_threshold: float = 1.0  # restart codes used fewer times per batch (EMA) than this; 0 disables
    lr: float = 1e-3  # Adam learning rate


class VQVAE(nn.Module):
    """`forward(x) -> (reconstruction, z_e, z_q, indices)`; latents are (B, D, h, w) for images, (B, D) for points.

    Buffers: `cluster_size` (K,) is the moving-average number of vectors assigned to each code per batch;
    in "ema" mode `codebook` (K, D) and `embed_sum` (K, D) are buffers too, in "loss" mode `codebook` is a
    parameter.
    """

    def __init__(self, cfg: Config, spec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.data_shape = shape = list(spec.shape)
        K, D = cfg.codebook_size, cfg.code_dim
        if len(shape) == 1:
            self.encoder = mlp(shape[0], cfg.mlp_hidden, D)
            self.decoder = mlp(D, cfg.mlp_hidden, shape[0])
        else:
            c, H, W = shape
            self.encoder = nn.Sequential(ConvEncoder(c, cfg.channels, H), nn.Conv2d(2 * cfg.channels, D, 1))
            self.decoder = nn.Sequential(nn.Conv2d(D, 2 * cfg.channels, 1), ConvDecoder(c, cfg.channels, (H, W)))
        codebook = torch.empty(K, D).uniform_(-1 / K, 1 / K)
        if cfg.codebook == "ema":
            self.register_buffer("codebook", codebook)
            # every code starts as the average of one vector: itself (N_i = 1, m_i = e_i)
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("cluster_size", torch.ones(K))

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance) per latent vector: (B, h, w) or (B,)."""
        with torch.no_grad():  # argmin has no gradient
            flat, e = _vectors(z_e), self.codebook  # (N, D), (K, D)
            dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)  # (N, K)
        return dist2.argmin(1).reshape(z_e.shape[0], *z_e.shape[2:])

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Codes for indices (B, h, w) -> (B, D, h, w), or (B,) -> (B, D)."""
        e = self.codebook[idx]  # (B, h, w, D) or (B, D)
        return e.permute(0, 3, 1, 2) if e.dim() == 4 else e

    def forward(self, x: torch.Tensor):
        z_e = self.encoder(x)
        idx = self.nearest(z_e)
        z_q = self.embed(idx)
        # straight-through: the decoder sees z_q, the encoder receives the decoder's gradient unchanged
        x_rec = self.decoder(z_e + (z_q - z_e).detach())
        return x_rec, z_e, z_q, idx


def _vectors(z: torch.Tensor) -> torch.Tensor:
    """Latents (B, D, h, w) or (B, D) as rows (N, D)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]) if z.dim() == 4 else z


def _ddp() -> bool:
    return dist.is_available() and dist.is_initialized()


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x",)


def build(cfg: Config, spec, deps) -> VQVAE:
    return VQVAE(cfg, spec)


def make_optimizers(model: VQVAE, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(model.parameters(), lr=cfg.lr)}


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code-usage distribution: K for uniform usage over K codes, 1 for a single code."""
    p = counts.double() / counts.sum()
    return math.exp(-(p * p.clamp_min(1e-30).log()).sum().item())


@torch.no_grad()
def update_codebook(model: VQVAE, z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Moving-average statistics from encoder outputs z (N, D) assigned to codes idx (N,); returns the counts (K,).

    van den Oord et al. 2017, App. A.1, with gamma = cfg.decay:
      1. n_i = #{j: idx_j = i} and s_i = sum of those z_j (summed over processes under DDP);
      2. N_i <- gamma N_i + (1 - gamma) n_i (usage, kept in both modes: it decides restarts);
      3. "ema" mode: m_i <- gamma m_i + (1 - gamma) s_i, and e_i = m_i / N~_i with the Laplace-smoothed
         N~_i = (N_i + eps) / (n + K eps) * n, n = sum_i N_i (so a code no vector chose never divides by 0).
    """
    cfg = model.cfg
    onehot = F.one_hot(idx, cfg.codebook_size).to(z.dtype)  # (N, K)
    counts, sums = onehot.sum(0), onehot.T @ z  # (K,), (K, D)
    if _ddp():  # every process must apply the same update, from the global batch
        dist.all_reduce(counts)
        dist.all_reduce(sums)
    model.cluster_size.lerp_(counts, 1 - cfg.decay)
    if cfg.codebook == "ema":
        model.embed_sum.lerp_(sums, 1 - cfg.decay)
        n = model.cluster_size.sum()
        smoothed = (model.cluster_size + cfg.eps) / (n + cfg.codebook_size * cfg.eps) * n
        model.codebook.copy_(model.embed_sum / smoothed[:, None])
    return counts


@torch.no_grad()
def restart_dead_codes(model: VQVAE, candidates: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Re-initialise codes whose usage `cluster_size` is below cfg.restart_threshold; returns their indices.

    Dead code number r (in index order) takes the candidate (M, D) with the r-th smallest random key (M,), so the
    choice depends on the keys, not on how the batch was split over processes. A restarted code starts with
    usage = threshold (it must then attract at least that many vectors per batch to survive).
    """
    cfg = model.cfg
    dead = (model.cluster_size < cfg.restart_threshold).nonzero().squeeze(1)
    if len(dead) == 0:
        return dead
    assert len(candidates) >= len(dead), f"{len(candidates)} candidates for {len(dead)} dead codes"
    new = candidates[keys.argsort()[: len(dead)]].to(model.codebook.dtype)
    model.codebook.data[dead] = new
    model.cluster_size[dead] = cfg.restart_threshold
    if cfg.codebook == "ema":
        model.embed_sum[dead] = new * cfg.restart_threshold
    return dead


def _restart_candidates(z_e: torch.Tensor, rng, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random encoder outputs of the global batch (M, D) with a random key each (M,), from every sample's own stream.

    Each sample offers m random positions of its latent map, m chosen so that the global batch offers M >= k.
    """
    B, D = z_e.shape[:2]
    world = dist.get_world_size() if _ddp() else 1
    m = math.ceil(k / (B * world))
    per_sample = z_e.flatten(2).transpose(1, 2) if z_e.dim() == 4 else z_e[:, None]  # (B, h*w, D)
    pos = rng.randint(per_sample.shape[1], m).to(z_e.device)  # (B, m)
    candidates = per_sample.gather(1, pos[..., None].expand(-1, -1, D)).reshape(-1, D)  # (B*m, D)
    keys = rng.rand(m).to(z_e.device).reshape(-1)  # (B*m,)
    if _ddp():
        candidates, keys = _all_gather(candidates), _all_gather(keys)
    return candidates, keys


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def _check(model: VQVAE, x: torch.Tensor) -> None:
    assert list(x.shape[1:]) == model.data_shape, f"batch {tuple(x.shape)} vs data {model.data_shape}"


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One Adam step on Eq. 3 of van den Oord et al. 2017 (MSE reconstruction), then codebook averages and restarts.

    Logs: loss, rec (MSE per element), commit (||z_e - sg[e]||^2 per element), and the batch's code usage:
    perplexity (exp of the entropy of code frequencies; K at best) and usage (fraction of codes used).
    """
    vq = ctx.unwrap(model)
    cfg = vq.cfg
    _check(vq, batch["x"])
    seen = []  # (z_e, idx) of every micro-batch: the codebook statistics use the whole batch

    def loss(mb, rng):
        x = mb["x"]
        x_rec, z_e, z_q, idx = model(x)
        rec = F.mse_loss(x_rec.float(), x)
        commit = F.mse_loss(z_e.float(), z_q.detach().float())
        value = rec + cfg.beta * commit
        if cfg.codebook == "loss":
            value = value + F.mse_loss(z_q.float(), z_e.detach().float())
        seen.append((z_e.detach().float(), idx))
        return value, {"loss": value.item(), "rec": rec.item(), "commit": commit.item()}

    logs = ctx.update("model", loss)
    z = torch.cat([z for z, _ in seen])
    counts = update_codebook(vq, _vectors(z), torch.cat([i.flatten() for _, i in seen]))
    # every process holds the same cluster sizes (all-reduced), so all take this branch together
    if cfg.restart_threshold > 0 and bool((vq.cluster_size < cfg.restart_threshold).any()):
        restart_dead_codes(vq, *_restart_candidates(z, ctx.rng, cfg.codebook_size))
    return {**logs, "perplexity": perplexity(counts), "usage": (counts > 0).float().mean().item()}


@torch.no_grad()
def encode_to_indices(model: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """Code indices: images (B, C, H, W) -> LongTensor (B, h, w); points (B, D) -> (B,)."""
    _check(model, x)
    return model.nearest(model.encoder(x))


@torch.no_grad()
def decode_indices(model: VQVAE, idx: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (or points) from code indices (B, h, w) or (B,)."""
    return decode(model, model.embed(idx))


@torch.no_grad()
def encode(model: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """Quantised latents z_q (B, D, h, w) for images, (B, D) for points."""
    return model.embed(encode_to_indices(model, x))


@torch.no_grad()
def decode(model: VQVAE, z: torch.Tensor) -> torch.Tensor:
    """Decoder output for latents (B, D, h, w) or (B, D): images clamped to [-1, 1], or points."""
    out = model.decoder(z)
    return out.clamp(-1, 1) if len(model.data_shape) == 3 else out


@torch.no_grad()
def codebook_stats(model: VQVAE, x: torch.Tensor, *, chunk: int = 1024) -> dict[str, float]:
    """Code usage over a dataset x (N, ...) float in [-1, 1], encoded in chunks: {"perplexity", "usage"}."""
    if not x.is_floating_point():
        raise ValueError("codebook_stats takes float data in [-1, 1]; convert uint8 images with genlab.data.to_float")
    device = next(model.parameters()).device
    counts = torch.zeros(model.cfg.codebook_size, dtype=torch.float64, device=device)
    for i in range(0, len(x), chunk):
        idx = encode_to_indices(model, x[i : i + chunk].to(device))
        counts += torch.bincount(idx.flatten(), minlength=model.cfg.codebook_size)
    return {"perplexity": perplexity(counts), "usage": (counts > 0).double().mean().item()}


def sample(model: VQVAE, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Not available: sampling needs a prior over code indices, which this family does not learn."""
    raise ValueError("the VQ-VAE has no prior over codes of its own; train one over this run's code indices with "
                     "`genlab train pixelcnn --config pixelcnn-vqvae-fmnist model.vqvae=RUN` and sample that run")


def report_images(model: VQVAE, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Reconstructions: a row of originals over their reconstructions through the codebook (images only)."""
    x = batch["x"][:10].to(next(model.parameters()).device)
    if x.dim() != 4:
        return {}
    return {"reconstructions": torch.stack([x, decode(model, encode(model, x))]).cpu()}  # (2, n, C, H, W)
