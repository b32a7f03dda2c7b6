"""Style-based GANs on fmnist-color (32x32 RGB): the ProGAN ablation, the StyleGAN Table 1 ablation with PPL in
Z and W (Tables 3/4 shape), and a truncation sweep (FID, precision, recall; Kynkäänniemi et al. 2019, Sec. 5).

Every row trains a fresh model from its preset (configs/progan-fmnist-color.yaml, configs/stylegan-fmnist-color.yaml)
plus the row's switches and the bench's scale (--scale), for the same wall-clock budget (`train.max_minutes`;
run the whole bench under the CPU lock so rows do not compete with each other). It records the steps reached
and the CPU seconds the training process used. Then, in this process:
- FID, precision and recall under protocol `fmnist-color` (domain evaluator fmnist-color-net) at n generated
  images (--n) against the protocol's reference split, beside the data-vs-data floor at the same n;
- StyleGAN rows: PPL (domain LPIPS on fmnist-color-net, eps 1e-4, 1 %/99 % filtering) in Z, and in W for rows
  with a mapping network, 'full' and 'end' paths, n paths each (--ppl-n);
- the last StyleGAN row (F): truncation psi in {1.0, 0.9, 0.7, 0.5}.
Records are appended to bench/results/style_gans.jsonl (an interrupted bench resumes), tables go to
style_gans.{json,md}.

Run (CPU lock, one seed):
  flock /tmp/genlab-cpu.lock env OMP_NUM_THREADS=2 .venv/bin/python bench/style_gans.py --minutes 0.75
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# row -> (family, overrides); the StyleGAN rows follow Karras et al. 2019, Table 1 (B, "tuning", is not a switch)
ROWS = {
    "progan": ("progan", []),
    "progan -growing": ("progan", ["model.growing=false"]),
    "progan -mbstd": ("progan", ["model.mbstd=false"]),
    "progan -equalized-lr": ("progan", ["model.equalized_lr=false"]),
    "progan -pixel-norm": ("progan", ["model.pixel_norm=false"]),
    "A traditional": ("stylegan", ["model.mapping=false", "model.const_input=false", "model.noise=false",
                                   "model.mixing_prob=0"]),
    "C + mapping, styles": ("stylegan", ["model.const_input=false", "model.noise=false", "model.mixing_prob=0"]),
    "D + constant input": ("stylegan", ["model.noise=false", "model.mixing_prob=0"]),
    "E + noise inputs": ("stylegan", ["model.mixing_prob=0"]),
    "F + mixing 90%": ("stylegan", []),
}
PSIS = (1.0, 0.9, 0.7, 0.5)

# Published numbers, each read in the source named (see docs/style-gans.md for what could not be verified).
PUBLISHED = {
    "stylegan_table1": "Karras et al. 2019, Table 1 (FID, 50k images, 1024x1024): FFHQ A baseline ProGAN 8.04 -> "
                       "F 4.40; CelebA-HQ A 7.79 (the intermediate rows were not verified)",
    "stylegan_ppl": "NVlabs/stylegan README, pre-trained FFHQ config F: ppl_zfull 664.9, ppl_wfull 233.3, "
                    "ppl_zend 666.1, ppl_wend 197.2 (LPIPS-VGG, 100k paths)",
}


def scale_overrides(args) -> list[str]:
    """The bench's model scale (smaller than the presets: rows get under a minute each)."""
    return [f"model.channels={args.channels}", f"model.min_channels={args.channels // 2}",
            f"train.batch_size={args.batch}", "model.mbstd_group=4"]


