"""Improved precision & recall (Kynkäänniemi et al. 2019) and density & coverage (Naeem et al. 2020).

Each real sample r_i gets a ball of radius rho_i = distance to its k-th nearest real neighbour (likewise for
fakes). With D_ij = ||r_i - f_j||:
  precision = fraction of fakes inside some real ball          (any_i D_ij < rho_i)
  recall    = fraction of reals inside some fake ball          (any_j D_ij < rho_fake_j)
  density   = (1/k) * mean over fakes of the number of real balls containing it
  coverage  = fraction of real balls that contain at least one fake (min_j D_ij < rho_i)

Distances are exact and computed block by block (features are upcast to float64 one block at a time), so
memory stays bounded by the block size: no N x M matrix is ever held, and 50k x 50k runs in well under 2 GB.
They are rounded exactly as the `prdc` package gets them from scikit-learn (d^2 = -2 a.b + |a|^2 + |b|^2 in
float64, rounded to the features' dtype, clamped at 0, square root), so the values equal prdc's. The k-NN pass
over a set with itself computes each pair of blocks once (the matrix is symmetric).
`inclusive=False` uses `<` as prdc does; `inclusive=True` uses `<=` as the original precision/recall code.
"""

from __future__ import annotations

import numpy as np
import torch

from genlab.metrics.fid import check_features


def _validated(x, name: str) -> torch.Tensor:
    """Checked (N, d) features; float32 stays float32 (prdc rounds its distances to it), others become float64."""
    check_features(x, name)
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
    return torch.from_numpy(a if a.dtype == np.float32 else a.astype(np.float64))


def _blocks(n: int, size: int):
    for i in range(0, n, size):
        yield i, min(n, i + size)


class _Blocks:
    """A feature set with float64 squared norms, handing out float64 blocks on demand."""

    def __init__(self, x: torch.Tensor):
        self.x, self.dtype = x, x.dtype
        self.n2 = torch.cat([(x[i:j].double() ** 2).sum(1) for i, j in _blocks(len(x), 8192)])

    def __len__(self) -> int:
        return len(self.x)

    def dist(self, other: "_Blocks", i0, i1, j0, j1) -> torch.Tensor:
        """Exact distances between rows i0:i1 of self and j0:j1 of other, rounded as scikit-learn does."""
        d2 = -2 * (self.x[i0:i1].double() @ other.x[j0:j1].double().T)
        d2 += self.n2[i0:i1, None]
        d2 += other.n2[None, j0:j1]
        return d2.to(self.dtype).clamp_(min=0).sqrt_().double()


def _radii(s: _Blocks, k: int, block: int) -> torch.Tensor:
    """(N, k + 1) ascending distances to the nearest rows, the row itself (0) first."""
    n = len(s)
    if n <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} samples, got {n}")
    best = torch.full((n, k + 1), float("inf"), dtype=torch.float64)  # k+1 smallest per row, self included

    def merge(rows: slice, d: torch.Tensor):
        best[rows] = torch.cat([best[rows], d], 1).topk(k + 1, dim=1, largest=False).values

    for i0, i1 in _blocks(n, block):
        for j0, j1 in _blocks(n, block):
            if j0 < i0:
                continue  # already seen as the transpose of block (j, i)
            d = s.dist(s, i0, i1, j0, j1)
            if i0 == j0:
                d.diagonal().zero_()  # the point itself (scikit-learn zeroes the diagonal of X vs X)
            merge(slice(i0, i1), d)
            if j0 != i0:
                merge(slice(j0, j1), d.T)
    return best.sort(1).values


def knn_radii(x, k: int, block: int = 2048) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (the point itself counts as the 0-th)."""
    return _radii(_Blocks(_validated(x, "features")), k, block)[:, k]


def prdc(real, fake, *, k: int = 5, inclusive: bool = False, block: int = 2048) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` features against `real` features (each (N, d))."""
    return prdc_ks(real, fake, ks=(k,), inclusive=inclusive, block=block)[k]


def prdc_ks(real, fake, *, ks=(3, 5), inclusive: bool = False, block: int = 2048) -> dict[int, dict[str, float]]:
    """`prdc` for several k at the cost of one: the k-NN lists and the real-fake distances are shared."""
    r, f = _validated(real, "real features"), _validated(fake, "fake features")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    if r.dtype != f.dtype:
        r, f = r.double(), f.double()
    R, F = _Blocks(r), _Blocks(f)
    ks = sorted(set(ks))
    nn_r, nn_f = _radii(R, ks[-1], block), _radii(F, ks[-1], block)
    less = torch.le if inclusive else torch.lt
    acc = {k: dict(fake_in_real=torch.zeros(len(F), dtype=torch.bool), fake_count=torch.zeros(len(F), dtype=torch.float64),
                   real_covered=torch.zeros(len(R), dtype=torch.bool), real_in_fake=torch.zeros(len(R), dtype=torch.bool))
           for k in ks}
    for i0, i1 in _blocks(len(R), block):
        for j0, j1 in _blocks(len(F), block):
            d = R.dist(F, i0, i1, j0, j1)  # (br, bf)
            for k, a in acc.items():
                in_real = less(d, nn_r[i0:i1, k, None])  # fake j inside real ball i
                a["fake_in_real"][j0:j1] |= in_real.any(0)
                a["fake_count"][j0:j1] += in_real.sum(0)
                a["real_covered"][i0:i1] |= in_real.any(1)
                a["real_in_fake"][i0:i1] |= less(d, nn_f[None, j0:j1, k]).any(1)
    return {k: {
        "precision": float(a["fake_in_real"].double().mean()),
        "recall": float(a["real_in_fake"].double().mean()),
        "density": (1.0 / k) * (a["fake_count"].sum().item() / len(F)),  # prdc's order of operations
        "coverage": float(a["real_covered"].double().mean()),
    } for k, a in acc.items()}


def precision_recall(real, fake, *, k: int = 3, inclusive: bool = False, block: int = 2048) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019; their default k = 3)."""
    out = prdc(real, fake, k=k, inclusive=inclusive, block=block)
    return {"precision": out["precision"], "recall": out["recall"]}


def density_coverage(real, fake, *, k: int = 5, inclusive: bool = False, block: int = 2048) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020; their default k = 5)."""
    out = prdc(real, fake, k=k, inclusive=inclusive, block=block)
    return {"density": out["density"], "coverage": out["coverage"]}
