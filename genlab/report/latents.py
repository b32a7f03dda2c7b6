"""Latent-space pictures for families with `encode`/`decode` (AE, VAE, VQ-VAE): a 2-D scatter of test latents
coloured by class (PCA or t-SNE through scikit-learn when the latent has more than 2 dimensions) and
interpolation strips (decode the straight line between two images' latents).
"""

from __future__ import annotations

from pathlib import Path

import torch

METHODS = ("pca", "tsne")


@torch.no_grad()
def encode_all(family, model, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Latents of x, flattened to (N, d) (a VQ-VAE's (N, D, h, w) map becomes one vector per image)."""
    return torch.cat([family.encode(model, x[i : i + batch_size]).flatten(1) for i in range(0, len(x), batch_size)])


def project_2d(z: torch.Tensor, method: str = "pca", seed: int = 0):
    """(N, d) -> (N, 2) numpy: the latents themselves when d <= 2, else PCA or t-SNE (scikit-learn)."""
    z = z.double().numpy()
    if z.shape[1] == 1:
        import numpy as np

        return np.concatenate([z, np.zeros_like(z)], 1)
    if z.shape[1] == 2:
        return z
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, init="pca", random_state=seed).fit_transform(z)
    if method != "pca":
        raise ValueError(f"unknown latent projection '{method}'; expected one of: {', '.join(METHODS)}")
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(z)


def plot_latents(xy, labels, class_names: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.6)
    else:
        cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
        for c in range(len(class_names)):
            m = (labels == c).numpy()
            ax.scatter(xy[m, 0], xy[m, 1], s=3, alpha=0.6, color=cmap(c % cmap.N), label=class_names[c])
        ax.legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def interpolations(family, model, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Row i decodes (1 - t) z(a_i) + t z(b_i) for `steps` values of t from 0 to 1: (n, steps, C, H, W)."""
    z_a, z_b = family.encode(model, x_a), family.encode(model, x_b)
    t = torch.linspace(0, 1, steps).reshape(steps, *([1] * z_a.dim()))
    z = (1 - t) * z_a[None] + t * z_b[None]  # (steps, n, ...)
    out = family.decode(model, z.reshape(-1, *z_a.shape[1:]))  # (steps * n, C, H, W)
    return out.reshape(steps, len(x_a), *out.shape[1:]).transpose(0, 1)
