"""Fashion-MNIST: DCGAN and conditional DCGAN against the VAE and DDPM presets, trained for the same CPU time.

Each row trains its preset with `train.max_minutes=M` (training stops there, whatever the step count) on one
CPU thread, then `genlab eval` scores n samples under the `fmnist` protocol (fmnist-net features: FID, KID,
precision/recall k=3, density/coverage k=5; conditional accuracy for class-conditional rows). The sample grid of
each run is copied to docs/img/fmnist-<row>.png. JSON + Markdown go to bench/results/fmnist_families.{json,md}.

Run:  .venv/bin/python bench/fmnist_families.py --minutes 5 --n 2000
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

ROOT = Path(__file__).resolve().parents[1]
ROWS = {  # row -> (family, preset, overrides)
    "dcgan": ("gan", "dcgan-fmnist", []),
    "cgan": ("gan", "cgan-fmnist", []),
    "vae": ("vae", "vae-fmnist", []),
    "ddpm": ("ddpm", "ddpm-fmnist-quick", ["train.warmup_steps=100"]),
}


def sh(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def run_row(row: str, minutes: float, n: int, work: Path, seed: int) -> dict:
    family, preset, overrides = ROWS[row]
    out = work / row
    if not (out / "run.json").exists() or json.loads((out / "run.json").read_text()).get("status") != "done":
        shutil.rmtree(out, ignore_errors=True)
        sh([sys.executable, "-m", "genlab", "train", family, "--config", preset, "--out", str(out), "train.steps=1000000",
            f"train.max_minutes={minutes}", "train.sample_every=0", "train.ckpt_every=1000000", "train.trackers=none",
            f"train.seed={seed}", *overrides])
    info = json.loads((out / "run.json").read_text())
    metrics = "fid,kid,pr,dc" + (",acc" if row == "cgan" else "")
    t0 = time.time()
    sh([sys.executable, "-m", "genlab", "eval", str(out), "--protocol", "fmnist", "--n", str(n), "--metrics", metrics,
        "--json", str(out / "eval-fmnist.json")])
    result = json.loads((out / "eval-fmnist.json").read_text())["result"]
    grid = sorted((out / "samples").glob("step-*.png"))[-1]
    shutil.copy(grid, ROOT / "docs" / "img" / f"fmnist-{row}.png")
    return {"row": row, "steps": info["step"], "train_s": info.get("train_s"), "eval_s": time.time() - t0,
            **{k: v for k, v in result.items() if isinstance(v, (int, float))}}


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
    results = []
    for row in args.rows.split(","):
        r = run_row(row, args.minutes, args.n, work, args.seed)
        print(f"[fmnist_families] {row}: {r}", flush=True)
        results.append(r)
    (out / "fmnist_families.json").write_text(json.dumps({"minutes": args.minutes, "n": args.n, "rows": results}, indent=1))
    cols = ["fid", "kid", "precision", "recall", "density", "coverage", "cond_acc"]
    lines = [f"# Fashion-MNIST, {args.minutes:g} CPU-minutes of training each (1 thread), protocol fmnist, n = {args.n}",
             "", f"Command: `.venv/bin/python bench/fmnist_families.py --minutes {args.minutes:g} --n {args.n}`. "
             "FID/KID in fmnist-net feature space (not Inception); with n = 2,000 FID is biased upward.", "",
             "| model | steps | " + " | ".join(cols) + " |", "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
    for r in results:
        cells = [f"{r[c]:.4g}" if c in r else "" for c in cols]
        lines.append(f"| {r['row']} | {r['steps']} | " + " | ".join(cells) + " |")
    (out / "fmnist_families.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
