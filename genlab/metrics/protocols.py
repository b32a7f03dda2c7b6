"""Named evaluation protocols and `evaluate()`: images -> features -> statistics -> values, comparable across runs.

A protocol pins the reference data (dataset + split), the number of samples, the feature extractor (and so its
weights' hash), KID's subsets, the k of precision/recall and density/coverage, and IS's splits. Every result
carries the protocol record, so a number is never separated from how it was measured. Generated images are
quantised to uint8 before feature extraction, as a user's saved PNG files would be.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
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
    objects: str = ""  # cell classifier of the object-level check ('objects' metric; scenes only)
    crop: int = 0  # centre-crop both sides to crop x crop first (0: none): 32x32 padded garments -> the 28x28 one


PROTOCOLS = {
    "fmnist": Protocol("fmnist", "fashion-mnist", "test", 10000, "fmnist-net"),
    "digits": Protocol("digits", "digits", "test", 359, "digits-net", kid_subset_size=300),
    "mnist": Protocol("mnist", "mnist", "test", 10000, "mnist-net"),
    "fmnist-color": Protocol("fmnist-color", "fmnist-color", "test", 10000, "fmnist-color-net"),
    # 64x64 scenes; Fréchet distance and CLIP score in the domain CLIP's space (scenes-clip), object accuracy
    # from the cell classifier (scenes-cell-net). n = the whole test split.
    "scenes": Protocol("scenes", "scenes", "test", 2000, "scenes-clip", kid_subset_size=1000, objects="scenes-cell-net"),
    # translation targets: 32x32 garments (28x28 padded by 2 black pixels), read by fmnist-net on the centre 28x28;
    # a paired dataset's reference is its targets x, so FID compares outputs with real targets of the test split
    "edges2fmnist": Protocol("edges2fmnist", "edges2fmnist", "test", 10000, "fmnist-net", crop=28),
    "edges2fmnist-color": Protocol("edges2fmnist-color", "edges2fmnist-color", "test", 10000, "fmnist-color-net"),
}

DATASET_PROTOCOLS = {"fashion-mnist": "fmnist", "digits": "digits", "mnist": "mnist", "fmnist-color": "fmnist-color",
                     "scenes": "scenes", "edges2fmnist": "edges2fmnist",
                     "edges2fmnist-color": "edges2fmnist-color"}  # fmt: skip


def unpaired_protocol(name: str) -> Protocol:
    """The protocol of an `unpaired:A,B` dataset (CycleGAN's two garment classes): its own test split (both
    domains, 1,000 images each) through fmnist-net on the centre 28x28. Outputs translated to the other domain are
    compared with the real images of both domains, and `acc` checks each output shows its target class."""
    from genlab.data.derived import EDGES_GARMENTS, FMNIST_CLASSES, class_key, parse_unpaired

    arg = class_key(name.partition(":")[2])
    if arg == EDGES_GARMENTS:  # 10,000 test edge maps and their 10,000 garments
        return Protocol(f"unpaired:{arg}", f"unpaired:{arg}", "test", 10000, "fmnist-net", crop=28)
    a, b = parse_unpaired(arg)
    canonical = f"unpaired:{class_key(FMNIST_CLASSES[a])},{class_key(FMNIST_CLASSES[b])}"
    return Protocol(canonical, canonical, "test", 2000, "fmnist-net", crop=28)


def protocol_for_dataset(dataset: str) -> str:
    if dataset.startswith("unpaired:"):
        return unpaired_protocol(dataset).name
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
    if name.startswith("unpaired:"):
        return unpaired_protocol(name)
    if name not in PROTOCOLS:
        raise unknown("protocol", name, PROTOCOLS)
    return PROTOCOLS[name]


def cache_dir() -> Path:
    return Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab")) / "reference"


class EvalWarning(UserWarning):
    """A number computed as asked but easy to misread (few samples, a guessed value range); the CLI prints it."""


RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0), "0,255": (0.0, 255.0)}  # value ranges of float images
OVERSHOOT = 0.025  # values may pass a range's ends by this fraction of its width (resampling, e.g. bicubic)


def infer_range(x: torch.Tensor) -> str:
    """The value range of float images: '-1,1' if any value is below -0.025 (more than a [0, 1] image's resampling
    overshoot), else '0,1' if all are <= 1.025, else '0,255'.

    Misreading [0, 1] images as [-1, 1] turns them grey and scores real images like a poor model, so values
    decide; only a degenerate set is misread ([-1, 1] images without one pixel darker than mid-grey, or [0, 255]
    images that are all black), and `value_range` settles any doubt.
    """
    lo, hi = x.min().item(), x.max().item()
    return "-1,1" if lo < -OVERSHOOT else "0,1" if hi <= 1 + OVERSHOOT else "0,255"


def _as_uint8(images, value_range: str | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) from uint8 images, or float images in `value_range` ('-1,1', '0,1' or '0,255'; None:
    `infer_range`, with an `EvalWarning` unless it is [-1, 1]); floats are quantised as a saved PNG would be."""
    x = torch.as_tensor(images)
    if x.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 [0, 255] or float in [-1, 1], [0, 1] or [0, 255], got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or inf")
    if value_range is not None and value_range not in RANGES:
        raise unknown("value range", value_range, RANGES)
    rng = value_range or infer_range(x)
    lo, hi = x.min().item(), x.max().item()
    a, b = RANGES[rng]
    if lo < a - OVERSHOOT * (b - a) or hi > b + OVERSHOOT * (b - a):
        given = f"the given range [{a:g}, {b:g}]" if value_range else "[-1, 1], [0, 1] or [0, 255]"
        raise ValueError(f"float images must lie in {given}, got values in [{lo:.3g}, {hi:.3g}]")
    if value_range is None and rng != "-1,1":
        warnings.warn(f"float images with values in [{lo:.3g}, {hi:.3g}], none clearly negative, were read as "
                      f"[{a:g}, {b:g}]; if they are [-1, 1] images pass --range=-1,1 (Python: value_range='-1,1'); "
                      f"--range={rng} confirms this reading and silences this note", EvalWarning, stacklevel=3)
    if rng != "-1,1":
        x = (x.double() - a) * (2.0 / (b - a)) - 1.0  # -> [-1, 1], then the one uint8 mapping (genlab.data)
    return to_uint8(x)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre size x size of (N, C, H, W) images; ValueError if they are smaller."""
    H, W = x.shape[-2:]
    if H < size or W < size:
        raise ValueError(f"images of {H}x{W} cannot be centre-cropped to the protocol's {size}x{size}")
    top, left = (H - size) // 2, (W - size) // 2
    return x[..., top : top + size, left : left + size]


def extract_features(images, extractor: str, *, value_range: str | None = None, objects: str = "",
                     crop: int = 0) -> dict[str, np.ndarray]:
    """{'features': (N, D) float64, 'logits': (N, C) float64} of images (see `_as_uint8`) through a bundled evaluator;
    with `objects` (a cell classifier, e.g. scenes-cell-net) also its per-cell predictions 'cell_classes' and
    'cell_colors' (N, 4) for the object-level check (genlab.metrics.scenes); `crop` > 0 reads the centre
    crop x crop of each image (a protocol's `crop`)."""
    from genlab.metrics.evaluators import extract, load_evaluator

    x = _as_uint8(images, value_range)
    if crop:
        x = centre_crop(x, crop)
    out = extract(load_evaluator(extractor), x)
    feats = {k: v.double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float64) for k, v in out.items()}
    if objects:
        from genlab.metrics.scenes import predict_cells

        feats["cell_classes"], feats["cell_colors"] = (a.astype(np.int64) for a in predict_cells(load_evaluator(objects), x))
    return feats


