"""The one training loop: build, resume, step, EMA, log, sample, save. Runs on Accelerate.

Randomness is a pure function of (seed, step): the data order, each sample's noise (one stream per global
sample index) and the global torch RNG (dropout) are re-derived at every step. So `--resume` continues exactly,
and a 2-process run with batch b sees the same samples and noise as a 1-process run with batch 2b.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from genlab import __version__
from genlab.config import RunConfig, dump_yaml, to_dict
from genlab.data import Dataset, load_dataset, to_uint8
from genlab.data.png import save_grid
from genlab.errors import GenlabError, UsageError
from genlab.models import get_family
from genlab.rng import SampleRNG, derive_seed
from genlab.training.checkpoint import latest_checkpoint, optimizer_from_flat, save_checkpoint
from genlab.training.ema import EMA

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "linear", "cosine")


class TrainingDiverged(GenlabError):
    """The loss became NaN or infinite."""


@dataclass
class StepContext:
    """What a family's `train_step` needs from the loop: backward, optimizer steps and per-sample noise."""

    accelerator: object
    rng: SampleRNG  # one stream per sample of this micro-batch
    step: int
    grad_clip: float

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def optimizer_step(self, opt: torch.optim.Optimizer, model: nn.Module) -> None:
        """Clip (on the real step of an accumulation), step, zero the grads. A no-op between accumulation steps."""
        if self.grad_clip > 0 and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(model.parameters(), self.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)


def load_data(cfg: RunConfig, split: str = "train") -> Dataset:
    """The run's data: split 'train' (less any data.holdout), 'holdout' or 'test', restricted to data.classes."""
    d = cfg.data
    if split == "holdout" and not d.holdout > 0:
        raise UsageError("this run holds no training data out (data.holdout=0); train with data.holdout=0.1")
    data = load_dataset(d.name, "test" if split == "test" else "train", data_dir=d.data_dir, image_size=d.image_size,
                        grayscale=d.grayscale, toy_size=d.toy_size, seed=cfg.train.seed)
    try:
        if d.classes:
            data = data.keep_classes(parse_classes(d.classes))
        if split != "test" and d.holdout > 0:
            data = data.holdout_split(d.holdout, split)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return data


def parse_classes(text: str) -> list[int]:
    """'0,3' -> [0, 3]."""
    try:
        return [int(c) for c in str(text).split(",") if c.strip()]
    except ValueError:
        raise UsageError(f"data.classes must be a comma list of integer labels, got '{text}'") from None


def fill_data_fields(cfg: RunConfig, data: Dataset) -> None:
    """The model's data-dependent fields come from the dataset, never from the user."""
    cfg.model.data_shape = data.shape
    if hasattr(cfg.model, "num_classes"):
        cfg.model.num_classes = data.num_classes
    if getattr(cfg.model, "class_cond", False) and data.num_classes == 0:
        raise UsageError(f"model.class_cond=true needs labelled data; '{data.name}' has no labels")


def sample_options(family, **opts) -> dict:
    """Keep the sampler options the family's `sample` accepts; a given option it does not take is an error."""
    params = inspect.signature(family.sample).parameters
    out = {}
    for k, v in opts.items():
        if v is None:
            continue
        if k not in params:
            name = family.__name__.rsplit(".", 1)[-1]
            raise UsageError(f"the {name} family's sampler takes no '{k}' option")
        out[k] = v
    return out


class _Batches:
    """Global sample positions -> dataset indices through a seeded permutation per epoch (stateless)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def indices(self, positions: torch.Tensor) -> torch.Tensor:
        epochs, offsets = positions // self.n, positions % self.n
        out = torch.empty_like(positions)
        for e in epochs.unique().tolist():
            if e not in self._cache:
                self._cache = {e: torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.seed, "epoch", e)))}
            mask = epochs == e
            out[mask] = self._cache[e][offsets[mask]]
        return out


def _prepare(accelerator, model: nn.Module, opts: dict):
    """Prepare every separately-optimised network, so DDP syncs gradients through each one's forward."""
    if isinstance(model, nn.ModuleDict):
        for k in list(model.keys()):
            model[k] = accelerator.prepare(model[k])
    else:
        model = accelerator.prepare(model)
    return model, {k: accelerator.prepare(o) for k, o in opts.items()}


