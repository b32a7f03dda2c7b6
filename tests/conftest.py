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
    """`genlab train ... --out OUT` as 2 processes on CPU (gloo), as `torchrun --nproc_per_node 2` would start them
    (the environment torchrun gives each worker), without torchrun's agent process: one torch import less per
    test. Fails the test on error."""
    import subprocess
    import sys
    import tempfile
    import time

    cmd = [sys.executable, "-m", "genlab", "train", *map(str, args), "--out", str(out)]
    base = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "GROUP_RANK": "0", "ROLE_WORLD_SIZE": "2"}
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(2)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logs[r],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r), "ROLE_RANK": str(r)}) for r in range(2)]
    deadline = time.monotonic() + 300
    try:  # as torchrun's agent does: one worker failing (or the time running out) stops the other
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        log.seek(0)
        assert p.returncode == 0, log.read()[-3000:]
