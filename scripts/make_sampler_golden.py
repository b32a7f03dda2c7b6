"""Write tests/data/sampler_golden.safetensors: samples of a tiny random U-Net from the VP-space DDPM/DDIM samplers.

The file is the reference for the sigma-space samplers (`genlab.samplers.sampling`): it was made with the
`eps_model`/`alpha_bar` samplers that `genlab.models.ddpm.sample` used before the move to denoisers
(genlab commit e72f649), and `tests/test_samplers.py` checks that the new samplers reproduce it.

It holds the U-Net's weights (`genlab.nn.UNet` state-dict keys; float16 values, which the network uses exactly,
since the weights were rounded to float16 before sampling), and per case the output of
`ddpm.sample(model, 4, generator=torch.Generator().manual_seed(0), sampler=..., steps=..., eta=...)`
("sample/<case>", clamped to [-1, 1]) and the sampler's last state before that clamp ("final/<case>", the x
that the callback saw after the last step). Metadata (JSON strings): `unet_args` (the UNet constructor
arguments), `cases` (name -> prediction, schedule, sampler, steps, eta), `n`, `seed`, `clip_x0`.

It needs genlab as of that commit (the script checks). From the repository root:
    git worktree add --detach /tmp/golden e72f649
    PYTHONPATH=/tmp/golden python scripts/make_sampler_golden.py --out tests/data/sampler_golden.safetensors
    git worktree remove /tmp/golden
This rewrites the file with identical tensors (CPU, torch 2.13; the fitting steps are seeded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import save_file

from genlab.models import ddpm

SOURCE_COMMIT = "e72f64961e94f50c09b3792c42919542b7cabc6c"  # the last commit with the VP-space samplers
N, SEED = 4, 0
TINY = dict(
    data_shape=[1, 8, 8],
    base_channels=8,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[4],
    timesteps=1000,
)
# (prediction, schedule, sampler, steps, eta)
CASES = [
    ("eps", "linear", "ddim", 10, 0.0),
    ("eps", "linear", "ddim", 10, 1.0),
    ("eps", "linear", "ddim", 10, 0.5),
    ("eps", "linear", "ddpm", 10, 0.0),
    ("eps", "linear", "ddim", 50, 0.0),
    ("v", "cosine", "ddim", 10, 0.0),
    ("v", "cosine", "ddim", 10, 1.0),
    ("v", "cosine", "ddpm", 10, 0.0),
]


def case_name(prediction, schedule, sampler, steps, eta) -> str:
    return f"{prediction}-{schedule}-{sampler}-{steps}" + (f"-eta{eta:g}" if sampler == "ddim" else "")


def fitted_weights(model: ddpm.DDPM, train_steps: int) -> dict[str, torch.Tensor]:
    """The U-Net's weights plus 0.05 N(0, 1) noise (its zero-initialised convs would hide bugs), then a few hundred
    eps-prediction steps on sklearn's 8x8 digits, so that x0 estimates stay mostly inside the [-1, 1] clip
    (a random eps-predictor drives nearly every pixel to +-1), finally rounded to float16."""
    from sklearn.datasets import load_digits

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    # (1797, 1, 8, 8) in [-1, 1]
    data = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(train_steps):
        x0 = data[torch.randint(0, len(data), (64,), generator=g)]
        t = torch.randint(0, model.cfg.timesteps, (64,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        loss = ddpm.loss_fn(model, model.cfg, x0, None, t, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"fitted {train_steps} steps, last loss {loss.item():.3f}")
    return {k: v.half() if v.is_floating_point() else v for k, v in model.net.state_dict().items()}


def check_source() -> None:
    """Refuse to run unless the imported genlab's sampling code is that of SOURCE_COMMIT."""
    root = Path(ddpm.__file__).resolve().parents[2]
    files = ["genlab/models/ddpm.py", "genlab/samplers/diffusion.py", "genlab/nn/unet.py", "genlab/rng.py"]
    diff = subprocess.run(["git", "-C", str(root), "diff", "--quiet", SOURCE_COMMIT, "--", *files])
    if diff.returncode != 0:
        raise SystemExit(
            f"{root}: {', '.join(files)} differ from {SOURCE_COMMIT[:7]}; see this script's docstring"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/data/sampler_golden.safetensors")
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()

    check_source()
    torch.manual_seed(0)
    model = ddpm.build(ddpm.Config(**TINY))
    state = fitted_weights(model, args.train_steps)
    net = model.net
    unet_args = dict(
        in_channels=1,
        image_size=8,
        base_channels=net.base_channels,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[4],
        dropout=model.cfg.dropout,
        num_classes=0,
    )

    tensors = {k: v.contiguous() for k, v in state.items()}
    cases = {}
    for prediction, schedule, sampler, steps, eta in CASES:
        m = ddpm.build(ddpm.Config(**TINY, prediction=prediction, schedule=schedule))
        m.net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        states = []  # the sampler's state after each step; the last one is x before sample()'s final clamp
        out = ddpm.sample(
            m,
            N,
            generator=torch.Generator().manual_seed(SEED),
            sampler=sampler,
            steps=steps,
            eta=eta,
            callback=lambda i, t, x_t, x0, states=states: states.append(x_t.clone()),
        )
        last = {"x": states[-1]}
        name = case_name(prediction, schedule, sampler, steps, eta)
        tensors[f"sample/{name}"] = out.contiguous()
        tensors[f"final/{name}"] = last["x"].contiguous()
        cases[name] = dict(prediction=prediction, schedule=schedule, sampler=sampler, steps=steps, eta=eta)
        clipped = (last["x"].abs() >= 1).float().mean().item()
        print(f"{name:28s} mean {out.mean():+.3f} std {out.std():.3f} at +-1: {clipped:.0%}")

    meta = {
        "unet_args": json.dumps(unet_args),
        "cases": json.dumps(cases),
        "n": str(N),
        "seed": str(SEED),
        "clip_x0": "1.0",
        "source": f"genlab.models.ddpm.sample at commit {SOURCE_COMMIT} (VP-space samplers)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
