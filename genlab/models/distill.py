"""Progressive distillation (Salimans & Ho 2022): a student that takes one DDIM step where its teacher takes two.

Each stage starts the student from the teacher's weights and trains it (Algorithm 2 of the paper) so that one
deterministic DDIM step from noise level sigma_t lands where two teacher steps, via the midpoint, land; the
student then samples with half the teacher's steps. Run the stages down to one step with
`genlab distill TEACHER --out DIR --to-steps 1` (genlab/training/distill_stages.py); every stage is a normal run
whose teacher (a `ddpm` run, or the previous `distill` stage) is a frozen run dependency, kept out of the
student's checkpoints and EMA by the loop.

Time grid. The student with N steps samples on the noise levels of the (fractional) training timesteps
t_i = (T - 1) (N - i) / N, i = 0..N-1, then sigma = 0 (the clean image). The grid for 2N steps contains the one
for N steps, so two teacher steps always end on a student step: this replaces the paper's continuous t = i / N.
Fractional timesteps reach the network through `VPDenoiser`'s log-sigma interpolation (the U-Net's sinusoidal
time embedding takes real t). A ddpm teacher with `teacher_steps` steps on this grid is the first stage's teacher.

In genlab's sigma space (x = x_0 + sigma eps) a DDIM (eta = 0) step is x' = D + sigma' (x - D) / sigma. Two
teacher steps sigma -> sigma' -> sigma'' give x''; the student's target x~ is the denoised value whose single
step reaches x'': x~ = (x'' - (sigma''/sigma) x) / (1 - sigma''/sigma) (the paper's Algorithm 2, divided by
alpha). The loss is w(sigma) ||x~ - D_student(x, sigma)||^2 with the paper's weightings (Sec. 4): truncated SNR,
w = max(SNR, 1), or SNR + 1 (what a v-prediction loss is), where SNR = 1 / sigma^2.

The student keeps the teacher's parameterisation (eps or v: `ddpm`'s `model.prediction`). The paper (Sec. 4)
shows eps-prediction breaks down at the last stages (one or two steps from pure noise the x_0 estimate is
x - sigma eps_hat with sigma ~ 157 on the linear schedule); a teacher trained with `model.prediction=v`
distills to fewer steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from genlab.models.labels import class_labels
from genlab.samplers import VPDenoiser, make_alpha_bar, sample_ddim, sample_in_chunks

SAMPLERS = ("ddim",)  # deterministic DDIM on the student's own grid, the sampler it was distilled for
SAMPLE_OPTIONS = ("sampler", "steps", "callback", "batch_size")
DEPS = ("teacher",)  # config fields naming runs (loaded frozen by the loop)
DEP_FAMILIES = {"teacher": ("ddpm", "distill")}
EMA_MODULES = ("student",)


@dataclass
class Config:
    teacher: str = ""  # the teacher run: a ddpm run (first stage) or a distill run (the previous stage)
    teacher_steps: int = 64  # DDIM steps of a ddpm teacher (even; ignored for a distill teacher: its own steps)
    class_cond: bool = False  # the teacher's: true for a class-conditional teacher (`genlab distill` sets it)
    weighting: Literal["truncated_snr", "snr_plus_one"] = "truncated_snr"  # loss weight w(sigma), paper Sec. 4
    lr: float = 2e-4  # AdamW learning rate of the student (the paper: 1e-4 to 2e-4 with linear decay)
    weight_decay: float = 0.0  # AdamW weight decay


def needs(cfg: Config) -> tuple[str, ...]:
    """Labels too when the teacher is class-conditional (`model.class_cond`, checked against the teacher)."""
    return ("x", "y") if cfg.class_cond else ("x",)


def _vp(net) -> tuple[torch.Tensor, str]:
    """(alpha_bar, prediction) of a ddpm network (read from its config, not by importing the ddpm family)."""
    c = net.cfg
    return make_alpha_bar(c.schedule, c.timesteps, c.beta_start, c.beta_end), c.prediction


def grid(denoiser: VPDenoiser, steps: int) -> torch.Tensor:
    """(steps + 1,) float64 sigmas: the student grid at t_i = (T - 1)(steps - i)/steps, i = 0..steps-1, then 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    T = len(denoiser.sigmas)
    t = (T - 1) * torch.arange(steps, 0, -1, dtype=torch.float64) / steps  # (steps,) decreasing
    whole = t == t.round()  # whole timesteps take the table's sigma exactly (the network sees the int t it trained on)
    sigmas = torch.where(whole, denoiser.sigmas[t.round().long()], denoiser.t_to_sigma(t))
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


