"""Image-to-image translation, part B: BicycleGAN's realism vs diversity, and StarGAN against CycleGANs.

BicycleGAN (Zhu et al. 2017b) on `edges2fmnist-color` (a grey edge map -> the garment in one of 8 colours;
each edge map has 4 real colourings): rows pix2pix+noise, cvae-gan, clr-gan, bicyclegan, each its preset
(`configs/bicyclegan-edges2fmnist-color.yaml`) with `model.variant=ROW` for the same CPU time. Metrics:
- realism: FID under protocol `fmnist-color` (fmnist-color-net features; one output per test edge map, the
  test split's edge maps in order, n outputs), and the colour head's mean top probability ("colour
  plausibility": how confidently an output shows one of the 8 valid colours; real test images score it too);
  class accuracy of the outputs against the garment class the edges came from (fmnist-color-net class head);
- diversity: mean DomainLPIPS (fmnist-color-net, uncalibrated) between consecutive outputs for one input:
  20 outputs (20 z) per input, 19 consecutive pairs, over `--inputs` distinct test edge maps (the BicycleGAN
  repository's protocol, README "Metrics": 20 outputs, 19 pairs, 100 inputs, LPIPS); and the mean number of
  distinct colours (colour-head argmax) among the 20 outputs. Real row: the 4 real colourings of each edge map
  (3 consecutive pairs) — the spread the data itself has.

StarGAN (Choi et al. 2018) on `fmnist-color` (domains = the 8 colours), preset `stargan-fmnist-color`: each
test image sent to another colour (see stargan.eval_conditions); colour accuracy (fmnist-color-net colour head
vs the requested colour), garment class kept (fmnist-net on the untinted 28x28 garment vs the source class),
FID (fmnist-color). Against CycleGAN (part A's `cyclegan` family, trained here by a plain loop on the two
colours' training images, no EMA): one CycleGAN per colour pair for `--pairs`, both directions, scored on the
same test images as StarGAN's outputs for those directions; parameter counts of the generators (all pairs:
CycleGAN needs K(K-1)/2 models, 2 generators each).

Everything is images quantised to uint8 before scoring. JSON + Markdown: bench/results/translation_multimodal.*
Run (under the CPU lock):
  flock /tmp/genlab-cpu.lock env OMP_NUM_THREADS=2 .venv/bin/python bench/translation_multimodal.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from translation import aggregate, fmt, ms  # bench/translation.py: mean and min-max over seeds

ROOT = Path(__file__).resolve().parents[1]
BICYCLE_ROWS = ("pix2pix+noise", "cvae-gan", "clr-gan", "bicyclegan")
OVERHEAD_MIN = 2.0  # process starts, evaluation and the CycleGAN data loading, in minutes (measured ~1.5)
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")


def sh(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def train(family: str, preset: str, out: Path, minutes: float, seed: int, threads: int, *overrides: str) -> dict:
    """Train a preset for `minutes` of training time (any number of steps); returns run.json."""
    if not (out / "run.json").exists() or json.loads((out / "run.json").read_text()).get("status") != "done":
        shutil.rmtree(out, ignore_errors=True)
        sh([sys.executable, "-m", "genlab", "train", family, "--config", preset, "--out", str(out), "--threads",
            str(threads), "train.steps=1000000", f"train.max_minutes={minutes}", "train.sample_every=0",
            "train.ckpt_every=1000000", "train.trackers=none", f"train.seed={seed}", *overrides], threads)
    return json.loads((out / "run.json").read_text())


def evaluator_outputs(images: torch.Tensor, name: str = "fmnist-color-net") -> dict:
    from genlab.metrics.protocols import extract_features

    return extract_features(images, name)


def color_plausibility(feats: dict) -> float:
    p = torch.softmax(torch.as_tensor(feats["color_logits"]), dim=1)
    return float(p.max(1).values.mean())


@torch.no_grad()
def lpips_consecutive(lpips, outs: torch.Tensor) -> float:
    """Mean distance between consecutive outputs: outs uint8 (N, K, C, H, W) -> mean over N x (K-1) pairs."""
    n, k = outs.shape[:2]
    x0 = outs[:, :-1].reshape(-1, *outs.shape[2:])
    x1 = outs[:, 1:].reshape(-1, *outs.shape[2:])
    d = torch.cat([lpips(x0[i : i + 500], x1[i : i + 500]) for i in range(0, len(x0), 500)])
    return float(d.mean())


def distinct_colors(outs: torch.Tensor) -> float:
    """Mean number of distinct colour-head predictions among each input's K outputs (uint8 (N, K, C, H, W))."""
    n, k = outs.shape[:2]
    pred = torch.as_tensor(evaluator_outputs(outs.reshape(-1, *outs.shape[2:]))["color_logits"]).argmax(1)
    return float(np.mean([len(set(row.tolist())) for row in pred.reshape(n, k)]))


