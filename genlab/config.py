"""Typed dataclass configs <-> YAML, with dotted `key=value` overrides. Unknown keys are errors.

A run's configuration is a `RunConfig`: which family and data, the training loop's settings, and the family's
own `Config` dataclass under `model`. Every field has a default and a comment; `genlab train --dry-run`
prints the resolved result and the run directory keeps it as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from genlab.errors import UsageError


@dataclass
class DataConfig:
    name: str = "digits"  # dataset name: see `genlab list` (fashion-mnist, mnist, digits, folder:PATH, ring8, ...)
    data_dir: str = ""  # where IDX files live; empty: $GENLAB_DATA, /usr/share/datasets, ~/.cache/genlab
    image_size: int = 0  # folder datasets: resize + centre-crop to this size (0: 32)
    grayscale: bool = False  # folder datasets: convert to one channel
    toy_size: int = 20000  # 2-D toys: number of points drawn once (seeded) as the training set
    classes: str = ""  # comma list of labels to keep, e.g. "0" for one-class training; empty: all
    holdout: float = 0.0  # fraction of the training split never trained on (split "holdout"), e.g. 0.1


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # per process (global batch = batch_size * processes * grad_accum)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warm-up; linear/cosine decay to 0 at the end
    max_minutes: float = 0.0  # stop early (checkpoint, samples) after this much training time; 0: no limit
    ema_decay: float = 0.999  # EMA of weights used for sampling; 0 disables
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast through Accelerate
    seed: int = 0  # seeds init, data order and every sample's noise
    log_every: int = 10  # steps between metrics.jsonl lines
    sample_every: int = 0  # steps between sample grids (0: only at the end)
    ckpt_every: int = 500  # steps between checkpoints (one is always written at the end)
    ckpt_minutes: float = 10.0  # also save when this much time passed since the last save (0: off)
    max_loss: float = 1e10  # |loss| above this counts as divergence (finite but exploded); 0: off
    init_from: str = ""  # a run directory whose weights initialise this run (fine-tuning); "": random init
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    n_samples: int = 64  # images in each sample grid
    sample_steps: int = 0  # sampler steps for grids (0: the family's default)
    trackers: Literal["auto", "tensorboard", "none"] = "auto"  # auto: TensorBoard when installed


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations during training, and one at the end (0: never)
    protocol: str = ""  # fmnist | digits | mnist; empty: the training dataset's protocol
    n: int = 0  # generated samples per evaluation (0: the protocol's n; fewer is faster but noisier)
    metrics: str = "fid,kid,pr,dc"  # comma list of: fid, kid, is, pr, dc, acc, modes
    sample_steps: int = 0  # sampler steps for evaluation samples (0: the family's default)


@dataclass
class RunConfig:
    family: str = "ddpm"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: typing.Any = None  # the family's Config dataclass


# --------------------------------------------------------------------------- dict <-> dataclass


def to_dict(cfg) -> dict:
    """A plain, YAML-safe dict of a (nested) dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else _plain(v)
    return out


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _coerce(value, tp, where: str):
    """Convert a YAML value to the field's annotated type, or raise a UsageError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp, *_) = typing.get_args(tp) or (typing.Any,)
        return [_coerce(v, item_tp, where) for v in value]
    if tp is typing.Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UsageError(f"config key '{where}' expects one of: {', '.join(map(str, choices))}; got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UsageError(f"config key '{where}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            try:
                return int(str(value))
            except ValueError:
                raise UsageError(f"config key '{where}' expects an integer, got {value!r}") from None
        return int(value)
    if tp is float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"config key '{where}' expects a number, got {value!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"config key '{where}' expects a finite number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UsageError(f"config key '{where}' expects a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, d: dict | None, where: str = ""):
    """Build dataclass `cls` from a dict; unknown keys raise a UsageError listing the valid ones."""
    if d is not None and not isinstance(d, dict):
        raise UsageError(f"config section '{where[:-1] or cls.__name__}' must be a mapping of keys to values, got {d!r}")
    d = dict(d or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        key = f"{where}{unknown[0]}"
        raise UsageError(f"unknown config key '{key}'; valid keys{' under ' + where[:-1] if where else ''}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in d:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(d[name], dict):
                raise UsageError(f"config key '{where}{name}' must be a mapping")
            kwargs[name] = from_dict(tp, d[name], f"{where}{name}.")
        else:
            kwargs[name] = _coerce(d[name], hints[name], f"{where}{name}")
    return cls(**kwargs)


def set_dotted(cfg, key: str, raw: str) -> None:
    """Apply one `a.b=value` override in place; the value is parsed as YAML and then type-checked."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise UsageError(f"config key '{'.'.join(parts[:i])}' has no sub-keys")
        names = [f.name for f in dataclasses.fields(obj)]
        if part not in names:
            prefix = ".".join(parts[:i])
            raise UsageError(
                f"unknown config key '{key}'; valid keys{' under ' + prefix if prefix else ''}: {', '.join(names)}"
            )
        if i == len(parts) - 1:
            value = yaml.safe_load(raw) if raw != "" else ""
            hint = typing.get_type_hints(type(obj))[part]
            if dataclasses.is_dataclass(hint):
                raise UsageError(f"config key '{key}' is a section; set one of its keys, e.g. {key}.<name>=...")
            setattr(obj, part, _coerce(value, hint, key))
        else:
            obj = getattr(obj, part)


