"""KL-regularised autoencoder: the first stage of latent diffusion (Rombach et al. 2022, Sec. 3 and Appendix G).

An encoder maps an image (B, C, H, W) to a diagonal Gaussian posterior over latents (B, c, H/f, W/f) and a
decoder maps latents back; f (2, 4 or 8) and c are configurable. The objective (Rombach et al. 2022, Sec. 3,
following Esser et al. 2021's VQGAN recipe with a KL term instead of a codebook):

    L_AE = |x - D(z)|_1 + w_p * perceptual(x, D(z)) + w_KL * KL(q(z|x) || N(0, I)) + w_adv * L_G(D_patch(D(z)))

with z ~ q(z|x) = N(mu, sigma^2) (reparameterised), a tiny KL weight (the latent space stays close to the data's
detail; the LDM keeps only a "slight" KL penalty, Sec. 3) and a patch discriminator (Isola et al. 2017) that
judges reconstructions against real images with the hinge loss, switched on after `disc_start` steps so the
autoencoder first learns to reconstruct at all (Appendix G).

Perceptual term: LPIPS-style distances (Zhang et al. 2018, Eq. 1, uniform weights) between the stage outputs of
a bundled *domain* CNN, read from its weights file (safetensors + JSON record; data, not code: models must not
import genlab.metrics). `perceptual="auto"` picks a network that the data's evaluation protocol does not
measure with (scenes: fmnist-color-net; other data: scenes-cell-net, whose 32x32 cells are single garments),
so a reconstruction is not trained on the very features its Fréchet distance is computed from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from genlab.rng import SampleRNG

SAMPLERS = ()  # no prior: latent diffusion (the ldm family) learns one on top of this run
SAMPLE_OPTIONS = ()
EMA_MODULES = ("ae",)  # the EMA averages the autoencoder, not the discriminator
# where the bundled evaluators' weights files live (read as data; see the module docstring)
EVALUATOR_WEIGHTS = Path(__file__).resolve().parents[1] / "metrics" / "weights"


@dataclass
class Config:
    downsample: int = 4  # f: latents are (c, H/f, W/f); 2, 4 or 8 (Rombach et al. 2022 find f = 4-8 best)
    latent_channels: int = 4  # c, channels of the latent map; 3-4 in the LDM paper's KL models
    channels: int = 32  # width at full resolution; doubles per downsampling level up to 4x
    num_res_blocks: int = 1  # residual blocks per level; 1-2
    kl_weight: float = 1e-6  # w_KL on the KL summed over latents (per pixel); ~1e-6 keeps the KL "slight"
    perceptual_weight: float = 1.0  # w_p; 0 disables the perceptual term
    perceptual: str = "auto"  # domain network for the perceptual term: auto | NAME of a bundled evaluator | FILE.safetensors
    adv_weight: float = 0.1  # w_adv on the generator's hinge term; 0 disables the discriminator
    disc_start: int = 500  # steps before the discriminator (and the adversarial term) switch on
    disc_channels: int = 32  # width of the patch discriminator's first layer
    disc_layers: int = 2  # stride-2 layers of the patch discriminator (receptive field ~ 4 * 2^layers pixels)
    lr: float = 2e-4  # Adam learning rate of the autoencoder
    lr_d: float = 2e-4  # Adam learning rate of the discriminator
    beta1: float = 0.5  # Adam beta1 (0.5, as the LDM's first stage)
    beta2: float = 0.9  # Adam beta2


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x",)


def validate(cfg: Config, spec) -> None:
    if not spec.is_image:
        raise ValueError(f"autoencoder-kl needs images; '{spec.name}' holds points of shape {tuple(spec.shape)}")
    if cfg.downsample not in (1, 2, 4, 8):
        raise ValueError(f"model.downsample must be 1, 2, 4 or 8, got {cfg.downsample}")
    if cfg.latent_channels < 1 or cfg.channels < 1 or cfg.num_res_blocks < 0 or cfg.disc_layers < 1:
        raise ValueError("model.latent_channels, model.channels and model.disc_layers must be >= 1, "
                         "model.num_res_blocks >= 0")


# ----------------------------------------------------------------------------------------------- networks


def _groups(channels: int) -> int:
    """GroupNorm groups of at least 2 channels (up to 32 groups): with one channel per group a norm cancels any
    per-channel constant, so biases upstream get exactly-zero gradients, which Adam turns into float-noise steps."""
    return next((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 2), 1)


class Block(nn.Module):
    """Residual block without a time input: (GroupNorm, SiLU, 3x3 conv) twice, 1x1 skip when widths differ.
    A convolution that feeds a GroupNorm directly has no bias (the norm removes it)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(_groups(c_in), c_in), nn.SiLU(),
                                  nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                  nn.GroupNorm(_groups(c_out), c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def level_widths(cfg: Config) -> list[int]:
    """Channels at each resolution level: full, /2, /4, ... (doubling up to 4x the base width)."""
    levels = int(math.log2(cfg.downsample))
    return [cfg.channels * min(2**i, 4) for i in range(levels + 1)]


class Encoder(nn.Module):
    """(B, C, H, W) -> (mu, logvar), each (B, c, ceil(H/f), ceil(W/f)): blocks and stride-2 convs per level."""

    def __init__(self, cfg: Config, in_channels: int):
        super().__init__()
        widths = level_widths(cfg)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            c = widths[max(i - 1, 0)]
            layers += [Block(c if j == 0 else w, w) for j in range(cfg.num_res_blocks)] or [nn.Conv2d(c, w, 1)]
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(w, w, 3, stride=2, padding=1))  # ceil(s / 2)
        self.body = nn.Sequential(*layers, Block(widths[-1], widths[-1]))
        self.out = nn.Sequential(nn.GroupNorm(_groups(widths[-1]), widths[-1]), nn.SiLU(),
                                 nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.out(self.body(self.conv_in(x))).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # as the LDM's DiagonalGaussianDistribution, for a finite exp


class Decoder(nn.Module):
    """(B, c, h, w) -> (B, C, H, W): blocks per level, nearest upsampling to the encoder's sizes + conv."""

    def __init__(self, cfg: Config, out_channels: int, image_size: tuple[int, int]):
        super().__init__()
        widths = level_widths(cfg)[::-1]
        sizes = [tuple(image_size)]
        for _ in widths[1:]:
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        self.sizes = sizes[::-1][1:]  # target size after each upsampling, small to large
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        self.mid = Block(widths[0], widths[0])
        self.levels = nn.ModuleList()
        for i, w in enumerate(widths):
            c = widths[max(i - 1, 0)]
            blocks = [Block(c if j == 0 else w, w) for j in range(cfg.num_res_blocks)] or [nn.Conv2d(c, w, 1)]
            up = [nn.Conv2d(w, w, 3, padding=1)] if i < len(widths) - 1 else []  # after the resize
            self.levels.append(nn.ModuleList([nn.Sequential(*blocks), *up]))
        self.out = nn.Sequential(nn.GroupNorm(_groups(widths[-1]), widths[-1]), nn.SiLU(),
                                 nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i, level in enumerate(self.levels):
            h = level[0](h)
            if len(level) > 1:
                h = level[1](F.interpolate(h, size=self.sizes[i], mode="nearest"))  # (B, w, 2h, 2w)
        return self.out(h)


class AutoencoderKL(nn.Module):
    """Encoder + decoder; `forward(x, eps)` returns (reconstruction, mu, logvar) with z = mu + sigma * eps."""

    def __init__(self, cfg: Config, spec):
        super().__init__()
        c, h, w = spec.shape
        self.encoder = Encoder(cfg, c)
        self.decoder = Decoder(cfg, c, (h, w))

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        mu, logvar = self.encoder(x)
        z = mu if eps is None else mu + (0.5 * logvar).exp() * eps  # reparameterisation (Kingma & Welling 2014)
        return self.decoder(z), mu, logvar


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017, Sec. 3.2.2): a map of real/fake logits, one per overlapping image patch.

    GroupNorm instead of BatchNorm, so a sample's logits never depend on the rest of its batch (gradient
    accumulation and several processes stay exact).
    """

    def __init__(self, in_channels: int, channels: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.GroupNorm(_groups(2 * c), 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, h, w)


# ------------------------------------------------------------------------------------ perceptual features


class DomainFeatures(nn.Module):
    """The convolutional stages of a bundled domain evaluator (3x3 conv, BatchNorm, ReLU; 2x2 max-pool between
    stages), rebuilt from its weights file; frozen, eval mode. Same layout and key names as
    genlab.metrics.evaluators.Evaluator's `stages` (tests/test_autoencoder_kl.py checks equal outputs)."""

    def __init__(self, path: Path):
        super().__init__()
        record = json.loads(path.with_suffix(".json").read_text())
        arch = record["arch"]
        self.in_channels, self.downsample = arch["in_channels"], arch.get("downsample", 1)
        self.stages = nn.ModuleList()
        c = arch["in_channels"]
        for width, n in zip(arch["widths"], arch["convs"]):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                c = width
            self.stages.append(nn.Sequential(*layers))
        state = {k: v for k, v in load_file(str(path)).items() if k.startswith("stages.")}
        self.load_state_dict(state, strict=True)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs for float images in [-1, 1] (grayscale is repeated to the network's channels)."""
        if x.shape[1] != self.in_channels:
            x = x.mean(1, keepdim=True).expand(-1, self.in_channels, -1, -1)
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        maps = []
        for i, stage in enumerate(self.stages):
            x = stage(F.max_pool2d(x, 2) if i > 0 else x)
            maps.append(x)
        return maps


def perceptual_path(cfg: Config, spec) -> Path | None:
    """The weights file of the perceptual network (None when the term is off)."""
    if cfg.perceptual_weight == 0 or cfg.perceptual in ("", "none"):
        return None
    name = cfg.perceptual
    if name == "auto":
        name = "fmnist-color-net" if spec.name == "scenes" else "scenes-cell-net"
    path = Path(name) if name.endswith(".safetensors") else EVALUATOR_WEIGHTS / f"{name}.safetensors"
    if not path.is_file() or not path.with_suffix(".json").is_file():
        have = sorted(p.stem for p in EVALUATOR_WEIGHTS.glob("*.safetensors"))
        raise ValueError(f"model.perceptual={cfg.perceptual}: {path} (with its .json record) not found; use auto, "
                         f"none, one of: {', '.join(have)}, or a FILE.safetensors of a genlab evaluator")
    return path


def perceptual_distance(features: DomainFeatures, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_l mean_hw || n(f_l(x)) - n(f_l(y)) ||^2 per image (B,), n = unit norm along channels (Zhang et al. 2018,
    Eq. 1 with uniform weights)."""
    total = x.new_zeros(x.shape[0])
    for fx, fy in zip(features(x), features(y)):
        fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + (fx - fy).pow(2).sum(1).mean(dim=(1, 2))
    return total


# ------------------------------------------------------------------------------------------------ model


class FirstStage(nn.ModuleDict):
    """{"ae": AutoencoderKL, "D": PatchDiscriminator}, optimised (and prepared for DDP) separately."""

    def __init__(self, cfg: Config, spec):
        validate(cfg, spec)
        super().__init__({"ae": AutoencoderKL(cfg, spec),
                          "D": PatchDiscriminator(spec.shape[0], cfg.disc_channels, cfg.disc_layers)})
        self.cfg, self.spec, self.data_shape = cfg, spec, list(spec.shape)
        _, h, w = spec.shape
        for _ in range(int(math.log2(cfg.downsample))):  # stride-2 convs round up
            h, w = (h + 1) // 2, (w + 1) // 2
        self.latent_shape = [cfg.latent_channels, h, w]  # (c, h, w) of encode's output
        path = perceptual_path(cfg, spec)
        # held in a tuple, not as a submodule: frozen, loaded from the package's data, never in a checkpoint,
        # the EMA or DDP (the loop copies plain attributes, and would register a bare module)
        self.perceptual_net = (DomainFeatures(path),) if path is not None else None

    def perceptual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Perceptual distance per image (B,) between float images in [-1, 1]; zeros when the term is off."""
        if self.perceptual_net is None:
            return x.new_zeros(x.shape[0])
        (net,) = self.perceptual_net
        if next(net.parameters()).device != x.device:
            net.to(x.device)
        return perceptual_distance(net, x, y)


def build(cfg: Config, spec, deps) -> FirstStage:
    return FirstStage(cfg, spec)


def make_optimizers(model: FirstStage, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.beta1, cfg.beta2)
    return {"ae": torch.optim.Adam(model["ae"].parameters(), lr=cfg.lr, betas=betas),
            "D": torch.optim.Adam(model["D"].parameters(), lr=cfg.lr_d, betas=betas)}


def kl_per_pixel(mu: torch.Tensor, logvar: torch.Tensor, pixels: int) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over the latent, divided by the image's pixel count (B,).

    Per pixel, like the reconstruction means below, so `kl_weight` keeps the LDM's ratio of a summed KL to a
    summed reconstruction loss.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1) / pixels


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """The autoencoder phase (L1 + perceptual + KL + adversarial once the discriminator is on), then the
    discriminator phase (hinge loss on real images vs reconstructions) from step `disc_start` on."""
    net = ctx.unwrap(model)
    cfg = net.cfg
    assert list(batch["x"].shape[1:]) == net.data_shape, f"batch {tuple(batch['x'].shape)} vs data {net.data_shape}"
    AE, D = model["ae"], model["D"]
    adversarial = cfg.adv_weight > 0 and ctx.step >= cfg.disc_start
    pixels = math.prod(net.data_shape)

    def ae_phase(mb, rng):
        x = mb["x"]
        eps = rng.randn(cfg.latent_channels, *net.latent_shape[1:]).to(x.device)
        rec, mu, logvar = AE(x, eps)
        l1 = (rec - x).abs().flatten(1).mean(1)  # (B,)
        p = net.perceptual(rec, x) if cfg.perceptual_weight > 0 else torch.zeros_like(l1)
        kl = kl_per_pixel(mu, logvar, pixels)
        loss = (l1 + cfg.perceptual_weight * p + cfg.kl_weight * kl).mean()
        logs = {"l1": l1.mean().item(), "perceptual": p.mean().item(), "kl": kl.mean().item()}
        if adversarial:
            g = -D(rec).mean()  # hinge generator loss (Lim & Ye 2017), as the LDM's first stage
            loss = loss + cfg.adv_weight * g
            logs["loss_g"] = g.item()
        logs["loss"] = loss.item()
        return loss, logs

    def d_phase(mb, rng):
        x = mb["x"]
        with torch.no_grad():
            rec = AE(x, rng.randn(cfg.latent_channels, *net.latent_shape[1:]).to(x.device))[0]
        d_real, d_fake = D(torch.cat([x, rec])).chunk(2)  # one forward for DDP
        loss = 0.5 * (F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean())
        return loss, {"loss_d": loss.item(), "d_acc": 0.5 * ((d_real > 0).float().mean() + (d_fake < 0).float().mean()).item()}

    logs = ctx.update("ae", ae_phase)
    if adversarial:
        logs.update(ctx.update("D", d_phase))
    return logs


def _ae(model) -> AutoencoderKL:
    return model["ae"] if isinstance(model, nn.ModuleDict) else model


@torch.no_grad()
def encode(model: FirstStage, x: torch.Tensor) -> torch.Tensor:
    """Posterior means mu (B, c, H/f, W/f) of images (B, C, H, W) in [-1, 1] (deterministic latents)."""
    return _ae(model).encoder(x)[0]


@torch.no_grad()
def encode_sample(model: FirstStage, x: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
    """z ~ q(z | x) = mu + sigma eps, eps from one stream per image."""
    mu, logvar = _ae(model).encoder(x)
    return mu + (0.5 * logvar).exp() * rng.randn_like(mu)


@torch.no_grad()
def decode(model: FirstStage, z: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] from latents (B, c, h, w)."""
    return _ae(model).decoder(z).clamp(-1, 1)


def sample(model: FirstStage, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None):
    raise ValueError("autoencoder-kl is a first stage without a prior; train a latent diffusion model on it "
                     "(genlab train ldm --config configs/ldm-*.yaml model.autoencoder=RUN)")


def report_images(model: FirstStage, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Reconstructions: originals over their reconstructions from the posterior means."""
    x = batch["x"][:10].to(next(model.parameters()).device)
    return {"reconstructions": torch.stack([x, decode(model, encode(model, x))]).cpu()}  # (2, n, C, H, W)
