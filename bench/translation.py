"""Image-to-image translation benchmarks: the pix2pix loss ablation and PatchGAN size study (Isola et al. 2017,
Tables 1 and 2-3), and the CycleGAN loss ablation (Zhu et al. 2017, Table 4), at CPU-minutes scale.

Each row trains one run for `--minutes` of wall-clock time (`train.max_minutes`, one thread; run the whole
script under the machine's CPU lock), then translates test images and scores them with fmnist-net (the
bundled Fashion-MNIST classifier; images cropped from 32x32 back to the 28x28 garment):
- pix2pix (edges2fmnist, edge map -> garment), n test pairs: accuracy of fmnist-net on the outputs against the
  input's class (the analogue of the paper's FCN score: does a classifier trained on real data recognise the
  output as what the input is?), FID to the real targets of the same inputs, L1 and PSNR to the targets on
  [0, 1] pixels after 8-bit quantisation. "ground truth" row: the real targets themselves (FID: the targets
  against as many training-split targets).
- CycleGAN (unpaired:sneaker,ankle-boot), every test image of each domain: accuracy of fmnist-net for the
  target class (sneaker -> ankle boot, ankle boot -> sneaker), FID to the target domain's test images, and
  the cycle reconstruction L1 (|F(G(a)) - a|, |G(F(b)) - b| on [0, 1] pixels).
- CycleGAN on a pair whose pairing is hidden in training but known in the test split
  (unpaired:edges,garments: edge maps <-> garments, Zhu et al. Sec. 5.1.1's labels <-> photos setting): the same
  four loss rows, and pix2pix trained on the paired edges2fmnist for the same minutes as the upper bound; edges
  -> garment outputs scored like the pix2pix part (accuracy for the garment's class, FID, L1, PSNR to the
  true garment), plus both cycle L1s.
Every row is trained once per seed (`--seeds`); tables give the mean and the spread (min-max) over seeds.
JSON + Markdown into bench/results/translation.*; picture grids (seed 0) into docs/img/.

Run:  env OMP_NUM_THREADS=1 .venv/bin/python bench/translation.py --part all --seeds 0,1,2 --minutes 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PIX2PIX_ROWS = {  # row -> overrides of configs/pix2pix-edges2fmnist.yaml
    "L1": ["model.loss=l1"],
    "GAN": ["model.loss=gan"],
    "cGAN": ["model.loss=cgan"],
    "L1+GAN": ["model.loss=l1+gan"],
    "L1+cGAN": ["model.loss=l1+cgan"],
    "PixelGAN 1x1": ["model.loss=l1+cgan", "model.d_layers=0"],
    "ImageGAN 34x34": ["model.loss=l1+cgan", "model.d_layers=2"],
}
PIX2PIX_SMALL = ["model.base=16", "model.depth=3", "train.batch_size=16"]
CYCLEGAN_ROWS = {  # row -> overrides of configs/cyclegan-sneaker-boot.yaml
    "GAN alone": ["model.losses=gan"],
    "GAN + forward cycle": ["model.losses=gan+forward"],
    "CycleGAN": ["model.losses=full"],
    "CycleGAN + identity": ["model.losses=full+identity"],
}
CYCLEGAN_SMALL = ["model.base=8", "model.n_blocks=2", "train.batch_size=8"]
# Published numbers, read in the paper's text (Isola et al. 2017, arXiv:1611.07004v3; see docs/translation.md).
PUBLISHED_PIX2PIX = {  # Table 1: FCN scores (per-pixel acc., per-class acc., class IOU), Cityscapes labels -> photo
    "L1": (0.42, 0.15, 0.11), "GAN": (0.22, 0.05, 0.01), "cGAN": (0.57, 0.22, 0.16),
    "L1+GAN": (0.64, 0.20, 0.15), "L1+cGAN": (0.66, 0.23, 0.17), "ground truth": (0.80, 0.26, 0.21),
}
PUBLISHED_PATCH = {  # Table 2: discriminator receptive field (L1+cGAN), same task, 256x256 inputs
    "PixelGAN 1x1": ("1x1", 0.39, 0.15, 0.10), "L1+cGAN": ("16x16", 0.65, 0.21, 0.17),
    "ImageGAN 34x34": ("286x286", 0.42, 0.16, 0.11),
}
PATCH_ROWS = ("PixelGAN 1x1", "L1+cGAN", "ImageGAN 34x34")  # ours: receptive fields 1, 16, 34 on 32x32 images
# Zhu et al. 2017 (CycleGAN) Tables 2 and 4: not verified (only secondary sources, which disagree, were found).


EDGES_ROWS = {**CYCLEGAN_ROWS, "pix2pix (paired: upper bound)": ["model.loss=l1+cgan"]}
PAIRS = {"cyclegan": "unpaired:sneaker,ankle-boot", "cyclegan-edges": "unpaired:edges,garments"}
PARTS = {"pix2pix": PIX2PIX_ROWS, "cyclegan": CYCLEGAN_ROWS, "cyclegan-edges": EDGES_ROWS}


def train_row(part: str, row: str, overrides: list[str], work: Path, minutes: float, seed: int) -> dict:
    """Train one row for one seed (skipped when its run is already done); returns run.json."""
    out = work / f"{part}-{row.replace(' ', '_').replace('+', 'p').replace('/', '_').replace(':', '')}-s{seed}"
    info = out / "run.json"
    if not (info.exists() and json.loads(info.read_text()).get("status") == "done"):
        family = "pix2pix" if part == "pix2pix" or row.startswith("pix2pix") else "cyclegan"
        preset = "pix2pix-edges2fmnist" if family == "pix2pix" else "cyclegan-sneaker-boot"
        small = PIX2PIX_SMALL if family == "pix2pix" else CYCLEGAN_SMALL
        data = ["--data", PAIRS[part]] if family == "cyclegan" else []
        cmd = [sys.executable, "-m", "genlab", "train", family, *data,
               "--config", preset, *small, *overrides, "train.steps=1000000", f"train.max_minutes={minutes}",
               "train.sample_every=0", "train.ckpt_every=1000000", "train.trackers=none", f"train.seed={seed}",
               "--threads", "1", "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return {"dir": out, **json.loads(info.read_text())}


def crop28(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 32, 32) garments padded by 2 (genlab.data.derived.PAD) -> the 28x28 image fmnist-net reads."""
    return x[:, :, 2:30, 2:30]


