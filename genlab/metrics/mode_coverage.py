"""Mode-coverage diagnostics: class histograms for labelled data, the VEEGAN/PacGAN protocol for 2-D toys."""

from __future__ import annotations

import numpy as np
import torch


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats; terms with p = 0 contribute 0, q = 0 where p > 0 gives inf."""
    mask = p > 0
    with np.errstate(divide="ignore"):
        return float((p[mask] * (np.log(p[mask]) - np.log(q[mask]))).sum())


def class_coverage(pred_labels, reference_labels, num_classes: int) -> dict[str, float]:
    """Classes covered by samples and reverse KL(sample histogram || reference histogram).

    `pred_labels`: an evaluator's predicted class for each generated sample; `reference_labels`: labels of the
    data (or the evaluator's predictions on data). Mode collapse shows as few classes and a large KL.
    """
    pred = np.asarray(torch.as_tensor(pred_labels).cpu()).reshape(-1)
    ref = np.asarray(torch.as_tensor(reference_labels).cpu()).reshape(-1)
    if pred.size == 0 or ref.size == 0:
        raise ValueError("class_coverage needs at least one sample and one reference label")
    if pred.min() < 0 or pred.max() >= num_classes or ref.min() < 0 or ref.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    p = np.bincount(pred, minlength=num_classes) / pred.size
    q = np.bincount(ref, minlength=num_classes) / ref.size
    return {"classes_covered": int((p > 0).sum()), "num_classes": num_classes, "class_reverse_kl": _kl(p, q)}


def toy_mode_coverage(samples, means, std: float, *, threshold: float = 3.0) -> dict[str, float]:
    """The VEEGAN (Srivastava et al. 2017) / PacGAN (Lin et al. 2018) protocol for Gaussian-mixture toys.

    A sample is high quality when within `threshold` std of its nearest mode; a mode is captured when at least
    one high-quality sample is nearest to it; reverse KL compares the high-quality samples' mode histogram with
    the uniform mixture weights, KL(p_hq || uniform). The protocol draws 2,500 samples.
    """
    x = torch.as_tensor(samples, dtype=torch.float64)
    m = torch.as_tensor(means, dtype=torch.float64)
    if x.dim() != 2 or x.shape[1] != m.shape[1]:
        raise ValueError(f"samples must be (N, {m.shape[1]}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or inf")
    d = torch.cdist(x, m)  # (N, K)
    dist, nearest = d.min(1)
    hq = dist <= threshold * std
    counts = np.bincount(nearest[hq].numpy(), minlength=len(m)).astype(np.float64)
    n_hq = counts.sum()
    reverse_kl = _kl(counts / n_hq, np.full(len(m), 1 / len(m))) if n_hq > 0 else float("inf")
    return {"modes": int((counts > 0).sum()), "num_modes": len(m), "high_quality": float(hq.double().mean()),
            "reverse_kl": reverse_kl}
