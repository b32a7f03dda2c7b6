"""Bundled domain evaluators: small CNN classifiers whose penultimate layer is the feature space for FID, KID and
precision/recall on the offline datasets, and whose logits give the Inception Score analogue and conditional
accuracy.

The Inception-v3 network behind the standard FID was trained on ImageNet photographs; on 28x28 grayscale clothing
or 8x8 digits its features mostly describe resampling artefacts. A classifier trained on the domain itself is the
usual substitute in the generative-modelling literature for MNIST-like data (e.g. the "MNIST FID" / LeNet
features of many GAN and VAE papers). Its numbers are comparable only with numbers from the *same* weights, so
the SHA-256 of the weights file keys every cached reference statistic (`weights_hash`).

Weights live in `genlab/metrics/weights/<name>.safetensors` with a `<name>.json` record (architecture kwargs,
dataset, test accuracy, SHA-256, training command). They are produced by `python scripts/train_evaluator.py NAME`.
Inputs are uint8 images `(B, C, H, W)`, as saved PNGs would hold them; conversion to [-1, 1] happens inside.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from genlab.data import to_float
from genlab.errors import GenlabError, unknown
from genlab.fileio import sha256_file  # noqa: F401  (also imported from here)

FORMAT = "genlab-evaluator/1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class EvaluatorSpec:
    """What an evaluator name means: its dataset and input geometry (architecture kwargs live in the JSON)."""

    dataset: str  # genlab dataset name it is trained on
    in_channels: int  # 1 for the grayscale datasets
    image_size: int  # H = W of its input
    num_classes: int
    hflip: bool  # horizontal-flip augmentation while training (not for digits: a mirrored 2 is not a 2)
    shift: int = 2  # random-shift augmentation while training, in pixels
    widths: tuple[int, ...] = (32, 64, 128)  # channels per stage; 2x2 max-pool between stages
    convs: tuple[int, ...] = (1, 2, 2)  # 3x3 convs per stage (one at full resolution keeps CPU training fast)
    feature_dim: int = 256  # width of the penultimate `features` layer
    num_colors: int = 0  # a second head over the same features: colour classes (0: no colour head)
    source: str = "images"  # "images": the dataset's x; "scene-cells": the 2x2 cells of `scenes` (see metrics/scenes.py)
    downsample: int = 1  # average-pool the input by this factor first (a 64x64 scene read at 32x32)
    embedding: bool = False  # the "classifier" is a projection into the text space: unit-norm features, no logits
    recolor: bool = False  # re-tint each training garment with a random colour (decorrelates class and colour)


EVALUATORS: dict[str, EvaluatorSpec] = {
    "fmnist-net": EvaluatorSpec("fashion-mnist", 1, 28, 10, hflip=True),
    "mnist-net": EvaluatorSpec("mnist", 1, 28, 10, hflip=False),
    "digits-net": EvaluatorSpec("digits", 1, 8, 10, hflip=False, shift=1, convs=(1, 1, 1)),
    # class (10) and colour (8) of tinted garments
    # (narrower than fmnist-net: trained on a shared 2-core CPU; see docs/evaluators.md)
    "fmnist-color-net": EvaluatorSpec("fmnist-color", 3, 32, 10, hflip=True, widths=(16, 32, 64), num_colors=8),
    # one cell of a 64x64 scene (32x32): garment class or 10 = empty, and the garment's colour
    # (recolor: the training scenes never pair some classes with some colours, HELDOUT_PAIRS; without it the
    # class head learns those gaps and misreads held-out pairs)
    "scenes-cell-net": EvaluatorSpec("scenes", 3, 32, 11, hflip=True, widths=(16, 32, 64), num_colors=8,
                                     source="scene-cells", recolor=True),
    # image tower of a domain CLIP: 64x64 scene (read at 32x32) -> 384-d unit vector in all-MiniLM-L6-v2's space
    "scenes-clip": EvaluatorSpec("scenes", 3, 64, 384, hflip=False, shift=1, widths=(16, 32, 64),
                                 downsample=2, embedding=True, source="clip"),
}


class Evaluator(nn.Module):
    """Compact VGG-style CNN: stages of [3x3 conv, BatchNorm, ReLU] x n with 2x2 max-pool between stages, global
    average pool, a `features` layer (Linear + ReLU, dim `feature_dim`), then a linear classifier.

    BatchNorm runs on its stored statistics in eval mode, so an image's features never depend on its batch.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (32, 64, 128),
        convs: tuple[int, ...] | list[int] = (1, 2, 2),
        feature_dim: int = 256,
        dropout: float = 0.2,
        num_colors: int = 0,
        downsample: int = 1,
        embedding: bool = False,
    ):
        super().__init__()
        if len(widths) != len(convs):
            raise ValueError(f"widths {list(widths)} and convs {list(convs)} must have one entry per stage")
        self.arch = {  # the JSON record's "arch": Evaluator(**arch) rebuilds this network
            "in_channels": in_channels, "image_size": image_size, "num_classes": num_classes, "widths": list(widths),
            "convs": list(convs), "feature_dim": feature_dim, "dropout": dropout,
        }  # fmt: skip
        # only when set, so the records of the single-head classifiers stay as they were
        extra = {"num_colors": num_colors != 0, "downsample": downsample != 1, "embedding": embedding}
        self.arch.update({k: v for k, v in (("num_colors", num_colors), ("downsample", downsample),
                                            ("embedding", embedding)) if extra[k]})  # fmt: skip
        self.downsample, self.embedding = downsample, embedding
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.stages = nn.ModuleList()
        c_in = in_channels
        for width, n in zip(widths, convs):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                c_in = width
            self.stages.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2)
        self.feature_layer = nn.Sequential(nn.Linear(c_in, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, num_classes)
        # Second head (colour), a linear classifier on the same features: one feature space serves both labels.
        self.color_classifier = nn.Linear(feature_dim, num_colors) if num_colors else None

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError unless `x` is uint8 (B, in_channels, image_size, image_size)."""
        want = f"uint8 images (B, {self.in_channels}, {self.image_size}, {self.image_size})"
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"evaluator expects {want}; got shape {shape}")
        if x.dtype != torch.uint8:
            raise ValueError(
                f"evaluator expects {want}; got dtype {x.dtype}. Quantize float [-1, 1] images with "
                "genlab.data.to_uint8 first (as saved PNG files would be)"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"evaluator expects {want}; got {x.shape[1]} channels (shape {tuple(x.shape)})")
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"evaluator expects {want}; got spatial size {tuple(x.shape[2:])}. Use the evaluator trained on "
                "this dataset's resolution"
            )

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs for float images in [-1, 1]: [(B, widths[0], H, W), (B, widths[1], H/2, W/2), ...]."""
        maps = []
        if self.downsample > 1:
            x = nn.functional.avg_pool2d(x, self.downsample)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            maps.append(x)
        return maps

    def forward_float(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, D), logits (B, C)) for float images in [-1, 1] (training; LPIPS-style uses)."""
        h = self.feature_maps(x)[-1].mean(dim=(2, 3))  # (B, widths[-1])
        f = self.feature_layer(h)  # (B, D)
        return f, self.classifier(self.dropout(f))

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"features" (B, D), "logits" (B, C), and "color_logits" (B, K) with a colour head} for float images in
        [-1, 1] (training)."""
        f, logits = self.forward_float(x)
        out = {"features": f, "logits": logits}
        if self.color_classifier is not None:
            out["color_logits"] = self.color_classifier(self.dropout(f))
        return out

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, C, H, W) -> `forward_heads` (features, class logits, colour logits if any) in one pass; for an
        embedding network {"features": the unit-norm embedding (B, num_classes)}."""
        out = self.forward_heads(self._prepare(x))
        if self.embedding:
            return {"features": nn.functional.normalize(out["logits"], dim=1)}
        return out

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> unit-norm embedding (B, D) of an embedding network (a domain CLIP's image tower)."""
        if not self.embedding:
            raise ValueError("encode_image needs an embedding evaluator (e.g. scenes-clip)")
        return self.outputs(x)["features"]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return to_float(x.to(self.classifier.weight.device))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) -> (features (B, D), logits (B, num_classes)) in one pass."""
        return self.forward_float(self._prepare(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> penultimate features (B, D)."""
        return self.features_and_logits(x)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> class logits (B, num_classes)."""
        return self.features_and_logits(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


# ---------------------------------------------------------------------------------------------------------------
# Weights files


def _spec(name: str) -> EvaluatorSpec:
    if name not in EVALUATORS:
        raise unknown("evaluator", name, EVALUATORS)
    return EVALUATORS[name]


def weights_paths(name: str, weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(`<name>.safetensors`, `<name>.json`) in `weights_dir` (default: the bundled genlab/metrics/weights)."""
    _spec(name)
    d = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return d / f"{name}.safetensors", d / f"{name}.json"


