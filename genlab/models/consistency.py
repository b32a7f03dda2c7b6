"""Consistency models (Song et al. 2023, "Consistency Models"): one network evaluation from noise to data.

A consistency function maps every point x_sigma = x_0 + sigma z of a probability-flow ODE trajectory to the
trajectory's start, f(x_sigma, sigma) = x_{sigma_min} (Sec. 3). Parameterisation (Sec. 3, Eq. 5, App. C):

    f_theta(x, sigma) = c_skip(sigma) x + c_out(sigma) D_theta(x, sigma),
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),   c_out(sigma) = 1 - c_skip(sigma),

so f_theta(x, sigma_min) = x holds exactly for any weights (the boundary condition). D_theta is a network read
as a denoiser in sigma space, the same VP preconditioning genlab's DDPM uses (`genlab.samplers.VPDenoiser`:
an eps- or v-predicting U-Net on a discrete VP table). The paper instead writes c_out = sigma_data (sigma -
sigma_min) / sqrt(sigma_data^2 + sigma^2) on a raw network output; folding the preconditioning into D_theta lets
a distilled student start from its teacher's weights (f = teacher's x_0 estimate at high noise), which matters
at CPU budgets, and c_out = 1 - c_skip keeps f = x_0 wherever D_theta is exact at low noise.

Training (`model.mode`), on the noise levels sigma_min = t_1 < ... < t_N = sigma_max of Karras et al. 2022's
rho = 7 grid (Song et al. 2023, Sec. 5 and App. C), n ~ U{1..N-1}, z ~ N(0, I), x_{n+1} = x_0 + t_{n+1} z:
  cd  consistency distillation (Algorithm 2): x_hat_n = one Heun (or Euler) step of the probability-flow ODE
      from t_{n+1} to t_n with the frozen teacher's denoiser (`model.teacher=RUN`, a ddpm run);
  ct  consistency training (Algorithm 3): x_hat_n = x_0 + t_n z (the same z), no teacher; N and the target
      decay follow the schedule N(k), mu(k) of App. C (Eq. 19 there), growing N over training.
Loss: d(f_theta(x_{n+1}, t_{n+1}), f_theta^-(x_hat_n, t_n)), with lambda(t_n) = 1 and d the squared L2 (the
paper's best, LPIPS, is a metric network: the layer rules keep it out of model files), L1 or pseudo-Huber
(Song & Dhariwal 2023, Sec. 3.3).

The target network theta^- is this family's own copy (`target`), updated after every optimizer step as
theta^- <- stopgrad(mu theta^- + (1 - mu) theta) (Algorithms 2-3). It is not the loop's EMA (`ctx.ema`), which
the paper keeps separately for sampling (decay 0.9999 vs mu = 0.95 for CD and mu(k) for CT), and which is
absent when train.ema_decay = 0 and changeable on --resume; the target is part of the run's state so resumes are
exact. Samples come from the loop's EMA of `net` (EMA_MODULES), the target and teacher are not averaged.

Sampling (Algorithm 1): x = sigma_max z, x_0 = f(x, sigma_max); then for each tau of a decreasing list,
x = x_0 + sqrt(tau^2 - sigma_min^2) z', x_0 = f(x, tau). One step is the first line; the default taus for k
steps are the interior points of a k + 1 point rho = 7 grid.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from genlab.models.labels import class_labels
from genlab.nn import MLPDenoiser, UNet
from genlab.rng import SampleRNG
from genlab.samplers import VPDenoiser, karras_sigmas, make_alpha_bar
from genlab.samplers.consistency import c_skip_out, distance, ode_step, sample_consistency

SAMPLERS = ("multistep",)
SAMPLE_OPTIONS = ("sampler", "steps", "taus", "batch_size")
RESUMABLE = ("sample_steps",)  # the sampling default a resumed run may change
DEPS = ("teacher",)  # config fields naming runs (loaded frozen by the loop)
DEP_FAMILIES = {"teacher": ("ddpm",)}
EMA_MODULES = ("net",)  # the loop's EMA averages the online network only (target and teacher are not averaged)


@dataclass
class Config:
    mode: Literal["cd", "ct"] = "ct"  # cd: distil model.teacher (Algorithm 2) | ct: train from data alone (Algorithm 3)
    teacher: str = ""  # cd: a trained ddpm run directory; the student copies its network, schedule and labels
    class_cond: bool = False  # class labels (ct; cd follows the teacher and checks this matches it)
    # network (ct; a cd student copies the teacher's architecture and weights)
    base_channels: int = 32  # U-Net width of the first level; 32-128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # width multiplier per resolution level
    num_res_blocks: int = 1  # ResBlocks per level; 1-2
    attn_resolutions: list[int] = field(default_factory=lambda: [7])  # feature-map sizes with self-attention
    mlp_hidden: int = 128  # 2-D points: hidden width
    mlp_layers: int = 3  # 2-D points: residual hidden layers
    dropout: float = 0.0  # dropout in the online network (also overrides a cd teacher's); 0-0.3
    prediction: Literal["eps", "v"] = "v"  # ct: what D_theta's network predicts (v stays bounded at sigma_max)
    schedule: Literal["linear", "cosine"] = "linear"  # ct: the VP table that sets sigma_min, sigma_max and t(sigma)
    timesteps: int = 1000  # ct: entries of that table
    # consistency parameterisation and discretisation
    sigma_data: float = 0.5  # data standard deviation in c_skip (Song et al. 2023, App. C)
    rho: float = 7.0  # the noise grid's rho (Karras et al. 2022, Eq. 5)
    num_scales: int = 18  # cd: N noise levels (the paper's CIFAR-10 CD uses 18)
    solver: Literal["heun", "euler"] = "heun"  # cd: the ODE step with the teacher (the paper: Heun)
    target_decay: float = 0.95  # cd: mu of the target network (the paper's CIFAR-10 CD: 0.95); 0 = no averaging
    ct_s0: int = 2  # ct: initial N (s_0 of the N(k) schedule) ...
    ct_s1: int = 150  # ct: ... final N - 1 (s_1)
    ct_mu0: float = 0.9  # ct: target decay at the start (mu_0)
    ct_total_steps: int = 2000  # ct: K, the step count over which N grows from s_0 to s_1 + 1 (set it to train.steps)
    loss: Literal["l2", "l1", "huber"] = "l2"  # distance d: squared L2 | L1 | pseudo-Huber (Song & Dhariwal 2023)
    # optimisation
    lr: float = 2e-4  # Adam learning rate; 1e-5 - 4e-4 (cd from a teacher: lower)
    # sampling default
    sample_steps: int = 1  # consistency steps (1 = one network evaluation)


def needs(cfg: Config) -> tuple[str, ...]:
    return ("x", "y") if cfg.class_cond else ("x",)


# ----------------------------------------------------------------------------- parameterisation and schedules


def noise_grid(sigma_min: float, sigma_max: float, N: int, rho: float = 7.0) -> torch.Tensor:
    """t_1 = sigma_min < ... < t_N = sigma_max (N,) float64: Karras et al.'s rho grid, increasing (Song et al. 2023, App. C)."""
    return karras_sigmas(sigma_min, sigma_max, N, rho)[:-1].flip(0)


