"""Checkpoints as data: `step-N.safetensors` (tensors) + `step-N.json` (everything else). No pickle anywhere.

The tensor file holds `model/*`, `ema/*`, `optim/<name>/<param index>/<state key>` and `rng/*`. The JSON holds
the family, the resolved config, the genlab version, the step, optimizer hyper-parameters and non-tensor
state, and the SHA-256 of the tensor file. Both are written atomically (temp file, fsync, rename), tensors
first: the JSON is the commit record, so a crash at any point leaves the previous checkpoint the newest valid
one. Loading checks the hash, so a truncated or corrupted file is skipped (with a warning) or reported.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genlab import __version__
from genlab.errors import GenlabError
from genlab.fileio import sha256_file

FORMAT = "genlab-checkpoint/2"  # /2: data spec, dependencies, trainable state only
READABLE_FORMATS = ("genlab-checkpoint/1", FORMAT)
_NAME = re.compile(r"^step-(\d+)\.json$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def optimizer_to_flat(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors (keyed optim/<name>/<idx>/<key>) and JSON metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{name}/{idx}/{key}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = _jsonable(v)
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def optimizer_from_flat(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The state_dict `optimizer_to_flat` split, ready for `opt.load_state_dict`."""
    state: dict[int, dict] = {}
    prefix = f"optim/{name}/"
    for k, v in tensors.items():
        if k.startswith(prefix):
            idx, key = k[len(prefix) :].split("/", 1)
            state.setdefault(int(idx), {})[key] = v
    for idx, d in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    family: str,
    config: dict,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None = None,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    extra: dict | None = None,
    keep: int = 3,
) -> Path:
    """Write step-N.safetensors then step-N.json atomically; prune all but the newest `keep`. Returns the JSON path.

    `model_state` / `ema_state` are the trainable entries only (`trainable_state`): frozen dependencies are
    stored once per run (see `genlab.training.deps`), never in every checkpoint.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    if ema_state is not None:
        tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema_state.items()})
    optim_meta = {}
    for name, opt in (optimizers or {}).items():
        t, m = optimizer_to_flat(name, opt)
        tensors.update(t)
        optim_meta[name] = m
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    stem = f"step-{step:07d}"
    tensor_path = ckpt_dir / f"{stem}.safetensors"
    tmp = tensor_path.with_name(f".{tensor_path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, tensor_path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no temp file behind
    meta = {
        "format": FORMAT,
        "family": family,
        "genlab_version": __version__,
        "step": step,
        "config": config,
        "tensors": tensor_path.name,
        "sha256": sha256_file(tensor_path),
        "has_ema": ema_state is not None,
        "optimizers": optim_meta,
        **(extra or {}),
    }
    json_path = ckpt_dir / f"{stem}.json"
    atomic_write_bytes(json_path, json.dumps(meta, indent=1).encode())
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        for p in (old, old.with_suffix(".safetensors")):
            p.unlink(missing_ok=True)
    return json_path


def clean_temp_files(ckpt_dir: Path) -> int:
    """Remove temp files of interrupted saves (`.NAME.tmpPID`) and tensor files without a JSON record.

    Called by the main process before training starts, when no save of this run can be in flight.
    Returns how many files were removed.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return 0
    removed = 0
    for p in ckpt_dir.iterdir():
        orphan = p.suffix == ".safetensors" and not p.with_suffix(".json").exists()
        if (p.name.startswith(".") and ".tmp" in p.name) or orphan:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def trainable_state(model: torch.nn.Module, frozen: set[int]) -> dict[str, torch.Tensor]:
    """The model's state_dict without the tensors in `frozen` (ids of frozen dependencies' tensors)."""
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) not in frozen}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], frozen: set[int], *, what: str) -> None:
    """Load `state` (as saved by `trainable_state`) into `model`; a mismatch is a GenlabError listing it."""
    expected = trainable_state(model, frozen)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        problems = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                    f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                    f"shapes differ: {'; '.join(shapes[:3])}" if shapes else ""]
        raise GenlabError(f"{what} does not match the model built from its config: "
                          f"{', '.join(p for p in problems if p)}")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k])


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """JSON records in step order (oldest first)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


@dataclass
class Checkpoint:
    path: Path  # the JSON record
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix/` with the prefix removed (e.g. part('model') is a state_dict)."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + "/")}


def read_checkpoint(json_path: Path) -> Checkpoint:
    """Read and verify one checkpoint; any problem raises a GenlabError naming the file."""
    json_path = Path(json_path)
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise GenlabError(f"checkpoint record {json_path} is unreadable or corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise GenlabError(f"{json_path} is not a genlab checkpoint (format {meta.get('format') if isinstance(meta, dict) else '?'!r})")
    tensor_path = json_path.with_name(meta["tensors"])
    if not tensor_path.is_file():
        raise GenlabError(f"checkpoint tensors {tensor_path} are missing")
    if sha256_file(tensor_path) != meta["sha256"]:
        raise GenlabError(f"checkpoint tensors {tensor_path} are corrupt (SHA-256 mismatch)")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as e:
        raise GenlabError(f"checkpoint tensors {tensor_path} cannot be read: {e}") from None
    return Checkpoint(json_path, meta, tensors)


def latest_checkpoint(ckpt_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that reads and verifies; corrupt newer ones are skipped with a warning."""
    for json_path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return read_checkpoint(json_path)
        except GenlabError as e:
            warnings.warn(f"skipping {json_path.name}: {e}", stacklevel=2)
    return None
