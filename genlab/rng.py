"""Per-sample random streams, so results never depend on batch size, process count or chunking.

Every sample gets its own `torch.Generator`, seeded by hashing a key such as (seed, "train", step, index).
A 2-process run with batch b and a 1-process run with batch 2b then draw identical noise for each sample,
and sampling 16 images in one batch or in four batches of 4 gives the same images.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*key) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes, runs and platforms)."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class SampleRNG:
    """One CPU generator per sample; draws have a leading batch dimension (B, ...)."""

    def __init__(self, seeds, device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device = torch.device(device)

    @classmethod
    def for_indices(cls, key: tuple, indices, device="cpu") -> "SampleRNG":
        """Streams for samples at global `indices` of a batch identified by `key` (e.g. (seed, step))."""
        return cls([derive_seed(*key, int(i)) for i in indices], device)

    @classmethod
    def from_generator(cls, n: int, generator: torch.Generator | None = None, device="cpu") -> "SampleRNG":
        """n per-sample streams whose seeds are drawn from one generator (None: fresh entropy)."""
        g = generator if generator is not None else torch.Generator().manual_seed(torch.seed())
        seeds = torch.randint(0, 2**62, (n,), generator=g).tolist()
        return cls(seeds, device)

    def __len__(self) -> int:
        return len(self.generators)

    def split(self, start: int, stop: int) -> "SampleRNG":
        """The streams of samples start..stop-1 (shares the generators, so draws stay in sync)."""
        out = SampleRNG([], self.device)
        out.generators = self.generators[start:stop]
        return out

    def randn(self, *shape, dtype=torch.float32) -> torch.Tensor:
        x = torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in self.generators])
        return x.to(self.device)

    def rand(self, *shape, dtype=torch.float32) -> torch.Tensor:
        x = torch.stack([torch.rand(shape, generator=g, dtype=dtype) for g in self.generators])
        return x.to(self.device)

    def randint(self, high: int, *shape) -> torch.Tensor:
        x = torch.stack([torch.randint(0, high, shape, generator=g) for g in self.generators])
        return x.to(self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == len(self), f"batch {x.shape[0]} != {len(self)} streams"
        return self.randn(*x.shape[1:], dtype=torch.float32).to(x.dtype)
