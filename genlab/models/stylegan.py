"""StyleGAN (Karras et al. 2019, "A Style-Based Generator Architecture for Generative Adversarial Networks").

The generator (Fig. 1b): a mapping network f: z -> w (8 equalized-LR dense layers, learning rate x 0.01,
Appendix C); a learned constant 4x4 input; per resolution two 3x3 convolutions, each followed by per-channel
scaled noise (Sec. 3.2), leaky ReLU and AdaIN with a style (y_s, y_b) = A(w) (an affine map per layer, Eq. 1).
Styles are injected with AdaIN (StyleGAN 1), not StyleGAN 2's modulated convolution. The network is trained at
its full resolution (no progressive growing, as in StyleGAN 2); the discriminator is ProGAN's
(`genlab.nn.style.GrowingDiscriminator` at its top level, minibatch stddev included).

Switches rebuild the rows of the paper's Table 1: `mapping=false` is the traditional generator (A: z feeds a
dense input layer, pixel norm instead of AdaIN; no W space), then + mapping network and styles (C), + constant
input (D: `const_input`), + noise inputs (E: `noise`), + mixing regularisation (F: `mixing_prob`).

- Style mixing regularisation (Sec. 3.1): with probability `mixing_prob` a sample takes w1 = f(z1) for layers
  below a crossover drawn uniformly from 1..L-1 and w2 = f(z2) from there on.
- Truncation (Sec. 3.1 / Appendix B): w' = w_avg + psi (w - w_avg), w_avg tracked during training as a moving
  average (beta `w_avg_beta`) of the batch mean of w over all processes; sampling option `truncation`.
- Loss: the non-saturating loss with R1 on real images (the paper's FFHQ setting, Sec. 2 and Appendix C), and
  optionally StyleGAN 2's path-length regularisation (Karras et al. 2020, Sec. 3.2, Eq. 4):
  E_{w, y}(||J_w^T y||_2 - a)^2, y ~ N(0, I / (H W)), a a moving average of the lengths (decay `pl_decay`),
  computed every step (not lazily) and with `a` taken from before the step, so the step does not depend on
  how the batch is split.
- PPL (`genlab.metrics.ppl`): `mapping(model, z)` and `synthesis(model, w)` split the generator for paths in W;
  `generate(model, z)` is the whole generator for paths in Z; both use one fixed noise image per layer
  (the reference's randomize_noise=False), so only the latent moves along a path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genlab.nn.style import (
    EqualConv2d,
    EqualLinear,
    GrowingDiscriminator,
    adain,
    interpolation_strip,
    level_widths,
    levels_for,
    lrelu,
    pixel_norm,
    upsample,
)
from genlab.rng import SampleRNG

SAMPLERS = ("prior",)
SAMPLE_OPTIONS = ("sampler", "batch_size", "truncation")
EMA_MODULES = ("G",)  # samples come from the EMA of G; D is not averaged


@dataclass
class Config:
    latent_dim: int = 128  # size of z (512 in the paper)
    w_dim: int = 128  # size of w (512 in the paper)
    mapping_layers: int = 8  # depth of the mapping network (8 in the paper; Table 4 varies it)
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping network (Appendix C)
    channels: int = 64  # widths of the 4x4 .. 16x16 levels (halved per level above)
    min_channels: int = 16  # the narrowest level
    mapping: bool = True  # mapping network + AdaIN styles (Table 1 C); false: traditional generator (A)
    const_input: bool = True  # learned constant 4x4 input (Table 1 D); false: a dense layer of w (or z)
    noise: bool = True  # per-layer noise inputs (Table 1 E)
    mixing_prob: float = 0.9  # style mixing regularisation probability (Table 1 F; 0.9 in the paper); 0 disables
    w_avg_beta: float = 0.995  # moving-average decay of the tracked mean w (truncation's centre)
    mbstd: bool = True  # minibatch standard deviation layer in D
    mbstd_group: int = 4  # consecutive samples per stddev group (must divide every micro-batch)
    r1_gamma: float = 1.0  # R1 penalty gamma/2 E||grad D(x_real)||^2 (10 in the paper at 1024px); 0 disables
    pl_weight: float = 0.0  # path-length regularisation weight (StyleGAN 2 uses 2); 0 disables
    pl_decay: float = 0.01  # moving-average decay of the path-length target a
    lr: float = 2e-3  # Adam learning rate of G and D
    beta1: float = 0.0  # Adam beta1 (paper: 0)
    beta2: float = 0.99  # Adam beta2 (paper: 0.99)


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x",)


def validate(cfg: Config) -> None:
    if not cfg.mapping and cfg.const_input:
        raise ValueError("model.const_input=true needs model.mapping=true: with a constant input the latent enters "
                         "only through the styles (set model.const_input=false for the traditional generator)")
    if not cfg.mapping and cfg.mixing_prob > 0:
        raise ValueError("style mixing needs the mapping network and styles: set model.mixing_prob=0 with "
                         "model.mapping=false")
    if not 0 <= cfg.mixing_prob <= 1 or not 0 <= cfg.w_avg_beta < 1 or not 0 < cfg.pl_decay <= 1:
        raise ValueError("model.mixing_prob must be in [0, 1], model.w_avg_beta in [0, 1), model.pl_decay in (0, 1]")
    if cfg.mapping_layers < 1 or cfg.mbstd_group < 1:
        raise ValueError("model.mapping_layers and model.mbstd_group must be >= 1")


# ----------------------------------------------------------------------------- networks


class MappingNetwork(nn.Module):
    """f: z (B, Z) -> w (B, W): pixel norm of z, then `mapping_layers` leaky-ReLU dense layers (Sec. 2)."""

    def __init__(self, cfg: Config):
        super().__init__()
        dims = [cfg.latent_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.ModuleList(EqualLinear(a, b, lr_mul=cfg.mapping_lr_mul) for a, b in zip(dims, dims[1:]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = pixel_norm(z)
        for layer in self.layers:
            h = lrelu(layer(h))
        return h


class StyleLayer(nn.Module):
    """[3x3 conv] -> + B * noise (per-channel scale B, from 0) -> leaky ReLU -> AdaIN(A(w)) (pixel norm when the
    generator has no styles)."""

    def __init__(self, c_in: int, c_out: int, cfg: Config, *, conv: bool = True):
        super().__init__()
        self.conv = EqualConv2d(c_in, c_out, 3) if conv else None
        self.noise_scale = nn.Parameter(torch.zeros(c_out)) if cfg.noise else None
        self.affine = None
        if cfg.mapping:
            self.affine = EqualLinear(cfg.w_dim, 2 * c_out, gain=1.0)
            with torch.no_grad():
                self.affine.bias[:c_out] = 1.0  # y_s starts at 1: the layer starts as an instance norm

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        if self.noise_scale is not None and noise is not None:
            x = x + self.noise_scale[None, :, None, None] * noise  # noise (B, 1, H, W): one image per layer
        x = lrelu(x)
        if self.affine is None:
            return pixel_norm(x)
        y_s, y_b = self.affine(w).chunk(2, dim=1)  # (B, C) each
        return adain(x, y_s, y_b)


class Generator(nn.Module):
    """z -> (images (B, C, H, W), per-layer latents ws (B, L, D)); L = 2 per resolution level."""

    def __init__(self, cfg: Config, out_channels: int, levels: int):
        super().__init__()
        self.cfg, self.levels, self.num_layers = cfg, levels, 2 * levels
        w = level_widths(levels, cfg.channels, cfg.min_channels)
        self.mapping_net = MappingNetwork(cfg) if cfg.mapping else None
        self.const = nn.Parameter(torch.ones(1, w[0], 4, 4)) if cfg.const_input else None
        in_dim = cfg.w_dim if cfg.mapping else cfg.latent_dim
        self.input = None if cfg.const_input else EqualLinear(in_dim, w[0] * 16, gain=math.sqrt(2) / 4)
        layers = [StyleLayer(w[0], w[0], cfg, conv=False), StyleLayer(w[0], w[0], cfg)]
        for i in range(1, levels):
            layers += [StyleLayer(w[i - 1], w[i], cfg), StyleLayer(w[i], w[i], cfg)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb = EqualConv2d(w[-1], out_channels, 1, gain=1.0)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))  # tracked mean of w (truncation)
        self.register_buffer("pl_mean", torch.zeros(()))  # path-length target a (0: not estimated yet)

    def resolutions(self) -> list[int]:
        """Side of the feature maps at each style layer: 4, 4, 8, 8, ..."""
        return [4 * 2 ** (layer // 2) for layer in range(self.num_layers)]

    def styles(self, z, z2=None, crossover=None, psi: float = 1.0) -> torch.Tensor:
        """Per-layer latents (B, L, D): w = f(z) truncated towards w_avg; layers >= crossover (B,) take f(z2)."""
        L = self.num_layers
        if self.mapping_net is None:  # traditional generator: z (normalised) only feeds the input layer
            return pixel_norm(z)[:, None].expand(-1, L, -1)
        w = truncate(self.mapping_net(z), self.w_avg, psi)
        ws = w[:, None].expand(-1, L, -1)  # (B, L, D)
        if z2 is not None:
            w2 = truncate(self.mapping_net(z2), self.w_avg, psi)
            below = torch.arange(L, device=z.device)[None, :] < crossover[:, None]  # (B, L)
            ws = torch.where(below[..., None], ws, w2[:, None])
        return ws

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None) -> torch.Tensor:
        """g: ws (B, L, D) and noise images [(B, 1, r, r)] per layer (None: none) -> images (B, C, H, W)."""
        B = ws.shape[0]
        h = self.const.expand(B, -1, -1, -1) if self.const is not None else self.input(ws[:, 0]).reshape(B, -1, 4, 4)
        for i, layer in enumerate(self.layers):
            if i >= 2 and i % 2 == 0:  # the first layer of each new level doubles the resolution
                h = upsample(h)
            h = layer(h, ws[:, i], noise[i] if noise is not None else None)
        return self.to_rgb(h)

    def forward(self, z, noise=None, z2=None, crossover=None, psi: float = 1.0):
        ws = self.styles(z, z2, crossover, psi)
        return self.synthesis(ws, noise), ws


def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """The truncation trick in W: w_avg + psi (w - w_avg) (psi = 1: w unchanged; psi = 0: w_avg)."""
    return w if psi == 1 else w_avg + psi * (w - w_avg)


class StyleGAN(nn.ModuleDict):
    """{"G": Generator, "D": GrowingDiscriminator (top level)}."""

    def __init__(self, cfg: Config, spec):
        validate(cfg)
        shape = list(spec.shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"stylegan needs square images, got data of shape {tuple(shape)}")
        levels = levels_for(shape[1])
        d = GrowingDiscriminator(shape[0], shape[1], channels=cfg.channels, min_channels=cfg.min_channels,
                                 mbstd=cfg.mbstd, mbstd_group=cfg.mbstd_group, equalized=True)
        super().__init__({"G": Generator(cfg, shape[0], levels), "D": d})
        self.cfg, self.spec, self.data_shape = cfg, spec, shape


def build(cfg: Config, spec, deps) -> StyleGAN:
    return StyleGAN(cfg, spec)


def make_optimizers(model: StyleGAN, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.beta1, cfg.beta2)
    return {"D": torch.optim.Adam(model["D"].parameters(), lr=cfg.lr, betas=betas),
            "G": torch.optim.Adam(model["G"].parameters(), lr=cfg.lr, betas=betas)}


# ----------------------------------------------------------------------------- objective


def draw_noise(G: Generator, rng: SampleRNG) -> list[torch.Tensor] | None:
    """One noise image (1, r, r) per layer and sample, from the sample's own stream (one draw per sample)."""
    if not G.cfg.noise:
        return None
    sizes = [r * r for r in G.resolutions()]
    flat = rng.randn(sum(sizes))  # (B, sum r^2)
    return [c.reshape(-1, 1, r, r) for c, r in zip(flat.split(sizes, dim=1), G.resolutions())]


