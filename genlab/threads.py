"""How many CPU threads torch uses: `--threads N`, or `auto` (the default of `genlab train/sample/eval`).

On a small shared machine, torch's default (one thread per core, OpenMP threads spinning at every barrier)
collapses when another program is busy: a thread that loses its core stalls every operation while the others
spin, so a 2-thread step ran ~3x slower beside one busy process, and up to 8x in a user's report
(bench/cpu_contention.py, docs/results.md). `auto` uses as many threads as there are cores no *other*
program is using, measured from /proc/stat against this process's own CPU time, at start and again every
`RECHECK_S` seconds during training (`adjust`), so load that starts mid-run is followed too. OMP_NUM_THREADS,
when set, is taken as is; under torchrun the processes on a machine share the cores.
"""

from __future__ import annotations

import os
import time

RECHECK_S = 20.0  # seconds between re-measurements during training
_state: dict = {"auto": False}


def _cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat; None where it is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields) - idle) / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _sample() -> tuple[float, float, float] | None:
    busy = _cpu_busy_s()
    return None if busy is None else (time.monotonic(), busy, _own_cpu_s())


def _free_cores(a, b) -> float:
    """Cores not used by other processes between samples a and b."""
    cores = os.cpu_count() or 1
    elapsed = max(b[0] - a[0], 1e-6)
    others = max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / elapsed  # busy cores minus our own use
    return max(0.0, cores - others)


def _threads_for(free: float) -> int:
    cores = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun: the processes share the cores
    return max(1, min(max(1, cores // local), int(free / local + 0.5)))


def configure_threads(spec: str | int = "auto") -> dict:
    """Apply `spec` ('auto' or a positive number of threads) to torch; returns what was chosen and why."""
    import torch

    cores = os.cpu_count() or 1
    _state["auto"] = False
    if str(spec) != "auto":
        n = int(spec)
        if n < 1:
            raise ValueError(f"--threads must be >= 1 or 'auto', got {spec}")
        reason = "asked for"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) >= 1:
        n = int(os.environ["OMP_NUM_THREADS"])  # the user's (or a test harness's) explicit choice wins
        reason = "OMP_NUM_THREADS"
    else:
        a = _sample()
        time.sleep(0.25)
        b = _sample()
        if a is None or b is None:
            n, reason = cores, "idle cores unknown"
        else:
            free = _free_cores(a, b)
            n, reason = _threads_for(free), f"{free:.1f} of {cores} cores free"
            _state.update(auto=True, last=b, n=n)
    torch.set_num_threads(n)
    return {"threads": n, "reason": reason}


def adjust() -> int | None:
    """In `auto` mode, every RECHECK_S seconds, follow the cores other programs left free; returns the new
    thread count when it changed (None otherwise). Cheap enough to call every training step."""
    if not _state["auto"]:
        return None
    now = time.monotonic()
    if now - _state["last"][0] < RECHECK_S:
        return None
    b = _sample()
    if b is None:
        return None
    n = _threads_for(_free_cores(_state["last"], b))
    _state["last"] = b
    if n == _state["n"]:
        return None
    import torch

    torch.set_num_threads(n)
    _state["n"] = n
    return n
