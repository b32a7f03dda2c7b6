"""Datasets, and the one place that maps uint8 pixels <-> float [-1, 1].

Every dataset loads into memory as a `Dataset`: images as uint8 `(N, C, H, W)`, 2-D toys as float32 `(N, 2)`,
with integer labels where the data has them. Names (see `DATASETS`):

- `fashion-mnist`, `mnist`: IDX files (optionally .gz) found in `--data-dir`, `$GENLAB_DATA`,
  `/usr/share/datasets/<name>` or `~/.cache/genlab/<name>`.
- `digits`: scikit-learn's embedded 8x8 digits (1,797 images; fixed 80/20 train/test split).
- `folder:PATH`: any folder of PNG/JPEG files, resized and centre-cropped; labels from sub-folder names.
- `ring8`, `grid25`, `swissroll`, `moons`: 2-D toy distributions (see `genlab.data.toys`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.data.images import load_digits, load_folder, load_idx_dataset
from genlab.data.toys import TOYS, make_toy
from genlab.errors import unknown
from genlab.rng import derive_seed


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]. The only place pixels become model inputs."""
    assert x.dtype == torch.uint8, f"expected uint8 pixels, got {x.dtype}"
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded): what a saved PNG would hold."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


@dataclass
class Dataset:
    name: str
    x: torch.Tensor  # uint8 (N, C, H, W) for images; float32 (N, D) for 2-D toys
    y: torch.Tensor | None = None  # int64 (N,) labels, or None
    classes: list[str] = field(default_factory=list)  # class names (index = label)

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

    def __len__(self) -> int:
        return self.x.shape[0]

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples at `idx` as model inputs: float [-1, 1] images (or raw toy points) and labels."""
        x = self.x[idx]
        x = to_float(x) if self.is_image else x.float()
        return x, (self.y[idx] if self.y is not None else None)

    def subset(self, idx: torch.Tensor) -> Dataset:
        """The samples at `idx` (same name and class list)."""
        return Dataset(self.name, self.x[idx], self.y[idx] if self.y is not None else None, self.classes)

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


IDX_DATASETS = {
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    "mnist": [str(i) for i in range(10)],
}

DATASETS = [*IDX_DATASETS, "digits", "folder:PATH", *TOYS]


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
    raise unknown("dataset", name, DATASETS)