def draw_latents(G: Generator, rng: SampleRNG, mixing_prob: float):
    """z, z2 (B, Z) and the crossover (B,): 1..L-1 with probability mixing_prob, else L (no mixing)."""
    L, Z = G.num_layers, G.cfg.latent_dim
    z, z2 = rng.randn(Z), rng.randn(Z)
    mix = rng.rand(1)[:, 0] < mixing_prob
    crossover = torch.where(mix, 1 + rng.randint(L - 1).to(mix.device), torch.full_like(mix, L, dtype=torch.long))
    return z, z2, crossover


def _global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a per-process mean (every process holds an equal share of the batch)."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return t


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """D phase (non-saturating + R1), G phase (non-saturating [+ path length]), then the moving averages w_avg
    and the path-length target, from the whole step's batch (all micro-batches and processes)."""
    gan = ctx.unwrap(model)
    cfg = gan.cfg
    assert list(batch["x"].shape[1:]) == gan.data_shape, f"batch {tuple(batch['x'].shape)} vs data {gan.data_shape}"
    G, D, G_raw = model["G"], model["D"], ctx.unwrap(model["G"])
    mixing = cfg.mixing_prob if cfg.mapping else 0.0
    seen_w, seen_pl = [], []

    def fakes(rng, device, **kw):
        z, z2, crossover = (v.to(device) for v in draw_latents(G_raw, rng, mixing))
        noise = draw_noise(G_raw, rng)
        noise = [n.to(device) for n in noise] if noise is not None else None
        if mixing == 0:
            z2 = crossover = None
        return G(z, noise, z2, crossover)

    def d_phase(mb, rng):
        x = mb["x"]
        with torch.no_grad():
            fake, _ = fakes(rng, x.device)
        d_real, d_fake = D(torch.cat([x, fake])).chunk(2)  # one forward for DDP
        loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        logs = {"d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}
        if cfg.r1_gamma > 0:  # Mescheder et al. 2018, Eq. 9
            xr = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(xr).sum(), xr, create_graph=True)
            r1 = grad.flatten(1).pow(2).sum(1).mean()
            loss = loss + cfg.r1_gamma / 2 * r1
            logs["r1"] = r1.item()
        return loss, {"loss_d": loss.item(), **logs}

    def g_phase(mb, rng):
        fake, ws = fakes(rng, mb["x"].device)
        loss = F.softplus(-D(fake)).mean()
        logs = {}
        if cfg.pl_weight > 0:  # Karras et al. 2020, Eq. 4
            H, W = fake.shape[2:]
            y = rng.randn(*fake.shape[1:]).to(fake.device) / math.sqrt(H * W)
            (jy,) = torch.autograd.grad((fake * y).sum(), ws, create_graph=True)  # J^T y per layer: (B, L, D)
            lengths = jy.pow(2).sum(2).mean(1).sqrt()  # (B,)
            if G_raw.pl_mean > 0:  # the target is estimated from the first step on
                pl = (lengths - G_raw.pl_mean).pow(2).mean()
                loss = loss + cfg.pl_weight * pl
                logs["pl_penalty"] = pl.item()
            seen_pl.append(lengths.detach())
        seen_w.append(ws[:, 0].detach())
        return loss, {"loss_g": loss.item(), **logs}

    logs = ctx.update("D", d_phase)
    logs.update(ctx.update("G", g_phase))
    with torch.no_grad():  # moving averages from the whole step's batch
        if cfg.mapping:
            G_raw.w_avg.lerp_(_global_mean(torch.cat(seen_w).mean(0)), 1 - cfg.w_avg_beta)
        if seen_pl:
            a = _global_mean(torch.cat(seen_pl).mean())
            G_raw.pl_mean.copy_(a if G_raw.pl_mean == 0 else G_raw.pl_mean.lerp(a, cfg.pl_decay))
            logs["pl_mean"] = float(G_raw.pl_mean)
    return {"loss": logs["loss_d"] + logs["loss_g"], **logs}


