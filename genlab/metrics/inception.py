"""The FID Inception-v3: the TensorFlow graph `inception-2015-12-05` that the original FID code (Heusel et al. 2017,
TTUR) and the Inception Score (Salimans et al. 2016) use, rebuilt in plain torch.

Architecture: Szegedy et al. 2016, "Rethinking the Inception Architecture" (Inception-v3), as frozen in that
TensorFlow graph, which differs from the paper / torchvision version in three places:

- the average-pool branch of every 35x35 (A), 17x17 (C) and the first 8x8 (E) block divides by the number of
  *real* pixels under the 3x3 window at the borders (TensorFlow's SAME padding; `count_include_pad=False`);
- the last 8x8 block (Mixed_7c) pools its fourth branch with a 3x3 *max* pool instead of an average;
- the classifier has 1008 outputs (1000 ImageNet classes + 8 unused).

Features are the 2048-d global average pool of Mixed_7c ("pool3"). Input: uint8 images of any size, 1 or 3
channels (grayscale is repeated to RGB), resized bilinearly to 299x299 (no antialiasing, half-pixel centres,
as pytorch-fid does) and scaled to [-1, 1].

Weights are never downloaded. `load_fid_inception` reads the standard file `pt_inception-2015-12-05-6726825d.pth`
(the TensorFlow weights ported to a torch state dict, distributed with pytorch-fid) or a `.safetensors` file
with the same keys, and checks every key and shape.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genlab.data import to_float
from genlab.errors import GenlabError
from genlab.metrics.evaluators import read_state_dict, sha256_file

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub convention: the file name carries its SHA-256 prefix
ENV_VAR = "GENLAB_INCEPTION"
RESOLUTION = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TensorFlow's) -> ReLU. Keys: `conv.weight`, `bn.*`."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that ignores the zero padding (TensorFlow SAME padding)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Mixed35(nn.Module):
    """35x35 block ("InceptionA"): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1. Out: 224 + pool_ch."""

    def __init__(self, c_in: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class Reduce35(nn.Module):
    """35x35 -> 17x17 grid reduction ("InceptionB"): stride-2 3x3 | 1x1->3x3->3x3/2 | maxpool/2. Out: 480 + c_in."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class Mixed17(nn.Module):
    """17x17 block ("InceptionC") with factorised 7x7 convolutions (1x7 then 7x1). Out: 768."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = conv(c)
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class Reduce17(nn.Module):
    """17x17 -> 8x8 grid reduction ("InceptionD"): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2. Out: 512 + c_in."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class Mixed8(nn.Module):
    """8x8 block ("InceptionE") with expanded 1x3 / 3x1 outputs. Out: 2048. `pool`: 'avg' (Mixed_7b) or 'max'
    (Mixed_7c: the TensorFlow graph's max pool, kept because the published FID numbers depend on it)."""

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        self.pool = pool
        row, col = {"kernel": (1, 3), "padding": (0, 1)}, {"kernel": (3, 1), "padding": (1, 0)}
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, **row)
        self.branch3x3_2b = ConvBN(384, 384, **col)
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, **row)
        self.branch3x3dbl_3b = ConvBN(384, 384, **col)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _tf_avg_pool(x)
        return torch.cat([a, b, c, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the FID graph; `features_and_logits(uint8 images) -> ((B, 2048), (B, 1008))`.

    Module names follow the standard state dict (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`,
    ..., `fc.weight`), so the usual weights file loads without renaming.
    `logits_bias=False` (default) computes logits as pool3 @ fc.weight^T without the bias, as the original
    Inception Score code and torch-fidelity do, so IS values compare with published ones.
    """

    def __init__(self, logits_bias: bool = False):
        super().__init__()
        self.logits_bias = logits_bias
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = Mixed35(192, 32)
        self.Mixed_5c = Mixed35(256, 64)
        self.Mixed_5d = Mixed35(288, 64)
        self.Mixed_6a = Reduce35(288)
        self.Mixed_6b = Mixed17(768, 128)
        self.Mixed_6c = Mixed17(768, 160)
        self.Mixed_6d = Mixed17(768, 160)
        self.Mixed_6e = Mixed17(768, 192)
        self.Mixed_7a = Reduce17(768)
        self.Mixed_7b = Mixed8(1280, pool="avg")
        self.Mixed_7c = Mixed8(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.weights_sha256 = ""  # set by load_fid_inception; keys cached reference statistics

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (B, 3, H, W) in [-1, 1] (H, W >= 75; 299 for the standard features) -> (B, 2048)."""
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (B, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (B, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)  # (B, 288, 35, 35) -> after 6a (B, 768, 17, 17)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a):
            x = block(x)  # (B, 768, 17, 17) -> after 7a (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (B, 2048)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """pool3 features (B, 2048) -> logits (B, 1008)."""
        return F.linear(f, self.fc.weight, self.fc.bias if self.logits_bias else None)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1 or 3, H, W) -> float (B, 3, 299, 299) in [-1, 1]; ValueError for other inputs."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype != torch.uint8 or x.shape[1] not in (1, 3):
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"FID Inception expects uint8 images (B, 1 or 3, H, W); got {desc}. "
                "Quantize float images with genlab.data.to_uint8 first"
            )
        x = to_float(x.to(self.fc.weight.device))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W): grayscale as RGB
        if tuple(x.shape[2:]) != (RESOLUTION, RESOLUTION):
            # Bilinear is affine-equivariant, so resizing in [-1, 1] equals resizing in [0, 1] then scaling.
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
        return x

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) -> (pool3 (B, 2048), logits (B, 1008))."""
        f = self.pool3(self.preprocess(x))
        return f, self.logits_from_features(f)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def default_weights_path() -> Path:
    """Where torch hub would have cached the file: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def _where_to_get(what: str) -> str:
    return (
        f"{what} To fix: download {WEIGHTS_URL} on a machine with internet access (genlab never downloads) and "
        f"put it at {default_weights_path()}, or point ${ENV_VAR} (or the path argument) at it. "
        "A .safetensors file with the same keys works too."
    )


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model` after checking every key and shape; a GenlabError lists all differences.

    BatchNorm's `num_batches_tracked` counters are optional in the file (older torch versions did not save them
    and they play no part in eval mode).
    """
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:

        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        problems = [f"{name} ({len(items)}): {show(items)}" for name, items in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                    if items]  # fmt: skip
        raise GenlabError(
            f"{source} does not match the FID Inception-v3 architecture: " + "; ".join(problems) + ". "
            f"{_where_to_get('It is not the standard FID weights file (' + WEIGHTS_NAME + ').')}"
        )
    full = {**{k: expected[k] for k in optional}, **state}
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in full.items()}, strict=True)


def load_fid_inception(
    path: str | Path | None = None, *, device: str | torch.device = "cpu", logits_bias: bool = False
) -> FIDInceptionV3:
    """The FID Inception-v3 in eval mode, from `path`, else $GENLAB_INCEPTION, else the torch hub cache file."""
    if path is None:
        path = os.environ.get(ENV_VAR) or default_weights_path()
        origin = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "the torch hub cache"
    else:
        origin = "the given path"
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenlabError(_where_to_get(f"FID Inception weights not found at {path} (from {origin})."))
    digest = sha256_file(path)
    if path.suffix != ".safetensors" and not digest.startswith(WEIGHTS_SHA256_PREFIX):
        warnings.warn(
            f"{path}: SHA-256 {digest[:12]}... differs from the standard {WEIGHTS_NAME} (prefix "
            f"{WEIGHTS_SHA256_PREFIX}); FID values will not be comparable with published ones",
            stacklevel=2,
        )
    model = FIDInceptionV3(logits_bias=logits_bias)
    state = read_state_dict(path, "FID Inception weights", _where_to_get("Use the standard weights file."))
    load_state_dict_strict(model, state, str(path))
    model.weights_sha256 = digest
    return model.to(device).eval().requires_grad_(False)
