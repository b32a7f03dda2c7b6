"""Encoder and decoder stacks shared by the autoencoder families (AE, VAE, VQ-VAE).

Images: `ConvEncoder` maps (B, C, H, W) to a feature map at a quarter of the resolution (two stride-2 convs),
`ConvDecoder` maps such a map back to (B, C, H, W) (nearest upsampling + conv, twice; no checkerboard
artifacts of transposed convs). Families put their own heads on top: a Linear to a latent vector (AE, VAE)
or a 1x1 conv to the codebook dimension (VQ-VAE). Points: `mlp`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def feature_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Spatial sizes at full, half and quarter resolution (odd sizes round up, as stride-2 convs do)."""
    return [(h, w), ((h + 1) // 2, (w + 1) // 2), ((h + 3) // 4, (w + 3) // 4)]


class ConvEncoder(nn.Sequential):
    """(B, C, H, W) -> (B, 2c, ceil(H/4), ceil(W/4)): conv, then two stride-2 convs, SiLU after each."""

    def __init__(self, in_channels: int, channels: int, image_size: int):
        c1, c2 = channels, 2 * channels
        down1 = nn.Conv2d(c1, c1, 4, 2, 1) if image_size % 2 == 0 else nn.Conv2d(c1, c1, 3, 2, 1)
        super().__init__(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.SiLU(),
            down1, nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(),
        )  # fmt: skip


class ConvDecoder(nn.Module):
    """(B, 2c, ceil(H/4), ceil(W/4)) -> (B, C, H, W): (nearest upsample, conv, SiLU) twice, then a conv."""

    def __init__(self, out_channels: int, channels: int, image_size: tuple[int, int]):
        super().__init__()
        c1, c2 = channels, 2 * channels
        self.sizes = feature_sizes(*image_size)
        self.up1 = nn.Sequential(nn.Conv2d(c2, c1, 3, padding=1), nn.SiLU())
        self.up2 = nn.Sequential(nn.Conv2d(c1, c1, 3, padding=1), nn.SiLU())
        self.out = nn.Conv2d(c1, out_channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.up1(F.interpolate(h, size=self.sizes[1], mode="nearest"))  # (B, C1, H/2, W/2)
        h = self.up2(F.interpolate(h, size=self.sizes[0], mode="nearest"))  # (B, C1, H, W)
        return self.out(h)


def mlp(d_in: int, hidden: int, d_out: int, layers: int = 2) -> nn.Sequential:
    """`layers` hidden Linear+SiLU layers of width `hidden`, then a Linear to d_out (toy encoders/decoders)."""
    mods, d = [], d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    return nn.Sequential(*mods, nn.Linear(d, d_out))


def decoder_mean(out: torch.Tensor, *, logits: bool) -> torch.Tensor:
    """A decoder's output as data: Bernoulli logits -> sigmoid mapped to [-1, 1]; values -> clamped for images
    (B, C, H, W), unchanged for points."""
    if logits:
        return torch.sigmoid(out) * 2 - 1
    return out.clamp(-1, 1) if out.dim() == 4 else out
