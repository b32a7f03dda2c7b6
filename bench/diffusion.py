"""Guided and fast diffusion on Fashion-MNIST: the DDIM steps curve, the guidance curve, and a peer (diffusers).

All parts sample one trained class-conditional DDPM (the "teacher", trained with label dropout p_uncond = 0.1)
and score the samples under the `fmnist` protocol (fmnist-net features: FID, Inception-style score IS computed
with the same classifier, conditional accuracy of the requested class). Labels are balanced (image i asks for
class i mod 10); every sampler starts from the same per-image noise (seed 0). Results accumulate in
bench/results/diffusion.json (one entry per row; finished rows are kept, so a part can be rerun with more rows)
and the tables are rewritten to bench/results/diffusion.md. Sample grids go to docs/img/diffusion-*.png.

Parts (run each under the CPU lock, `flock /tmp/genlab-cpu.lock env OMP_NUM_THREADS=2 ...`):

  steps     FID vs sampler steps S (Song et al. 2021, Table 1): DDIM eta=0 ("ddim"), eta=1 ("ddpm"), Heun and
            DPM-Solver++(2M) on the Karras grid; S = 1000 only for the samplers in --long-samplers.
  guidance  FID / IS / accuracy vs the classifier-free guidance weight w of Ho & Salimans 2022 (genlab's scale
            s = 1 + w), for the teacher and the extra p_uncond runs in --runs; classifier guidance scales for a
            `classifier` run (--classifier).
  peer      diffusers' UNet2DModel + DDPMScheduler trained for --minutes of CPU time on the same data (class-
            conditional, same batch, learning rate and EMA as genlab's quickstart preset), sampled with
            DDIMScheduler at the same steps as the genlab row, same evaluation. diffusers is a benchmark-only
            dependency: `pip install diffusers`.

Examples:
  python bench/diffusion.py steps --teacher /work/runs/teacher-fmnist --n 2000 --steps 10,20,50,100,1000
  python bench/diffusion.py guidance --teacher /work/runs/teacher-fmnist --classifier /work/runs/clf-fmnist --n 2000
  python bench/diffusion.py peer --teacher /work/runs/teacher-fmnist --minutes 12 --n 2000 --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img"
# name -> (genlab sampler, its options): what each curve's label means
SAMPLERS = {
    "ddim": ("ddim", {"eta": 0.0, "sigmas": "uniform"}),
    "ddpm": ("ddim", {"eta": 1.0, "sigmas": "uniform"}),
    "heun": ("heun", {"sigmas": "karras"}),
    "dpmpp_2m": ("dpmpp_2m", {"sigmas": "karras"}),
}


def cpu_s() -> float:
    """CPU seconds this process has used (user + system), the budget the benchmark reports."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 10


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations per image: Heun's last step (to sigma = 0) is a plain Euler step."""
    return 2 * steps - 1 if sampler == "heun" else steps


def evaluate(images_uint8: torch.Tensor, y: torch.Tensor) -> dict:
    from genlab.metrics.protocols import evaluate as ev

    r = ev(images_uint8, None, protocol="fmnist", metrics=("fid", "is", "acc"), labels=y)
    return {k: r[k] for k in ("fid", "is", "cond_acc") if k in r}


def sample_run(run, n: int, *, chunk: int = 500, **opts) -> torch.Tensor:
    """n uint8 samples of `run` for balanced labels, seeded per image (seed 0) as `genlab eval` does."""
    from genlab.data import to_uint8
    from genlab.training.evaluation import sample_chunked

    x = sample_chunked(run.family, run.model, n, seed=0, cond={"y": labels(n)}, opts=opts, chunk=chunk, key="eval")
    return to_uint8(x)


def save_grid(images: torch.Tensor, name: str) -> str:
    from genlab.data.png import save_grid as sg

    # 10 columns = the 10 classes (image i is class i mod 10)
    path = IMG / f"diffusion-{name}.png"
    sg(images[:80], path, ncol=10)
    return str(path.relative_to(ROOT))


def load_results() -> dict:
    path = RESULTS / "diffusion.json"
    return json.loads(path.read_text()) if path.exists() else {"rows": []}


def store(results: dict, row: dict) -> None:
    key = row["key"]
    results["rows"] = [r for r in results["rows"] if r["key"] != key] + [row]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "diffusion.json").write_text(json.dumps(results, indent=1))
    write_markdown(results)
    print(f"[diffusion] {json.dumps(row)}", flush=True)