# ----------------------------------------------------------------------------- sampling, mixing, PPL


def _check_psi(psi: float | None, cfg: Config) -> float:
    psi = 1.0 if psi is None else float(psi)
    if not 0 <= psi <= 1:
        raise ValueError(f"truncation psi must be in [0, 1] (1: no truncation, 0: the mean w), got {psi}")
    if psi != 1 and not cfg.mapping:
        raise ValueError("truncation works in W: this generator has no mapping network (model.mapping=false)")
    return psi


def const_noise(G: Generator, n: int, device) -> list[torch.Tensor] | None:
    """One fixed noise image per layer, the same for all n samples (seeded: the reference's constant noise)."""
    if not G.cfg.noise:
        return None
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 1, r, r, generator=g).to(device).expand(n, -1, -1, -1) for r in G.resolutions()]


def mapping(model: StyleGAN, z: torch.Tensor) -> torch.Tensor:
    """f(z): z (B, Z) -> w (B, W) (for paths in W)."""
    G = model["G"]
    if G.mapping_net is None:
        raise ValueError("this generator has no mapping network (model.mapping=false): it has no W space; "
                         "measure paths in Z")
    return G.mapping_net(z)


def synthesis(model: StyleGAN, w: torch.Tensor) -> torch.Tensor:
    """g(w): w (B, W) (the same w at every layer) -> float images (B, C, H, W), with constant noise."""
    G = model["G"]
    ws = w[:, None].expand(-1, G.num_layers, -1)
    return G.synthesis(ws, const_noise(G, w.shape[0], w.device))


