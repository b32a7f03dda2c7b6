"""One-class anomaly detection on Fashion-MNIST: the Deep SVDD protocol (Ruff et al. 2018), as used by GEOM
(Golan & El-Yaniv 2018) for Fashion-MNIST.

For each class c: train on the training images of class c only, score the whole test set (class c normal, the
other nine classes anomalous) and report AUROC. Rows: AE (reconstruction error), DAE (masking noise,
reconstruction error of the clean input) and VAE (negative ELBO, one posterior sample per image: over 10,000
test images the ranking is what matters, and 8 samples cost 8 decoder passes), each its preset plus the row's
overrides (small nets, 300 steps of 64: about 3 epochs of one class, to fit the CPU budget),
and AE+GMM (a Gaussian mixture fit on the AE's latents of the normal class, score -log p(z)); several seeds;
mean +- std per class and the mean over classes, next to the published means quoted in the issue.

Results are appended per run to bench/results/one_class.jsonl (an interrupted benchmark resumes); the table goes
to one_class.{json,md}.

Run:  .venv/bin/python bench/one_class.py                      (3 rows x 10 classes x 3 seeds)
      .venv/bin/python bench/one_class.py --rows ae --classes 0,1 --seeds 1 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# row -> (family, preset, overrides)
COMMON = ["model.channels=16", "model.latent_dim=16", "train.batch_size=64", "train.steps=300", "train.ckpt_every=100000",
          "train.log_every=100", "train.sample_every=0", "train.trackers=none"]
ROWS = {
    "ae": ("ae", "ae-fmnist", COMMON),
    "dae": ("ae", "dae-fmnist", COMMON),
    "vae": ("vae", "vae-fmnist", COMMON),
    # a Gaussian mixture (5 full components) on the latents of the ae row's model for the same class and seed:
    # score = -log p(encode(x)); needs the ae row first
    "ae+gmm": ("gmm", "gmm-latent-fmnist", ["model.autoencoder={work}/ae-class{cls}-seed{seed}", "model.n_components=5",
                                            "train.trackers=none"]),
}
# Published Fashion-MNIST means over the 10 one-class tasks, as quoted in the benchmark's issue
# (GEOM, Golan & El-Yaniv 2018, Table 1 protocol).
PUBLISHED = {"OC-SVM on raw pixels": 92.8, "AE + OC-SVM": 91.7, "GEOM": 93.5}


def run_one(row: str, cls: int, seed: int, steps: int | None, work: Path) -> dict:
    import torch

    import genlab
    from genlab.anomaly import score
    from genlab.data import load_dataset
    from genlab.metrics.anomaly import auroc

    family, preset, overrides = ROWS[row]
    overrides = [o.format(work=work, cls=cls, seed=seed) for o in overrides]
    out = work / f"{row}-class{cls}-seed{seed}"
    extra = [f"train.steps={steps}"] if steps else []
    cmd = [sys.executable, "-m", "genlab", "train", family, "--config", preset, "--out", str(out), f"data.classes={cls}",
           f"train.seed={seed}", *overrides, *extra]
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        cmd.append("--resume")  # a finished run is not retrained
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{row} class {cls} seed {seed} failed:\n{proc.stderr[-2000:]}")
    seconds = time.time() - t0
    run = genlab.load(out)
    test = load_dataset("fashion-mnist", "test")
    x, y = test.get(torch.arange(len(test)))
    s = score(run, x, seed=seed, progress=False, **({"k": 1} if family == "vae" else {}))  # one-sample -ELBO
    return {"row": row, "class": cls, "seed": seed, "train_s": seconds, "auroc": auroc(s, (y != cls).long())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--classes", default=",".join(map(str, range(10))))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, help="override every row's train.steps (shorter smoke runs)")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-one-class"))
    args = ap.parse_args()
    rows, classes = [r for r in args.rows.split(",") if r], [int(c) for c in args.classes.split(",")]
    for r in rows:
        if r not in ROWS:
            raise SystemExit(f"unknown row '{r}'; expected one of: {', '.join(ROWS)}")
    out, work = Path(args.out_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "one_class.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    have = {(r["row"], r["class"], r["seed"]) for r in done if r.get("steps") == args.steps}
    for seed in range(args.seeds):  # seed-major: a partial run still covers every class
        for cls in classes:
            for row in rows:
                if (row, cls, seed) in have:
                    continue
                rec = {**run_one(row, cls, seed, args.steps, work), "steps": args.steps}
                print(f"[one_class] {row:4s} class {cls} seed {seed}: AUROC {100 * rec['auroc']:.1f} "
                      f"({rec['train_s']:.0f} s)", flush=True)
                with open(log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                done.append(rec)
    records = [r for r in done if r.get("steps") == args.steps and r["row"] in rows and r["class"] in classes]
    table = {row: {c: [100 * r["auroc"] for r in records if r["row"] == row and r["class"] == c] for c in classes}
             for row in rows}
    summary = {row: {"per_class": {c: (float(np.mean(v)), float(np.std(v)), len(v)) for c, v in per.items() if v},
                     "mean": float(np.mean([np.mean(v) for v in per.values() if v])) if any(per.values()) else None,
                     "train_s": float(np.mean([r["train_s"] for r in records if r["row"] == row] or [0]))}
               for row, per in table.items()}
    (out / "one_class.json").write_text(json.dumps({"steps_override": args.steps, "summary": summary,
                                                    "published_means": PUBLISHED}, indent=1))
    from genlab.data import IDX_DATASETS

    names = IDX_DATASETS["fashion-mnist"]
    lines = ["# One-class anomaly detection on Fashion-MNIST (AUROC %, mean +- std over seeds)", "",
             f"Command: `.venv/bin/python bench/one_class.py{' --steps ' + str(args.steps) if args.steps else ''}`. "
             "Train on one class's training images, test on all 10,000 test images.", "",
             "| class | " + " | ".join(rows) + " |", "| --- | " + " | ".join("---:" for _ in rows) + " |"]
    for c in classes:
        cells = []
        for row in rows:
            m = summary[row]["per_class"].get(c)
            cells.append(f"{m[0]:.1f} +- {m[1]:.1f}" if m else "")
        lines.append(f"| {c} {names[c]} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{summary[r]['mean']:.1f}**" if summary[r]["mean"] else "" for r in rows) + " |")
    lines.append("| train s / run | " + " | ".join(f"{summary[r]['train_s']:.0f}" for r in rows) + " |")
    lines += ["", "Published means over the 10 classes (quoted in the issue; GEOM, Golan & El-Yaniv 2018): "
              + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()) + "."]
    (out / "one_class.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