def reference_features(protocol: Protocol, split: str | None = None, *, data_dir: str = "") -> dict[str, np.ndarray]:
    """Features, logits and labels of the protocol's reference split, cached on disk.

    The cache key holds the dataset, split, extractor and the extractor weights' SHA-256, so retraining an
    evaluator never reuses stale statistics.
    """
    from safetensors.numpy import load_file, save_file

    from genlab.metrics.evaluators import weights_hash

    split = split or protocol.split
    key = f"{protocol.extractor}-{weights_hash(protocol.extractor)[:16]}"
    if protocol.objects:
        key += f"-{protocol.objects}-{weights_hash(protocol.objects)[:16]}"
    if protocol.crop:
        key += f"-crop{protocol.crop}"
    path = cache_dir() / f"{protocol.dataset.replace(':', '_').replace(',', '_')}-{split}-{key}.safetensors"
    if path.exists():
        try:
            return load_file(str(path))
        except Exception:  # a damaged cache file is recomputed, never trusted
            path.unlink(missing_ok=True)
    data = load_dataset(protocol.dataset, split, data_dir=data_dir)
    print(f"genlab: computing {protocol.extractor} features of {protocol.dataset}/{split} ({len(data):,} images; once, "
          f"then cached in {path.parent})", file=sys.stderr, flush=True)
    feats = extract_features(data.x, protocol.extractor, objects=protocol.objects, crop=protocol.crop)
    if protocol.objects:  # scenes: the layouts (for the floor's object accuracy) and each image's index (captions)
        for key in ("obj_classes", "obj_colors", "obj_cells"):
            feats[key] = data.extra[key].numpy().astype(np.int64)
        feats["index"] = np.arange(len(data), dtype=np.int64)
    feats["labels"] = data.y.numpy().astype(np.int64) if data.y is not None else np.zeros(0, np.int64)
    if "color" in data.extra:  # fmnist-color: the floor's colour accuracy reads the real images' colours
        feats["colors"] = data.extra["color"].numpy().astype(np.int64)
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


