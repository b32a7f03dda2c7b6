"""Perceptual path length (Karras et al. 2019, "A Style-Based Generator Architecture for GANs", Sec. 3.1 and
Appendix B): how much the image changes, perceptually, per small step along a latent interpolation path.

    l_Z = E[ d(G(slerp(z0, z1; t)), G(slerp(z0, z1; t + eps))) / eps^2 ],   z0, z1 ~ N(0, I)
    l_W = E[ d(g(lerp(f(z0), f(z1); t)), g(lerp(f(z0), f(z1); t + eps))) / eps^2 ]  (style-based: w = f(z))

Conventions, as in the StyleGAN reference code:
- eps = 1e-4; d is a perceptual distance (LPIPS; `genlab.metrics.lpips.DomainLPIPS` on small datasets).
- sampling 'full': t ~ U(0, 1); 'end': t = 0, i.e. only path endpoints (the paper's l_Z 'end' / l_W 'end').
- the 1 % lowest and 1 % highest distances are dropped before averaging (outliers from degenerate pairs).
- the generator's images are used as floats, *not* quantized to uint8. The uint8 trap: a step of 1e-4 in the
  latent moves pixels by far less than one grey level (2 / 255 in [-1, 1]), so after quantization most pairs are
  identical (distance 0) and a few differ by one level (distance / eps^2 ~ 1e4 times too large). Every other
  genlab metric quantizes first; this one must not, and `perceptual_path_length` refuses uint8 images.

Interpolation in Z: StyleGAN slerps unit vectors (its mapping network normalises z, so only directions matter).
Here directions are slerped the same way and the norm is interpolated linearly, so generators that take z
unnormalised (DCGAN-style) stay on their typical shell; for generators that normalise z the two agree.
Randomness: each path sample draws z0, z1, t from its own stream (`genlab.rng.SampleRNG`), so the result does
not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from genlab.rng import SampleRNG

EPSILON = 1e-4


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation (B, D), t (B, 1)."""
    return a + t * (b - a)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of the directions of a, b (B, D) at t (B, 1), with linearly interpolated norm."""
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)  # (B, 1)
    u_a, u_b = a / norm_a, b / norm_b
    cos = (u_a * u_b).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)  # (B, 1)
    omega = torch.acos(cos)  # angle between the directions
    ortho = u_b - cos * u_a  # the part of u_b orthogonal to u_a
    ortho = ortho / ortho.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    u = u_a * torch.cos(t * omega) + ortho * torch.sin(t * omega)  # unit vector, angle t * omega from u_a
    return u * lerp(norm_a, norm_b, t)


def sample_path_latents(
    n: int, latent_dim: int, *, sampling: str = "end", generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Path endpoints z0, z1 ~ N(0, I) (n, D) and positions t (n, 1): U(0, 1) for 'full', 0 for 'end'."""
    if sampling not in ("end", "full"):
        raise ValueError(f"unknown path sampling '{sampling}'; expected one of: end, full")
    rng = SampleRNG.from_generator(n, generator)
    z0, z1 = rng.randn(latent_dim, dtype=dtype), rng.randn(latent_dim, dtype=dtype)  # (n, D) each
    t = rng.rand(1, dtype=dtype)  # (n, 1); drawn for 'end' too, so z0, z1 are the same for both samplings
    return z0, z1, (t if sampling == "full" else torch.zeros_like(t))


@torch.no_grad()
def ppl_distances(
    generate: Callable[[torch.Tensor], torch.Tensor],
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    n: int,
    latent_dim: int,
    space: str = "z",
    mapping: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sampling: str = "end",
    epsilon: float = EPSILON,
    batch_size: int = 100,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Unfiltered per-path values d(G(p(t)), G(p(t + eps))) / eps^2, float64 (n,). Karras et al. 2019, Eq. 2-3.

    `generate(latents (B, D)) -> float images (B, C, H, W) in [-1, 1]` takes z (space='z') or w (space='w');
    `mapping(z (B, D)) -> w (B, D_w)` is required for space='w'. `distance(x0, x1) -> (B,)`.
    """
    if space not in ("z", "w"):
        raise ValueError(f"unknown latent space '{space}'; expected one of: w, z")
    if (space == "w") != (mapping is not None):
        raise ValueError("space='w' needs a mapping callable (z -> w); space='z' takes none")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be a small positive step (the reference uses 1e-4), got {epsilon}")
    z0_all, z1_all, t_all = sample_path_latents(n, latent_dim, sampling=sampling, generator=generator, dtype=dtype)
    out = []
    for start in range(0, n, batch_size):
        z0, z1, t = (v[start : start + batch_size].to(device) for v in (z0_all, z1_all, t_all))
        b = z0.shape[0]
        if space == "z":
            p0, p1 = slerp(z0, z1, t), slerp(z0, z1, t + epsilon)
        else:
            w = mapping(torch.cat([z0, z1]))  # (2B, D_w)
            w0, w1 = w[:b], w[b:]
            p0, p1 = lerp(w0, w1, t), lerp(w0, w1, t + epsilon)
        images = generate(torch.cat([p0, p1]))  # (2B, C, H, W)
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError(
                f"generate must return float images in [-1, 1], got {getattr(images, 'dtype', type(images).__name__)}: "
                "path length needs un-quantized images (a 1e-4 latent step changes pixels by far less than one "
                "uint8 level, so quantized distances are 0 or ~1e4 times too large)"
            )
        if images.shape[0] != 2 * b:
            raise ValueError(f"generate returned {images.shape[0]} images for {2 * b} latents")
        d = distance(images[:b], images[b:])
        if d.shape != (b,):
            raise ValueError(f"distance must return one value per pair, shape ({b},); got {tuple(d.shape)}")
        out.append(d.double().cpu() / epsilon**2)
    return torch.cat(out).numpy()


def ppl_from_distances(distances, *, lo: float = 1.0, hi: float = 99.0) -> dict:
    """Mean of the distances between the lo-th and hi-th percentiles (StyleGAN: 1 and 99, inclusive bounds)."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"need finite path distances, got {d.size} values ({(~np.isfinite(d)).sum()} not finite)")
    lo_v = np.percentile(d, lo, method="lower")
    hi_v = np.percentile(d, hi, method="higher")
    kept = d[(d >= lo_v) & (d <= hi_v)]
    return {"ppl": float(kept.mean()), "n": int(d.size), "n_kept": int(kept.size)}


def perceptual_path_length(
    generate: Callable[[torch.Tensor], torch.Tensor],
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    n: int = 10000,
    latent_dim: int,
    space: str = "z",
    mapping: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sampling: str = "end",
    epsilon: float = EPSILON,
    batch_size: int = 100,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """PPL (Karras et al. 2019): {"ppl", "n", "n_kept", "distances" (float64 (n,), unfiltered)}.

    The StyleGAN paper uses n = 100,000 with LPIPS-VGG on 256x256 crops; say which n and distance you used.
    """
    distances = ppl_distances(
        generate, distance, n=n, latent_dim=latent_dim, space=space, mapping=mapping, sampling=sampling,
        epsilon=epsilon, batch_size=batch_size, generator=generator, device=device, dtype=dtype,
    )  # fmt: skip
    return {**ppl_from_distances(distances), "distances": distances}
