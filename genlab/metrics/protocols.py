"""Named evaluation protocols and `evaluate()`: images -> features -> statistics -> values, comparable across runs.

A protocol pins the reference data (dataset + split), the number of samples, the feature extractor (and so its
weights' hash), KID's subsets, the k of precision/recall and density/coverage, and IS's splits. Every result
carries the protocol record, so a number is never separated from how it was measured. Generated images are
quantised to uint8 before feature extraction, as a user's saved PNG files would be.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.data import load_dataset, to_uint8
from genlab.errors import unknown
from genlab.metrics.fid import frechet_distance, gaussian_stats
from genlab.metrics.inception_score import inception_score
from genlab.metrics.kid import kid
from genlab.metrics.mode_coverage import class_coverage
from genlab.metrics.prdc import prdc_ks

METRICS = ("fid", "kid", "is", "pr", "dc", "acc", "modes", "nll")  # nll: test-set likelihood (models with one)


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str  # reference data
    split: str  # reference split (the floor row compares floor_split with it)
    n: int  # samples on each side
    extractor: str  # bundled evaluator name (features: penultimate layer; logits: its classifier)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3  # Kynkäänniemi et al. 2019
    dc_k: int = 5  # Naeem et al. 2020
    is_splits: int = 10
    floor_split: str = "train"


PROTOCOLS = {
    "fmnist": Protocol("fmnist", "fashion-mnist", "test", 10000, "fmnist-net"),
    "digits": Protocol("digits", "digits", "test", 359, "digits-net", kid_subset_size=300),
    "mnist": Protocol("mnist", "mnist", "test", 10000, "mnist-net"),
}

DATASET_PROTOCOLS = {"fashion-mnist": "fmnist", "digits": "digits", "mnist": "mnist"}


def protocol_for_dataset(dataset: str) -> str:
    if dataset not in DATASET_PROTOCOLS:
        raise ValueError(f"no evaluation protocol for dataset '{dataset}'; protocols exist for: "
                         f"{', '.join(DATASET_PROTOCOLS)} (set eval.protocol explicitly)")
    return DATASET_PROTOCOLS[dataset]


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    for m in names:
        if m not in METRICS:
            raise unknown("metric", m, METRICS)
    return names


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise unknown("protocol", name, PROTOCOLS)
    return PROTOCOLS[name]


def cache_dir() -> Path:
    return Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab")) / "reference"


def _as_uint8(images) -> torch.Tensor:
    """uint8 (N, C, H, W) from uint8 or float [-1, 1] images (floats are quantised as a saved PNG would be)."""
    x = torch.as_tensor(images)
    if x.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 [0, 255] or float [-1, 1], got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or inf")
    lo, hi = x.min().item(), x.max().item()
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"float images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return to_uint8(x)


def extract_features(images, extractor: str) -> dict[str, np.ndarray]:
    """{'features': (N, D) float64, 'logits': (N, C) float64} of images through a bundled evaluator."""
    from genlab.metrics.evaluators import extract, load_evaluator

    out = extract(load_evaluator(extractor), _as_uint8(images))
    return {k: v.double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float64) for k, v in out.items()}


def reference_features(protocol: Protocol, split: str | None = None, *, data_dir: str = "") -> dict[str, np.ndarray]:
    """Features, logits and labels of the protocol's reference split, cached on disk.

    The cache key holds the dataset, split, extractor and the extractor weights' SHA-256, so retraining an
    evaluator never reuses stale statistics.
    """
    from safetensors.numpy import load_file, save_file

    from genlab.metrics.evaluators import weights_hash

    split = split or protocol.split
    path = cache_dir() / f"{protocol.dataset}-{split}-{protocol.extractor}-{weights_hash(protocol.extractor)[:16]}.safetensors"
    if path.exists():
        try:
            return load_file(str(path))
        except Exception:  # a damaged cache file is recomputed, never trusted
            path.unlink(missing_ok=True)
    data = load_dataset(protocol.dataset, split, data_dir=data_dir)
    feats = extract_features(data.x, protocol.extractor)
    feats["labels"] = data.y.numpy().astype(np.int64) if data.y is not None else np.zeros(0, np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: np.ascontiguousarray(v) for k, v in feats.items()}, str(tmp))
    os.replace(tmp, path)
    return feats


def _subset(d: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    total = len(d["features"])
    if n >= total:
        return d
    idx = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    return {k: (v[idx] if len(v) == total else v) for k, v in d.items()}


def compute_metrics(fake: dict[str, np.ndarray], real: dict[str, np.ndarray], protocol: Protocol,
                    metrics=METRICS, *, labels=None, num_classes: int | None = None) -> dict[str, float]:
    """All requested metrics from fake and real {'features', 'logits'} (the statistics stage)."""
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise unknown("metric", bad[0], METRICS)
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(gaussian_stats(fake["features"]), gaussian_stats(real["features"]))
    if "kid" in metrics:
        out.update(kid(real["features"], fake["features"], subsets=protocol.kid_subsets,
                       subset_size=protocol.kid_subset_size))
    if "is" in metrics:
        out.update(inception_score(fake["logits"], splits=protocol.is_splits))
    ks = [k for m, k in (("pr", protocol.pr_k), ("dc", protocol.dc_k)) if m in metrics]
    if ks:  # one pass serves both k
        r = prdc_ks(real["features"], fake["features"], ks=ks)
        if "pr" in metrics:
            out.update(precision=r[protocol.pr_k]["precision"], recall=r[protocol.pr_k]["recall"])
        if "dc" in metrics:
            out.update(density=r[protocol.dc_k]["density"], coverage=r[protocol.dc_k]["coverage"])
    pred = fake["logits"].argmax(1)
    c = num_classes or fake["logits"].shape[1]
    if "modes" in metrics and len(real.get("labels", [])):
        out.update(class_coverage(pred, real["labels"], c))
    if "acc" in metrics and labels is not None:
        labels = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1)
        if len(labels) != len(pred):
            raise ValueError(f"{len(labels)} labels for {len(pred)} images")
        out["cond_acc"] = float((pred == labels).mean())
    return out


def protocol_record(protocol: Protocol, n_fake: int, n_real: int) -> dict:
    from genlab.metrics.evaluators import weights_hash

    return {**asdict(protocol), "extractor_sha256": weights_hash(protocol.extractor), "n_fake": n_fake,
            "n_real": n_real, "quantisation": "uint8 before feature extraction"}


def evaluate(images_or_features, reference=None, *, protocol: str | Protocol = "fmnist", metrics=METRICS,
             labels=None, seed: int = 0) -> dict:
    """Evaluate generated images (uint8, or float in [-1, 1]) or precomputed {'features', 'logits'}.

    `reference`: None for the protocol's reference split (cached), or real images / feature dict.
    `labels`: the requested class of each image, for conditional accuracy. Returns the values and, under
    'protocol', the full record (extractor, its weights hash, N, k, quantisation).
    """
    p = get_protocol(protocol) if isinstance(protocol, str) else protocol
    fake = images_or_features if isinstance(images_or_features, dict) else extract_features(images_or_features, p.extractor)
    if reference is None:
        real = _subset(reference_features(p), p.n, seed)
    elif isinstance(reference, dict):
        real = reference
    else:
        real = extract_features(reference, p.extractor)
    values = compute_metrics(fake, real, p, metrics, labels=labels)
    return {**values, "protocol": protocol_record(p, len(fake["features"]), len(real["features"]))}


def floor(protocol: str | Protocol = "fmnist", metrics=METRICS, seed: int = 0) -> dict:
    """The 'data vs data' row: n images of the floor split (train) against the reference split (test)."""
    p = get_protocol(protocol) if isinstance(protocol, str) else protocol
    fake = _subset(reference_features(p, p.floor_split), p.n, seed)
    return evaluate(fake, None, protocol=p, metrics=metrics, labels=fake["labels"] if "acc" in metrics else None, seed=seed)