class Distill(nn.Module):
    """`student` (a trainable copy of the teacher's network) beside the frozen `teacher` run's model.

    `forward(x_t, t, y=None)` is the student network, so a prepared (DDP) model synchronises its gradients.
    """

    def __init__(self, cfg: Config, spec, deps):
        super().__init__()
        if "teacher" not in deps:
            raise ValueError("distill needs a teacher run: model.teacher=RUN (a trained ddpm run or distill stage)")
        run = deps["teacher"]
        if run.family_name not in DEP_FAMILIES["teacher"]:
            raise ValueError(f"model.teacher is a '{run.family_name}' run; distill needs a ddpm or distill run")
        if list(run.spec.shape) != list(spec.shape):
            raise ValueError(f"the teacher was trained on data of shape {list(run.spec.shape)}, this run's data has "
                             f"{list(spec.shape)}; distill on the teacher's dataset ({run.config.data.name})")
        self.cfg, self.spec = cfg, spec
        self.data_shape = list(spec.shape)
        self.teacher = run.model  # frozen: the loop keeps it out of checkpoints, the EMA and the optimizer
        self.teacher_is_stage = run.family_name == "distill"
        teacher_net = self.teacher_net
        if run.family_name == "distill":
            self.teacher_steps = run.model.steps
        else:
            if cfg.teacher_steps < 2 or cfg.teacher_steps % 2:
                raise ValueError(f"model.teacher_steps must be even and >= 2, got {cfg.teacher_steps}")
            self.teacher_steps = cfg.teacher_steps
        if self.teacher_steps < 2:
            raise ValueError("the teacher already samples in 1 step: there is no further stage to distill")
        if self.teacher_steps % 2:
            raise ValueError(f"the teacher samples in {self.teacher_steps} steps, which does not halve")
        self.steps = self.teacher_steps // 2  # this student's sampling steps
        self.student = copy.deepcopy(teacher_net).requires_grad_(True)
        self.alpha_bar, self.prediction = _vp(teacher_net)
        self.class_cond = bool(teacher_net.cfg.class_cond)
        self.num_classes = teacher_net.num_classes
        self.p_uncond = float(teacher_net.cfg.p_uncond) if self.class_cond else 0.0
        self.clip = 1.0 if spec.is_image else None
        if self.class_cond != cfg.class_cond:
            raise ValueError(f"the teacher is {'' if self.class_cond else 'not '}class-conditional: set "
                             f"model.class_cond={str(self.class_cond).lower()} (genlab distill sets it for you)")

    @property
    def teacher_net(self) -> nn.Module:
        """The teacher's denoising network: a ddpm run's model, or the previous stage's student."""
        return self.teacher.student if self.teacher_is_stage else self.teacher

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.student(x_t, t, y)

    def teacher_denoiser(self) -> VPDenoiser:
        return VPDenoiser(self.teacher_net, self.alpha_bar, self.prediction, clip_denoised=self.clip)

    def student_denoiser(self, net=None, clip: bool = True) -> VPDenoiser:
        """The student as D(x, sigma, cond); `net` the (prepared) model to call, `clip` off for training."""
        return VPDenoiser(net if net is not None else self, self.alpha_bar, self.prediction,
                          clip_denoised=self.clip if clip else None)


def build(cfg: Config, spec, deps) -> Distill:
    return Distill(cfg, spec, deps)


