"""2-D toy distributions for mode-coverage experiments.

`ring8` and `grid25` follow the VEEGAN (Srivastava et al. 2017) / PacGAN (Lin et al. 2018) protocol:
ring8 is an equal mixture of 8 Gaussians with means evenly spaced on a circle of radius 1 and std 0.01;
grid25 is an equal mixture of 25 Gaussians with means on the grid {-4, -2, 0, 2, 4}^2 and std 0.05.
`swissroll` and `moons` come from scikit-learn's generators, scaled to roughly [-2, 2].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genlab.rng import derive_seed

TOYS = ["ring8", "grid25", "swissroll", "moons"]


def toy_modes(name: str) -> tuple[torch.Tensor, float]:
    """(means (K, 2), std) of the Gaussian-mixture toys."""
    if name == "ring8":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return torch.stack([angles.cos(), angles.sin()], 1).float(), 0.01
    if name == "grid25":
        g = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        return torch.cartesian_prod(g, g), 0.05
    raise ValueError(f"'{name}' is not a Gaussian-mixture toy; expected ring8 or grid25")


def make_toy(name: str, n: int, seed=0) -> torch.Tensor:
    """n points (float32, (n, 2)) of toy `name`, deterministic in `seed` (any int or tuple)."""
    s = derive_seed("toy", name, seed)
    if name in ("ring8", "grid25"):
        means, std = toy_modes(name)
        g = torch.Generator().manual_seed(s)
        k = torch.randint(0, len(means), (n,), generator=g)
        return means[k] + std * torch.randn(n, 2, generator=g)
    from sklearn.datasets import make_moons, make_swiss_roll

    rs = np.random.RandomState(s % 2**32)
    if name == "swissroll":
        pts, _ = make_swiss_roll(n, noise=0.25, random_state=rs)
        return torch.from_numpy(pts[:, [0, 2]] / 7.5).float()
    if name == "moons":
        pts, _ = make_moons(n, noise=0.05, random_state=rs)
        return torch.from_numpy((pts - [0.5, 0.25]) * 1.5).float()
    raise ValueError(f"unknown toy '{name}'; expected one of: {', '.join(TOYS)}")
