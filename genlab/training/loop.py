"""The one training loop: build, resume, step, EMA, log, sample, save. Runs on Accelerate.

Randomness is a pure function of (seed, step): the data order, each sample's noise (one stream per global
sample index) and the global torch RNG (dropout) are re-derived at every step. So `--resume` continues exactly,
and a 2-process run with batch b sees the same samples and noise as a 1-process run with batch 2b.

Families plug in through the contract in `genlab/models/__init__.py`; nothing here knows a family by name.
Data selection lives in `training/data.py`, evaluation in `training/evaluation.py`, run files in
`training/runfiles.py`, dependencies in `training/deps.py`.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from genlab import threads
from genlab.config import RunConfig, check, dump_yaml, lr_keys, to_dict
from genlab.data import to_uint8
from genlab.data.png import save_grid
from genlab.errors import GenlabError, UsageError
from genlab.models import get_family
from genlab.progress import bar
from genlab.rng import SampleRNG, derive_seed
from genlab.training.checkpoint import (
    clean_temp_files,
    latest_checkpoint,
    load_trainable_state,
    optimizer_from_flat,
    save_checkpoint,
    trainable_state,
)
from genlab.training.context import StepContext
from genlab.training.data import Batches, eval_conditions, load_data, step_positions
from genlab.training.deps import init_from, resolve_deps, store_deps
from genlab.training.ema import EMA
from genlab.training.evaluation import eval_record, evaluate_with_floor
from genlab.training.run import build_model, frozen_ids, sample_options
from genlab.training.runfiles import append_jsonl, check_out_dir, read_status, truncate_jsonl, write_status

# Config keys that may change when a run is resumed (everything else under model/data is the run's identity).
RESUMABLE_MODEL_KEYS = ("lr", "lr_g", "lr_d", "beta1", "beta2", "weight_decay", "sampler", "sample_steps", "eta")
FIXED_TRAIN_KEYS = ("seed", "init_from")


class TrainingDiverged(GenlabError):
    """The loss became NaN, infinite or exploded, or the weights stopped being finite."""


# ---------------------------------------------------------------------------------------------- helpers


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


def save_samples(family, model, cfg: RunConfig, path: Path, cond: dict | None = None) -> None:
    """A sample grid PNG (images) or the points as safetensors (2-D toys), from a fixed seed.

    Families that cannot sample (`SAMPLERS == ()`: the plain autoencoder) write nothing; their report shows
    reconstructions instead.
    """
    if not family.SAMPLERS:
        return
    opts = sample_options(family, steps=cfg.train.sample_steps or None)
    x = family.sample(model, cfg.train.n_samples, cond=cond, generator=torch.Generator().manual_seed(cfg.train.seed), **opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.dim() == 4:
        save_grid(to_uint8(x.cpu()), path.with_suffix(".png"))
    else:
        from safetensors.torch import save_file

        save_file({"points": x.float().cpu().contiguous()}, str(path.with_suffix(".safetensors")))


def config_changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every leaf that differs between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out


def check_resume_changes(family, changes) -> None:
    """Refuse changes to the run's identity (model architecture, data, seed), listing them as a diff."""
    # a dependency's path may change (the run moved): its content is checked against the record instead
    allowed = set(RESUMABLE_MODEL_KEYS) | set(getattr(family, "RESUMABLE", ())) | set(getattr(family, "DEPS", ()))
    refused = [(k, a, b) for k, a, b in changes
               if (k.startswith("model.") and k.split(".", 1)[1] not in allowed)
               or (k.startswith("data.") and k != "data.data_dir")
               or k in (f"train.{f}" for f in FIXED_TRAIN_KEYS) or k == "family"]
    if refused:
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in refused)
        raise UsageError(f"--resume cannot change the run's model, data or seed ({diff}); start a new run with "
                         f"--out, or resume without these settings. Changes allowed on resume: train.*, eval.*, "
                         f"{', '.join('model.' + k for k in sorted(allowed))}")


def _prepare(accelerator, model: nn.Module, opts: dict):
    """Prepare every separately-optimised network, so DDP syncs gradients through each one's forward."""
    if isinstance(model, nn.ModuleDict):
        for k in list(model.keys()):
            model[k] = accelerator.prepare(model[k])
    else:
        model = accelerator.prepare(model)
    return model, {k: accelerator.prepare(o) for k, o in opts.items()}


