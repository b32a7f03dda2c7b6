"""pix2pix: image-to-image translation with a conditional GAN and an L1 loss (Isola et al. 2017).

G is a U-Net (Sec. 3.2.1) mapping a source image s (`x_src`, e.g. an edge map) to a target x; D is a
PatchGAN (Sec. 3.2.2) that judges patches of the pair (s, x) (conditional) or of x alone (unconditional).
The objective (Eq. 4) is  G* = arg min_G max_D L_cGAN(G, D) + lambda L_L1(G), with
  L_cGAN = E[log D(s, x)] + E[log(1 - D(s, G(s)))]    (Eq. 1; Eq. 2 is the unconditional L_GAN)
  L_L1   = E ||x - G(s)||_1                            (Eq. 3)
`loss` picks the rows of the paper's Table 1 ablation: "l1", "gan" (D without the source), "cgan",
"l1+gan", "l1+cgan" (the paper's model). D's loss is halved, as in the paper's Sec. 3.3 ("we divide the
objective by 2 while optimizing D"); G uses the non-saturating form -log D(s, G(s)).

Noise: the paper gives G noise only as dropout, applied at training and test time (Sec. 3.1). `dropout` > 0
does that here, with per-image masks from the image's random stream, so `sample`/`translate` with a seed give
stochastic but reproducible outputs (which, as the paper notes, vary little).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn.translation import PatchDiscriminator, UNetGenerator, check_images, receptive_field
from genlab.rng import SampleRNG

SAMPLERS = ("translate",)
SAMPLE_OPTIONS = ("sampler", "batch_size")
EMA_MODULES = ("G",)  # D is never sampled from
LOSSES = ("l1", "gan", "cgan", "l1+gan", "l1+cgan")


@dataclass
class Config:
    loss: Literal["l1", "gan", "cgan", "l1+gan", "l1+cgan"] = "l1+cgan"  # Table 1 rows; see the docstring
    lambda_l1: float = 100.0  # weight of the L1 term (the paper: 100)
    gan_loss: Literal["nonsaturating", "lsgan"] = "nonsaturating"  # pix2pix: log loss; lsgan (Mao et al. 2017)
    src_channels: int = 1  # channels of x_src (edge maps: 1)
    base: int = 32  # G's and D's first-layer width (the paper: 64)
    depth: int = 3  # U-Net levels (32x32 -> 4x4 at 3; the paper: 8 levels on 256x256)
    dropout: float = 0.0  # noise as dropout in G's first decoder levels, train and test (the paper: 0.5)
    d_layers: int = 1  # PatchGAN depth: receptive field 0: 1x1 (PixelGAN), 1: 16, 2: 34 (whole 32x32), 3: 70
    lr_g: float = 2e-4  # Adam learning rate of G (the paper: 2e-4)
    lr_d: float = 2e-4  # Adam learning rate of D
    beta1: float = 0.5  # Adam beta1 (the paper: 0.5)
    beta2: float = 0.999  # Adam beta2


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", "x_src")


def uses_gan(cfg: Config) -> bool:
    return cfg.loss != "l1"


def uses_l1(cfg: Config) -> bool:
    return cfg.loss.startswith("l1")


def conditional(cfg: Config) -> bool:
    return cfg.loss.endswith("cgan")


# ----------------------------------------------------------------------------- networks


class Pix2Pix(nn.ModuleDict):
    """{"G": U-Net s -> x, "D": PatchGAN on (s, x) or x} ("G" only for the L1-only row)."""

    def __init__(self, cfg: Config, spec):
        if not spec.is_image:
            raise ValueError(f"pix2pix translates images; '{spec.name}' holds {tuple(spec.shape)} points")
        if cfg.loss not in LOSSES:
            raise ValueError(f"unknown model.loss '{cfg.loss}'; expected one of: {', '.join(LOSSES)}")
        if cfg.lambda_l1 < 0 or cfg.src_channels < 1 or cfg.depth < 1 or cfg.d_layers < 0:
            raise ValueError("model.lambda_l1 must be >= 0, model.src_channels and model.depth >= 1, "
                             "model.d_layers >= 0")
        c = spec.shape[0]
        nets = {"G": UNetGenerator(cfg.src_channels, c, cfg.base, cfg.depth, dropout=cfg.dropout)}
        if uses_gan(cfg):
            d_in = c + (cfg.src_channels if conditional(cfg) else 0)
            nets["D"] = PatchDiscriminator(d_in, cfg.base, cfg.d_layers)
        super().__init__(nets)
        self.cfg, self.spec, self.data_shape = cfg, spec, list(spec.shape)
        self.src_shape = [cfg.src_channels, *spec.shape[1:]]
        self.receptive_field = receptive_field(cfg.d_layers)


def build(cfg: Config, spec, deps) -> Pix2Pix:
    return Pix2Pix(cfg, spec)


def make_optimizers(model: Pix2Pix, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.beta1, cfg.beta2)
    opts = {"G": torch.optim.Adam(model["G"].parameters(), lr=cfg.lr_g, betas=betas)}
    if "D" in model:
        opts = {"D": torch.optim.Adam(model["D"].parameters(), lr=cfg.lr_d, betas=betas), **opts}
    return opts


# ----------------------------------------------------------------------------- objective


def d_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """D's loss on per-patch logits, averaged over patches and images, halved (Sec. 3.3)."""
    if kind == "lsgan":
        return 0.5 * (((d_real - 1) ** 2).mean() + (d_fake**2).mean())  # Mao et al. 2017, halved
    return 0.5 * (F.softplus(-d_real).mean() + F.softplus(d_fake).mean())  # -log D(real) - log(1 - D(fake))


