"""The run directory's small files: run.json (status), metrics.jsonl / eval.jsonl (one record per line).

run.json is rewritten atomically (temp file + rename), so a crash never leaves it empty or half-written; a
damaged one (from older versions, or edited by hand) is read as empty with a warning. The JSONL logs are
appended to; a crash can tear their last line, which readers skip and a resume drops.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from genlab import __version__
from genlab.errors import UsageError
from genlab.training.checkpoint import atomic_write_bytes

RUN_MARKERS = ("run.json", "config.yaml", "checkpoints")


def check_out_dir(out: Path) -> None:
    """Refuse to write a run into a folder that is neither empty nor a genlab run (no user file is overwritten)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if entries and not (out / "run.json").is_file():
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise UsageError(f"--out {out} is not empty and not a genlab run (it holds: {shown}); "
                         "choose a new or empty folder so nothing of yours is overwritten")


def read_status(out: Path) -> dict:
    path = out / "run.json"
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        return info
    except (OSError, ValueError) as e:
        warnings.warn(f"{path} is damaged ({e}); starting a fresh record", stacklevel=2)
        return {}


def write_status(out: Path, status: str, step: int, cfg, **extra) -> None:
    """Update run.json atomically: status (running/done/interrupted/failed/diverged), step, timings, ..."""
    info = read_status(out)
    info.update({"status": status, "step": step, "family": cfg.family, "data": cfg.data.name,
                 "genlab_version": __version__, "updated": time.strftime("%Y-%m-%d %H:%M:%S"), **extra})
    atomic_write_bytes(out / "run.json", json.dumps(info, indent=1).encode())


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL log; a torn or damaged line (a crash mid-write) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def truncate_jsonl(path: Path, step: int) -> None:
    """On resume, keep only well-formed records up to `step` (later ones will be logged again)."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
