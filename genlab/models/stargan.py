"""StarGAN (Choi et al. 2018, "StarGAN: Unified Generative Adversarial Networks for Multi-Domain Image-to-Image
Translation"): one generator for every pair of domains.

G(x, c) translates an image x to a target domain c (one-hot planes beside the image); D has two heads on one
trunk: D_src (real or fake, per patch) and D_cls (the domain, an auxiliary classifier as in AC-GAN).
Objectives (the paper's Sec. 3), for a real x of domain c' and a random target c:

  D:  -L_adv + lambda_cls * L_cls^r,   L_cls^r = E[-log D_cls(c' | x)]          (classify real images correctly)
  G:   L_adv + lambda_cls * L_cls^f + lambda_rec * L_rec,
       L_cls^f = E[-log D_cls(c | G(x, c))]                                      (outputs look like domain c)
       L_rec   = E[|| x - G(G(x, c), c') ||_1]                                   (the cycle back keeps content)

L_adv is WGAN-GP (Gulrajani et al. 2017) with n_critic = 5 D steps per G step, as the paper and its code train;
`model.loss=lsgan` (least squares) or `nonsaturating` with `model.d_steps=1` are cheaper and train faster on a
CPU (the fmnist-color preset uses lsgan). Domains here are the eight colours of `fmnist-color` (`color` batch
key), or the two domains of `unpaired:A,B` (`model.domain_key=domain`, `model.num_domains=2`).

Networks: G is the shared ResNet generator (`genlab.nn.translation.ResnetGenerator`, the CycleGAN/StarGAN
design, instance norm as in the paper's Table 4) with the target's one-hot planes as extra input channels, also
added after the stem's norm (which would otherwise erase constant label planes; see `ResnetGenerator`). D is written here as in the
official code (github.com/yunjey/stargan, model.py): stride-2 4x4 convolutions with LeakyReLU 0.01 and no
normalisation, a 3x3 D_src head and a D_cls head whose kernel covers the whole remaining map. The target
domain of each training sample is drawn uniformly at random from its own noise stream (the official code
permutes the batch's labels; uniform is the same distribution for balanced domains, and it does not depend on
how the batch is split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn.translation import ResnetGenerator, check_images

SAMPLERS = ("translate",)  # deterministic: G(x_src, c)
SAMPLE_OPTIONS = ("sampler", "batch_size")
EMA_MODULES = ("G",)

# fmnist-color's colours, in index order (genlab.data.derived.COLORS; models do not import the data layer)
COLOR_NAMES = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]


@dataclass
class Config:
    domain_key: Literal["color", "domain"] = "color"  # batch key holding each image's domain index
    num_domains: int = 8  # K: 8 colours of fmnist-color (2 for unpaired:A,B)
    domain_names: list[str] = field(default_factory=lambda: list(COLOR_NAMES))  # names `--to` accepts (index = domain)
    g_channels: int = 32  # ResNet generator width (c, 2c, 4c at n_down=2); 16-64
    g_blocks: int = 3  # residual blocks at the bottleneck (6 in the paper at 128x128)
    g_norm: Literal["instance", "none"] = "instance"  # G's norm (instance in the paper's Table 4)
    d_channels: int = 32  # D width of its first conv (doubles per layer); 16-64
    d_layers: int = 3  # stride-2 convs in D (32x32 -> 4x4 at 3)
    loss: Literal["wgan-gp", "lsgan", "nonsaturating"] = "wgan-gp"  # adversarial loss: the paper's | cheaper ones
    gp_weight: float = 10.0  # lambda_gp of the WGAN-GP gradient penalty
    d_steps: int = 5  # D updates per G update (n_critic = 5 in the paper; 1 for lsgan/nonsaturating)
    lambda_cls: float = 1.0  # weight of the domain classification losses
    lambda_rec: float = 10.0  # weight of the reconstruction (cycle) loss
    lr_g: float = 1e-4  # Adam learning rate of G
    lr_d: float = 1e-4  # Adam learning rate of D
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", cfg.domain_key)


def validate(cfg: Config, spec) -> None:
    if not spec.is_image:
        raise ValueError(f"stargan translates images; '{spec.name}' holds points. Use fmnist-color")
    if cfg.num_domains < 2:
        raise ValueError(f"model.num_domains must be >= 2, got {cfg.num_domains}")
    if cfg.domain_names and len(cfg.domain_names) != cfg.num_domains:
        raise ValueError(f"model.domain_names has {len(cfg.domain_names)} names for model.num_domains="
                         f"{cfg.num_domains}; give one name per domain (or domain_names=[] for indices only)")
    known = {"color": len(COLOR_NAMES), "domain": 2}  # fmnist-color / scenes colours; unpaired:A,B domains
    if cfg.domain_key in spec.conditions and cfg.num_domains != known[cfg.domain_key]:
        raise ValueError(f"'{spec.name}' has {known[cfg.domain_key]} {cfg.domain_key} values but model.num_domains="
                         f"{cfg.num_domains}; set model.num_domains={known[cfg.domain_key]} (and model.domain_names)")
    if cfg.d_steps < 1:
        raise ValueError(f"model.d_steps must be >= 1, got {cfg.d_steps}")
    size = min(spec.shape[1:])
    if size % 4 or size >> cfg.d_layers < 1:
        raise ValueError(f"stargan needs an image size divisible by 4 and at least 2**d_layers={2**cfg.d_layers}, "
                         f"got {tuple(spec.shape[1:])}")


# ----------------------------------------------------------------------------- networks


def one_hot(c: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(c.long(), k).float()  # (B, K)


class Generator(nn.Module):
    """G(x, c): the shared ResNet generator with the target domain's one-hot planes as extra channels.

    `forward(x, c, c_back=None)`: with `c_back`, also the reconstruction G(G(x, c), c_back), inside this one
    forward (so under DDP the cycle is a single call of the prepared module).
    """

    def __init__(self, cfg: Config, channels: int):
        super().__init__()
        self.k = cfg.num_domains
        # with instance norm the one-hot planes also enter after the stem's norm (ResnetGenerator.inject): as
        # plain input planes they are constant over H x W, which the norm would remove (tested)
        self.net = ResnetGenerator(channels, channels, base=cfg.g_channels, n_blocks=cfg.g_blocks,
                                   extra_channels=cfg.num_domains, norm=cfg.g_norm)

    def forward(self, x: torch.Tensor, c: torch.Tensor, c_back: torch.Tensor | None = None):
        fake = self.net(x, one_hot(c, self.k))
        if c_back is None:
            return fake
        return fake, self.net(fake, one_hot(c_back, self.k))


class Discriminator(nn.Module):
    """D(x) -> (src logits (B, 1, h, w), domain logits (B, K)): StarGAN's PatchGAN with an auxiliary classifier."""

    def __init__(self, cfg: Config, shape: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c = shape[0], cfg.d_channels
        for _ in range(cfg.d_layers):  # H -> H / 2 each
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.01)]
            c_in, c = c, 2 * c
        self.trunk = nn.Sequential(*layers)
        h = shape[1] >> cfg.d_layers
        self.src = nn.Conv2d(c_in, 1, 3, 1, 1, bias=False)  # D_src: one logit per patch
        self.cls = nn.Conv2d(c_in, cfg.num_domains, h, bias=False)  # D_cls: kernel = the whole h x h map

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.src(h), self.cls(h).flatten(1)


