"""Image grids and PNG files (uint8 on disk, as a user's saved samples would be). No torchvision needed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genlab.errors import GenlabError


def make_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2, pad_value: int = 255) -> torch.Tensor:
    """uint8 (N, C, H, W) -> one uint8 (C, H', W') image, row-major, `pad` pixels between tiles.

    A 5-D input (rows, cols, C, H, W) keeps its own rows and columns.
    """
    assert images.dtype == torch.uint8, f"make_grid expects uint8 images, got {images.dtype}"
    if images.dim() == 5:
        rows, ncol = images.shape[:2]
        images = images.reshape(-1, *images.shape[2:])  # (rows*cols, C, H, W)
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_png(image: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """Write a uint8 (C, H, W) image (C = 1 or 3) as PNG, optionally enlarged `scale` times (nearest)."""
    a = image.cpu().numpy()
    a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    im = Image.fromarray(np.ascontiguousarray(a))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def save_grid(images: torch.Tensor, path: str | Path, ncol: int | None = None) -> Path:
    """A grid of uint8 images as one PNG; small images (<= 32 px) are enlarged so they can be seen."""
    scale = max(1, 64 // images.shape[-1]) if images.shape[-1] < 32 else 1
    return save_png(make_grid(images, ncol), path, scale=min(scale, 4))


def load_png(path: str | Path) -> torch.Tensor:
    """A PNG as uint8 (C, H, W): grey (C = 1) or RGB (C = 3; palette and alpha images are converted to RGB).

    An empty, truncated or corrupt file is a `GenlabError` naming it.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise GenlabError(f"cannot read {path}: the file is empty (0 bytes); delete it or save the image again")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB"):
                im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
            a = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL raises SyntaxError on bad chunks
        raise GenlabError(f"cannot read {path}: {e} (a corrupt or truncated PNG; delete it or save it again)") from None
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())
