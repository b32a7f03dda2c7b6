"""The run's data: which split and classes a run trains on, the stateless batch order, evaluation conditions."""

from __future__ import annotations

import torch

from genlab.config import RunConfig
from genlab.data import Dataset, load_dataset
from genlab.errors import UsageError
from genlab.rng import derive_seed


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


class Batches:
    """Global sample positions -> dataset indices through a seeded permutation per epoch (stateless).

    Sample position p of the whole run reads index perm_e[p mod N], perm_e seeded by (seed, epoch e = p // N).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def indices(self, positions: torch.Tensor) -> torch.Tensor:
        epochs, offsets = positions // self.n, positions % self.n
        out = torch.empty_like(positions)
        for e in epochs.unique().tolist():
            if e not in self._cache:
                g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", e))
                self._cache = {e: torch.randperm(self.n, generator=g)}
            mask = epochs == e
            out[mask] = self._cache[e][offsets[mask]]
        return out


def step_positions(step: int, *, micro: int, grad_accum: int, rank: int, world: int) -> torch.Tensor:
    """Global sample positions of this process's share of optimizer step `step`, micro-batch by micro-batch.

    Micro-batch m of process r holds positions step*G + m*micro*world + r*micro + [0, micro), G the global
    batch: so 2 processes x batch b, and 1 process x 2 micro-batches of b, see the same samples as batch 2b.
    """
    global_batch = micro * world * grad_accum
    return torch.cat([step * global_batch + m * micro * world + rank * micro + torch.arange(micro)
                      for m in range(grad_accum)])


def eval_conditions(cfg: RunConfig, keys, n: int) -> dict | None:
    """Conditions for n evaluation samples from the run's test split (in order, cycled): {"y": ...}, ...

    So a class-conditional model is evaluated on the test set's own label distribution (and any other
    condition kind likewise), not on a made-up one. A family that builds its conditions from test images
    itself (translation: CycleGAN and StarGAN translate the test split's `x`) defines
    `eval_conditions(test, n) -> dict`, which is used instead.
    """
    from genlab.models import FAMILIES

    custom = getattr(FAMILIES.get(cfg.family), "eval_conditions", None)
    if custom is not None:
        return custom(load_data(cfg, "test"), n)
    keys = [k for k in keys if k != "x"]
    if not keys:
        return None
    test = load_data(cfg, "test")
    idx = torch.arange(n) % len(test)
    batch = test.batch(idx)
    return {k: batch[k] for k in keys}