def parse_overrides(items) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise UsageError(f"expected key=value, got '{item}' (e.g. train.steps=200)")
        k, v = item.split("=", 1)
        out.append((k.strip(), v.strip()))
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping (family:, data:, train:, model:)")
    return data


def build_run_config(family_name: str, model_config_cls, raw: dict | None = None) -> RunConfig:
    """A RunConfig from a raw dict (e.g. a YAML file's contents) for one family's Config class."""
    raw = dict(raw or {})
    allowed = {"family", "data", "train", "eval", "model"}
    for k in raw:
        if k not in allowed:
            raise UsageError(f"unknown config key '{k}'; valid top-level keys: {', '.join(sorted(allowed))}")
    if "family" in raw and raw["family"] != family_name:
        raise UsageError(f"the config is for family '{raw['family']}' but '{family_name}' was asked for")
    if isinstance(raw.get("data"), str):
        raw["data"] = {"name": raw["data"]}
    return RunConfig(
        family=family_name,
        data=from_dict(DataConfig, raw.get("data"), "data."),
        train=from_dict(TrainConfig, raw.get("train"), "train."),
        eval=from_dict(EvalConfig, raw.get("eval"), "eval."),
        model=from_dict(model_config_cls, raw.get("model"), "model."),
    )


# --------------------------------------------------------------------------- value checks

_AT_LEAST_ONE = ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "n_samples", "keep_checkpoints")


def check(cfg: RunConfig) -> None:
    """Range checks the types cannot express; a UsageError names the key and the valid range.

    Learning rates (`lr`, `lr_*` in the model section) must be > 0; loop counts must be >= 1. Choice
    (`Literal`) fields are checked here too, for configs built in Python rather than from YAML.
    """
    for section in ("data", "train", "eval", "model"):
        obj = getattr(cfg, section)
        if obj is not None:
            for name, tp in typing.get_type_hints(type(obj)).items():
                if typing.get_origin(tp) is Literal:
                    _coerce(getattr(obj, name), tp, f"{section}.{name}")
    for name in _AT_LEAST_ONE:
        if getattr(cfg.train, name) < 1:
            raise UsageError(f"train.{name} must be >= 1, got {getattr(cfg.train, name)}")
    if not 0 <= cfg.train.ema_decay < 1:
        raise UsageError(f"train.ema_decay must be in [0, 1) (0 disables the EMA), got {cfg.train.ema_decay}")
    for key in ("grad_clip", "warmup_steps", "max_minutes", "ckpt_minutes", "max_loss", "sample_every", "sample_steps"):
        if getattr(cfg.train, key) < 0:
            raise UsageError(f"train.{key} must be >= 0, got {getattr(cfg.train, key)}")
    if cfg.model is not None:
        for f in dataclasses.fields(cfg.model):
            v = getattr(cfg.model, f.name)
            if (f.name == "lr" or f.name.startswith("lr_")) and isinstance(v, (int, float)) and not v > 0:
                raise UsageError(f"model.{f.name} must be a learning rate > 0, got {v}")


def lr_keys(model_cfg) -> list[str]:
    """The model section's learning-rate keys (e.g. ['model.lr_g', 'model.lr_d']), for hints."""
    return [f"model.{f.name}" for f in dataclasses.fields(model_cfg) if f.name == "lr" or f.name.startswith("lr_")]


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
