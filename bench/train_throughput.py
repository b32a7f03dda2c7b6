"""Training-step throughput: genlab's DDPM U-Net vs Hugging Face diffusers' ``UNet2DModel``.

What is measured
----------------
Images per second of one full DDPM training step on CPU, fp32, for 28x28 single-channel images (Fashion-MNIST
sized; the data are random because only speed matters). Both models run the *same* step:

    x0 ~ U[-1, 1] (B, 1, 28, 28)  (a fixed pool of pre-made batches, shared by both models)
    t ~ randint(0, 1000), eps ~ N(0, I)      (same generator seed for both models -> identical draws)
    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps    (linear betas 1e-4 .. 0.02, T = 1000)
    loss = MSE(model(x_t, t), eps); loss.backward(); AdamW.step(); zero_grad()

Each model is warmed up, then ``--steps`` steps are timed per repeat; repeats are interleaved
(genlab, diffusers, genlab, diffusers, ...) in one process so background load hits both alike, and the median
images/s over ``--repeats`` is reported, with the ratio genlab / diffusers (project target: >= 1.2).
``torch.set_num_threads`` is left at its default. On a small shared machine another process grabbing a core slows
a 2-thread torch step several-fold, so each repeat also records its CPU utilisation (own CPU time / (wall time x
threads)); a (genlab, diffusers) pair in which either falls below ``--min-cpu-util`` is discarded and redone, up to
``--max-retries`` times, and the discarded pairs are kept in the JSON.

The two models are configured identically and have *exactly* the same parameter count: diffusers with
``block_out_channels = base * channel_mult``, ``layers_per_block = num_res_blocks``, ``DownBlock2D`` everywhere
except an ``AttnDownBlock2D`` at the lowest resolution (7x7), mirrored up blocks, a mid block with attention, and
``attention_head_dim`` chosen so both use the same number of heads; genlab's ``UNet`` with the same base width,
channel multipliers, blocks per level, ``attn_resolutions=(7,)`` and dropout 0. With three levels the feature maps
are 28 -> 14 -> 7 and diffusers' stride-2 conv / nearest x2 upsampling handles that without padding (7 is only
reached at the last level, so no odd size is ever downsampled or upsampled to a mismatching size). A fourth level
(7 -> 4) breaks diffusers' fixed x2 upsampling (4 -> 8 != 7), so the bench refuses such configurations.

How to run (from the repository root)
-------------------------------------
diffusers is *not* a genlab dependency; install it into the venv for the bench only, with torch pinned:

    /work/main/.venv/bin/pip install -c bench/constraints.txt diffusers

then

    .venv/bin/python bench/train_throughput.py                      # defaults: B=64, 50 steps x 3 repeats
    .venv/bin/python bench/train_throughput.py --steps 20 --repeats 5 --base-channels 64 --profile-steps 5

Results go to ``bench/results/train_throughput.{json,md}`` (``--out-dir`` to change); ``--profile-steps N`` also
writes a torch.profiler op table per model to ``train_throughput_profile.txt``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark this checkout's genlab, installed or not

from genlab.nn import UNet  # noqa: E402

INSTALL_CMD = f"{ROOT / '.venv/bin/pip'} install -c {ROOT / 'bench/constraints.txt'} diffusers"
NUM_TIMESTEPS = 1000
DATA_POOL_BATCHES = 8


@dataclass(frozen=True)
class ArchConfig:
    """Architecture shared by both models (each library's own names are derived from it)."""

    image_size: int = 28
    in_channels: int = 1
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    heads: int = 4
    dropout: float = 0.0

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def attn_resolution(self) -> int:
        """Feature-map size at the lowest level, the only one with attention (7 for 28x28 and three levels)."""
        return self.image_size // 2 ** (len(self.channel_mult) - 1)


# ----------------------------------------------------------------------------------------------- models


def build_genlab(cfg: ArchConfig) -> tuple[nn.Module, dict]:
    kwargs = {
        "in_channels": cfg.in_channels,
        "image_size": cfg.image_size,
        "base_channels": cfg.base_channels,
        "channel_mult": cfg.channel_mult,
        "num_res_blocks": cfg.num_res_blocks,
        "attn_resolutions": (cfg.attn_resolution,),
        "dropout": cfg.dropout,
        "num_classes": 0,
        "heads": cfg.heads,
    }
    return UNet(**kwargs), kwargs


def build_diffusers(cfg: ArchConfig) -> tuple[nn.Module, dict]:
    from diffusers import UNet2DModel  # lazy: diffusers is a bench-only dependency

    levels = len(cfg.channel_mult)
    kwargs = {
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "layers_per_block": cfg.num_res_blocks,
        "block_out_channels": cfg.block_out_channels,
        "down_block_types": ("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        "up_block_types": ("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        "attention_head_dim": cfg.block_out_channels[-1] // cfg.heads,  # same number of heads as genlab
        "dropout": cfg.dropout,
        "norm_num_groups": 32,
    }
    return UNet2DModel(**kwargs), kwargs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------- train step


class StepRunner:
    """Owns one model, its AdamW optimiser and its RNG, and runs identical DDPM training steps."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data: list[torch.Tensor],
        seed: int,
        lr: float = 2e-4,
    ):
        self.name = name
        self.model = model.train()
        self.forward = forward
        self.data = data
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr)
        self.gen = torch.Generator().manual_seed(seed)
        betas = torch.linspace(1e-4, 0.02, NUM_TIMESTEPS, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1.0 - betas, dim=0).float()
        self.i = 0
        self.last_loss = float("nan")

    def step(self) -> None:
        x0 = self.data[self.i % len(self.data)]
        self.i += 1
        b = x0.shape[0]
        t = torch.randint(0, NUM_TIMESTEPS, (b,), generator=self.gen)
        eps = torch.randn(x0.shape, generator=self.gen)
        ab = self.alpha_bar[t].view(b, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
        loss = F.mse_loss(self.forward(x_t, t), eps)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = loss.item()

    def timed(self, steps: int) -> tuple[float, float, int]:
        """Run `steps` steps; return (wall seconds, this process's CPU seconds, minor page faults) they took."""
        faults_start = minor_faults()
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return wall, cpu, minor_faults() - faults_start


# ------------------------------------------------------------------------------------------------- misc


def minor_faults() -> int:
    """This process's minor page faults so far (0 where `resource` is unavailable).

    Freed large tensors go back to the OS and fault in again on the next step; on this kind of machine that is a
    visible share of a step, so the count per step is reported next to the throughput.
    """
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(diffusers_version: str) -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        "diffusers_version": diffusers_version,
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def markdown(result: dict) -> str:
    m, a = result["machine"], result["args"]
    rows = [
        "| model | params | median images/s | median ms/step | images/s per repeat | min CPU util | page faults/step |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name in ("genlab", "diffusers"):
        r = result["models"][name]
        per = ", ".join(f"{v:.1f}" for v in r["images_per_s"])
        rows.append(
            f"| {name} | {r['params']:,} | {r['median_images_per_s']:.1f} | {r['median_ms_per_step']:.0f} "
            f"| {per} | {min(r['cpu_util']):.2f} | {statistics.median(r['minor_page_faults_per_step']):,.0f} |"
        )
    ratio, target = result["ratio_genlab_over_diffusers"], result["target_ratio"]
    arch = result["arch"]
    size = arch["image_size"]
    setup = (
        f"CPU fp32, {a['batch_size']}x{arch['in_channels']}x{size}x{size} random images, {a['steps']} timed "
        f"steps x {a['repeats']} interleaved repeats after {a['warmup']} warm-up steps; {m['cpu_model']}, "
        f"{m['cpu_count']} CPUs, {m['torch_num_threads']} torch threads, torch {m['torch_version']}, "
        f"diffusers {m['diffusers_version']}."
    )
    res = arch["attn_resolution"]
    architecture = (
        f"Architecture (both): channels {list(arch['block_out_channels'])}, {arch['num_res_blocks']} res blocks "
        f"per level, attention at {res}x{res} + mid, {arch['heads']} heads, dropout {arch['dropout']}."
    )
    verdict = f"**Ratio genlab / diffusers: {ratio:.3f}** (target >= {target}: {'met' if ratio >= target else 'not met'})."
    note = (
        "CPU util = own CPU time / (wall time x torch threads) per repeat; well below 1 means another process "
        "competed for the cores during that repeat."
    )
    title = "# Training-step throughput: genlab UNet vs diffusers UNet2DModel"
    return "\n".join([title, "", setup, architecture, "", *rows, "", verdict, "", note, ""])


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--steps", type=int, default=50, help="timed steps per repeat (default 50, ~20-25 s each here)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per model before the first repeat")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--channel-mult", type=str, default="1,2,2", help="comma-separated, e.g. 1,2,2")
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument(
        "--min-cpu-util",
        type=float,
        default=0.85,
        help="redo a (genlab, diffusers) pair when either ran below this CPU utilisation (0 disables)",
    )
    p.add_argument("--max-retries", type=int, default=6, help="at most this many redone pairs in all")
    p.add_argument("--target-ratio", type=float, default=1.2)
    p.add_argument(
        "--profile-steps", type=int, default=0, help="if > 0, also profile this many steps per model"
    )
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    return p.parse_args(argv)


def check_config(cfg: ArchConfig) -> None:
    levels = len(cfg.channel_mult)
    if cfg.image_size % 2 ** (levels - 1):
        sys.exit(
            f"image size {cfg.image_size} is not divisible by 2^{levels - 1}: diffusers' x2 upsampling cannot "
            "match the skip sizes (genlab can); pick fewer levels"
        )
    if cfg.block_out_channels[-1] % cfg.heads:
        sys.exit(f"lowest-level width {cfg.block_out_channels[-1]} is not divisible by {cfg.heads} heads")
    if any(c % 32 for c in cfg.block_out_channels):
        sys.exit("widths must be multiples of 32 so both libraries use GroupNorm(32, C)")


def profile(runners: list[StepRunner], steps: int, path: Path) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    chunks = []
    for r in runners:
        print(f"profiling {r.name}: {steps} steps", flush=True)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            r.timed(steps)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        chunks.append(f"===== {r.name} ({steps} steps) =====\n{table}\n")
    write_atomic(path, "\n".join(chunks))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import diffusers
    except ImportError:
        print(
            f"diffusers is not installed (it is a bench-only dependency). Install it with:\n\n    {INSTALL_CMD}\n",
            file=sys.stderr,
        )
        return 2

    torch.set_default_dtype(torch.float32)
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        print(
            f"WARNING: 1-min load average is {os.getloadavg()[0]:.2f}; other processes will skew the timings"
        )
    cfg = ArchConfig(
        base_channels=args.base_channels,
        channel_mult=tuple(int(c) for c in args.channel_mult.split(",")),
        num_res_blocks=args.num_res_blocks,
        heads=args.heads,
    )
    check_config(cfg)

    torch.manual_seed(args.seed)
    g_model, g_kwargs = build_genlab(cfg)
    torch.manual_seed(args.seed)
    d_model, d_kwargs = build_diffusers(cfg)
    g_params, d_params = count_params(g_model), count_params(d_model)
    param_ratio = g_params / d_params
    print(f"params: genlab {g_params:,}  diffusers {d_params:,}  (ratio {param_ratio:.4f})")
    if abs(param_ratio - 1) > 0.05:
        print(
            "WARNING: parameter counts differ by more than 5%; the comparison is not matched", file=sys.stderr
        )

    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    data_gen = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)
    data = [torch.rand(shape, generator=data_gen) * 2 - 1 for _ in range(DATA_POOL_BATCHES)]

    runners = [
        StepRunner("genlab", g_model, lambda x, t: g_model(x, t), data, args.seed),
        StepRunner("diffusers", d_model, lambda x, t: d_model(x, t).sample, data, args.seed),
    ]
    with torch.no_grad():  # both must map (B, 1, 28, 28) -> (B, 1, 28, 28)
        for r in runners:
            out = r.forward(data[0][:2], torch.zeros(2, dtype=torch.long))
            assert out.shape == data[0][:2].shape, (r.name, tuple(out.shape))

    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch_size}, warmup {args.warmup}, {args.steps} steps x {args.repeats} repeats",
        flush=True,
    )
    for r in runners:
        secs, _, _ = r.timed(args.warmup)
        print(f"warm-up {r.name}: {args.warmup} steps in {secs:.1f}s (loss {r.last_loss:.4f})", flush=True)

    # cpu_util = own CPU seconds / (wall seconds * torch threads): well below 1 means other processes took cores
    # from this one during that repeat, and its number should not be trusted.
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    cpu_util: dict[str, list[float]] = {r.name: [] for r in runners}
    faults: dict[str, list[float]] = {r.name: [] for r in runners}
    discarded: list[dict] = []
    attempt = 0
    while len(times["genlab"]) < args.repeats:
        attempt += 1
        rep = len(times["genlab"]) + 1
        pair: dict[str, tuple[float, float, float]] = {}
        for r in runners:  # interleaved: genlab, diffusers, genlab, diffusers, ...
            secs, cpu_secs, n_faults = r.timed(args.steps)
            if not math.isfinite(r.last_loss):
                raise RuntimeError(f"{r.name}: non-finite loss {r.last_loss}")
            pair[r.name] = (secs, cpu_secs / (secs * threads), n_faults / args.steps)
            print(
                f"repeat {rep}/{args.repeats} {r.name:9s}: {args.batch_size * args.steps / secs:7.1f} images/s  "
                f"({1000 * secs / args.steps:.0f} ms/step, cpu util {pair[r.name][1]:.2f}, "
                f"loss {r.last_loss:.4f})",
                flush=True,
            )
        contended = min(u for _, u, _ in pair.values()) < args.min_cpu_util
        if contended and attempt - rep < args.max_retries:
            print(
                f"  cpu util below {args.min_cpu_util}: another process competed; discarding and redoing this pair"
            )
            discarded.append({name: {"seconds": s, "cpu_util": u} for name, (s, u, _) in pair.items()})
            continue
        for name, (secs, util, f) in pair.items():
            times[name].append(secs)
            cpu_util[name].append(util)
            faults[name].append(f)

    models = {}
    for name, kwargs, n in (("genlab", g_kwargs, g_params), ("diffusers", d_kwargs, d_params)):
        ips = [args.batch_size * args.steps / s for s in times[name]]
        models[name] = {
            "config": kwargs,
            "params": n,
            "seconds": times[name],
            "cpu_util": cpu_util[name],
            "minor_page_faults_per_step": faults[name],
            "images_per_s": ips,
            "median_images_per_s": statistics.median(ips),
            "median_ms_per_step": 1000 * statistics.median(times[name]) / args.steps,
        }
    ratio = models["genlab"]["median_images_per_s"] / models["diffusers"]["median_images_per_s"]
    result = {
        "benchmark": "ddpm_train_step_throughput",
        "machine": {**machine_info(diffusers.__version__), "loadavg_at_start": load_at_start},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "arch": {
            **asdict(cfg),
            "block_out_channels": cfg.block_out_channels,
            "attn_resolution": cfg.attn_resolution,
        },
        "train_step": {
            "dtype": "float32",
            "optimizer": "AdamW(lr=2e-4)",
            "loss": "mse(eps_pred, eps)",
            "schedule": f"linear betas 1e-4..0.02, T={NUM_TIMESTEPS}",
            "data": f"{DATA_POOL_BATCHES} pre-made batches of U[-1,1] noise shared by both models",
        },
        "models": models,
        "discarded_contended_pairs": discarded,
        "param_ratio_genlab_over_diffusers": param_ratio,
        "ratio_genlab_over_diffusers": ratio,
        "target_ratio": args.target_ratio,
        "target_met": ratio >= args.target_ratio,
    }

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "train_throughput.json", json.dumps(result, indent=2, default=list) + "\n")
    md = markdown(result)
    write_atomic(out_dir / "train_throughput.md", md)
    print("\n" + md)
    print(f"wrote {out_dir / 'train_throughput.json'} and {out_dir / 'train_throughput.md'}")

    if args.profile_steps > 0:
        profile(runners, args.profile_steps, out_dir / "train_throughput_profile.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
