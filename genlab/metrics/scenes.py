"""Object-level check of generated `scenes`: is each requested garment in its cell, of the right class and colour,
and does every cell that should be empty stay empty?

The analogue of pix2pix's "FCN score" (Isola et al. 2017, Sec. 4.2): a network trained on *real* data reads the
generated image, and its agreement with the requested layout is the score. Here the network is the bundled
`scenes-cell-net`, a classifier of one cell of the 2x2 grid (32x32 crops; 11 classes = 10 garments + "empty";
a colour head over the 8 `COLORS`). Its accuracy on real test cells bounds what a generator can score; it is
recorded separately for seen and held-out colour-class pairs (`HELDOUT_PAIRS` of genlab/data/scenes.py).

Stages as elsewhere in genlab.metrics: `cell_crops(images)` -> `predict_cells` -> `object_accuracy` (pure).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GRID = 2  # cells per side of a scene
NUM_CELLS = GRID * GRID  # cell index = 2 * row + column (genlab.data.scenes.CELLS)
EMPTY = 10  # the cell classifier's class for "no garment"
CELL_SIZE = 32  # the cell classifier's input side


def cell_crops(images: torch.Tensor, size: int = CELL_SIZE) -> torch.Tensor:
    """uint8 scenes (N, 3, S, S) -> uint8 cells (N * 4, 3, size, size), scene-major (cell i of scene n at 4n + i).

    A 64x64 scene's cells are 32x32 already; other sizes are resized (bilinear, antialiased) to `size`.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError("cell_crops expects uint8 scenes (N, 3, S, S)")
    n, c, h, w = images.shape
    if h != w or h % GRID:
        raise ValueError(f"cell_crops expects square scenes with an even side; got {h}x{w}")
    s = h // GRID
    cells = images.reshape(n, c, GRID, s, GRID, s).permute(0, 2, 4, 1, 3, 5)  # (N, row, col, C, s, s)
    cells = cells.reshape(n * NUM_CELLS, c, s, s)
    if s != size:
        t = F.interpolate(
            cells.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        cells = t.round().clamp(0, 255).to(torch.uint8)
    return cells.contiguous()


def cell_targets(obj_classes: torch.Tensor, obj_colors: torch.Tensor, obj_cells: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-cell targets from a layout (N, K) each (-1 padding): (class (N, 4) with `EMPTY` for empty cells,
    colour (N, 4) with -1 for empty cells)."""
    obj_classes, obj_colors, obj_cells = (
        torch.as_tensor(t).long() for t in (obj_classes, obj_colors, obj_cells)
    )
    n = obj_classes.shape[0]
    cls = torch.full((n, NUM_CELLS), EMPTY, dtype=torch.long)
    col = torch.full((n, NUM_CELLS), -1, dtype=torch.long)
    valid = obj_cells >= 0
    rows = torch.arange(n)[:, None].expand_as(obj_cells)
    cls[rows[valid], obj_cells[valid]] = obj_classes[valid]
    col[rows[valid], obj_cells[valid]] = obj_colors[valid]
    return cls, col


def heldout_cells(cell_classes: torch.Tensor, cell_colors: torch.Tensor, pairs) -> torch.Tensor:
    """bool (N, 4): cells whose (class, colour) is one of `pairs` (the held-out combinations)."""
    out = torch.zeros_like(cell_classes, dtype=torch.bool)
    for c, k in pairs:
        out |= (cell_classes == c) & (cell_colors == k)
    return out


@torch.no_grad()
def predict_cells(evaluator, images: torch.Tensor, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The cell classifier's (class (N, 4), colour (N, 4)) predictions for uint8 scenes (N, 3, S, S)."""
    from genlab.metrics.evaluators import extract

    out = extract(evaluator, cell_crops(images, evaluator.image_size), batch_size=batch_size)
    n = images.shape[0]
    return (out["logits"].argmax(1).reshape(n, NUM_CELLS).numpy(),
            out["color_logits"].argmax(1).reshape(n, NUM_CELLS).numpy())  # fmt: skip


def object_accuracy(pred_classes, pred_colors, obj_classes, obj_colors, obj_cells) -> dict[str, float]:
    """The object-level scores of scenes against the layouts they were asked for.

    `pred_classes`, `pred_colors`: (N, 4) cell predictions; the layout: (N, K) each, -1 padding. Returns
    - `obj_class_acc`: requested objects whose cell is classified as the requested garment;
    - `obj_color_acc`: requested objects whose cell's colour is the requested colour;
    - `obj_acc`: both right;
    - `empty_acc`: cells asked to stay empty that are classified as empty (NaN if the layouts fill every cell).
    """
    cls, col = cell_targets(obj_classes, obj_colors, obj_cells)
    pc, pk = torch.as_tensor(np.asarray(pred_classes)).long(), torch.as_tensor(np.asarray(pred_colors)).long()
    if pc.shape != cls.shape or pk.shape != cls.shape:
        raise ValueError(
            f"predictions {tuple(pc.shape)} / {tuple(pk.shape)} do not match {len(cls)} layouts of "
            f"{NUM_CELLS} cells"
        )
    occupied = cls != EMPTY
    ok_cls, ok_col = (pc == cls)[occupied], (pk == col)[occupied]
    empty = ~occupied
    return {
        "obj_class_acc": float(ok_cls.double().mean()) if occupied.any() else float("nan"),
        "obj_color_acc": float(ok_col.double().mean()) if occupied.any() else float("nan"),
        "obj_acc": float((ok_cls & ok_col).double().mean()) if occupied.any() else float("nan"),
        "empty_acc": float((pc[empty] == EMPTY).double().mean()) if empty.any() else float("nan"),
    }


def scene_object_accuracy(
    evaluator, images: torch.Tensor, obj_classes, obj_colors, obj_cells
) -> dict[str, float]:
    """`object_accuracy` of uint8 scenes (N, 3, S, S) read by the cell classifier (`scenes-cell-net`)."""
    pc, pk = predict_cells(evaluator, images)
    return object_accuracy(pc, pk, obj_classes, obj_colors, obj_cells)


class SceneCLIP:
    """The domain CLIP of `scenes` for `genlab.metrics.clip_score.clip_score`: the `scenes-clip` image tower and
    the frozen sentence encoder it was trained against (all-MiniLM-L6-v2). Not OpenAI's CLIP."""

    def __init__(self, image_encoder, text_encoder):
        self.image_encoder, self.text_encoder = image_encoder, text_encoder

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.encode_image(images)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoder.encode(list(texts))[2]


def load_scenes_clip(name: str = "scenes-clip") -> SceneCLIP:
    """`SceneCLIP` from the bundled weights and the text encoder named in their record."""
    from genlab.metrics.evaluators import load_evaluator
    from genlab.text import load_text_encoder

    image = load_evaluator(name)
    return SceneCLIP(image, load_text_encoder(image.meta["text_encoder"]))
