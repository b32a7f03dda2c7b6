"""LPIPS: the learned perceptual image patch similarity of Zhang et al. 2018, "The Unreasonable Effectiveness of
Deep Features as a Perceptual Metric" (Eq. 1), in plain torch.

    d(x0, x1) = sum_l  mean_{h,w}  || w_l * (f_l(x0)_hw - f_l(x1)_hw) ||_2^2

where f_l are a backbone's activations at layer l, unit-normalised along channels at every position, and w_l >= 0
is a per-channel weight vector (a 1x1 convolution to one channel) calibrated on human 2AFC judgements.

Two backbones, written here as plain `nn.Sequential` stacks whose indices match torchvision's `features.N.*`
keys: VGG16 (taps after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) and AlexNet (after relu1..relu5).
Weights come from local files only: the torchvision ImageNet backbone (`vgg16-397923af.pth`,
`alexnet-owt-7be5be79.pth`) and the LPIPS v0.1 linear layers (`vgg.pth`, `alex.pth`, keys `lin{l}.model.1.weight`).

`DomainLPIPS` applies the same recipe to a bundled domain evaluator's stage outputs with uniform weights. It is
*not* calibrated against human judgements: use it to compare models with each other on one dataset (e.g. inside
perceptual path length on Fashion-MNIST), not as a perceptual distance in absolute terms.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from genlab.data import to_float
from genlab.errors import GenlabError, unknown
from genlab.metrics.evaluators import read_state_dict

RANGE_TOLERANCE = 1e-3  # how far beyond [-1, 1] an input may stray (float round-off) before it is an error

# Per backbone: torchvision `features` layout as (kind, args) entries, the indices whose outputs are tapped,
# the tapped channel counts, the backbone's minimum input size, and the usual file names.
_VGG16 = [("conv", 3, 64), ("relu",), ("conv", 64, 64), ("relu",), ("pool",),
          ("conv", 64, 128), ("relu",), ("conv", 128, 128), ("relu",), ("pool",),
          ("conv", 128, 256), ("relu",), ("conv", 256, 256), ("relu",), ("conv", 256, 256), ("relu",), ("pool",),
          ("conv", 256, 512), ("relu",), ("conv", 512, 512), ("relu",), ("conv", 512, 512), ("relu",), ("pool",),
          ("conv", 512, 512), ("relu",), ("conv", 512, 512), ("relu",), ("conv", 512, 512), ("relu",)]  # fmt: skip
_ALEX = [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool3",), ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool3",),
         ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
         ("conv", 256, 256, 3, 1, 1), ("relu",)]  # fmt: skip
BACKBONES = {
    "vgg": {"layers": _VGG16, "taps": [3, 8, 15, 22, 29], "channels": [64, 128, 256, 512, 512], "min_size": 16,
            "backbone_file": "vgg16-397923af.pth", "linear_file": "vgg.pth"},
    "alex": {"layers": _ALEX, "taps": [1, 4, 7, 9, 11], "channels": [64, 192, 384, 256, 256], "min_size": 31,
             "backbone_file": "alexnet-owt-7be5be79.pth", "linear_file": "alex.pth"},
}  # fmt: skip

# LPIPS v0.1 maps [-1, 1] inputs to the ImageNet statistics the backbones were trained on: (x - shift) / scale.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def _make_features(layers: list[tuple]) -> nn.Sequential:
    """nn.Sequential from ("conv", c_in, c_out[, kernel, stride, padding]) / ("relu",) / ("pool",) / ("pool3",)."""
    modules: list[nn.Module] = []
    for kind, *args in layers:
        if kind == "conv":
            c_in, c_out, k, stride, pad = (*args, 3, 1, 1) if len(args) == 2 else args  # VGG: 3x3, stride 1, pad 1
            modules.append(nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad))
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind == "pool":
            modules.append(nn.MaxPool2d(2))  # VGG
        else:
            modules.append(nn.MaxPool2d(3, stride=2))  # AlexNet's overlapping pool
    return nn.Sequential(*modules)


def normalize_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit L2 norm along channels at every position: (B, C, H, W) -> (B, C, H, W)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def check_pair(x0: torch.Tensor, x1: torch.Tensor, channels: tuple[int, ...], min_size: int = 1) -> tuple:
    """Validate two image batches; uint8 -> float [-1, 1]; floats must lie in [-1, 1]. Returns float tensors."""
    out = []
    for name, x in (("x0", x0), ("x1", x1)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be images (B, C, H, W); got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[1] not in channels:
            raise ValueError(f"{name} has {x.shape[1]} channels; expected {' or '.join(map(str, channels))}")
        if min(x.shape[2:]) < min_size:
            raise ValueError(
                f"{name} is {tuple(x.shape[2:])}; this backbone needs images of at least {min_size}x{min_size}. "
                f"Upsample first, e.g. F.interpolate(x, size=64, mode='bilinear')"
            )
        if x.dtype == torch.uint8:
            x = to_float(x)
        elif not x.is_floating_point():
            raise ValueError(f"{name} must be float images in [-1, 1] or uint8; got {x.dtype}")
        else:
            lo, hi = x.min().item(), x.max().item()
            if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
                raise ValueError(
                    f"{name} has values in [{lo:.3g}, {hi:.3g}]; LPIPS expects images in [-1, 1] (an image in "
                    "[0, 1] or [0, 255] gives a silently wrong distance). Rescale, or clamp generator outputs"
                )
        out.append(x)
    if out[0].shape != out[1].shape:
        raise ValueError(f"x0 {tuple(out[0].shape)} and x1 {tuple(out[1].shape)} must have the same shape")
    return out[0], out[1]


class LPIPS(nn.Module):
    """LPIPS with a VGG16 or AlexNet backbone; `forward(x0, x1) -> (B,)` for images in [-1, 1] (or uint8).

    Grayscale inputs are repeated to three channels. Zhang et al. 2018, Eq. 1; v0.1 input scaling.
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in BACKBONES:
            raise unknown("LPIPS backbone", net, BACKBONES)
        spec = BACKBONES[net]
        self.net, self.taps, self.min_size = net, spec["taps"], spec["min_size"]
        self.features = _make_features(spec["layers"])
        # 1x1 convolutions to one channel; the `model.1` nesting mirrors the LPIPS files (model.0 was dropout).
        self.lins = nn.ModuleList(nn.ModuleDict({"model": nn.Sequential(nn.Identity(), nn.Conv2d(c, 1, 1, bias=False))})
                                  for c in spec["channels"])  # fmt: skip
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised activations at the tapped layers for float images (B, 3, H, W) in [-1, 1]."""
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(normalize_channels(x))
            if i == self.taps[-1]:
                break
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        x0, x1 = check_pair(x0, x1, (1, 3), self.min_size)
        device, dtype = self.shift.device, self.shift.dtype
        x0, x1 = (x.to(device=device, dtype=dtype).expand(-1, 3, -1, -1) for x in (x0, x1))  # grayscale -> RGB
        feats = self.layer_features(torch.cat([x0, x1]))  # one pass for both: [(2B, C_l, H_l, W_l)]
        b = x0.shape[0]
        d = torch.zeros(b, device=device, dtype=dtype)
        for lin, f in zip(self.lins, feats):
            diff = (f[:b] - f[b:]).pow(2)  # (B, C_l, H_l, W_l)
            d = d + lin["model"](diff).mean(dim=(1, 2, 3))  # (B,)
        return d


class DomainLPIPS(nn.Module):
    """LPIPS recipe on a domain evaluator's stage outputs (uniform weights: each stage's squared distance of
    unit-normalised features, summed over channels, averaged over positions, then averaged over stages; so
    0 <= d <= 4). Uncalibrated: only comparisons made with the same evaluator weights are meaningful.
    """

    def __init__(self, evaluator: nn.Module):
        super().__init__()
        self.evaluator = evaluator.eval()

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        ev = self.evaluator
        x0, x1 = check_pair(x0, x1, (ev.in_channels,), ev.image_size)
        if tuple(x0.shape[2:]) != (ev.image_size, ev.image_size):
            raise ValueError(f"domain LPIPS expects {ev.image_size}x{ev.image_size} images; got {tuple(x0.shape[2:])}")
        weight = ev.classifier.weight
        b = x0.shape[0]
        maps = ev.feature_maps(torch.cat([x0, x1]).to(weight))  # one pass for both: [(2B, C_l, H_l, W_l)]
        d = torch.zeros(b, device=weight.device, dtype=weight.dtype)
        for f in maps:
            f = normalize_channels(f)
            d = d + (f[:b] - f[b:]).pow(2).sum(dim=1).mean(dim=(1, 2))  # (B,)
        return d / len(maps)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _match(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], ignore_prefix: str, what: str, path):
    """Every expected key present with the right shape; unexpected keys (except `ignore_prefix`) are errors."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not (ignore_prefix and k.startswith(ignore_prefix)))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in expected.items() if k in state and state[k].shape != v.shape)  # fmt: skip
    if missing or unexpected or shapes:
        parts = [f"{n}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                 for n, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                  ("shape mismatches", shapes)) if items]  # fmt: skip
        raise GenlabError(f"the {what} file {path} does not fit: " + "; ".join(parts))


def _lpips_package_weights(net: str) -> Path | None:
    """`lpips/weights/v0.1/<net>.pth` of an installed `lpips` package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / f"{net}.pth"
    return path if path.is_file() else None


def default_paths(net: str) -> tuple[Path, Path]:
    """(backbone, linear) weight paths: $GENLAB_LPIPS_BACKBONE / $GENLAB_LPIPS_LINEAR, else the torch hub cache
    (where torchvision caches its backbones) and ~/.cache/genlab/lpips/v0.1/ (or an installed `lpips` package)."""
    spec = BACKBONES[net]
    backbone = os.environ.get("GENLAB_LPIPS_BACKBONE") or Path(torch.hub.get_dir()) / "checkpoints" / spec["backbone_file"]
    linear = os.environ.get("GENLAB_LPIPS_LINEAR")
    if not linear:
        linear = Path.home() / ".cache" / "genlab" / "lpips" / "v0.1" / spec["linear_file"]
        if not linear.is_file():
            linear = _lpips_package_weights(net) or linear
    return Path(backbone).expanduser(), Path(linear).expanduser()


def load_lpips(net: str = "vgg", *, backbone_path=None, linear_path=None, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS with local weights (never downloads); every key and shape is checked; linear weights must be >= 0."""
    if net not in BACKBONES:
        raise unknown("LPIPS backbone", net, BACKBONES)
    default_backbone, default_linear = default_paths(net)
    backbone_path = Path(backbone_path).expanduser() if backbone_path else default_backbone
    linear_path = Path(linear_path).expanduser() if linear_path else default_linear
    spec = BACKBONES[net]
    for path, what, origin in (
        (backbone_path, "backbone", (f"torchvision's ImageNet {net} weights ({spec['backbone_file']}, from "
                                     "download.pytorch.org/models/); set $GENLAB_LPIPS_BACKBONE or backbone_path")),
        (linear_path, "linear", (f"the LPIPS v0.1 linear weights ({spec['linear_file']}, in the `lpips` package's "
                                 "weights/v0.1/ folder, github.com/richzhang/PerceptualSimilarity); put it in "
                                 "~/.cache/genlab/lpips/v0.1/ or set $GENLAB_LPIPS_LINEAR or linear_path")),
    ):  # fmt: skip
        if not path.is_file():
            raise GenlabError(f"LPIPS {what} weights not found at {path}. To fix: provide {origin}")
    model = LPIPS(net)
    backbone = read_state_dict(backbone_path, "LPIPS backbone")
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    _match(expected, backbone, "classifier.", "LPIPS backbone", backbone_path)  # a full torchvision file also has the classifier
    linear = read_state_dict(linear_path, "LPIPS linear")
    expected_lin = {f"lin{i}.model.1.weight": lin["model"][1].weight for i, lin in enumerate(model.lins)}
    _match(expected_lin, linear, "", "LPIPS linear", linear_path)
    if any((v < 0).any() for v in linear.values()):
        raise GenlabError(f"{linear_path} has negative linear weights; LPIPS weights are non-negative (wrong file?)")
    state = {k: backbone[k] for k in expected}
    state.update({f"lins.{i}.model.1.weight": linear[f"lin{i}.model.1.weight"] for i in range(len(model.lins))})
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.to(device).eval().requires_grad_(False)