def over_budget(args, key: str) -> bool:
    """True (and says so) once this process has used --cpu-budget CPU seconds: the remaining rows are skipped."""
    if args.cpu_budget and cpu_s() > args.cpu_budget:
        print(f"[diffusion] skipped {key}: CPU budget of {args.cpu_budget:.0f} s used", flush=True)
        return True
    if args.deadline and time.time() > args.deadline:
        print(f"[diffusion] skipped {key}: past the --deadline", flush=True)
        return True
    return False


def done(results: dict, key: str) -> bool:
    return any(r["key"] == key for r in results["rows"])


# ------------------------------------------------------------------------------------------------ parts


def part_steps(args, results: dict) -> None:
    from genlab.training.run import load_run

    run = load_run(args.teacher)
    y = labels(args.n)
    for steps in map(int, args.steps.split(",")):  # all samplers at few steps first: the budget cuts long rows
        for name in args.samplers.split(","):
            sampler, opts = SAMPLERS[name]
            if steps >= 1000 and name not in args.long_samplers.split(","):
                continue
            if steps not in args.only.get(name, [steps]):
                continue
            key = f"steps/{name}/{steps}/n{args.n}"
            if done(results, key) or over_budget(args, key):
                continue
            t0, c0 = time.time(), cpu_s()
            images = sample_run(run, args.n, sampler=sampler, steps=steps, **opts)
            row = {"key": key, "part": "steps", "sampler": name, "steps": steps, "nfe": nfe(name, steps), "n": args.n,
                   **evaluate(images, y), "wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu_s() - c0, 1),
                   "teacher": str(args.teacher), "teacher_step": run.step}
            if steps in (10, 50) and name in ("ddim", "dpmpp_2m"):
                row["grid"] = save_grid(images, f"steps-{name}-{steps}")
            store(results, row)


def part_guidance(args, results: dict) -> None:
    from genlab.training.run import load_run

    y = labels(args.n)
    sampler, opts = SAMPLERS[args.sampler]
    runs = {"0.1": args.teacher}
    for item in filter(None, args.runs.split(",")):
        p, path = item.split("=", 1)
        runs[p] = path
    for p_uncond, path in runs.items():
        run = load_run(path)
        for w in map(float, args.w.split(",")):
            key = f"cfg/p{p_uncond}/w{w:g}/{args.sampler}{args.steps}/n{args.n}"
            if done(results, key) or over_budget(args, key):
                continue
            t0, c0 = time.time(), cpu_s()
            images = sample_run(run, args.n, sampler=sampler, steps=args.steps, guidance=1.0 + w, **opts)
            row = {"key": key, "part": "cfg", "p_uncond": float(p_uncond), "w": w, "s": 1.0 + w, "n": args.n,
                   "sampler": args.sampler, "steps": args.steps, **evaluate(images, y),
                   "wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu_s() - c0, 1), "run": str(path),
                   "run_step": run.step}
            if p_uncond == "0.1" and w in (0.0, 1.0, 4.0):
                row["grid"] = save_grid(images, f"cfg-w{w:g}")
            store(results, row)
    if args.classifier:
        run, clf = load_run(args.teacher), load_run(args.classifier)
        for scale in map(float, args.cg_scales.split(",")):
            key = f"cg/s{scale:g}/{args.sampler}{args.steps}/n{args.n}"
            if done(results, key) or over_budget(args, key):
                continue
            t0, c0 = time.time(), cpu_s()
            images = sample_run(run, args.n, sampler=sampler, steps=args.steps, guidance=scale, classifier=clf.model,
                                **opts)
            row = {"key": key, "part": "cg", "scale": scale, "n": args.n, "sampler": args.sampler, "steps": args.steps,
                   **evaluate(images, y), "wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu_s() - c0, 1),
                   "classifier": str(args.classifier), "classifier_step": clf.step}
            if scale in (0.0, max(map(float, args.cg_scales.split(",")))):
                row["grid"] = save_grid(images, f"cg-s{scale:g}")
            store(results, row)


def part_classifier(args, results: dict) -> None:
    """The guidance classifier's test accuracy at several noise levels (how much label survives in x_t)."""
    from genlab.data import load_dataset
    from genlab.models.classifier import accuracy_by_noise
    from genlab.training.run import load_run

    clf = load_run(args.classifier)
    test = load_dataset("fashion-mnist", "test")
    idx = torch.arange(min(args.n, len(test)))
    b = test.batch(idx)
    acc = accuracy_by_noise(clf.model, b["x"], b["y"], timesteps=(0, 100, 250, 500, 750, 999))
    store(results, {"key": f"clf/{args.classifier}/n{len(idx)}", "part": "clf", "n": len(idx), "step": clf.step,
                    "accuracy": {str(k): v for k, v in acc.items()}, "classifier": str(args.classifier)})


