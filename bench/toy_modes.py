"""Mode-collapse benchmark on ring8 / grid25: the VEEGAN (Srivastava et al. 2017) / PacGAN (Lin et al. 2018)
protocol, for every GAN variant and, through the same harness, the DDPM and VAE families.

Each (row, dataset, seed) trains a fresh model with `genlab train` (its toy preset plus the row's overrides and
step count; ring8 converges faster and gets half the steps),
draws 2,500 samples and scores them with `genlab.metrics.toy_mode_coverage`: modes captured (>= 1 sample within
3 sigma of the mode), % high-quality samples, reverse KL of the high-quality mode histogram to uniform.
Results are appended per run to bench/results/toy_modes.jsonl, so an interrupted benchmark resumes where it
stopped; the table (mean +- standard error over seeds) goes to toy_modes.{json,md}.

Run:  .venv/bin/python bench/toy_modes.py --seeds 5             (all rows, both toys)
      .venv/bin/python bench/toy_modes.py --rows gan-ns,pacgan4 --seeds 3 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# row -> (family, preset, overrides, training steps on grid25; ring8 gets half)
ROWS = {
    "gan-minimax": ("gan", "gan-toy", ["model.loss=minimax"], 5000),
    "gan-ns": ("gan", "gan-toy", ["model.loss=nonsaturating"], 5000),
    "gan-ns-10k": ("gan", "gan-toy", ["model.loss=nonsaturating"], 10000),
    "pacgan2": ("gan", "gan-toy", ["model.pack=2"], 5000),
    "pacgan3": ("gan", "gan-toy", ["model.pack=3", "train.batch_size=255"], 5000),
    "pacgan4": ("gan", "gan-toy", ["model.pack=4"], 5000),
    "wgan-gp": ("gan", "gan-toy", ["model.loss=wgan-gp", "model.d_steps=5", "model.beta1=0.0", "model.beta2=0.9",
                                   "model.lr_g=0.0001", "model.lr_d=0.0001"], 5000),
    "ddpm": ("ddpm", "ddpm-toy", [], 10000),
    "vae": ("vae", "vae-toy", [], 5000),
}
# Published anchor quoted in the benchmark's issue (PacGAN, Lin et al. 2018, Table 1, grid25).
PUBLISHED = {("grid25", "PacGAN4 (Lin et al. 2018)"): {"modes": "24.8 +- 0.2", "high_quality": "93.6 +- 0.6 %",
                                                        "reverse_kl": "0.04 +- 0.01"}}


def run_one(row: str, data: str, seed: int, steps: int | None, work: Path) -> dict:
    import genlab
    from genlab.data.toys import toy_modes
    from genlab.metrics import toy_mode_coverage

    family, preset, overrides, row_steps = ROWS[row]
    out = work / f"{row}-{data}-seed{seed}"
    extra = [f"train.steps={steps or (row_steps // 2 if data == 'ring8' else row_steps)}"]
    cmd = [sys.executable, "-m", "genlab", "train", family, "--config", preset, "--data", data, "--out", str(out),
           f"train.seed={seed}", "train.sample_every=0", "train.trackers=none", *overrides, *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{row} {data} seed {seed} failed:\n{proc.stderr[-2000:]}")
    seconds = time.time() - t0
    x = genlab.load(out).sample(2500, seed=seed)
    means, std = toy_modes(data)
    return {"row": row, "data": data, "seed": seed, "train_s": seconds, **toy_mode_coverage(x, means, std)}


def _done_keys(log: Path, steps) -> set:
    if not log.exists():
        return set()
    return {(r["row"], r["data"], r["seed"]) for r in map(json.loads, log.read_text().splitlines()) if r.get("steps") == steps}


def summarise(records: list[dict]) -> dict:
    table: dict = {}
    for r in records:
        table.setdefault((r["row"], r["data"]), []).append(r)
    out = {}
    for (row, data), rs in table.items():
        stats = {}
        for key in ("modes", "high_quality", "reverse_kl", "train_s"):
            v = [float(r[key]) for r in rs]
            mean = sum(v) / len(v)
            se = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else float("nan")
            stats[key] = (mean, se)
        out[f"{row}/{data}"] = {"row": row, "data": data, "seeds": len(rs), **stats}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma list; several processes may share one log "
                    "(each skips runs the others finished), e.g. the same rows in reverse order")
    ap.add_argument("--data", default="ring8,grid25")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, help="override every preset's train.steps (shorter smoke runs)")
    ap.add_argument("--summary-only", action="store_true", help="train nothing; tabulate the runs in the log")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-toy-modes"))
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            raise SystemExit(f"unknown row '{r}'; expected one of: {', '.join(ROWS)}")
    out, work = Path(args.out_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "toy_modes.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    have = {(r["row"], r["data"], r["seed"]) for r in done if r.get("steps") == args.steps}
    for data in args.data.split(","):
        for row in rows:
            for seed in range(args.seeds):
                if args.summary_only or (row, data, seed) in have | _done_keys(log, args.steps):  # done elsewhere
                    continue
                rec = {**run_one(row, data, seed, args.steps, work), "steps": args.steps}
                print(f"[toy_modes] {row:12s} {data:7s} seed {seed}: {rec['modes']} modes, "
                      f"{100 * rec['high_quality']:.1f}% HQ, KL {rec['reverse_kl']:.3f} ({rec['train_s']:.0f} s)", flush=True)
                with open(log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                done.append(rec)
    done = [json.loads(line) for line in log.read_text().splitlines()]  # with other processes' records
    unique = {(r["row"], r["data"], r["seed"], r.get("steps")): r for r in done}  # a run done twice counts once
    records = [r for r in unique.values() if r.get("steps") == args.steps and r["row"] in rows]
    summary = summarise(records)
    (out / "toy_modes.json").write_text(json.dumps({"steps_override": args.steps, "summary": summary}, indent=1))
    lines = ["# Mode collapse on 2-D toys (VEEGAN/PacGAN protocol)", "",
             f"2,500 samples per model; mean +- standard error over seeds. Command: `.venv/bin/python bench/toy_modes.py"
             f"{' --steps ' + str(args.steps) if args.steps else ''}`.", "",
             "| data | model | seeds | modes | high quality | reverse KL | train s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in sorted(summary.values(), key=lambda s: (s["data"], list(ROWS).index(s["row"]))):
        m, hq, kl, ts = s["modes"], s["high_quality"], s["reverse_kl"], s["train_s"]
        lines.append(f"| {s['data']} | {s['row']} | {s['seeds']} | {m[0]:.1f} +- {m[1]:.1f} | {100 * hq[0]:.1f} +- "
                     f"{100 * hq[1]:.1f} % | {kl[0]:.3f} +- {kl[1]:.3f} | {ts[0]:.0f} |")
    for (data, name), p in PUBLISHED.items():
        lines.append(f"| {data} | {name} (published) | | {p['modes']} | {p['high_quality']} | {p['reverse_kl']} | |")
    (out / "toy_modes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
