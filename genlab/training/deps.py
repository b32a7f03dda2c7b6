"""Run dependencies: a run trained on top of other runs (a latent model on an autoencoder, a student on a
teacher, adapters on a base model) and `train.init_from` (fine-tuning from another run's weights).

A family lists the config fields that name runs in `DEPS` (e.g. `DEPS = ("autoencoder",)`). When training
starts, the loop loads each named run frozen, through `load_run`, and the main process stores it once as
`RUN/deps/NAME/`: a one-checkpoint run holding the weights actually used (the EMA weights when the run had
them), its config and data spec, and its own dependencies below it. Every checkpoint of the new run records,
per dependency, the source path, the source checkpoint's SHA-256 and step, and the SHA-256 of the stored copy.

Consequences: a run stays loadable and sampleable when the run it depends on is moved or deleted; a stored
copy that is missing or altered is an error naming it; `--resume` with the source changed since (retrained,
replaced) is an error too. Frozen weights are never in the run's checkpoints or EMA.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from genlab.config import to_dict
from genlab.errors import GenlabError, UsageError
from genlab.training.checkpoint import save_checkpoint, trainable_state

DEPS_DIR = "deps"


def dep_fields(family) -> tuple[str, ...]:
    return tuple(getattr(family, "DEPS", ()))


def _freeze(run):
    run.model.requires_grad_(False).eval()
    return run


def _source_record(run) -> dict:
    return {"source": str(Path(run.dir).resolve()), "source_sha256": run.checkpoint.meta["sha256"],
            "source_step": run.step, "family": run.family_name}


def store_dependency(run, dest: Path) -> str:
    """Write `run` (as loaded: EMA weights) as a one-checkpoint run at `dest`, atomically; return its SHA-256."""
    from genlab.training.checkpoint import read_checkpoint

    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = run.checkpoint.meta
    json_path = save_checkpoint(tmp / "checkpoints", run.step, family=run.family_name, config=to_dict(run.config),
                                model_state=trainable_state(run.model, run.frozen), ema_state=None, optimizers={},
                                extra={"spec": run.spec.to_dict(), "deps": meta.get("deps", {}),
                                       "copied_from": _source_record(run)}, keep=1)
    if (Path(run.dir) / DEPS_DIR).is_dir():  # its own dependencies travel with it
        shutil.copytree(Path(run.dir) / DEPS_DIR, tmp / DEPS_DIR)
    sha = read_checkpoint(json_path).meta["sha256"]
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return sha


def resolve_deps(family, cfg, out: Path, *, recorded: dict) -> tuple[dict, dict]:
    """Load the runs the config names; returns (name -> frozen Run, name -> record for checkpoints).

    `recorded`: the records of a run being resumed (empty for a new run). New dependencies are loaded from
    their source (every process: same bytes); `store_deps` then writes the run's copies, once the model built.
    """
    from genlab.training.run import load_run

    deps, records = {}, {}
    for name in dep_fields(family):
        src = getattr(cfg.model, name)
        if not src:
            continue
        key = f"model.{name}"
        if name in recorded:  # resuming: use the stored copy; the run the config names must hold the same weights
            rec = recorded[name]
            deps[name] = _load_stored(out, name, rec)
            src_path = Path(src)
            if (src_path / "checkpoints").is_dir():  # moved or deleted sources are fine: the copy is used
                from genlab.training.checkpoint import latest_checkpoint

                now = latest_checkpoint(src_path / "checkpoints")
                if now is not None and now.meta["sha256"] not in (rec["source_sha256"], rec.get("sha256")):
                    raise GenlabError(
                        f"{key}={src} changed since this run started (its newest checkpoint is now step {now.step}, "
                        f"sha256 {now.meta['sha256'][:12]}...; this run was trained on step {rec['source_step']}, "
                        f"sha256 {rec['source_sha256'][:12]}...). Resume with the copy this run keeps by pointing "
                        f"{key} at {out / DEPS_DIR / name}, or start a new run.")
            records[name] = rec
            continue
        if not (Path(src) / "checkpoints").is_dir():
            raise UsageError(f"{key}={src} is not a run directory (no checkpoints/ in it); train that run first")
        run = _freeze(load_run(src))
        expected = getattr(family, "DEP_FAMILIES", {}).get(name)
        if expected and run.family_name not in expected:
            raise UsageError(f"{key}={src} is a '{run.family_name}' run; {cfg.family} needs one of: {', '.join(expected)}")
        deps[name], records[name] = run, _source_record(run)
    return deps, records


def store_deps(out: Path, deps: dict, records: dict) -> None:
    """Store each dependency not stored yet as OUT/deps/NAME (main process) and record its SHA-256."""
    for name, rec in records.items():
        if "sha256" not in rec:
            (out / DEPS_DIR).mkdir(parents=True, exist_ok=True)
            rec["sha256"] = store_dependency(deps[name], out / DEPS_DIR / name)


def _load_stored(run_dir: Path, name: str, rec: dict):
    from genlab.training.run import load_run

    stored = Path(run_dir) / DEPS_DIR / name
    where = f"dependency '{name}' of {run_dir} (trained on {rec.get('source', '?')}, step {rec.get('source_step', '?')})"
    if not (stored / "checkpoints").is_dir():
        raise GenlabError(f"{where} is missing: {stored} does not exist; restore that folder, or retrain the run")
    try:
        run = load_run(stored)
    except GenlabError as e:
        raise GenlabError(f"{where} cannot be loaded: {e}") from None
    if rec.get("sha256") and run.checkpoint.meta["sha256"] != rec["sha256"]:
        raise GenlabError(f"{where} was changed: {stored} has sha256 {run.checkpoint.meta['sha256'][:12]}..., "
                          f"the run recorded {rec['sha256'][:12]}...; restore the original or retrain the run")
    return _freeze(run)


def load_stored_deps(run_dir: Path, family, cfg, records: dict) -> dict:
    """The frozen dependencies of a finished run, from its own copies (see the module docstring)."""
    deps = {}
    for name in dep_fields(family):
        if not getattr(cfg.model, name):
            continue
        if name not in records:
            raise GenlabError(f"{run_dir} names a {name} run (model.{name}) but records no stored copy of it; "
                              "it was trained by an older genlab: retrain it")
        deps[name] = _load_stored(run_dir, name, records[name])
    return deps


def init_from(model: torch.nn.Module, frozen: set[int], src: str) -> dict:
    """Copy another run's weights (EMA when it has them) into `model` where names and shapes match.

    Entries of `model` the source lacks (new adapters, a ControlNet branch) keep their initialisation and are
    listed; a shape mismatch, or no entry in common, is an error. Returns a record for run.json/checkpoints.
    """
    from genlab.training.run import load_run

    if not (Path(src) / "checkpoints").is_dir():
        raise UsageError(f"train.init_from={src} is not a run directory (no checkpoints/ in it)")
    source = load_run(src)
    theirs = trainable_state(source.model, source.frozen)
    ours = trainable_state(model, frozen)
    shared = [k for k in ours if k in theirs]
    bad = [f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}" for k in shared if theirs[k].shape != ours[k].shape]
    if bad:
        raise UsageError(f"train.init_from={src}: shapes differ ({'; '.join(bad[:3])}); the architectures must match")
    if not shared:
        raise UsageError(f"train.init_from={src}: no weights in common with this model (a '{source.family_name}' run)")
    with torch.no_grad():
        for k in shared:
            ours[k].copy_(theirs[k])
    new = [k for k in ours if k not in theirs]
    return {"source": str(Path(src).resolve()), "source_sha256": source.checkpoint.meta["sha256"],
            "source_step": source.step, "family": source.family_name, "loaded": len(shared), "new": new[:20],
            "n_new": len(new)}
