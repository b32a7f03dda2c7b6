"""Fashion-MNIST, every family side by side, each trained for the same CPU time.

Each row trains its preset with `train.max_minutes=M` (training stops there, whatever the step count) on one
CPU thread. Rows that sample are scored by `genlab eval` on n samples under the `fmnist` protocol (fmnist-net
features: FID, KID, precision/recall k=3, density/coverage k=5; conditional accuracy for class-conditional rows).
Rows with encode/decode get the test set's reconstruction error (MSE and PSNR on [0, 1] pixels, after 8-bit
quantisation, as saved images would be). `ae+gmm` fits a Gaussian mixture on the trained AE's latents (closed
form, outside the time budget: its fit time is in the table) and decodes its samples; `gmm` is the pixel-space
mixture. Sample grids are copied to docs/img/fmnist-<row>.png. JSON + Markdown: bench/results/fmnist_families.*

Run:  .venv/bin/python bench/fmnist_families.py --minutes 5 --n 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from genlab.models import get_family

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # row -> (family, preset, overrides); "{work}" is the work directory
    "dcgan": ("gan", "dcgan-fmnist", []),
    "cgan": ("gan", "cgan-fmnist", []),
    "vae": ("vae", "vae-fmnist", []),
    "ddpm": ("ddpm", "ddpm-fmnist-quick", []),
    "ae": ("ae", "ae-fmnist", []),
    "ae+gmm": ("gmm", "gmm-latent-fmnist", ["model.autoencoder={work}/ae"]),  # needs the ae row first
    "vqvae": ("vqvae", "vqvae-fmnist", []),
    "gmm": ("gmm", "gmm-fmnist", []),
}


def sh(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


@torch.no_grad()
def reconstruction(run_dir: Path) -> dict:
    """Test-set reconstruction MSE and PSNR on [0, 1] pixels, reconstructions quantised to 8 bits."""
    import genlab
    from genlab.data import load_dataset, to_uint8

    run = genlab.load(run_dir)
    test = load_dataset("fashion-mnist", "test")
    mse = []
    for i in range(0, len(test), 500):
        x, _ = test.get(torch.arange(i, min(i + 500, len(test))))
        r = to_uint8(run.family.decode(run.model, run.family.encode(run.model, x)))
        mse.append(((r.double() - test.x[i : i + 500].double()) / 255).pow(2).flatten(1).mean(1))
    mse = torch.cat(mse).mean().item()
    return {"recon_mse": mse, "psnr": 10 * math.log10(1 / mse)}


def run_row(row: str, minutes: float, n: int, work: Path, seed: int) -> dict:
    family, preset, overrides = ROWS[row]
    overrides = [o.replace("{work}", str(work)) for o in overrides]
    out = work / row
    if not (out / "run.json").exists() or json.loads((out / "run.json").read_text()).get("status") != "done":
        shutil.rmtree(out, ignore_errors=True)
        sh([sys.executable, "-m", "genlab", "train", family, "--config", preset, "--out", str(out), "train.steps=1000000",
            f"train.max_minutes={minutes}", "train.sample_every=0", "train.ckpt_every=1000000", "train.trackers=none",
            f"train.seed={seed}", *overrides])
    info = json.loads((out / "run.json").read_text())
    record = {"row": row, "steps": info["step"], "train_s": info.get("train_s")}
    fam = get_family(family)
    if hasattr(fam, "encode") and hasattr(fam, "decode") and family != "gmm":
        record.update(reconstruction(out))
    if fam.SAMPLERS:
        metrics = "fid,kid,pr,dc" + (",acc" if row == "cgan" else "")
        t0 = time.time()
        sh([sys.executable, "-m", "genlab", "eval", str(out), "--protocol", "fmnist", "--n", str(n), "--metrics",
            metrics, "--json", str(out / "eval-fmnist.json")])
        result = json.loads((out / "eval-fmnist.json").read_text())["result"]
        record.update({k: v for k, v in result.items() if isinstance(v, (int, float))}, eval_s=time.time() - t0)
        grid = sorted((out / "samples").glob("step-*.png"))[-1]
        shutil.copy(grid, ROOT / "docs" / "img" / f"fmnist-{row}.png")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--minutes", type=float, default=5.0, help="training time per row")
    ap.add_argument("--n", type=int, default=2000, help="generated samples per evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-fmnist-families"))
    args = ap.parse_args()
    out, work = Path(args.out_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "fmnist_families.jsonl"  # one line per finished row: an interrupted run resumes
    done = {r["row"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    results = []
    for row in args.rows.split(","):
        if row not in done:
            done[row] = run_row(row, args.minutes, args.n, work, args.seed)
            with open(log, "a") as f:
                f.write(json.dumps(done[row]) + "\n")
        print(f"[fmnist_families] {row}: {done[row]}", flush=True)
        results.append(done[row])
    (out / "fmnist_families.json").write_text(json.dumps({"minutes": args.minutes, "n": args.n, "rows": results}, indent=1))
    cols = ["fid", "kid", "precision", "recall", "density", "coverage", "cond_acc", "recon_mse", "psnr"]
    lines = [f"# Fashion-MNIST, {args.minutes:g} CPU-minutes of training each (1 thread), protocol fmnist, n = {args.n}",
             "", f"Command: `.venv/bin/python bench/fmnist_families.py --minutes {args.minutes:g} --n {args.n}`. "
             f"FID/KID in fmnist-net feature space (not Inception); with n = {args.n:,} < 10,000 FID is biased upward.", "",
             "| model | steps | train s | " + " | ".join(cols) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in cols) + " |"]
    for r in results:
        cells = [f"{r[c]:.4g}" if c in r else "" for c in cols]
        lines.append(f"| {r['row']} | {r['steps']} | {r['train_s'] or 0:.0f} | " + " | ".join(cells) + " |")
    (out / "fmnist_families.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
