"""GMM: Gaussian mixture model fit by EM (Dempster et al. 1977) through scikit-learn's `GaussianMixture`.

p(x) = sum_k pi_k N(x; mu_k, Sigma_k) (Bishop 2006, PRML Sec. 9.2), on 2-D points, on flattened pixels, or on the
latents of a trained autoencoder (`model.autoencoder=RUN`: fit on its `encode` outputs, samples decoded).
EM itself is scikit-learn's; this file only copies the fitted parameters into float64 buffers, in
scikit-learn's layout, so a checkpoint is plain safetensors. Log-density and sampling read the buffers only.

Buffer layout (as `GaussianMixture.covariances_` / `precisions_cholesky_`), K components, D dimensions:
full (K, D, D), tied (D, D), diag (K, D), spherical (K,). The precision Cholesky factor U is upper
triangular with Sigma^-1 = U U^T (diag / spherical: 1 / sigma).

A GMM is fit in closed form, not by gradient steps: the family has `fit(model, batch, *, seed)` instead of a
working `train_step`, and the training loop calls it once on the whole training set.

Likelihood convention (as the VAE's): for 8-bit images the continuous density on [-1, 1] becomes the discrete
likelihood of the 8-bit image by P(x) ~ p(x) (2/256)^D, i.e. D log(2/256) is added in nats. The approximation
needs p to be roughly flat across one bin (sigma >> 2/256); pixels that are constant in the training set
(Fashion-MNIST's border) drive their variance to `reg_covar`, so pixel presets raise `reg_covar`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from genlab.dequantization import discrete_log_likelihood
from genlab.progress import bar
from genlab.rng import SampleRNG

SAMPLERS = ("prior",)
SAMPLE_OPTIONS = ("sampler", "batch_size")
LIKELIHOOD = "exact"  # log_likelihood is the mixture density itself
DEPS = ("autoencoder",)  # config fields naming runs this family is built on (loaded frozen by the loop)
DEP_FAMILIES = {"autoencoder": ("ae", "vae", "vqvae")}  # families with continuous encode/decode


@dataclass
class Config:
    n_components: int = 10  # K, mixture components; 8-25 for the toys, 10-100 for pixels or latents
    covariance_type: Literal["full", "diag", "tied", "spherical"] = "full"  # scikit-learn's names
    max_iter: int = 100  # EM iterations (scikit-learn stops earlier at tol 1e-3 on the mean log-likelihood)
    reg_covar: float = 1e-6  # added to covariance diagonals; ~1e-4 for pixels (constant pixels, see docstring)
    max_fit: int = 0  # cap on training points used by the fit (a seeded random subset); 0 = all
    autoencoder: str = ""  # a trained ae/vae/vqvae run directory: fit on its latents, decode samples; "" = pixels


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x",)


class GMM(nn.Module):
    """The mixture's parameters as float64 buffers (+ the frozen autoencoder of a latent GMM, a dependency)."""

    def __init__(self, cfg: Config, spec, autoencoder=None):
        super().__init__()
        if cfg.n_components < 1:
            raise ValueError(f"model.n_components must be >= 1, got {cfg.n_components}")
        self.cfg, self.spec = cfg, spec
        self.data_shape = list(spec.shape)
        self.ae_family = None  # the autoencoder's family module (a plain attribute, not state)
        self.latent_shape: list[int] = []
        if autoencoder is not None:
            self._attach_autoencoder(autoencoder)
            dim = math.prod(self.latent_shape)
        else:
            dim = math.prod(self.data_shape)
        K, D = cfg.n_components, dim
        eye = torch.eye(D, dtype=torch.float64)
        cov = {"full": eye.expand(K, D, D), "tied": eye, "diag": torch.ones(K, D, dtype=torch.float64),
               "spherical": torch.ones(K, dtype=torch.float64)}[cfg.covariance_type]
        # before fit(): K copies of N(0, I), a valid (if useless) mixture
        self.register_buffer("weights", torch.full((K,), 1.0 / K, dtype=torch.float64))  # pi_k
        self.register_buffer("means", torch.zeros(K, D, dtype=torch.float64))  # mu_k
        self.register_buffer("covariances", cov.clone())  # Sigma_k, scikit-learn's layout
        self.register_buffer("precisions_cholesky", cov.clone())  # U_k with Sigma_k^-1 = U_k U_k^T

    def _attach_autoencoder(self, run) -> None:
        """A trained autoencoder run, loaded frozen by the loop (`deps["autoencoder"]`): a submodule that the
        loop keeps out of checkpoints (the run stores it once, under RUN/deps/autoencoder)."""
        if list(run.spec.shape) != self.data_shape:
            raise ValueError(f"model.autoencoder was trained on data of shape {list(run.spec.shape)}, "
                             f"not {self.data_shape}")
        self.autoencoder = run.model
        self.ae_family = run.family
        z = run.family.encode(self.autoencoder, torch.zeros(1, *self.data_shape))
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise ValueError(f"the '{run.family_name}' family's encode does not return continuous latents")
        self.latent_shape = list(z.shape[1:])


