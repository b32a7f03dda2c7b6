"""Training speed on a busy laptop: the quickstart's DDPM steps per second, quiet and beside busy processes,
for several thread settings. Writes bench/results/cpu_contention.{json,md}.

Each setting runs in a fresh process (OpenMP reads its environment once, at start-up):

    python bench/cpu_contention.py --steps 60 --busy 0 1

Settings: `default` (torch's default: one thread per core, OpenMP's default wait policy), `passive`
(the same threads, OMP_WAIT_POLICY=PASSIVE), `1-thread`, and `genlab` (what `genlab train` does by default:
`--threads auto`, see genlab/threads.py; re-checked during the run as the loop does). The busy processes are plain Python busy loops, one per core
asked for, as another program on the machine would be.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "default": {"env": {}, "threads": ""},
    "passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "threads": ""},
    "1-thread": {"env": {}, "threads": "1"},
    "genlab": {"env": {}, "threads": "auto"},
}

CHILD = r"""
import os, sys, time, json
threads = sys.argv[2]
if threads == "auto":
    from genlab.threads import configure_threads
    info = configure_threads("auto")
else:
    import torch
    if threads:
        torch.set_num_threads(int(threads))
    info = {"threads": torch.get_num_threads()}
import torch
from genlab.config import build_run_config, load_yaml
from genlab.models import get_family
from genlab.rng import SampleRNG
from genlab.training.context import StepContext
from genlab.training.data import load_data
from genlab.training.run import build_model

raw = load_yaml("configs/ddpm-fmnist-quick.yaml")
fam = get_family("ddpm")
cfg = build_run_config("ddpm", fam.Config, raw)
data = load_data(cfg)
model, frozen = build_model(fam, cfg, data.spec, {})
opts = fam.make_optimizers(model, cfg.model)
steps = int(sys.argv[1])
times = []
for step in range(steps + 3):
    batch = data.batch(torch.arange(step * 32, step * 32 + 32))
    ctx = StepContext(model, opts, batch, SampleRNG(range(32)), step=step)
    t = time.perf_counter()
    fam.train_step(model, batch, opts, ctx)
    if threads == "auto":
        from genlab.threads import adjust
        adjust()
    if step >= 3:  # warm-up steps excluded
        times.append(time.perf_counter() - t)
print(json.dumps({"steps_per_s": len(times) / sum(times), "step_s_max": max(times), **info,
                  "threads_end": torch.get_num_threads()}))
"""


def busy_loops(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def run_setting(name: str, steps: int) -> dict:
    s = SETTINGS[name]
    env = {**os.environ, **s["env"]}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps), s["threads"]], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def quickstart(steps: int, busy_counts: list[int], out: str) -> None:
    """The quickstart command itself (`genlab train ddpm --config ddpm-fmnist-quick`, shortened to `steps`),
    wall time from start to report, with --threads 2 (torch's default, as before) and --threads auto."""
    import shutil
    import tempfile

    rows = []
    for busy in busy_counts:
        for threads in ("2", "auto"):
            run_dir = Path(tempfile.mkdtemp()) / "qs"
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            procs = busy_loops(busy)
            try:
                time.sleep(0.5)
                t0 = time.time()
                subprocess.run([sys.executable, "-m", "genlab", "train", "ddpm", "--config", "ddpm-fmnist-quick",
                                f"train.steps={steps}", "train.sample_every=0", "--threads", threads, "--out", str(run_dir)],
                               cwd=ROOT, env=env, check=True, capture_output=True)
                wall = time.time() - t0
            finally:
                for q in procs:
                    q.kill()
            info = json.loads((run_dir / "run.json").read_text())
            rows.append({"busy": busy, "threads": threads, "wall_s": wall, "train_s": info["train_s"],
                         "images_per_s": info["images_per_s"]})
            shutil.rmtree(run_dir.parent, ignore_errors=True)
            print(json.dumps(rows[-1]), flush=True)
    quiet = {r["threads"]: r["wall_s"] for r in rows if r["busy"] == 0}
    lines = [f"Command: `{' '.join(sys.argv)}` on {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}: the "
             f"quickstart (`genlab train ddpm --config ddpm-fmnist-quick`) shortened to {steps} steps, wall time "
             "from start to report.", "",
             "| busy processes | --threads | wall s | train s | images/s | wall vs quiet |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rel = f"{r['wall_s'] / quiet[r['threads']]:.2f}x" if r["threads"] in quiet else ""
        lines.append(f"| {r['busy']} | {r['threads']} | {r['wall_s']:.0f} | {r['train_s']:.0f} | {r['images_per_s']:.0f} | {rel} |")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps({"steps": steps, "rows": rows}, indent=1))
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quickstart", type=int, default=0, metavar="STEPS",
                   help="time the quickstart command itself, shortened to STEPS, instead of single train steps")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="numbers of busy processes beside training")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_contention"))
    args = p.parse_args()
    if args.quickstart:
        return quickstart(args.quickstart, args.busy, str(ROOT / "bench" / "results" / "quickstart_contention"))
    rows = []
    for busy in args.busy:
        for name in args.settings:
            procs = busy_loops(busy)
            try:
                time.sleep(0.5)
                r = run_setting(name, args.steps)
            finally:
                for q in procs:
                    q.kill()
            rows.append({"busy": busy, "setting": name, **r})
            print(json.dumps(rows[-1]), flush=True)
    quiet = {r["setting"]: r["steps_per_s"] for r in rows if r["busy"] == 0}
    for r in rows:
        base = quiet.get(r["setting"])
        r["slowdown_vs_quiet"] = base / r["steps_per_s"] if base else None
    meta = {"cpu_count": os.cpu_count(), "steps": args.steps, "command": " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M"), "config": "configs/ddpm-fmnist-quick.yaml (batch 32)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Command: `{meta['command']}` on {meta['cpu_count']} CPUs, {meta['date']}; quickstart DDPM steps of "
             f"batch 32, {args.steps} timed steps per row.", "",
             "| busy processes | setting | torch threads | steps/s | slowest step (s) | slowdown vs quiet |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        slow = f"{r['slowdown_vs_quiet']:.2f}x" if r["slowdown_vs_quiet"] else ""
        lines.append(f"| {r['busy']} | {r['setting']} | {r['threads']} | {r['steps_per_s']:.2f} | {r['step_s_max']:.2f} | {slow} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