def _state_module(accelerator, model: nn.Module) -> nn.Module:
    """The model without DDP wrappers, sharing its parameters (a ModuleDict keeps its attributes)."""
    if isinstance(model, nn.ModuleDict):
        raw = nn.ModuleDict({k: accelerator.unwrap_model(v) for k, v in model.items()})
        for k, v in vars(model).items():  # cfg, spec and other plain attributes a family set
            if not k.startswith("_") and k != "training":
                setattr(raw, k, v)
        return raw
    return accelerator.unwrap_model(model)


def _ema_shared(family, raw: nn.Module, frozen: set[int]) -> set[int]:
    """Tensor ids the EMA shares instead of averaging: frozen deps, and networks outside `EMA_MODULES`."""
    shared = set(frozen)
    names = getattr(family, "EMA_MODULES", None)
    if names:
        for name, child in raw.named_children():
            if name not in names:
                shared |= {id(t) for t in (*child.parameters(), *child.buffers())}
    return shared


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


def _any_process(accelerator, flags: list[bool]) -> list[bool]:
    """Each flag true on any process (so every process takes the same branch and none hangs in a collective)."""
    if accelerator.num_processes == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=accelerator.device)
    return [bool(v) for v in accelerator.reduce(t, "max").tolist()]


def _flat_scalars(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_scalars(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class _StopRequest:
    """Ctrl-C / SIGTERM during training: finish the step, save a checkpoint, stop. A second Ctrl-C stops now."""

    def __init__(self, enabled: bool):
        self.requested, self._old = False, {}
        if enabled and _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ngenlab: stopping after this step and saving a checkpoint (press Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def restore(self):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------- train


def train(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, command: str = "") -> Path:
    """Train `cfg.family` on `cfg.data`; writes the run directory and returns its path.

    `resume`: continue from the newest valid checkpoint (starting afresh, with a message, when there is none).
    `command`: the command line, recorded in run.json for the report.
    """
    check(cfg)
    out = Path(out_dir)
    check_out_dir(out)
    from accelerate import Accelerator

    # torchrun on a machine without CUDA: Accelerate only takes the gloo (multi-CPU) path when told cpu=True
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(cpu=multi_cpu, mixed_precision=cfg.train.mixed_precision,
                              log_with=_trackers(cfg.train.trackers), project_dir=str(out))
    main = accelerator.is_main_process
    stop = _StopRequest(enabled=True)
    started = False
    try:
        result = _train(cfg, out, accelerator, resume=resume, command=command, stop=stop)
        started = True
        return result
    except KeyboardInterrupt:
        if main and (out / "run.json").exists():
            write_status(out, "interrupted", read_status(out).get("step", 0), cfg)
        raise
    except TrainingDiverged:
        if main and (out / "run.json").exists():
            write_status(out, "diverged", read_status(out).get("step", 0), cfg)
        raise
    except OSError as e:  # disk full, folder not writable, ...
        if main and (out / "run.json").exists():
            try:
                write_status(out, "failed", read_status(out).get("step", 0), cfg, error=str(e))
            except OSError:
                pass
        raise GenlabError(f"cannot write the run to {out}: {e.strerror or e}; free some space or choose "
                          "another --out (the newest checkpoint written before this is intact)") from None
    except Exception as e:
        if main and (out / "run.json").exists() and not isinstance(e, UsageError):
            write_status(out, "failed", read_status(out).get("step", 0), cfg, error=f"{type(e).__name__}: {e}")
        raise
    finally:
        stop.restore()
        if started:
            accelerator.end_training()


def _train(cfg: RunConfig, out: Path, accelerator, *, resume: bool, command: str, stop: _StopRequest) -> Path:
    tc = cfg.train
    family = get_family(cfg.family)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    ckpt_dir = out / "checkpoints"

    # ---------------------------------------------------------------- which run: new, resumed, or restarted
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is not None and not resume:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or --out to start a new one")
    if ckpt is None and (resume or (out / "run.json").exists()) and main:
        why = ("no valid checkpoint yet (the run stopped before its first save)" if (out / "run.json").exists()
               else "no run there yet")
        print(f"genlab: {out}: {why}; starting from step 0", file=sys.stderr)
    if ckpt is not None:
        if ckpt.meta["family"] != cfg.family:
            raise UsageError(f"--resume: {out} holds a '{ckpt.meta['family']}' run, not '{cfg.family}'")
        changes = config_changes(ckpt.meta["config"], to_dict(cfg))
        check_resume_changes(family, changes)
        if changes and main:
            print(f"genlab: resuming at step {ckpt.step} with changes: "
                  + "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes), file=sys.stderr)

    # ---------------------------------------------------------------- build
    data = load_data(cfg)
    spec = data.spec
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            clean_temp_files(ckpt_dir)
            for stale in ("metrics.jsonl", "eval.jsonl"):
                (out / stale).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    deps, dep_records = resolve_deps(family, cfg, out, recorded=ckpt.meta.get("deps", {}) if ckpt else {})
    model, frozen = build_model(family, cfg, spec, deps)
    init_record = None
    if tc.init_from and ckpt is None:
        init_record = init_from(model, frozen, tc.init_from)
    opts = family.make_optimizers(model, cfg.model)
    base_lrs = {k: [g["lr"] for g in o.param_groups] for k, o in opts.items()}

    # ---------------------------------------------------------------- resume
    start_step = 0
    if ckpt is not None:
        load_trainable_state(model, ckpt.part("model"), frozen, what=f"checkpoint {ckpt.path}")
        for name, opt in opts.items():
            fresh = [dict(g) for g in opt.param_groups]  # this config's hyper-parameters (lr, betas, ...)
            opt.load_state_dict(optimizer_from_flat(name, ckpt.tensors, ckpt.meta["optimizers"][name]))
            for g, f in zip(opt.param_groups, fresh):
                g.update({k: v for k, v in f.items() if k != "params"})
        start_step = ckpt.step
    if main:
        store_deps(out, deps, dep_records)  # only now: a run refused while building leaves nothing behind
        clean_temp_files(ckpt_dir)
        (out / "config.yaml").write_text(dump_yaml(cfg))
        truncate_jsonl(out / "metrics.jsonl", start_step)
        truncate_jsonl(out / "eval.jsonl", start_step)
        write_status(out, "running", start_step, cfg, command=command or read_status(out).get("command", ""),
                     spec=spec.to_dict(), deps=dep_records, **({"init_from": init_record} if init_record else {}))
    meta_extra = {"seed": tc.seed, "world_size": world, "spec": spec.to_dict(), "deps": dep_records,
                  "init_from": init_record or (ckpt.meta.get("init_from") if ckpt else None)}

    # ---------------------------------------------------------------- fit (closed-form families: gmm)
    if hasattr(family, "fit"):
        return _fit_run(family, model, frozen, data, cfg, out, accelerator, done=ckpt is not None, meta_extra=meta_extra)

    model, opts = _prepare(accelerator, model, opts)
    # moving to the device (Accelerate's .to(), also to "cpu:0" under torchrun) replaces buffer tensors, while
    # parameters keep their identity: take the dependencies' tensor ids again, or their buffers (a VQ-VAE's
    # codebook) would count as trainable and land in checkpoints and the EMA
    frozen = frozen_ids(deps)
    raw = _state_module(accelerator, model)  # the same parameters, without DDP wrappers
    ema = None
    if tc.ema_decay > 0:
        ema = EMA(raw, tc.ema_decay, shared=_ema_shared(family, raw, frozen), keep=list(deps.values()))
        if ckpt is not None and ckpt.meta.get("has_ema"):
            ema.load_state_dict(ckpt.part("ema"))
    if accelerator.log_with:
        accelerator.init_trackers("tb", config=_flat_scalars(to_dict(cfg)))
    grid_cond = eval_conditions(cfg, family.needs(cfg.model), tc.n_samples)

    def save(step: int) -> None:
        if main:
            bad = [k for k, v in trainable_state(raw, frozen).items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:
                raise TrainingDiverged(f"weights became non-finite ({', '.join(bad[:3])}) by step {step}: "
                                       f"not saving them; {_last_good(ckpt_dir)}. {_hint(cfg)}")
            save_checkpoint(ckpt_dir, step, family=cfg.family, config=to_dict(cfg), model_state=trainable_state(raw, frozen),
                            ema_state=ema.state_dict() if ema else None,
                            optimizers={k: o.optimizer if hasattr(o, "optimizer") else o for k, o in opts.items()},
                            extra=meta_extra, keep=tc.keep_checkpoints)
        accelerator.wait_for_everyone()

    batches = Batches(len(data), tc.seed)
    global_batch = tc.batch_size * world * tc.grad_accum
    pbar = bar(initial=start_step, total=tc.steps, progress=None if main else False, desc=f"{cfg.family} on {cfg.data.name}")
    t0 = last_save = time.time()
    c0 = time.process_time()  # this process's CPU seconds (all its threads): the budget on a shared machine
    seen, end_step, status = 0, max(start_step, tc.steps), "done"
    # ---------------------------------------------------------------- step
    for step in range(start_step, tc.steps):
        scale = lr_scale(step, tc)
        for name, opt in opts.items():
            for g, lr in zip(opt.param_groups, base_lrs[name]):
                g["lr"] = lr * scale
        positions = step_positions(step, micro=tc.batch_size, grad_accum=tc.grad_accum, rank=rank, world=world)
        batch = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v
                 for k, v in data.batch(batches.indices(positions)).items()}
        ctx = StepContext(model, opts, batch, SampleRNG.for_indices((tc.seed, "train", step), positions.tolist(), accelerator.device),
                          step=step, micro_batches=tc.grad_accum, grad_clip=tc.grad_clip, accelerator=accelerator,
                          ema=ema.model if ema is not None else None)
        torch.manual_seed(derive_seed(tc.seed, "torch", step, rank))  # dropout etc.
        logs = family.train_step(model, batch, opts, ctx)
        # ---------------------------------------------------------------- divergence
        bad = {k: v for k, v in logs.items() if not math.isfinite(v) or (tc.max_loss and "loss" in k and abs(v) > tc.max_loss)}
        if _any_process(accelerator, [bool(bad)])[0]:
            what = ", ".join(f"{k}={v:.4g}" for k, v in bad.items()) or "a loss on another process"
            raise TrainingDiverged(f"{what} at step {step + 1} (non-finite, or |loss| > train.max_loss="
                                   f"{tc.max_loss:g}): training stopped; {_last_good(ckpt_dir)}. {_hint(cfg)}")
        threads.adjust()  # --threads auto: follow the cores other programs leave free
        # ---------------------------------------------------------------- EMA
        if ema is not None:
            ema.update(raw, step)
        seen += global_batch
        timed_out, stopping, save_due = _any_process(accelerator, [
            tc.max_minutes > 0 and time.time() - t0 > 60 * tc.max_minutes,
            stop.requested,
            tc.ckpt_minutes > 0 and time.time() - last_save > 60 * tc.ckpt_minutes,
        ])
        last = step + 1 == tc.steps or timed_out or stopping
        # ---------------------------------------------------------------- log
        pbar.update(1)
        if (step + 1) % tc.log_every == 0 or last:
            keys = sorted(logs)
            vals = accelerator.reduce(torch.tensor([logs[k] for k in keys], device=accelerator.device, dtype=torch.float64), "mean")
            record = {"step": step + 1, **{k: float(v) for k, v in zip(keys, vals.tolist())},
                      "lr": opts[next(iter(opts))].param_groups[0]["lr"], "time_s": round(time.time() - t0, 3)}
            if main:
                append_jsonl(out / "metrics.jsonl", record)
                pbar.set_postfix({k: f"{record[k]:.4g}" for k in keys[:3]})
            if accelerator.log_with:
                accelerator.log({k: record[k] for k in keys}, step=step + 1)
        # ---------------------------------------------------------------- sample
        sample_model = ema.model if ema is not None else raw
        if tc.sample_every and (step + 1) % tc.sample_every == 0 and main:
            save_samples(family, sample_model, cfg, out / "samples" / f"step-{step + 1:07d}", grid_cond)
        # ---------------------------------------------------------------- save
        if (step + 1) % tc.ckpt_every == 0 or last or save_due:
            save(step + 1)
            last_save = time.time()
        # ---------------------------------------------------------------- evaluate
        if cfg.eval.every and ((step + 1) % cfg.eval.every == 0 or (last and not stopping)):
            if main:
                result, base = evaluate_with_floor(family, sample_model, cfg, seed=tc.seed)
                record = eval_record(step + 1, result, base)
                append_jsonl(out / "eval.jsonl", record)
                if accelerator.log_with:
                    accelerator.log({f"eval/{k}": v for k, v in record.items() if isinstance(v, float)}, step=step + 1)
            accelerator.wait_for_everyone()
        if last:
            end_step, status = step + 1, "interrupted" if stopping and step + 1 < tc.steps else "done"
            break
    pbar.close()
    elapsed, cpu = time.time() - t0, time.process_time() - c0
    if main:
        final = ema.model if ema is not None else raw
        t_s = time.time()
        if status == "done":
            save_samples(family, final, cfg, out / "samples" / f"step-{end_step:07d}", grid_cond)
        timings = dict(train_s=elapsed, train_cpu_s=cpu, images_per_s=seen / max(elapsed, 1e-9), processes=world) if seen else {}
        write_status(out, status, end_step, cfg, sample_s=time.time() - t_s, **timings)  # keep timings of a no-op resume
        if status == "interrupted":
            print(f"genlab: stopped at step {end_step}; checkpoint {ckpt_dir / f'step-{end_step:07d}.json'}; "
                  f"continue with the same command and --resume", file=sys.stderr)
    if status == "interrupted":
        raise KeyboardInterrupt
    return out


def _last_good(ckpt_dir: Path) -> str:
    last = latest_checkpoint(ckpt_dir)
    return f"the last good checkpoint is {last.path.with_suffix('')}" if last else "no checkpoint was written yet"


def _hint(cfg: RunConfig) -> str:
    keys = lr_keys(cfg.model)
    lr = f"a lower {' / '.join(keys)}" if keys else "a lower learning rate"
    return f"Try {lr}, train.grad_clip=1.0 or train.mixed_precision=no, then --resume or a new --out."


def _fit_run(family, model: nn.Module, frozen: set[int], data, cfg: RunConfig, out: Path, accelerator, *, done: bool,
             meta_extra: dict) -> Path:
    """A family with `fit(model, batch, *, seed)` (the GMM) is fit once on the whole training set, saved as step 1.

    train.steps, the optimizer settings and train.ema_decay do not apply. Samples are written before the
    checkpoint (the commit record), so a checkpoint means a finished fit and `--resume` does nothing. Under
    several processes every process fits the same data with the same seed; the main process writes.
    """
    if done:
        return out
    tc = cfg.train
    main = accelerator.is_main_process
    t0 = time.time()
    print(f"genlab: fitting {cfg.family} on {len(data):,} samples of {cfg.data.name} (closed form; one pass)",
          file=sys.stderr, flush=True)
    try:
        logs = family.fit(model, data.batch(torch.arange(len(data))), seed=tc.seed)
    except ValueError as e:  # e.g. more components than points, or a covariance scikit-learn cannot invert
        raise UsageError(str(e)) from None
    elapsed = time.time() - t0
    if main:
        append_jsonl(out / "metrics.jsonl", {"step": 1, **logs, "time_s": round(elapsed, 3)})
        t_s = time.time()
        save_samples(family, model, cfg, out / "samples" / "step-0000001",
                     eval_conditions(cfg, family.needs(cfg.model), tc.n_samples))
        sample_s = time.time() - t_s
        save_checkpoint(out / "checkpoints", 1, family=cfg.family, config=to_dict(cfg), model_state=trainable_state(model, frozen),
                        ema_state=None, optimizers={}, extra={**meta_extra, "world_size": 1}, keep=tc.keep_checkpoints)
        write_status(out, "done", 1, cfg, sample_s=sample_s, train_s=elapsed,
                     images_per_s=len(data) / max(elapsed, 1e-9), processes=1)
    accelerator.wait_for_everyone()
    return out


__all__ = ["train", "lr_scale", "save_samples", "load_data", "TrainingDiverged"]
