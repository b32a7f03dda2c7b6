"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models").

A DDPM (Ho et al. 2020, Eq. 14) runs in the latent space of a trained, frozen first stage
(`model.autoencoder=RUN`, an autoencoder-kl run; Sec. 3.1-3.2): z_0 = s * E(x), sampled latents are decoded by
D(z_0 / s). The scale s makes the latents unit-variance (Sec. 4.3.2 and Appendix G: "rescale the latent by the
component-wise standard deviation"): it is measured once, from the first training batch (every process's share,
all-reduced), and stored in the checkpoint as the buffer `latent_scale`.

Conditioning (Sec. 3.3), chosen by `model.cond`:
  class   labels through the U-Net's label embedding (fmnist-color: `use_color` conditions on (class, colour));
  text    captions through cross-attention: queries from the noisy latent, keys and values from the frozen text
          encoder's token embeddings (genlab.text), padding tokens masked out;
  layout  boxes + object classes (+ colours) as cross-attention tokens (Sec. 4.3.1's layout-to-image; each token
          a Fourier embedding of its box plus learned class/colour embeddings, and a learned "null" token);
and `model.inpaint=true` adds mask-to-image: the latent of the masked image and the downsampled mask as extra
input channels (Sec. 4.5 and the Stable Diffusion inpainting models); the unmasked pixels are pasted back after
decoding, so they are kept exactly. Classifier-free guidance (Ho & Salimans 2022): conditions are dropped with
probability `p_uncond` in training (label -> "no label", caption -> "", layout -> no objects) and mixed by the
one CFG wrapper (genlab.samplers.guidance) at sampling time; any sampler of genlab.samplers runs on the latents.

