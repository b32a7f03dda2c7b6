"""Image-to-image translation networks shared by pix2pix, CycleGAN, BicycleGAN and StarGAN.

API (stable; families build on it):

- `UNetGenerator(in_channels, out_channels, base=32, depth=2, extra_channels=0, dropout=0.0, norm="instance")`
  Encoder-decoder with skip connections (Isola et al. 2017, Sec. 3.2.1): `depth` stride-2 4x4 convolutions
  down, as many transposed convolutions up, each decoder level concatenated with its encoder twin.
  `forward(x, extra=None, noise=None) -> (B, out_channels, H, W)` in [-1, 1] (tanh). `extra`: (B, E) vectors
  broadcast to E constant planes, or (B, E, H, W) planes, concatenated to the input (a latent z, domain
  one-hot planes); E must equal `extra_channels`. Any H, W: the input is reflect-padded to a multiple of
  2**depth and the output cropped back (28x28 and 32x32 both work). `noise`: a `genlab.rng.SampleRNG`
  drawing per-sample dropout masks in the first `min(3, depth)` decoder levels (pix2pix's "noise as
  dropout", Sec. 3.1); no noise, no dropout, so sampling without it is deterministic.
- `ResnetGenerator(in_channels, out_channels, base=32, n_blocks=4, extra_channels=0, n_down=2, norm="instance")`
  Johnson et al. 2016 / CycleGAN generator: c7s1-base, `n_down` stride-2 downsamplings, `n_blocks` residual
  blocks, `n_down` upsamplings, c7s1-out, tanh. `forward(x, extra=None)`; H and W divisible by 2**n_down.
- `PatchDiscriminator(in_channels, base=32, n_layers=2, norm="instance")` -> logits (B, 1, h, w), one per
  patch (pix2pix's PatchGAN, Sec. 3.2.2). Receptive field of one logit (`receptive_field(n_layers)`):

      n_layers   0 (PixelGAN, 1x1 convs)   1    2    3    4     5
      field      1                         16   34   70   142   286

  pix2pix's 70x70 default is n_layers=3 on 256x256 images; on genlab's 32x32 images n_layers=1 (16x16) is
  the middle size and n_layers=2 (34 >= 32) already sees the whole image (the ImageGAN end of the study).
- `receptive_field(n_layers) -> int`, `patch_grid(n_layers, size) -> int` (side of D's output map).
- `ImagePool(size, shape)`: history of generated images (Shrivastava et al. 2017, Sec. 2.3; CycleGAN Sec. 4),
  an nn.Module whose buffers hold the images, so checkpoints carry it and `--resume` is exact. Keep it inside
  a network that has parameters (CycleGAN: `D_A.pool`): Accelerate wraps every top-level network in DDP
  on multi-CPU runs, and DDP refuses a module without parameters.
  `pool.query(fakes, rng, gather=None) -> images for D` (see its docstring: per-sample draws, batch-split and
  process-count independent, an order-free update so all processes keep identical pools).
- `check_images(x, shape, what)`: ValueError naming the expected and given shape (translation inputs).

Normalisation is per sample (instance norm, or none): batch norm would make a sample's output depend on the
rest of its batch, breaking gradient-accumulation and 2-process equality (genlab's contract tests).

Evaluation conditions for families whose sampling condition is built from the test split (CycleGAN and
StarGAN translate test images that their data has as `x`, not as `x_src`): a family module may define
`eval_conditions(test: genlab.data.Dataset, n: int) -> dict`; `genlab.training.data.eval_conditions` then
returns that dict (n entries per key) instead of the test split's own keys. Put `"y"` in it (the class each
output should show) and evaluation computes class accuracy on the outputs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["instance", "none"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}'; expected one of: instance, none")


def check_images(x: torch.Tensor, shape, what: str = "input images") -> None:
    """ValueError unless x is (B, *shape): the wrong size or channel count, said in words with the fix."""
    shape = tuple(shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        got = tuple(x.shape[1:]) if x.dim() == 4 else tuple(x.shape)
        raise ValueError(f"{what} have shape {got} (channels, height, width); this model takes {shape}: "
                         f"{'grey (1 channel)' if shape[0] == 1 else f'{shape[0]}-channel'} {shape[1]}x{shape[2]} "
                         "images; convert or resize them first")


def _with_extra(x: torch.Tensor, extra: torch.Tensor | None, channels: int) -> torch.Tensor:
    """x with `extra` concatenated as planes: (B, E) vectors are broadcast over H x W."""
    if channels == 0:
        if extra is not None:
            raise ValueError("this network was built with extra_channels=0 but got extra inputs")
        return x
    if extra is None or extra.shape[1] != channels:
        raise ValueError(f"expected extra inputs with {channels} channels, got "
                         f"{None if extra is None else tuple(extra.shape)}")
    if extra.dim() == 2:
        extra = extra[:, :, None, None].expand(-1, -1, *x.shape[2:])  # (B, E, H, W)
    return torch.cat([x, extra.to(x.dtype)], dim=1)


# ----------------------------------------------------------------------------- generators


class UNetGenerator(nn.Module):
    """U-Net generator (Isola et al. 2017, Sec. 3.2.1 and Appendix 6.1.1), see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, base: int = 32, depth: int = 2, extra_channels: int = 0,
                 dropout: float = 0.0, norm: Norm = "instance"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"U-Net depth must be >= 1, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.depth, self.extra_channels, self.dropout = depth, extra_channels, dropout
        widths = [base * 2 ** min(i, 3) for i in range(depth)]  # C64-C128-C256-C512-C512... scaled by base/64
        self.down = nn.ModuleList()
        c = in_channels + extra_channels
        for i, w in enumerate(widths):
            innermost = i == depth - 1
            normed = not (i == 0 or innermost) and norm != "none"  # no norm first (pix2pix) nor innermost (1x1)
            self.down.append(nn.Sequential(nn.Conv2d(c, w, 4, 2, 1, bias=not normed),
                                           _norm(norm, w) if normed else nn.Identity()))
            c = w
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            outermost = i == 0
            c_in = widths[i] if i == depth - 1 else 2 * widths[i]  # the innermost level has no skip yet
            c_out = out_channels if outermost else widths[i - 1]
            normed = not outermost and norm != "none"
            self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not normed),
                                         _norm(norm, c_out) if normed else nn.Identity()))
        self.n_dropout = min(3, depth - 1)  # decoder levels with dropout (pix2pix: the first three)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None, noise=None) -> torch.Tensor:
        H, W = x.shape[2:]
        m = 2**self.depth
        ph, pw = (-H) % m, (-W) % m
        h = _with_extra(x, extra, self.extra_channels)
        if ph or pw:  # e.g. 28x28 at depth 3: pad to 32x32, crop back at the end
            h = F.pad(h, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate")
        skips = []
        for i, layer in enumerate(self.down):
            h = layer(h if i == 0 else F.leaky_relu(h, 0.2))
            skips.append(h)
        for j, layer in enumerate(self.up):
            if j > 0:
                h = torch.cat([h, skips[self.depth - 1 - j]], dim=1)  # (B, 2C, h, w) skip connection
            h = layer(h)
            if j < self.n_dropout and noise is not None and self.dropout > 0:
                keep = (noise.rand(*h.shape[1:]).to(h.device) >= self.dropout).to(h.dtype)  # one mask per sample
                h = h * keep / (1 - self.dropout)
        return torch.tanh(h[:, :, :H, :W])


class ResBlock(nn.Module):
    """Two 3x3 convolutions with reflection padding and instance norm, plus the identity (Johnson et al. 2016)."""

    def __init__(self, c: int, norm: Norm):
        super().__init__()
        b = norm == "none"
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3, bias=b), _norm(norm, c), nn.ReLU(),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3, bias=b), _norm(norm, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """ResNet generator of CycleGAN (Zhu et al. 2017, Appendix 7.2) and StarGAN (Choi et al. 2018, Table 4).

    `extra` inputs (a target domain's one-hot, a latent code) are planes beside the image. Without a norm they are
    concatenated to the image, as in the papers. With a norm they are added after the stem's norm through a 1x1
    convolution (`inject`) instead: a plane that is constant over H x W gives a per-channel constant after the
    reflection-padded stem convolution, which instance norm subtracts, so concatenated at the input G would never
    see a constant condition (and the stem weights reading it would get a gradient that is zero but for rounding
    noise, which Adam turns into real steps). StarGAN's official code keeps the label only through the zero
    padding's border effect.
    """

    def __init__(self, in_channels: int, out_channels: int, base: int = 32, n_blocks: int = 4, extra_channels: int = 0,
                 n_down: int = 2, norm: Norm = "instance"):
        super().__init__()
        self.extra_channels, self.n_down = extra_channels, n_down
        b = norm == "none"  # a bias right before a norm is cancelled by it (and Adam would amplify its noise)
        self.inject = nn.Conv2d(extra_channels, base, 1, bias=False) if extra_channels and norm != "none" else None
        stem_in = in_channels + (extra_channels if self.inject is None else 0)
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(stem_in, base, 7, bias=b), _norm(norm, base))
        layers: list[nn.Module] = [nn.ReLU()]
        c = base
        for _ in range(n_down):  # d2c: 3x3 stride-2 convolutions
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=b), _norm(norm, 2 * c), nn.ReLU()]
            c *= 2
        layers += [ResBlock(c, norm) for _ in range(n_blocks)]
        for _ in range(n_down):  # u c/2: fractionally strided convolutions, exactly doubling H and W
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=b), _norm(norm, c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        m = 2**self.n_down
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"ResnetGenerator with n_down={self.n_down} needs H and W divisible by {m}, "
                             f"got {tuple(x.shape[2:])}")
        xe = _with_extra(x, extra, self.extra_channels)
        if self.inject is None:
            return self.net(self.stem(xe))
        return self.net(self.stem(x) + self.inject(xe[:, x.shape[1] :]))


