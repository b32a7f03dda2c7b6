"""Layers shared by the style-based GAN families (progan, stylegan): equalized learning rate, pixel norm,
minibatch standard deviation, AdaIN, and the progressively grown discriminator both families train against.

Karras et al. 2018, "Progressive Growing of GANs for Improved Quality, Stability, and Variation" (ProGAN):
- Sec. 4.1, equalized learning rate: weights are drawn from N(0, 1) and scaled at *run time* by He's constant
  c = gain / sqrt(fan_in), so Adam's scale-invariant steps move every layer at the same relative speed.
- Sec. 4.2, pixelwise feature vector normalisation: b = a / sqrt(mean_c a^2 + 1e-8) at every pixel.
- Sec. 3, minibatch standard deviation: the std of each feature over a group of samples, averaged to one
  number per group and appended as an extra feature map, lets D see a lack of variation.
Huang & Belongie 2017, "Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization", Eq. 8:
AdaIN(x, y) = y_s * (x - mu(x)) / sigma(x) + y_b, per sample and channel (Karras et al. 2019, Eq. 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU = 0.2  # leaky ReLU slope of both papers
LRELU_GAIN = math.sqrt(2.0)  # He gain for (leaky) ReLU layers


class EqualLinear(nn.Module):
    """y = x (c W)^T + b, W ~ N(0, 1 / lr_mul^2), c = lr_mul * gain / sqrt(fan_in) (ProGAN Sec. 4.1).

    `equalized=False` folds c into the initial weights instead (plain He initialisation): the same function at
    step 0, but Adam then takes steps of one size for all layers in *parameter* units (the ablation row).
    `lr_mul` scales the learning rate of this layer (StyleGAN's mapping network uses 0.01, Appendix C).
    """

    def __init__(self, d_in: int, d_out: int, *, gain: float = LRELU_GAIN, lr_mul: float = 1.0,
                 equalized: bool = True, bias_init: float = 0.0):
        super().__init__()
        he = gain / math.sqrt(d_in)
        self.scale = he * lr_mul if equalized else lr_mul
        self.lr_mul = lr_mul
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / lr_mul * (1.0 if equalized else he))
        self.bias = nn.Parameter(torch.full((d_out,), bias_init / lr_mul))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """A k x k convolution ('same' padding) with the run-time He scaling of `EqualLinear`."""

    def __init__(self, c_in: int, c_out: int, k: int, *, gain: float = LRELU_GAIN, equalized: bool = True):
        super().__init__()
        he = gain / math.sqrt(c_in * k * k)
        self.scale = he if equalized else 1.0
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k) * (1.0 if equalized else he))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.padding = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit mean square along dim 1 (channels of (B, C, H, W), features of (B, D)); ProGAN Sec. 4.2."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C + 1, H, W): one extra map, the group's average feature std (ProGAN Sec. 3).

    Groups are *consecutive* samples (0..g-1, g..2g-1, ...) and the batch must split into them exactly, so a
    statistic never mixes samples from different micro-batches or processes: splitting a batch into pieces
    that are multiples of g (gradient accumulation, data parallelism) gives the same outputs. (The reference
    code strides its groups across the batch and shrinks the group to the batch size when it is smaller;
    both make D's output depend on how the batch is split.)
    """
    B, C, H, W = x.shape
    if B % group_size:
        raise ValueError(f"batch of {B} does not split into minibatch-stddev groups of {group_size}: use a batch "
                         f"(per process and micro-batch) divisible by model.mbstd_group, or change it")
    g = x.reshape(B // group_size, group_size, C, H, W)  # (B/g, g, C, H, W)
    std = (g.var(dim=1, unbiased=False) + 1e-8).sqrt()  # (B/g, C, H, W) per feature over the group
    s = std.mean(dim=(1, 2, 3))  # (B/g,) one number per group
    s = s.repeat_interleave(group_size).reshape(B, 1, 1, 1).expand(B, 1, H, W)
    return torch.cat([x, s], dim=1)


def adain(x: torch.Tensor, y_s: torch.Tensor, y_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """AdaIN (Huang & Belongie 2017, Eq. 8): x (B, C, H, W), styles y_s, y_b (B, C) -> per-channel mean y_b, std |y_s|."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    return y_s[:, :, None, None] * (x - mu) / sigma + y_b[:, :, None, None]


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU)


def upsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling (ProGAN's generator; StyleGAN's bilinear filtering is not used here)."""
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


def downsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average pooling (ProGAN's discriminator and the down-scaled real images)."""
    return x if factor == 1 else F.avg_pool2d(x, factor)


def fade(low: torch.Tensor, high: torch.Tensor, alpha: float) -> torch.Tensor:
    """The fade-in blend (1 - alpha) low + alpha high (ProGAN Fig. 2): alpha = 0 is the old path exactly."""
    if alpha >= 1.0:
        return high
    if alpha <= 0.0:
        return low
    return torch.lerp(low, high, alpha)


def levels_for(size: int) -> int:
    """Resolution levels 4, 8, ..., size for a square power-of-two image size >= 4 (a clear error otherwise)."""
    if size < 4 or size & (size - 1):
        raise ValueError(f"style-based GANs grow from 4x4 by doubling: the image size must be a power of two >= 4, "
                         f"got {size} (use data.image_size, or a 32x32 dataset such as fmnist-color)")
    return int(math.log2(size)) - 1


def level_widths(levels: int, channels: int, min_channels: int) -> list[int]:
    """Channels per level (4x4 first): `channels` at the coarse levels, halved per level above 16x16."""
    return [max(min_channels, channels >> max(0, i - 2)) for i in range(levels)]


def touch(params) -> torch.Tensor:
    """0 * sum of the parameters: adds exactly zero but puts every parameter in the graph.

    DDP (without find_unused_parameters) expects a gradient for every parameter in every step; layers a growing
    network does not use yet then get exact zero gradients instead of none (see `forget_inactive`).
    """
    return sum(p.sum() for p in params) * 0.0


def forget_inactive(opt: torch.optim.Optimizer, params) -> None:
    """Drop the optimizer state of parameters a step did not use: their zero gradient left them unchanged
    (Adam's moments stay 0), and without this their step count would advance, so Adam's bias correction would
    be off when the layer fades in. A layer's Adam state thus starts when the layer starts to learn (the
    reference ProGAN code resets the optimizer at every new resolution)."""
    state = getattr(opt, "optimizer", opt).state  # Accelerate wraps the optimizer
    for p in params:
        state.pop(p, None)


class GrowingDiscriminator(nn.Module):
    """ProGAN's discriminator (Table 2 of Karras et al. 2018): fromRGB (1x1) at the current level, blocks of two
    3x3 convs + 2x average pooling down to 4x4, then [minibatch stddev], a 3x3 conv, a 4x4 -> 1 dense layer and
    the output. At a fading level the input also takes the old path: fromRGB of the 2x down-scaled image,
    blended with the new block's output by alpha. A fixed (non-growing) D is the same at the top level, alpha 1.
    """

    def __init__(self, in_channels: int, size: int, *, channels: int, min_channels: int, mbstd: bool,
                 mbstd_group: int, equalized: bool):
        super().__init__()
        self.levels = levels_for(size)
        self.mbstd, self.mbstd_group = mbstd, mbstd_group
        w = level_widths(self.levels, channels, min_channels)
        eq = {"equalized": equalized}
        self.from_rgb = nn.ModuleList(EqualConv2d(in_channels, w[i], 1, **eq) for i in range(self.levels))
        # blocks[i] maps level i (w[i] channels, 4*2^i px) to level i - 1; blocks[0] is unused (the final block)
        self.blocks = nn.ModuleList(
            [nn.Identity()] + [nn.ModuleList([EqualConv2d(w[i], w[i], 3, **eq), EqualConv2d(w[i], w[i - 1], 3, **eq)])
                               for i in range(1, self.levels)])  # fmt: skip
        self.final_conv = EqualConv2d(w[0] + (1 if mbstd else 0), w[0], 3, **eq)
        self.final_dense = EqualLinear(w[0] * 16, w[0], **eq)
        self.out = EqualLinear(w[0], 1, gain=1.0, **eq)

    def _block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        conv1, conv2 = self.blocks[i]
        return downsample(lrelu(conv2(lrelu(conv1(h)))))

    def active_parameters(self, level: int, alpha: float) -> set[int]:
        """Ids of the parameters the forward at (level, alpha) uses."""
        mods = [self.from_rgb[level], *self.blocks[1 : level + 1], self.final_conv, self.final_dense, self.out]
        if alpha < 1 and level > 0:
            mods.append(self.from_rgb[level - 1])
        return {id(p) for m in mods for p in m.parameters()}

    def forward(self, x: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """x (B, C, r, r) at level's resolution r = 4 * 2^level -> logits (B,)."""
        level = self.levels - 1 if level is None else level
        assert x.shape[-1] == 4 * 2**level, f"D at level {level} expects {4 * 2**level}px, got {tuple(x.shape)}"
        h = lrelu(self.from_rgb[level](x))
        if level > 0:
            h = self._block(level, h)
            if alpha < 1:  # the old path: the down-scaled image through the previous level's fromRGB
                h = fade(lrelu(self.from_rgb[level - 1](downsample(x))), h, alpha)
        for i in range(level - 1, 0, -1):
            h = self._block(i, h)
        if self.mbstd:
            h = minibatch_stddev(h, self.mbstd_group)
        h = lrelu(self.final_conv(h))
        h = lrelu(self.final_dense(h.flatten(1)))  # (B, w0 * 16) -> (B, w0)
        return self.out(h).squeeze(1) + touch(self.parameters())


def interpolation_strip(generate, a: torch.Tensor, b: torch.Tensor, *, steps: int = 8,
                        spherical: bool = False) -> torch.Tensor:
    """(R, steps, C, H, W): generate() along the paths a[r] -> b[r] ((R, D) each), linear (W) or spherical (Z:
    directions slerped, norms interpolated linearly, the convention of `genlab.metrics.ppl.slerp`)."""
    t = torch.linspace(0, 1, steps, device=a.device)[None, :, None]  # (1, S, 1)
    a3, b3 = a[:, None], b[:, None]  # (R, 1, D)
    if spherical:
        na, nb = a3.norm(dim=-1, keepdim=True), b3.norm(dim=-1, keepdim=True)
        ua, ub = a3 / na, b3 / nb
        cos = (ua * ub).sum(-1, keepdim=True).clamp(-1, 1)
        omega = torch.acos(cos)
        ortho = ub - cos * ua
        ortho = ortho / ortho.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        path = (ua * torch.cos(t * omega) + ortho * torch.sin(t * omega)) * (na + t * (nb - na))  # (R, S, D)
    else:
        path = a3 + t * (b3 - a3)
    images = generate(path.reshape(-1, a.shape[-1]))  # (R * S, C, H, W)
    return images.reshape(a.shape[0], steps, *images.shape[1:])
