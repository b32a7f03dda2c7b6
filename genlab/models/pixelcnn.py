"""PixelCNN: an autoregressive model of discrete values, the gated PixelCNN of van den Oord et al. 2016,
"Conditional Image Generation with PixelCNN Decoders" (two stacks, gated units, class conditioning).

The joint distribution is factorised in raster order, p(x) = prod_i p(x_i | x_<i) (van den Oord et al. 2016,
"Pixel Recurrent Neural Networks", Eq. 1), each factor a softmax over the K values a variable can take:

- **pixels** (images): the 256 levels of every 8-bit sub-pixel, K = 256. Colour images are ordered R, G, B
  within a pixel (ibid. Eq. 2): the feature maps are split into one group per colour, and the current pixel's
  taps are masked so that group g sees only groups < g of the input (mask A, first layer) or <= g (mask B,
  later layers). `log_likelihood` is the exact discrete likelihood of the 8-bit image, in nats.
- **codes** (`model.vqvae=RUN`): the (h, w) grid of code indices of a trained VQ-VAE, K = its codebook size:
  the prior of van den Oord et al. 2017 ("Neural Discrete Representation Learning", Sec. 3.2; also Razavi et
  al. 2019, VQ-VAE-2). Codes come from the frozen VQ-VAE inside `train_step`; samples are code grids drawn
  autoregressively, then decoded (two-stage sampling).
- **points** (2-D toys): each coordinate quantised into `point_bins` bins over [-point_range, point_range], a
  1 x D grid of tokens; within a bin the density is uniform, so `log_likelihood` is an exact continuous
  density (piecewise constant), and samples are uniform inside their sampled bins.

Network (van den Oord et al. 2016, Sec. 2.1-2.3 and Fig. 2): a *vertical* stack whose output at row i sees the
rows <= i (a (k//2 + 1) x k convolution padded at the top), fed to the *horizontal* stack shifted down by one
row, so the horizontal stack at (i, j) sees every row above (within the receptive field) plus the pixels left
of j in row i (a 1 x (k//2 + 1) convolution padded at the left): no blind spot. Each layer applies the gated
unit y = tanh(W_f * x + V_f h) . sigmoid(W_g * x + V_g h) (Eq. 4; h a learned class embedding when
`class_cond`); the horizontal stack is residual. A masked 1x1 head gives C x K logits per position.

Sampling draws one variable per network evaluation: H * W * C evaluations of the network for an (C, H, W)
image (784 for Fashion-MNIST; 49 for a 7 x 7 code grid, plus one decoder pass; 2 for a point). The row being
drawn and the rows above it within the receptive field are all the network needs, so each evaluation runs on
those rows only (`row_logits`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.models.labels import class_labels
from genlab.progress import bar
from genlab.rng import SampleRNG

SAMPLERS = ("ancestral",)
SAMPLE_OPTIONS = ("sampler", "temperature", "batch_size", "progress")
DEPS = ("vqvae",)  # config fields naming runs this family is built on (loaded frozen by the loop)
DEP_FAMILIES = {"vqvae": ("vqvae",)}  # the code prior needs encode_to_indices / decode_indices
RESUMABLE = ("temperature",)  # a sampling default: a resume may change it
# What `log_likelihood` returns: the exact log-likelihood (pixels: of the 8-bit image; points: the piecewise-
# constant density). A code prior (model.vqvae set) has no likelihood of images and raises instead: the
# VQ-VAE's decoder is deterministic, so log P(codes) is neither P(x) nor a bound on it (see log_likelihood).
LIKELIHOOD = "exact"


@dataclass
class Config:
    class_cond: bool = False  # condition on class labels (needs labelled data; sample with --class)
    channels: int = 64  # feature maps per stack (p in the paper); 16-128; a multiple of C for colour images
    layers: int = 8  # gated layers after the first; the receptive field grows by k//2 per layer
    kernel: int = 5  # k, odd >= 3: vertical (k//2 + 1) x k, horizontal 1 x (k//2 + 1) convolutions
    embed_dim: int = 32  # input embedding of discrete tokens (VQ-VAE codes, point bins); images feed pixels
    point_bins: int = 64  # 2-D points: bins per coordinate
    point_range: float = 4.5  # 2-D points: bins cover [-point_range, point_range]; points outside: edge bins
    vqvae: str = ""  # a trained vqvae run directory: model its code indices, decode samples; "" = the data
    lr: float = 1e-3  # Adam learning rate; 3e-4 - 1e-3
    temperature: float = 1.0  # sampling: softmax(logits / temperature); < 1 sharpens, 1 is the model


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", "y") if cfg.class_cond else ("x",)


# ------------------------------------------------------------------------------------------------ layers


def channel_groups(n: int, colours: int) -> torch.Tensor:
    """Colour group of each of n channels, in contiguous blocks: (0, .., 0, 1, .., 1, 2, .., 2) for RGB."""
    return torch.arange(n) * colours // n


class CausalConv(nn.Conv2d):
    """A convolution with explicit (left, right, top, bottom) zero padding and an optional fixed 0/1 mask."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], pad: tuple[int, int, int, int],
                 mask: torch.Tensor | None = None):
        super().__init__(cin, cout, kernel)
        self.pad = pad
        # a constant of the architecture, rebuilt from the config: not saved in checkpoints
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.mask is None else self.weight * self.mask
        return F.conv2d(F.pad(x, self.pad), w, self.bias)


