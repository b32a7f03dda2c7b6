"""`scenes`: canvases of coloured Fashion-MNIST garments on a 2x2 grid, with layouts and captions.

Each scene holds 1-3 objects, one per cell of a 2x2 grid (at most `MAX_OBJECTS`). An object is a garment of
the split's Fashion-MNIST images, scaled to 0.6-1.0 of the cell, placed at a random offset inside its cell and
tinted with one of the eight `COLORS`. Objects never overlap. Per scene: the RGB canvas (black background),
per object its class, colour, cell, tight box and instance mask, a semantic label map (0 background, class+1)
and a caption from a few templates ("a red sneaker at the top left and a small blue bag at the bottom right").

Compositional generalisation: the colour-class pairs of `HELDOUT_PAIRS` never occur in the training split;
half of the test scenes (seeded) contain exactly one object with such a pair (`heldout` = 1), the other half
only pairs seen in training (`heldout` = 0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from genlab.data.derived import COLORS, FMNIST_CLASSES, Built, _rng, _source, cached, tint

MAX_OBJECTS = 3  # K: objects per scene at most (rows of boxes / masks / obj_*; padding -1 or 0)
CELLS = ("top left", "top right", "bottom left", "bottom right")  # cell index = 2 * row + column
SCENE_COUNTS = {"train": 20000, "test": 2000}
SCALE_RANGE = (0.6, 1.0)  # object side / cell side, uniform
SMALL_SCALE = 0.75  # objects below this scale are "small" in the caption
MASK_LEVEL = 24  # a resized garment pixel at or above this grey level is the object (holes then filled)
HELDOUT_FRACTION = 0.5  # test scenes with one held-out colour-class pair
# (class, colour) pairs absent from training: eight classes, eight colours, each once (Shirt, Ankle boot: none)
HELDOUT_PAIRS = (
    (0, COLORS.index("blue")),  # T-shirt/top
    (1, COLORS.index("red")),  # Trouser
    (2, COLORS.index("green")),  # Pullover
    (3, COLORS.index("yellow")),  # Dress
    (4, COLORS.index("pink")),  # Coat
    (5, COLORS.index("cyan")),  # Sandal
    (7, COLORS.index("purple")),  # Sneaker
    (8, COLORS.index("orange")),  # Bag
)
CAPTION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
# How one object and its cell read in a caption, and how the phrases join ("p1 and p2" / "p1, p2 and p3").
TEMPLATES = (
    ("{obj} at the {cell}", ", ", " and "),
    ("{cell}: {obj}", "; ", "; "),
    ("{obj} in the {cell} corner", ", ", " and "),
)


def check_size(size: int) -> int:
    """The canvas side: 0 means 64; otherwise an even number in 16..128 (the 2x2 grid of cells)."""
    size = size or 64
    if not (16 <= size <= 128 and size % 2 == 0):
        raise ValueError(f"scenes: data.image_size must be an even number of pixels from 16 to 128 (a 2x2 grid "
                         f"of garments; 0 means 64), e.g. 32 or 64; got {size}")
    return size


def describe_object(cls: int, color: int, small: bool) -> str:
    """'a small red sneaker', 'an orange bag'."""
    words = ("small " if small else "") + f"{COLORS[color]} {CAPTION_NAMES[cls]}"
    return ("an " if words[0] in "aeiou" else "a ") + words


def make_caption(objects: list[tuple[int, int, int, bool]], template: int = 0) -> str:
    """Caption of objects (class, colour, cell, small) in the given order, from `TEMPLATES[template]`."""
    form, sep, last = TEMPLATES[template]
    phrases = [form.format(obj=describe_object(c, k, s), cell=CELLS[cell]) for c, k, cell, s in objects]
    return phrases[0] if len(phrases) == 1 else sep.join(phrases[:-1]) + last + phrases[-1]


def _garments(grey28: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Garments uint8 (n, 28, 28) resized to side x side (bilinear, antialiased): (grey uint8, mask bool), each
    (n, side, side). Grey is 0 outside the mask and >= 1 inside (the silhouette's holes are filled), so a
    canvas is non-black exactly on its objects' masks."""
    from scipy.ndimage import binary_fill_holes

    t = torch.from_numpy(grey28).float()[:, None]  # (n, 1, 28, 28)
    g = F.interpolate(t, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    g = g[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()  # (n, side, side)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # fill each image's holes on its own
    mask = binary_fill_holes(g >= MASK_LEVEL, structure=in_plane)
    return np.where(mask, np.maximum(g, 1), 0).astype(np.uint8), mask


def build_scenes(grey: np.ndarray, labels: np.ndarray, n: int, size: int, rng: np.random.Generator,
                 heldout_scenes: bool) -> Built:
    """n scenes of `size` x `size` from garments `grey` uint8 (M, 28, 28) with `labels` (M,).

    Training scenes (`heldout_scenes` False) use only the pairs outside `HELDOUT_PAIRS`; with it, a
    `HELDOUT_FRACTION` of the scenes get one held-out pair on one of their objects. Two passes: the layout
    draws every random choice scene by scene; the rendering then resizes the garments in batches by size.
    """
    K, cell = MAX_OBJECTS, size // 2
    obj = {key: np.full((n, K), -1, np.int64) for key in ("obj_classes", "obj_colors", "obj_cells")}
    heldout = np.zeros(n, np.int64)
    captions = []
    placed = []  # (scene, slot, source index, side, top, left) per object
    by_class = [np.flatnonzero(labels == c) for c in range(len(FMNIST_CLASSES))]
    seen = [(c, k) for c in range(len(FMNIST_CLASSES)) for k in range(len(COLORS)) if (c, k) not in HELDOUT_PAIRS]
    # 1. layout
    for i in range(n):
        k = int(rng.integers(1, K + 1))
        cells = np.sort(rng.choice(4, k, replace=False)).tolist()  # objects in reading order of their cells
        pairs = [seen[j] for j in rng.integers(0, len(seen), k)]
        if heldout_scenes and rng.random() < HELDOUT_FRACTION:
            pairs[int(rng.integers(k))] = HELDOUT_PAIRS[int(rng.integers(len(HELDOUT_PAIRS)))]
            heldout[i] = 1
        scales = rng.uniform(*SCALE_RANGE, k).tolist()
        described = []
        for j, (cell_idx, (c, color), scale) in enumerate(zip(cells, pairs, scales)):
            side = max(4, round(scale * cell))
            src = int(by_class[c][rng.integers(len(by_class[c]))])
            oy, ox = rng.integers(0, cell - side + 1, 2).tolist()
            placed.append((i, j, src, side, (cell_idx // 2) * cell + oy, (cell_idx % 2) * cell + ox))
            obj["obj_classes"][i, j], obj["obj_colors"][i, j], obj["obj_cells"][i, j] = c, color, cell_idx
            described.append((c, color, cell_idx, scale < SMALL_SCALE))
        captions.append(make_caption(described, int(rng.integers(len(TEMPLATES)))))
    # 2. rendering, one batch of garments per object size
    x = np.zeros((n, 3, size, size), np.uint8)
    masks = np.zeros((n, K, size, size), np.uint8)
    label_map = np.zeros((n, size, size), np.uint8)
    boxes = np.full((n, K, 4), -1.0, np.float32)
    placed = np.array(placed, np.int64).reshape(-1, 6)
    for side in np.unique(placed[:, 3]).tolist():
        group = placed[placed[:, 3] == side]
        scene, slot = group[:, 0], group[:, 1]
        g, m = _garments(grey[group[:, 2]], side)
        rgb = tint(g, obj["obj_colors"][scene, slot])  # (n, 3, side, side)
        rows, cols = m.any(2), m.any(1)  # (n, side): which rows / columns of each garment hold the object
        y0, y1 = rows.argmax(1), side - rows[:, ::-1].argmax(1)  # tight box, end exclusive
        x0, x1 = cols.argmax(1), side - cols[:, ::-1].argmax(1)
        for r, (i, j, _, _, top, left) in enumerate(group.tolist()):
            region = (slice(top, top + side), slice(left, left + side))
            x[i, :, region[0], region[1]] = rgb[r]
            masks[i, j][region] = m[r]
            label_map[i][region][m[r]] = obj["obj_classes"][i, j] + 1
            boxes[i, j] = [(left + x0[r]) / size, (top + y0[r]) / size, (left + x1[r]) / size, (top + y1[r]) / size]
    tensors = {"x": x, "y": obj["obj_classes"][:, 0].copy(), "boxes": boxes, "masks": masks,
               "label_map": label_map, **obj, "heldout": heldout}
    return {k: torch.from_numpy(v) for k, v in tensors.items()}, {"text": captions}


def scenes(split: str = "train", *, size: int = 64, n: int | None = None, data_dir: str = "", seed: int = 0,
           cache: bool = True):
    """`scenes` as a `Dataset`: x uint8 (N, 3, S, S); `y` the first object's class; extra `boxes` float
    (N, K, 4) (-1 rows pad), `masks` uint8 (N, K, S, S) {0, 1} (float in batches), `label_map` uint8 (N, S, S)
    (int64 in batches), `obj_classes` / `obj_colors` / `obj_cells` int64 (N, K) (-1 pad), `heldout` int64 (N,);
    captions in `extra_text["text"]`. N = 20,000 train / 2,000 test unless `n` is given; S = `size`."""
    from genlab.data import Dataset

    size = check_size(size)
    n = n or SCENE_COUNTS[split]

    def build() -> Built:
        grey, labels = _source(split, data_dir, None)
        return build_scenes(grey, labels, n, size, _rng("scenes", split, seed), heldout_scenes=split == "test")

    params = {"size": size, "n": n, "seed": seed}
    t, meta = cached("scenes", split, params, build, data_dir=data_dir, cache=cache)
    extra = {k: t[k] for k in ("boxes", "masks", "label_map", "obj_classes", "obj_colors", "obj_cells", "heldout")}
    return Dataset("scenes", t["x"], t["y"], list(FMNIST_CLASSES), extra, {"text": list(meta["text"])})