class StarGAN(nn.ModuleDict):
    """{"G": Generator, "D": Discriminator}, each optimised (and prepared for DDP) separately."""

    def __init__(self, cfg: Config, spec):
        validate(cfg, spec)
        shape = list(spec.shape)
        super().__init__({"G": Generator(cfg, shape[0]), "D": Discriminator(cfg, shape)})
        self.cfg, self.spec, self.data_shape = cfg, spec, shape


def build(cfg: Config, spec, deps) -> StarGAN:
    return StarGAN(cfg, spec)


def make_optimizers(model: StarGAN, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.beta1, cfg.beta2)
    return {"D": torch.optim.Adam(model["D"].parameters(), lr=cfg.lr_d, betas=betas),
            "G": torch.optim.Adam(model["G"].parameters(), lr=cfg.lr_g, betas=betas)}


# ----------------------------------------------------------------------------- objective


def adv_d_loss(loss: str, src_real: torch.Tensor, src_fake: torch.Tensor) -> torch.Tensor:
    """-L_adv for D (to minimise), averaged over patches; for wgan-gp the penalty is added by the caller."""
    if loss == "wgan-gp":
        return src_fake.mean() - src_real.mean()
    if loss == "lsgan":
        return 0.5 * ((src_real - 1) ** 2).mean() + 0.5 * (src_fake**2).mean()
    return F.softplus(-src_real).mean() + F.softplus(src_fake).mean()