def vertical_conv(cin: int, cout: int, k: int) -> CausalConv:
    """(k//2 + 1) x k taps on the rows above and the current row: output row i sees input rows <= i."""
    return CausalConv(cin, cout, (k // 2 + 1, k), (k // 2, k // 2, k // 2, 0))


def horizontal_conv(cin: int, cout: int, k: int, groups_in: torch.Tensor, groups_out: torch.Tensor,
                    mask: str) -> CausalConv:
    """1 x (k//2 + 1) taps on the pixels left of the current one and the current one (k = 1: a 1x1 conv).

    The current pixel's tap is masked by colour group (van den Oord et al. 2016, "Pixel Recurrent Neural
    Networks", Sec. 3.4): mask "A" connects output group g to input groups < g, mask "B" to groups <= g.
    """
    w = k // 2 + 1
    m = torch.ones(cout, cin, 1, w)
    g_out, g_in = groups_out[:, None], groups_in[None, :]
    m[:, :, 0, -1] = (g_in < g_out) if mask == "A" else (g_in <= g_out)
    return CausalConv(cin, cout, (1, w), (k // 2, 0, 0, 0), m)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (zeros in row 0): the vertical stack's row i-1 becomes the input at row i."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def gate(a: torch.Tensor) -> torch.Tensor:
    """The gated activation tanh(f) * sigmoid(g) of the two halves of a (van den Oord et al. 2016, Eq. 4)."""
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedBlock(nn.Module):
    """One gated layer of both stacks (van den Oord et al. 2016, Fig. 2), with an optional class bias."""

    def __init__(self, n: int, k: int, groups: torch.Tensor, num_classes: int):
        super().__init__()
        g2 = torch.cat([groups, groups])  # the tanh half and the sigmoid half keep the colour groups
        self.v_conv = vertical_conv(n, 2 * n, k)
        self.h_conv = horizontal_conv(n, 2 * n, k, groups, g2, "B")
        # the vertical stack enters the horizontal one shifted down, so it carries rows < i only: no mask
        self.v_to_h = nn.Conv2d(2 * n, 2 * n, 1)
        self.h_out = horizontal_conv(n, n, 1, groups, groups, "B")
        self.cond = nn.Embedding(num_classes, 4 * n) if num_classes else None  # V h of Eq. 4, both stacks

    def forward(self, v: torch.Tensor, h: torch.Tensor, y: torch.Tensor | None):
        v_pre = self.v_conv(v)  # (B, 2n, H, W)
        h_pre = self.h_conv(h) + self.v_to_h(down_shift(v_pre))  # (B, 2n, H, W)
        if self.cond is not None:
            c_v, c_h = self.cond(y)[:, :, None, None].chunk(2, dim=1)  # (B, 2n, 1, 1) each
            v_pre, h_pre = v_pre + c_v, h_pre + c_h
        return gate(v_pre), h + self.h_out(gate(h_pre))


class GatedPixelCNN(nn.Module):
    """`forward(inp (B, c_in, H, W), y) -> logits (B, K, C, H, W)` for C variables of K values per position."""

    def __init__(self, in_channels: int, in_groups: torch.Tensor, colours: int, levels: int, n: int, layers: int,
                 k: int, num_classes: int):
        super().__init__()
        self.colours, self.levels = colours, levels
        groups = channel_groups(n, colours)
        self.v_in = vertical_conv(in_channels, n, k)
        self.h_in = horizontal_conv(in_channels, n, k, in_groups, groups, "A")
        self.blocks = nn.ModuleList(GatedBlock(n, k, groups, num_classes) for _ in range(layers))
        out_groups = channel_groups(colours * levels, colours)  # logits of colour c: channels c*K .. c*K + K-1
        self.head = nn.Sequential(
            nn.ReLU(), horizontal_conv(n, n, 1, groups, groups, "B"),
            nn.ReLU(), horizontal_conv(n, colours * levels, 1, groups, out_groups, "B"),
        )  # fmt: skip

    def forward(self, inp: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        v, h = self.v_in(inp), self.h_in(inp)
        for block in self.blocks:
            v, h = block(v, h, y)
        out = self.head(h)  # (B, C*K, H, W), channel c*K + value
        B, _, H, W = out.shape
        return out.reshape(B, self.colours, self.levels, H, W).transpose(1, 2)  # (B, K, C, H, W)


# ------------------------------------------------------------------------------------------------- model


class PixelCNN(nn.Module):
    """`forward(v, y=None) -> logits (B, K, C, H, W)` for discrete variables v (B, C, H, W) (see `variables`).

    `mode` is "pixels" (K = 256 levels, C colour channels), "codes" (a frozen VQ-VAE's code grid, C = 1,
    K = codebook size; the VQ-VAE is the submodule `vqvae`, a dependency kept out of checkpoints) or
    "points" (a 1 x D grid of coordinate bins, C = 1, K = point_bins).
    """

    def __init__(self, cfg: Config, spec, vqvae=None):
        super().__init__()
        if cfg.kernel < 3 or cfg.kernel % 2 == 0:
            raise ValueError(f"model.kernel must be odd and >= 3, got {cfg.kernel}")
        if cfg.layers < 1:
            raise ValueError(f"model.layers must be >= 1 (the vertical stack reaches the rows above through "
                             f"the gated layers), got {cfg.layers}")
        self.cfg, self.spec = cfg, spec
        self.data_shape = list(spec.shape)
        self.num_classes = spec.num_classes if cfg.class_cond else 0
        # the VQ-VAE family's encode_to_indices / decode_indices (plain functions: not state, and copied as
        # references when the loop deep-copies the model for its EMA; a module attribute could not be)
        self.encode_to_indices = self.decode_indices = None
        self.code_shape: list[int] = []  # encode_to_indices' shape per sample: [h, w] (images) or [] (points)
        if vqvae is not None:
            self.mode = "codes"
            self._attach_vqvae(vqvae)
        elif spec.is_image:
            self.mode = "pixels"
            C, H, W = self.data_shape
            self.grid, self.levels = [C, H, W], 256
        else:
            self.mode = "points"
            if len(self.data_shape) != 1:
                raise ValueError(f"pixelcnn models images (C, H, W) or points (D,), not data of shape "
                                 f"{self.data_shape}")
            if cfg.point_bins < 2 or not cfg.point_range > 0:
                raise ValueError(f"model.point_bins must be >= 2 and model.point_range > 0, got "
                                 f"{cfg.point_bins} and {cfg.point_range}")
            self.grid, self.levels = [1, 1, self.data_shape[0]], cfg.point_bins
        C = self.grid[0]
        if cfg.channels < C or cfg.channels % C:
            raise ValueError(f"model.channels must be a multiple of the {C} colour channels (one group of feature "
                             f"maps per colour), got {cfg.channels}")
        if self.mode == "pixels":
            self.embed, in_channels, in_groups = None, C, torch.arange(C)
        else:
            self.embed = nn.Embedding(self.levels, cfg.embed_dim)
            in_channels, in_groups = cfg.embed_dim, torch.zeros(cfg.embed_dim, dtype=torch.long)
        self.net = GatedPixelCNN(in_channels, in_groups, C, self.levels, cfg.channels, cfg.layers, cfg.kernel,
                                 self.num_classes)

    def _attach_vqvae(self, run) -> None:
        """A trained VQ-VAE run, loaded frozen by the loop (`deps["vqvae"]`): a submodule that the loop keeps out
        of checkpoints (the run stores it once, under RUN/deps/vqvae)."""
        if list(run.spec.shape) != self.data_shape:
            raise ValueError(f"model.vqvae={run.dir} was trained on data of shape {list(run.spec.shape)}, "
                             f"not {self.data_shape} (train the VQ-VAE on this dataset first)")
        self.vqvae = run.model
        self.encode_to_indices, self.decode_indices = run.family.encode_to_indices, run.family.decode_indices
        idx = self.encode_to_indices(self.vqvae, torch.zeros(1, *self.data_shape))
        self.code_shape = list(idx.shape[1:])  # [h, w], or [] for a VQ-VAE of points (one code each)
        h, w = self.code_shape if self.code_shape else (1, 1)
        self.grid, self.levels = [1, h, w], run.model.cfg.codebook_size

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode == "codes":
            self.vqvae.eval()  # a frozen dependency stays in inference mode
        return self

    def forward(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        C, H, W = self.grid  # sampling passes the rows drawn so far: h <= H
        assert v.dim() == 4 and v.shape[1] == C and v.shape[2] <= H and v.shape[3] == W, \
            f"variables {tuple(v.shape)} vs {self.grid}"
        if self.embed is None:
            inp = v.float() / 127.5 - 1.0  # the levels as pixel values in [-1, 1] (as genlab.data.to_float)
        else:
            inp = self.embed(v[:, 0]).permute(0, 3, 1, 2)  # (B, E, H, W)
        return self.net(inp, y)


def build(cfg: Config, spec, deps) -> PixelCNN:
    return PixelCNN(cfg, spec, deps.get("vqvae"))


def make_optimizers(model: PixelCNN, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(model.parameters(), lr=cfg.lr)}


# ------------------------------------------------------------------------------------- data <-> variables


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """8-bit levels 0..255 (int64) of images in [-1, 1]: the inverse of genlab.data.to_float, x = v / 127.5 - 1."""
    return ((x + 1.0) * 127.5).round().clamp(0, 255).long()


def point_bin_width(cfg: Config) -> float:
    return 2 * cfg.point_range / cfg.point_bins


@torch.no_grad()
def variables(model: PixelCNN, x: torch.Tensor) -> torch.Tensor:
    """The discrete variables the model factorises, int64 (B, C, H, W), from data x (B, ...).

    Pixels: the 8-bit levels. Codes: the frozen VQ-VAE's code indices of x (B, 1, h, w). Points: the bin of
    each coordinate (B, 1, 1, D); points outside [-point_range, point_range] fall in the edge bins.
    """
    assert list(x.shape[1:]) == model.data_shape, f"batch {tuple(x.shape)} vs data {model.data_shape}"
    B = x.shape[0]
    if model.mode == "pixels":
        return to_levels(x)
    if model.mode == "codes":
        return model.encode_to_indices(model.vqvae, x).reshape(B, *model.grid)  # (B, 1, h, w)
    cfg = model.cfg
    bins = ((x + cfg.point_range) / point_bin_width(cfg)).floor().clamp(0, cfg.point_bins - 1).long()
    return bins.reshape(B, *model.grid)  # (B, 1, 1, D)


def log_prob(model: PixelCNN, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Exact log P(v | y) (B,) in nats of discrete variables v (B, C, H, W): the sum of their log-softmax values.

    A class-conditional model without labels gives the marginal log (1/K) sum_y P(v | y) under a uniform class
    prior (K network passes).
    """
    if model.num_classes and y is None:
        B, K = v.shape[0], model.num_classes
        per_class = [log_prob(model, v, torch.full((B,), c, dtype=torch.long, device=v.device)) for c in range(K)]
        return torch.logsumexp(torch.stack(per_class, 1), dim=1) - math.log(K)
    if y is not None:
        y = class_labels(y, len(v), model.cfg.class_cond, model.num_classes).to(v.device)
    logits = model(v, y).float()  # (B, K, C, H, W)
    return -F.cross_entropy(logits, v, reduction="none").flatten(1).sum(1)


# ------------------------------------------------------------------------------------------------ training


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One Adam step on the negative log-likelihood of the discrete variables, per variable.

    Logs `loss` (nats per variable: sub-pixel, code or coordinate) and its value in bits: `bits_per_dim` for
    pixels (the test metric of the same name), `bits_per_code` for a code prior, `bits_per_coord` for points.
    """
    net = ctx.unwrap(model)
    cfg = net.cfg
    assert list(batch["x"].shape[1:]) == net.data_shape, f"batch {tuple(batch['x'].shape)} vs data {net.data_shape}"
    bits_key = {"pixels": "bits_per_dim", "codes": "bits_per_code", "points": "bits_per_coord"}[net.mode]

    def loss(mb, rng):
        v = variables(net, mb["x"])  # codes: through the frozen VQ-VAE, without gradients
        y = mb["y"] if cfg.class_cond else None
        logits = model(v, y).float()  # through the (DDP-)prepared forward
        value = F.cross_entropy(logits, v)  # mean over every variable of the micro-batch
        return value, {"loss": value.item(), bits_key: value.item() / math.log(2)}

    return ctx.update("model", loss)


# ---------------------------------------------------------------------------------------------- likelihood


@torch.no_grad()
def log_likelihood(model: PixelCNN, x: torch.Tensor, *, y: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact log P(x) (B,) in nats; `generator` is unused (nothing is estimated).

    Images: the discrete likelihood of the 8-bit image itself, sum_i log softmax_i[x_i] (no dequantisation
    term: the 256-way softmax is already a distribution over 8-bit values). Points: the piecewise-constant
    density, log P(bins) - D log(bin width). A class-conditional model gives log P(x | y) for labels `y`, and
    without them the marginal under a uniform class prior (see `log_prob`).

    A code prior (model.vqvae set) raises ValueError: it models the VQ-VAE's codes, and the VQ-VAE's
    deterministic MSE decoder defines no p(x | z), so log P(codes) is neither log P(x) nor a bound on it (the
    ELBO log p(x) >= log p(x | z_q(x)) + log P(z_q(x)) would need that decoder likelihood). The prior's own
    exact log P of the code grid is `log_prob(model, variables(model, x))`.
    """
    if model.mode == "codes":
        raise ValueError("a PixelCNN prior over VQ-VAE codes (model.vqvae set) models the codes, not the images: "
                         "the VQ-VAE's decoder defines no image likelihood, so there is no log_likelihood of x; "
                         "pixelcnn.log_prob(model, pixelcnn.variables(model, x)) gives log P(codes)")
    ll = log_prob(model, variables(model, x.to(next(model.parameters()).device)), y)
    if model.mode == "points":
        ll = ll - model.data_shape[0] * math.log(point_bin_width(model.cfg))
    return ll


@torch.no_grad()
def anomaly_score(model: PixelCNN, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """-log P (B,) in nats of x's discrete variables: of the image (pixels), of its codes (code prior), or of the
    point's bins. (Likelihoods of out-of-distribution images can be high: Nalisnick et al. 2019.)"""
    return -log_prob(model, variables(model, x.to(next(model.parameters()).device)))


# ------------------------------------------------------------------------------------------------ sampling


def row_logits(model: PixelCNN, v: torch.Tensor, i: int, y: torch.Tensor | None = None) -> torch.Tensor:
    """The logits of row i (B, K, C, W), equal to `model(v, y)[:, :, :, i]`, from the rows of v that reach it.

    Row i sees no row below it, and rows above only through the vertical stack: the input conv and each of the
    L gated layers reach k//2 rows further up, after the one-row shift, so rows < i - 1 - (L + 1) * (k//2)
    cannot change it (tested). Sampling evaluates only the rows in between.
    """
    cfg = model.cfg
    top = max(0, i - 1 - (cfg.layers + 1) * (cfg.kernel // 2))
    return model(v[:, :, top : i + 1], y)[:, :, :, i - top]


@torch.no_grad()
def sample(model: PixelCNN, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, temperature: float | None = None, batch_size: int = 256,
           progress: bool | None = None) -> torch.Tensor:
    """Ancestral sampling, one variable at a time in raster order (R, G, B within a pixel); (n, *data_shape).

    Cost: H * W * C network evaluations per batch of `batch_size` (784 for Fashion-MNIST, 2352 for 28 x 28
    RGB, 49 for a 7 x 7 code grid plus one VQ-VAE decoder pass), each on the rows `row_logits` needs.
    Each variable is drawn by inverting the CDF of softmax(logits / temperature) at a uniform number from the
    sample's own stream, so samples do not depend on n or the batch size. Codes are decoded by the VQ-VAE;
    points are drawn uniformly inside their bins. Class-conditional models take `cond` labels (balanced
    classes when none are given). `progress`: a bar over the evaluations (see genlab.progress).
    """
    cfg = model.cfg
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for pixelcnn; expected one of: {', '.join(SAMPLERS)}")
    T = cfg.temperature if temperature is None else temperature
    if not T > 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    device = next(model.parameters()).device
    y = class_labels(cond, n, cfg.class_cond, model.num_classes)
    if y is None and cfg.class_cond:
        y = torch.arange(n) % model.num_classes  # balanced classes when none are asked for
    C, H, W = model.grid
    rng = SampleRNG.from_generator(n, generator, device)
    u = rng.rand(C * H * W, dtype=torch.float64)  # (n, C*H*W): one uniform per variable, raster order
    offsets = rng.rand(W, dtype=torch.float64) if model.mode == "points" else None  # (n, D): inside the bins
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        yb = y[start:stop].to(device) if y is not None else None
        v = torch.zeros(stop - start, C, H, W, dtype=torch.long, device=device)
        steps = bar(range(H * W * C), progress=progress, desc=f"pixelcnn: {stop - start} samples", leave=False)
        for t in steps:
            i, j, c = t // (W * C), (t // C) % W, t % C
            logits = row_logits(model, v, i, yb)[:, :, c, j].double()  # (b, K)
            cdf = torch.softmax(logits / T, dim=1).cumsum(1)
            drawn = torch.searchsorted(cdf, u[start:stop, t, None].contiguous()).squeeze(1)
            v[:, c, i, j] = drawn.clamp(max=model.levels - 1)
        steps.close()
        out.append(_decode(model, v, None if offsets is None else offsets[start:stop]))
    model.train(was_training)
    return torch.cat(out)


def _decode(model: PixelCNN, v: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """Data from sampled variables v (b, C, H, W): images in [-1, 1], decoded codes, or points."""
    if model.mode == "pixels":
        return v.float() / 127.5 - 1.0
    if model.mode == "codes":
        idx = v.reshape(len(v), *model.code_shape)  # (b, h, w), or (b,) for a VQ-VAE of points
        return model.decode_indices(model.vqvae, idx)
    cfg = model.cfg
    bins = v.reshape(len(v), -1).double()  # (b, D)
    return (-cfg.point_range + (bins + offsets) * point_bin_width(cfg)).float()
