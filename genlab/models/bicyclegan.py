"""BicycleGAN (Zhu et al. 2017b, "Toward Multimodal Image-to-Image Translation"): one input, many outputs.

A generator G(A, z) maps a source image A (an edge map) and a low-dimensional latent z to an output B (a
coloured garment); an encoder E(B) -> (mu, logvar) maps outputs back to latents. Two cycles tie them together
(the paper's Sec. 3 and Fig. 2; names as in the paper):

  cVAE-GAN  B -> z -> B_hat: z = E(B) reparameterised, B_hat = G(A, z); losses L1^VAE = |B - B_hat|_1, the KL
            of q(z|B) to N(0, I), and L_GAN^VAE, a GAN loss on B_hat.
  cLR-GAN   z -> B_hat -> z: z ~ N(0, I), B_hat = G(A, z), z_hat = mu of E(B_hat); losses L1^latent =
            |z - z_hat|_1 (latent regression) and L_GAN, a GAN loss on B_hat.

  BicycleGAN  both cycles: L_GAN^VAE + lambda L1^VAE + L_GAN + lambda_latent L1^latent + lambda_KL KL. As in
              the reference implementation (github.com/junyanz/BicycleGAN, `backward_G_alone`), the latent
              regression term updates G only (E is held fixed for it).

Ablation rows of the paper's realism/diversity comparison (`model.variant`): `pix2pix+noise` (G(A, z) with a
random z, L1 to the target and a GAN loss: z is free to be ignored), `cvae-gan`, `clr-gan`, `bicyclegan`.

Choices made here (and why):
- z enters G at the input only, broadcast to H x W planes (the reference code's `where_add=input`; its default
  adds z to every layer), through the shared U-Net's `extra_channels`.
- Two discriminators for `bicyclegan` (the reference code's default): D judges the encoded-z outputs, D2 the
  random-z outputs, since the two fakes have different statistics early on (`model.two_discriminators=false`
  makes one D judge both). The other variants have one cycle and one D. D sees the output only, not the edge
  map (the reference code's default; `model.cond_d=true` for a conditional D).
- Every sample takes part in both cycles (the reference code splits each batch in halves): then a batch is the
  same computation whatever its split into micro-batches or processes.
- The KL is summed over latent dimensions and averaged over samples (the reference code also sums over the
  batch), so the loss does not grow with the batch size; lambda_kl keeps the reference's 0.01.
- D trains first, then G and E, with fresh noise per phase (as `gan.py`; the reference updates G/E first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn.translation import PatchDiscriminator, UNetGenerator, check_images
from genlab.rng import SampleRNG

SAMPLERS = ("prior",)  # z ~ N(0, I) per output
SAMPLE_OPTIONS = ("sampler", "batch_size")
EMA_MODULES = ("G",)  # outputs come from G; E and the discriminators are training aids
VARIANTS = ("bicyclegan", "cvae-gan", "clr-gan", "pix2pix+noise")


@dataclass
class Config:
    variant: Literal["bicyclegan", "cvae-gan", "clr-gan", "pix2pix+noise"] = "bicyclegan"  # ablation row, see the docstring
    latent_dim: int = 8  # size of z (8 in the paper); 2-16
    g_channels: int = 32  # U-Net width of the first level; 16-64
    g_depth: int = 2  # U-Net down-sampling levels (32x32 -> 8x8 at 2)
    e_channels: int = 32  # encoder width (conv widths c, 2c, 4c)
    d_channels: int = 32  # PatchGAN width; 16-64
    d_layers: int = 2  # PatchGAN stride-2 layers (receptive field grows with it)
    src_channels: int = 1  # channels of the source images x_src (1: edge maps)
    two_discriminators: bool = True  # bicyclegan: D for encoded-z outputs, D2 for random-z ones; false: one D for both
    cond_d: bool = False  # D also sees the edge map (a conditional D, as pix2pix)
    loss: Literal["lsgan", "nonsaturating"] = "lsgan"  # GAN loss: least squares (the reference code) | -log D
    lambda_l1: float = 10.0  # weight of L1(B, G(A, E(B))) (or, for pix2pix+noise, of L1(B, G(A, z)))
    lambda_kl: float = 0.01  # weight of KL(q(z|B) || N(0, I))
    lambda_z: float = 0.5  # weight of the latent regression L1(z, E(G(A, z)))
    lr: float = 2e-4  # Adam learning rate of every network
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", "x_src")  # x: the target B, x_src: the source A (paired)


def uses_encoded(cfg: Config) -> bool:
    """The cVAE-GAN cycle (B -> z -> B_hat) is on."""
    return cfg.variant in ("bicyclegan", "cvae-gan")


def uses_random(cfg: Config) -> bool:
    """Outputs from a random z are trained (cLR-GAN cycle, or pix2pix+noise)."""
    return cfg.variant in ("bicyclegan", "clr-gan", "pix2pix+noise")


def validate(cfg: Config, spec) -> None:
    if not spec.is_image:
        raise ValueError(f"bicyclegan translates images; '{spec.name}' holds points. Use edges2fmnist-color")
    if cfg.latent_dim < 1:
        raise ValueError(f"model.latent_dim must be >= 1, got {cfg.latent_dim}")
    if min(cfg.lambda_l1, cfg.lambda_kl, cfg.lambda_z) < 0:
        raise ValueError("model.lambda_l1, lambda_kl and lambda_z must be >= 0")


# ----------------------------------------------------------------------------- networks


class Generator(nn.Module):
    """G(A, z): the shared U-Net on the source image with z broadcast to `latent_dim` extra input planes."""

    def __init__(self, cfg: Config, src_channels: int, out_channels: int):
        super().__init__()
        self.net = UNetGenerator(src_channels, out_channels, base=cfg.g_channels, depth=cfg.g_depth,
                                 extra_channels=cfg.latent_dim)

    def forward(self, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(a, z)  # z (B, Z) broadcast to (B, Z, H, W) planes beside A


class Encoder(nn.Module):
    """E(B) -> (mu, logvar), each (B, Z): three stride-2 convs, global average pool, one linear layer."""

    def __init__(self, cfg: Config, in_channels: int):
        super().__init__()
        c = cfg.e_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c, 4, 2, 1), nn.LeakyReLU(0.2),  # H -> H/2
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.2),  # -> H/4
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.LeakyReLU(0.2),  # -> H/8
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * c, 2 * cfg.latent_dim),
        )  # fmt: skip

    def forward(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(b).chunk(2, dim=1)
        return mu, logvar


def frozen_mu(E: Encoder, x: torch.Tensor) -> torch.Tensor:
    """mu of E(x) computed with E's weights detached: gradients reach x (so G) but not E. Called on the
    unwrapped module, so under DDP it is not a second call of E's prepared forward."""
    params = {k: v.detach() for k, v in E.named_parameters()}
    return torch.func.functional_call(E, params, (x,))[0]


