"""`genlab anomaly RUN`: score images with a trained model's `anomaly_score` (AE: reconstruction error; VAE:
negative ELBO; GMM: -log density, of the latents for a GMM on an autoencoder), pick a threshold, and report
AUROC, AUPRC and the confusion matrix at the threshold, with a picture of the most and least anomalous images
and their reconstructions (for models that reconstruct).

Labels: a test image is normal when its class is one of `normal` (by default the run's `data.classes`, the
classes it was trained on) and anomalous otherwise. The threshold is given, or calibrated to a target
false-positive rate on the run's held-out normal data (`data.holdout`, images the model never trained on).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genlab.data import to_uint8
from genlab.data.png import save_grid
from genlab.errors import UsageError
from genlab.metrics.anomaly import auprc, auroc, confusion, threshold_at_fpr
from genlab.rng import derive_seed


@torch.no_grad()
def score(run, x: torch.Tensor, *, seed: int = 0, batch_size: int = 500, progress: bool = True, **opts) -> torch.Tensor:
    """Anomaly scores (N,) float64 of float inputs x, in fixed chunks seeded by (seed, chunk index); `opts` go to
    the family's anomaly_score (e.g. k, the VAE's number of posterior samples)."""
    from tqdm.auto import tqdm

    fn = getattr(run.family, "anomaly_score", None)
    if fn is None:
        name = run.family.__name__.rsplit(".", 1)[-1]
        raise UsageError(f"the {name} family has no anomaly_score; use an ae, vae or gmm run")
    out = []
    for i, start in enumerate(tqdm(range(0, len(x), batch_size), desc="scoring", disable=not progress or len(x) <= batch_size)):
        g = torch.Generator().manual_seed(derive_seed(seed, "anomaly", i))
        out.append(fn(run.model, x[start : start + batch_size], generator=g, **opts).double().cpu())
    return torch.cat(out)


def detect(run, *, data: str = "", split: str = "test", normal: list[int] | None = None, threshold: float | None = None,
           fpr: float = 0.05, out_dir: str | Path | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Score `data` (default: the run's dataset) and write RUN/anomaly/<data>-<split>.{json,png}; returns the JSON."""
    from genlab.data import load_dataset
    from genlab.training.data import load_data, parse_classes

    cfg = run.config
    name = data or cfg.data.name
    normal = normal if normal is not None else (parse_classes(cfg.data.classes) if cfg.data.classes else None)
    if not normal:
        raise UsageError("which classes are normal? pass --normal 0 (or train the run with data.classes=...)")
    try:
        test = load_dataset(name, split, data_dir=cfg.data.data_dir, image_size=cfg.data.image_size,
                            grayscale=cfg.data.grayscale, seed=cfg.train.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if test.y is None:
        raise UsageError(f"'{name}' has no labels, so nothing says which images are anomalous")
    k = test.num_classes
    bad = [c for c in normal if not 0 <= c < k]
    if bad:
        names = ", ".join(f"{i} {c}" for i, c in enumerate(test.classes))
        raise UsageError(f"--normal: no class {', '.join(map(str, bad))} in '{name}'; its classes are 0..{k - 1} "
                         f"({names}), e.g. --normal 0")
    if set(normal) >= set(range(k)):
        raise UsageError(f"--normal names every class of '{name}' (0..{k - 1}), so no image is anomalous; "
                         f"leave out at least one class")
    if threshold is None and not cfg.data.holdout > 0:
        raise UsageError("no threshold: pass --threshold T, or train with data.holdout=0.1 so --fpr can "
                         "calibrate one on held-out normal images")
    if list(test.shape) != list(run.spec.shape):
        raise UsageError(f"'{name}' images are {test.shape}, the model takes {list(run.spec.shape)}")
    x, y = test.get(torch.arange(len(test)))
    labels = (~torch.isin(y, torch.tensor(normal))).long()  # 1 = anomalous
    scores = score(run, x, seed=seed, progress=progress)
    result = {"run": str(run.dir), "data": name, "split": split, "normal_classes": normal,
              "n_normal": int((labels == 0).sum()), "n_anomalous": int(labels.sum()),
              "auroc": auroc(scores, labels), "auprc": auprc(scores, labels)}
    if threshold is None:
        held = load_data(cfg, "holdout")
        held_x, _ = held.get(torch.arange(len(held)))
        threshold = threshold_at_fpr(score(run, held_x, seed=seed + 1, progress=progress), fpr)
        result["threshold_from"] = f"{fpr:g} false-positive rate on {len(held)} held-out normal images"
    else:
        result["threshold_from"] = "given"
    result["threshold"] = float(threshold)
    result["at_threshold"] = confusion(scores, labels, threshold)

    out = Path(out_dir) if out_dir else Path(run.dir) / "anomaly"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace(':', '_').replace('/', '_')}-{split}"
    if test.is_image and hasattr(run.family, "encode") and hasattr(run.family, "decode"):
        order = scores.argsort()
        pick = torch.cat([order.flip(0)[:10], order[:10]])  # the 10 most, then the 10 least anomalous
        xs = x[pick]
        recon = run.family.decode(run.model, run.family.encode(run.model, xs))
        strip = torch.stack([xs[:10], recon[:10], xs[10:], recon[10:]])  # (4, 10, C, H, W)
        result["picture"] = str(save_grid(to_uint8(strip), out / f"{stem}.png"))
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    return result


def format_result(r: dict) -> str:
    c = r["at_threshold"]
    return "\n".join([
        f"{r['data']} {r['split']}: {r['n_normal']} normal (classes {r['normal_classes']}), {r['n_anomalous']} anomalous",
        f"AUROC {r['auroc']:.4f}   AUPRC {r['auprc']:.4f}",
        f"threshold {r['threshold']:.6g} ({r['threshold_from']})",
        "                 flagged normal  flagged anomalous",
        f"  normal         {c['tn']:>14d}  {c['fp']:>17d}",
        f"  anomalous      {c['fn']:>14d}  {c['tp']:>17d}",
        f"false-positive rate {c['fpr']:.4f}, true-positive rate {c['tpr']:.4f}, precision {c['precision']:.4f}",
    ] + ([f"picture: {r['picture']} (rows: 10 most anomalous, their reconstructions, 10 least, theirs)"]
         if "picture" in r else []))  # fmt: skip