Text embeddings are computed here, not in the data pipeline: the family owns its conditioning (captions given at
sampling time -- a prompt, a prompts file, the evaluation captions -- take the same path as training captions),
and the frozen encoder lives outside the model's modules, so it is never in a checkpoint or the EMA.
Embeddings are memoised per caption in this process (MiniLM costs ~20 ms per caption on a CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn import UNet
from genlab.rng import SampleRNG
from genlab.samplers import SAMPLERS as SAMPLER_FNS
from genlab.samplers import (
    VPDenoiser,
    classifier_free_guidance,
    discrete_sigmas,
    karras_sigmas,
    make_alpha_bar,
    q_sample,
    sample_in_chunks,
    v_target,
)

SAMPLERS = tuple(SAMPLER_FNS)  # ddpm, ddim, euler, heun, dpmpp_2m
SAMPLE_OPTIONS = ("sampler", "steps", "eta", "sigmas", "guidance", "callback", "batch_size")
RESUMABLE = ("guidance", "sigmas")
DEPS = ("autoencoder",)  # the first stage, loaded frozen by the loop and stored once under RUN/deps/autoencoder
DEP_FAMILIES = {"autoencoder": ("autoencoder-kl", "vqvae")}  # families with spatial encode/decode
# Condition keys of evaluation samples: whatever of these the test split has. A mode reads its own (class: y,
# color; text: text; layout: boxes, obj_classes, obj_colors) and ignores the rest, which describe the requested
# image for the metrics (scenes: objects, cells and held-out pairs for the object check, captions for CLIP score).
EVAL_KEYS = ("y", "color", "text", "boxes", "obj_classes", "obj_colors", "obj_cells", "heldout")
INPAINT_KEYS = ("x_src", "inpaint_mask")  # image to fill (B, C, H, W) in [-1, 1]; mask (B, 1, H, W), 1 = generate


@dataclass
class Config:
    autoencoder: str = ""  # a trained autoencoder-kl (or vqvae) run directory: the frozen first stage (required)
    cond: Literal["none", "class", "text", "layout"] = "none"  # what the model is conditioned on (see module doc)
    use_color: bool = False  # class: (class, colour) pairs of fmnist-color; layout: object colours of scenes
    num_colors: int = 8  # colour classes of the data (genlab.data.derived.COLORS has 8)
    inpaint: bool = False  # mask-to-image: masked-image latent + mask as extra input channels
    text_encoder: str = "all-minilm-l6-v2"  # frozen text encoder (genlab.text): all-minilm-l6-v2 | tiny | FOLDER
    text_dim: int = 384  # its token width (all-MiniLM-L6-v2: 384); checked when the encoder loads
    layout_dim: int = 128  # width of layout tokens
    p_uncond: float = 0.1  # classifier-free guidance training: drop the condition with this probability (0.1-0.2)
    # U-Net on the latents
    base_channels: int = 64  # width of the first level; 32-128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])  # width multiplier per resolution level
    num_res_blocks: int = 1  # ResBlocks per level; 1-2
    attn_resolutions: list[int] = field(default_factory=lambda: [8, 4])  # latent sizes with self-/cross-attention
    dropout: float = 0.0  # in ResBlocks; 0-0.1
    # diffusion (as the ddpm family)
    schedule: Literal["linear", "cosine"] = "linear"  # linear (Ho et al. 2020) | cosine (Nichol & Dhariwal 2021)
    timesteps: int = 1000  # T
    beta_start: float = 1e-4  # linear schedule's first beta
    beta_end: float = 0.02  # linear schedule's last beta
    prediction: Literal["eps", "v"] = "eps"  # what the network predicts
    lr: float = 2e-4  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    # sampling defaults
    sampler: Literal["ddim", "ddpm", "euler", "heun", "dpmpp_2m"] = "ddim"  # see genlab.samplers
    sample_steps: int = 50  # sampler steps; 10-1000
    eta: float = 0.0  # DDIM stochasticity
    sigmas: Literal["uniform", "karras"] = "uniform"  # sampling grid (see the ddpm family)
    guidance: float = 1.0  # classifier-free guidance scale s (1: conditional, 0: unconditional; needs p_uncond > 0)


def needs(cfg: Config) -> tuple[str, ...]:
    """Batch keys the family trains on (the inpainting masks are drawn here, not read from the data)."""
    if cfg.cond == "class":
        return ("x", "y", "color") if cfg.use_color else ("x", "y")
    if cfg.cond == "text":
        return ("x", "text")
    if cfg.cond == "layout":
        return ("x", "boxes", "obj_classes", "obj_colors") if cfg.use_color else ("x", "boxes", "obj_classes")
    return ("x",)


# ----------------------------------------------------------------------------------------------- networks


def fourier_features(v: torch.Tensor, bands: int = 8) -> torch.Tensor:
    """(..., d) in [0, 1] -> (..., 2 * bands * d): sin and cos of 2^k pi v (Mildenhall et al. 2020, Eq. 4)."""
    freqs = math.pi * 2.0 ** torch.arange(bands, device=v.device, dtype=v.dtype)  # (bands,)
    ang = (v.unsqueeze(-1) * freqs).flatten(-2)  # (..., d * bands)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class LayoutTokens(nn.Module):
    """Boxes (B, K, 4) in [0, 1], classes (B, K) and colours (B, K) (-1 = padding) -> tokens (B, 1 + K, D) and
    their mask (B, 1 + K); token 0 is a learned "null" token, so a layout without objects is still attendable."""

    def __init__(self, num_classes: int, num_colors: int, dim: int, bands: int = 8):
        super().__init__()
        self.bands = bands
        self.box = nn.Sequential(nn.Linear(8 * bands, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.cls = nn.Embedding(num_classes, dim)
        self.color = nn.Embedding(num_colors, dim) if num_colors else None
        self.null = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, boxes: torch.Tensor, classes: torch.Tensor, colors: torch.Tensor | None = None):
        valid = classes >= 0  # (B, K)
        tok = self.box(fourier_features(boxes.clamp(0, 1), self.bands)) + self.cls(classes.clamp(min=0))
        if self.color is not None:
            tok = tok + self.color(colors.clamp(min=0))
        tok = tok * valid.unsqueeze(-1)  # (B, K, D), zero at padding (masked anyway)
        B = boxes.shape[0]
        tokens = torch.cat([self.null.expand(B, 1, -1), tok], dim=1)  # (B, 1 + K, D)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=valid.device), valid], dim=1)
        return tokens, mask


class LDM(nn.Module):
    """The latent denoiser `forward(z_t, t, **cond)` and the frozen first stage (`first_stage`, a dependency)."""

    def __init__(self, cfg: Config, spec, autoencoder):
        super().__init__()
        self.cfg, self.spec, self.data_shape = cfg, spec, list(spec.shape)
        if autoencoder is None:
            raise ValueError("ldm needs a trained first stage: set model.autoencoder=RUN (an autoencoder-kl run; "
                             "genlab train autoencoder-kl --config configs/autoencoder-kl-*.yaml)")
        if list(autoencoder.spec.shape) != self.data_shape:
            raise ValueError(f"model.autoencoder was trained on data of shape {list(autoencoder.spec.shape)} "
                             f"('{autoencoder.spec.name}'), but this data is {self.data_shape} ('{spec.name}'); "
                             "train a first stage on this dataset (and data.image_size)")
        self.first_stage = autoencoder.model  # frozen by the loop: not trained, not in checkpoints or the EMA
        self.__dict__["ae_run"] = autoencoder  # its family's encode/decode (a plain attribute, not state)
        z = autoencoder.family.encode(self.first_stage, torch.zeros(1, *self.data_shape))
        if z.dim() != 4:
            raise ValueError(f"model.autoencoder: the '{autoencoder.family_name}' family encodes to shape "
                             f"{tuple(z.shape[1:])}; latent diffusion needs spatial latents (C, h, w)")
        self.latent_shape = list(z.shape[1:])
        c, h, _ = self.latent_shape
        self.register_buffer("latent_scale", torch.zeros(()))  # s; 0 until measured at the first training step

        self.num_labels = 0
        if cfg.cond == "class":
            if not spec.num_classes:
                raise ValueError(f"model.cond=class needs labelled data; '{spec.name}' has no labels")
            self.num_labels = spec.num_classes * (cfg.num_colors if cfg.use_color else 1)
        context_dim = {"text": cfg.text_dim, "layout": cfg.layout_dim}.get(cfg.cond, 0)
        if cfg.cond == "layout":
            self.layout = LayoutTokens(max(spec.num_classes, 1), cfg.num_colors if cfg.use_color else 0,
                                       cfg.layout_dim)
        if cfg.inpaint:  # (z_t, masked-image latent, mask) -> c channels; starts as the identity on z_t
            self.in_proj = nn.Conv2d(2 * c + 1, c, 1)
            with torch.no_grad():
                self.in_proj.weight.zero_()
                self.in_proj.bias.zero_()
                self.in_proj.weight[:, :c, 0, 0] = torch.eye(c)
        self.unet = UNet(c, h, cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attn_resolutions,
                         cfg.dropout, self.num_labels, context_dim=context_dim)

    @property
    def scale(self) -> float:
        s = float(self.latent_scale)
        return s if s > 0 else 1.0

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, *, y=None, text_emb=None, text_mask=None, boxes=None,
                obj_classes=None, obj_colors=None, concat=None) -> torch.Tensor:
        """z_t (B, c, h, w), t (B,) -> eps or v (B, c, h, w); the keywords of the run's conditioning mode."""
        if self.cfg.inpaint:
            z_t = self.in_proj(torch.cat([z_t, concat], dim=1))
        context = mask = None
        if self.cfg.cond == "text":
            context, mask = text_emb, text_mask  # (B, L, D), (B, L): padding tokens get no attention
        elif self.cfg.cond == "layout":
            context, mask = self.layout(boxes, obj_classes, obj_colors)
        return self.unet(z_t, t, y=y, context=context, context_mask=mask)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents s * E(x) (B, c, h, w) of images in [-1, 1] (posterior means)."""
        return self.ae_run.family.encode(self.first_stage, x) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] from scaled latents."""
        return self.ae_run.family.decode(self.first_stage, z / self.scale).clamp(-1, 1)


# (not named encode/decode: those would make this a family with its own latent space in reports and tools,
# while these are the first stage's, scaled)
@torch.no_grad()
def to_latents(model: LDM, x: torch.Tensor) -> torch.Tensor:
    """Scaled latents s * E(x) (B, c, h, w) of images (B, C, H, W) in [-1, 1]."""
    return model.encode(x)


@torch.no_grad()
def from_latents(model: LDM, z: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] from scaled latents (B, c, h, w)."""
    return model.decode(z)


def build(cfg: Config, spec, deps) -> LDM:
    if cfg.p_uncond < 0 or cfg.p_uncond > 1:
        raise ValueError(f"model.p_uncond must be in [0, 1], got {cfg.p_uncond}")
    return LDM(cfg, spec, deps.get("autoencoder"))


def make_optimizers(model: LDM, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    params = [p for p in model.parameters() if p.requires_grad]  # not the frozen first stage
    return {"model": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)}


@lru_cache(maxsize=8)
def _alpha_bar(schedule: str, T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    return make_alpha_bar(schedule, T, beta_start, beta_end)


def alpha_bar(cfg: Config) -> torch.Tensor:
    return _alpha_bar(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end)


# ------------------------------------------------------------------------------------------- conditions


@lru_cache(maxsize=2)
def text_encoder(name: str):
    """The frozen text encoder, loaded once per process (shared by a model and its EMA copy)."""
    from genlab.text import load_text_encoder

    return load_text_encoder(name)


_CAPTION_CACHE: dict[tuple[str, str], torch.Tensor] = {}  # (encoder, caption) -> valid tokens (L_i, D)


def embed_text(cfg: Config, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings (B, L, D) and mask (B, L) of captions, padded to the longest; memoised per caption."""
    enc = text_encoder(cfg.text_encoder)
    if enc.dim != cfg.text_dim:
        raise ValueError(f"the text encoder {cfg.text_encoder} has {enc.dim}-d tokens, the model model.text_dim="
                         f"{cfg.text_dim}")
    todo = sorted({c for c in captions if (cfg.text_encoder, c) not in _CAPTION_CACHE})
    if todo:
        if len(_CAPTION_CACHE) > 20_000:  # ~50 KB each (MiniLM, 30 tokens)
            _CAPTION_CACHE.clear()
        tokens, mask, _ = enc.encode(todo)
        for c, t, m in zip(todo, tokens, mask):
            _CAPTION_CACHE[(cfg.text_encoder, c)] = t[m].cpu()  # (L_i, D)
    rows = [_CAPTION_CACHE[(cfg.text_encoder, c)] for c in captions]
    L = max(len(r) for r in rows)
    out = torch.zeros(len(rows), L, cfg.text_dim)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)], mask[i, : len(r)] = r, True
    return out.to(device), mask.to(device)