Features = dict[str, np.ndarray]  # {'features': (N, D), 'logits': (N, C), optional 'labels': (N,)}


def _fid(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Fréchet distance of Gaussians fitted to the features (Heusel et al. 2017)."""
    return {"fid": frechet_distance(gaussian_stats(fake["features"]), gaussian_stats(real["features"]))}


def _kid(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Unbiased MMD^2 with a cubic kernel over the protocol's subsets (Bińkowski et al. 2018)."""
    return kid(real["features"], fake["features"], subsets=p.kid_subsets, subset_size=p.kid_subset_size)


def _is(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Inception Score of the fake logits (Salimans et al. 2016); skipped for an extractor without logits."""
    if "logits" not in fake:
        return {}
    return inception_score(fake["logits"], splits=p.is_splits)


def _prdc(fake: Features, real: Features, p: Protocol) -> dict[int, dict[str, float]]:
    """P/R/D/C at k = pr_k and dc_k from ONE k-NN pass (the costly part), kept in the per-call `fake` copy that
    `compute_metrics` makes, so 'pr' and 'dc' share it."""
    if "_prdc" not in fake:
        fake["_prdc"] = prdc_ks(real["features"], fake["features"], ks=(p.pr_k, p.dc_k))
    return fake["_prdc"]


def _pr(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Improved precision and recall at k = pr_k (Kynkäänniemi et al. 2019)."""
    r = _prdc(fake, real, p)[p.pr_k]
    return {"precision": r["precision"], "recall": r["recall"]}


def _dc(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Density and coverage at k = dc_k (Naeem et al. 2020)."""
    r = _prdc(fake, real, p)[p.dc_k]
    return {"density": r["density"], "coverage": r["coverage"]}


def _modes(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Classes the evaluator sees in the fake images, and reverse KL to the real labels' histogram."""
    if not len(real.get("labels", [])) or "logits" not in fake:
        return {}
    return class_coverage(fake["logits"].argmax(1), real["labels"], fake["logits"].shape[1])


def _acc(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Conditional accuracy: the evaluator's prediction against each fake image's requested label."""
    if fake.get("labels") is None or "logits" not in fake:
        return {}
    labels = np.asarray(torch.as_tensor(fake["labels"]).cpu()).reshape(-1)
    pred = fake["logits"].argmax(1)
    if len(labels) != len(pred):
        raise ValueError(f"{len(labels)} labels for {len(pred)} images")
    return {"cond_acc": float((pred == labels).mean())}


def _color_acc(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Colour accuracy: the evaluator's colour head against each fake image's requested colour (`conditions`
    "color"); skipped without requested colours or without a colour head."""
    colors = (fake.get("conditions") or {}).get("color")
    if colors is None or "color_logits" not in fake:
        return {}
    colors = np.asarray(torch.as_tensor(colors).cpu()).reshape(-1)
    pred = fake["color_logits"].argmax(1)
    if len(colors) != len(pred):
        raise ValueError(f"{len(colors)} requested colours for {len(pred)} images")
    return {"color_acc": float((pred == colors).mean())}


def _objects(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """Object-level check (scenes): per-object class and colour accuracy in the requested cells and empty cells
    staying empty, from the cell classifier's predictions against the requested layouts (`conditions`
    obj_classes / obj_colors / obj_cells); skipped without them (genlab.metrics.scenes)."""
    from genlab.metrics.scenes import object_accuracy

    cond = fake.get("conditions") or {}
    if "cell_classes" not in fake or any(k not in cond for k in ("obj_classes", "obj_colors", "obj_cells")):
        return {}
    return object_accuracy(fake["cell_classes"], fake["cell_colors"], cond["obj_classes"], cond["obj_colors"],
                           cond["obj_cells"])  # fmt: skip


_TEXT_ENCODERS: dict = {}


def _clip(fake: Features, real: Features, p: Protocol) -> dict[str, float]:
    """CLIP score (Hessel et al. 2021, w = 2.5) of each image against its requested caption (`conditions` "text"),
    when the protocol's extractor is a domain CLIP's image tower (its record names the text encoder)."""
    from genlab.metrics.clip_score import clip_score_from_embeddings
    from genlab.metrics.evaluators import read_record

    texts = (fake.get("conditions") or {}).get("text")
    text_encoder = read_record(p.extractor).get("text_encoder")
    if texts is None or not text_encoder:
        return {}
    if len(texts) != len(fake["features"]):
        raise ValueError(f"{len(texts)} captions for {len(fake['features'])} images")
    if text_encoder not in _TEXT_ENCODERS:  # loaded once per process (a few seconds)
        from genlab.text import load_text_encoder

        _TEXT_ENCODERS[text_encoder] = load_text_encoder(text_encoder)
    enc = _TEXT_ENCODERS[text_encoder]
    pooled = torch.cat([enc.encode(list(texts[i : i + 256]))[2] for i in range(0, len(texts), 256)])
    return {"clip_score": float(clip_score_from_embeddings(torch.as_tensor(fake["features"]), pooled).mean())}


# name -> pure function of (fake, real, protocol); adding a metric is one line. Results keep this order.
METRIC_FNS: dict[str, Callable[[Features, Features, Protocol], dict]] = {
    "fid": _fid, "kid": _kid, "is": _is, "pr": _pr, "dc": _dc, "modes": _modes, "acc": _acc,
    "color_acc": _color_acc, "objects": _objects, "clip": _clip,
}
METRICS = (*METRIC_FNS, "nll")  # nll: test-set likelihood of a model that has one (computed by the training code)
SAMPLE_SIZE_METRICS = ("fid", "kid", "is", "pr", "dc")  # biased or noisy at small n


def compute_metrics(fake: Features, real: Features, protocol: Protocol, metrics=METRICS, *,
                    labels=None, conditions: dict | None = None) -> dict[str, float]:
    """All requested metrics from fake and real {'features', 'logits'} (the statistics stage).

    `labels`: the requested class of each fake image (conditional accuracy); without them 'acc' is skipped.
    `conditions`: everything the images were generated for (a batch dict: "y", "color", ...), per image; metric
    functions read it as `fake["conditions"]` (e.g. 'color_acc' reads "color").
    """
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise unknown("metric", bad[0], METRICS)
    fake = {**fake, "labels": labels, "conditions": conditions}  # a per-call copy: metric functions may keep shared statistics in it
    out: dict[str, float] = {}
    for name, fn in METRIC_FNS.items():
        if name in metrics:
            out.update(fn(fake, real, protocol))
    return out


def min_samples(protocol: Protocol, feature_dim: int) -> int:
    """Fewest images per side worth reporting: 4x the feature dimension (a covariance estimate needs n well above
    d; FID's bias grows as 1/n, Chong & Forsyth 2020), or the protocol's own n when that is smaller."""
    return min(protocol.n, 4 * feature_dim)


def protocol_record(protocol: Protocol, n_fake: int, n_real: int) -> dict:
    from genlab.metrics.evaluators import weights_hash

    record = {**asdict(protocol), "extractor_sha256": weights_hash(protocol.extractor), "n_fake": n_fake,
              "n_real": n_real, "quantisation": "uint8 before feature extraction"}
    if protocol.objects:
        record["objects_sha256"] = weights_hash(protocol.objects)
    return record


def evaluate(images_or_features, reference=None, *, protocol: str | Protocol = "fmnist", metrics=METRICS,
             labels=None, seed: int = 0, value_range: str | None = None, conditions: dict | None = None) -> dict:
    """Evaluate generated images or precomputed {'features', 'logits'}.

    Images are uint8 (taken as is) or float: `value_range` '-1,1', '0,1' or '0,255', or None to infer it from
    the values (`infer_range`: any clearly negative value: [-1, 1]; else all <= 1: [0, 1]; else [0, 255]) with an
    `EvalWarning` saying so.
    `reference`: None for the protocol's reference split (cached), or real images / feature dict.
    `labels`: the requested class of each image, for conditional accuracy; `conditions`: all the requested
    conditions per image (the sampler's `cond` dict; "color" gives colour accuracy). Returns the values and, under
    'protocol', the full record (extractor, its weights hash, N, k, quantisation). Warns (`EvalWarning`) when
    either side has fewer images than `min_samples`.
    """
    p = get_protocol(protocol) if isinstance(protocol, str) else protocol
    if isinstance(images_or_features, dict):
        fake = images_or_features
    else:
        objects = p.objects if "objects" in metrics else ""
        fake = extract_features(images_or_features, p.extractor, value_range=value_range, objects=objects, crop=p.crop)
    if reference is None:
        real = _subset(reference_features(p), p.n, seed)
    elif isinstance(reference, dict):
        real = reference
    else:
        real = extract_features(reference, p.extractor, crop=p.crop)
    n, d = min(len(fake["features"]), len(real["features"])), fake["features"].shape[1]
    small, need = [m for m in metrics if m in SAMPLE_SIZE_METRICS], min_samples(p, d)
    if small and n < need:
        warnings.warn(f"only {n} images; {need} is the minimum for {', '.join(small)} under protocol '{p.name}' (the "
                      f"smaller of its n = {p.n} and 4x the {d} feature dimensions): at small n FID is biased upward "
                      f"(about as 1/n) and KID, IS, precision/recall/density/coverage are noisy, so compare only with "
                      f"the data-vs-data row at the same n, and report numbers at n >= {need}",
                      EvalWarning, stacklevel=2)
    values = compute_metrics(fake, real, p, metrics, labels=labels, conditions=conditions)
    return {**values, "protocol": protocol_record(p, len(fake["features"]), len(real["features"]))}


def floor(protocol: str | Protocol = "fmnist", metrics=METRICS, seed: int = 0, *, n: int | None = None) -> dict:
    """The 'data vs data' row: n images (default the protocol's n) of the floor split (train) against the
    reference split (test). Compare a model with the floor at the model's own n: P/R/D/C and FID move with n."""
    p = get_protocol(protocol) if isinstance(protocol, str) else protocol
    fake = _subset(reference_features(p, p.floor_split), n or p.n, seed)
    conditions = {"color": fake["colors"]} if "colors" in fake else None
    if "index" in fake:  # scenes: each floor image's own layout and caption
        conditions = {k: fake[k] for k in ("obj_classes", "obj_colors", "obj_cells")}
        if "clip" in metrics:
            texts = load_dataset(p.dataset, p.floor_split).extra_text["text"]
            conditions["text"] = [texts[i] for i in fake["index"].tolist()]
    return evaluate(fake, None, protocol=p, metrics=metrics, labels=fake["labels"] if "acc" in metrics else None,
                    seed=seed, conditions=conditions)