def ct_schedule(k: int, K: int, s0: int, s1: int, mu0: float) -> tuple[int, float]:
    """(N(k), mu(k)) of consistency training (Song et al. 2023, App. C):
    N(k) = ceil(sqrt(k / K ((s_1 + 1)^2 - s_0^2) + s_0^2) - 1) + 1,  mu(k) = exp(s_0 log(mu_0) / N(k))."""
    k = min(k, K)
    N = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
    return N, math.exp(s0 * math.log(mu0) / N)


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) float64 coefficients -> (B, 1, ..., 1) in x's dtype and device."""
    return c.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


# ----------------------------------------------------------------------------- model


class Consistency(nn.Module):
    """`net` (online, trained), `target` (theta^-, a frozen copy moved by `update_target`), `teacher` (cd only).

    `forward(x, sigma, y)` is f_theta; `f(which, ...)` evaluates the consistency function of either network.
    """

    def __init__(self, cfg: Config, spec, teacher=None):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.data_shape = list(spec.shape)
        self.is_image = len(self.data_shape) == 3
        self.num_classes = spec.num_classes if cfg.class_cond else 0
        if teacher is not None:  # cd: the student starts as a trainable copy of the teacher's network
            tcfg = teacher.model.cfg
            self.alpha_bar = make_alpha_bar(tcfg.schedule, tcfg.timesteps, tcfg.beta_start, tcfg.beta_end)
            self.prediction = tcfg.prediction
            self.net = copy.deepcopy(teacher.model).requires_grad_(True).train()
            for m in self.net.modules():
                if isinstance(m, nn.Dropout):
                    m.p = cfg.dropout
            self.teacher = teacher.model  # frozen by the loop; registered so it moves with the model
        else:
            self.alpha_bar = make_alpha_bar(cfg.schedule, cfg.timesteps)
            self.prediction = cfg.prediction
            if self.is_image:
                c, h, _ = spec.shape
                self.net = UNet(c, h, cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attn_resolutions,
                                cfg.dropout, self.num_classes)
            else:
                self.net = MLPDenoiser(spec.shape[0], cfg.mlp_hidden, cfg.mlp_layers, self.num_classes)
            self.teacher = None
        self.target = copy.deepcopy(self.net).requires_grad_(False).eval()
        D = VPDenoiser(self.net, self.alpha_bar)
        self.sigma_min, self.sigma_max = D.sigma_min, D.sigma_max

    def train(self, mode: bool = True):
        super().train(mode)
        self.target.eval()  # theta^- is a fixed function within a step (no dropout)
        if self.teacher is not None:
            self.teacher.eval()  # frozen dependency: always in inference mode
        return self

    def _cond(self, y):
        return {"y": y} if y is not None else None

    def f(self, which: nn.Module, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """f(x, sigma) = c_skip x + c_out D(x, sigma) for the network `which` (net or target); sigma (B,) float64."""
        clip = 1.0 if self.is_image and not torch.is_grad_enabled() else None  # clip denoised images at inference only
        D = VPDenoiser(which, self.alpha_bar, self.prediction, clip_denoised=clip)
        c_skip, c_out = c_skip_out(sigma.to(torch.float64).cpu(), self.sigma_min, self.cfg.sigma_data)
        return _bc(c_skip, x) * x + _bc(c_out, x) * D(x, sigma, self._cond(y))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.f(self.net, x, sigma, y)

    def teacher_denoiser(self):
        clip = 1.0 if self.is_image else None  # as the ddpm family samples
        return VPDenoiser(self.teacher, self.alpha_bar, self.prediction, clip_denoised=clip)

    @torch.no_grad()
    def update_target(self, mu: float) -> None:
        """theta^- <- mu theta^- + (1 - mu) theta (Song et al. 2023, Algorithms 2 and 3)."""
        for t, p in zip(self.target.parameters(), self.net.parameters()):
            t.lerp_(p.detach(), 1 - mu)
        for t, b in zip(self.target.buffers(), self.net.buffers()):
            t.copy_(b)


def build(cfg: Config, spec, deps) -> Consistency:
    if cfg.mode == "cd":
        if "teacher" not in deps:
            raise ValueError("model.mode=cd distils a trained diffusion model: set model.teacher=RUN (a ddpm run), "
                             "or use model.mode=ct to train without one")
        t = deps["teacher"]
        tshape, shape = list(t.spec.shape), list(spec.shape)
        if tshape != shape:
            raise ValueError(f"the teacher {cfg.teacher} was trained on data of shape {tshape}, this data has "
                             f"{shape}; distil on the teacher's dataset")
        if t.model.cfg.class_cond != cfg.class_cond:
            raise ValueError(f"the teacher is {'' if t.model.cfg.class_cond else 'not '}class-conditional: set "
                             f"model.class_cond={str(t.model.cfg.class_cond).lower()} to match it")
        if cfg.class_cond and t.spec.num_classes != spec.num_classes:
            raise ValueError(f"the teacher has {t.spec.num_classes} classes, this data {spec.num_classes}")
        if cfg.num_scales < 2:
            raise ValueError(f"model.num_scales must be >= 2 (noise levels of the distillation grid), got {cfg.num_scales}")
        if not 0 <= cfg.target_decay < 1:
            raise ValueError(f"model.target_decay must be in [0, 1), got {cfg.target_decay}")
        return Consistency(cfg, spec, t)
    if cfg.teacher:
        raise ValueError("model.teacher is used by model.mode=cd only; drop it, or set model.mode=cd")
    if not 1 <= cfg.ct_s0 < cfg.ct_s1 or cfg.ct_total_steps < 1 or not 0 < cfg.ct_mu0 < 1:
        raise ValueError("consistency training needs 1 <= model.ct_s0 < model.ct_s1, model.ct_total_steps >= 1 and "
                         f"0 < model.ct_mu0 < 1; got {cfg.ct_s0}, {cfg.ct_s1}, {cfg.ct_total_steps}, {cfg.ct_mu0}")
    return Consistency(cfg, spec)


def make_optimizers(model: Consistency, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"model": torch.optim.Adam(model.net.parameters(), lr=cfg.lr)}


# ----------------------------------------------------------------------------- objective


def scales(cm: Consistency, step: int) -> tuple[int, float]:
    """(N, mu) at this optimizer step: fixed for cd, the N(k), mu(k) schedule for ct."""
    cfg = cm.cfg
    if cfg.mode == "cd":
        return cfg.num_scales, cfg.target_decay
    return ct_schedule(step, cfg.ct_total_steps, cfg.ct_s0, cfg.ct_s1, cfg.ct_mu0)


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One step of Algorithm 2 (cd) or 3 (ct), then the target update theta^- <- mu theta^- + (1 - mu) theta."""
    cm = ctx.unwrap(model)
    cfg = cm.cfg
    assert list(batch["x"].shape[1:]) == cm.data_shape, f"batch {tuple(batch['x'].shape)} vs data {cm.data_shape}"
    N, mu = scales(cm, ctx.step)
    grid = noise_grid(cm.sigma_min, cm.sigma_max, N, cfg.rho)  # (N,) increasing, float64 on the CPU

    def loss(mb, rng):
        x0 = mb["x"]
        y = mb["y"] if cfg.class_cond else None
        n = rng.randint(N - 1).squeeze(-1).cpu()  # (B,) 0..N-2: t_n = grid[n], t_{n+1} = grid[n + 1]
        z = rng.randn_like(x0)
        sigma, sigma_next = grid[n], grid[n + 1]
        x_next = x0 + _bc(sigma_next, x0) * z
        with torch.no_grad():
            if cfg.mode == "cd":  # one ODE step of the teacher from t_{n+1} back to t_n
                x_hat = ode_step(cm.teacher_denoiser(), x_next, sigma_next, sigma, cm._cond(y), cfg.solver)
            else:  # the same z at the lower level: the ODE step estimated from data (Song et al. 2023, Sec. 5)
                x_hat = x0 + _bc(sigma, x0) * z
        target = _target(cm, x_hat, sigma, y)
        pred = model(x_next, sigma_next, y)  # through the (DDP-)prepared forward
        value = distance(pred, target, cfg.loss).mean()
        return value, {"loss": value.item()}

    logs = ctx.update("model", loss)
    cm.update_target(mu)
    return {**logs, "num_scales": float(N), "target_decay": mu}


def _target(cm: Consistency, x: torch.Tensor, sigma: torch.Tensor, y) -> torch.Tensor:
    """f_theta^-(x, sigma) without gradients and without clipping (the online branch is not clipped either)."""
    c_skip, c_out = c_skip_out(sigma, cm.sigma_min, cm.cfg.sigma_data)
    with torch.no_grad():
        D = VPDenoiser(cm.target, cm.alpha_bar, cm.prediction)
        return _bc(c_skip, x) * x + _bc(c_out, x) * D(x, sigma, cm._cond(y))


# ----------------------------------------------------------------------------- sampling


def sample_taus(cm: Consistency, steps: int, taus=None) -> list[float]:
    """The decreasing intermediate noise levels tau_1 > ... > tau_{steps-1} of multistep sampling (Algorithm 1)."""
    if taus is not None:
        taus = [float(s) for s in (taus if isinstance(taus, (list, tuple)) else [taus])]
        if len(taus) != steps - 1:
            raise ValueError(f"{steps} consistency steps take {steps - 1} intermediate noise levels (taus), "
                             f"got {len(taus)}")
        if any(not cm.sigma_min < s < cm.sigma_max for s in taus) or any(b >= a for a, b in zip(taus, taus[1:])):
            raise ValueError(f"taus must decrease strictly within ({cm.sigma_min:.4g}, "
                             f"{cm.sigma_max:.4g}), got {taus}")
        return taus
    if steps == 1:
        return []
    return karras_sigmas(cm.sigma_min, cm.sigma_max, steps + 1, cm.cfg.rho)[1:-2].tolist()


def max_steps(cfg: Config) -> int:
    """Most sampling steps worth taking: the noise levels the model was trained on (N for cd, s_1 + 1 for ct)."""
    return cfg.num_scales if cfg.mode == "cd" else cfg.ct_s1 + 1


@torch.no_grad()
def sample(model: Consistency, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, steps: int | None = None, taus=None, batch_size: int = 500) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1); steps = 1 is one network evaluation.

    `taus` optionally gives the steps - 1 intermediate noise levels (decreasing); the default is a rho grid.
    """
    cfg = model.cfg
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for consistency; expected one of: {', '.join(SAMPLERS)}")
    steps = steps or cfg.sample_steps
    if not 1 <= steps <= max_steps(cfg):
        raise ValueError(f"consistency sampling takes 1..{max_steps(cfg)} steps (the noise levels this model was "
                         f"trained on), got {steps}")
    taus = sample_taus(model, steps, taus)
    device = next(model.net.parameters()).device
    y = class_labels(cond, n, cfg.class_cond, model.num_classes)
    if y is None and cfg.class_cond:
        y = torch.arange(n) % model.num_classes  # balanced classes when none are asked for
    was_training = model.training
    model.eval()
    rng = SampleRNG.from_generator(n, generator, device)
    grid = torch.tensor([model.sigma_max, *taus, 0.0], dtype=torch.float64)

    def f(x, sigma, c):
        return model.f(model.net, x, sigma, c["y"] if c else None)

    out = []
    for start in range(0, n, batch_size):
        r = rng.split(start, min(n, start + batch_size))
        c = {"y": y[start : start + len(r)].to(device)} if y is not None else None
        x = r.randn(*model.data_shape) * model.sigma_max
        x0 = sample_consistency(f, x, grid, cond=c, rng=r, sigma_min=model.sigma_min)
        out.append(x0.clamp(-1, 1) if model.is_image else x0)
    model.train(was_training)
    return torch.cat(out)
