"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3."""

from __future__ import annotations

import numpy as np

from genlab.metrics.fid import check_features


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x y^T / d + 1)^3, the cubic kernel of Bińkowski et al. 2018, Sec. 5."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3): diagonal terms of k(x, x) and k(y, y) excluded."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(real, fake, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean and std of unbiased MMD^2 over `subsets` random subsets (without replacement) of each set."""
    x, y = check_features(real, "real features"), check_features(fake, "fake features")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
              for _ in range(subsets)]
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values)), "kid_subset_size": m}
