"""Sampling conditions from the command line: prompts, a prompts file, an image + mask to inpaint, a layout.

`genlab sample RUN --prompt TEXT | --prompts FILE | --image PNG --mask PNG | --layout JSON` builds the condition
dict a family's `sample` takes (the keys of genlab.data.BATCH_KEYS: `text`, `boxes`, `obj_classes`,
`obj_colors`; inpainting `x_src` and `inpaint_mask`). Whether the run accepts them is the family's check (its
errors name the problem); this module checks the files themselves.

Layout JSON: a list of objects, e.g.
    [{"box": [0.05, 0.05, 0.45, 0.45], "class": "sneaker", "color": "red"},
     {"box": [0.55, 0.5, 0.95, 0.95], "class": "bag", "color": "blue"}]
with boxes (x0, y0, x1, y1) as fractions of the canvas, classes by name (the run's class names, or the caption
names such as "t-shirt") or index, colours by name (genlab.data.derived.COLORS) or index.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genlab.data import to_float
from genlab.data.derived import COLORS
from genlab.data.png import load_png
from genlab.errors import UsageError


def read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines are skipped; an empty file is an error."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--prompts {path}: no such file (one prompt per line)")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"--prompts {path} holds no prompts (one prompt per line)")
    return prompts


def inpaint_inputs(image: str, mask: str) -> dict:
    """{"x_src": (1, C, H, W) in [-1, 1], "inpaint_mask": (1, 1, H, W)} from two PNGs; white mask pixels = generate."""
    if (image is None) != (mask is None):
        raise UsageError("inpainting needs both --image PNG (the picture) and --mask PNG (white = fill in)")
    x = load_png(image)
    m = load_png(mask)
    m = (m.float().mean(0, keepdim=True) > 127).float()  # (1, H, W)
    if not m.any():
        raise UsageError(f"--mask {mask} is all black: paint the region to fill in white")
    return {"x_src": to_float(x)[None], "inpaint_mask": m[None]}


def _index(value, names: list[str], what: str, flag: str = "--layout") -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(names):
            raise UsageError(f"{flag}: {what} index {value} is not in 0..{len(names) - 1}")
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        for i, name in enumerate(names):
            if key in (name.lower(), name.lower().split("/")[0]):  # "T-shirt/top" also answers to "t-shirt"
                return i
    raise UsageError(f"{flag}: unknown {what} {value!r}; expected one of: {', '.join(names)} (or an index)")


def layout_inputs(text: str, class_names: list[str], n: int) -> dict:
    """{"boxes" (n, K, 4), "obj_classes" (n, K), "obj_colors" (n, K)} from a JSON file or an inline JSON list."""
    source = Path(text)
    try:
        raw = json.loads(source.read_text(encoding="utf-8") if source.is_file() else text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--layout: not valid JSON ({e}); pass a file or a list such as "
                         '[{"box": [0.1, 0.1, 0.4, 0.4], "class": "sneaker", "color": "red"}]') from None
    if not isinstance(raw, list) or not raw or not all(isinstance(o, dict) for o in raw):
        raise UsageError("--layout must be a non-empty JSON list of objects {\"box\": [x0, y0, x1, y1], \"class\": ..., "
                         "\"color\": ...}")
    boxes, classes, colors = [], [], []
    for i, obj in enumerate(raw):
        box = obj.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise UsageError(f"--layout object {i}: \"box\" must be [x0, y0, x1, y1] as fractions of the canvas")
        if any(v < 0 or v > 1 for v in box):
            raise UsageError(f"--layout object {i}: box {box} lies outside the canvas; coordinates are fractions in [0, 1]")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise UsageError(f"--layout object {i}: box {box} is empty (needs x0 < x1 and y0 < y1)")
        if "class" not in obj:
            raise UsageError(f"--layout object {i} has no \"class\"")
        boxes.append([float(v) for v in box])
        classes.append(_index(obj["class"], class_names, "class"))
        colors.append(_index(obj["color"], list(COLORS), "color") if "color" in obj else -1)
    b, c, k = torch.tensor([boxes]), torch.tensor([classes]), torch.tensor([colors])
    return {"boxes": b.expand(n, -1, -1), "obj_classes": c.expand(n, -1), "obj_colors": k.expand(n, -1)}


def color_index(value: str) -> int:
    """--color NAME or INDEX -> colour index (genlab.data.derived.COLORS)."""
    return _index(int(value) if value.isdigit() else value, list(COLORS), "color", "--color")
