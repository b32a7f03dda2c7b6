"""Latent consistency models (Luo et al. 2023, "Latent Consistency Models: Synthesizing High-Resolution Images
with Few-Step Inference"): 1-8 step sampling distilled from a trained latent diffusion (`ldm`) run.

The teacher (`model.teacher=RUN`, an ldm run) is loaded frozen by the loop with its first stage. The student is
a trainable copy of the teacher's latent U-Net (the paper initialises from the teacher, Sec. 4.2), read as a
consistency function on the scaled latents z, in genlab's sigma space z_sigma = z_0 + sigma eps:

    f_theta(z, sigma, c) = c_skip(u) z + c_out(u) D_theta(z, sigma, c),    u = scaling * t(sigma)     (Eq. 9)

with D_theta the student network in the teacher's eps/v preconditioning (its x_0 estimate), t(sigma) the DDPM
timestep and c_skip(0) = 1, c_out(0) = 0 (`genlab.samplers.consistency.c_skip_out`; scaling = 10 as the authors'
code): the consistency boundary condition f(z, sigma_min) = z holds exactly for any weights.

Latent consistency distillation (Algorithm 1), on the "skipping-step" grid t_0 = T-1 > t_1 > ... > t_N = 0 of
training timesteps k apart (Sec. 4.3; k = 20 of T = 1000 in the paper):

    z = s E(x) (the teacher's frozen first stage),  n ~ U{0..N-1},  z_n = z + sigma(t_n) eps,
    z_hat = Psi(z_n, t_n -> t_{n+1}; w)      one solver step of the *guided* teacher (DDIM = Euler, or Heun):
            the augmented PF-ODE of Sec. 4.2, Eq. 12, whose drift mixes the conditional and unconditional teacher,
            Psi(c) + w (Psi(c) - Psi(0)) — the classifier-free-guidance combination, which is linear in the step,
            so it is the step of the guided denoiser (the repo's one CFG wrapper, inside ldm.denoiser);
    L = d(f_theta(z_n, t_n, c), f_theta^-(z_hat, t_{n+1}, c))   (d: squared L2, L1 or pseudo-Huber)

then theta^- <- mu theta^- + (1 - mu) theta (mu = 0.95, Algorithm 1's EMA target). The guidance scale is fixed
at distillation time (`model.guidance`, the repo's CFG scale s; the paper's w = s - 1, Eq. 12): one student per
scale, sampled without the unconditional branch, so one network evaluation per step. (The paper also embeds w
in the student to cover a range [w_min, w_max]; genlab's U-Net has no w input, so this is the fixed-w variant,
as LCM-LoRA.) The target network is this family's own copy (`target`, part of the run's state, so resumes are
exact; as the `consistency` family), not the loop's EMA, which averages the student for sampling.

Sampling (Algorithm 3, multistep latent consistency sampling): z = f(z_T, T), then re-noise to the next chosen
timestep of the skipping grid and apply f again; 1, 2, 4 or 8 steps, through the shared sampler signature
(`genlab.samplers.consistency.sample_consistency`), then the teacher's decoder. Teacher, first stage and text
encoder stay frozen and out of the checkpoints (the first stage is one module shared by teacher and student).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from genlab.errors import UsageError
from genlab.samplers import VPDenoiser, ddim_timesteps, sample_in_chunks
from genlab.samplers.consistency import c_skip_out, distance, ode_step, sample_consistency

SAMPLERS = ("consistency",)  # multistep consistency sampling (Algorithm 3)
SAMPLE_OPTIONS = ("sampler", "steps", "guidance", "callback", "batch_size")
RESUMABLE = ("sample_steps",)  # the sampling default a resumed run may change
DEPS = ("teacher",)  # config fields naming runs (loaded frozen by the loop)
DEP_FAMILIES = {"teacher": ("ldm",)}
EMA_MODULES = ("student",)  # the loop's EMA averages the student (teacher frozen, target is theta^-)


@dataclass
class Config:
    teacher: str = ""  # a trained ldm run directory (required): its U-Net, first stage, schedule and conditions
    guidance: float = 3.0  # CFG scale s distilled in (1 = the conditional teacher; the paper's w = s - 1)
    skip: int = 20  # k: training timesteps between the two ends of a distillation pair (paper: 20 of 1000)
    solver: Literal["euler", "heun"] = "euler"  # Psi: DDIM (= Euler in sigma space, the paper's) | Heun (2 calls)
    loss: Literal["l2", "l1", "huber"] = "l2"  # d: squared L2 | L1 | pseudo-Huber (Song & Dhariwal 2023)
    target_decay: float = 0.95  # mu of the target network theta^- (Algorithm 1); 0 = the student itself
    sigma_data: float = 0.5  # sigma_data in c_skip (Song et al. 2023, App. C)
    boundary_scaling: float = 10.0  # u = scaling * timestep in c_skip/c_out (Luo et al.'s code: 10)
    dropout: float = 0.0  # dropout in the student (replaces the teacher's); 0-0.1
    lr: float = 1e-4  # AdamW learning rate; 1e-5 - 2e-4 (the student starts from the teacher)
    weight_decay: float = 0.0  # AdamW weight decay
    sample_steps: int = 4  # sampling steps by default; 1-8 (at most the skipping grid's N)


def _teacher_meta(path: str) -> dict | None:
    """The newest checkpoint record of a run directory (family and config), or None if there is none."""
    ckpts = Path(path, "checkpoints").glob("step-*.json") if path else []
    metas = sorted(ckpts, key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else -1)
    for p in reversed(metas):
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return None


def needs(cfg: Config) -> tuple[str, ...]:
    """The teacher's batch keys (read from its run directory); ("x",) when that directory is not there (a moved
    run: sampling conditions then come from the caller)."""
    from genlab.config import build_run_config  # the teacher's typed config, to ask its family
    from genlab.models import FAMILIES

    meta = _teacher_meta(cfg.teacher)
    if meta is None or meta.get("family") not in FAMILIES:
        return ("x",)
    fam = FAMILIES[meta["family"]]
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in meta.get("config", {}).items()}
    try:
        return tuple(fam.needs(build_run_config(meta["family"], fam.Config, raw).model))
    except (UsageError, ValueError, TypeError):  # a record this genlab cannot read: build() reports the teacher
        return ("x",)


# ----------------------------------------------------------------------------------------------- model


def _dependency_objects(module: nn.Module) -> list:
    """Objects a copy of `module` must share: frozen runs held as plain attributes (the ldm's `ae_run`)."""
    return [v for m in module.modules() for v in vars(m).values() if hasattr(v, "family") and hasattr(v, "model")]


class LCM(nn.Module):
    """`teacher` (the frozen ldm), `student` (trained) and `target` (theta^-): copies of the teacher's network
    sharing its first stage. `forward(z, sigma, cond)` is f_theta."""

    def __init__(self, cfg: Config, spec, teacher):
        super().__init__()
        self.cfg, self.spec, self.data_shape = cfg, spec, list(spec.shape)
        self.__dict__["tfam"] = teacher.family  # the ldm family module (a plain attribute, not state)
        tm = teacher.model
        self.teacher = tm  # frozen by the loop; registered so it moves with the model
        # the first stage and the runs it came from stay one shared object: frozen, never copied or saved
        shared = {id(tm.first_stage): tm.first_stage, **{id(o): o for o in _dependency_objects(tm)}}
        frozen = {id(t) for t in (*tm.first_stage.parameters(), *tm.first_stage.buffers())}
        self.student = copy.deepcopy(tm, dict(shared)).train()
        for p in self.student.parameters():
            p.requires_grad_(id(p) not in frozen)
        for m in self.student.modules():
            if isinstance(m, nn.Dropout):
                m.p = cfg.dropout
        self.target = copy.deepcopy(self.student, dict(shared)).requires_grad_(False).eval()
        self.latent_shape = list(tm.latent_shape)
        table = VPDenoiser(tm, self.tfam.alpha_bar(tm.cfg), tm.cfg.prediction)
        self.sigma_min, self.sigma_max = table.sigma_min, table.sigma_max
        self.__dict__["table"] = table  # sigma <-> timestep (float64, CPU)
        T = tm.cfg.timesteps
        self.N = max(1, round((T - 1) / cfg.skip))  # skipping-step grid: N + 1 timesteps T-1 ... 0, ~k apart
        self.grid = ddim_timesteps(T, self.N + 1)  # (N + 1,) int64, decreasing

    def __deepcopy__(self, memo):  # the EMA copies the model: share the dependency runs held as attributes
        for o in _dependency_objects(self):
            memo[id(o)] = o
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in vars(self).items():  # the family module and the sigma table are shared, not state
            new.__dict__[k] = v if k in ("tfam", "table") else copy.deepcopy(v, memo)
        return new

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen dependency (and the shared first stage): always in inference mode
        self.target.eval()  # theta^- is a fixed function within a step
        return self

    def f(self, net: nn.Module, z: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        """f(z, sigma) = c_skip z + c_out D(z, sigma) of `net` (student or target); sigma (B,) float64 (CPU)."""
        sigma = sigma.detach().to("cpu", torch.float64)
        u = self.cfg.boundary_scaling * self.table.sigma_to_t(sigma).to(torch.float64)
        c_skip, c_out = c_skip_out(u, 0.0, self.cfg.sigma_data)
        D = self.tfam.denoiser(net, 1.0, cond)
        shape = (len(z), *([1] * (z.dim() - 1)))
        return (c_skip.to(z).reshape(shape) * z + c_out.to(z).reshape(shape) * D(z, sigma, cond or None))

    def forward(self, z: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.f(self.student, z, sigma, cond)

    def sigmas_at(self, idx: torch.Tensor) -> torch.Tensor:
        """sigma (float64, CPU) of grid positions idx (0 = T-1 ... N = timestep 0)."""
        return self.table.sigmas[self.grid[idx]]

    @torch.no_grad()
    def update_target(self, mu: float) -> None:
        """theta^- <- mu theta^- + (1 - mu) theta (Algorithm 1), over the student's own (not shared) tensors."""
        for t, p in zip(self.target.parameters(), self.student.parameters()):
            if p.requires_grad:
                t.lerp_(p.detach(), 1 - mu)
        for t, b in zip(self.target.buffers(), self.student.buffers()):
            if t is not b:
                t.copy_(b)


def build(cfg: Config, spec, deps) -> LCM:
    t = deps.get("teacher")
    if t is None:
        raise ValueError("lcm distils a trained latent diffusion model: set model.teacher=RUN (an ldm run; "
                         "genlab train ldm --config configs/ldm-*.yaml)")
    if list(t.spec.shape) != list(spec.shape):
        raise ValueError(f"the teacher {cfg.teacher} was trained on data of shape {list(t.spec.shape)}, this data "
                         f"has {list(spec.shape)}; distil on the teacher's dataset (and data.image_size)")
    missing = [k for k in t.family.needs(t.config.model) if k != "x" and k not in spec.conditions]
    if missing:
        raise ValueError(f"the teacher is conditioned on {', '.join(missing)}, which '{spec.name}' lacks; distil on "
                         f"the teacher's dataset ('{t.spec.name}')")
    if getattr(t.config.model, "inpaint", False):
        raise ValueError("lcm distils text-, class-, layout- or unconditional ldm teachers; this teacher is an "
                         "inpainting run (model.inpaint=true), which lcm does not cover")
    if float(t.model.latent_scale) <= 0:
        raise ValueError(f"the teacher {cfg.teacher} has no measured latent scale (it never trained a step)")
    if cfg.guidance != 1 and (t.config.model.cond == "none" or t.config.model.p_uncond <= 0):
        raise ValueError(f"model.guidance={cfg.guidance} needs a conditional teacher trained with condition dropout "
                         "(ldm model.p_uncond > 0); distil with model.guidance=1")
    if cfg.guidance < 0:
        raise ValueError(f"model.guidance must be >= 0 (1 = no guidance), got {cfg.guidance}")
    if not 1 <= cfg.skip < t.config.model.timesteps:
        raise ValueError(f"model.skip must be in 1..{t.config.model.timesteps - 1} (timesteps between a pair's ends), "
                         f"got {cfg.skip}")
    if not 0 <= cfg.target_decay < 1:
        raise ValueError(f"model.target_decay must be in [0, 1), got {cfg.target_decay}")
    if cfg.sigma_data <= 0 or cfg.boundary_scaling <= 0:
        raise ValueError("model.sigma_data and model.boundary_scaling must be > 0")
    return LCM(cfg, spec, t)


def make_optimizers(model: LCM, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    params = [p for p in model.student.parameters() if p.requires_grad]  # not the shared first stage
    return {"student": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)}


# ------------------------------------------------------------------------------------------- objective


def eval_conditions(test, n: int) -> dict | None:
    """Conditions of n evaluation samples: the test split's own (in order, cycled), less the per-pixel masks and
    label maps; the teacher reads what it is conditioned on, the metrics the rest (captions, objects)."""
    batch = test.batch(torch.arange(n) % len(test))
    return {k: v for k, v in batch.items() if k not in ("x", "masks", "label_map")} or None


def train_step(model, batch, opts, ctx) -> dict[str, float]:
    """Latent consistency distillation, one step of Algorithm 1, then the target update."""
    lcm = ctx.unwrap(model)
    cfg = lcm.cfg
    assert list(batch["x"].shape[1:]) == lcm.data_shape, f"batch {tuple(batch['x'].shape)} vs data {lcm.data_shape}"

    def loss(mb, rng):
        x = mb["x"]
        c = lcm.tfam.batch_conditions(lcm.teacher, mb)  # no condition dropout: the student learns the guided ODE
        with torch.no_grad():
            z0 = lcm.teacher.encode(x)  # (B, c, h, w) scaled latents of the frozen first stage
        n = rng.randint(lcm.N).squeeze(-1).cpu()  # (B,) grid positions 0..N-1: t_n = grid[n] > t_{n+1}
        eps = rng.randn_like(z0)
        sigma, sigma_next = lcm.sigmas_at(n), lcm.sigmas_at(n + 1)  # (B,) float64
        z_n = z0 + sigma.to(z0).view(-1, 1, 1, 1) * eps
        with torch.no_grad():
            # 1. one step of the guided teacher's PF-ODE from t_n to t_{n+1} (Eq. 12 / Algorithm 1's z_hat)
            D_w = lcm.tfam.denoiser(lcm.teacher, cfg.guidance, c)
            z_hat = ode_step(D_w, z_n, sigma, sigma_next, c or None, cfg.solver)
            # 2. the target network's consistency output there (= z_hat itself at t = 0: the boundary)
            target = lcm.f(lcm.target if cfg.target_decay > 0 else lcm.student, z_hat, sigma_next, c)
        pred = model(z_n, sigma, c)  # f_theta through the (DDP-)prepared forward
        value = distance(pred.float(), target.float(), cfg.loss).mean()
        return value, {"loss": value.item()}

    logs = ctx.update("student", loss)
    lcm.update_target(cfg.target_decay)
    return logs


# ------------------------------------------------------------------------------------------------ sampling


def sampling_sigmas(lcm: LCM, steps: int) -> torch.Tensor:
    """(steps + 1,) float64: `steps` timesteps evenly spread on the skipping grid from T-1 down, then 0."""
    if not 1 <= steps <= lcm.N:
        raise ValueError(f"lcm samples in 1..{lcm.N} steps (the skipping grid of model.skip={lcm.cfg.skip}), "
                         f"got {steps}")
    idx = torch.linspace(0, lcm.N, steps + 1).floor().long()[:-1]  # grid positions, first = T-1
    return torch.cat([lcm.sigmas_at(idx), torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def sample(
    model: LCM,
    n: int,
    *,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    callback=None,
    batch_size: int = 256,
) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1] in `steps` network evaluations (Algorithm 3), decoded by the first stage.

    `cond`: the teacher's conditions (ldm.sample's: {"y", "color"}, {"text": captions}, a layout). The guidance
    scale is the one distilled in (`model.guidance`); asking for another one is an error.
    """
    cfg = model.cfg
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"unknown sampler '{sampler}' for lcm; expected one of: {', '.join(SAMPLERS)}")
    if guidance is not None and guidance != cfg.guidance:
        raise ValueError(f"this latent consistency model has guidance {cfg.guidance} distilled in (model.guidance); "
                         f"for guidance {guidance} distil another student, or sample the teacher ldm run")
    sig = sampling_sigmas(model, steps or cfg.sample_steps)
    c_all = model.tfam.sample_conditions(model.teacher, cond, n)
    device = next(model.student.parameters()).device

    def run(z, c, r):  # x_T scaled as ldm's
        z = sample_consistency(lambda z, s, c: model.f(model.student, z, s, c or {}), z, sig, cond=c, rng=r,
                               callback=callback, sigma_min=model.sigma_min)
        return model.teacher.decode(z).clamp(-1, 1)

    return sample_in_chunks(model, n, model.latent_shape, sig[0], c_all, run, generator=generator, device=device,
                            batch_size=batch_size)