def scores(net, fake8: torch.Tensor, real8: torch.Tensor, labels: torch.Tensor) -> dict:
    """fmnist-net accuracy of `fake8` for `labels`, and FID between fake8 and real8 (fmnist-net features)."""
    from genlab.metrics import frechet_distance, gaussian_stats
    from genlab.metrics.evaluators import extract

    f, r = extract(net, crop28(fake8)), extract(net, crop28(real8))
    return {"acc": (f["logits"].argmax(1) == labels).float().mean().item(),
            "fid": frechet_distance(gaussian_stats(f["features"]), gaussian_stats(r["features"]))}


def l1_psnr(a8: torch.Tensor, b8: torch.Tensor) -> dict:
    """Mean absolute error and mean per-image PSNR (dB) on [0, 1] pixels."""
    a, b = a8.double() / 255, b8.double() / 255
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return {"l1": (a - b).abs().mean().item(), "psnr": (10 * torch.log10(1 / mse)).mean().item()}


@torch.no_grad()
def eval_pix2pix(run_dir: Path, net, n: int) -> tuple[dict, torch.Tensor]:
    import genlab
    from genlab.data import load_dataset, to_uint8

    run = genlab.load(run_dir)
    test = load_dataset("edges2fmnist", "test")
    batch = test.batch(torch.arange(n))
    out8 = to_uint8(run.family.translate(run.model, batch["x_src"])[:, 0])
    real8 = to_uint8(batch["x"])
    return {**scores(net, out8, real8, batch["y"]), **l1_psnr(out8, real8)}, out8


@torch.no_grad()
def eval_cyclegan(run_dir: Path, net) -> tuple[dict, torch.Tensor]:
    import genlab
    from genlab.data import load_dataset, to_uint8

    run = genlab.load(run_dir)
    test = load_dataset("unpaired:sneaker,ankle-boot", "test")
    x, d, y = test.batch(torch.arange(len(test)))["x"], test.extra["domain"], test.y
    res, shown = {}, []
    for src, name in ((0, "a2b"), (1, "b2a")):
        xs, real = x[d == src], x[d == 1 - src]
        out = run.family.translate(run.model, xs, to=str(1 - src))[:, 0]
        rec = run.family.translate(run.model, out, to=str(src))[:, 0]
        target_class = int(y[d == 1 - src][0])
        s = scores(net, to_uint8(out), to_uint8(real), torch.full((len(xs),), target_class))
        res[f"acc_{name}"], res[f"fid_{name}"] = s["acc"], s["fid"]
        res[f"cycle_l1_{name}"] = l1_psnr(to_uint8(rec), to_uint8(xs))["l1"]
        shown.append(to_uint8(out[:4]))
    return res, torch.cat(shown)