def build(cfg: Config, spec, deps) -> GMM:
    return GMM(cfg, spec, deps.get("autoencoder"))


def make_optimizers(model: GMM, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    """None: EM is closed form (see `fit`)."""
    return {}


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    raise RuntimeError("the GMM is fit in closed form by gmm.fit (EM), not by gradient steps")


@torch.no_grad()
def features(model: GMM, x: torch.Tensor, chunk: int = 1024, progress: bool | None = False) -> torch.Tensor:
    """What the mixture models, (B, D) float64: flattened points or pixels, or the autoencoder's latents."""
    assert list(x.shape[1:]) == model.data_shape, f"batch {tuple(x.shape)} vs data {model.data_shape}"
    if model.ae_family is None:
        return x.flatten(1).double()  # (B, D)
    device = model.weights.device
    z = [model.ae_family.encode(model.autoencoder, x[i : i + chunk].to(device))
         for i in bar(range(0, len(x), chunk), progress=progress, desc="encoding", leave=False)]
    return torch.cat(z).flatten(1).double()  # (B, D)


def fit(model: GMM, batch: dict, *, seed: int = 0) -> dict[str, float]:
    """EM on the whole training set batch["x"] (N, ...) through `sklearn.mixture.GaussianMixture`.

    The fitted parameters go into the buffers.

    Returns the fit's summary: `log_prob` (mean log-density of the training points in nats, continuous,
    scikit-learn's `lower_bound_`), `n_iter` and `converged`. EM runs one iteration per `fit` call with
    `warm_start` (the same iterates as one call with `max_iter`), so a progress bar can follow it.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    cfg = model.cfg
    x = batch["x"]
    if cfg.max_fit and len(x) > cfg.max_fit:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: cfg.max_fit]]
    feats = features(model, x, progress=None).cpu().numpy()
    gm = GaussianMixture(cfg.n_components, covariance_type=cfg.covariance_type, max_iter=1, warm_start=True,
                         reg_covar=cfg.reg_covar, random_state=seed % 2**32)
    n_iter = 0
    steps = bar(range(cfg.max_iter), progress=None, desc=f"EM, {cfg.n_components} components on {feats.shape}")
    for _ in steps:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # one iteration per call "does not converge"
            gm.fit(feats)
        n_iter += 1
        steps.set_postfix(log_prob=f"{gm.lower_bound_:.4g}")
        if gm.converged_:
            break
    steps.close()
    for name, value in (("weights", gm.weights_), ("means", gm.means_), ("covariances", gm.covariances_),
                        ("precisions_cholesky", gm.precisions_cholesky_)):
        buf = getattr(model, name)
        buf.copy_(torch.as_tensor(value, dtype=torch.float64).reshape(buf.shape))
    return {"log_prob": float(gm.lower_bound_), "n_iter": float(n_iter), "converged": float(gm.converged_)}


def log_prob(model: GMM, z: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """log p(z) (B,) in nats for features z (B, D), from the buffers; equals scikit-learn's `score_samples`.

    log N(z; mu_k, Sigma_k) = -D/2 log 2pi + log det U_k - |U_k^T (z - mu_k)|^2 / 2 (Bishop 2006, Eq. 2.43),
    then log-sum-exp over k of log pi_k + log N.
    """
    z = z.to(torch.float64)
    mu, U, ct = model.means, model.precisions_cholesky, model.cfg.covariance_type
    D = mu.shape[1]
    if ct in ("full", "tied"):
        log_det = U.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,) or ()
    else:
        log_det = U.log().sum(-1) if ct == "diag" else D * U.log()  # (K,)
    out = []
    for zc in z.split(chunk):
        diff = zc[:, None, :] - mu  # (B, K, D)
        if ct == "full":
            y = torch.einsum("bkd,kde->bke", diff, U)  # (B, K, D): (z - mu_k)^T U_k
        elif ct == "tied":
            y = diff @ U
        elif ct == "diag":
            y = diff * U
        else:
            y = diff * U[:, None]
        log_n = -0.5 * (D * math.log(2 * math.pi) + y.pow(2).sum(-1)) + log_det  # (B, K)
        out.append(torch.logsumexp(log_n + model.weights.log(), dim=1))
    return torch.cat(out)


@torch.no_grad()
def log_likelihood(model: GMM, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact log P(x) (B,) in nats: the mixture density, plus D log(2/256) for 8-bit images.

    Points: the continuous density. Images: the density on [-1, 1] at the pixel values times the volume of one
    8-bit bin, (2/256)^D (the VAE's dequantisation convention; see the module docstring for when it holds).
    A latent GMM models p(z), not p(x): it raises ValueError.
    """
    if model.ae_family is not None:
        raise ValueError("a latent GMM (model.autoencoder set) models the density of latents, not of images: "
                         "it has no log_likelihood of x")
    ll = log_prob(model, features(model, x))
    if len(model.data_shape) == 3:
        ll = discrete_log_likelihood(ll, math.prod(model.data_shape))
    return ll


@torch.no_grad()
def anomaly_score(model: GMM, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """-log p (B,) in nats: of the autoencoder's latents z = encode(x) for a latent GMM, of x itself otherwise.

    A density in latent space is a strong one-class anomaly score: an autoencoder also reconstructs many
    anomalies well, but encodes them away from where the normal data's latents lie (bench/one_class.py).
    """
    return -log_prob(model, features(model, x))


def _scale_noise(model: GMM, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """A eps with A A^T = Sigma_k (Cholesky factor of the covariance), for eps (B, D) and components k (B,)."""
    ct, cov = model.cfg.covariance_type, model.covariances
    if ct == "full":
        L, out = torch.linalg.cholesky(cov), torch.empty_like(eps)  # (K, D, D)
        for j in k.unique().tolist():  # per component, not an (n, D, D) gather: D is 784 for pixels
            out[k == j] = eps[k == j] @ L[j].T
        return out
    if ct == "tied":
        return eps @ torch.linalg.cholesky(cov).T
    if ct == "diag":
        return cov[k].sqrt() * eps
    return cov[k].sqrt()[:, None] * eps


@torch.no_grad()
def sample(model: GMM, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None, sampler: str | None = None,
           batch_size: int = 1024) -> torch.Tensor:
    """Ancestral sampling (Bishop 2006, Sec. 8.1.2): k ~ Categorical(pi), then x = mu_k + L_k eps, eps ~ N(0, I).

    One random stream per sample, so samples do not depend on n or batch size. Images are clamped to [-1, 1];
    a latent GMM's samples are decoded by the autoencoder.
    """
    if cond is not None:
        raise ValueError("the GMM is unconditional; drop --class")
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for gmm; expected one of: {', '.join(SAMPLERS)}")
    device = model.weights.device
    rng = SampleRNG.from_generator(n, generator, device)
    u = rng.rand(dtype=torch.float64)  # (n,)
    k = torch.searchsorted(model.weights.cumsum(0), u, right=True).clamp(max=len(model.weights) - 1)
    eps = rng.randn(model.means.shape[1], dtype=torch.float64)  # (n, D)
    x = (model.means[k] + _scale_noise(model, k, eps)).float()
    if model.ae_family is not None:
        z = x.reshape(n, *model.latent_shape)  # (n, *latent)
        return torch.cat([model.ae_family.decode(model.autoencoder, z[i : i + batch_size]) for i in range(0, n, batch_size)])
    x = x.reshape(n, *model.data_shape)  # (n, C, H, W) or (n, D)
    return x.clamp(-1, 1) if x.dim() == 4 else x