def adv_g_loss(loss: str, src_fake: torch.Tensor) -> torch.Tensor:
    """L_adv for G (to minimise)."""
    if loss == "wgan-gp":
        return -src_fake.mean()
    if loss == "lsgan":
        return 0.5 * ((src_fake - 1) ** 2).mean()
    return F.softplus(-src_fake).mean()


def cls_loss(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """E[-log D_cls(c | x)] (L_cls^r on real images, L_cls^f on outputs): cross-entropy of D's domain logits."""
    return F.cross_entropy(logits, c.long())


def rec_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """L_rec = E||x - G(G(x, c), c')||_1, averaged over pixels."""
    return (x - x_rec).abs().mean()


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """d_steps D phases (a fresh random target per sample each), then one G phase (Choi et al. 2018, Sec. 3)."""
    net = ctx.unwrap(model)
    cfg, shape = net.cfg, net.data_shape
    assert list(batch["x"].shape[1:]) == shape, f"batch {tuple(batch['x'].shape)} vs data {shape}"
    G, D = model["G"], model["D"]
    K = cfg.num_domains
    if batch[cfg.domain_key].max() >= K:
        raise ValueError(f"the data has {cfg.domain_key} index {int(batch[cfg.domain_key].max())} but "
                         f"model.num_domains={K}; set model.num_domains (and model.domain_names) to match the data")

    def d_phase(mb, rng):
        x, c_org = mb["x"], mb[cfg.domain_key].to(mb["x"].device)
        c_trg = rng.randint(K).to(x.device)  # (B,) a random target domain per sample
        with torch.no_grad():
            fake = G(x, c_trg)
        parts = [x, fake]
        if cfg.loss == "wgan-gp":  # interpolates for the penalty, in the same D forward
            eps = rng.rand(1, 1, 1).to(x.device)
            x_hat = (eps * x + (1 - eps) * fake).requires_grad_(True)
            parts.append(x_hat)
        src, cls = D(torch.cat(parts))  # one forward for DDP
        b = len(x)
        l_adv = adv_d_loss(cfg.loss, src[:b], src[b : 2 * b])
        l_cls = cls_loss(cls[:b], c_org)
        loss = l_adv + cfg.lambda_cls * l_cls
        logs = {"loss_d_adv": l_adv.item(), "loss_d_cls": l_cls.item(),
                "d_cls_acc": (cls[:b].argmax(1) == c_org).float().mean().item()}
        if cfg.loss == "wgan-gp":  # E[(||grad_x D_src(x_hat)||_2 - 1)^2] (Gulrajani et al. 2017, Eq. 3)
            (grad,) = torch.autograd.grad(src[2 * b :].sum(), x_hat, create_graph=True)
            gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            loss = loss + cfg.gp_weight * gp
            logs["gp"] = gp.item()
        logs["loss_d"] = loss.item()
        return loss, logs

    def g_phase(mb, rng):
        x, c_org = mb["x"], mb[cfg.domain_key].to(mb["x"].device)
        c_trg = rng.randint(K).to(x.device)
        fake, x_rec = G(x, c_trg, c_org)  # to the target and back, one forward
        src, cls = D(fake)
        l_adv, l_cls, l_rec = adv_g_loss(cfg.loss, src), cls_loss(cls, c_trg), rec_loss(x, x_rec)
        loss = l_adv + cfg.lambda_cls * l_cls + cfg.lambda_rec * l_rec
        return loss, {"loss_g": loss.item(), "loss_g_adv": l_adv.item(), "loss_g_cls": l_cls.item(),
                      "loss_rec": l_rec.item(), "g_cls_acc": (cls.argmax(1) == c_trg).float().mean().item()}

    for _ in range(cfg.d_steps):
        logs = ctx.update("D", d_phase)
    logs.update(ctx.update("G", g_phase))
    return {"loss": logs["loss_d"] + logs["loss_g"], **logs}


# ----------------------------------------------------------------------------- sampling and translation


def parse_domain(cfg: Config, to) -> int:
    """A target domain from a name (`model.domain_names`, case-insensitive) or an index; ValueError otherwise."""
    names = [n.lower() for n in cfg.domain_names]
    key = str(to).strip().lower()
    if key in names:
        return names.index(key)
    if key.lstrip("-").isdigit() and 0 <= int(key) < cfg.num_domains:
        return int(key)
    choices = ", ".join(cfg.domain_names) + " or " if cfg.domain_names else ""
    raise ValueError(f"unknown domain '{to}'; expected one of: {choices}an index 0-{cfg.num_domains - 1}")


def _targets(cfg: Config, cond: dict, n: int) -> torch.Tensor:
    c = cond.get(cfg.domain_key)
    if c is None:
        raise ValueError(f"stargan needs the target domain of each output: cond={{'x_src': ..., "
                         f"'{cfg.domain_key}': (n,) indices}}")
    c = torch.as_tensor(c, dtype=torch.long).reshape(-1)
    c = c.expand(n) if c.numel() == 1 else c
    if c.numel() != n:
        raise ValueError(f"stargan: {c.numel()} target domains for {n} outputs")
    if c.min() < 0 or c.max() >= cfg.num_domains:
        raise ValueError(f"stargan: target domains must be in 0..{cfg.num_domains - 1}, got {c.min()}..{c.max()}")
    return c


@torch.no_grad()
def sample(model: StarGAN, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, batch_size: int = 512) -> torch.Tensor:
    """G(x_src, c) for cond = {"x_src": (n, C, H, W) in [-1, 1], domain_key: (n,) target domains}; deterministic."""
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for stargan; expected one of: {', '.join(SAMPLERS)}")
    if not cond or cond.get("x_src") is None:
        raise ValueError("stargan translates images: pass cond={'x_src': images (n, C, H, W) in [-1, 1], "
                         f"'{model.cfg.domain_key}': target domains}} (or use genlab translate RUN INPUT --to D)")
    x = torch.as_tensor(cond["x_src"]).float()
    check_images(x, model.data_shape, "source images (x_src)")
    if len(x) != n:
        raise ValueError(f"stargan: {len(x)} source images for {n} outputs")
    c = _targets(model.cfg, cond, n)
    device = next(model.parameters()).device
    G = model["G"]
    was_training = G.training
    G.eval()
    out = torch.cat([G(x[i : i + batch_size].to(device), c[i : i + batch_size].to(device))
                     for i in range(0, n, batch_size)])
    G.train(was_training)
    return out


@torch.no_grad()
def translate(model: StarGAN, x_src: torch.Tensor, *, to=None, n_outputs: int = 1,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """x_src (B, C, H, W) -> (B, 1, C, H, W) in domain `to` (a name or index), or (B, K, C, H, W) in every
    domain when `to` is None."""
    cfg = model.cfg
    if n_outputs != 1:
        raise ValueError("stargan is deterministic: one output per input and target domain (drop --n-outputs; "
                         "leave out --to for one output per domain)")
    x = torch.as_tensor(x_src).float()
    check_images(x, model.data_shape, "input images")
    targets = list(range(cfg.num_domains)) if to is None else [parse_domain(cfg, to)]
    b, k = len(x), len(targets)
    xs = x.repeat_interleave(k, dim=0)  # (B*k, C, H, W): input i's k copies in a row
    c = torch.tensor(targets).repeat(b)
    out = sample(model, b * k, cond={"x_src": xs, cfg.domain_key: c})
    return out.reshape(b, k, *out.shape[1:])


def eval_conditions(test, n: int) -> dict:
    """Evaluation conditions: test images in order (cycled), each sent to a colour other than its own
    (source + 1 + i mod (K - 1), so every other colour is asked for equally), with its garment class ("y":
    the output should keep it) and the target as "color" (so the fmnist-color protocol scores colour accuracy)."""
    key = "color" if "color" in test.extra else "domain"
    batch = test.batch(torch.arange(n) % len(test))
    src = batch[key]
    k = int(test.extra[key].max()) + 1
    target = (src + 1 + torch.arange(n) % (k - 1)) % k
    return {"x_src": batch["x"], key: target, "y": batch["y"]}


@torch.no_grad()
def report_images(model: StarGAN, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Rows of input | its translation to every domain, in domain order (no ground truth exists for them)."""
    x = batch["x"][:8]
    outs = translate(model, x).cpu()  # (n, K, C, H, W)
    return {"translation": torch.cat([x[:, None], outs], dim=1)}  # (n, 1 + K, C, H, W)
