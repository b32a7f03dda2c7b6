"""The diffusion U-Net (Ho et al. 2020, App. B; Nichol & Dhariwal 2021) and an MLP denoiser for 2-D toys.

Layout: conv in -> per resolution level [ResBlock x num_res_blocks (+ self-attention at chosen resolutions)]
and a stride-2 downsample between levels -> middle (ResBlock, attention, ResBlock) -> mirrored up path
concatenating the saved skips -> GroupNorm, SiLU, zero-initialised conv out. Time (and an optional class label)
enter every ResBlock as a per-channel shift.

Conditioning is by keyword: `y=` class labels, `context=` tokens (B, L, context_dim) that cross-attention
layers (after each self-attention, when `context_dim > 0`) attend to (Rombach et al. 2022, Sec. 3.3), and
`control=` a list of residuals added to the skip features and the middle block's output, in `skip_channels`
order (how ControlNet injects its copy's features; Zhang et al. 2023, Eq. 2 and Fig. 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.nn.embeddings import timestep_embedding

MIN_GROUP_CHANNELS = 4  # channels per GroupNorm group, at least (DDPM's 128-channel levels: 32 groups of 4)


def _groups(channels: int, min_channels: int = MIN_GROUP_CHANNELS) -> int:
    """GroupNorm groups for a width: the most of (32, 16, 8, 4, 2) that divide it with >= min_channels each.

    Never one channel per group on narrow levels: that is instance normalisation, and `ResBlock` adds the time
    and label embedding as a per-channel shift right before `norm2`, which would then remove it exactly (the
    block would ignore t and y, and those biases would get no gradient). `min_channels=1` is the grouping
    before this rule (largest of 32, 16, ... dividing the width), kept for the sampler golden file.
    """
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= min_channels:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding added between the convs and a 1x1 skip when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 min_group_channels: int = MIN_GROUP_CHANNELS):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch, min_group_channels), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch, min_group_channels), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # SiLU first, else two Linears collapse into one
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions (scaled dot product), with a residual connection."""

    def __init__(self, channels: int, heads: int = 4, min_group_channels: int = MIN_GROUP_CHANNELS):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(channels, min_group_channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, L, C)
        # the 1x1 conv as a Linear on (B, L, C), so q, k, v reach SDPA with a contiguous last dimension
        # (PyTorch's fast CPU attention kernel needs it)
        qkv = F.linear(h, self.qkv.weight.flatten(1), self.qkv.bias)  # (B, L, 3C)
        q, k, v = qkv.view(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # each (B, h, L, c)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, c)
        h = h.transpose(1, 2).reshape(B, H * W, C).transpose(1, 2).reshape(B, C, H, W)
        return x + self.out(h)


class CrossAttention(nn.Module):
    """Queries from the feature map, keys and values from context tokens (B, L, D), with a residual."""

    def __init__(self, channels: int, context_dim: int, heads: int = 4, min_group_channels: int = MIN_GROUP_CHANNELS):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(channels, min_group_channels), channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h, c = self.heads, C // self.heads
        q = self.q(self.norm(x).flatten(2).transpose(1, 2)).view(B, H * W, h, c).transpose(1, 2)  # (B, h, HW, c)
        k, v = self.kv(context).view(B, context.shape[1], 2, h, c).permute(2, 0, 3, 1, 4)  # each (B, h, L, c)
        attn_mask = mask[:, None, None, :] if mask is not None else None  # (B, 1, 1, L) bool: True = attend
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, HW, c)
        o = self.out(o.transpose(1, 2).reshape(B, H * W, C))  # (B, HW, C)
        return x + o.transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    """eps/v-prediction U-Net: (B, C, H, W) noisy images and (B,) times -> (B, C, H, W).

    `attn_resolutions` lists feature-map sizes (e.g. [7] for 28x28 inputs with channel_mult [1, 2, 2]) that get
    self-attention; `num_classes > 0` adds a class-label embedding (label `num_classes` means "no label").
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        base_channels: int = 64,
        channel_mult=(1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions=(7,),
        dropout: float = 0.1,
        num_classes: int = 0,
        heads: int = 4,
        context_dim: int = 0,
        min_group_channels: int = MIN_GROUP_CHANNELS,
    ):
        super().__init__()
        g = min_group_channels  # GroupNorm: at least this many channels per group (see `_groups`)
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch, res = [base_channels], base_channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = base_channels * mult
                block = nn.ModuleList([ResBlock(ch, out, emb_dim, dropout, g)])
                if res in attn_resolutions:
                    block.append(Attention(out, heads, g))
                    if context_dim:
                        block.append(CrossAttention(out, context_dim, heads, g))
                self.down.append(block)
                ch = out
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res = (res + 1) // 2

        self.skip_channels = list(skips) + [ch]  # what `control` residuals must match: every skip, then the middle
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout, g), Attention(ch, heads, g),
                                  *([CrossAttention(ch, context_dim, heads, g)] if context_dim else []),
                                  ResBlock(ch, ch, emb_dim, dropout, g)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = base_channels * mult
                block = nn.ModuleList([ResBlock(ch + skips.pop(), out, emb_dim, dropout, g)])
                if res in attn_resolutions:
                    block.append(Attention(out, heads, g))
                    if context_dim:
                        block.append(CrossAttention(out, context_dim, heads, g))
                ch = out
                if level > 0 and i == num_res_blocks:
                    block.append(Upsample(ch))
                    res = res * 2
                self.up.append(block)

        self.norm_out = nn.GroupNorm(_groups(ch, g), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                control: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) -> (B, C, H, W); y (B,) labels, context (B, L, D) tokens, control residuals."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))  # (B, E)
        if self.label_emb is not None:
            if y is None:  # unconditional: the extra "no label" index
                y = torch.full((x.shape[0],), self.label_emb.num_embeddings - 1, device=x.device)
            emb = emb + self.label_emb(y)
        if control is not None and len(control) != len(self.skip_channels):
            raise ValueError(f"control needs {len(self.skip_channels)} residuals (skips + middle), got {len(control)}")

        def apply(layer, h):
            if isinstance(layer, ResBlock):
                return layer(h, emb)
            if isinstance(layer, CrossAttention):
                if context is None:
                    raise ValueError("this U-Net has cross-attention: pass context=(B, L, context_dim) tokens")
                return layer(h, context, context_mask)
            return layer(h)

        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            for layer in block:
                h = apply(layer, h)
            hs.append(h)
        for layer in self.mid:
            h = apply(layer, h)
        if control is not None:  # ControlNet: zero-initialised residuals on every skip and the middle
            hs = [s + c for s, c in zip(hs, control[:-1])]
            h = h + control[-1]
        for block in self.up:
            skip = hs.pop()
            for layer in block:
                if isinstance(layer, ResBlock):
                    h = layer(torch.cat([h, skip], dim=1), emb)
                elif isinstance(layer, Upsample):
                    h = layer(h, hs[-1].shape[-2:])
                else:
                    h = apply(layer, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    """Nearest-neighbour resize to the matching skip's size (handles odd sizes such as 7 -> 14 -> 28), then conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class MLPDenoiser(nn.Module):
    """Denoiser for low-dimensional points: (B, D) and (B,) times -> (B, D); time enters every hidden layer."""

    def __init__(self, dim: int = 2, hidden: int = 256, layers: int = 3, num_classes: int = 0):
        super().__init__()
        self.hidden = hidden
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.hidden))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.label_emb.num_embeddings - 1, device=x.device)
            emb = emb + self.label_emb(y)
        h = self.inp(x)
        for lin in self.blocks:
            h = h + lin(F.silu(h + emb))
        return self.out(F.silu(h))
