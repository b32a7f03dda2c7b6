"""Evaluating a model: sampling in fixed, seeded chunks, the metrics of a protocol, test-set likelihood."""

from __future__ import annotations

import math

import torch

from genlab.config import RunConfig
from genlab.data import to_uint8
from genlab.errors import UsageError
from genlab.progress import bar
from genlab.rng import derive_seed
from genlab.training.data import eval_conditions, load_data
from genlab.training.run import sample_options


def _slice(cond: dict | None, start: int, stop: int) -> dict | None:
    return {k: v[start:stop] for k, v in cond.items()} if cond else None


def sample_chunked(family, model, n: int, *, seed: int = 0, cond: dict | None = None, opts: dict | None = None,
                   chunk: int = 256, progress: bool | None = None, key: str = "") -> torch.Tensor:
    """n samples (float, on the CPU) drawn in chunks with a progress bar; chunk i is seeded by (seed, key, i).

    Without a `key`, the first chunk uses `torch.Generator().manual_seed(seed)` itself, so n <= chunk samples
    equal `family.sample(model, n, generator=Generator().manual_seed(seed))` (what `Run.sample` promises).
    """
    out = []
    starts = range(0, n, chunk)
    for i, start in enumerate(bar(starts, progress=progress if len(starts) > 1 else False, desc=f"sampling {n}")):
        m = min(chunk, n - start)
        g = torch.Generator().manual_seed(seed if i == 0 and not key else derive_seed(seed, key or "chunk", i))
        out.append(family.sample(model, m, cond=_slice(cond, start, start + m), generator=g, **(opts or {})).cpu())
    return torch.cat(out)


def sample_for_eval(family, model, cfg: RunConfig, n: int, *, seed: int = 0, steps: int | None = None,
                    progress: bool | None = None) -> tuple[torch.Tensor, dict | None]:
    """n samples as uint8, with the conditions they were drawn for (from the test split; see eval_conditions)."""
    cond = eval_conditions(cfg, family.needs(cfg.model), n)
    opts = sample_options(family, steps=steps or None)
    x = sample_chunked(family, model, n, seed=seed, cond=cond, opts=opts, chunk=500, progress=progress, key="eval")
    return to_uint8(x), cond


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
    images, cond = sample_for_eval(family, model, cfg, n, seed=seed, steps=steps or cfg.eval.sample_steps or None)
    labels = cond.get("y") if cond else None
    if labels is None:
        names = tuple(m for m in names if m != "acc")
    return {**evaluate(images, None, protocol=p, metrics=names, labels=labels, conditions=cond), **extra}


def eval_record(step: int, result: dict, floor: dict | None = None) -> dict:
    """One eval.jsonl line: the step, the values, the protocol's name and n, and the data-vs-data floor's values."""
    values = {k: v for k, v in result.items() if k != "protocol"}
    record = {"step": step, **values, "protocol": result["protocol"]["name"], "n": result["protocol"]["n_fake"]}
    if floor is not None:
        record["floor"] = {k: v for k, v in floor.items() if k != "protocol"}
    return record


def evaluate_with_floor(family, model, cfg: RunConfig, *, seed: int = 0) -> tuple[dict, dict]:
    """`evaluate_model` with the run's eval settings, and the floor (real vs real) at the same n and metrics."""
    from genlab.metrics.protocols import floor

    result = evaluate_model(family, model, cfg, seed=seed)
    names = [m for m in cfg.eval.metrics.split(",") if m.strip() and m.strip() != "nll"]
    return result, floor(result["protocol"]["name"], metrics=[m.strip() for m in names], seed=seed,
                         n=result["protocol"]["n_fake"])


