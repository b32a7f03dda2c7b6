"""Pictures of dataset examples with their conditions (`genlab data show`): what a family will be fed.

Each example is a tile: its image(s) enlarged, with the conditions written under them: class, colour name,
domain, held-out flag, caption; source images beside their targets (`x_src | x`); scenes with their boxes
drawn over the canvas and the label map beside it. 2-D toys are drawn as a scatter plot.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from genlab.data import Dataset

TILE = 128  # side of an enlarged image panel, in pixels (images are enlarged by a whole factor, nearest)
GAP, MARGIN, LINE = 4, 8, 14
# label map colours: background black, then one colour per class (matplotlib's tab10)
PALETTE = np.array([(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], np.uint8)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _panel(image: torch.Tensor, scale: int) -> Image.Image:
    """uint8 (C, H, W) -> an RGB PIL image enlarged `scale` times (nearest)."""
    a = image.numpy()
    a = np.repeat(a, 3, 0) if a.shape[0] == 1 else a
    im = Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)))
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> list[str]:
    """Greedy word wrap to `width` pixels."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def _labels(data: Dataset, i: int) -> list[str]:
    """The conditions of example i as short texts (the caption last)."""
    from genlab.data.derived import COLORS

    out = []
    if data.y is not None:
        y = int(data.y[i])
        first = "first object: " if "obj_classes" in data.extra else ""
        out.append(first + (data.classes[y] if y < len(data.classes) else str(y)))
    if "color" in data.extra:
        out.append(f"colour: {COLORS[int(data.extra['color'][i])]}")
    if "domain" in data.extra:
        out.append(f"domain {'AB'[int(data.extra['domain'][i])]} ({int(data.extra['domain'][i])})")
    if "heldout" in data.extra and int(data.extra["heldout"][i]):
        from genlab.data.scenes import CAPTION_NAMES, HELDOUT_PAIRS

        pairs = zip(data.extra["obj_classes"][i].tolist(), data.extra["obj_colors"][i].tolist())
        names = [f"{COLORS[k]} {CAPTION_NAMES[c]}" for c, k in pairs if (c, k) in HELDOUT_PAIRS]
        out.append(f"held out of training: {', '.join(names)}")
    out += [f'"{texts[i]}"' for texts in data.extra_text.values()]
    return out


