"""`genlab distill TEACHER --out DIR --to-steps K`: progressive distillation stage after stage (Salimans & Ho 2022).

Each stage is an ordinary `distill` run, DIR/stage-I-Nsteps/, whose teacher (a run dependency) is the previous
stage, or TEACHER for the first: the student of stage I samples in N = teacher steps / 2^I steps. A stage that
already finished (run.json status "done") is kept and the next one starts from it, so re-running the command
after an interruption continues where it stopped; a stage interrupted midway is resumed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from genlab.config import RunConfig, build_run_config, check, set_dotted
from genlab.errors import UsageError
from genlab.models import get_family
from genlab.training.loop import train
from genlab.training.run import load_run


def teacher_steps(run, requested: int) -> int:
    """Sampling steps of the first teacher: its student steps (a distill run) or `requested` (a ddpm run)."""
    if run.family_name == "distill":
        return run.model.steps
    if run.family_name != "ddpm":
        raise UsageError(f"{run.dir} is a '{run.family_name}' run; genlab distill needs a ddpm or distill run")
    return requested


def plan(start_steps: int, to_steps: int) -> list[int]:
    """The students' step counts, halving from `start_steps` down to `to_steps` (both powers-of-two apart)."""
    if to_steps < 1:
        raise UsageError(f"--to-steps must be >= 1, got {to_steps}")
    steps, out = start_steps, []
    while steps > to_steps:
        if steps % 2:
            raise UsageError(f"the teacher samples in {start_steps} steps, which does not halve down to {to_steps}; "
                             "use a power of two (model.teacher_steps=64) or another --to-steps")
        steps //= 2
        out.append(steps)
    if not out or out[-1] != to_steps:
        raise UsageError(f"cannot halve {start_steps} teacher steps down to {to_steps} "
                         f"({' -> '.join(map(str, [start_steps, *out])) or 'no stage'})")
    return out


def run_stages(teacher: str | Path, out: str | Path, *, to_steps: int = 1, base: dict | None = None,
               overrides: list[tuple[str, str]] = (), command: str = "",
               after_stage: Callable[[Path], None] | None = None) -> list[Path]:
    """Train the stages from `teacher` down to `to_steps` student steps; returns the stage run directories.

    `base`: a raw config (a preset's YAML) for every stage; `overrides`: (key, value) pairs applied to every
    stage (e.g. train.steps=2000, model.lr=1e-4); the data defaults to the teacher's. `after_stage(run_dir)`
    runs after each stage (the CLI writes its report).
    """
    family = get_family("distill")
    src = load_run(teacher)
    if src.family_name not in family.DEP_FAMILIES["teacher"]:
        raise UsageError(f"{teacher} is a '{src.family_name}' run; genlab distill needs a ddpm or distill run")
    cfg0 = _stage_config(family, base, src, overrides, str(teacher))
    steps = plan(teacher_steps(src, cfg0.model.teacher_steps), to_steps)
    out = Path(out)
    dirs, prev = [], str(teacher)
    for i, n in enumerate(steps, start=1):
        stage_dir = out / f"stage-{i}-{n}steps"
        cfg = _stage_config(family, base, src, overrides, prev)
        status = _status(stage_dir)
        if status != "done":
            print(f"distill stage {i}/{len(steps)}: {n * 2} -> {n} steps into {stage_dir}", flush=True)
            train(cfg, stage_dir, resume=status is not None, command=command)
        else:
            print(f"distill stage {i}/{len(steps)}: {stage_dir} is done; kept", flush=True)
        if after_stage is not None:
            after_stage(stage_dir)
        dirs.append(stage_dir)
        prev = str(stage_dir)
    return dirs


def _stage_config(family, base: dict | None, src, overrides, teacher: str) -> RunConfig:
    cfg = build_run_config("distill", family.Config, base or {})
    cfg.data = copy.deepcopy(src.config.data)  # the teacher's dataset, unless an override says otherwise
    for k, v in overrides:
        set_dotted(cfg, k, v)
    if cfg.model.teacher:
        raise UsageError("genlab distill sets model.teacher for every stage; give the first teacher as TEACHER")
    cfg.model.teacher = teacher
    cfg.model.class_cond = bool(src.model.class_cond if src.family_name == "distill" else src.model.cfg.class_cond)
    check(cfg)
    return cfg


def _status(run_dir: Path) -> str | None:
    """run.json's status ("done", "running", ...) or None for a stage not started."""
    info = run_dir / "run.json"
    if not info.is_file():
        return None
    return json.loads(info.read_text()).get("status")