def generate(model: StyleGAN, z: torch.Tensor) -> torch.Tensor:
    """g(f(z)): float images (B, C, H, W) with constant noise (for paths in Z)."""
    G = model["G"]
    return G.synthesis(G.styles(z), const_noise(G, z.shape[0], z.device))


@torch.no_grad()
def sample(model: StyleGAN, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, batch_size: int = 1024, truncation: float | None = None) -> torch.Tensor:
    """G(z), z ~ N(0, I) and noise per sample; `truncation` psi in [0, 1] pulls w towards w_avg."""
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for stylegan; expected one of: {', '.join(SAMPLERS)}")
    psi = _check_psi(truncation, model.cfg)
    device = next(model.parameters()).device
    G = model["G"]
    was_training = G.training
    G.eval()
    rng = SampleRNG.from_generator(n, generator, device)
    z, noise = rng.randn(model.cfg.latent_dim), draw_noise(G, rng)
    out = []
    for i in range(0, n, batch_size):
        nz = [t[i : i + batch_size] for t in noise] if noise is not None else None
        out.append(G(z[i : i + batch_size], nz, psi=psi)[0])
    G.train(was_training)
    return torch.cat(out).clamp(-1, 1)


def default_crossover(model: StyleGAN) -> int:
    """The paper's 'coarse styles' (Fig. 3): the layers of the 4x4 and 8x8 levels (4; fewer for tiny nets)."""
    return min(4, model["G"].num_layers - 1)