@torch.no_grad()
def eval_edges(run_dir: Path, net, n: int) -> tuple[dict, torch.Tensor]:
    """edges -> garments on the first n test pairs of unpaired:edges,garments (a CycleGAN or the pix2pix bound):
    accuracy for the garment's class, FID, L1 and PSNR to the true garment; CycleGAN rows also both cycle L1s."""
    import genlab
    from genlab.data import load_dataset, to_uint8

    run = genlab.load(run_dir)
    test = load_dataset("unpaired:edges,garments", "test")
    N = len(test) // 2
    edges, garments, y = test.x[:n], test.x[N : N + n], test.y[:n]  # row i pairs with row N + i
    as_float = lambda x8: x8.float() / 127.5 - 1  # noqa: E731
    if run.family_name == "pix2pix":
        out = run.family.translate(run.model, as_float(edges))[:, 0]
        res = {}
    else:
        out = run.family.translate(run.model, as_float(edges), to="garments")[:, 0]
        rec_a = run.family.translate(run.model, out, to="edges")[:, 0]
        back = run.family.translate(run.model, as_float(garments), to="edges")[:, 0]
        rec_b = run.family.translate(run.model, back, to="garments")[:, 0]
        res = {"cycle_l1_a2b": l1_psnr(to_uint8(rec_a), edges)["l1"], "cycle_l1_b2a": l1_psnr(to_uint8(rec_b), garments)["l1"]}
    out8 = to_uint8(out)
    return {**scores(net, out8, garments, y), **l1_psnr(out8, garments), **res}, out8[:8]


def real_rows(part: str, net, n: int) -> dict:
    """The data's own row: real targets scored like outputs (FID against as many training-split targets)."""
    from genlab.data import load_dataset, to_uint8

    if part in ("pix2pix", "cyclegan-edges"):  # the same garments: test targets against training ones
        test, train = load_dataset("edges2fmnist", "test"), load_dataset("edges2fmnist", "train")
        real8, other8 = to_uint8(test.batch(torch.arange(n))["x"]), to_uint8(train.batch(torch.arange(n))["x"])
        return {**scores(net, real8, other8, test.y[:n]), "l1": 0.0, "psnr": float("inf")}
    test, train = load_dataset("unpaired:sneaker,ankle-boot", "test"), load_dataset("unpaired:sneaker,ankle-boot", "train")
    res = {}
    for dom, name in ((1, "a2b"), (0, "b2a")):  # the target domain's real images
        real = test.x[test.extra["domain"] == dom]  # Dataset.x is uint8 already
        other = train.x[train.extra["domain"] == dom][: len(real)]
        s = scores(net, real, other, torch.full((len(real),), int(test.y[test.extra["domain"] == dom][0])))
        res[f"acc_{name}"], res[f"fid_{name}"], res[f"cycle_l1_{name}"] = s["acc"], s["fid"], 0.0
    return res


def picture(columns: list[torch.Tensor], path: Path) -> None:
    """Rows are inputs, columns the given uint8 image sets (N, 1, H, W) each."""
    from genlab.data.png import make_grid, save_png

    rows = torch.stack(columns, dim=1).flatten(0, 1)
    save_png(make_grid(rows, len(columns)), path, scale=2)


def fmt(v, digits=3):
    if v is None:
        return "—"
    if isinstance(v, float) and v != float("inf"):
        return f"{v:.{digits}f}"
    return str(v)