@torch.no_grad()
def test_likelihood(family, model, cfg: RunConfig, *, seed: int = 0, chunk: int = 500) -> dict:
    """Mean log-likelihood of the run's test split: {"nll_nats": per example, "bits_per_dim": ..., "nll_kind": ...}.

    `nll_kind` is the family's `LIKELIHOOD`: "exact", or "bound" when log_likelihood is a lower bound (the
    VAE's IWAE), so the NLL shown is an upper bound on the true one. A family that does not say is "exact".
    """
    from genlab.metrics.likelihood import bits_per_dim

    if not hasattr(family, "log_likelihood"):
        raise UsageError(f"the {cfg.family} family has no likelihood; drop 'nll' from the metrics")
    data = load_data(cfg, "test")
    ll = []
    for i, start in enumerate(range(0, len(data), chunk)):
        x = data.batch(torch.arange(start, min(start + chunk, len(data))))["x"]
        try:
            g = torch.Generator().manual_seed(derive_seed(seed, "nll", i))
            ll.append(family.log_likelihood(model, x, generator=g).double())
        except ValueError as e:  # e.g. a GMM on latents models p(z), not p(x)
            raise UsageError(str(e)) from None
    ll = torch.cat(ll)
    dims = math.prod(data.shape)
    return {"nll_nats": -ll.mean().item(), "bits_per_dim": float(bits_per_dim(ll.mean(), dims)),
            "nll_kind": getattr(family, "LIKELIHOOD", "exact")}


@torch.no_grad()
def path_length(family, model, cfg: RunConfig, *, space: str = "z", sampling: str = "end", n: int = 2000,
                seed: int = 0, protocol: str = "", batch_size: int = 100) -> dict:
    """Perceptual path length (Karras et al. 2019, Sec. 3.1) of a generator, in Z or W, 'full' or 'end'.

    The family provides `generate(model, z)` (paths in Z) and, for W, `mapping(model, z)` and
    `synthesis(model, w)`; the distance is `DomainLPIPS` on the protocol's evaluator (uncalibrated: compare
    models on one dataset, not with the paper's LPIPS-VGG numbers). Returns {"ppl", "n", "n_kept", "space",
    "sampling", "distance"} (see genlab.metrics.ppl).
    """
    from genlab.metrics.evaluators import load_evaluator
    from genlab.metrics.lpips import DomainLPIPS
    from genlab.metrics.ppl import perceptual_path_length
    from genlab.metrics.protocols import get_protocol, protocol_for_dataset

    name = cfg.family
    if not hasattr(family, "generate"):
        raise UsageError(f"the {name} family has no latent generator (generate(model, z)) to measure paths on")
    if space == "w" and not (hasattr(family, "mapping") and hasattr(family, "synthesis")):
        raise UsageError(f"the {name} family has no mapping/synthesis split: measure paths in Z (space='z')")
    try:
        p = get_protocol(protocol or cfg.eval.protocol or protocol_for_dataset(cfg.data.name))
    except ValueError as e:
        raise UsageError(str(e)) from None
    device = next(model.parameters()).device
    distance = DomainLPIPS(load_evaluator(p.extractor, device=device))
    kw = {"mapping": lambda z: family.mapping(model, z)} if space == "w" else {}
    # images enter the distance clamped to [-1, 1], as saved images would be (but not quantized: see ppl.py)
    gen = (lambda w: family.synthesis(model, w).clamp(-1, 1)) if space == "w" else \
        (lambda z: family.generate(model, z).clamp(-1, 1))
    was_training = model.training
    model.eval()
    try:
        out = perceptual_path_length(gen, distance, n=n, latent_dim=model.cfg.latent_dim, space=space,
                                     sampling=sampling, batch_size=batch_size, device=device,
                                     generator=torch.Generator().manual_seed(derive_seed(seed, "ppl")), **kw)
    except ValueError as e:
        raise UsageError(str(e)) from None
    finally:
        model.train(was_training)
    return {k: v for k, v in out.items() if k != "distances"} | {"space": space, "sampling": sampling,
                                                                  "distance": f"domain-lpips:{p.extractor}"}