def part_peer(args, results: dict) -> None:
    """diffusers' UNet2DModel + DDPMScheduler, trained `args.minutes` CPU-minutes, sampled with DDIMScheduler."""
    try:
        from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
        from diffusers.training_utils import EMAModel
    except ImportError:
        raise SystemExit("the peer needs diffusers: .venv/bin/pip install diffusers (benchmark-only dependency)") from None
    from genlab.data import load_dataset, to_uint8
    from genlab.training.run import load_run

    key = f"peer/diffusers/{args.minutes:g}min/ddim{args.steps}/n{args.n}"
    if done(results, key):
        return
    teacher = load_run(args.teacher)
    tc = teacher.config
    torch.manual_seed(0)
    # the genlab teacher's architecture: 3 levels of 32/64/64 channels, 1 ResNet block each, attention at 7x7
    m = teacher.config.model
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=m.num_res_blocks,
                       block_out_channels=tuple(m.base_channels * k for k in m.channel_mult),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), num_class_embeds=10, norm_num_groups=4)
    sched = DDPMScheduler(num_train_timesteps=m.timesteps, beta_start=m.beta_start, beta_end=m.beta_end,
                          beta_schedule="linear", clip_sample=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=m.lr)
    ema = EMAModel(unet.parameters(), decay=tc.train.ema_decay)
    data = load_dataset("fashion-mnist", "train")
    g = torch.Generator().manual_seed(0)
    c0, t0, step = cpu_s(), time.time(), 0
    n_params = sum(p.numel() for p in unet.parameters())
    while cpu_s() - c0 < args.minutes * 60:
        idx = torch.randint(0, len(data), (tc.train.batch_size,), generator=g)
        b = data.batch(idx)
        x0, y = b["x"], b["y"]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, m.timesteps, (len(x0),), generator=g)
        lr = m.lr * min(1.0, (step + 1) / max(1, tc.train.warmup_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), tc.train.grad_clip)
        opt.step()
        ema.step(unet.parameters())
        step += 1
    train_cpu, train_wall = cpu_s() - c0, time.time() - t0
    ema.copy_to(unet.parameters())
    unet.eval()
    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(args.steps)
    y_all = labels(args.n)
    out = []
    c1 = cpu_s()
    with torch.no_grad():
        for s in range(0, args.n, 500):
            yb = y_all[s : s + 500]
            x = torch.randn((len(yb), 1, 28, 28), generator=torch.Generator().manual_seed(s))
            for t in ddim.timesteps:
                eps = unet(x, t, class_labels=yb).sample
                x = ddim.step(eps, t, x, eta=0.0).prev_sample
            out.append(to_uint8(x.clamp(-1, 1)))
    images = torch.cat(out)
    row = {"key": key, "part": "peer", "model": "diffusers UNet2DModel + DDPMScheduler", "minutes": args.minutes,
           "train_steps": step, "train_cpu_s": round(train_cpu, 1), "train_wall_s": round(train_wall, 1),
           "params": n_params, "sampler": f"DDIMScheduler eta=0, {args.steps} steps", "n": args.n,
           **evaluate(images, y_all), "sample_cpu_s": round(cpu_s() - c1, 1), "grid": save_grid(images, "peer")}
    store(results, row)


# ------------------------------------------------------------------------------------------------ tables


def _fmt(v, nd=4):
    return "" if v is None else f"{v:.{nd}g}" if isinstance(v, float) else str(v)


