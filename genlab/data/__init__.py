"""Datasets, their specs, and the one place that maps uint8 pixels <-> float [-1, 1].

Every dataset loads into memory as a `Dataset`: images as uint8 `(N, C, H, W)`, 2-D toys as float32 `(N, 2)`,
with integer labels and other per-sample conditions where the data has them. `Dataset.spec` describes it
(`DataSpec`: sample shape, classes, condition kinds) without the tensors; families are built from a spec and
check it against what they need. `Dataset.batch(idx)` returns a dict batch whose keys are listed in
`BATCH_KEYS`. Names (see `DATASETS`):

- `fashion-mnist`, `mnist`: IDX files (optionally .gz) found in `--data-dir`, `$GENLAB_DATA`,
  `/usr/share/datasets/<name>` or `~/.cache/genlab/<name>`.
- `digits`: scikit-learn's embedded 8x8 digits (1,797 images; fixed 80/20 train/test split).
- `folder:PATH`: any folder of PNG/JPEG files, resized and centre-cropped; labels from sub-folder names.
- `ring8`, `grid25`, `swissroll`, `moons`: 2-D toy distributions (see `genlab.data.toys`).
- Derived from Fashion-MNIST in code, cached under `$GENLAB_CACHE/derived` (see `genlab.data.derived`,
  `genlab.data.scenes`, docs/data.md): `fmnist-color`, `edges2fmnist`, `edges2fmnist-color`, `unpaired:A,B`,
  `scenes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.data.images import load_digits, load_folder, load_idx_dataset
from genlab.data.toys import TOYS, make_toy
from genlab.errors import UsageError, unknown
from genlab.rng import derive_seed

# The keys a batch dict may carry; a dataset's spec lists which conditions (keys beside "x") it provides.
BATCH_KEYS = {
    "x": "the data: float (B, C, H, W) images in [-1, 1], or (B, D) points",
    "y": "class labels, int64 (B,)",
    "x_src": "paired source images (image-to-image), float (B, C', H, W) in [-1, 1]",
    "domain": "domain index of x (unpaired / multi-domain translation), int64 (B,)",
    "attrs": "binary attributes, float (B, A)",
    "text": "captions, a list of B strings",
    "text_emb": "caption token embeddings from a frozen text encoder, float (B, L, E)",
    "text_mask": "valid-token mask of text_emb, bool (B, L)",
    "boxes": "object boxes (x0, y0, x1, y1) in [0, 1], float (B, K, 4), with padding rows of -1",
    "masks": "instance masks, float (B, K, H, W) in {0, 1}",
    "label_map": "semantic label map, int64 (B, H, W): 0 background, class + 1 on objects",
    "color": "colour index of x (genlab.data.derived.COLORS), int64 (B,)",
    "obj_classes": "class of each object (scenes), int64 (B, K), -1 padding",
    "obj_colors": "colour index of each object (scenes), int64 (B, K), -1 padding",
    "obj_cells": "grid cell of each object (scenes: 0 top left, 1 top right, 2 bottom left, 3 bottom right), "
                 "int64 (B, K), -1 padding",
    "heldout": "1 where the sample holds a colour-class pair never seen in training (scenes test split), int64 (B,)",
}
# Conditions stored compactly (uint8) in `Dataset.extra` and converted to their batch dtype by `Dataset.batch`.
BATCH_DTYPES = {"masks": torch.float32, "label_map": torch.int64}

# What each dataset provides beside x, known without loading it (for error messages that list alternatives).
DATASET_CONDITIONS = {
    "fashion-mnist": ("y",),
    "mnist": ("y",),
    "digits": ("y",),
    "folder:PATH": ("y",),  # labels from sub-folder names
    **{toy: () for toy in TOYS},
    "fmnist-color": ("y", "color"),
    "edges2fmnist": ("y", "x_src"),
    "edges2fmnist-color": ("y", "x_src", "color"),
    "unpaired:A,B": ("y", "domain"),
    "scenes": ("y", "boxes", "masks", "label_map", "obj_classes", "obj_colors", "obj_cells", "heldout", "text"),
}


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]. The only place pixels become model inputs."""
    assert x.dtype == torch.uint8, f"expected uint8 pixels, got {x.dtype}"
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded): what a saved PNG would hold."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


