"""The few-step table (issue 12): FID at 1, 2, 4 and 8 network evaluations on Fashion-MNIST for progressive
distillation, consistency distillation (CD), consistency training (CT), DD-GAN and DDIM, beside the teacher.

One class-conditional teacher DDPM (trained once, `--teacher`) is reused by every row that needs it, as a run
dependency: DDIM samples it with few deterministic steps (eta = 0), CD distils it (`configs/consistency-cd-fmnist`),
progressive distillation students come from `genlab distill` (`--pd 8=DIR,4=DIR,2=DIR,1=DIR`, trained by the
issue's part A; rows are left out when not given). CT (`configs/consistency-ct-fmnist`) and DD-GAN
(`configs/ddgan-fmnist`, one run per T in {1, 2, 4, 8}: each T is its own model) train from data alone.
Every student trains for a capped number of CPU minutes (`train.max_minutes`), so rows state their budget.

Evaluation: `n` samples per row (conditions: the test split's labels, as `genlab eval` does), quantised to
uint8, scored under the `fmnist` protocol (fmnist-net features; FID and conditional accuracy); the data-vs-data
floor at the same n is the first row. FID at n << 10,000 is biased upward (about as 1/n): compare rows with each
other and with the floor, not with published Inception FIDs. Each finished row is appended to a JSONL log, so an
interrupted run resumes; JSON + Markdown go to bench/results/few_step.*, sample grids to docs/img/.

Run (the whole script under the CPU lock):
  flock /tmp/genlab-cpu.lock env OMP_NUM_THREADS=2 .venv/bin/python bench/few_step.py \
      --teacher /work/runs/teacher-fmnist --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = (1, 2, 4, 8)


def train(family: str, preset: str, out: Path, minutes: float, seed: int, *overrides: str) -> dict:
    """`genlab train` a student (skipped when a finished run is already there); returns its run.json."""
    done = out / "run.json"
    if not (done.exists() and json.loads(done.read_text()).get("status") == "done"):
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "genlab", "train", family, "--config", preset, "--out", str(out),
               f"train.max_minutes={minutes}", "train.sample_every=0", "train.trackers=none", f"train.seed={seed}",
               "--threads", os.environ.get("OMP_NUM_THREADS", "2"), *overrides]
        print("[few_step] " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(done.read_text())


def score(run_dir: Path, n: int, seed: int, opts: dict, grid: Path | None = None) -> dict:
    """FID and conditional accuracy of n samples of a run (EMA weights) with sampler options `opts`."""
    import genlab
    from genlab.data import to_uint8
    from genlab.data.png import save_grid
    from genlab.metrics.protocols import evaluate
    from genlab.training.data import eval_conditions
    from genlab.training.evaluation import sample_chunked

    run = genlab.load(run_dir)
    cond = eval_conditions(run.config, run.family.needs(run.config.model), n)
    t0 = time.time()
    x = sample_chunked(run.family, run.model, n, seed=seed, cond=cond, opts=opts, chunk=250, key="few-step",
                       progress=False)
    sample_s = time.time() - t0
    if grid is not None:
        save_grid(to_uint8(x[:64]), grid, ncol=8)
    labels = cond.get("y") if cond else None
    metrics = ("fid", "acc") if labels is not None else ("fid",)
    result = evaluate(to_uint8(x), None, protocol="fmnist", metrics=metrics, labels=labels, conditions=cond)
    return {"fid": result["fid"], **({"cond_acc": result["cond_acc"]} if "cond_acc" in result else {}),
            "sample_s": round(sample_s, 1), "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="/work/runs/teacher-fmnist", help="the trained class-conditional ddpm run")
    ap.add_argument("--pd", default="", help="progressive-distillation students: STEPS=RUN_DIR,... (e.g. 8=a,4=b)")
    ap.add_argument("--rows", default="floor,teacher,ddim,pd,cd,ct,ddgan")
    ap.add_argument("--steps", default="1,2,4,8", help="step counts for the ddim and pd rows")
    ap.add_argument("--student-steps", default="1,2,4,8", help="step counts for the cd, ct and ddgan rows")
    ap.add_argument("--n", type=int, default=1000, help="generated samples per row")
    ap.add_argument("--ct-steps", type=int, default=600, help="CT optimizer steps (= model.ct_total_steps, K)")
    ap.add_argument("--cd-minutes", type=float, default=3.0)
    ap.add_argument("--ct-minutes", type=float, default=2.0)
    ap.add_argument("--ddgan-minutes", type=float, default=1.0, help="per T")
    ap.add_argument("--teacher-fid", default="", help="VALUE:SOURCE, the teacher's FID at its default steps computed "
                    "elsewhere (same protocol and n), when the teacher row does not fit the budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline", default="23:45", help="UTC HH:MM after which no new row or training starts "
                    "(rows left out are 'not run'); empty for none")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-few-step"))
    args = ap.parse_args()
    t_start = time.time()
    out, work = Path(args.out_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")]
    student_steps = [int(s) for s in args.student_steps.split(",")]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows = args.rows.split(",")
    log = out / "few_step.jsonl"
    done = {(r["method"], r["steps"]): r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    img = ROOT / "docs" / "img"

    def late() -> bool:
        if not args.deadline:
            return False
        now = time.gmtime()
        hh, mm = map(int, args.deadline.split(":"))
        return (now.tm_hour * 60 + now.tm_min - hh * 60 - mm) % 1440 < 720  # up to 12 hours past it

    def record(method: str, k: int, fn, **extra) -> None:
        if (method, k) not in done and late():
            print(f"[few_step] past the deadline: {method} {k} not run", flush=True)
            return
        if (method, k) not in done:
            r = {"method": method, "steps": k, **extra, **fn()}
            done[(method, k)] = r
            with open(log, "a") as f:
                f.write(json.dumps(r) + "\n")
        print(f"[few_step] {time.strftime('%H:%M:%S')} {done[(method, k)]}", flush=True)

    teacher = Path(args.teacher)
    if "floor" in rows:
        from genlab.metrics.protocols import floor

        record("data vs data", 0, lambda: {"fid": floor("fmnist", ("fid",), seed=args.seed, n=args.n)["fid"], "n": args.n})
    if "teacher" in rows:
        import genlab

        tcfg = genlab.load(teacher).config
        k = tcfg.model.sample_steps
        record("teacher (ddpm)", k, partial(score, teacher, args.n, args.seed, {}),
               sampler=f"{tcfg.model.sampler} eta={tcfg.model.eta:g}", train=f"{teacher}")
    if "pd" in rows and args.pd:
        for item in args.pd.split(","):
            k, run = item.split("=")
            if int(k) in steps:
                record("progressive distillation", int(k), partial(score, Path(run), args.n, args.seed, {},
                                                                   img / f"distill-{k}step.png"), run=run)
    if "cd" in rows and not late():
        info = train("consistency", "consistency-cd-fmnist", work / "cd", args.cd_minutes, args.seed,
                     f"model.teacher={teacher}")
        for k in student_steps:
            record("consistency distillation", k, partial(score, work / "cd", args.n, args.seed, {"steps": k},
                                                                 img / f"consistency-cd-{k}step.png"),
                   train_steps=info["step"], train_s=round(info.get("train_s", 0)))
    if "ct" in rows and not late():
        info = train("consistency", "consistency-ct-fmnist", work / "ct", args.ct_minutes, args.seed,
                     f"train.steps={args.ct_steps}", f"model.ct_total_steps={args.ct_steps}")
        for k in student_steps:
            record("consistency training", k, partial(score, work / "ct", args.n, args.seed, {"steps": k},
                                                             img / f"consistency-ct-{k}step.png"),
                   train_steps=info["step"], train_s=round(info.get("train_s", 0)))
    if "ddgan" in rows:
        for k in student_steps:
            if late():
                break
            info = train("ddgan", "ddgan-fmnist", work / f"ddgan-T{k}", args.ddgan_minutes, args.seed,
                         f"model.num_steps={k}")
            record("DD-GAN", k, partial(score, work / f"ddgan-T{k}", args.n, args.seed, {}, img / f"ddgan-T{k}.png"),
                   train_steps=info["step"], train_s=round(info.get("train_s", 0)))

    if "ddim" in rows:
        for k in steps:
            record("DDIM (eta=0) on the teacher", k, partial(score, teacher, args.n, args.seed,
                                                                  {"sampler": "ddim", "steps": k, "eta": 0.0}))
    results = list(done.values())
    (out / "few_step.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "teacher": str(teacher),
                                                   "steps": steps, "student_steps": student_steps,
                                                   "minutes": {"cd": args.cd_minutes, "ct": args.ct_minutes,
                                                               "ddgan_per_T": args.ddgan_minutes},
                                                   "wall_s_this_invocation": round(time.time() - t_start),
                                                   "rows": results}, indent=1))
    print(f"[few_step] wall time of this invocation: {time.time() - t_start:.0f} s", flush=True)
    write_markdown(out / "few_step.md", results, args)


def write_markdown(path: Path, results: list[dict], args) -> None:
    methods = list(dict.fromkeys(r["method"] for r in results if r["method"] not in ("data vs data", "teacher (ddpm)")))
    by = {(r["method"], r["steps"]): r for r in results}
    lines = [f"# Few-step generation on Fashion-MNIST: FID (protocol fmnist, n = {args.n:,}) by network evaluations",
             "", f"Command: `env OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python bench/few_step.py "
             f"--teacher {args.teacher} --n {args.n} --steps {args.steps} --student-steps {args.student_steps} "
             f"--cd-minutes {args.cd_minutes:g} --ct-minutes {args.ct_minutes:g} --ct-steps {args.ct_steps} "
             f"--ddgan-minutes {args.ddgan_minutes:g}" + (f" --pd {args.pd}" if args.pd else "") + "` on a 2-core CPU dev "
             f"machine, no GPU. Budgets: CD {args.cd_minutes:g} min, CT {args.ct_minutes:g} min, DD-GAN "
             f"{args.ddgan_minutes:g} min per T (training time caps; steps reached in the last column). FID in "
             f"fmnist-net feature space, biased upward at n = {args.n:,} (compare with the data-vs-data row).", ""]
    floor_r = next((r for r in results if r["method"] == "data vs data"), None)
    teacher = next((r for r in results if r["method"] == "teacher (ddpm)"), None)
    if teacher is None and args.teacher_fid:
        value, source = args.teacher_fid.split(":", 1)
        teacher = {"fid": float(value), "steps": "its default", "sampler": f"sampler (from {source})"}
    if floor_r:
        lines.append(f"Data vs data (train vs test images) at the same n: FID {floor_r['fid']:.2f}.")
    if teacher:
        lines.append(f"Teacher: {teacher['steps']} steps of {teacher.get('sampler', '')}: FID {teacher['fid']:.2f}"
                     + (f", conditional accuracy {teacher['cond_acc']:.3f}" if "cond_acc" in teacher else "") + ".")
    lines += ["", "| method | " + " | ".join(f"{k} step{'s' if k > 1 else ''}" for k in STEPS) + " | training |",
              "| --- | " + " | ".join("---:" for _ in STEPS) + " | --- |"]
    for m in methods:
        cells = []
        for k in STEPS:
            r = by.get((m, k))
            cells.append(f"{r['fid']:.2f}" if r else "not run")
        train_info = [f"T={k}: {by[(m, k)]['train_steps']} steps / {by[(m, k)]['train_s']} s" if m == "DD-GAN"
                      else f"{by[(m, k)]['train_steps']} steps / {by[(m, k)]['train_s']} s"
                      for k in STEPS if (m, k) in by and "train_steps" in by[(m, k)]]
        train_info = train_info if m == "DD-GAN" else train_info[:1]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'; '.join(train_info) or 'teacher only'} |")
    if teacher:
        two = [(r["fid"], r["method"]) for r in results if r["steps"] == 2 and r["method"] not in ("data vs data",)]
        if two:
            best, who = min(two)
            lines += ["", f"Best 2-step FID / teacher FID = {best:.2f} / {teacher['fid']:.2f} = "
                      f"**{best / teacher['fid']:.2f}** ({who}; target <= 1.3)."]
    accs = [r for r in results if "cond_acc" in r and r["method"] != "teacher (ddpm)"]
    if accs:
        lines += ["", "Conditional accuracy (fmnist-net's label = the requested class): "
                  + "; ".join(f"{r['method']} {r['steps']}: {r['cond_acc']:.3f}" for r in accs) + "."]
    lines += ["", f"Sampling seconds per row (n images, {torch.get_num_threads()} threads): "
              + "; ".join(f"{r['method']} {r['steps']}: {r['sample_s']:.0f}" for r in results if "sample_s" in r) + "."]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