class BicycleGAN(nn.ModuleDict):
    """{"G", "E", "D", "D2"} as the variant needs them; each optimised (and prepared for DDP) separately."""

    def __init__(self, cfg: Config, spec):
        validate(cfg, spec)
        c_out, c_src = spec.shape[0], cfg.src_channels
        d_in = c_out + (c_src if cfg.cond_d else 0)
        nets: dict[str, nn.Module] = {"G": Generator(cfg, c_src, c_out)}
        if cfg.variant != "pix2pix+noise":
            nets["E"] = Encoder(cfg, c_out)
        nets["D"] = PatchDiscriminator(d_in, base=cfg.d_channels, n_layers=cfg.d_layers)
        if cfg.variant == "bicyclegan" and cfg.two_discriminators:
            nets["D2"] = PatchDiscriminator(d_in, base=cfg.d_channels, n_layers=cfg.d_layers)
        super().__init__(nets)
        self.cfg, self.spec, self.data_shape, self.src_channels = cfg, spec, list(spec.shape), c_src


def build(cfg: Config, spec, deps) -> BicycleGAN:
    return BicycleGAN(cfg, spec)


def make_optimizers(model: BicycleGAN, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """"D": every discriminator; "G": G and E together (one step of both per iteration, as the paper)."""
    betas = (cfg.beta1, cfg.beta2)
    d_params = [p for k in ("D", "D2") if k in model for p in model[k].parameters()]
    g_params = [p for k in ("G", "E") if k in model for p in model[k].parameters()]
    return {"D": torch.optim.Adam(d_params, lr=cfg.lr, betas=betas),
            "G": torch.optim.Adam(g_params, lr=cfg.lr, betas=betas)}


# ----------------------------------------------------------------------------- objective


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over dimensions: (B, Z) -> (B,) (Kingma & Welling
    2014, Appendix B; BicycleGAN's L_KL). Always >= 0; 0 exactly at mu = 0, logvar = 0."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps (Kingma & Welling 2014): a sample of q(z|B) that gradients flow through."""
    return mu + (0.5 * logvar).exp() * eps


def d_loss(loss: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """D's loss on its patch logits (every patch is one real/fake decision)."""
    if loss == "lsgan":
        return 0.5 * ((d_real - 1) ** 2).mean() + 0.5 * (d_fake**2).mean()
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def g_loss(loss: str, d_fake: torch.Tensor) -> torch.Tensor:
    """G's loss on D's patch logits for its outputs."""
    if loss == "lsgan":
        return 0.5 * ((d_fake - 1) ** 2).mean()
    return F.softplus(-d_fake).mean()


def _d_input(cfg: Config, out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.cat([out, a], dim=1) if cfg.cond_d else out


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One D phase (every discriminator on real vs the variant's fakes), then one G+E phase (the BicycleGAN
    objective, or the variant's terms). Each network is called once per phase, through its own forward."""
    net = ctx.unwrap(model)
    cfg, shape = net.cfg, net.data_shape
    assert list(batch["x"].shape[1:]) == shape, f"batch {tuple(batch['x'].shape)} vs data {shape}"
    assert batch["x_src"].shape[1] == net.src_channels, f"x_src has {batch['x_src'].shape[1]} channels"
    G, D = model["G"], model["D"]
    D2 = model["D2"] if "D2" in net else None
    Z = cfg.latent_dim

    def fakes(a, b, rng, *, train_e: bool):
        """G's outputs for the variant's cycles: ({"enc": B_hat from E(B), "rand": B_hat from z ~ N(0, I)},
        z_rand, mu, logvar); one G forward for both."""
        z_rand = rng.randn(Z).to(a.device) if uses_random(cfg) else None
        mu = logvar = None
        zs, names = [], []
        if uses_encoded(cfg):
            mu, logvar = model["E"](b) if train_e else net["E"](b)
            zs.append(reparameterize(mu, logvar, rng.randn(Z).to(a.device)))
            names.append("enc")
        if z_rand is not None:
            zs.append(z_rand)
            names.append("rand")
        out = G(a.repeat(len(zs), 1, 1, 1), torch.cat(zs))  # (k*B, C, H, W), one forward
        return dict(zip(names, out.chunk(len(zs)))), z_rand, mu, logvar

    def d_phase(mb, rng):  # every D: real B vs the fakes of its cycle (G and E frozen)
        a, b = mb["x_src"], mb["x"]
        with torch.no_grad():
            outs, *_ = fakes(a, b, rng, train_e=False)
        loss, logs = 0.0, {}
        if D2 is not None:  # D: encoded-z outputs, D2: random-z outputs
            pairs = [("D", D, [outs["enc"]]), ("D2", D2, [outs["rand"]])]
        else:  # one D judges every fake (one real copy per fake kind, so real and fake weigh the same)
            pairs = [("D", D, list(outs.values()))]
        for name, disc, fake_list in pairs:
            k = len(fake_list)
            x = torch.cat([_d_input(cfg, b, a)] * k + [_d_input(cfg, f, a) for f in fake_list])
            logits = disc(x)  # one forward: reals then fakes
            d_real, d_fake = logits[: k * len(b)], logits[k * len(b) :]
            l_d = d_loss(cfg.loss, d_real, d_fake)
            loss = loss + l_d
            logs[f"loss_{name.lower()}"] = l_d.item()
        return loss, logs

    def g_phase(mb, rng):  # G and E: fool the discriminators, and close the variant's cycles
        a, b = mb["x_src"], mb["x"]
        outs, z_rand, mu, logvar = fakes(a, b, rng, train_e=True)
        logs: dict[str, float] = {}
        if D2 is not None:
            l_gan = g_loss(cfg.loss, D(_d_input(cfg, outs["enc"], a))) + g_loss(cfg.loss, D2(_d_input(cfg, outs["rand"], a)))
        else:
            fake = torch.cat([_d_input(cfg, f, a) for f in outs.values()])
            l_gan = g_loss(cfg.loss, D(fake)) * len(outs)  # one term per cycle, as with two Ds
        loss = l_gan
        logs["loss_g_gan"] = l_gan.item()
        if uses_encoded(cfg):  # cVAE-GAN: reconstruct B through its own latent, keep q(z|B) near the prior
            l1 = (outs["enc"] - b).abs().mean()
            kl = kl_standard_normal(mu, logvar).mean()
            loss = loss + cfg.lambda_l1 * l1 + cfg.lambda_kl * kl
            logs.update(l1=l1.item(), kl=kl.item())
        if cfg.variant == "pix2pix+noise":  # L1 to the target from a random z: G learns to ignore z
            l1 = (outs["rand"] - b).abs().mean()
            loss = loss + cfg.lambda_l1 * l1
            logs["l1"] = l1.item()
        if cfg.variant in ("bicyclegan", "clr-gan"):  # cLR-GAN: recover z from the output
            if cfg.variant == "bicyclegan":  # E held fixed for this term (reference code): the unwrapped E, detached
                z_hat = frozen_mu(net["E"], outs["rand"])  # weights (and outside DDP's forward)
            else:  # cLR-GAN alone: E learns from the latent regression
                z_hat, _ = model["E"](outs["rand"])
            l_z = (z_hat - z_rand).abs().mean()
            loss = loss + cfg.lambda_z * l_z
            logs["loss_z"] = l_z.item()
        logs["loss_g"] = loss.item()
        return loss, logs

    logs = ctx.update("D", d_phase)
    logs.update(ctx.update("G", g_phase))
    return {"loss": logs["loss_g"] + sum(v for k, v in logs.items() if k in ("loss_d", "loss_d2")), **logs}


# ----------------------------------------------------------------------------- sampling and translation


def _source(model: BicycleGAN, cond: dict | None, n: int) -> torch.Tensor:
    """The source images of `cond` ("x_src", float (n, C_src, H, W) in [-1, 1]), checked."""
    if not cond or cond.get("x_src") is None:
        raise ValueError("bicyclegan translates images: pass the source images as cond={'x_src': (n, 1, H, W) in "
                         "[-1, 1]} (genlab translate RUN INPUT, or evaluation conditions from the test split)")
    a = torch.as_tensor(cond["x_src"])
    check_images(a, (model.src_channels, *model.data_shape[1:]), "source images (x_src)")
    if len(a) != n:
        raise ValueError(f"bicyclegan: {len(a)} source images for {n} outputs")
    return a.float()


@torch.no_grad()
def sample(model: BicycleGAN, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, batch_size: int = 512) -> torch.Tensor:
    """G(A, z), z ~ N(0, I) per sample (its own stream, so results do not depend on batch size); A = cond["x_src"]."""
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for bicyclegan; expected one of: {', '.join(SAMPLERS)}")
    a = _source(model, cond, n)
    device = next(model.parameters()).device
    z = SampleRNG.from_generator(n, generator, device).randn(model.cfg.latent_dim)  # (n, Z)
    G = model["G"]
    was_training = G.training
    G.eval()
    out = torch.cat([G(a[i : i + batch_size].to(device), z[i : i + batch_size]) for i in range(0, n, batch_size)])
    G.train(was_training)
    return out


@torch.no_grad()
def translate(model: BicycleGAN, x_src: torch.Tensor, *, to=None, n_outputs: int = 1,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """K = n_outputs outputs per source image, each from its own z ~ N(0, I): (B, K, C, H, W) in [-1, 1]."""
    if to is not None:
        raise ValueError("bicyclegan has no target domains (--to); it draws --n-outputs K outputs per input")
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    b = len(x_src)
    a = torch.as_tensor(x_src).repeat_interleave(n_outputs, dim=0)  # (B*K, C, H, W): input i's K copies in a row
    out = sample(model, b * n_outputs, cond={"x_src": a}, generator=generator)
    return out.reshape(b, n_outputs, *out.shape[1:])


def eval_conditions(test, n: int) -> dict:
    """Evaluation conditions: the test split's edge maps, in order and cycled, and their garment classes ("y",
    so evaluation reports whether outputs keep the class the edges show)."""
    batch = test.batch(torch.arange(n) % len(test))
    return {"x_src": batch["x_src"], "y": batch["y"]}


def _rgb(x: torch.Tensor, c: int) -> torch.Tensor:
    return x.expand(-1, c, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def report_images(model: BicycleGAN, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Rows of input edge map | 4 outputs from random z | the target (one of the input's real colourings)."""
    a, b = batch["x_src"][:8], batch["x"][:8]
    outs = translate(model, a, n_outputs=4, generator=generator).cpu()  # (n, 4, C, H, W)
    return {"translation": torch.cat([_rgb(a, b.shape[1])[:, None], outs, b[:, None]], dim=1)}  # (n, 6, C, H, W)
