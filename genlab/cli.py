"""`genlab ...`: train, sample, list, report. Names are resolved here, once.

Exit codes: 0 success, 1 a run-time problem (missing data, diverged training, corrupt file), 2 bad usage
(unknown family, dataset, sampler or config key, badly typed value).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from genlab.errors import GenlabError, UsageError, unknown

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []


def _resolve_config(arg: str) -> Path:
    """A config path, or the name of a preset in configs/ (e.g. `ddpm-fmnist`)."""
    p = Path(arg)
    if p.is_file():
        return p
    if (CONFIG_DIR / f"{arg}.yaml").is_file():
        return CONFIG_DIR / f"{arg}.yaml"
    if p.suffix in (".yaml", ".yml"):
        raise UsageError(f"config file not found: {arg}")
    raise unknown("preset", arg, _presets())


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section (values `over` sets win; the rest stays `base`'s)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def cmd_train(args) -> int:
    from genlab.config import build_run_config, check, dump_yaml, load_yaml, parse_overrides, set_dotted
    from genlab.data import DATASETS, is_dataset_name
    from genlab.models import get_family

    family = get_family(args.family)
    raw = load_yaml(_resolve_config(args.config)) if args.config else {}
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir} does not exist or is not a folder")

    def resolve(raw: dict):
        cfg = build_run_config(args.family, family.Config, raw)
        if args.data:
            cfg.data.name = args.data
        if args.data_dir:
            cfg.data.data_dir = args.data_dir
        for k, v in parse_overrides(args.overrides):
            set_dotted(cfg, k, v)
        return cfg

    cfg = resolve(raw)
    name = cfg.data.name
    out = Path(args.out or f"runs/{args.family}-{name.replace(':', '-').replace('/', '-')}")
    resumed = args.resume and (out / "config.yaml").is_file()
    if resumed:  # the run's own values, except what this command sets (its --config file, --data, overrides)
        base = load_yaml(out / "config.yaml")
        base["model"] = {k: v for k, v in (base.get("model") or {}).items() if k not in ("data_shape", "num_classes")}
        cfg = resolve(_merge(base, raw))
        name = cfg.data.name
    if not is_dataset_name(name):
        raise unknown("dataset", name, DATASETS)
    check(cfg)
    if args.dry_run:
        from genlab.data import check_needs
        from genlab.training.data import load_data

        spec = load_data(cfg).spec
        needs = family.needs(cfg.model)
        try:
            check_needs(args.family, needs, spec)
        except ValueError as e:
            raise UsageError(str(e)) from None
        print(f"# would train '{args.family}' on '{name}' into {out}{' (resuming)' if resumed else ''}")
        print(f"# data: {spec.describe()}")
        print(f"# the family uses: {', '.join(needs)}")
        for dep in getattr(family, "DEPS", ()):
            if getattr(cfg.model, dep):
                print(f"# depends on: model.{dep}={getattr(cfg.model, dep)}")
        print(dump_yaml(cfg), end="")
        return 0
    from genlab.report import write_report
    from genlab.training.loop import train

    run_dir = train(cfg, out, resume=args.resume, command=args.command_line)
    if int(os.environ.get("RANK", "0")) == 0:
        report = write_report(run_dir)
        print(f"done: {run_dir}\nreport: {report.resolve()}")
    return 0


def cmd_distill(args) -> int:
    """Progressive distillation from TEACHER down to --to-steps, one `distill` run per stage (see distill_stages)."""
    from genlab.config import load_yaml, parse_overrides
    from genlab.report import write_report
    from genlab.training.distill_stages import run_stages

    base = load_yaml(_resolve_config(args.config)) if args.config else None
    dirs = run_stages(args.teacher, args.out, to_steps=args.to_steps, base=base,
                      overrides=parse_overrides(args.overrides), command=args.command_line,
                      after_stage=write_report if int(os.environ.get("RANK", "0")) == 0 else None)
    print("done:\n" + "\n".join(f"  {d}" for d in dirs))
    return 0


def cmd_sample(args) -> int:
    import torch

    from genlab.data import to_uint8
    from genlab.data.png import save_grid, save_png
    from genlab.training.run import load_run

    run = load_run(args.run, ema=not args.no_ema)
    if args.mix is not None:  # a style-mixing grid: rows give the coarse styles, columns the fine ones
        if not hasattr(run.family, "style_mixing"):
            raise UsageError(f"--mix needs a style-based generator (stylegan); {args.run} is a {run.family_name} run")
        seeds = range(args.seed, args.seed + 10)
        try:
            grid = run.family.style_mixing(run.model, seeds[:5], seeds[5:], crossover=args.mix or None,
                                           truncation=args.truncation)
        except ValueError as e:
            raise UsageError(str(e)) from None
        out = Path(args.out or Path(args.run) / "samples" / f"mixing-seed{args.seed}.png")
        save_grid(to_uint8(grid), out)
        print(f"wrote a 5 x 5 style-mixing grid to {out} (row seeds {args.seed}..{args.seed + 4} give the coarse "
              f"styles, column seeds {args.seed + 5}..{args.seed + 9} the fine ones)")
        return 0
    if args.sampler is not None and args.sampler not in run.family.SAMPLERS:
        raise unknown(f"sampler for {run.family_name}", args.sampler, run.family.SAMPLERS)
    classifier = _guidance_classifier(args, run)
    cond = None
    captions = None  # --prompt / --prompts: one caption per image, written under it in the grid
    if args.prompt is not None or args.prompts is not None:
        from genlab.sample_inputs import read_prompts

        if args.prompt is not None and args.prompts is not None:
            raise UsageError("give --prompt or --prompts, not both")
        if "text" not in run.family.needs(run.config.model):
            what = ", ".join(k for k in run.family.needs(run.config.model) if k != "x") or "nothing"
            raise UsageError(f"--prompt needs a text-conditional run; {args.run} is a {run.family_name} run "
                             f"conditioned on {what}" + (" (use --class)" if what.startswith("y") else ""))
        captions = read_prompts(args.prompts) if args.prompts is not None else [args.prompt] * args.n
        args.n = len(captions)  # --prompts: one image per prompt
        cond = {"text": captions}
    if args.cls is not None:
        if "y" not in run.family.needs(run.config.model) and classifier is None:
            raise UsageError(f"--class needs a class-conditional model; {args.run} was trained without labels")
        cond = {**(cond or {}), "y": torch.full((args.n,), args.cls, dtype=torch.long)}
    if args.color is not None:
        from genlab.sample_inputs import color_index

        cond = {**(cond or {}), "color": torch.full((args.n,), color_index(args.color), dtype=torch.long)}
    if (args.image is not None or args.mask is not None) and not getattr(run.config.model, "inpaint", False):
        raise UsageError(f"--image/--mask need an inpainting run (ldm with model.inpaint=true); {args.run} is not one")
    if args.layout is not None and "boxes" not in run.family.needs(run.config.model):
        raise UsageError(f"--layout needs a layout-conditional run (ldm with model.cond=layout); {args.run} is not one")
    if args.image is not None or args.mask is not None:
        from genlab.sample_inputs import inpaint_inputs

        cond = {**(cond or {}), **inpaint_inputs(args.image, args.mask)}
    if args.layout is not None:
        from genlab.sample_inputs import layout_inputs

        cond = {**(cond or {}), **layout_inputs(args.layout, list(run.spec.classes), args.n)}
    try:
        x = run.sample(args.n, seed=args.seed, cond=cond, sampler=args.sampler, steps=args.steps, eta=args.eta,
                       sigmas=args.sigmas, guidance=args.guidance, classifier=classifier,
                       truncation=args.truncation, temperature=args.temperature, progress=True)
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out or Path(args.run) / "samples" / f"sample-seed{args.seed}.png")
    if x.dim() != 4:
        from safetensors.torch import save_file

        out = out.with_suffix(".safetensors")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({"points": x.contiguous()}, str(out))
        print(f"wrote {len(x)} points to {out}")
        return 0
    images = to_uint8(x)
    if out.suffix.lower() == ".png" and captions is not None:
        from genlab.report.prompts import save_captioned_grid

        save_captioned_grid(images, captions, out)
        print(f"wrote a grid of {len(images)} samples, each with its prompt under it, to {out}")
    elif out.suffix.lower() == ".png":
        save_grid(images, out)
        print(f"wrote a grid of {len(images)} samples to {out}")
    else:
        for i, im in enumerate(images):
            save_png(im, out / f"{i:06d}.png")
        print(f"wrote {len(images)} PNG files to {out}/")
    return 0


def _guidance_classifier(args, run):
    """The model of `--classifier RUN` for classifier guidance, checked against the diffusion run (or None)."""
    if not args.classifier:
        return None
    from genlab.training.run import load_run

    if "classifier" not in run.family.SAMPLE_OPTIONS:
        raise UsageError(f"--classifier guides diffusion runs (ddpm); {args.run} is a '{run.family_name}' run")
    clf = load_run(args.classifier)
    if clf.family_name != "classifier":
        raise UsageError(f"--classifier {args.classifier} is a '{clf.family_name}' run; train one with "
                         f"`genlab train classifier --data {run.config.data.name}`")
    if list(clf.spec.shape) != list(run.spec.shape) or list(clf.spec.classes) != list(run.spec.classes):
        raise UsageError(f"--classifier {args.classifier} was trained on {clf.spec.name} {list(clf.spec.shape)} with "
                         f"{len(clf.spec.classes)} classes; {args.run} on {run.spec.name} {list(run.spec.shape)} with "
                         f"{len(run.spec.classes)}: train the classifier on the same dataset")
    if args.cls is None:
        raise UsageError("classifier guidance steers towards a class: pass --class K")
    return clf.model


def _load_images(path: Path):
    """uint8 (N, C, H, W) from a folder of PNGs, or an .npz file's array (N, C, H, W) or (N, H, W, C) named
    'images' (or its only array); float arrays keep their dtype (their value range is read by `evaluate`)."""
    import numpy as np
    import torch

    from genlab.data.png import load_png

    accepted = "a run directory, a folder of PNG files, or an .npz file of uint8 images (N, C, H, W) named 'images'"
    if not path.exists():
        raise GenlabError(f"{path} not found; genlab eval takes {accepted}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
        if not files:
            raise GenlabError(f"no PNG files under {path}; genlab eval takes {accepted}")
        images = [load_png(f) for f in files]
        shapes: dict[tuple, list[Path]] = {}
        for f, im in zip(files, images):
            shapes.setdefault(tuple(im.shape), []).append(f)
        if len(shapes) > 1:
            found = "; ".join(f"{len(fs)} of {'x'.join(map(str, s))} (e.g. {fs[0]})"
                              for s, fs in sorted(shapes.items(), key=lambda kv: -len(kv[1])))
            raise GenlabError(f"the PNG files under {path} differ in size (C x H x W): {found}; "
                              f"evaluate one size at a time, resized to the protocol's")
        return torch.stack(images)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                key = "images" if "images" in z.files else (z.files[0] if len(z.files) == 1 else None)
                if key is None:
                    raise GenlabError(f"{path} holds several arrays ({', '.join(z.files)}); name the images 'images'")
                a = z[key]
        except (OSError, ValueError, EOFError) as e:
            raise GenlabError(f"cannot read {path}: {e}") from None
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return torch.from_numpy(np.ascontiguousarray(a))
    raise GenlabError(f"cannot evaluate {path}: expected {accepted}")


def _print_table(rows: list[tuple[str, dict]]) -> None:
    """The metrics table; an NLL from a likelihood bound (nll_kind "bound", the VAE's IWAE) is marked "<=" and explained."""
    keys = [k for k in ("fid", "kid", "is", "precision", "recall", "density", "coverage", "cond_acc", "color_acc",
                        "clip_score", "obj_acc", "empty_acc", "classes_covered", "class_reverse_kl", "nll_nats",
                        "bits_per_dim") if any(k in r for _, r in rows)]
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  {'n':>6}  " + "  ".join(f"{k:>10}" for k in keys))
    bounds = False
    for name, r in rows:
        cells = [f"{r['protocol']['n_fake']:>6}"]
        for k in keys:
            v = r.get(k)
            text = "-" if v is None else f"{v:.4g}" if isinstance(v, float) else f"{v}"
            if v is not None and k in ("nll_nats", "bits_per_dim") and r.get("nll_kind") == "bound":
                text, bounds = "<=" + text, True
            cells.append(f"{text:>10}")
        print(f"{name:{width}}  " + "  ".join(cells))
    if bounds:
        print("<= : an upper bound on the NLL (the model's likelihood is a lower bound, e.g. the VAE's IWAE); "
              "unmarked NLLs are the model's exact likelihood")


def _json_target(text: str | None) -> Path | None:
    """The --json file, checked before any work is done: not a folder, and its folder can be created."""
    if not text:
        return None
    path = Path(text)
    if path.is_dir():
        raise GenlabError(f"--json {path} is a folder; give a file name, e.g. --json {path / 'eval.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenlabError(f"--json {path}: cannot create its folder {path.parent} ({e.strerror})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise GenlabError(f"--json {path}: not writable; choose a file in a folder you can write to")
    return path


# `genlab eval` metrics when --metrics is not given: what each protocol's evaluator supports
PROTOCOL_METRICS = {"scenes": "fid,kid,pr,dc,clip,objects", "fmnist-color": "fid,kid,is,pr,dc,acc,color_acc"}


def _default_metrics(protocol: str) -> str:
    return PROTOCOL_METRICS.get(protocol, "fid,kid,is,pr,dc,acc")


def cmd_eval(args) -> int:
    import json
    import warnings

    from genlab.metrics.protocols import (
        EvalWarning,
        evaluate,
        floor,
        get_protocol,
        parse_metrics,
        protocol_for_dataset,
    )

    target = Path(args.target)
    json_path = _json_target(args.json)
    run = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvalWarning)
        try:
            names = parse_metrics(args.metrics or _default_metrics(args.protocol or "fmnist"))
            if (target / "checkpoints").is_dir():
                from genlab.training.evaluation import evaluate_model
                from genlab.training.run import load_run

                run = load_run(target)
                pname = args.protocol or run.config.eval.protocol or protocol_for_dataset(run.config.data.name)
                names = parse_metrics(args.metrics or _default_metrics(pname))
                result = evaluate_model(run.family, run.model, run.config, protocol=pname,
                                        n=args.n or get_protocol(pname).n, metrics=",".join(names),
                                        steps=args.steps or 0, seed=args.seed)
                label = f"{run.family_name} @ step {run.step}"
            elif args.target == "data":
                pname, result, label = args.protocol or "fmnist", None, None
            else:
                pname = args.protocol or "fmnist"
                images = _load_images(target)
                p = get_protocol(pname)
                images = images[: args.n] if args.n else images
                if "nll" in names:
                    raise ValueError("'nll' needs a run (a model with a likelihood), not a folder of images")
                result = evaluate(images, None, protocol=p, metrics=[m for m in names if m != "acc"], seed=args.seed,
                                  value_range=args.range)
                label = target.name
            sample_metrics = [m for m in names if m != "nll"]  # nll is of the model, not of samples
            # the floor at the generated side's n: P/R/D/C and FID of real data move with n
            n = result["protocol"]["n_fake"] if result else args.n or get_protocol(pname).n
            base = floor(pname, metrics=sample_metrics, seed=args.seed, n=n)
        except ValueError as e:
            raise UsageError(str(e)) from None
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, EvalWarning)):
        print(f"genlab: warning: {message}", file=sys.stderr)
    for w in caught:  # anything else is shown as Python would have
        if not issubclass(w.category, EvalWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    p = get_protocol(pname)
    rows = [(f"data vs data ({p.floor_split} vs {p.split})", base)] + ([(label, result)] if result else [])
    print(f"protocol {p.name}: generated (n) vs {base['protocol']['n_real']} images of {p.dataset}/{p.split} through {p.extractor} "
          f"(sha256 {base['protocol']['extractor_sha256'][:12]}), KID {p.kid_subsets}x{p.kid_subset_size}, "
          f"P&R k={p.pr_k}, D&C k={p.dc_k}")
    n_floor, n_fake = base["protocol"]["n_fake"], result["protocol"]["n_fake"] if result else None
    same = ("the same n as the generated images" if n_floor == n_fake else
            f"all there are, fewer than the {n_fake} generated images" if result else "")
    print(f"data vs data: n = {n_floor} images of {p.dataset}/{p.floor_split}" + (f", {same}" if same else "")
          + (f" (the protocol's n is {p.n})" if n_floor != p.n else ""))
    _print_table(rows)
    payload = {"floor": base, **({"result": result, "target": str(target)} if result else {})}
    if json_path:
        try:
            json_path.write_text(json.dumps(payload, indent=1))
        except OSError as e:
            raise GenlabError(f"cannot write --json {json_path}: {e.strerror}") from None
        print(f"wrote {json_path}")
    if run is not None and result:
        from genlab.training.evaluation import eval_record
        from genlab.training.runfiles import append_jsonl

        append_jsonl(target / "eval.jsonl", eval_record(run.step, result, base))
    return 0


def cmd_list(args) -> int:
    import shutil
    import textwrap

    from genlab.data import DATASETS
    from genlab.models import FAMILIES

    width = max(60, min(120, shutil.get_terminal_size((100, 20)).columns))
    print("families:")
    for name, fam in FAMILIES.items():
        paragraph = (fam.__doc__ or "").strip().split("\n\n")[0]  # the docstring's whole first paragraph
        doc = textwrap.fill(" ".join(paragraph.split()), width, initial_indent=f"  {name:8s} ",
                            subsequent_indent=" " * 11)
        print(doc)
        print(f"  {'':8s} samplers: {', '.join(fam.SAMPLERS) or 'none (no prior: reconstructs, encodes, scores)'}")
    from genlab.data import DATASET_CONDITIONS

    print("datasets (and the conditions they carry beside x):")
    for name in DATASETS:
        print(f"  {name:19s} {', '.join(DATASET_CONDITIONS.get(name, ())) or '-'}")
    print("presets (configs/, use --config NAME):\n  " + ", ".join(_presets()))
    return 0


def cmd_report(args) -> int:
    from genlab.report import write_report

    if not Path(args.run).is_dir():
        raise GenlabError(f"run directory not found: {args.run}")
    print(write_report(args.run, latent_method=args.latent).resolve())
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def cmd_anomaly(args) -> int:
    from genlab.anomaly import detect, format_result
    from genlab.training.run import load_run

    if not 0 <= args.fpr <= 1:
        raise UsageError(f"--fpr must be in [0, 1], got {args.fpr}")
    normal = None
    if args.normal:
        try:
            normal = [int(c) for c in args.normal.split(",") if c.strip()]
        except ValueError:
            msg = f"--normal takes a comma list of class numbers, e.g. 0 or 0,6; got '{args.normal}'"
            raise UsageError(msg) from None
    run = load_run(args.run)
    result = detect(run, data=args.data or "", split=args.split, normal=normal, threshold=args.threshold,
                    fpr=args.fpr, out_dir=args.out, seed=args.seed)
    print(format_result(result))
    return 0


def cmd_translate(args) -> int:
    from genlab.translate import run_translate

    r = run_translate(args.run, args.input, args.out, to=args.to, n_outputs=args.n_outputs, seed=args.seed,
                      data=args.data, split=args.split, n=args.n, ema=not args.no_ema)
    cols = "input | " + (f"{r['outputs']} outputs" if r["outputs"] > 1 else "output") + (" | target" if r["target"] else "")
    print(f"translated {r['n']} images into {args.out}/; grid ({cols}): {r['grid']}")
    return 0


def cmd_data_show(args) -> int:
    from genlab.data import load_dataset
    from genlab.data.show import draw_examples, pick_examples

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png file, got {args.out}")
    data = load_dataset(args.name, args.split, data_dir=args.data_dir, image_size=args.image_size)
    print(data.spec.describe())
    idx, ncol = pick_examples(data, args.n, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_examples(data, idx, ncol).save(out)
    what = f"{len(idx)} examples" if data.is_image else f"{min(len(data), 20000):,} points"
    print(f"wrote {out} ({what} of {args.name}/{args.split})")
    return 0


def _threads(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 1, got '{text}'")
    return text


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, default="auto",
                   help="CPU threads for torch: a number, or auto (default): the cores idle right now, so a busy "
                        "machine does not slow every step several-fold (see genlab/threads.py)")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genlab", description="Train, sample and evaluate generative image models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a family on a dataset")
    t.add_argument("family", help="model family (see `genlab list`)")
    t.add_argument("--data", help="dataset name (default: the config's, else digits)")
    t.add_argument("--data-dir", help="folder holding the dataset files")
    t.add_argument("--config", help="YAML config file or preset name from configs/")
    t.add_argument("--out", help="run directory (default runs/FAMILY-DATA)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's newest good checkpoint")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=200 model.lr=1e-3")
    t.set_defaults(fn=cmd_train)
    for cmd in (t,):
        _threads_option(cmd)

    dd = sub.add_parser("distill", help="progressive distillation of a ddpm run, stage by stage, down to --to-steps",
                        description="Progressive distillation (Salimans & Ho 2022): each stage trains a student that "
                        "samples in half its teacher's steps, starting from the teacher's weights. Stage I is written "
                        "to OUT/stage-I-Nsteps/, a normal run (sample it with genlab sample) whose teacher is the "
                        "previous stage. Finished stages are kept when the command is run again.")
    dd.add_argument("teacher", help="a trained ddpm run (or a distill stage to continue from)")
    dd.add_argument("--out", required=True, help="folder for the stage runs")
    dd.add_argument("--to-steps", type=_positive_int, default=1, help="steps of the last student (default 1)")
    dd.add_argument("--config", help="YAML config file or preset name from configs/ for every stage")
    dd.add_argument("overrides", nargs="*", help="key=value overrides for every stage, e.g. train.steps=2000 "
                    "model.teacher_steps=64 (the first ddpm teacher's DDIM steps)")
    dd.set_defaults(fn=cmd_distill)
    _threads_option(dd)

    s = sub.add_parser("sample", help="sample from a trained run")
    s.add_argument("run", help="run directory")
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    s.add_argument("--sampler", help="sampler (e.g. ddim, ddpm); default the run's")
    s.add_argument("--steps", type=_positive_int, help="sampler steps")
    s.add_argument("--eta", type=float, help="DDIM eta")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale (1: conditional, 0: unconditional, "
                   ">1: stronger; ddpm trained with model.class_cond=true model.p_uncond=0.1); needs --class. With "
                   "--classifier: the classifier-guidance scale instead (0: none, default 1)")
    s.add_argument("--classifier", help="a trained `classifier` run: classifier guidance (Dhariwal & Nichol 2021) "
                   "towards --class, scaled by --guidance")
    s.add_argument("--sigmas", choices=["uniform", "karras"],
                   help="diffusion noise levels: evenly spaced timesteps, or Karras et al.'s grid (for heun, dpmpp_2m)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--class", dest="cls", type=int, help="class label for conditional models")
    s.add_argument("--color", help="colour (name or index) with --class, for runs conditioned on (class, colour) "
                   "pairs (ldm on fmnist-color)")
    s.add_argument("--prompt", help="caption for a text-conditional run (ldm model.cond=text), e.g. "
                   "'a red sneaker at the top left'; shown under each image in the grid")
    s.add_argument("--prompts", metavar="FILE", help="text file, one prompt per line: one image per prompt")
    s.add_argument("--image", metavar="PNG", help="inpainting (ldm model.inpaint=true): the picture to complete")
    s.add_argument("--mask", metavar="PNG", help="inpainting: same size as --image, white where to generate")
    s.add_argument("--layout", metavar="JSON", help='layout-to-image (ldm model.cond=layout): a JSON file or list '
                   '[{"box": [x0, y0, x1, y1], "class": "sneaker", "color": "red"}, ...], boxes as fractions in [0, 1]')
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--temperature", type=float, metavar="T", help="flows: z ~ N(0, T^2 I); pixelcnn: softmax "
                   "temperature (default: the run's model.temperature)")
    s.add_argument("--truncation", type=float, metavar="PSI", help="truncation trick (stylegan): pull w towards the "
                   "mean w, psi in [0, 1] (1: off, 0.7: the paper's figures)")
    s.add_argument("--mix", type=int, nargs="?", const=0, metavar="CROSSOVER", help="write a style-mixing grid "
                   "(stylegan): rows take the styles of layers below CROSSOVER (default: the 4x4 and 8x8 layers), "
                   "columns the rest")
    s.add_argument("--out", help="FILE.png for a grid, or a DIR for one PNG per sample")
    s.set_defaults(fn=cmd_sample)
    _threads_option(s)

    e = sub.add_parser("eval", help="evaluate a run, a folder of PNGs or an .npz of images under a protocol",
                       description="Evaluate a run, a folder of PNGs or an .npz of images under a protocol, beside the "
                       "data-vs-data row (train images against the reference split, at the same n). An .npz holds "
                       "uint8 images, taken as they are, or float images whose value range is read from the values: "
                       "any value below -0.025 means [-1, 1]; else all <= 1.025 means [0, 1]; else "
                       "[0, 255] (a note says so). Pass --range to say which, or save uint8.")
    e.add_argument("target", help="run directory, folder of PNGs, FILE.npz, or 'data' for the data-vs-data floor only")
    e.add_argument("--protocol", help="fmnist | digits | mnist (default: the run's dataset; fmnist otherwise)")
    e.add_argument("--metrics", default=None, help="comma list of fid,kid,is,pr,dc,acc,modes,color_acc,clip,objects,nll "
                   "(default: fid,kid,is,pr,dc,acc; scenes: fid,kid,pr,dc,clip,objects; fmnist-color: adds color_acc) "
                   "(nll: the run's test-set likelihood in nats and bits/dim, for vae and gmm)")
    e.add_argument("--n", type=_positive_int, help="number of generated samples (default: the protocol's); the "
                   "data-vs-data row uses the same n, and a small n (FID is biased) prints a warning")
    e.add_argument("--steps", type=_positive_int, help="sampler steps when sampling a run")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", help="write all values and the protocol record to this file")
    e.add_argument("--range", choices=["-1,1", "0,1", "0,255"], metavar="LO,HI",
                   help="-1,1 | 0,1 | 0,255: value range of float images in an .npz (write --range=-1,1); default: "
                   "read from the values (any below -0.025: -1,1; else all <= 1.025: 0,1; else 0,255)")
    e.set_defaults(fn=cmd_eval)
    _threads_option(e)

    a = sub.add_parser("anomaly", help="score a labelled dataset for anomalies with an ae / vae run (AUROC, AUPRC)")
    a.add_argument("run", help="run directory of an ae or vae")
    a.add_argument("--data", help="dataset to score (default: the run's dataset)")
    a.add_argument("--split", default="test", choices=["train", "test"], help="its split (default test)")
    a.add_argument("--normal", help="comma list of the normal classes (default: the run's data.classes)")
    a.add_argument("--threshold", type=float, help="flag scores above this (default: calibrated by --fpr)")
    a.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate on the run's held-out normal "
                   "images (data.holdout), used when no --threshold is given (default 0.05)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", help="folder for the JSON and picture (default RUN/anomaly)")
    a.set_defaults(fn=cmd_anomaly)
    _threads_option(a)

    tr = sub.add_parser("translate", help="translate images with a pix2pix / cyclegan / bicyclegan / stargan run",
                        description="Translate a folder of PNGs (INPUT) or a dataset split (--data; default: the "
                        "run's own dataset) with an image-to-image run. Writes NNNNNN-input.png, NNNNNN-out-K.png, "
                        "NNNNNN-target.png (paired data) and grid.png (rows: input | outputs | target) to --out.")
    tr.add_argument("run", help="run directory of a translation family")
    tr.add_argument("input", nargs="?", help="folder of PNG files of the run's image size and channels")
    tr.add_argument("--out", required=True, help="folder to write the PNGs and grid.png to")
    tr.add_argument("--to", help="target domain: stargan a colour name or index; cyclegan a domain name, A/B, or a "
                    "direction such as A->B (default A->B)")
    tr.add_argument("--n-outputs", type=_positive_int, default=1, help="outputs per input (bicyclegan: different z; "
                    "default 1)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the outputs' noise")
    tr.add_argument("--data", help="dataset to take inputs from instead of INPUT (e.g. edges2fmnist)")
    tr.add_argument("--split", default="test", choices=["train", "test"], help="its split (default test)")
    tr.add_argument("--n", type=_positive_int, default=16, help="number of inputs (default 16)")
    tr.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    tr.set_defaults(fn=cmd_translate)
    _threads_option(tr)

    sub.add_parser("list", help="families, datasets, samplers and presets").set_defaults(fn=cmd_list)

    r = sub.add_parser("report", help="(re)write RUN/report.html")
    r.add_argument("run")
    r.add_argument("--latent", default="pca", choices=["pca", "tsne"],
                   help="2-D projection of latents with more than 2 dimensions (default pca; tsne is slower)")
    r.set_defaults(fn=cmd_report)

    d = sub.add_parser("data", help="look at datasets (genlab data show NAME --out FILE.png)")
    data_sub = d.add_subparsers(dest="data_command", required=True)
    ds = data_sub.add_parser("show", help="draw examples of a dataset with their conditions into a PNG",
                             description="Draw examples of a dataset with their conditions (class, colour, domain, "
                             "edge maps beside images, boxes and label maps beside scenes, captions) into a PNG, "
                             "and print the dataset's spec.")
    ds.add_argument("name", help="dataset name (see `genlab list`), e.g. scenes or unpaired:sneaker,ankle-boot")
    ds.add_argument("--split", default="train", choices=["train", "test"])
    ds.add_argument("--n", type=_positive_int, default=16, help="number of examples (default 16)")
    ds.add_argument("--seed", type=int, default=0, help="seed of the choice of examples")
    ds.add_argument("--image-size", type=int, default=0, help="data.image_size (scenes: 64 by default, or 32, ...)")
    ds.add_argument("--data-dir", default="", help="folder holding the source IDX files")
    ds.add_argument("--out", required=True, help="the PNG to write")
    ds.set_defaults(fn=cmd_data_show)
    return p


# options people reach for on `train` that are config keys there
_TRAIN_KEY_HINTS = {"--steps": "train.steps", "--batch-size": "train.batch_size", "--lr": "model.lr",
                    "--seed": "train.seed", "--epochs": "train.steps"}


def main(argv=None) -> int:
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come before or after options
    if extra and (args.command not in ("train", "distill") or any(x.startswith("-") or "=" not in x for x in extra)):
        hints = [f"{_TRAIN_KEY_HINTS[x.split('=')[0]]}=..." for x in extra if x.split("=")[0] in _TRAIN_KEY_HINTS]
        if args.command == "train" and hints:
            parser.error(f"unrecognized arguments: {' '.join(extra)}; config values are key=value overrides, "
                         f"e.g. {' '.join(hints)} (genlab train {args.family} --dry-run lists every key)")
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args.command_line = "genlab " + " ".join(shlex.quote(str(a)) for a in argv)
    try:
        if getattr(args, "threads", None) and not getattr(args, "dry_run", False):
            from genlab.threads import configure_threads

            configure_threads(args.threads)
        return args.fn(args)
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("genlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