@dataclass(frozen=True)
class DataSpec:
    """What a family is built from: one sample's shape, the classes, and the condition kinds (batch keys)."""

    name: str
    shape: tuple[int, ...]  # one sample of x: (C, H, W) or (D,)
    classes: tuple[str, ...] = ()  # class names (index = label); empty: no labels
    conditions: tuple[str, ...] = ()  # batch keys beside "x", e.g. ("y",)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "classes": list(self.classes),
                "conditions": list(self.conditions)}

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        return cls(d["name"], tuple(d["shape"]), tuple(d.get("classes", ())), tuple(d.get("conditions", ())))

    def describe(self) -> str:
        """One line for --dry-run: 'fashion-mnist: x (1, 28, 28); y (10 classes: T-shirt/top, ...)'."""
        parts = [f"x {tuple(self.shape)}"]
        for key in self.conditions:
            if key == "y":
                names = ", ".join(self.classes[:4]) + (", ..." if self.num_classes > 4 else "")
                parts.append(f"y ({self.num_classes} classes: {names})")
            else:
                parts.append(key)
        return f"{self.name}: " + "; ".join(parts)


def datasets_with(key: str) -> list[str]:
    """Dataset names whose spec carries condition `key`."""
    return [name for name, conds in DATASET_CONDITIONS.items() if key in conds]


def check_needs(family_name: str, needs, spec: DataSpec) -> None:
    """ValueError naming what `family_name` needs and `spec` lacks, with datasets that have it."""
    for key in needs:
        if key != "x" and key not in spec.conditions:
            others = datasets_with(key)
            what = BATCH_KEYS.get(key, key).split(",")[0]
            raise ValueError(f"{family_name} needs {what} ({key}); '{spec.name}' has none; "
                             f"datasets with it: {', '.join(others) if others else 'none yet'}")


@dataclass
class Dataset:
    name: str
    x: torch.Tensor  # uint8 (N, C, H, W) for images; float32 (N, D) for 2-D toys
    y: torch.Tensor | None = None  # int64 (N,) labels, or None
    classes: list[str] = field(default_factory=list)  # class names (index = label)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # other per-sample conditions (BATCH_KEYS)
    extra_text: dict[str, list[str]] = field(default_factory=dict)  # per-sample strings, e.g. {"text": captions}

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    @property
    def shape(self) -> list[int]:
        """Shape of one sample: [C, H, W] or [D]."""
        return list(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def spec(self) -> DataSpec:
        conditions = (("y",) if self.y is not None else ()) + tuple(self.extra) + tuple(self.extra_text)
        return DataSpec(self.name, tuple(self.shape), tuple(self.classes), conditions)

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor | list[str]]:
        """Samples at `idx` as a dict batch of model inputs: float [-1, 1] images (raw toy points), labels, ...

        uint8 images in `extra` become float [-1, 1]; keys of `BATCH_DTYPES` their batch dtype; strings of
        `extra_text` come as lists.
        """
        x = self.x[idx]
        out = {"x": to_float(x) if self.is_image else x.float()}
        if self.y is not None:
            out["y"] = self.y[idx]
        for key, v in self.extra.items():
            v = v[idx]
            if key in BATCH_DTYPES:
                out[key] = v.to(BATCH_DTYPES[key])
            else:
                out[key] = to_float(v) if v.dtype == torch.uint8 and v.dim() == 4 else v
        for key, texts in self.extra_text.items():
            out[key] = _take(texts, idx)
        return out

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) at `idx`: model inputs and labels (scripts and metrics; the loop uses `batch`)."""
        b = self.batch(idx)
        return b["x"], b.get("y")

    def subset(self, idx: torch.Tensor) -> Dataset:
        """The samples at `idx` (same name and class list)."""
        return Dataset(self.name, self.x[idx], self.y[idx] if self.y is not None else None, self.classes,
                       {k: v[idx] for k, v in self.extra.items()},
                       {k: _take(v, idx) for k, v in self.extra_text.items()})

    def keep_classes(self, labels: list[int]) -> Dataset:
        """Only the samples whose label is in `labels` (one-class training); the class list is unchanged."""
        if self.y is None:
            raise ValueError(f"'{self.name}' has no labels: data.classes needs a labelled dataset")
        bad = [c for c in labels if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"data.classes: {bad} not in 0..{self.num_classes - 1} ({', '.join(self.classes)})")
        return self.subset(torch.isin(self.y, torch.tensor(labels)).nonzero().squeeze(1))

    def holdout_split(self, fraction: float, part: str) -> Dataset:
        """A fixed, seeded `fraction` of the samples ('holdout') or the rest ('train'): data never trained on,
        e.g. to calibrate an anomaly threshold. The permutation depends only on the dataset's size."""
        if not 0 < fraction < 1:
            raise ValueError(f"data.holdout must be in (0, 1), got {fraction}")
        g = torch.Generator().manual_seed(derive_seed("holdout", self.name, len(self)))
        perm = torch.randperm(len(self), generator=g)
        k = max(1, round(fraction * len(self)))
        return self.subset(perm[:k].sort().values if part == "holdout" else perm[k:].sort().values)