def train_row(row: str, args, work: Path) -> dict:
    family, overrides = ROWS[row]
    out = work / row.replace(" ", "_").replace(",", "").replace("%", "").replace("+", "").replace("-", "no-")
    extra = [f"model.phase_steps={args.phase_steps}"] if family == "progan" else []
    cmd = [sys.executable, "-m", "genlab", "train", family, "--config", f"{family}-fmnist-color", "--out", str(out),
           f"train.seed={args.seed}", "train.steps=1000000", f"train.max_minutes={args.minutes}",
           "train.sample_every=0", "train.ckpt_every=1000000", "train.ckpt_minutes=0", "train.trackers=none",
           "train.log_every=10", *scale_overrides(args), *overrides, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{row} failed:\n{proc.stderr[-3000:]}")
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = logs[-1]
    rec = {"row": row, "family": family, "run": str(out), "steps": last["step"], "train_wall_s": round(wall, 1),
           "train_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)}
    if family == "progan":
        rec["final_resolution"], rec["final_alpha"] = last["resolution"], last["alpha"]
    return rec


def reference(n: int, seed: int, split: str) -> dict:
    """n images' features of a split (fixed seeded subset): real and fake sides get the same n, so precision
    and recall (k-NN radii) are measured as in Kynkäänniemi et al. 2019, with equal set sizes."""
    import numpy as np

    from genlab.metrics.protocols import get_protocol, reference_features

    feats = reference_features(get_protocol("fmnist-color"), split)
    idx = np.random.default_rng(seed).permutation(len(feats["features"]))[:n]
    return {k: v[idx] for k, v in feats.items() if hasattr(v, "shape") and len(v) == len(feats["features"])}


def evaluate_row(rec: dict, args) -> dict:
    import torch

    import genlab
    from genlab.data import to_uint8
    from genlab.metrics.protocols import evaluate
    from genlab.training.evaluation import path_length, sample_chunked

    run = genlab.load(rec["run"])
    t0 = time.time()

    real = reference(args.n, args.seed, "test")

    def fid_pr(opts=None) -> dict:
        x = sample_chunked(run.family, run.model, args.n, seed=args.seed, opts=opts, chunk=500, key="bench")
        r = evaluate(to_uint8(x), real, protocol="fmnist-color", metrics=("fid", "pr"), seed=args.seed)
        return {"fid": r["fid"], "precision": r["precision"], "recall": r["recall"]}

    with torch.no_grad():
        rec.update(fid_pr())
        if rec["family"] == "stylegan":
            spaces = ("z", "w") if run.config.model.mapping else ("z",)
            for space in spaces:
                for sampling in ("full", "end"):
                    r = path_length(run.family, run.model, run.config, space=space, sampling=sampling, n=args.ppl_n,
                                    seed=args.seed)
                    rec[f"ppl_{space}{sampling}"] = r["ppl"]
        if rec["row"] == list(ROWS)[-1]:
            rec["truncation"] = {str(psi): fid_pr({"truncation": psi}) for psi in PSIS}
    rec["eval_s"] = round(time.time() - t0, 1)
    return rec


def _fmt(v, digits=1):
    return "" if v is None else f"{v:.{digits}f}"


def write_tables(records: dict, floor: dict, args, out: Path) -> None:
    (out / "style_gans.json").write_text(json.dumps({"args": vars(args), "floor": floor, "rows": records,
                                                     "published": PUBLISHED}, indent=1))
    cmd = (f"flock /tmp/genlab-cpu.lock env OMP_NUM_THREADS=2 .venv/bin/python bench/style_gans.py --minutes "
           f"{args.minutes} --n {args.n} --ppl-n {args.ppl_n} --channels {args.channels} --batch {args.batch} "
           f"--phase-steps {args.phase_steps} --seed {args.seed}")
    head = [f"Command: `{cmd}`. Machine: 2-core CPU dev machine, no GPU, shared with other jobs (the CPU seconds "
            f"column is what the training process got). Budget: {args.minutes} min of training per row, seed "
            f"{args.seed}, one seed; FID / precision / recall (k = 3) under protocol fmnist-color at n = {args.n} "
            f"generated images against n test images (fmnist-color-net features); data-vs-data floor (n train "
            f"images vs the same n test images): FID "
            f"{floor['fid']:.2f}, precision {floor['precision']:.3f}, recall {floor['recall']:.3f}.", ""]
    lines = ["# Style-based GANs on fmnist-color 32x32", "", *head, "## ProGAN ablation", "",
             "| row | steps | reached | train CPU s | FID | precision | recall |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for row, r in records.items():
        if r["family"] == "progan":
            lines.append(f"| {row} | {r['steps']} | {int(r['final_resolution'])}px, alpha {r['final_alpha']:.2f} | "
                         f"{r['train_cpu_s']:.0f} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    lines += ["", "## StyleGAN ablation (Table 1 shape) and path lengths (Table 3 shape)", "",
              f"PPL: domain LPIPS on fmnist-color-net (uncalibrated, compare rows only), {args.ppl_n} paths, eps 1e-4.",
              "", "| row | steps | train CPU s | FID | precision | recall | PPL Z full | PPL Z end | PPL W full | PPL W end |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row, r in records.items():
        if r["family"] == "stylegan":
            lines.append(f"| {row} | {r['steps']} | {r['train_cpu_s']:.0f} | {r['fid']:.2f} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | {_fmt(r.get('ppl_zfull'))} | {_fmt(r.get('ppl_zend'))} | "
                         f"{_fmt(r.get('ppl_wfull'))} | {_fmt(r.get('ppl_wend'))} |")
    last = records.get(list(ROWS)[-1])
    if last and "truncation" in last:
        lines += ["", f"## Truncation sweep ({list(ROWS)[-1]})", "", "| psi | FID | precision | recall |",
                  "| ---: | ---: | ---: | ---: |"]
        for psi, t in last["truncation"].items():
            lines.append(f"| {psi} | {t['fid']:.2f} | {t['precision']:.3f} | {t['recall']:.3f} |")
    lines += ["", "## Published (different data, resolution, scale and distance: shapes only)", "",
              *[f"- {v}" for v in PUBLISHED.values()]]
    (out / "style_gans.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="", help="';'-separated list of rows (default all; row names hold commas)")
    ap.add_argument("--minutes", type=float, default=0.75, help="training wall-clock minutes per row")
    ap.add_argument("--n", type=int, default=1000, help="generated images for FID / precision / recall")
    ap.add_argument("--ppl-n", type=int, default=200, help="paths per PPL value")
    ap.add_argument("--channels", type=int, default=16, help="model.channels of every row (min_channels = half)")
    ap.add_argument("--batch", type=int, default=16, help="train.batch_size")
    ap.add_argument("--phase-steps", type=int, default=30, help="ProGAN steps per fade-in / stable phase")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-style-gans"))
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(";") if r.strip()] or list(ROWS)
    for r in rows:
        if r not in ROWS:
            raise SystemExit(f"unknown row '{r}'; expected one of: {', '.join(ROWS)}")
    out, work = Path(args.out_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "style_gans.jsonl"
    key = {k: getattr(args, k) for k in ("minutes", "n", "ppl_n", "channels", "batch", "phase_steps", "seed")}
    done = {}
    if log.exists():
        for r in map(json.loads, log.read_text().splitlines()):
            if r.get("settings") == key:
                done[r["row"]] = r
    for row in rows:
        if row in done:
            continue
        rec = evaluate_row(train_row(row, args, work), args)
        rec["settings"] = key
        print(f"[style_gans] {row}: {rec['steps']} steps, FID {rec['fid']:.2f} "
              f"(train {rec['train_wall_s']:.0f} s wall / {rec['train_cpu_s']:.0f} s CPU, eval {rec['eval_s']:.0f} s)",
              flush=True)
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        done[row] = rec
    from genlab.metrics.protocols import evaluate

    # data vs data: n train images against the same n test images the rows were compared with
    fl = evaluate(reference(args.n, args.seed + 1, "train"), reference(args.n, args.seed, "test"),
                  protocol="fmnist-color", metrics=("fid", "pr"))
    write_tables({r: done[r] for r in ROWS if r in done}, {k: fl[k] for k in ("fid", "precision", "recall")}, args, out)


if __name__ == "__main__":
    main()