def _trackers(kind: str):
    if kind == "none":
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if kind == "tensorboard":
            raise UsageError("train.trackers=tensorboard needs TensorBoard: pip install tensorboard") from None
        return None
    return "tensorboard"


def _out_of_time(accelerator, t0: float, max_minutes: float) -> bool:
    """train.max_minutes is spent (decided on the main process, so every process stops at the same step)."""
    if max_minutes <= 0:
        return False
    flag = torch.tensor([float(time.time() - t0 > 60 * max_minutes)], device=accelerator.device)
    return bool(accelerator.reduce(flag, "max").item()) if accelerator.num_processes > 1 else bool(flag.item())


def lr_scale(step: int, tc) -> float:
    """Learning-rate multiplier at `step`: linear warm-up from 0, then constant or a decay to 0 at the end."""
    if tc.warmup_steps > 0 and step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    frac = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)  # 0 -> 1 over the decay
    if tc.lr_schedule == "linear":
        return 1.0 - frac
    if tc.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0


def save_samples(family, model, cfg: RunConfig, path: Path) -> None:
    """A sample grid PNG (images) or the points as safetensors (2-D toys), from a fixed seed.

    Families that cannot sample (`SAMPLERS == ()`: the plain autoencoder) write nothing; their report shows
    reconstructions instead.
    """
    if not family.SAMPLERS:
        return
    opts = sample_options(family, steps=cfg.train.sample_steps or None)
    x = family.sample(model, cfg.train.n_samples, generator=torch.Generator().manual_seed(cfg.train.seed), **opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.dim() == 4:
        save_grid(to_uint8(x.cpu()), path.with_suffix(".png"))
    else:
        from safetensors.torch import save_file

        save_file({"points": x.float().cpu().contiguous()}, str(path.with_suffix(".safetensors")))


def sample_for_eval(family, model, n: int, *, seed: int = 0, num_classes: int = 0, steps: int | None = None,
                    chunk: int = 500, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n samples as uint8 (plus their requested labels, balanced over classes, for conditional models).

    Drawn in fixed chunks of `chunk` images seeded by (seed, chunk index), with a progress bar.
    """
    from tqdm.auto import tqdm

    labels = torch.arange(n) % num_classes if num_classes else None
    opts = sample_options(family, steps=steps or None)
    out = []
    for i, start in enumerate(tqdm(range(0, n, chunk), desc="sampling", disable=not progress or n <= chunk)):
        m = min(chunk, n - start)
        g = torch.Generator().manual_seed(derive_seed(seed, "eval", i))
        cond = labels[start : start + m] if labels is not None else None
        out.append(to_uint8(family.sample(model, m, cond=cond, generator=g, **opts).cpu()))
    return torch.cat(out), labels


def evaluate_model(family, model, cfg: RunConfig, *, protocol: str = "", n: int = 0, metrics: str = "",
                   steps: int = 0, seed: int = 0) -> dict:
    """Sample from `model` and evaluate it under a protocol (defaults from cfg.eval / the dataset)."""
    from genlab.metrics.protocols import evaluate, get_protocol, parse_metrics, protocol_for_dataset

    try:
        p = get_protocol(protocol or cfg.eval.protocol or protocol_for_dataset(cfg.data.name))
        names = parse_metrics(metrics or cfg.eval.metrics)
    except ValueError as e:
        raise UsageError(str(e)) from None
    n = n or cfg.eval.n or p.n
    extra = test_likelihood(family, model, cfg, seed=seed) if "nll" in names else {}
    names = tuple(m for m in names if m != "nll")
    conditional = bool(getattr(cfg.model, "class_cond", False))
    images, labels = sample_for_eval(family, model, n, seed=seed, num_classes=cfg.model.num_classes if conditional else 0,
                                     steps=steps or cfg.eval.sample_steps or None)
    if not conditional:
        names = tuple(m for m in names if m != "acc")
    return {**evaluate(images, None, protocol=p, metrics=names, labels=labels), **extra}


@torch.no_grad()
def test_likelihood(family, model, cfg: RunConfig, *, seed: int = 0, chunk: int = 500) -> dict:
    """Mean log-likelihood of the run's test split: {"nll_nats": per example, "bits_per_dim": ...}."""
    from genlab.metrics.likelihood import bits_per_dim

    if not hasattr(family, "log_likelihood"):
        raise UsageError(f"the {cfg.family} family has no likelihood; drop 'nll' from the metrics")
    data = load_data(cfg, "test")
    ll = []
    for i, start in enumerate(range(0, len(data), chunk)):
        x, _ = data.get(torch.arange(start, min(start + chunk, len(data))))
        try:
            kw = {"generator": torch.Generator().manual_seed(derive_seed(seed, "nll", i))}
            if "generator" not in inspect.signature(family.log_likelihood).parameters:
                kw = {}
            ll.append(family.log_likelihood(model, x, **kw).double())
        except ValueError as e:  # e.g. a GMM on latents models p(z), not p(x)
            raise UsageError(str(e)) from None
    ll = torch.cat(ll)
    dims = math.prod(data.shape)
    return {"nll_nats": -ll.mean().item(), "bits_per_dim": float(bits_per_dim(ll.mean(), dims))}


def train(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False) -> Path:
    """Train `cfg.family` on `cfg.data`; writes the run directory and returns its path."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    tc = cfg.train
    if tc.lr_schedule not in LR_SCHEDULES:
        raise UsageError(f"unknown train.lr_schedule '{tc.lr_schedule}'; expected one of: {', '.join(LR_SCHEDULES)}")
    if tc.mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"unknown train.mixed_precision '{tc.mixed_precision}'; expected one of: {', '.join(MIXED_PRECISION)}")
    out = Path(out_dir)
    family = get_family(cfg.family)

    # ---------------------------------------------------------------- build
    # torchrun on a machine without CUDA: Accelerate only takes the gloo (multi-CPU) path when told cpu=True
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_cpu,
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.grad_accum,
        log_with=_trackers(tc.trackers),
        project_dir=str(out),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    data = load_data(cfg)
    fill_data_fields(cfg, data)
    try:
        torch.manual_seed(derive_seed(tc.seed, "init"))
        model = family.build(cfg.model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    opts = family.make_optimizers(model, cfg.model)
    base_lrs = {k: [g["lr"] for g in o.param_groups] for k, o in opts.items()}

    ckpt_dir = out / "checkpoints"
    if not resume and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or --out to start a new one")
    # ---------------------------------------------------------------- resume
    start_step, ckpt = 0, None
    if resume:
        ckpt = latest_checkpoint(ckpt_dir)
        if ckpt is None:
            raise GenlabError(f"--resume: no valid checkpoint in {ckpt_dir}")
        if ckpt.meta["family"] != cfg.family:
            raise UsageError(f"--resume: {out} holds a '{ckpt.meta['family']}' run, not '{cfg.family}'")
        model.load_state_dict(ckpt.part("model"))
        for name, opt in opts.items():
            opt.load_state_dict(optimizer_from_flat(name, ckpt.tensors, ckpt.meta["optimizers"][name]))
        start_step = ckpt.step
    # ---------------------------------------------------------------- fit (closed-form families: gmm)
    if hasattr(family, "fit"):  # no optimizers, prepare, EMA or step loop
        return _fit_run(family, model, data, cfg, out, accelerator, resumed=ckpt is not None)

    model, opts = _prepare(accelerator, model, opts)
    raw = _state_module(accelerator, model)  # the same parameters, without DDP wrappers
    ema = EMA(raw, tc.ema_decay) if tc.ema_decay > 0 else None
    if ema is not None and ckpt is not None and ckpt.meta.get("has_ema"):
        ema.model.load_state_dict(ckpt.part("ema"))

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(cfg))
        _truncate_metrics(out / "metrics.jsonl", start_step)
        _truncate_metrics(out / "eval.jsonl", start_step)
        _write_status(out, "running", start_step, cfg)
    if accelerator.log_with:
        accelerator.init_trackers("tb", config=_flat_scalars(to_dict(cfg)))

    batches = _Batches(len(data), tc.seed)
    micro = tc.batch_size
    global_batch = micro * world * tc.grad_accum
    pbar = tqdm(range(start_step, tc.steps), initial=start_step, total=tc.steps, disable=not accelerator.is_main_process,
                desc=f"{cfg.family} on {cfg.data.name}", dynamic_ncols=True)
    t0, seen, end_step = time.time(), 0, max(start_step, tc.steps)
    # ---------------------------------------------------------------- step
    for step in pbar:
        scale = lr_scale(step, tc)
        for name, opt in opts.items():
            for g, lr in zip(opt.param_groups, base_lrs[name]):
                g["lr"] = lr * scale
        logs: dict[str, float] = {}
        for m in range(tc.grad_accum):
            positions = step * global_batch + m * micro * world + rank * micro + torch.arange(micro)
            x, y = data.get(batches.indices(positions))
            batch = (x.to(accelerator.device), y.to(accelerator.device) if y is not None else None)
            ctx = StepContext(accelerator, SampleRNG.for_indices((tc.seed, "train", step), positions.tolist(), accelerator.device),
                              step, tc.grad_clip)
            torch.manual_seed(derive_seed(tc.seed, "torch", step, m, rank))  # dropout etc.
            modules = list(model.values()) if isinstance(model, nn.ModuleDict) else [model]
            with accelerator.accumulate(*modules):
                out_logs = family.train_step(model, batch, opts, ctx)
            for k, v in out_logs.items():
                logs[k] = logs.get(k, 0.0) + v / tc.grad_accum
        bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
        if world > 1:  # every process must stop together, or the others hang in the next all-reduce
            n_bad = accelerator.reduce(torch.tensor([float(len(bad))], device=accelerator.device), "sum").item()
            bad = bad or ({"loss on another process": float("nan")} if n_bad else {})
        if bad:
            last = latest_checkpoint(ckpt_dir)
            where = f"the last good checkpoint is {last.path.with_suffix('')}" if last else "no checkpoint was written yet"
            if accelerator.is_main_process:
                _write_status(out, "diverged", step, cfg)
            raise TrainingDiverged(
                f"{', '.join(f'{k}={v}' for k, v in bad.items())} at step {step + 1}: training stopped; {where}. "
                f"Try a lower model.lr, train.grad_clip=1.0 or train.mixed_precision=no."
            )
        # ---------------------------------------------------------------- EMA
        if ema is not None:
            ema.update(raw, step)
        seen += global_batch
        last = step + 1 == tc.steps or _out_of_time(accelerator, t0, tc.max_minutes)
        # ---------------------------------------------------------------- log
        if (step + 1) % tc.log_every == 0 or last:
            keys = sorted(logs)
            vals = accelerator.reduce(torch.tensor([logs[k] for k in keys], device=accelerator.device, dtype=torch.float64), "mean")
            record = {"step": step + 1, **{k: float(v) for k, v in zip(keys, vals.tolist())},
                      "lr": opts[next(iter(opts))].param_groups[0]["lr"], "time_s": round(time.time() - t0, 3)}
            if accelerator.is_main_process:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                pbar.set_postfix({k: f"{record[k]:.4g}" for k in keys[:3]})
            if accelerator.log_with:
                accelerator.log({k: record[k] for k in keys}, step=step + 1)
        # ---------------------------------------------------------------- sample
        sample_model = ema.model if ema is not None else raw
        if tc.sample_every and (step + 1) % tc.sample_every == 0 and accelerator.is_main_process:
            save_samples(family, sample_model, cfg, out / "samples" / f"step-{step + 1:07d}")
        # ---------------------------------------------------------------- save
        if (step + 1) % tc.ckpt_every == 0 or last:
            if accelerator.is_main_process:
                save_checkpoint(ckpt_dir, step + 1, family=cfg.family, config=to_dict(cfg),
                                model=raw, ema=ema.model if ema else None,
                                optimizers={k: o.optimizer if hasattr(o, "optimizer") else o for k, o in opts.items()},
                                extra={"seed": tc.seed, "world_size": world}, keep=tc.keep_checkpoints)
            accelerator.wait_for_everyone()
        # ---------------------------------------------------------------- evaluate
        if cfg.eval.every and ((step + 1) % cfg.eval.every == 0 or last):
            if accelerator.is_main_process:
                result = evaluate_model(family, sample_model, cfg, seed=tc.seed)
                record = {"step": step + 1, **{k: v for k, v in result.items() if k != "protocol"},
                          "protocol": result["protocol"]["name"], "n": result["protocol"]["n_fake"]}
                with open(out / "eval.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if accelerator.log_with:
                    accelerator.log({f"eval/{k}": v for k, v in record.items() if isinstance(v, float)}, step=step + 1)
            accelerator.wait_for_everyone()
        if last:  # the last step, or train.max_minutes ran out
            end_step = step + 1
            break
    pbar.close()
    elapsed = time.time() - t0
    if accelerator.is_main_process:
        final = ema.model if ema is not None else raw
        t_s = time.time()
        save_samples(family, final, cfg, out / "samples" / f"step-{end_step:07d}")
        timings = dict(train_s=elapsed, images_per_s=seen / max(elapsed, 1e-9), processes=world) if seen else {}
        _write_status(out, "done", end_step, cfg, sample_s=time.time() - t_s, **timings)  # keep timings of a no-op resume
    accelerator.end_training()
    return out


def _fit_run(family, model: nn.Module, data: Dataset, cfg: RunConfig, out: Path, accelerator, *, resumed: bool) -> Path:
    """A family with `fit(model, x, y, *, seed)` (the GMM) is fit once on the whole training set, saved as step 1.

    train.steps, the optimizer settings and train.ema_decay do not apply. Samples are written before the
    checkpoint (the commit record), so a checkpoint means a finished fit and `--resume` does nothing.
    """
    if accelerator.num_processes > 1:
        raise UsageError(f"the {cfg.family} family is fit in closed form in one process; run it without torchrun")
    if resumed:
        accelerator.end_training()
        return out
    tc = cfg.train
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    _write_status(out, "running", 0, cfg)
    t0 = time.time()
    x, y = data.get(torch.arange(len(data)))
    try:
        logs = family.fit(model, x, y, seed=tc.seed)
    except ValueError as e:  # e.g. more components than points, or a covariance scikit-learn cannot invert
        raise UsageError(str(e)) from None
    elapsed = time.time() - t0
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, **logs, "time_s": round(elapsed, 3)}) + "\n")
    t_s = time.time()
    save_samples(family, model, cfg, out / "samples" / "step-0000001")
    sample_s = time.time() - t_s
    save_checkpoint(out / "checkpoints", 1, family=cfg.family, config=to_dict(cfg), model=model, ema=None,
                    optimizers={}, extra={"seed": tc.seed, "world_size": 1}, keep=tc.keep_checkpoints)
    _write_status(out, "done", 1, cfg, sample_s=sample_s, train_s=elapsed, images_per_s=len(data) / max(elapsed, 1e-9),
                  processes=1)
    accelerator.end_training()
    return out


def _state_module(accelerator, model: nn.Module) -> nn.Module:
    """The model without DDP wrappers, sharing its parameters (a ModuleDict keeps its family's cfg)."""
    if isinstance(model, nn.ModuleDict):
        raw = nn.ModuleDict({k: accelerator.unwrap_model(v) for k, v in model.items()})
        raw.cfg = getattr(model, "cfg", None)
        return raw
    return accelerator.unwrap_model(model)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint we restart from (they will be logged again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _write_status(out: Path, status: str, step: int, cfg: RunConfig, **extra) -> None:
    path = out / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    info.update({"status": status, "step": step, "family": cfg.family, "data": cfg.data.name,
                 "genlab_version": __version__, "updated": time.strftime("%Y-%m-%d %H:%M:%S"), **extra})
    path.write_text(json.dumps(info, indent=1))


def _flat_scalars(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_scalars(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