@torch.no_grad()
def eval_bicycle(run_dir: Path, n: int, inputs: int, seed: int, lpips, picture: Path | None) -> dict:
    import genlab
    from genlab.data import load_dataset, to_uint8
    from genlab.data.png import save_grid
    from genlab.metrics.protocols import evaluate

    run = genlab.load(run_dir)
    fam = run.family
    test = load_dataset("edges2fmnist-color", "test")
    cond = fam.eval_conditions(test, n)
    images = to_uint8(run.sample(n, seed=seed, cond=cond))
    feats = evaluator_outputs(images)
    res = evaluate(feats, protocol="fmnist-color", metrics=("fid", "acc"), labels=cond["y"])
    idx = torch.arange(inputs) * 4  # rows 4i..4i+3 share one edge map: one row per distinct edge map
    a = test.batch(idx)["x_src"]
    outs = to_uint8(fam.translate(run.model, a, n_outputs=20, generator=torch.Generator().manual_seed(seed)))
    if picture is not None:
        shown = torch.cat([to_uint8(a[:8]).expand(-1, 3, -1, -1)[:, None], outs[:8, :6],
                           to_uint8(test.batch(idx[:8])["x"])[:, None]], dim=1)  # input | 6 outputs | a target
        save_grid(shown, picture)
    return {"fid": res["fid"], "class_acc": res["cond_acc"], "color_plausibility": color_plausibility(feats),
            "lpips_diversity": lpips_consecutive(lpips, outs), "colors_per_input": distinct_colors(outs),
            "n": n, "inputs": inputs}


@torch.no_grad()
def eval_real(n: int, inputs: int, seed: int, lpips) -> dict:
    """The data row: FID of real train garments (fmnist-color) vs the test reference, and the spread of the
    4 real colourings of each test edge map."""
    from genlab.data import load_dataset, to_uint8
    from genlab.metrics.protocols import floor

    test = load_dataset("edges2fmnist-color", "test")
    fl = floor("fmnist-color", metrics=("fid",), seed=seed, n=n)
    idx = (torch.arange(inputs) * 4)[:, None] + torch.arange(4)  # (inputs, 4): each edge map's 4 colourings
    real = to_uint8(test.batch(idx.reshape(-1))["x"]).reshape(inputs, 4, 3, 32, 32)
    feats = evaluator_outputs(to_uint8(test.batch(torch.arange(n) % len(test))["x"]))
    return {"fid": fl["fid"], "color_plausibility": color_plausibility(feats),
            "lpips_diversity": lpips_consecutive(lpips, real), "colors_per_input": distinct_colors(real),
            "n": n, "inputs": inputs}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def class_kept(images: torch.Tensor, y: torch.Tensor) -> float:
    """fmnist-net on the untinted garment (max over channels, 28x28 crop) against the source class."""
    grey = images.max(dim=1, keepdim=True).values[:, :, 2:30, 2:30]
    pred = torch.as_tensor(evaluator_outputs(grey.contiguous(), "fmnist-net")["logits"]).argmax(1)
    return float((pred == y).float().mean())


@torch.no_grad()
def color_acc(images: torch.Tensor, target: torch.Tensor) -> float:
    pred = torch.as_tensor(evaluator_outputs(images)["color_logits"]).argmax(1)
    return float((pred == target).float().mean())


