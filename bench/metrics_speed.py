"""Metric speed and memory: genlab's P/R/D/C and Fréchet distance against the reference implementations.

Measured, in one run (each P/R/D/C case in its own subprocess, so its peak memory is its own):
  1. precision/recall/density/coverage at 10k x 10k, d = 2048, k = 5: the `prdc` package vs genlab;
     time, peak resident memory above the process's baseline (features loaded), and whether the values agree
  2. genlab's P/R/D/C at 50k x 50k, d = 2048 (target: under 2 GB)
  3. the Fréchet distance between two d = 2048 Gaussians: genlab (symmetric eigendecompositions) vs the usual
     scipy.linalg.sqrtm formula (pytorch-fid's), time and agreement
Features are seeded Gaussian float32 vectors (fake = 1.1 * N(0, I) + 0.1), which is what Inception features
look like to these algorithms: only N, d and dtype matter for speed.

Run:  .venv/bin/python bench/metrics_speed.py            (about 15 minutes on 2 cores; --skip-50k: ~3)
Needs `prdc` (pip install prdc; it is in genlab's test extras). Writes bench/results/metrics_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.default_rng(seed)
    real = rs.standard_normal((n, d), dtype=np.float32)
    fake = (rs.standard_normal((n, d), dtype=np.float32) * 1.1 + 0.1).astype(np.float32)
    return real, fake


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def worker(impl: str, n: int, d: int, k: int) -> dict:
    """Runs in a subprocess: load features, then time one P/R/D/C computation; report peak memory."""
    real, fake = features(n, d, seed=0)
    if impl == "prdc":
        from prdc import compute_prdc
    else:
        import torch

        from genlab.metrics.prdc import prdc

        torch.set_num_threads(os.cpu_count() or 1)
    fn = (lambda a, b: compute_prdc(a, b, nearest_k=k)) if impl == "prdc" else (lambda a, b: prdc(a, b, k=k))
    fn(real[:50], fake[:50])  # warm-up: library start-up costs are not the algorithm's memory
    base = _rss_mb()
    t0 = time.perf_counter()
    values = {key: float(v) for key, v in fn(real, fake).items()}
    seconds = time.perf_counter() - t0
    peak = _rss_mb()
    return {"impl": impl, "n": n, "d": d, "k": k, "seconds": seconds, "baseline_rss_mb": base, "peak_rss_mb": peak,
            "extra_mb": peak - base, "values": values}


def run_worker(impl: str, n: int, d: int, k: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--n", str(n), "--d", str(d), "--k", str(k)]
    print(f"[bench] {impl} P/R/D/C at {n} x {n}, d={d} ...", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[bench]   {result['seconds']:.1f} s, +{result['extra_mb']:.0f} MB (peak RSS {result['peak_rss_mb']:.0f} MB)", flush=True)
    return result


def frechet_case(d: int, n: int, repeats: int) -> dict:
    import scipy.linalg

    from genlab.metrics.fid import frechet_distance, gaussian_stats

    real, fake = features(n, d, seed=1)
    a, b = gaussian_stats(real), gaussian_stats(fake)

    def scipy_fid():  # the formula of pytorch-fid / TTUR: sqrtm of the product, real part
        covmean = scipy.linalg.sqrtm(a.cov @ b.cov)
        diff = a.mean - b.mean
        return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(covmean.real))

    times = {"genlab": [], "scipy": []}
    values = {}
    for _ in range(repeats):
        for name, fn in (("genlab", lambda: frechet_distance(a, b)), ("scipy", scipy_fid)):
            t0 = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"d": d, "n": n, "seconds": med, "all_seconds": times, "values": values,
            "relative_difference": abs(values["genlab"] - values["scipy"]) / abs(values["scipy"]),
            "speedup": med["scipy"] / med["genlab"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["prdc", "genlab"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--big-n", type=int, default=50000)
    ap.add_argument("--skip-50k", action="store_true")
    ap.add_argument("--fid-repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.d, args.k)))
        return

    import torch

    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                                 "torch": torch.__version__, "numpy": np.__version__, "processor": platform.processor()}}
    ref = run_worker("prdc", args.n, args.d, args.k)
    ours = run_worker("genlab", args.n, args.d, args.k)
    results["prdc_10k"] = {"prdc": ref, "genlab": ours, "speedup": ref["seconds"] / ours["seconds"],
                           "memory_ratio": ours["extra_mb"] / max(ref["extra_mb"], 1e-9),
                           "identical_values": ref["values"] == ours["values"]}
    if not args.skip_50k:
        results["prdc_50k"] = run_worker("genlab", args.big_n, args.d, args.k)
    print("[bench] Fréchet distance, d=2048 ...", flush=True)
    results["frechet"] = frechet_case(args.d, 10000, args.fid_repeats)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics_speed.json").write_text(json.dumps(results, indent=1))
    r10, fr = results["prdc_10k"], results["frechet"]
    lines = [
        "# Metric speed: genlab vs reference implementations",
        "",
        f"{results['machine']['cpus']} CPUs, torch {torch.__version__}, numpy {np.__version__}; seeded Gaussian float32 "
        f"features; P/R/D/C with k={args.k}. Command: `.venv/bin/python bench/metrics_speed.py`.",
        "",
        "| case | implementation | time (s) | extra memory (MB) | notes |",
        "| --- | --- | ---: | ---: | --- |",
        f"| P/R/D/C {args.n // 1000}k x {args.n // 1000}k, d={args.d} | prdc {_version('prdc')} | {r10['prdc']['seconds']:.1f} | "
        f"{r10['prdc']['extra_mb']:.0f} | |",
        f"| P/R/D/C {args.n // 1000}k x {args.n // 1000}k, d={args.d} | genlab | {r10['genlab']['seconds']:.1f} | "
        f"{r10['genlab']['extra_mb']:.0f} | {r10['speedup']:.1f}x faster, {r10['memory_ratio']:.2f}x the memory, "
        f"values identical: {r10['identical_values']} |",
    ]
    if "prdc_50k" in results:
        b = results["prdc_50k"]
        lines.append(f"| P/R/D/C {args.big_n // 1000}k x {args.big_n // 1000}k, d={args.d} | genlab | {b['seconds']:.0f} | "
                     f"{b['extra_mb']:.0f} | peak RSS {b['peak_rss_mb']:.0f} MB (features {2 * args.big_n * args.d * 4 / 2**20:.0f} MB) |")
    lines += [
        f"| Fréchet distance, d={fr['d']} | scipy sqrtm | {fr['seconds']['scipy']:.2f} | | |",
        f"| Fréchet distance, d={fr['d']} | genlab (eigh) | {fr['seconds']['genlab']:.2f} | | {fr['speedup']:.1f}x faster, "
        f"relative difference {fr['relative_difference']:.1e} |",
        "",
    ]
    (out / "metrics_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
