"""Load a trained run for inference: `genlab.load("runs/x").sample(16, seed=0)`; build a family's model.

`build_model` is the one place a family's `build(cfg, spec, deps)` is called (training, loading, resuming),
so the data spec check, the init seed and the set of frozen dependency tensors are the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from genlab.config import RunConfig, build_run_config
from genlab.data import DataSpec, check_needs
from genlab.errors import GenlabError, UsageError
from genlab.models import get_family
from genlab.rng import derive_seed
from genlab.training.checkpoint import Checkpoint, latest_checkpoint, load_trainable_state, read_checkpoint


@dataclass
class Run:
    dir: Path
    config: RunConfig
    spec: DataSpec
    family: object  # the family module
    model: nn.Module  # in eval mode; EMA weights unless loaded with ema=False
    step: int
    checkpoint: Checkpoint
    deps: dict = field(default_factory=dict)  # name -> Run (frozen dependencies)
    frozen: set = field(default_factory=set)  # ids of the dependencies' tensors inside `model`

    @property
    def family_name(self) -> str:
        return self.config.family

    def sample(self, n: int, *, seed: int = 0, cond=None, progress: bool | None = None, **opts) -> torch.Tensor:
        """n samples (n, C, H, W) float in [-1, 1] (points (n, D) for 2-D toys); same seed, same images.

        `cond`: a dict of conditions (batch keys, e.g. {"y": labels}); a tensor or int is taken as class labels.
        Drawn in chunks of 256, with a progress bar on a terminal (`progress`: see genlab.progress).
        """
        from genlab.training.evaluation import sample_chunked

        return sample_chunked(self.family, self.model, n, seed=seed, cond=as_cond(cond, n), progress=progress,
                              opts=sample_options(self.family, **opts))


def as_cond(cond, n: int) -> dict | None:
    """A condition dict from a dict, class label(s) (int, list or tensor) or None."""
    if cond is None or isinstance(cond, dict):
        return cond
    y = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
    return {"y": y.expand(n) if y.numel() == 1 else y}


def sample_options(family, **opts) -> dict:
    """Keep the given sampler options (None = not given); one the family does not take is a UsageError.

    A family lists the options its `sample` takes in `SAMPLE_OPTIONS` (e.g. sampler, steps, eta).
    """
    out = {}
    for k, v in opts.items():
        if v is None:
            continue
        if k not in family.SAMPLE_OPTIONS:
            name = family.__name__.rsplit(".", 1)[-1]
            takes = ", ".join(family.SAMPLE_OPTIONS) or "none"
            raise UsageError(f"the {name} family's sampler takes no '{k}' option (options: {takes})")
        out[k] = v
    return out


def frozen_ids(deps: dict) -> set[int]:
    """Ids of every tensor of the dependencies' models (they are frozen: not trained, saved or averaged)."""
    return {id(t) for d in deps.values() for t in (*d.model.parameters(), *d.model.buffers())}


def build_model(family, cfg: RunConfig, spec: DataSpec, deps: dict) -> tuple[nn.Module, set[int]]:
    """`family.build(cfg.model, spec, deps)` seeded by (seed, "init"); returns the model and its frozen tensor ids."""
    name = cfg.family
    try:
        check_needs(name, family.needs(cfg.model), spec)
        torch.manual_seed(derive_seed(cfg.train.seed, "init"))
        model = family.build(cfg.model, spec, deps)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return model, frozen_ids(deps)


def spec_from_meta(meta: dict, cfg_raw: dict) -> DataSpec:
    """The run's data spec; checkpoints of format 1 kept data_shape / num_classes in the model config."""
    if "spec" in meta:
        return DataSpec.from_dict(meta["spec"])
    model = cfg_raw.get("model", {})
    k = int(model.get("num_classes", 0))
    return DataSpec(cfg_raw.get("data", {}).get("name", "?"), tuple(model["data_shape"]),
                    tuple(str(i) for i in range(k)), ("y",) if k else ())


def config_from_meta(meta: dict) -> tuple[RunConfig, DataSpec]:
    family = get_family(meta["family"])
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in meta["config"].items()}
    spec = spec_from_meta(meta, raw)
    raw["model"] = {k: v for k, v in raw.get("model", {}).items() if k not in ("data_shape", "num_classes")}
    return build_run_config(meta["family"], family.Config, raw), spec


def load_run(run_dir, *, ema: bool = True, device: str = "cpu", checkpoint: str | Path | None = None) -> Run:
    """Rebuild the model of a run directory from its newest valid checkpoint (or a given checkpoint JSON).

    Frozen dependencies load from the run's own copies (`RUN/deps/NAME`), verified against the SHA-256
    recorded in the checkpoint, so a run stays loadable when the runs it was trained on move or vanish.
    """
    from genlab.training.deps import load_stored_deps

    run_dir = Path(run_dir)
    if checkpoint is not None:
        ckpt = read_checkpoint(Path(checkpoint))
        run_dir = Path(checkpoint).resolve().parent.parent
    else:
        if not run_dir.is_dir():
            raise GenlabError(f"run directory not found: {run_dir}")
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise GenlabError(f"no valid checkpoint in {run_dir / 'checkpoints'} (has the run saved one yet?)")
    family = get_family(ckpt.meta["family"])
    cfg, spec = config_from_meta(ckpt.meta)
    deps = load_stored_deps(run_dir, family, cfg, ckpt.meta.get("deps", {}))
    model, frozen = build_model(family, cfg, spec, deps)
    state = ckpt.part("model")
    if ema and ckpt.meta.get("has_ema", False):
        state.update(ckpt.part("ema"))
    load_trainable_state(model, state, frozen, what=f"checkpoint {ckpt.path}")
    model = model.to(device).eval()  # moving replaces buffer tensors: the frozen ids are taken after it
    return Run(run_dir, cfg, spec, family, model, ckpt.step, ckpt, deps, frozen_ids(deps))