def pair_inputs(test, a: int, b: int, per_direction: int):
    """Test images of colour a (to b) then of colour b (to a): (x, source colour, target colour, class)."""
    xs, src, trg, ys = [], [], [], []
    for s, t in ((a, b), (b, a)):
        idx = (test.extra["color"] == s).nonzero().squeeze(1)[:per_direction]
        batch = test.batch(idx)
        xs.append(batch["x"])
        src.append(torch.full((len(idx),), s))
        trg.append(torch.full((len(idx),), t))
        ys.append(batch["y"])
    return torch.cat(xs), torch.cat(src), torch.cat(trg), torch.cat(ys)


def train_cyclegan_pair(a: int, b: int, minutes: float, seed: int, star_cfg) -> tuple[torch.nn.Module, int]:
    """Part A's cyclegan family on fmnist-color images of colours a (domain A) and b (domain B), trained by a
    plain loop of its train_step for `minutes` (batch 32, its default losses), generators sized like StarGAN's."""
    from genlab.data import DataSpec, load_dataset
    from genlab.models import cyclegan
    from genlab.rng import SampleRNG, derive_seed
    from genlab.training.context import StepContext

    data = load_dataset("fmnist-color", "train")
    keep = ((data.extra["color"] == a) | (data.extra["color"] == b)).nonzero().squeeze(1)
    spec = DataSpec(f"colors:{COLORS[a]},{COLORS[b]}", (3, 32, 32), tuple(data.classes), ("y", "domain"))
    cfg = cyclegan.Config(base=star_cfg.g_channels, n_blocks=star_cfg.g_blocks)
    torch.manual_seed(derive_seed(seed, "cyclegan", a, b))
    model = cyclegan.build(cfg, spec, {})
    opts = cyclegan.make_optimizers(model, cfg)
    perm = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))]
    bs, step, t0 = 32, 0, time.perf_counter()
    while time.perf_counter() - t0 < minutes * 60:
        pos = step * bs + torch.arange(bs)
        batch = data.batch(perm[pos % len(perm)])
        batch = {"x": batch["x"], "y": batch["y"], "domain": (batch["color"] == b).long()}
        rng = SampleRNG.for_indices((seed, "train", step), pos.tolist())
        cyclegan.train_step(model, batch, opts, StepContext(model, opts, batch, rng, step=step))
        step += 1
    return model.eval(), step


