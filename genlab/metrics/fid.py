"""Fréchet distance between Gaussians fitted to features (FID: Heusel et al. 2017).

Staged: `gaussian_stats(features)` streams a float64 mean and covariance; `frechet_distance(a, b)` compares two.
The matrix square root term tr((S1 S2)^{1/2}) is computed through symmetric eigendecompositions: with
A = S1^{1/2} (symmetric), S1 S2 is similar to A S2 A, which is symmetric positive semi-definite, so
tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A S2 A)). Eigenvalues are clamped at 0, so the result is never NaN,
also when N < d makes the covariances singular (where scipy's `sqrtm` can return complex or NaN values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class GaussianStats:
    """Mean (d,) and covariance (d, d), float64, of n feature vectors."""

    n: int
    mean: np.ndarray
    cov: np.ndarray

    def to_dict(self) -> dict[str, np.ndarray]:
        return {"n": np.array([self.n]), "mean": self.mean, "cov": self.cov}

    @classmethod
    def from_dict(cls, d) -> "GaussianStats":
        return cls(int(np.asarray(d["n"]).reshape(-1)[0]), np.asarray(d["mean"], np.float64), np.asarray(d["cov"], np.float64))


def check_features(features, name: str = "features") -> np.ndarray:
    """(N, d) finite float features as float64 numpy, or a ValueError naming the problem."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, d) feature vectors, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point features, got {x.dtype} (images go through an extractor first)")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf ({(~np.isfinite(x)).any(1).sum()} rows); check the extractor's input")
    return x.astype(np.float64, copy=False)


def gaussian_stats(features, chunk: int = 8192) -> GaussianStats:
    """Streaming float64 mean and unbiased covariance; shifted by the first chunk's mean for numerical accuracy."""
    x = check_features(features)
    n, d = x.shape
    shift = x[:chunk].mean(0)
    s1, s2 = np.zeros(d), np.zeros((d, d))
    for i in range(0, n, chunk):
        c = x[i : i + chunk] - shift
        s1 += c.sum(0)
        s2 += c.T @ c
    mean_c = s1 / n
    cov = (s2 - n * np.outer(mean_c, mean_c)) / (n - 1)
    return GaussianStats(n, mean_c + shift, (cov + cov.T) / 2)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) for symmetric PSD S1, S2, via the eigenvalues of S1^{1/2} S2 S1^{1/2}."""
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}) (Dowson & Landau 1982; Heusel et al. 2017, Eq. 6)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {a.mean.shape[0]} vs {b.mean.shape[0]} (same extractor?)")
    diff = a.mean - b.mean
    value = diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * trace_sqrt_product(a.cov, b.cov)
    return float(max(value, 0.0))