# ----------------------------------------------------------------------------- discriminator


def receptive_field(n_layers: int) -> int:
    """Receptive field (pixels) of one PatchDiscriminator logit: 1 for n_layers=0, else 4x4 convs as below.

    Walking back from the output: two stride-1 4x4 convs (1 -> 4 -> 7), then n_layers stride-2 4x4 convs,
    each r -> 2 (r - 1) + 4 (n_layers=3: 70, pix2pix's default).
    """
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    if n_layers == 0:
        return 1
    r = 7
    for _ in range(n_layers):
        r = 2 * (r - 1) + 4
    return r


def patch_grid(n_layers: int, size: int) -> int:
    """Side of D's logit map for size x size inputs (0 or less: the input is too small for n_layers)."""
    if n_layers == 0:
        return size
    for _ in range(n_layers):
        size = size // 2  # 4x4, stride 2, padding 1
    return size - 2  # two 4x4 stride-1 convs with padding 1: -1 each


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017, Sec. 3.2.2; Appendix 6.1.2): a logit per receptive-field patch.

    n_layers=0 is the PixelGAN (1x1 convolutions only); see the module docstring for the field of each depth.
    The caller averages the per-patch losses (the paper: "average all responses").
    """

    def __init__(self, in_channels: int, base: int = 32, n_layers: int = 2, norm: Norm = "instance"):
        super().__init__()
        self.n_layers = n_layers
        b = norm == "none"  # a bias right before a norm is cancelled by it (and Adam would amplify its noise)
        if n_layers == 0:
            self.net = nn.Sequential(nn.Conv2d(in_channels, base, 1), nn.LeakyReLU(0.2),
                                     nn.Conv2d(base, 2 * base, 1, bias=b), _norm(norm, 2 * base), nn.LeakyReLU(0.2),
                                     nn.Conv2d(2 * base, 1, 1))
            return
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2)]  # no norm first
        c = base
        for i in range(1, n_layers):
            w = base * 2 ** min(i, 3)
            layers += [nn.Conv2d(c, w, 4, 2, 1, bias=b), _norm(norm, w), nn.LeakyReLU(0.2)]
            c = w
        w = base * 2 ** min(n_layers, 3)
        layers += [nn.Conv2d(c, w, 4, 1, 1, bias=b), _norm(norm, w), nn.LeakyReLU(0.2), nn.Conv2d(w, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if patch_grid(self.n_layers, min(x.shape[2:])) < 1:
            raise ValueError(f"a PatchDiscriminator with n_layers={self.n_layers} needs images of at least "
                             f"{8 * 2 ** (self.n_layers - 1)} pixels, got {tuple(x.shape[2:])}; lower n_layers")
        return self.net(x)


# ----------------------------------------------------------------------------- image pool


class ImagePool(nn.Module):
    """A history of generated images for the discriminator (Shrivastava et al. 2017, Sec. 2.3; used by
    CycleGAN, Zhu et al. 2017, Sec. 4 "Training details", with 50 images).

    Each generated image i draws, from its own random stream, a slot j_i, a coin u_i and a priority p_i:
      - slot j_i empty: D sees image i, which is written to slot j_i;
      - slot full, u_i < 0.5: D sees the stored image (as it was before this step), image i replaces it;
      - slot full, u_i >= 0.5: D sees image i; the pool is unchanged.
    Several images writing one slot: the highest priority wins. So the result is a function of the set of
    (image, draws) of the global batch, not of its order or split: grad accumulation and several processes
    give the pool that one big batch gives, once every process applies everyone's writes (`gather`).
    The reference implementations fill the pool in order and replace a uniformly chosen slot; here the pool
    fills at random slots (a few steps longer to fill), otherwise the same 50/50 history mix.
    """

    def __init__(self, size: int, shape):
        super().__init__()
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))
        self.register_buffer("filled", torch.zeros(size, dtype=torch.bool))

    @torch.no_grad()
    def query(self, fakes: torch.Tensor, rng, gather=None, *, select: torch.Tensor | None = None) -> torch.Tensor:
        """The images D should see for `fakes` (B, C, H, W), and the pool updated with them.

        `rng`: a `SampleRNG` with one stream per row of `fakes` (three draws each, taken even for rows not
        selected, so a sample's stream does not depend on its neighbours). `select`: bool (B,), the rows that
        are real queries (others are returned unchanged and not written; e.g. a mixed-domain batch).
        `gather`: a function concatenating a tensor over processes (`accelerator.gather`); None for one process.
        """
        B = fakes.shape[0]
        draws = rng.rand(3, dtype=torch.float64).to(fakes.device)  # (B, 3): slot, coin, priority per image
        if self.size == 0:
            return fakes
        select = torch.ones(B, dtype=torch.bool, device=fakes.device) if select is None else select.bool()
        slot = (draws[:, 0] * self.size).long().clamp(max=self.size - 1)
        filled = self.filled[slot]
        swap = filled & (draws[:, 1] < 0.5) & select
        out = torch.where(swap[:, None, None, None], self.images[slot].to(fakes.dtype), fakes)
        write = select & (~filled | swap)
        # every process applies every process's writes, so all pools stay equal to the one-process pool
        fakes_all, slot_all, prio_all, write_all = (
            (fakes, slot, draws[:, 2], write) if gather is None
            else (gather(fakes.contiguous()), gather(slot), gather(draws[:, 2].contiguous()), gather(write.long()).bool()))
        idx = write_all.nonzero().squeeze(1)
        for k in idx[prio_all[idx].argsort()].tolist():  # ascending priority: the highest writes last and wins
            self.images[slot_all[k]] = fakes_all[k].to(self.images.dtype)
            self.filled[slot_all[k]] = True
        return out