def aggregate(per_seed: dict[str, dict]) -> dict:
    """{seed: metrics} -> metrics averaged over seeds, with each number's min and max under 'spread'."""
    seeds = list(per_seed.values())
    out = {k: v for k, v in seeds[0].items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    out["spread"] = {}
    for k, v in seeds[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [float(s[k]) for s in seeds]
            out[k] = sum(vals) / len(vals)
            out["spread"][k] = (min(vals), max(vals))
    out["n_seeds"] = len(seeds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="all", choices=[*PARTS, "all"])
    ap.add_argument("--minutes", type=float, default=0.5, help="training wall-clock minutes per row")
    ap.add_argument("--cyclegan-minutes", type=float, default=None, help="per CycleGAN row (default --minutes)")
    ap.add_argument("--n", type=int, default=1000, help="test pairs to score (pix2pix, edges <-> garments)")
    ap.add_argument("--rows", default="", help="comma list of rows to run (default all of the part)")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds; every row runs once per seed")
    ap.add_argument("--work", default=str(ROOT / "bench" / "work" / "translation"))
    ap.add_argument("--markdown-only", action="store_true", help="rewrite translation.md from translation.json")
    args = ap.parse_args()
    if args.markdown_only:
        results = json.loads((ROOT / "bench" / "results" / "translation.json").read_text())
        (ROOT / "bench" / "results" / "translation.md").write_text(markdown(results))
        print(markdown(results))
        return
    from genlab.metrics.evaluators import load_evaluator

    torch.set_num_threads(1)
    net = load_evaluator("fmnist-net")
    work, res_dir = Path(args.work), ROOT / "bench" / "results"
    work.mkdir(parents=True, exist_ok=True)
    results_path = res_dir / "translation.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
    seeds = [int(v) for v in args.seeds.split(",")]
    t_all = time.time()
    for part in (list(PARTS) if args.part == "all" else [args.part]):
        rows = PARTS[part]
        minutes = args.minutes if part == "pix2pix" else (args.cyclegan_minutes or args.minutes)
        runs = {row: {} for row in rows if not wanted or row in wanted}
        pics = {}
        for seed in seeds:
            for row in runs:
                t0 = time.time()
                info = train_row(part, row, rows[row], work, minutes, seed)
                if part == "pix2pix":
                    metrics, shown = eval_pix2pix(info["dir"], net, args.n)
                    shown = shown[:8]
                elif part == "cyclegan-edges":
                    metrics, shown = eval_edges(info["dir"], net, args.n)
                else:
                    metrics, shown = eval_cyclegan(info["dir"], net)
                if seed == seeds[0]:
                    pics[row] = shown
                runs[row][str(seed)] = {**metrics, "steps": info["step"], "train_s": round(info.get("train_s", 0.0), 1),
                                        "wall_s": round(time.time() - t0, 1)}
                print(part, row, seed, {k: round(v, 4) if isinstance(v, float) else v
                                        for k, v in runs[row][str(seed)].items()}, flush=True)
        out_rows = {row: {**aggregate(per_seed), "overrides": rows[row]} for row, per_seed in runs.items()}
        out_rows["ground truth" if part != "cyclegan" else "real target images"] = real_rows(part, net, args.n)
        results[part] = {"minutes_per_row": minutes, "n": 2000 if part == "cyclegan" else args.n, "seeds": seeds,
                         "small": PIX2PIX_SMALL if part == "pix2pix" else CYCLEGAN_SMALL, "rows": out_rows,
                         "runs": runs}
        if pics:  # a comparison picture: inputs | each row's outputs (| targets), first seed
            from genlab.data import load_dataset, to_uint8

            if part == "pix2pix":
                b = load_dataset("edges2fmnist", "test").batch(torch.arange(8))
                cols = [to_uint8(b["x_src"])] + [pics[r] for r in rows if r in pics] + [to_uint8(b["x"])]
            elif part == "cyclegan-edges":
                t = load_dataset("unpaired:edges,garments", "test")
                cols = [t.x[:8]] + [pics[r] for r in rows if r in pics] + [t.x[len(t) // 2 : len(t) // 2 + 8]]
            else:
                t = load_dataset("unpaired:sneaker,ankle-boot", "test")
                dom = t.extra["domain"]
                idx = torch.cat([(dom == 0).nonzero().squeeze(1)[:4], (dom == 1).nonzero().squeeze(1)[:4]])
                src = to_uint8(t.batch(idx)["x"])  # the stored x is uint8 already: read it as [-1, 1] floats
                cols = [src] + [pics[r] for r in rows if r in pics]
            picture(cols, ROOT / "docs" / "img" / f"translation-{part}.png")
    results["total_wall_s"] = round(time.time() - t_all, 1)
    results["machine"] = "2-core CPU dev machine, no GPU; one thread per run"
    results["command"] = "env OMP_NUM_THREADS=1 .venv/bin/python bench/translation.py " + " ".join(sys.argv[1:])
    res_dir.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1, default=str))
    (res_dir / "translation.md").write_text(markdown(results))
    print(markdown(results))


def ms(v: dict, key: str, digits: int = 3) -> str:
    """A row's mean, with the min-max over seeds when there were several."""
    spread = v.get("spread", {}).get(key)
    text = fmt(v.get(key), digits)
    if spread and v.get("n_seeds", 1) > 1:
        text += f" ({spread[0]:.{digits}f}-{spread[1]:.{digits}f})"
    return text


def markdown(results: dict) -> str:
    lines = []
    if "pix2pix" in results:
        r = results["pix2pix"]
        rows = r["rows"]
        seeds = r.get("seeds", [r.get("seed", 0)])
        head = (f"{r['minutes_per_row']} CPU-min of training per row, seeds {', '.join(map(str, seeds))} (mean, min-max), "
                f"n = {r['n']} test pairs; fmnist-net accuracy of the outputs for the input's class")
        lines += [f"### pix2pix loss ablation on edges2fmnist ({head})", "",
                  "| row | steps | fmnist-net acc | FID to targets | L1 | PSNR dB | Isola et al. Table 1 (per-pixel / per-class / IoU) |",
                  "|---|---|---|---|---|---|---|"]
        for row in [*PUBLISHED_PIX2PIX, *(k for k in rows if k not in PUBLISHED_PIX2PIX and k not in PATCH_ROWS)]:
            if row not in rows:
                continue
            v, pub = rows[row], PUBLISHED_PIX2PIX.get(row)
            lines.append(f"| {row} | {fmt(v.get('steps'), 0)} | {ms(v, 'acc')} | {ms(v, 'fid', 2)} | {ms(v, 'l1')} | "
                         f"{ms(v, 'psnr', 2)} | {' / '.join(map(str, pub)) if pub else '—'} |")
        lines += ["", "### PatchGAN receptive field (L1+cGAN; ours on 32x32 images, the paper's on 256x256)", "",
                  "| row | field | steps | fmnist-net acc | FID to targets | L1 | PSNR dB | Isola et al. Table 2 (field: per-pixel / per-class / IoU) |",
                  "|---|---|---|---|---|---|---|---|"]
        fields = {"PixelGAN 1x1": "1x1", "L1+cGAN": "16x16", "ImageGAN 34x34": "34x34 (whole image)"}
        for row in PATCH_ROWS:
            if row in rows:
                v, pub = rows[row], PUBLISHED_PATCH[row]
                lines.append(f"| {row} | {fields[row]} | {fmt(v.get('steps'), 0)} | {ms(v, 'acc')} | {ms(v, 'fid', 2)} | "
                             f"{ms(v, 'l1')} | {ms(v, 'psnr', 2)} | {pub[0]}: {' / '.join(map(str, pub[1:]))} |")
        lines.append("")
    if "cyclegan" in results:
        r = results["cyclegan"]
        seeds = r.get("seeds", [r.get("seed", 0)])
        lines += [f"### CycleGAN loss ablation on unpaired:sneaker,ankle-boot ({r['minutes_per_row']} CPU-min of training "
                  f"per row, seeds {', '.join(map(str, seeds))} (mean, min-max), all 1,000 test images per direction)", "",
                  "| row | steps | acc sneaker->boot | acc boot->sneaker | FID ->boot | FID ->sneaker | cycle L1 sneaker | "
                  "cycle L1 boot |", "|---|---|---|---|---|---|---|---|"]
        for row, v in r["rows"].items():
            lines.append(f"| {row} | {fmt(v.get('steps'), 0)} | {ms(v, 'acc_a2b')} | {ms(v, 'acc_b2a')} | "
                         f"{ms(v, 'fid_a2b', 2)} | {ms(v, 'fid_b2a', 2)} | {ms(v, 'cycle_l1_a2b')} | "
                         f"{ms(v, 'cycle_l1_b2a')} |")
        lines.append("")
    if "cyclegan-edges" in results:
        r = results["cyclegan-edges"]
        lines += [f"### CycleGAN on unpaired:edges,garments against pix2pix on the paired data ({r['minutes_per_row']} "
                  f"CPU-min of training per row, seeds {', '.join(map(str, r['seeds']))} (mean, min-max), edges -> garment "
                  f"on n = {r['n']} test pairs)", "",
                  "| row | steps | fmnist-net acc | FID to targets | L1 | PSNR dB | cycle L1 edges | cycle L1 garments |",
                  "|---|---|---|---|---|---|---|---|"]
        for row, v in r["rows"].items():
            lines.append(f"| {row} | {fmt(v.get('steps'), 0)} | {ms(v, 'acc')} | {ms(v, 'fid', 2)} | {ms(v, 'l1')} | "
                         f"{ms(v, 'psnr', 2)} | {ms(v, 'cycle_l1_a2b') if 'cycle_l1_a2b' in v else '—'} | "
                         f"{ms(v, 'cycle_l1_b2a') if 'cycle_l1_b2a' in v else '—'} |")
        lines.append("")
    if "total_wall_s" in results:
        lines.append(f"Machine: {results.get('machine')}; total wall time {results['total_wall_s']} s. "
                     f"Command: `{results.get('command', '')}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
