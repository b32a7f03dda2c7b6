"""CycleGAN: unpaired image-to-image translation with cycle consistency (Zhu et al. 2017).

Two generators G: A -> B and F: B -> A and two discriminators D_A (real A vs F(b)) and D_B (real B vs G(a)).
The full objective (Sec. 3, Eq. 3):
  L(G, F, D_A, D_B) = L_GAN(G, D_B) + L_GAN(F, D_A) + lambda L_cyc(G, F)
  L_cyc = E_a ||F(G(a)) - a||_1 + E_b ||G(F(b)) - b||_1          (Eq. 2: forward and backward cycle)
plus, optionally, the identity loss lambda_id lambda (E_b ||G(b) - b||_1 + E_a ||F(a) - a||_1) (Sec. 5.2,
Taesung Park's suggestion after Taigman et al. 2017). Adversarial losses are least squares (Sec. 4, "Training
details", after Mao et al. 2017); D's loss is halved; D trains on a history of 50 generated images
(`genlab.nn.translation.ImagePool`, after Shrivastava et al. 2017).
`losses` picks the rows of the paper's ablation (Table 4): "gan" (GAN alone), "gan+forward" (GAN + forward
cycle a -> G -> F -> a), "gan+backward", "full" (CycleGAN) and "full+identity".

Data: `unpaired:A,B` — a batch mixes images of both domains (`domain` 0 = A, 1 = B). Each image is
translated to the other domain: a gives G(a), judged by D_B, and (forward cycle) F(G(a)); b gives F(b),
judged by D_A, and G(F(b)). Both generators first run on the whole batch and per-image masks pick what counts
(G(x) is the translation of an A image and the identity mapping of a B image), so each network sees every
batch on every process (DDP needs that); the cycle's second pass runs on the rows it is for. Every image's
loss is its own: losses are summed over images and divided by the batch size, which makes gradient
accumulation and several processes exact. Sampling: cond {"x_src": images, "domain": target domain
of each} (or `translate(model, x, to="B")`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from genlab.nn.translation import ImagePool, PatchDiscriminator, ResnetGenerator, check_images

SAMPLERS = ("translate",)
SAMPLE_OPTIONS = ("sampler", "batch_size")
EMA_MODULES = ("G", "F")  # the generators; the discriminators (and their image pools) are not averaged
LOSSES = ("gan", "gan+forward", "gan+backward", "full", "full+identity")


@dataclass
class Config:
    losses: Literal["gan", "gan+forward", "gan+backward", "full", "full+identity"] = "full"  # Table 4 rows
    lambda_cycle: float = 10.0  # lambda of the cycle loss (the paper: 10)
    lambda_identity: float = 0.5  # identity loss weight, relative to lambda_cycle (the paper: 0.5)
    gan_loss: Literal["lsgan", "nonsaturating"] = "lsgan"  # least squares (the paper) | log loss
    base: int = 32  # generators' and discriminators' first width (the paper: 64)
    n_blocks: int = 4  # residual blocks in G and F (the paper: 6 at 128x128, 9 at 256x256)
    n_down: int = 2  # stride-2 downsamplings in G and F (32x32 -> 8x8)
    norm: Literal["instance", "none"] = "instance"  # per-image normalisation in G, F and the Ds (the paper: instance)
    d_layers: int = 1  # PatchGAN depth: receptive field 1: 16x16 (of 32x32), 2: 34 (whole image), 3: 70
    pool_size: int = 50  # image history per discriminator (the paper: 50); 0 disables
    lr_g: float = 2e-4  # Adam learning rate of G and F (the paper: 2e-4)
    lr_d: float = 2e-4  # Adam learning rate of D_A and D_B
    beta1: float = 0.5  # Adam beta1 (the paper: 0.5)
    beta2: float = 0.999  # Adam beta2


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", "domain")


def cycles(cfg: Config) -> tuple[bool, bool]:
    """(forward cycle a -> G -> F -> a, backward cycle b -> F -> G -> b) for the configured row."""
    return cfg.losses in ("gan+forward", "full", "full+identity"), cfg.losses in ("gan+backward", "full", "full+identity")


# ----------------------------------------------------------------------------- networks


class PooledDiscriminator(nn.Module):
    """A PatchGAN D and the history of fakes it trains on (`pool`: buffers only, so it rides in D's state and
    checkpoints; every process holds the same pool, so DDP's buffer broadcast from rank 0 changes nothing)."""

    def __init__(self, cfg: Config, shape):
        super().__init__()
        self.net = PatchDiscriminator(shape[0], cfg.base, cfg.d_layers, norm=cfg.norm)
        self.pool = ImagePool(cfg.pool_size, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CycleGAN(nn.ModuleDict):
    """{"G": A -> B, "F": B -> A, "D_A": real A vs F(b), "D_B": real B vs G(a)}."""

    def __init__(self, cfg: Config, spec):
        if not spec.is_image:
            raise ValueError(f"cyclegan translates images; '{spec.name}' holds {tuple(spec.shape)} points")
        if cfg.losses not in LOSSES:
            raise ValueError(f"unknown model.losses '{cfg.losses}'; expected one of: {', '.join(LOSSES)}")
        if cfg.lambda_cycle < 0 or cfg.lambda_identity < 0 or cfg.pool_size < 0:
            raise ValueError("model.lambda_cycle, model.lambda_identity and model.pool_size must be >= 0")
        c, H, W = spec.shape
        m = 2**cfg.n_down
        if H % m or W % m:
            raise ValueError(f"model.n_down={cfg.n_down} needs an image size divisible by {m}, got {H}x{W}")
        gen = lambda: ResnetGenerator(c, c, cfg.base, cfg.n_blocks, n_down=cfg.n_down, norm=cfg.norm)  # noqa: E731
        super().__init__({"G": gen(), "F": gen(), "D_A": PooledDiscriminator(cfg, spec.shape),
                          "D_B": PooledDiscriminator(cfg, spec.shape)})
        self.cfg, self.spec, self.data_shape = cfg, spec, list(spec.shape)
        self.domains = domain_names(spec.name)


def domain_names(data_name: str) -> list[str]:
    """['sneaker', 'ankle-boot'] for 'unpaired:sneaker,ankle-boot'; ['A', 'B'] otherwise."""
    if data_name.startswith("unpaired:") and data_name.count(",") == 1:
        return data_name.split(":", 1)[1].split(",")
    return ["A", "B"]


def build(cfg: Config, spec, deps) -> CycleGAN:
    return CycleGAN(cfg, spec)


def make_optimizers(model: CycleGAN, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """One optimizer for both generators, one for both discriminators (as the reference implementation)."""
    betas = (cfg.beta1, cfg.beta2)
    return {"G": torch.optim.Adam([*model["G"].parameters(), *model["F"].parameters()], lr=cfg.lr_g, betas=betas),
            "D": torch.optim.Adam([*model["D_A"].parameters(), *model["D_B"].parameters()], lr=cfg.lr_d, betas=betas)}


# ----------------------------------------------------------------------------- objective


def per_image(t: torch.Tensor) -> torch.Tensor:
    """Mean over everything but the batch axis: (B, ...) -> (B,)."""
    return t.flatten(1).mean(1)


def gan_real(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Per-image loss for logits that should say 'real' (D on real data, G on its fakes): (B, 1, h, w) -> (B,)."""
    return per_image((logits - 1) ** 2 if kind == "lsgan" else nn.functional.softplus(-logits))


def gan_fake(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Per-image loss for logits that should say 'fake' (D on generated data): (B, 1, h, w) -> (B,)."""
    return per_image(logits**2 if kind == "lsgan" else nn.functional.softplus(logits))


def cycle_l1(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """Per-image ||rec - x||_1 (mean absolute error over pixels), (B,)."""
    return per_image((rec - x).abs())


def translate_batch(G, F, x: torch.Tensor, is_a: torch.Tensor) -> torch.Tensor:
    """Each image to the other domain: G(a) for A images, F(b) for B images (both nets on the whole batch)."""
    return torch.where(is_a[:, None, None, None], G(x), F(x))


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """The G phase (G and F together), then the pool, then the D phase (D_A and D_B together)."""
    cg = ctx.unwrap(model)
    cfg = cg.cfg
    assert list(batch["x"].shape[1:]) == cg.data_shape, f"batch {tuple(batch['x'].shape)} vs data {cg.data_shape}"
    G, F, D_A, D_B = model["G"], model["F"], model["D_A"], model["D_B"]
    fwd, bwd = cycles(cfg)

    def g_phase(mb, rng):
        x, is_a = mb["x"], mb["domain"] == 0
        a, b = is_a.float(), (~is_a).float()
        G_x, F_x = G(x), F(x)  # A images: G(a) is the translation; B images: G(b) is the identity mapping
        adv = a * gan_real(cfg.gan_loss, D_B(G_x)) + b * gan_real(cfg.gan_loss, D_A(F_x))  # (B,)
        rec = x  # rows without a cycle term keep x (cycle error 0); the others get F(G(a)) or G(F(b))
        ia, ib = is_a.nonzero().squeeze(1), (~is_a).nonzero().squeeze(1)
        if fwd and len(ia):  # the second pass only on the images it is for (G and F already saw the batch)
            rec = rec.index_put((ia,), F(G_x[ia]))
        if bwd and len(ib):
            rec = rec.index_put((ib,), G(F_x[ib]))
        cyc = cycle_l1(x, rec)
        idt = cycle_l1(x, torch.where(is_a[:, None, None, None], F_x, G_x))  # F(a) ~ a, G(b) ~ b
        w_cyc = cfg.lambda_cycle * (a * fwd + b * bwd)
        w_idt = cfg.lambda_cycle * cfg.lambda_identity * (cfg.losses == "full+identity")
        n = len(x)  # sums over images / the micro-batch size: exact under accumulation and across processes
        loss = (adv + w_cyc * cyc + w_idt * idt).sum() / n
        # logs are per-image means over the whole batch (so micro-batch averages equal one big batch's)
        return loss, {"loss_g": loss.item(), "loss_g_adv": adv.sum().item() / n, "cycle_l1": cyc.mean().item(),
                      "identity_l1": idt.mean().item()}

    logs = ctx.update("G", g_phase)

    # the image pools: queried once for this process's whole share of the step (every micro-batch), with
    # each image's own random stream; `gather` lets every process apply every process's pool writes
    x, is_a = ctx.batch["x"], ctx.batch["domain"] == 0
    with torch.no_grad():
        fake = translate_batch(G, F, x, is_a)  # from the updated generators
    gather = ctx.accelerator.gather if ctx.accelerator is not None and ctx.accelerator.num_processes > 1 else None
    from_b = ctx.unwrap(D_B).pool.query(fake, ctx.rng, gather, select=is_a)  # fakes of B (from A images)
    from_a = ctx.unwrap(D_A).pool.query(fake, ctx.rng, gather, select=~is_a)  # fakes of A (from B images)
    ctx.batch = {**ctx.batch, "fake": torch.where(is_a[:, None, None, None], from_b, from_a)}

    def d_phase(mb, rng):
        x, fake, is_a = mb["x"], mb["fake"], mb["domain"] == 0
        # D_A: real A images and fakes of A (from B images); D_B likewise: B rows per D in all, one forward each
        la = D_A(torch.cat([x[is_a], fake[~is_a]]))
        lb = D_B(torch.cat([x[~is_a], fake[is_a]]))
        n_a = int(is_a.sum())
        loss_a = gan_real(cfg.gan_loss, la[:n_a]).sum() + gan_fake(cfg.gan_loss, la[n_a:]).sum()
        loss_b = gan_real(cfg.gan_loss, lb[: len(x) - n_a]).sum() + gan_fake(cfg.gan_loss, lb[len(x) - n_a :]).sum()
        loss = 0.5 * (loss_a + loss_b) / len(x)  # halved (Sec. 4)
        return loss, {"loss_d": loss.item(), "loss_d_a": 0.5 * loss_a.item() / len(x), "loss_d_b": 0.5 * loss_b.item() / len(x)}

    logs.update(ctx.update("D", d_phase))
    return {"loss": logs["loss_g"] + logs["loss_d"], **logs}


# ----------------------------------------------------------------------------- sampling and translation


def target_domain(names: list[str], to) -> int:
    """0 (A) or 1 (B) from a domain index, name ('sneaker'), letter ('A'/'B') or direction ('A->B')."""
    text = str(to).strip()
    if "->" in text:
        text = text.split("->", 1)[1].strip()
    choices = {"0": 0, "1": 1, "a": 0, "b": 1, names[0].lower(): 0, names[1].lower(): 1}
    if text.lower() not in choices:
        raise ValueError(f"unknown domain '{to}' for this CycleGAN; expected one of: {names[0]} (A, 0), "
                         f"{names[1]} (B, 1), or a direction such as A->B")
    return choices[text.lower()]


@torch.no_grad()
def generate(model: CycleGAN, x: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
    """Images x (B, C, H, W) to their target domains `to` (B,): G where to == 1 (B), F where to == 0 (A)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, to = x.to(device), to.to(device)
    out = torch.where((to == 1)[:, None, None, None], model["G"](x), model["F"](x))
    model.train(was_training)
    return out


def translate(model: CycleGAN, x_src: torch.Tensor, *, to=None, n_outputs: int = 1,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """x_src (B, C, H, W) -> (B, 1, C, H, W) in domain `to` (default B: G, A -> B); deterministic."""
    if n_outputs != 1:
        raise ValueError(f"cyclegan is deterministic: one output per input (asked {n_outputs})")
    check_images(x_src, model.data_shape, "input images")
    d = 1 if to is None else target_domain(model.domains, to)
    return generate(model, x_src, torch.full((len(x_src),), d))[:, None]


def sample(model: CycleGAN, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, batch_size: int = 512) -> torch.Tensor:
    """Translations of cond["x_src"] to cond["domain"] (the target domain of each image, or one for all;
    default 1 = B): CycleGAN has no prior to sample from."""
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for cyclegan; expected one of: {', '.join(SAMPLERS)}")
    if not cond or "x_src" not in cond:
        raise ValueError("cyclegan translates images: give cond={'x_src': images, 'domain': target domains}, "
                         "or use `genlab translate`")
    x = cond["x_src"][:n]
    if len(x) != n:
        raise ValueError(f"asked for {n} samples but cond['x_src'] holds {len(x)} images")
    check_images(x, model.data_shape, "cond['x_src']")
    to = torch.as_tensor(cond.get("domain", 1)).long().reshape(-1)  # one target for all, or one per image
    to = to.expand(n) if to.numel() == 1 else to[:n]
    return torch.cat([generate(model, x[i : i + batch_size], to[i : i + batch_size]) for i in range(0, n, batch_size)])


def eval_conditions(test, n: int) -> dict:
    """n test images alternating A, B, A, ... (cycled per domain), each to the other domain, with the target
    domain's class as `y`, so evaluation scores whether outputs look like the target class."""
    dom = test.extra["domain"]
    ia, ib = (dom == 0).nonzero().squeeze(1), (dom == 1).nonzero().squeeze(1)
    k = torch.arange(n)
    idx = torch.where(k % 2 == 0, ia[(k // 2) % len(ia)], ib[(k // 2) % len(ib)])
    batch = test.batch(idx)
    class_of = {0: int(test.y[ia[0]]), 1: int(test.y[ib[0]])}
    to = 1 - batch["domain"]
    return {"x_src": batch["x"], "domain": to, "y": torch.tensor([class_of[int(d)] for d in to])}


def translate_inputs(data, n: int, to) -> dict:
    """For `genlab translate --data`: the first n images of the source domain (the one `to` is not)."""
    d = 1 if to is None else target_domain(domain_names(data.name), to)
    idx = (data.extra["domain"] == 1 - d).nonzero().squeeze(1)[:n]
    return {"x_src": data.batch(idx)["x"], "target": None}


def report_images(model: CycleGAN, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Rows of input | translation | reconstruction (back to the input's domain): up to 4 A and 4 B images
    of the batch (8 of one domain when the batch holds only that one)."""
    dom = batch["domain"]
    ia, ib = (dom == 0).nonzero().squeeze(1), (dom == 1).nonzero().squeeze(1)
    idx = torch.cat([ia[:4], ib[:4]]) if len(ia) and len(ib) else torch.cat([ia, ib])[:8]
    x, d = batch["x"][idx], dom[idx]
    out = generate(model, x, 1 - d).cpu()
    rec = generate(model, out, d).cpu()
    return {"translation": torch.stack([x, out, rec], dim=1)}  # (8, 3, C, H, W)
