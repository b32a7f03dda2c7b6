"""Sample grids with each image's prompt written under it (text-to-image runs: `genlab sample --prompt`, reports)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

TILE = 128  # width of one image and its caption, in pixels (images are enlarged to it, nearest neighbour)
LINE = 12  # pixels per caption line (PIL's built-in bitmap font is ~11 px high)


def captioned_grid(images: torch.Tensor, captions: list[str], ncol: int | None = None,
                   max_lines: int = 6) -> torch.Tensor:
    """uint8 (N, C, H, W) images and N captions -> one uint8 (3, H', W') grid, each caption wrapped under its image.

    Captions longer than `max_lines` lines end in '...'. Grey images are shown as RGB.
    """
    assert images.dtype == torch.uint8 and images.dim() == 4, "captioned_grid expects uint8 (N, C, H, W) images"
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    n, c, h, w = images.shape
    scale = max(1, TILE // w)
    tw, th = w * scale, h * scale
    font = ImageFont.load_default()
    chars = max(8, int(tw / max(font.getlength("x"), 1)))
    wrapped = []
    for text in captions:
        lines = textwrap.wrap(text, chars) or [""]
        if len(lines) > max_lines:
            lines = lines[: max_lines - 1] + [textwrap.shorten(" ".join(lines[max_lines - 1 :]), chars, placeholder="...")]
        wrapped.append(lines)
    text_h = LINE * max(len(lines) for lines in wrapped) + 4
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    pad = 6
    canvas = Image.new("RGB", (ncol * (tw + pad) + pad, nrow * (th + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, lines) in enumerate(zip(images, wrapped)):
        r, col = divmod(i, ncol)
        left, top = pad + col * (tw + pad), pad + r * (th + text_h + pad)
        a = img.expand(3, -1, -1) if c == 1 else img
        tile = Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).cpu().numpy())).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (left, top))
        for j, line in enumerate(lines):
            draw.text((left, top + th + 2 + j * LINE), line, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(canvas).transpose(2, 0, 1).copy())


def save_captioned_grid(images: torch.Tensor, captions: list[str], path: str | Path, ncol: int | None = None) -> Path:
    """`captioned_grid` as a PNG file."""
    from genlab.data.png import save_png

    return save_png(captioned_grid(images, captions, ncol), path)
