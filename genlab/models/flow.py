"""Flow: normalizing flows with an exact log-likelihood, RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018).

An invertible map z = f(y) with a tractable Jacobian gives the density by the change of variables
(Dinh et al. 2017, Eq. 3): log p(y) = log N(f(y); 0, I) + log |det df/dy|, a sum of per-layer terms. Layers:

- affine coupling (Dinh et al. 2017, Sec. 3.3-3.4): y_b = x_b * exp(s(x_a)) + t(x_a), y_a = x_a, where the
  mask choosing a is a spatial checkerboard or half of the channels; log-det = sum of s. s = scale * tanh(.)
  (RealNVP's bounded scale) in both variants, and the conditioner's last layer starts at zero (Kingma &
  Dhariwal 2018, Sec. 3.3), so every coupling starts as the identity;
- actnorm (Kingma & Dhariwal 2018, Sec. 3.1): y = (x + b) * exp(log_s) per channel, initialised from data so
  its outputs have zero mean and unit variance; log-det = H W sum(log_s);
- invertible 1x1 convolution in LU form (Kingma & Dhariwal 2018, Sec. 3.2): W = P L (U + diag(s)), P a fixed
  permutation, L unit lower triangular, U strictly upper triangular; log-det = H W sum log|s|;
- squeeze (each 2x2 patch into 4 channels) and the multi-scale split (Dinh et al. 2017, Sec. 3.6): after each
  level but Glow's last, half of the channels are factored out as latents with a N(0, I) prior.

Variants. `realnvp` (per level): `depth` checkerboard couplings, squeeze, `depth` channel couplings
(alternating halves), split; then `depth` checkerboard couplings at the last scale. `glow` (per level):
squeeze, `depth` steps of [actnorm, 1x1 conv, channel coupling], split (not after the last level). RealNVP's
batch normalisation is replaced by actnorm before every coupling (as Glow did): batch statistics would make a
sample's likelihood depend on its batch. Both use a N(0, I) prior for every factored-out part (not Glow's
learned split prior), and small 3-layer conditioners instead of the papers' ResNets, to train on a CPU.

Sizes: `model.num_scales` squeezes need H and W divisible by 2^num_scales. 28x28 takes 2 levels,
28 -> 14 -> 7 (not 3: 7 is odd); we do not pad to 32, which would add constant pixels to model. 8x8 takes 3.
2-D points (spec.shape (D,)) are (B, D, 1, 1) "images": `point_layers` steps of [actnorm, (glow: an
invertible D x D linear map), coupling with an MLP conditioner], alternating which coordinate is transformed.

Likelihood: images are dequantised, y = dequantize(x, u) with u ~ U[0, 1)^D (`genlab.dequantization`; Theis et
al. 2016, Ho et al. 2019), so the flow's exact continuous density on [-1, 1) gives log P(x) >= E_u log p(y) +
D log(2/256) for the 8-bit image; training minimises its negative in bits per dimension, `log_likelihood`
evaluates it with one u per image. Points: the exact continuous density.

Actnorm's data-dependent initialisation and exact resume: the first `train_step` runs one forward pass over
the step's whole batch (gathered from every process; dequantised at the bins' centres, u = 0.5, so no noise is
drawn) in which each actnorm sets its parameters from its input; a saved `initialized` buffer marks it done,
so a resumed run never initialises again. The result is the same for any number of processes or gradient
accumulation micro-batches, since it always sees the whole global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genlab.dequantization import dequantize, discrete_log_likelihood, undequantize
from genlab.rng import SampleRNG

SAMPLERS = ("prior",)
SAMPLE_OPTIONS = ("sampler", "temperature", "batch_size")
LIKELIHOOD = "exact"  # the flow's density is exact (as a likelihood of 8-bit images: see the module docstring)
RESUMABLE = ("temperature",)  # a sampling default: a resume may change it


@dataclass
class Config:
    variant: Literal["realnvp", "glow"] = "glow"  # realnvp: checkerboard/channel couplings | glow: 1x1 convs
    num_scales: int = 2  # levels (squeezes) L; H and W must be divisible by 2^L: 2 for 28x28, 3 for 8x8 or 32x32
    depth: int = 4  # flow steps per level (realnvp: couplings per mask stage); 2-8 on a CPU, 32 in Glow
    hidden: int = 64  # channels of each coupling's conditioner CNN (images); 32-128 on a CPU, 512 in Glow
    mlp_hidden: int = 64  # hidden width of each coupling's conditioner MLP (2-D points)
    point_layers: int = 8  # flow steps for 2-D points, alternating which coordinate is transformed; 4-16
    lr: float = 1e-3  # Adam learning rate
    temperature: float = 1.0  # default sampling temperature T, z ~ N(0, T^2 I); Glow shows samples at 0.7


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x",)


# ---------------------------------------------------------------------------------------------- layers
# Every layer maps (B, C, H, W) -> ((B, C', H', W'), log|det| (B,)) in `forward` and back in `inverse`.


class ActNorm(nn.Module):
    """y = (x + b) * exp(log_s) per channel (Kingma & Dhariwal 2018, Sec. 3.1); identity until initialised."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.zeros(()))  # 1 once set from data; saved, so a resume keeps it

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set b, log_s so that this input x (B, C, H, W) comes out with zero mean and unit variance per channel."""
        mean = x.mean((0, 2, 3), keepdim=True)
        std = x.std((0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-6)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-std.log())
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return (x + self.bias) * self.log_scale.exp(), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * (-self.log_scale).exp() - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution W = P L (U + diag(sign_s exp(log_s))) (Kingma & Dhariwal 2018, Sec. 3.2)."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]  # a random rotation: log|det W| = 0 at the start
        P, L, U = torch.linalg.lu(w)
        s = U.diagonal()
        self.register_buffer("perm", P)  # fixed
        self.register_buffer("sign_s", s.sign())  # fixed
        self.lower = nn.Parameter(L)  # only the strictly lower part is used
        self.upper = nn.Parameter(U.triu(1))  # only the strictly upper part is used
        self.log_s = nn.Parameter(s.abs().log())

    def weight(self) -> torch.Tensor:
        """W (C, C)."""
        eye = torch.eye(self.log_s.shape[0], device=self.log_s.device)
        L = self.lower.tril(-1) + eye
        U = self.upper.triu(1) + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ L @ U

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.shape[2] * x.shape[3] * self.log_s.sum()
        return F.conv2d(x, self.weight()[:, :, None, None]), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w_inv = torch.linalg.inv(self.weight().double()).to(y.dtype)  # float64: the inverse stays exact to ~1e-7
        return F.conv2d(y, w_inv[:, :, None, None])


def checkerboard(x: torch.Tensor, parity: int) -> torch.Tensor:
    """(1, 1, H, W) mask, 1 where (i + j) % 2 == parity: the positions that condition (Dinh et al. 2017, Fig. 3)."""
    H, W = x.shape[2:]
    ij = torch.arange(H, device=x.device)[:, None] + torch.arange(W, device=x.device)
    return (ij % 2 == parity).to(x.dtype)[None, None]


class AffineCoupling(nn.Module):
    """y_b = x_b * exp(s(x_a)) + t(x_a), y_a = x_a (Dinh et al. 2017, Eq. 4-5 and Sec. 3.4's masks).

    `mask`: "checkerboard" (a = positions with (i + j) % 2 == parity) or "channel" (a = the first half of the
    channels for parity 0, the second half for parity 1). `kernel`: 3 for images, 1 for points (an MLP).
    """

    def __init__(self, channels: int, hidden: int, mask: Literal["checkerboard", "channel"], parity: int, kernel: int):
        super().__init__()
        self.mask, self.parity = mask, parity
        if mask == "checkerboard":
            c_in = c_out = channels
        else:
            half = channels // 2
            c_in, c_out = (half, channels - half) if parity == 0 else (channels - half, half)
        pad = kernel // 2
        # Dinh et al. use deep ResNets here; three layers keep a CPU run short
        self.net = nn.Sequential(nn.Conv2d(c_in, hidden, kernel, padding=pad), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, 2 * c_out, kernel, padding=pad))
        # zero start: the coupling is the identity (Kingma & Dhariwal 2018, Sec. 3.3)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(1, c_out, 1, 1))  # s = scale * tanh(.): bounded, learned range

    def _s_t(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, t = self.net(a).chunk(2, dim=1)
        return self.scale * torch.tanh(raw), t

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_a, x_b) for the channel mask."""
        h = x.shape[1] // 2
        a, b = x[:, :h], x[:, h:]
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b] if self.parity == 0 else [b, a], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask == "checkerboard":
            m = checkerboard(x, self.parity)
            s, t = self._s_t(x * m)
            s, t = s * (1 - m), t * (1 - m)  # the conditioning positions pass unchanged (s = t = 0 there)
            return x * s.exp() + t, s.flatten(1).sum(1)
        a, b = self._halves(x)
        s, t = self._s_t(a)
        return self._join(a, b * s.exp() + t), s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.mask == "checkerboard":
            m = checkerboard(y, self.parity)
            s, t = self._s_t(y * m)  # y * m == x * m: the conditioning positions are unchanged
            return (y - t * (1 - m)) * (-s * (1 - m)).exp()
        a, b = self._halves(y)
        s, t = self._s_t(a)
        return self._join(a, (b - t) * (-s).exp())


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 patch into channels (Dinh et al. 2017, Sec. 3.6); log-det 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, H, W = x.shape
        x = x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B, C, 2, 2, H/2, W/2)
        return x.reshape(B, 4 * C, H // 2, W // 2), x.new_zeros(B)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        B, C4, h, w = y.shape
        y = y.reshape(B, C4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C, h, 2, w, 2)
        return y.reshape(B, C4 // 4, 2 * h, 2 * w)


class Split(nn.Module):
    """Marker: factor out the first half of the channels as latents (Dinh et al. 2017, Sec. 3.6)."""


# ---------------------------------------------------------------------------------------------- network


def _image_layers(cfg: Config, shape: list[int]) -> tuple[list[nn.Module], list[tuple[int, ...]]]:
    """The layer list and the shapes of the latent parts (factored out in order, then the last) for images."""
    c, h, w = shape
    L = cfg.num_scales
    if L < 1 or h % 2**L or w % 2**L:
        fits = max(k for k in range(8) if h % 2**k == 0 and w % 2**k == 0)
        raise ValueError(f"model.num_scales={L} needs height and width divisible by {2**L}, not {h}x{w}; "
                         f"use model.num_scales between 1 and {fits}" if fits else
                         f"{h}x{w} images cannot be squeezed (odd size); a flow needs even height and width")
    if cfg.depth < 1:
        raise ValueError(f"model.depth must be >= 1, got {cfg.depth}")
    layers: list[nn.Module] = []
    z_shapes: list[tuple[int, ...]] = []

    def checkerboard_stage(c):
        return [m for k in range(cfg.depth)
                for m in (ActNorm(c), AffineCoupling(c, cfg.hidden, "checkerboard", k % 2, 3))]

    for level in range(L):
        if cfg.variant == "realnvp":
            layers += checkerboard_stage(c)
        layers.append(Squeeze())
        c, h, w = 4 * c, h // 2, w // 2
        for k in range(cfg.depth):
            if cfg.variant == "glow":
                layers += [ActNorm(c), InvConv1x1(c), AffineCoupling(c, cfg.hidden, "channel", 0, 3)]
            else:
                layers += [ActNorm(c), AffineCoupling(c, cfg.hidden, "channel", k % 2, 3)]
        if cfg.variant == "realnvp" or level < L - 1:
            layers.append(Split())
            z_shapes.append((c // 2, h, w))
            c -= c // 2
    if cfg.variant == "realnvp":
        layers += checkerboard_stage(c)
    return layers, z_shapes + [(c, h, w)]


def _point_layers(cfg: Config, d: int) -> tuple[list[nn.Module], list[tuple[int, ...]]]:
    """Points (B, D) as (B, D, 1, 1): [actnorm, (glow) invertible linear map, MLP coupling] per step."""
    if d < 2:
        raise ValueError(f"a flow on points needs at least 2 coordinates to couple, got shape ({d},)")
    layers: list[nn.Module] = []
    for k in range(cfg.point_layers):
        layers.append(ActNorm(d))
        if cfg.variant == "glow":
            layers.append(InvConv1x1(d))
        layers.append(AffineCoupling(d, cfg.mlp_hidden, "channel", k % 2, 1))
    return layers, [(d, 1, 1)]


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over dimensions, (B, D) -> (B,)."""
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(1)


class Flow(nn.Module):
    """`forward(y) -> log p(y)` (B,) in nats (continuous); `transform(y) -> (z, log|det|)`; `inverse(z) -> y`.

    z is (B, D): the factored-out parts in order, then the last level's output, each flattened.
    """

    def __init__(self, cfg: Config, spec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.data_shape = list(spec.shape)
        if len(self.data_shape) == 3:
            layers, self.z_shapes = _image_layers(cfg, self.data_shape)
        else:
            layers, self.z_shapes = _point_layers(cfg, self.data_shape[0])
        self.layers = nn.ModuleList(layers)

    @property
    def initialized(self) -> bool:
        """Whether the actnorm layers have been set from data (see the module docstring)."""
        return all(bool(m.initialized) for m in self.modules() if isinstance(m, ActNorm))

    def transform(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = f(y) (B, D) and log|det df/dy| (B,)."""
        B = y.shape[0]
        x = y.reshape(B, -1, 1, 1) if y.dim() == 2 else y  # points as (B, D, 1, 1)
        zs, logdet = [], y.new_zeros(B)
        for layer in self.layers:
            if isinstance(layer, Split):
                h = x.shape[1] // 2
                zs.append(x[:, :h].flatten(1))
                x = x[:, h:]
            else:
                x, ld = layer(x)
                logdet = logdet + ld
        zs.append(x.flatten(1))
        return torch.cat(zs, dim=1), logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """y = f^-1(z), (B, D) -> (B, *data_shape)."""
        B = z.shape[0]
        parts = list(z.split([math.prod(s) for s in self.z_shapes], dim=1))
        x = parts.pop().reshape(B, *self.z_shapes[-1])
        for layer in reversed(self.layers):
            if isinstance(layer, Split):
                i = len(parts) - 1  # the part factored out here
                x = torch.cat([parts.pop().reshape(B, *self.z_shapes[i]), x], dim=1)
            else:
                x = layer.inverse(x)
        return x.reshape(B, *self.data_shape)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) = log N(f(y); 0, I) + log|det df/dy| (B,) in nats (Dinh et al. 2017, Eq. 3)."""
        z, logdet = self.transform(y)
        return log_standard_normal(z) + logdet


def build(cfg: Config, spec, deps) -> Flow:
    return Flow(cfg, spec)


def make_optimizers(model: Flow, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(model.parameters(), lr=cfg.lr)}


@torch.no_grad()
def initialize(model: Flow, y: torch.Tensor) -> None:
    """Data-dependent actnorm initialisation (Kingma & Dhariwal 2018, Sec. 3.1): one forward pass over y in which
    each actnorm, in order, sets itself from its own input (so later layers see already normalised inputs)."""
    hooks = [m.register_forward_pre_hook(lambda mod, args: mod.initialize(args[0]))
             for m in model.modules() if isinstance(m, ActNorm)]
    try:
        model.transform(y)
    finally:
        for h in hooks:
            h.remove()


def _images(model: Flow) -> bool:
    return len(model.data_shape) == 3


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One optimizer step on the negative log-likelihood in bits per dimension (of dequantised 8-bit images).

    The first step of an uninitialised flow is the initialisation step instead: its batch sets the actnorm
    layers (see `initialize_from_batch`) and no gradient step is taken.
    """
    flow = ctx.unwrap(model)
    assert list(batch["x"].shape[1:]) == flow.data_shape, f"batch {tuple(batch['x'].shape)} vs data {flow.data_shape}"
    D = math.prod(flow.data_shape)

    def log_p(net, x, rng):
        """log P(x) (B,) in nats: of dequantised images (one u per pixel from the sample's stream), or of points."""
        return discrete_log_likelihood(net(dequantize(x, rng.rand(*x.shape[1:]))), D) if _images(flow) else net(x)

    if not flow.initialized:
        initialize_from_batch(flow, batch["x"], ctx)
        with torch.no_grad():
            return {"loss": (-log_p(flow, batch["x"], ctx.rng).mean() / (D * math.log(2))).item()}

    def loss(mb, rng):
        bpd = -log_p(model, mb["x"], rng).mean() / (D * math.log(2))
        return bpd, {"loss": bpd.item()}

    return ctx.update("model", loss)


def initialize_from_batch(flow: Flow, x: torch.Tensor, ctx) -> None:
    """Actnorm's data-dependent initialisation on a step's batch, the same for any processes or micro-batches.

    1. Gather the whole global batch from every process, so each sets the same values from the same data.
    2. One forward pass over it (images at their bins' centres, u = 0.5: no noise is drawn), in which each
       actnorm sets itself from its input (`initialize`); the EMA network starts from the result.
    No gradient step follows on this batch: there the actnorm and coupling shifts sit exactly at a stationary
    point, so their gradients are round-off, which Adam's first step (about lr * sign(g)) would turn into
    updates that differ between 1 and 2 processes or micro-batch splits. (Kingma & Dhariwal 2018 also set
    actnorm from an initial minibatch before training.)
    """
    if ctx.accelerator is not None and ctx.accelerator.num_processes > 1:
        x = ctx.accelerator.gather(x.contiguous())
    initialize(flow, dequantize(x, 0.5) if _images(flow) else x)
    if ctx.ema is not None:
        ctx.ema.load_state_dict(flow.state_dict())


@torch.no_grad()
def encode(model: Flow, x: torch.Tensor) -> torch.Tensor:
    """z = f(x) (B, D), for images at the centre of each pixel's bin (dequantize with u = 0.5)."""
    return model.transform(dequantize(x, 0.5) if _images(model) else x)[0]


@torch.no_grad()
def decode(model: Flow, z: torch.Tensor) -> torch.Tensor:
    """The exact inverse of `encode`: x = f^-1(z), (B, D) -> (B, *data_shape) (images not clamped)."""
    y = model.inverse(z)
    return undequantize(y, 0.5) if _images(model) else y


@torch.no_grad()
def sample(model: Flow, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, temperature: float | None = None, batch_size: int = 256) -> torch.Tensor:
    """z ~ N(0, T^2 I) per sample, x = f^-1(z) (Kingma & Dhariwal 2018 sample with T < 1 for smoother images).

    T = 0 decodes z = 0, the same image for every seed. Images: the bin each value falls in, in [-1, 1].
    """
    if cond is not None:
        raise ValueError("the flow is unconditional; drop --class")
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for flow; expected one of: {', '.join(SAMPLERS)}")
    T = model.cfg.temperature if temperature is None else float(temperature)
    if not (math.isfinite(T) and T >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {T}")
    device = next(model.parameters()).device
    z = SampleRNG.from_generator(n, generator, device).randn(math.prod(model.data_shape)) * T  # (n, D)
    x = torch.cat([decode(model, z[i : i + batch_size]) for i in range(0, n, batch_size)])
    return x.clamp(-1, 1) if _images(model) else x


@torch.no_grad()
def log_likelihood(model: Flow, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """log P(x) (B,) in nats: for 8-bit images the dequantisation bound log p(dequantize(x, u)) + D log(2/256)
    with one u ~ U[0, 1)^D per image (an unbiased estimate of the bound); for points the exact density."""
    assert list(x.shape[1:]) == model.data_shape, f"batch {tuple(x.shape)} vs data {model.data_shape}"
    if not _images(model):
        return model(x)
    u = SampleRNG.from_generator(x.shape[0], generator, x.device).rand(*x.shape[1:])
    return discrete_log_likelihood(model(dequantize(x, u)), math.prod(model.data_shape))