def g_gan_loss(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    """G's adversarial loss on D's per-patch logits for its outputs: -log D(s, G(s)) (non-saturating)."""
    if kind == "lsgan":
        return ((d_fake - 1) ** 2).mean()
    return F.softplus(-d_fake).mean()


def d_input(cfg: Config, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What D sees: the pair (s, x) stacked on channels for the cGAN, x alone for the unconditional GAN."""
    return torch.cat([s, x], dim=1) if conditional(cfg) else x


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """A D phase on (real pair, fake pair), then a G phase on the adversarial + L1 loss (Sec. 3.3)."""
    p2p = ctx.unwrap(model)
    cfg = p2p.cfg
    assert list(batch["x"].shape[1:]) == p2p.data_shape, f"batch {tuple(batch['x'].shape)} vs data {p2p.data_shape}"
    assert list(batch["x_src"].shape[1:]) == p2p.src_shape, \
        f"x_src {tuple(batch['x_src'].shape)} vs {p2p.src_shape}: set model.src_channels"
    G = model["G"]

    def d_phase(mb, rng):  # D: real pairs vs pairs with G's output (G frozen)
        s, x = mb["x_src"], mb["x"]
        with torch.no_grad():
            fake = G(s, noise=rng)
        logits = model["D"](torch.cat([d_input(cfg, s, x), d_input(cfg, s, fake)]))  # one forward for DDP
        d_real, d_fake = logits.chunk(2)
        loss_d = d_loss(cfg.gan_loss, d_real, d_fake)
        return loss_d, {"loss_d": loss_d.item(), "d_real": torch.sigmoid(d_real).mean().item(),
                        "d_fake": torch.sigmoid(d_fake).mean().item()}

    def g_phase(mb, rng):  # G: fool D and stay near the target in L1
        s, x = mb["x_src"], mb["x"]
        fake = G(s, noise=rng)
        l1 = (fake - x).abs().mean()
        logs = {"l1": l1.item()}
        loss_g = cfg.lambda_l1 * l1 if uses_l1(cfg) else torch.zeros((), device=x.device)
        if uses_gan(cfg):
            gan = g_gan_loss(cfg.gan_loss, model["D"](d_input(cfg, s, fake)))
            loss_g = loss_g + gan
            logs["loss_g_gan"] = gan.item()
        logs["loss_g"] = loss_g.item()
        return loss_g, logs

    logs = ctx.update("D", d_phase) if uses_gan(cfg) else {}
    logs.update(ctx.update("G", g_phase))
    return {"loss": logs.get("loss_d", 0.0) + logs["loss_g"], **logs}


# ----------------------------------------------------------------------------- sampling and translation


@torch.no_grad()
def generate(model: Pix2Pix, s: torch.Tensor, rng: SampleRNG | None) -> torch.Tensor:
    """G(s) in eval mode; `rng` (one stream per image) draws the dropout masks when model.dropout > 0."""
    G = model["G"]
    was_training = G.training
    G.eval()
    out = G(s.to(next(model.parameters()).device), noise=rng if model.cfg.dropout > 0 else None)
    G.train(was_training)
    return out


def translate(model: Pix2Pix, x_src: torch.Tensor, *, to=None, n_outputs: int = 1,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """G(s) for source images (B, C', H, W) in [-1, 1] -> (B, n_outputs, C, H, W); several outputs need dropout."""
    if to is not None:
        raise ValueError("pix2pix translates in one direction (x_src -> x): --to does not apply")
    if n_outputs < 1 or (n_outputs > 1 and model.cfg.dropout == 0):
        raise ValueError(f"pix2pix without dropout is deterministic: one output per input (asked {n_outputs}); "
                         "train with model.dropout=0.5 for noise-as-dropout outputs")
    check_images(x_src, model.src_shape, "source images")
    B = x_src.shape[0]
    rng = SampleRNG.from_generator(B * n_outputs, generator, next(model.parameters()).device)
    out = generate(model, x_src.repeat_interleave(n_outputs, 0), rng)  # (B * K, C, H, W), one input's K together
    return out.reshape(B, n_outputs, *out.shape[1:])


def sample(model: Pix2Pix, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, batch_size: int = 512) -> torch.Tensor:
    """Translations of cond["x_src"] (n source images): pix2pix has no prior to sample from."""
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for pix2pix; expected one of: {', '.join(SAMPLERS)}")
    if not cond or "x_src" not in cond:
        raise ValueError("pix2pix translates images: give cond={'x_src': source images}, or use `genlab translate`")
    s = cond["x_src"][:n]
    if len(s) != n:
        raise ValueError(f"asked for {n} samples but cond['x_src'] holds {len(s)} source images")
    check_images(s, model.src_shape, "cond['x_src']")
    rng = SampleRNG.from_generator(n, generator, next(model.parameters()).device)
    return torch.cat([generate(model, s[i : i + batch_size], rng.split(i, min(n, i + batch_size)))
                      for i in range(0, n, batch_size)])


def eval_conditions(test, n: int) -> dict:
    """The first n test sources (cycled), with their class as `y` (so evaluation scores class accuracy of
    the outputs against the input's class: the analogue of the paper's FCN score, Sec. 4.2)."""
    batch = test.batch(torch.arange(n) % len(test))
    return {"x_src": batch["x_src"], "y": batch["y"]}


def report_images(model: Pix2Pix, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Rows of source | output | target for 8 test pairs."""
    s, x = batch["x_src"][:8], batch["x"][:8]
    out = translate(model, s, generator=generator)[:, 0].cpu()
    if s.shape[1] != x.shape[1]:
        s = s.expand(-1, x.shape[1], -1, -1)  # a grey source beside RGB outputs
    return {"translation": torch.stack([s, out, x], dim=1)}  # (8, 3, C, H, W)
