"""How many CPU threads torch uses: `--threads N`, or `auto` (the default of `genlab train/sample/eval`).

On a small shared machine, torch's default (one thread per core, with OpenMP threads spinning at every
barrier) collapses when another program is busy: a thread that loses its core stalls every operation while
the others spin, so a 2-thread step ran 8x slower beside one busy process (bench/cpu_contention.py,
docs/results.md). `auto` counts the cores that are idle right now (from /proc/stat over a fraction of a
second) and uses that many threads (at least 1; OMP_NUM_THREADS, when set, is taken as is); it also asks OpenMP to sleep rather than spin at barriers
(OMP_WAIT_POLICY=PASSIVE) when torch is not loaded yet and the user has not set the policy.
"""

from __future__ import annotations

import os
import sys
import time


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where it does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_cores(window: float = 0.25) -> float | None:
    """Cores left idle by every process over `window` seconds (None where /proc/stat is missing)."""
    a = _cpu_times()
    time.sleep(window)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return None
    busy_frac = (b[0] - a[0]) / (b[1] - a[1])
    return (os.cpu_count() or 1) * (1 - busy_frac)


def configure_threads(spec: str | int = "auto") -> dict:
    """Apply `spec` ('auto' or a positive number of threads) to torch; returns what was chosen and why."""
    cores = os.cpu_count() or 1
    if str(spec) != "auto":
        n = int(spec)
        if n < 1:
            raise ValueError(f"--threads must be >= 1 or 'auto', got {spec}")
        reason = "asked for"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) >= 1:
        n = int(os.environ["OMP_NUM_THREADS"])  # the user's (or a test harness's) explicit choice wins
        reason = "OMP_NUM_THREADS"
    else:
        if "torch" not in sys.modules:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun: processes share the cores
        idle = idle_cores()
        share = cores if idle is None else idle
        n = max(1, min(cores // local or 1, int(share / local + 0.5)))
        reason = (f"{idle:.1f} of {cores} cores idle" if idle is not None else "idle cores unknown") + \
            (f", shared by {local} processes" if local > 1 else "")
    import torch

    torch.set_num_threads(n)
    return {"threads": n, "reason": reason, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