def _pad_tokens(emb: torch.Tensor, mask: torch.Tensor, L: int):
    """Pad (B, L0, D) tokens and their (B, L0) mask with masked-out rows to length L."""
    extra = L - emb.shape[1]
    if extra <= 0:
        return emb, mask
    return F.pad(emb, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def random_masks(rng: SampleRNG, shape: list[int], device) -> torch.Tensor:
    """Training masks (B, 1, H, W), 1 = to generate: the whole image with probability 1/4 (so the model also
    generates from scratch), else one rectangle of 1/4 to 3/4 of each side at a uniform position."""
    _, H, W = shape
    u = rng.rand(5).to(device)  # (B, 5)
    full = u[:, 0] < 0.25
    h, w = (0.25 + 0.5 * u[:, 1]) * H, (0.25 + 0.5 * u[:, 2]) * W
    top, left = u[:, 3] * (H - h), u[:, 4] * (W - w)
    rows = torch.arange(H, device=device).view(1, H, 1) + 0.5
    cols = torch.arange(W, device=device).view(1, 1, W) + 0.5
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))  # (B, H, W)
    return (inside | full.view(-1, 1, 1)).float().unsqueeze(1)


def inpaint_concat(model: LDM, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Extra input channels (B, c + 1, h, w): latent of the masked image, mask max-pooled to the latent size."""
    z = model.encode(image * (1 - mask))  # the region to generate is blanked (0 = mid grey)
    m = F.adaptive_max_pool2d(mask, model.latent_shape[1:])  # a latent cell touching the hole is a hole
    return torch.cat([z, m], dim=1)


def batch_conditions(model: LDM, mb: dict, drop: torch.Tensor | None = None) -> dict:
    """Network keywords for a batch (dataset keys -> y / text_emb, text_mask / boxes, ...); samples where the
    (B,) bool `drop` is True get the "no condition" input (classifier-free guidance training)."""
    cfg = model.cfg
    x = mb["x"]
    B = len(x)
    drop = torch.zeros(B, dtype=torch.bool, device=x.device) if drop is None else drop
    if cfg.cond == "class":
        y = mb["y"] * cfg.num_colors + mb["color"] if cfg.use_color else mb["y"]
        return {"y": torch.where(drop, torch.full_like(y, model.num_labels), y)}
    if cfg.cond == "text":
        captions = ["" if d else c for c, d in zip(mb["text"], drop.tolist())]
        emb, mask = embed_text(cfg, captions, x.device)
        return {"text_emb": emb, "text_mask": mask}
    if cfg.cond == "layout":
        classes = torch.where(drop.view(B, 1), torch.full_like(mb["obj_classes"], -1), mb["obj_classes"])
        out = {"boxes": mb["boxes"], "obj_classes": classes}
        if cfg.use_color:
            out["obj_colors"] = mb["obj_colors"]
        return out
    return {}


@torch.no_grad()
def measure_scale(model: LDM, x: torch.Tensor) -> float:
    """1 / std of the first stage's latents of x, over every process's share (Rombach et al. 2022, App. G)."""
    z = torch.cat([model.ae_run.family.encode(model.first_stage, x[i : i + 256]) for i in range(0, len(x), 256)])
    stats = torch.stack([z.double().sum(), z.double().pow(2).sum(), torch.tensor(z.numel(), dtype=torch.float64)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    mean, n = stats[0] / stats[2], stats[2]
    var = (stats[1] / n - mean**2) * n / (n - 1)
    return float(1 / var.clamp_min(1e-12).sqrt())


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """L_simple (Ho et al. 2020, Eq. 14) on scaled latents z_0 = s E(x) of the frozen first stage."""
    net = ctx.unwrap(model)
    cfg = net.cfg
    assert list(batch["x"].shape[1:]) == net.data_shape, f"batch {tuple(batch['x'].shape)} vs data {net.data_shape}"
    if float(net.latent_scale) == 0:  # first step of a new run: measure s once, from this step's whole batch
        net.latent_scale.fill_(measure_scale(net, batch["x"]))

    def loss(mb, rng):
        x = mb["x"]
        with torch.no_grad():
            z0 = net.encode(x)  # (B, c, h, w), unit variance
        t = rng.randint(cfg.timesteps).squeeze(-1).to(x.device)  # (B,)
        eps = rng.randn_like(z0)
        kw = batch_conditions(net, mb, rng.rand().to(x.device) < cfg.p_uncond)  # label dropout (B,)
        if cfg.inpaint:
            with torch.no_grad():
                kw["concat"] = inpaint_concat(net, x, random_masks(rng, net.data_shape, x.device))
        ab = alpha_bar(cfg).to(x.device)
        z_t = q_sample(z0, t, eps, ab)
        target = eps if cfg.prediction == "eps" else v_target(z0, eps, ab[t])
        value = F.mse_loss(model(z_t, t, **kw).float(), target)
        return value, {"loss": value.item()}

    logs = ctx.update("model", loss)
    logs["latent_scale"] = float(net.latent_scale)
    return logs


# ------------------------------------------------------------------------------------------------ sampling


def _check_boxes(boxes: torch.Tensor, classes: torch.Tensor) -> None:
    valid = classes >= 0
    b = boxes[valid]
    if len(b) and ((b < 0) | (b > 1)).any():
        raise ValueError("a layout box lies outside the canvas: coordinates (x0, y0, x1, y1) must be in [0, 1]")
    if len(b) and ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
        raise ValueError("a layout box is empty: it needs x0 < x1 and y0 < y1")


def sample_conditions(model: LDM, cond: dict | None, n: int) -> dict:
    """The network keywords for n samples from a condition dict, checked; errors name the problem and the fix."""
    cfg = model.cfg
    cond = dict(cond or {})
    device = next(model.parameters()).device
    given = {k for k, v in cond.items() if v is not None}
    required = {"class": ("y",), "text": ("text",), "layout": ("boxes", "obj_classes"), "none": ()}[cfg.cond]
    if "text" in given and any(k not in given for k in required):  # a prompt instead of what the run reads
        what = {"class": "class labels (use --class)", "layout": "layouts (use --layout)"}.get(cfg.cond, "nothing")
        raise ValueError(f"a prompt was given, but this run is conditioned on {what} (model.cond={cfg.cond})")
    if given & set(INPAINT_KEYS) and not cfg.inpaint:
        raise ValueError("--mask/--image need an inpainting run (model.inpaint=true)")
    out: dict = {}
    if cfg.cond == "class":
        if "y" not in given:
            if cfg.p_uncond <= 0:
                raise ValueError("this run is class-conditional: pass --class (or cond={'y': labels})")
            out["y"] = torch.full((n,), model.num_labels, dtype=torch.long)  # the "no label" index
        else:
            y = torch.as_tensor(cond["y"], dtype=torch.long).reshape(-1)
            y = y.expand(n) if y.numel() == 1 else y  # one label for all samples
            if len(y) != n or y.min() < 0 or y.max() >= model.spec.num_classes:
                raise ValueError(f"class labels must be {n} values in 0..{model.spec.num_classes - 1}")
            if cfg.use_color:
                if "color" not in given:
                    raise ValueError("this run conditions on (class, colour) pairs: pass --class N --color NAME "
                                     "(or cond={'y': ..., 'color': ...})")
                col = torch.as_tensor(cond["color"], dtype=torch.long).reshape(-1).expand(n)
                if col.min() < 0 or col.max() >= cfg.num_colors:
                    raise ValueError(f"colour indices must be in 0..{cfg.num_colors - 1}")
                y = y * cfg.num_colors + col
            out["y"] = y
    elif cfg.cond == "text":
        if "text" not in given:
            raise ValueError("this run is text-conditional: pass --prompt TEXT (or cond={'text': [captions]})")
        texts = [cond["text"]] * n if isinstance(cond["text"], str) else list(cond["text"])
        if len(texts) != n:
            raise ValueError(f"got {len(texts)} prompts for {n} samples")
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("a prompt is empty; write what to draw, e.g. --prompt 'a red sneaker at the top left'")
        out["text_emb"], out["text_mask"] = embed_text(cfg, texts, device)
    elif cfg.cond == "layout":
        if "boxes" not in given or "obj_classes" not in given:
            raise ValueError("this run is layout-conditional: pass --layout JSON (or cond={'boxes', 'obj_classes'"
                             f"{', obj_colors' if cfg.use_color else ''}}})")
        boxes = torch.as_tensor(cond["boxes"], dtype=torch.float32)
        classes = torch.as_tensor(cond["obj_classes"], dtype=torch.long)
        if boxes.dim() != 3 or boxes.shape[-1] != 4 or classes.shape != boxes.shape[:2] or len(boxes) != n:
            raise ValueError(f"layout: boxes must be ({n}, K, 4) and obj_classes ({n}, K), got "
                             f"{tuple(boxes.shape)} and {tuple(classes.shape)}")
        if classes.max() >= model.spec.num_classes:
            raise ValueError(f"layout classes must be in 0..{model.spec.num_classes - 1} (-1: no object)")
        _check_boxes(boxes, classes)
        out["boxes"], out["obj_classes"] = boxes, classes
        if cfg.use_color:
            if "obj_colors" not in given:
                raise ValueError("this run conditions on object colours: give each layout object a colour")
            colors = torch.as_tensor(cond["obj_colors"], dtype=torch.long)
            if colors.shape != classes.shape or colors.max() >= cfg.num_colors or (colors[classes >= 0] < 0).any():
                raise ValueError(f"this run conditions on object colours: give each layout object a colour, "
                                 f"({n}, K) values in 0..{cfg.num_colors - 1}")
            out["obj_colors"] = colors
    if cfg.inpaint:
        image, mask = cond.get("x_src"), cond.get("inpaint_mask")
        if (image is None) != (mask is None):
            raise ValueError("inpainting needs both the image (--image) and the mask (--mask)")
        C, H, W = model.data_shape
        if image is None:  # nothing to keep: generate the whole image
            image, mask = torch.zeros(n, C, H, W), torch.ones(n, 1, H, W)
        image, mask = torch.as_tensor(image, dtype=torch.float32), torch.as_tensor(mask, dtype=torch.float32)
        if tuple(image.shape[1:]) != (C, H, W) or len(image) not in (1, n):
            raise ValueError(f"the image to inpaint must be ({C}, {H}, {W}) like the run's data, got {tuple(image.shape[1:])}")
        if tuple(mask.shape[1:]) != (1, H, W) or len(mask) not in (1, n):
            raise ValueError(f"the inpainting mask must be {H}x{W} (one channel) like the run's data, "
                             f"got {tuple(mask.shape[1:])}")
        out["x_src"], out["inpaint_mask"] = image.expand(n, -1, -1, -1), (mask > 0.5).float().expand(n, -1, -1, -1)
    return {k: v.to(device) for k, v in out.items()}


def eval_conditions(test, n: int) -> dict | None:
    """Conditions of n evaluation samples: the test split's (in order, cycled) `EVAL_KEYS`, so the metrics can
    check captions (CLIP score) and objects (scenes) whatever the run is conditioned on."""
    batch = test.batch(torch.arange(n) % len(test))
    return {k: batch[k] for k in EVAL_KEYS if k in batch} or None


def null_conditions(model: LDM, c: dict) -> dict:
    """The "no condition" counterpart of network keywords `c` (same keys and shapes), for guidance."""
    cfg = model.cfg
    if cfg.cond == "class":
        return {"y": torch.full_like(c["y"], model.num_labels)}
    if cfg.cond == "text":
        emb, mask = embed_text(cfg, [""], c["text_emb"].device)
        emb, mask = _pad_tokens(emb, mask, c["text_emb"].shape[1])
        return {"text_emb": emb[:, : c["text_emb"].shape[1]], "text_mask": mask[:, : c["text_emb"].shape[1]]}
    if cfg.cond == "layout":
        return {k: (torch.full_like(v, -1) if k == "obj_classes" else v) for k, v in c.items()}
    return {}


def denoiser(model: LDM, guidance: float, c: dict):
    """D(z, sigma, cond) -> z_0 on the latents (no clipping), with classifier-free guidance when guidance != 1."""
    D = VPDenoiser(model, alpha_bar(model.cfg), model.cfg.prediction)
    if guidance == 1:
        return D
    if model.cfg.cond == "none":
        raise ValueError("guidance needs a conditional run (model.cond=class, text or layout)")
    if model.cfg.p_uncond <= 0:
        raise ValueError("this run was trained without condition dropout (model.p_uncond=0), so its unconditional "
                         "branch is untrained; train with model.p_uncond=0.1 for classifier-free guidance")
    uncond = null_conditions(model, c)
    if "concat" in c:
        uncond["concat"] = c["concat"]  # the image to inpaint is not what guidance amplifies
    return classifier_free_guidance(D, guidance, uncond)


@torch.no_grad()
def sample(
    model: LDM,
    n: int,
    *,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    sigmas: str | None = None,
    guidance: float | None = None,
    callback=None,
    batch_size: int = 256,
) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1]: any sampler on the latents, then the first stage's decoder.

    `cond` by mode: class {"y", "color"}, text {"text": n captions (or one)}, layout {"boxes", "obj_classes",
    "obj_colors"}; inpainting adds {"x_src": images, "inpaint_mask": (n, 1, H, W), 1 = generate} (without
    them the whole image is generated). One noise stream per image (batch-size independent); `guidance` s != 1
    uses classifier-free guidance (s = 1: the conditional model, s = 0: the unconditional one).
    """
    cfg = model.cfg
    sampler = sampler or cfg.sampler
    if sampler not in SAMPLER_FNS:
        raise ValueError(f"unknown sampler '{sampler}' for ldm; expected one of: {', '.join(SAMPLERS)}")
    steps = steps or cfg.sample_steps
    if not 1 <= steps <= cfg.timesteps:
        raise ValueError(f"steps must be in 1..{cfg.timesteps}, got {steps}")
    grid = sigmas or cfg.sigmas
    if grid not in ("uniform", "karras") or (grid == "karras" and steps < 2):
        raise ValueError(f"sigmas must be uniform or karras (karras needs steps >= 2), got {grid} with {steps} steps")
    guidance = cfg.guidance if guidance is None else guidance
    opts = {"eta": cfg.eta if eta is None else eta} if sampler == "ddim" else {}
    c_all = sample_conditions(model, cond, n)
    probe = VPDenoiser(model, alpha_bar(cfg), cfg.prediction)
    sig = (discrete_sigmas(alpha_bar(cfg), steps) if grid == "uniform"
           else karras_sigmas(probe.sigma_min, probe.sigma_max, steps))
    device = next(model.parameters()).device

    def run(z, c, r):
        image, mask = c.pop("x_src", None), c.pop("inpaint_mask", None)
        if cfg.inpaint:
            c["concat"] = inpaint_concat(model, image, mask)
        z = SAMPLER_FNS[sampler](denoiser(model, guidance, c), z, sig, cond=c or None, rng=r, callback=callback,
                                 **opts)
        x = model.decode(z)
        if cfg.inpaint:
            x = mask * x + (1 - mask) * image  # keep the given pixels exactly
        return x.clamp(-1, 1)

    return sample_in_chunks(model, n, model.latent_shape, sig[0], c_all, run, generator=generator, device=device,
                            batch_size=batch_size)


def report_images(model: LDM, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Text runs: samples for the first test captions ("prompts", shown with their captions); inpainting runs:
    rows of test images with a centre hole, the filled-in results and the originals ("inpainting")."""
    cfg = model.cfg
    n = min(8, len(batch["x"]))
    device = next(model.parameters()).device
    cond = {k: batch[k][:n] for k in needs(cfg) if k != "x"}
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    out = {}
    if cfg.cond == "text":
        out["prompts"] = sample(model, n, cond=cond, generator=torch.Generator().manual_seed(seed)).cpu()
    if cfg.inpaint:
        x = batch["x"][:n].to(device)
        _, H, W = model.data_shape
        mask = torch.zeros(n, 1, H, W, device=device)
        mask[:, :, H // 4 : 3 * H // 4, W // 4 : 3 * W // 4] = 1  # the centre quarter of the area
        filled = sample(model, n, cond={**cond, "x_src": x, "inpaint_mask": mask},
                        generator=torch.Generator().manual_seed(seed))
        out["inpainting"] = torch.stack([x * (1 - mask), filled, x]).cpu()  # (3, n, C, H, W)
    return out