def run_stargan(work: Path, minutes: float, pair_minutes: float, pairs: list[tuple[int, int]], n: int, seed: int,
                threads: int, picture: Path | None) -> dict:
    import genlab
    from genlab.data import load_dataset, to_uint8
    from genlab.data.png import save_grid
    from genlab.metrics.protocols import evaluate
    from genlab.models import cyclegan

    info = train("stargan", "stargan-fmnist-color", work / "stargan", minutes, seed, threads)
    run = genlab.load(work / "stargan")
    fam, cfg = run.family, run.config.model
    test = load_dataset("fmnist-color", "test")
    cond = fam.eval_conditions(test, n)
    images = to_uint8(run.sample(n, seed=seed, cond=cond))
    feats = evaluator_outputs(images)
    res = evaluate(feats, protocol="fmnist-color", metrics=("fid", "acc", "color_acc"), labels=cond["y"],
                   conditions={"color": cond["color"]})
    star = {"steps": info["step"], "train_s": info.get("train_s"), "fid": res["fid"], "color_acc": res["color_acc"],
            "class_kept": class_kept(images, cond["y"]), "class_acc_color_net": res["cond_acc"],
            "g_params": n_params(run.model["G"]), "n": n}
    if picture is not None:
        outs = fam.translate(run.model, test.batch(torch.arange(8))["x"])
        save_grid(to_uint8(torch.cat([test.batch(torch.arange(8))["x"][:, None], outs], dim=1)), picture)
    torch.set_num_threads(threads)
    rows = []
    k = cfg.num_domains
    for a, b in pairs:
        x, _, trg, y = pair_inputs(test, a, b, n // (2 * len(pairs)))
        star_out = to_uint8(fam.sample(run.model, len(x), cond={"x_src": x, "color": trg}))
        model, steps = train_cyclegan_pair(a, b, pair_minutes, seed, cfg)
        cyc_out = to_uint8(cyclegan.sample(model, len(x), cond={"x_src": x, "domain": (trg == b).long()}))
        rows.append({"pair": f"{COLORS[a]}<->{COLORS[b]}", "n": len(x), "cyclegan_steps": steps,
                     "cyclegan_color_acc": color_acc(cyc_out, trg), "cyclegan_class_kept": class_kept(cyc_out, y),
                     "stargan_color_acc": color_acc(star_out, trg), "stargan_class_kept": class_kept(star_out, y),
                     "cyclegan_g_params": n_params(model["G"]) + n_params(model["F"])})
    per_pair = rows[0]["cyclegan_g_params"] if rows else 0
    return {"stargan": star, "pairs": rows, "domains": k, "cyclegan_models_for_all_pairs": k * (k - 1) // 2,
            "cyclegan_g_params_all_pairs": per_pair * k * (k - 1) // 2}


def markdown(result: dict, args) -> str:
    b, s = result.get("bicycle"), result.get("stargan")
    lines = ["# Image-to-image translation, part B: BicycleGAN and StarGAN", "",
             f"Command: `env OMP_NUM_THREADS={args.threads} .venv/bin/python "
             f"bench/translation_multimodal.py --minutes {args.minutes:g} --star-minutes {args.star_minutes:g} "
             f"--pair-minutes {args.pair_minutes:g} --n {args.n} --inputs {args.inputs} --seeds {args.seeds}` on the "
             f"2-core CPU dev machine (no GPU), {args.threads} threads; every number is the mean over the seeds "
             f"{args.seeds} with the min-max in brackets. Wall time {result['wall_s'] / 60:.1f} min in all.", ""]
    if b:
        lines += ["## BicycleGAN on edges2fmnist-color: realism vs diversity", "",
                  f"Each row {args.minutes:g} CPU-minutes of training. FID: protocol fmnist-color (fmnist-color-net "
                  f"features, uncalibrated; n = {args.n} outputs, one per test edge map; biased upward at this n, so "
                  "compare rows with each other and with the data row). Diversity: DomainLPIPS between consecutive "
                  f"outputs, 20 per input, 19 pairs, {args.inputs} inputs; colours: distinct predicted colours among "
                  "the 20.", "",
                  "| row | steps | FID | class acc | colour plausibility | LPIPS diversity | colours / 20 outputs |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in b:
            acc = ms(r, "class_acc") if "class_acc" in r else ""
            lines.append(f"| {r['row']} | {fmt(r.get('steps'), 0)} | {ms(r, 'fid', 2)} | {acc} | "
                         f"{ms(r, 'color_plausibility')} | {ms(r, 'lpips_diversity', 4)} | {ms(r, 'colors_per_input', 2)} |")
        lines.append("")
    if s:
        st = s["stargan"]
        lines += ["## StarGAN on fmnist-color (domains = 8 colours)", "",
                  f"StarGAN: {args.star_minutes:g} CPU-minutes, {fmt(st['steps'], 0)} steps; n = {fmt(st['n'], 0)} test "
                  f"images, each to another colour: FID {ms(st, 'fid', 2)}, colour accuracy {ms(st, 'color_acc')}, "
                  f"class kept (fmnist-net) {ms(st, 'class_kept')}, generator parameters {int(st['g_params']):,}.", "",
                  f"Against one CycleGAN per colour pair ({args.pair_minutes:g} CPU-minutes each, same generator "
                  "width), both directions, on the same test images:", "",
                  "| pair | n | CycleGAN colour acc | StarGAN colour acc | CycleGAN class kept | StarGAN class kept |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in s["pairs"]:
            lines.append(f"| {r['pair']} | {fmt(r['n'], 0)} | {ms(r, 'cyclegan_color_acc')} | {ms(r, 'stargan_color_acc')} | "
                         f"{ms(r, 'cyclegan_class_kept')} | {ms(r, 'stargan_class_kept')} |")
        k = s["domains"]
        lines += ["", f"Parameters for all {k * (k - 1)} directions among {k} colours: StarGAN one G of "
                  f"{int(st['g_params']):,}; CycleGAN {s['cyclegan_models_for_all_pairs']} models x "
                  f"{int(s['pairs'][0]['cyclegan_g_params']) if s['pairs'] else 0:,} (G + F) = "
                  f"{s['cyclegan_g_params_all_pairs']:,}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["bicyclegan", "stargan", "all"], default="all")
    ap.add_argument("--rows", default=",".join(BICYCLE_ROWS))
    ap.add_argument("--minutes", type=float, default=1.0, help="training time per BicycleGAN row")
    ap.add_argument("--star-minutes", type=float, default=1.5, help="StarGAN training time")
    ap.add_argument("--pair-minutes", type=float, default=0.5, help="training time per CycleGAN colour pair")
    ap.add_argument("--pairs", default="red:blue,green:purple", help="colour pairs for the CycleGAN comparison")
    ap.add_argument("--n", type=int, default=2000, help="outputs scored for FID and accuracies")
    ap.add_argument("--inputs", type=int, default=100, help="inputs for the diversity measure (20 outputs each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default="0", help="comma list of training seeds; tables give the mean and min-max")
    ap.add_argument("--deadline", default="", help="HH:MM (UTC): scale every training time down (same proportions) "
                    "so the whole run ends by then; the factor is recorded")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-translation-multimodal"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.deadline:  # a shared CPU: the lock may come late; keep the proportions, shrink the times
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc)
        hh, mm = map(int, args.deadline.split(":"))
        end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        planned = 4 * args.minutes + args.star_minutes + len(args.pairs.split(",")) * args.pair_minutes
        left = (end - now).total_seconds() / 60 - OVERHEAD_MIN
        factor = min(1.0, max(0.2, left / planned))
        args.minutes, args.star_minutes, args.pair_minutes = (round(m * factor, 3) for m in
                                                               (args.minutes, args.star_minutes, args.pair_minutes))
        print(f"[translation_multimodal] {left:.1f} min left for training: times x {factor:.2f}", flush=True)
    out, work = Path(args.out_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seeds = [int(v) for v in args.seeds.split(",")]
    result: dict = {"args": vars(args)}
    if args.part in ("bicyclegan", "all"):
        from genlab.metrics.evaluators import load_evaluator
        from genlab.metrics.lpips import DomainLPIPS

        lpips = DomainLPIPS(load_evaluator("fmnist-color-net"))
        runs: dict[str, dict] = {row: {} for row in args.rows.split(",")}
        for seed in seeds:
            for row in runs:
                run_dir = work / f"{row.replace('+', '-')}-s{seed}"
                info = train("bicyclegan", "bicyclegan-edges2fmnist-color", run_dir, args.minutes, seed,
                             args.threads, f"model.variant={row}")
                pic = ROOT / "docs" / "img" / f"bicyclegan-{row.replace('+', '-')}.png" if seed == seeds[0] else None
                runs[row][str(seed)] = {"steps": info["step"], "train_s": info.get("train_s"),
                                        **eval_bicycle(run_dir, args.n, args.inputs, seed, lpips, pic)}
                print(f"[bicycle] {row} seed {seed} {runs[row][str(seed)]}", flush=True)
        real = {"row": "real colourings (data)", **eval_real(args.n, args.inputs, seeds[0], lpips)}
        print(f"[bicycle] {real}", flush=True)
        result["bicycle"] = [{"row": row, **aggregate(per_seed)} for row, per_seed in runs.items()] + [real]
        result["bicycle_runs"] = runs
    if args.part in ("stargan", "all"):
        names = {c: i for i, c in enumerate(COLORS)}
        pairs = [tuple(names[c] for c in p.split(":")) for p in args.pairs.split(",") if p]
        star_runs = {}
        for seed in seeds:
            pic = ROOT / "docs" / "img" / "stargan-fmnist-color.png" if seed == seeds[0] else None
            star_runs[str(seed)] = run_stargan(work / f"s{seed}", args.star_minutes, args.pair_minutes, pairs, args.n,
                                               seed, args.threads, pic)
            print(f"[stargan] seed {seed} {star_runs[str(seed)]}", flush=True)
        first = star_runs[str(seeds[0])]
        result["stargan"] = {**first, "stargan": aggregate({k: v["stargan"] for k, v in star_runs.items()}),
                             "pairs": [{"pair": r["pair"], **aggregate({k: v["pairs"][i] for k, v in star_runs.items()})}
                                       for i, r in enumerate(first["pairs"])]}
        result["stargan_runs"] = star_runs
    result["wall_s"] = time.perf_counter() - t0
    name = "translation_multimodal" if args.part == "all" else f"translation_multimodal_{args.part}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    md = markdown(result, args)
    (out / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