def make_optimizers(model: Distill, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    return {"student": torch.optim.AdamW(model.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)}


def _ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """x' = D + sigma' (x - D) / sigma, per sample ((B, 1, ...) sigmas): DDIM eta = 0 in sigma space."""
    return denoised + sigma_next * (x - denoised) / sigma


def distill_target(teacher, x: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
                   cond: dict | None) -> torch.Tensor:
    """x~ (B, ...): the denoised value whose one DDIM step s0 -> s2 equals two teacher steps s0 -> s1 -> s2.

    Salimans & Ho 2022, Algorithm 2 (lines 8-11) in sigma space; s0 > s1 > s2 >= 0 are (B,) float64 sigmas.
    """
    B = x.shape[0]

    def b(s):  # (B,) float64 -> (B, 1, ..., 1) in x's dtype
        return s.to(device=x.device, dtype=x.dtype).reshape(B, *([1] * (x.dim() - 1)))

    x1 = _ddim_step(x, teacher(x, s0, cond), b(s0), b(s1))
    x2 = _ddim_step(x1, teacher(x1, s1, cond), b(s1), b(s2))
    ratio = b(s2 / s0)
    return (x2 - ratio * x) / (1 - ratio)


def loss_weight(sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(sigma) of the x-space loss, SNR = 1 / sigma^2 (Salimans & Ho 2022, Sec. 4): max(SNR, 1) or SNR + 1."""
    snr = 1 / sigma**2
    if weighting == "truncated_snr":
        return snr.clamp(min=1.0)
    if weighting == "snr_plus_one":
        return snr + 1
    raise ValueError(f"unknown weighting '{weighting}'; expected one of: truncated_snr, snr_plus_one")


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """One student update (Algorithm 2): i ~ U{0..N-1} per sample, x = x_0 + sigma_i eps, target from two teacher steps."""
    net = ctx.unwrap(model)
    cfg = net.cfg
    assert list(batch["x"].shape[1:]) == net.data_shape, f"batch {tuple(batch['x'].shape)} vs data {net.data_shape}"
    teacher = net.teacher_denoiser()
    fine = grid(teacher, net.teacher_steps)  # (2N + 1,): the student's step i spans fine[2i] -> fine[2i + 2]

    def loss(mb, rng):
        x0 = mb["x"]
        B = x0.shape[0]
        i = rng.randint(net.steps).squeeze(-1).cpu()  # (B,) student step index
        eps = rng.randn_like(x0)
        y = None
        if net.class_cond:
            y = mb["y"]
            if net.p_uncond > 0:  # keep the teacher's "no label" branch alive, as it was trained (same dropout)
                drop = rng.rand().to(x0.device) < net.p_uncond  # (B,)
                y = torch.where(drop, torch.full_like(y, net.num_classes), y)
        cond = {"y": y} if y is not None else None
        s0, s1, s2 = fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]  # (B,) float64
        x = x0 + s0.to(x0.dtype).reshape(B, *([1] * (x0.dim() - 1))) * eps  # (B, ...) at noise level s0
        with torch.no_grad():
            target = distill_target(teacher, x, s0, s1, s2, cond)
        pred = net.student_denoiser(model, clip=False)(x, s0, cond)  # through the prepared model's forward
        w = loss_weight(s0, cfg.weighting).to(x0.device, x0.dtype)  # (B,)
        value = (w * (pred - target).pow(2).flatten(1).mean(1)).mean()
        return value, {"loss": value.item()}

    return ctx.update("student", loss)


def check_steps(model: Distill, steps: int | None) -> int:
    """The student's step count; any other is an error (it was distilled for exactly one grid)."""
    if steps is not None and steps != model.steps:
        raise ValueError(f"this distilled student samples in exactly {model.steps} step(s) (its teacher took "
                         f"{model.teacher_steps}); got steps={steps}. For other step counts sample its teacher "
                         "or another stage of the distillation")
    return model.steps


@torch.no_grad()
def sample(model: Distill, n: int, *, cond: dict | None = None, generator: torch.Generator | None = None,
           sampler: str | None = None, steps: int | None = None, callback=None, batch_size: int = 256) -> torch.Tensor:
    """n samples (n, *data_shape) in [-1, 1]: deterministic DDIM with the student on its grid of `model.steps` steps.

    x_T ~ N(0, I) per image (own noise stream), scaled to the first sigma as `ddpm.sample` does; with the
    same generator a student and its teacher start from the same x_T.
    """
    if sampler not in (None, "ddim"):
        raise ValueError(f"a distilled student samples with ddim only (the step it was trained to match), got '{sampler}'")
    steps = check_steps(model, steps)
    y = class_labels(cond, n, model.class_cond, model.num_classes)
    D = model.student_denoiser()
    sigmas = grid(D, steps)
    device = next(model.student.parameters()).device

    def run(x, c, r):
        x = sample_ddim(D, x, sigmas, cond={"y": c["y"].to(device)} if c else None, rng=r, callback=callback, eta=0.0)
        return x.clamp(-1, 1) if model.clip else x

    return sample_in_chunks(model, n, model.data_shape, sigmas[0], {"y": y} if y is not None else {}, run,
                            generator=generator, device=device, batch_size=batch_size)


@torch.no_grad()
def sample_teacher(model: Distill, x_T: torch.Tensor, steps: int, cond: dict | None = None) -> torch.Tensor:
    """The teacher's deterministic DDIM output from x_T (B, ...) (already scaled to sigma_max) on the `steps` grid."""
    D = model.teacher_denoiser()
    return sample_ddim(D, x_T, grid(D, steps), cond=cond, eta=0.0)
