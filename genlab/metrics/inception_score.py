"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), over splits, in float64.

Works with any classifier's logits (the FID Inception's 1008-way head, or a bundled domain classifier).
"""

from __future__ import annotations

import numpy as np
import torch


def _as_probs(logits) -> np.ndarray:
    x = logits.detach().cpu().double().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"logits must be (N, C) with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("logits contain NaN or inf")
    x = x - x.max(1, keepdims=True)
    p = np.exp(x)
    return p / p.sum(1, keepdims=True)


def inception_score_from_probs(probs, *, splits: int = 10, seed: int = 0) -> dict[str, float]:
    """IS mean and std over `splits` disjoint splits of a seeded shuffle of the class probabilities (N, C)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or (p < 0).any() or not np.allclose(p.sum(1), 1, atol=1e-6):
        raise ValueError("probs must be (N, C) rows of class probabilities summing to 1")
    if len(p) < splits:
        raise ValueError(f"need at least {splits} samples for {splits} splits, got {len(p)}")
    p = p[np.random.default_rng(seed).permutation(len(p))]
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(1)
        scores.append(np.exp(kl.mean()))
    return {"is": float(np.mean(scores)), "is_std": float(np.std(scores))}


def inception_score(logits, *, splits: int = 10, seed: int = 0) -> dict[str, float]:
    """IS from logits (N, C): softmax in float64, then `inception_score_from_probs`."""
    return inception_score_from_probs(_as_probs(logits), splits=splits, seed=seed)
