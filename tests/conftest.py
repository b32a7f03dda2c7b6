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


class PlainCtx:
    """The loop's StepContext without Accelerate: plain backward and step (for family unit tests)."""

    def __init__(self, n):
        from genlab.rng import SampleRNG

        self.rng = SampleRNG(range(n))
        self.step = 0

    def backward(self, loss):
        loss.backward()

    def optimizer_step(self, opt, model):
        opt.step()
        opt.zero_grad()

    def unwrap(self, model):
        return model


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