def write_markdown(results: dict) -> None:
    rows = results["rows"]
    lines = ["# Guided and fast diffusion on Fashion-MNIST (bench/diffusion.py)", "",
             "Machine: 2-core CPU dev machine, no GPU, shared with other jobs (wall times vary; CPU seconds are this "
             "process's). Protocol `fmnist`: FID and IS in fmnist-net feature space (not Inception), conditional "
             "accuracy by the same classifier; balanced labels; FID at small n is biased upward (compare rows at "
             "the same n only).", ""]
    steps = sorted([r for r in rows if r["part"] == "steps"], key=lambda r: (r["sampler"], r["steps"]))
    if steps:
        lines += ["## DDIM steps curve", "", "| sampler | steps S | NFE | n | FID | IS | cond. acc | CPU s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['n']} | {_fmt(r.get('fid'))} | {_fmt(r.get('is'))} "
                  f"| {_fmt(r.get('cond_acc'), 3)} | {r['cpu_s']:.0f} |" for r in steps]
        lines.append("")
    cfg = sorted([r for r in rows if r["part"] == "cfg"], key=lambda r: (r["p_uncond"], r["w"]))
    if cfg:
        lines += ["## Classifier-free guidance (w of Ho & Salimans 2022 = genlab's --guidance s minus 1)", "",
                  "| p_uncond | w | s | sampler | n | FID | IS | cond. acc | CPU s |",
                  "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['p_uncond']:g} | {r['w']:g} | {r['s']:g} | {r['sampler']} {r['steps']} | {r['n']} | "
                  f"{_fmt(r.get('fid'))} | {_fmt(r.get('is'))} | {_fmt(r.get('cond_acc'), 3)} | {r['cpu_s']:.0f} |"
                  for r in cfg]
        lines.append("")
    cg = sorted([r for r in rows if r["part"] == "cg"], key=lambda r: r["scale"])
    if cg:
        lines += ["## Classifier guidance (Dhariwal & Nichol 2021) on the same teacher", "",
                  "| scale | sampler | n | FID | IS | cond. acc | CPU s |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['scale']:g} | {r['sampler']} {r['steps']} | {r['n']} | {_fmt(r.get('fid'))} | {_fmt(r.get('is'))} "
                  f"| {_fmt(r.get('cond_acc'), 3)} | {r['cpu_s']:.0f} |" for r in cg]
        lines.append("")
    clf = [r for r in rows if r["part"] == "clf"]
    if clf:
        ts = list(clf[-1]["accuracy"])
        lines += ["## The guidance classifier: test accuracy on x_t", "",
                  "| classifier | step | n | " + " | ".join(f"t={t}" for t in ts) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in ts) + " |"]
        lines += [f"| {r['classifier']} | {r['step']} | {r['n']} | " + " | ".join(f"{r['accuracy'][t]:.3f}" for t in ts)
                  + " |" for r in clf]
        lines.append("")
    peer = [r for r in rows if r["part"] == "peer"]
    if peer:
        lines += ["## Peer: diffusers", "", "| model | CPU min | steps | sampler | n | FID | IS | cond. acc |",
                  "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['model']} | {r['minutes']:g} | {r['train_steps']} | {r['sampler']} | {r['n']} | "
                  f"{_fmt(r.get('fid'))} | {_fmt(r.get('is'))} | {_fmt(r.get('cond_acc'), 3)} |" for r in peer]
        lines.append("")
    (RESULTS / "diffusion.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["steps", "guidance", "classifier", "peer", "table"])
    ap.add_argument("--teacher", default="/work/runs/teacher-fmnist", help="the class-conditional ddpm run")
    ap.add_argument("--n", type=int, default=2000, help="samples per row (FID is biased at small n)")
    ap.add_argument("--steps", default="10,20,50,100,1000", help="steps: comma list; guidance / peer: one number")
    ap.add_argument("--samplers", default="ddim,ddpm,heun,dpmpp_2m", help=f"of {', '.join(SAMPLERS)}")
    ap.add_argument("--long-samplers", default="ddim", help="samplers also run at S >= 1000 (hours of CPU each)")
    ap.add_argument("--sampler", default="ddim", help="guidance part: the sampler (a name of --samplers)")
    ap.add_argument("--w", default="0,0.1,0.3,0.5,1,2,4", help="guidance weights w of Ho & Salimans (s = 1 + w)")
    ap.add_argument("--runs", default="", help="extra p_uncond runs: 0.2=RUN,0.5=RUN")
    ap.add_argument("--classifier", default="", help="a classifier run for classifier guidance")
    ap.add_argument("--cg-scales", default="0,1,2,4,8", help="classifier-guidance scales")
    ap.add_argument("--minutes", type=float, default=12.0, help="peer: CPU minutes of training")
    ap.add_argument("--only", default="", help="steps part: restrict a sampler's steps, e.g. heun=10;ddpm=10,20")
    ap.add_argument("--cpu-budget", type=float, default=0, help="skip the remaining rows after this many CPU seconds")
    ap.add_argument("--deadline", type=float, default=0, help="skip the remaining rows after this Unix time")
    args = ap.parse_args()
    args.only = {k: [int(v) for v in vs.split(",")] for k, vs in
                 (item.split("=", 1) for item in filter(None, args.only.split(";")))}
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = load_results()
    if args.part == "steps":
        part_steps(args, results)
    elif args.part == "guidance":
        args.steps = int(args.steps) if "," not in args.steps else 20
        part_guidance(args, results)
    elif args.part == "classifier":
        part_classifier(args, results)
    elif args.part == "peer":
        args.steps = int(args.steps) if "," not in args.steps else 50
        part_peer(args, results)
    write_markdown(results)
    print((RESULTS / "diffusion.md").read_text())


if __name__ == "__main__":
    main()