def _tile_panels(data: Dataset, i: int, scale: int) -> list[Image.Image]:
    """The enlarged image panels of example i: [x_src, x], [x with boxes, label map] or [x]."""
    x = _panel(data.x[i], scale)
    if "x_src" in data.extra:
        return [_panel(data.extra["x_src"][i], scale), x]
    if "boxes" in data.extra:
        draw = ImageDraw.Draw(x)
        for box in data.extra["boxes"][i].tolist():
            if box[0] >= 0:
                x0, y0, x1, y1 = (round(v * x.width) for v in box)
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255), width=max(1, scale // 2))
        panels = [x]
        if "label_map" in data.extra:
            lm = PALETTE[data.extra["label_map"][i].numpy() % len(PALETTE)]  # (H, W, 3)
            panels.append(_panel(torch.from_numpy(lm.transpose(2, 0, 1).copy()), scale))
        return panels
    return [x]


def draw_examples(data: Dataset, idx: list[int], ncol: int | None = None) -> Image.Image:
    """A sheet of tiles (one per index): images enlarged to about `TILE` pixels, conditions written under them."""
    if not data.is_image:
        return draw_points(data)
    font = _font()
    scale = max(1, TILE // data.x.shape[-1])
    tiles_panels = [_tile_panels(data, i, scale) for i in idx]
    width = sum(p.width for p in tiles_panels[0]) + GAP * (len(tiles_panels[0]) - 1)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [[ln for label in _labels(data, i) for ln in _wrap(measure, label, width, font)] for i in idx]
    height = tiles_panels[0][0].height + GAP + LINE * max((len(t) for t in texts), default=0)
    ncol = ncol or min(len(idx), max(1, round(math.sqrt(len(idx) * height / width))))
    nrow = math.ceil(len(idx) / ncol)
    head = LINE + GAP  # a title line: what the panels are
    legend = "label_map" in data.extra and len(data.classes) > 0
    legend_h = LINE * math.ceil(len(data.classes) / 5) + MARGIN if legend else 0
    sheet = Image.new("RGB", (MARGIN + ncol * (width + MARGIN), head + MARGIN + nrow * (height + MARGIN) + legend_h),
                      "white")
    draw = ImageDraw.Draw(sheet)
    panels = ("x_src | x" if "x_src" in data.extra else "x with boxes | label_map" if "boxes" in data.extra
              else "x")
    draw.text((MARGIN, MARGIN), f"{data.name}: {panels}; conditions under each example", fill=(0, 0, 0), font=font)
    if legend:  # which class each label-map colour stands for, 5 per line
        col_w = (sheet.width - MARGIN) // 5
        for c, name in enumerate(data.classes):
            r, k = divmod(c, 5)
            left, top = MARGIN + k * col_w, sheet.height - legend_h + r * LINE
            draw.rectangle((left, top + 2, left + 9, top + 11), fill=tuple(PALETTE[(c + 1) % len(PALETTE)].tolist()))
            draw.text((left + 14, top), f"label {c + 1}: {name}", fill=(0, 0, 0), font=font)
    for n, (panels, lines) in enumerate(zip(tiles_panels, texts)):
        r, c = divmod(n, ncol)
        left, top = MARGIN + c * (width + MARGIN), head + MARGIN + r * (height + MARGIN)
        for p in panels:
            sheet.paste(p, (left, top))
            left += p.width + GAP
        y = top + panels[0].height + GAP
        for line in lines:
            draw.text((MARGIN + c * (width + MARGIN), y), line, fill=(0, 0, 0), font=font)
            y += LINE
    return sheet


def draw_points(data: Dataset, side: int = 480, max_points: int = 20000) -> Image.Image:
    """A 2-D toy's points (the first `max_points`) as a scatter plot, its range written above it."""
    pts = data.x[:max_points].double().numpy()
    lo, hi = pts.min(0), pts.max(0)
    span = float((hi - lo).max()) or 1.0
    top, inner = 3 * LINE, side - 4 * LINE  # room for the title above the plot
    xy = (pts - (lo + hi) / 2) / span * inner + inner / 2  # (N, 2) in [0, inner]
    im = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(im)
    for px, py in xy.tolist():
        draw.point(((side - inner) / 2 + px, top + inner - py), fill=(31, 119, 180))
    draw.text((MARGIN, MARGIN), f"{data.name}: {len(pts):,} points, x in [{lo[0]:.2f}, {hi[0]:.2f}], "
              f"y in [{lo[1]:.2f}, {hi[1]:.2f}]", fill=(0, 0, 0), font=_font())
    return im


def pick_examples(data: Dataset, n: int, seed: int) -> tuple[list[int], int | None]:
    """n seeded example indices, and a column count. Datasets whose rows come in groups sharing one source
    (edges2fmnist-color: 4 colours per edge map) show whole groups, one per row."""
    g = torch.Generator().manual_seed(seed)
    if "domain" in data.extra:  # half from each domain: domain A on the first rows, B below
        half = max(1, n // 2)
        idx = [(data.extra["domain"] == d).nonzero().squeeze(1) for d in (0, 1)]
        picks = [ix[torch.randperm(len(ix), generator=g)[:half]].tolist() for ix in idx]
        return picks[0] + picks[1], min(half, 8)
    if data.name == "edges2fmnist-color":
        from genlab.data.derived import PAIR_COLORS

        groups = torch.randperm(len(data) // PAIR_COLORS, generator=g)[: max(1, n // PAIR_COLORS)]
        return [int(s) * PAIR_COLORS + k for s in groups.tolist() for k in range(PAIR_COLORS)], PAIR_COLORS
    return torch.randperm(len(data), generator=g)[:n].tolist(), None