@torch.no_grad()
def style_mixing(model: StyleGAN, row_seeds, col_seeds, *, crossover: int | None = None,
                 truncation: float | None = None) -> torch.Tensor:
    """The style-mixing grid (Fig. 3): (R + 1, C + 1, ch, H, W) images in [-1, 1].

    Row 0 holds the column sources, column 0 the row sources (top-left blank); cell (r, c) takes the styles of
    layers < crossover (coarse) from row seed r and of the layers from crossover on (fine) from column seed c.
    Noise is the same constant image per layer everywhere, so only the styles differ.
    """
    G = model["G"]
    L = G.num_layers
    crossover = default_crossover(model) if crossover is None else int(crossover)
    if G.mapping_net is None:
        raise ValueError("style mixing needs styles: this generator has no mapping network (model.mapping=false)")
    if not 1 <= crossover <= L - 1:
        raise ValueError(f"mixing crossover {crossover} is beyond the network's depth: this generator has {L} style "
                         f"layers (two per resolution, 4x4 .. {G.resolutions()[-1]}x{G.resolutions()[-1]}); "
                         f"use a crossover in 1..{L - 1}")
    psi = _check_psi(truncation, model.cfg)
    device = next(model.parameters()).device
    Z = model.cfg.latent_dim

    def latents(seeds):
        return torch.stack([torch.randn(Z, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)

    zr, zc = latents(row_seeds), latents(col_seeds)
    R, C = len(zr), len(zc)
    wr, wc = G.styles(zr, psi=psi), G.styles(zc, psi=psi)  # (R, L, D), (C, L, D)
    below = (torch.arange(L, device=device) < crossover)[None, None, :, None]  # (1, 1, L, 1)
    mixed = torch.where(below, wr[:, None], wc[None, :])  # (R, C, L, D)
    ws = torch.cat([wc, wr, mixed.reshape(R * C, L, -1)])
    images = G.synthesis(ws, const_noise(G, len(ws), device)).clamp(-1, 1)
    top, left, cells = images[:C], images[C : C + R], images[C + R :].reshape(R, C, *images.shape[1:])
    blank = torch.ones_like(images[:1])
    grid = torch.cat([torch.cat([blank, top])[None], torch.cat([left[:, None], cells], dim=1)])
    return grid  # (R + 1, C + 1, ch, H, W)


@torch.no_grad()
def report_images(model: StyleGAN, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Style mixing (5 x 5, coarse from rows) and interpolation strips in Z (spherical) and W (linear)."""
    device = next(model.parameters()).device
    z = SampleRNG.from_generator(12, generator, device).randn(model.cfg.latent_dim)
    out = {"interpolation-z": interpolation_strip(lambda v: generate(model, v).clamp(-1, 1), z[:6], z[6:],
                                                  spherical=True).cpu()}
    if model["G"].mapping_net is not None:
        w = mapping(model, z)
        out["interpolation-w"] = interpolation_strip(lambda v: synthesis(model, v).clamp(-1, 1), w[:6], w[6:]).cpu()
        out["style-mixing"] = style_mixing(model, range(5), range(5, 10)).cpu()
    return out
