import os

# Test tensors are tiny: one thread avoids OpenMP start-up and barrier costs per op, which dominate them
# (and explode when another process competes for the cores). Subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Tiny networks so each training test runs in seconds on a 2-core CPU.
TINY_DDPM = ["model.base_channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
             "model.attn_resolutions=[4]", "model.sample_steps=4", "model.mlp_hidden=32", "model.mlp_layers=1"]
TINY_VAE = ["model.channels=8", "model.latent_dim=4", "model.mlp_hidden=32", "model.iwae_k=4"]
FAST_TRAIN = ["train.batch_size=8", "train.log_every=1", "train.n_samples=8", "train.trackers=none"]


@pytest.fixture
def tiny_overrides():
    return {"ddpm": TINY_DDPM, "vae": TINY_VAE}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; give every test a clean one."""
    yield
    reset_accelerate()


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def plain_step(family, model, batch, opts, *, micro_batches: int = 1, ema=None) -> dict:
    """One `train_step` through the loop's StepContext without Accelerate (for family unit tests)."""
    from genlab.rng import SampleRNG
    from genlab.training.context import StepContext

    ctx = StepContext(model, opts, batch, SampleRNG(range(len(batch["x"]))), micro_batches=micro_batches, ema=ema)
    return family.train_step(model, batch, opts, ctx)


def spec_for(shape, num_classes: int = 0, name: str = "test"):
    """A DataSpec for unit tests: sample shape, and labels when num_classes > 0."""
    from genlab.data import DataSpec

    return DataSpec(name, tuple(shape), tuple(str(i) for i in range(num_classes)), ("y",) if num_classes else ())


def run_cli(*args) -> int:
    """`genlab ...` in this process (fast), with Accelerate's singletons reset afterwards."""
    from genlab.cli import main

    try:
        return main([str(a) for a in args])
    finally:
        reset_accelerate()


def run_torchrun(out, *args, port: int) -> None:
    """`torchrun --nproc_per_node 2 -m genlab train ... --out OUT` on CPU (gloo); fails the test on error."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "genlab", "train", *map(str, args), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