def _take(items: list, idx) -> list:
    """`items` at `idx` (tensor indices or a boolean mask) as a list; a 0-d index gives the one item."""
    idx = torch.as_tensor(idx)
    if idx.dtype == torch.bool:
        idx = idx.nonzero().squeeze(1)
    return items[int(idx)] if idx.dim() == 0 else [items[i] for i in idx.tolist()]


IDX_DATASETS = {
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    "mnist": [str(i) for i in range(10)],
}

DERIVED = ["fmnist-color", "edges2fmnist", "edges2fmnist-color", "unpaired:A,B", "scenes"]
DATASETS = [*IDX_DATASETS, "digits", "folder:PATH", *TOYS, *DERIVED]


def is_dataset_name(name: str) -> bool:
    """Whether `name` names a dataset: one of `DATASETS`, or a parameterised one (folder:PATH, unpaired[:A,B])."""
    return name in DATASETS or name == "unpaired" or name.startswith(("folder:", "unpaired:"))


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str = "",
    image_size: int = 0,
    grayscale: bool = False,
    toy_size: int = 20000,
    seed: int = 0,
) -> Dataset:
    """Load dataset `name` ('train' or 'test' split) into memory."""
    if split not in ("train", "test"):
        raise unknown("split", split, ["train", "test"])
    if name in IDX_DATASETS:
        x, y = load_idx_dataset(name, split, data_dir)
        return Dataset(name, x, y, IDX_DATASETS[name])
    if name == "digits":
        x, y = load_digits(split)
        return Dataset(name, x, y, [str(i) for i in range(10)])
    if name.startswith("folder:"):
        x, y, classes = load_folder(name[len("folder:") :], image_size or 32, grayscale)
        return Dataset(name, x, y, classes)
    if name in TOYS:
        return Dataset(name, make_toy(name, toy_size, seed=(seed, split)))
    if name in DERIVED or name == "unpaired" or name.startswith("unpaired:"):
        # Fixed data (seed 0), whatever the run's seed: every run trains and is evaluated on the same set.
        try:
            return _load_derived(name, split, data_dir, image_size)
        except ValueError as e:
            raise UsageError(str(e)) from None
    raise unknown("dataset", name, DATASETS)


def _load_derived(name: str, split: str, data_dir: str, image_size: int) -> Dataset:
    from genlab.data import derived
    from genlab.data.scenes import scenes

    if name == "scenes":
        return scenes(split, size=image_size, data_dir=data_dir)
    if name == "unpaired" or name.startswith("unpaired:"):
        return derived.unpaired(name.partition(":")[2], split, data_dir=data_dir, name=name)
    if image_size not in (0, 32):
        raise ValueError(f"{name} is 32x32; data.image_size={image_size} applies to folder:PATH and scenes only")
    build = {"fmnist-color": derived.fmnist_color, "edges2fmnist": derived.edges2fmnist,
             "edges2fmnist-color": derived.edges2fmnist_color}[name]
    return build(split, data_dir=data_dir)
