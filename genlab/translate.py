"""`genlab translate RUN [INPUT] --out DIR`: image-to-image translation with any family that translates.

A family translates when its module defines
`translate(model, x_src, *, to=None, n_outputs=1, generator=None) -> (B, K, C, H, W)` (pix2pix, CycleGAN,
BicycleGAN, StarGAN). It resolves `to` (a domain name or index, or CycleGAN's direction) and checks the input
images' shape itself, raising ValueError with the fix; here a ValueError becomes a usage error (exit code 2).

Inputs: a folder of PNGs (INPUT), or a dataset split (`--data NAME --split test --n K`; without INPUT or --data,
the run's own dataset). From a dataset the family's optional `translate_inputs(data, n, to)` picks the images
(CycleGAN: the source domain's); otherwise the first n of `x_src` (paired data, the target `x` shown beside
the outputs) or of `x`. Writes DIR/NNNNNN-input.png, DIR/NNNNNN-out-K.png, DIR/NNNNNN-target.png (when known)
and DIR/grid.png: one row per input, input | outputs | target.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.data import Dataset, load_dataset, to_float, to_uint8
from genlab.data.png import load_png, make_grid, save_png
from genlab.errors import GenlabError, UsageError


def load_folder_images(path: Path, limit: int) -> torch.Tensor:
    """uint8 (N, C, H, W) from the PNG files under `path` (sorted by name), all of one size."""
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder of PNG files; pass a folder, or --data NAME for a dataset split")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".png" and p.is_file())[:limit or None]
    if not files:
        raise UsageError(f"no PNG files under {path}")
    images = [load_png(f) for f in files]
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise UsageError(f"the PNG files under {path} differ in size (C x H x W: "
                         f"{', '.join('x'.join(map(str, s)) for s in sorted(sizes))}); translate one size at a time")
    return torch.stack(images)


def dataset_inputs(family, data: Dataset, n: int, to) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sources float (n, C, H, W), targets or None) from a dataset split (see the module docstring)."""
    if hasattr(family, "translate_inputs"):
        picked = family.translate_inputs(data, n, to)
        return picked["x_src"], picked.get("target")
    batch = data.batch(torch.arange(min(n, len(data))))
    if "x_src" in batch:
        return batch["x_src"], batch["x"]
    return batch["x"], None


def as_rgb(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey images repeated to `channels` channels, so a grey input sits beside RGB outputs in one grid."""
    return x.expand(-1, channels, -1, -1) if x.shape[1] == 1 and channels == 3 else x


def run_translate(run_dir: str, input_dir: str | None, out: str, *, to: str | None = None, n_outputs: int = 1,
                  seed: int = 0, data: str | None = None, split: str = "test", n: int = 16,
                  ema: bool = True) -> dict:
    """Translate, write the PNGs and the grid; returns {"n": inputs, "outputs": K, "grid": path}."""
    from genlab.training.data import load_data
    from genlab.training.run import load_run

    run = load_run(run_dir, ema=ema)
    family = run.family
    if not hasattr(family, "translate"):
        raise UsageError(f"{run_dir} is a '{run.family_name}' run, which does not translate images; translation "
                         "families: pix2pix, cyclegan, bicyclegan, stargan")
    if n_outputs < 1 or n < 1:
        raise UsageError("--n-outputs and --n must be >= 1")
    if input_dir and data:
        raise UsageError("give either INPUT (a folder of PNGs) or --data NAME (a dataset split), not both")
    try:
        if input_dir:
            x_src, target = to_float(load_folder_images(Path(input_dir), n)), None
        else:
            if data:
                d = load_dataset(data, split, data_dir=run.config.data.data_dir)
            else:
                d = load_data(run.config, split)
            x_src, target = dataset_inputs(family, d, n, to)
        if len(x_src) == 0:
            raise UsageError("no input images to translate (the split holds none of the source domain?)")
        out_imgs = family.translate(run.model, x_src, to=to, n_outputs=n_outputs,
                                    generator=torch.Generator().manual_seed(seed))
    except ValueError as e:
        raise UsageError(str(e)) from None
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenlabError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    B, K, C = out_imgs.shape[:3]
    src8, out8 = to_uint8(x_src.cpu()), to_uint8(out_imgs.cpu())
    tgt8 = to_uint8(target.cpu()) if target is not None else None
    for i in range(B):
        save_png(src8[i], out_dir / f"{i:06d}-input.png")
        for k in range(K):
            save_png(out8[i, k], out_dir / f"{i:06d}-out-{k}.png")
        if tgt8 is not None:
            save_png(tgt8[i], out_dir / f"{i:06d}-target.png")
    columns = [as_rgb(src8, C)[:, None], out8] + ([as_rgb(tgt8, C)[:, None]] if tgt8 is not None else [])
    rows = torch.cat(columns, dim=1)  # (B, 1 + K (+ 1), C, H, W)
    ncol = rows.shape[1]
    scale = max(1, 64 // rows.shape[-1]) if rows.shape[-1] < 32 else 1
    grid = save_png(make_grid(rows.flatten(0, 1), ncol), out_dir / "grid.png", scale=min(scale, 4))
    return {"n": B, "outputs": K, "target": tgt8 is not None, "grid": grid}