def read_state_dict(path: str | Path, what: str, hint: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch zip `.pth` state dict, read without running any code.

    For third-party weights (FID Inception, LPIPS) distributed as `.pth`. A GenlabError names the file, the
    problem and `hint` (where to get the right file).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            # The only torch.load in genlab. weights_only=True selects torch's restricted unpickler: it rebuilds
            # tensors and plain containers and refuses every other global, so a crafted file cannot run code.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # SafetensorError, OSError, EOFError, the unpickler's refusal, ...; all become GenlabError
        text = str(e).strip()
        if "weights only" in text.lower() or "weights_only" in text:  # the restricted unpickler refused a global
            raise GenlabError(
                f"refusing to read the {what} file {path}: it holds Python objects other than tensors, and "
                f"unpickling them could run code. {hint}"
            ) from None
        first_line = text.splitlines()[0] if text else ""
        raise GenlabError(
            f"cannot read the {what} file {path} (corrupt or truncated?): {type(e).__name__}: {first_line}. {hint}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise GenlabError(f"the {what} file {path} is not a state dict (a mapping of names to tensors). {hint}")
    return state


def _require(name: str, weights_dir) -> tuple[Path, Path]:
    tensors, record = weights_paths(name, weights_dir)
    for p in (tensors, record):
        if not p.is_file():
            raise GenlabError(
                f"evaluator '{name}' has no weights: {p} is missing. Train it with "
                f"`python scripts/train_evaluator.py {name}` (needs the '{EVALUATORS[name].dataset}' dataset), "
                f"or choose a trained evaluator"
            )
    return tensors, record


def weights_hash(name: str, weights_dir: str | Path | None = None) -> str:
    """SHA-256 of the evaluator's weights file: the key of cached reference statistics."""
    tensors, _ = _require(name, weights_dir)
    return sha256_file(tensors)


def read_record(name: str, weights_dir: str | Path | None = None) -> dict:
    """The evaluator's JSON record (architecture, dataset, test accuracy, sha256, training command)."""
    _, record = _require(name, weights_dir)
    try:
        meta = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        raise GenlabError(f"evaluator record {record} is unreadable: {e}; retrain with "
                          f"`python scripts/train_evaluator.py {name}`") from None  # fmt: skip
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GenlabError(f"{record} is not a genlab evaluator record (expected format {FORMAT!r})")
    return meta


def load_evaluator(name: str, *, weights_dir: str | Path | None = None, device: str | torch.device = "cpu") -> Evaluator:
    """The trained evaluator `name` in eval mode; checks the weights file against the SHA-256 in its record."""
    tensors_path, _ = _require(name, weights_dir)
    meta = read_record(name, weights_dir)
    digest = sha256_file(tensors_path)
    if digest != meta.get("sha256"):
        raise GenlabError(
            f"{tensors_path} does not match its record (SHA-256 {digest[:12]}... != {str(meta.get('sha256'))[:12]}...): "
            f"the file is corrupt or was replaced; retrain with `python scripts/train_evaluator.py {name}`"
        )
    try:
        state = load_file(str(tensors_path))
    except (SafetensorError, OSError) as e:
        raise GenlabError(f"cannot read {tensors_path}: {e}") from None
    model = Evaluator(**meta["arch"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GenlabError(
            f"{tensors_path} does not fit the architecture in its record: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.name, model.meta = name, meta
    return model.to(device).eval().requires_grad_(False)


def save_evaluator(model: Evaluator, name: str, info: dict, weights_dir: str | Path | None = None) -> Path:
    """Write `<name>.safetensors` then `<name>.json` (each temp file + os.replace); returns the JSON path.

    `info` adds to the record (test accuracy, training command, ...); the JSON is written last, so a crash
    leaves either the old pair or a tensor file without a matching record (refused by `load_evaluator`).
    """
    spec = _spec(name)
    tensors_path, record_path = weights_paths(name, weights_dir)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = tensors_path.with_name(f".{tensors_path.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"format": FORMAT, "name": name})
    os.chmod(tmp, 0o644)
    os.replace(tmp, tensors_path)
    meta = {"format": FORMAT, "name": name, "dataset": spec.dataset, "arch": model.arch, **info}
    meta["sha256"] = sha256_file(tensors_path)
    tmp = record_path.with_name(f".{record_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, record_path)
    return record_path


# ---------------------------------------------------------------------------------------------------------------
# Batched extraction


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 500, progress: bool | None = None) -> dict:
    """Features and logits of uint8 images (N, C, H, W) in batches: {"features": float32 (N, D), "logits": (N, K)},
    plus "color_logits" (N, 8) for an evaluator with a colour head.

    `extractor` is any module with `features_and_logits(uint8 batch)` (the FID Inception) or `outputs(uint8
    batch) -> dict` (an `Evaluator`).
    It runs in eval mode under no_grad; its previous mode is restored. A progress bar shows when N > 5,000
    (or when `progress=True`). Results are on the CPU.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"extract expects uint8 images (N, C, H, W); got {desc}. Quantize with genlab.data.to_uint8")
    if images.shape[0] == 0:
        raise ValueError("extract got 0 images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    n = images.shape[0]
    was_training = extractor.training
    extractor.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        show = progress if progress is not None else n > 5000
        with tqdm(total=n, desc="features", unit="img", disable=not show, leave=False) as bar:
            for start in range(0, n, batch_size):
                batch = images[start : start + batch_size]
                if hasattr(extractor, "outputs"):
                    out = extractor.outputs(batch)
                else:
                    f, lg = extractor.features_and_logits(batch)
                    out = {"features": f, "logits": lg}
                for k, v in out.items():
                    parts.setdefault(k, []).append(v.float().cpu())
                bar.update(batch.shape[0])
    finally:
        extractor.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}
