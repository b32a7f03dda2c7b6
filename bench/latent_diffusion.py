"""Latent diffusion on `scenes`: first stages, pixel vs latent, guidance, latent consistency, inpainting.

Five tables (issue 14), each a stage of this script, all on 32x32 `scenes` (data.image_size=32: a CPU budget),
evaluated under the `scenes` protocol's networks after a 2x nearest-neighbour upsampling to their 64x64 input,
with the *real* side (the test split at 32x32) upsampled the same way, so both sides share the resampling:

  recon     first-stage reconstruction (LDM Table 8 shape): autoencoder-kl at f = 1, 2, 4, 8, each trained for
            the same minutes; PSNR on [0, 1] pixels and the Fréchet distance (FD) of reconstructions against
            the originals in scenes-clip feature space (an "R-FD"; scenes-clip, not Inception).
  pixel     pixel vs latent, same CPU minutes: layout-to-image ldm on the f = 1 first stage (diffusion on the
            32x32x3 canvas: "LDM-1", the paper's pixel-space baseline; genlab's pixel ddpm has no layout or text
            input) against f = 4 and f = 8: training images/s, sampling s/image, FD, CLIP score, object accuracy.
  guidance  text-to-image against the guidance scale s in {1, 2, 3, 5, 7} (s = 1: no guidance): FD, CLIP score,
            object and colour accuracy, seen vs held-out colour-class pairs separately.
  lcm       a latent consistency model distilled from the f = 4 layout ldm against its teacher with DDIM and
            DPM-Solver++(2M) at 1, 2, 4, 8 steps.
  inpaint   a layout + inpainting ldm (f = 4) fills one object's cell of each test scene: FD of the filled cell
            (every other pixel blacked out on both sides), object accuracy in that cell, L1 outside the mask.

Every stage writes bench/results/latent_diffusion.json (merged per stage) and the Markdown tables
bench/results/latent_diffusion.md; sample grids go to docs/img/ld-*.png. Runs go under --work (not the repo).

Run (each stage under the CPU lock):
  flock /tmp/genlab-cpu.lock env OMP_NUM_THREADS=2 .venv/bin/python bench/latent_diffusion.py --stage recon
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img"
SIZE = 32  # data.image_size of every run
DATA = ["--data", "scenes", f"data.image_size={SIZE}"]
TRAIN = ["train.steps=1000000", "train.ckpt_every=1000000", "train.ckpt_minutes=0", "train.trackers=none",
         "train.batch_size=16", "train.log_every=20", "train.n_samples=16", "train.sample_steps=10", "train.seed=0"]
AE = ["model.channels=32", "model.num_res_blocks=1", "model.disc_start=150", "model.adv_weight=0.1"]
LDM = ["model.base_channels=32", "model.channel_mult=[1,2]", "model.num_res_blocks=1", "model.p_uncond=0.1",
       "model.dropout=0.0", "model.lr=5e-4", "train.warmup_steps=20", "train.ema_decay=0.995"]
PROTOCOL = "scenes"
METRICS = ("fid", "objects", "clip")


# ------------------------------------------------------------------------------------------------ helpers


def sh(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def train(out: Path, family: str, minutes: float, *overrides: str) -> dict:
    """Train (or reuse a finished) run for `minutes` of training time; returns its run.json."""
    info = out / "run.json"
    if not info.exists() or json.loads(info.read_text()).get("status") != "done":
        shutil.rmtree(out, ignore_errors=True)
        sh([sys.executable, "-m", "genlab", "train", family, *DATA, *TRAIN, f"train.max_minutes={minutes}",
            *overrides, "--out", str(out)])
    return json.loads(info.read_text())


def up(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, S, S) -> (N, C, 2S, 2S), nearest neighbour: the scenes evaluators' 64x64 input."""
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


_DATA: dict = {}


def scenes(split: str):
    if split not in _DATA:
        from genlab.data import load_dataset

        _DATA[split] = load_dataset("scenes", split, image_size=SIZE)
    return _DATA[split]


def test_batch(n: int) -> dict:
    """The first n test scenes as a batch (x float in [-1, 1], layouts, captions, heldout)."""
    return scenes("test").batch(torch.arange(n))


_FEATS: dict = {}


def features(images_uint8: torch.Tensor) -> dict:
    from genlab.metrics.protocols import extract_features, get_protocol

    p = get_protocol(PROTOCOL)
    return extract_features(up(images_uint8), p.extractor, objects=p.objects)


def reference(n: int) -> dict:
    if n not in _FEATS:
        _FEATS[n] = features(scenes("test").x[:n])
    return _FEATS[n]


def evaluate(images_uint8: torch.Tensor, cond: dict, *, metrics=METRICS, split_heldout: bool = False) -> dict:
    """FD (scenes-clip space), CLIP score, object accuracies of images made for `cond` against the real test scenes
    (both upsampled); with `split_heldout`, CLIP and object scores also for seen and held-out scenes apart."""
    import warnings

    from genlab.metrics.protocols import evaluate as ev

    n = len(images_uint8)
    fake = features(images_uint8)
    conds = {k: cond[k] for k in ("obj_classes", "obj_colors", "obj_cells", "text") if k in cond}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small n: stated in the tables
        out = ev(fake, reference(n), protocol=PROTOCOL, metrics=metrics, conditions=conds)
    res = {k: v for k, v in out.items() if k != "protocol"}
    if split_heldout:
        held = np.asarray(cond["heldout"]).astype(bool)
        for name, idx in (("seen", np.where(~held)[0]), ("heldout", np.where(held)[0])):
            sub = {k: v[idx] for k, v in fake.items()}
            sc = {k: ([v[i] for i in idx] if isinstance(v, list) else v[idx]) for k, v in conds.items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                o = ev(sub, reference(n), protocol=PROTOCOL, metrics=("objects", "clip"), conditions=sc)
            res.update({f"{k}_{name}": v for k, v in o.items() if k != "protocol"})
    return res


def floor(n: int) -> dict:
    """Data vs data: n real train scenes (their own layouts and captions) against the n real test scenes."""
    tr = scenes("train").batch(torch.arange(n))
    from genlab.data import to_uint8

    return evaluate(to_uint8(tr["x"]), tr)


def timed_sample(run, n: int, **kw) -> tuple[torch.Tensor, float]:
    from genlab.data import to_uint8

    t = time.perf_counter()
    x = run.sample(n, seed=1, **kw)
    return to_uint8(x), time.perf_counter() - t


def layout_cond(b: dict) -> dict:
    return {"boxes": b["boxes"], "obj_classes": b["obj_classes"], "obj_colors": b["obj_colors"]}


def save_grid(images: torch.Tensor, name: str, ncol: int = 8, captions: list[str] | None = None) -> None:
    """docs/img/ld-NAME.png: 16 images, or 8 with the scene's caption (what the layout or prompt asked for) under each."""
    from genlab.data.png import save_grid as sg
    from genlab.report.prompts import save_captioned_grid

    IMG.mkdir(parents=True, exist_ok=True)
    if captions is not None:
        save_captioned_grid(up(images[:8]), list(captions[:8]), IMG / f"ld-{name}.png", ncol=4)
    else:
        sg(up(images[:16]), IMG / f"ld-{name}.png", ncol=ncol)


def merge(stage: str, payload: dict) -> dict:
    path = RESULTS / "latent_diffusion.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[stage] = payload
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    (RESULTS / "latent_diffusion.md").write_text(markdown(data))
    return data


# ------------------------------------------------------------------------------------------------ stages


def stage_recon(args) -> dict:
    """Autoencoder-kl at f = 1, 2, 4, 8 for the same minutes; PSNR and R-FD on n test scenes."""
    import genlab
    from genlab.data import to_uint8

    rows = []
    x = scenes("test").x[: args.n]
    xf = x.float() / 127.5 - 1
    for f in args.fs or (1, 2, 4, 8):
        c = 3 if f == 1 else 4
        info = train(args.work / f"ae-f{f}", "autoencoder-kl", args.ae_minutes, *AE, f"model.downsample={f}",
                     f"model.latent_channels={c}")
        run = genlab.load(args.work / f"ae-f{f}")
        with torch.no_grad():
            rec = torch.cat([run.family.decode(run.model, run.family.encode(run.model, xf[i : i + 250]))
                             for i in range(0, len(xf), 250)])
        r = to_uint8(rec)
        mse = ((r.double() - x.double()) / 255).pow(2).flatten(1).mean(1).mean().item()
        fd = evaluate(r, {}, metrics=("fid",))["fid"]
        rows.append({"f": f, "latent": f"{c}x{SIZE // f}x{SIZE // f}", "steps": info["step"],
                     "train_s": round(info.get("train_s") or 0), "psnr": 10 * math.log10(1 / mse), "r_fd": fd})
        save_grid(torch.cat([x[:8], r[:8]]), f"recon-f{f}")
        print(rows[-1], flush=True)
    return {"n": args.n, "minutes_each": args.ae_minutes, "rows": rows}


def stage_pixel(args) -> dict:
    """Layout-to-image ldm on f = 1 (pixel space), 4 and 8 first stages, the same training minutes each."""
    import genlab

    b = test_batch(args.n)
    cond = layout_cond(b)
    rows = []
    for f in args.fs or (1, 4, 8):
        h = SIZE // f
        attn = [h // 2] if f == 1 else [h, h // 2]  # no attention at 32x32: its cost is what pixel space pays
        info = train(args.work / f"ldm-layout-f{f}", "ldm", args.ldm_minutes, *LDM, "model.cond=layout",
                     "model.use_color=true", f"model.autoencoder={args.work / f'ae-f{f}'}",
                     f"model.attn_resolutions=[{','.join(map(str, attn))}]")
        run = genlab.load(args.work / f"ldm-layout-f{f}")
        images, secs = timed_sample(run, args.n, cond=cond, steps=args.steps, guidance=args.guidance)
        steps, train_s = info["step"], info.get("train_s") or 0
        row = {"model": "pixel (f=1)" if f == 1 else f"latent f={f}", "latent": f"{run.model.latent_shape}",
               "steps": steps, "train_s": round(train_s), "train_img_per_s": steps * 16 / max(train_s, 1e-9),
               "sample_s_per_img": secs / args.n, **evaluate(images, b)}
        rows.append(row)
        save_grid(images, f"layout-f{f}", captions=b["text"])
        print(row, flush=True)
    return {"n": args.n, "minutes_each": args.ldm_minutes, "sampler": f"ddim {args.steps} steps",
            "guidance": args.guidance, "rows": rows, "floor": floor(args.n)}


def stage_guidance(args) -> dict:
    """Text-to-image against the guidance scale, seen vs held-out colour-class pairs apart."""
    import genlab

    teacher = Path(args.text_run) if args.text_run else args.work / "ldm-text-f4"
    if not args.text_run:
        # data.holdout=0.9 keeps 2,000 training scenes: MiniLM embeds each new caption once (~30 ms on this CPU),
        # which would otherwise cost more than the diffusion steps of a minutes-long run
        train(teacher, "ldm", args.text_minutes, *LDM, "model.cond=text", f"model.autoencoder={args.work / 'ae-f4'}",
              "model.attn_resolutions=[8,4]", "data.holdout=0.9")
    run = genlab.load(teacher)
    b = test_batch(args.n)
    rows = []
    for s in (1, 2, 3, 5, 7):
        images, secs = timed_sample(run, args.n, cond={"text": b["text"]}, steps=args.steps, guidance=s)
        rows.append({"guidance": s, "sample_s_per_img": secs / args.n, **evaluate(images, b, split_heldout=True)})
        save_grid(images, f"text-s{s}", captions=b["text"])
        print(rows[-1], flush=True)
    return {"n": args.n, "run": str(teacher), "run_steps": run.step, "sampler": f"ddim {args.steps} steps",
            "prompts": list(b["text"][:16]), "rows": rows}


def stage_lcm(args) -> dict:
    """LCM (distilled from the f = 4 layout ldm) against its teacher with DDIM and DPM-Solver++(2M)."""
    import genlab

    teacher = args.work / "ldm-layout-f4"
    info = train(args.work / "lcm-layout-f4", "lcm", args.lcm_minutes, f"model.teacher={teacher}",
                 f"model.guidance={args.guidance}", "train.ema_decay=0.95", "model.lr=3e-4", "train.warmup_steps=10")
    lcm, ldm = genlab.load(args.work / "lcm-layout-f4"), genlab.load(teacher)
    b = test_batch(args.n)
    cond = layout_cond(b)
    rows = []
    for steps in (1, 2, 4, 8):
        for name, run, kw in (("LCM", lcm, {}), ("DDIM", ldm, {"sampler": "ddim"}),
                              ("DPM-Solver++(2M)", ldm, {"sampler": "dpmpp_2m", "sigmas": "karras" if steps > 1 else "uniform"})):
            if run is ldm:
                kw = {**kw, "guidance": args.guidance}
            images, secs = timed_sample(run, args.n, cond=cond, steps=steps, **kw)
            rows.append({"method": name, "steps": steps, "sample_s_per_img": secs / args.n, **evaluate(images, b)})
            if steps in (1, 4):
                save_grid(images, f"{name.split('(')[0].lower()}-{steps}", captions=b["text"])
            print(rows[-1], flush=True)
    return {"n": args.n, "guidance": args.guidance, "lcm_steps": info["step"], "lcm_train_s": info.get("train_s"),
            "teacher": str(teacher), "rows": rows}


def cell_masks(b: dict, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (N, 1, S, S) of the first object's grid cell, that cell's index (N,))."""
    cells = b["obj_cells"][:, 0]  # reading order: every scene has at least one object
    half = size // 2
    m = torch.zeros(len(cells), 1, size, size)
    for i, c in enumerate(cells.tolist()):
        r, col = divmod(c, 2)
        m[i, :, r * half : (r + 1) * half, col * half : (col + 1) * half] = 1
    return m, cells


def stage_inpaint(args) -> dict:
    """Fill the first object's cell of n test scenes from the layout; FD of the cell, object accuracy, L1 outside."""
    import genlab
    from genlab.data import to_uint8

    info = train(args.work / "ldm-inpaint-f4", "ldm", args.ldm_minutes, *LDM, "model.cond=layout",
                 "model.use_color=true", "model.inpaint=true", f"model.autoencoder={args.work / 'ae-f4'}",
                 "model.attn_resolutions=[8,4]")
    run = genlab.load(args.work / "ldm-inpaint-f4")
    b = test_batch(args.n)
    mask, _ = cell_masks(b)
    cond = {**layout_cond(b), "x_src": b["x"], "inpaint_mask": mask}
    images, secs = timed_sample(run, args.n, cond=cond, steps=args.steps, guidance=args.guidance)
    real = to_uint8(b["x"])
    keep = mask.expand_as(real.float()) == 0
    l1_out = ((images.float() - real.float()).abs()[keep] / 255).mean().item()
    l1_in = ((images.float() - real.float()).abs()[~keep] / 255).mean().item()
    only_cell = lambda x: (x.float() * mask).round().to(torch.uint8)  # noqa: E731  everything else black
    from genlab.metrics.protocols import evaluate as ev

    fake_f, real_f = features(only_cell(images)), features(only_cell(real))
    fd_cell = ev(fake_f, real_f, protocol=PROTOCOL, metrics=("fid",))["fid"]
    first = {k: b[k][:, :1] for k in ("obj_classes", "obj_colors", "obj_cells")}  # the object that was masked
    objects = {k: v for k, v in evaluate(images, first, metrics=("objects",)).items() if k != "empty_acc"}
    save_grid(torch.cat([(real.float() * (1 - mask)).round().to(torch.uint8)[:8], images[:8]]), "inpaint")
    row = {"steps": info["step"], "train_s": round(info.get("train_s") or 0), "fd_cell": fd_cell,
           "l1_outside": l1_out, "l1_inside": l1_in, "sample_s_per_img": secs / args.n, **objects}
    print(row, flush=True)
    return {"n": args.n, "sampler": f"ddim {args.steps} steps", "guidance": args.guidance, "rows": [row]}


STAGES = {"recon": stage_recon, "pixel": stage_pixel, "guidance": stage_guidance, "lcm": stage_lcm,
          "inpaint": stage_inpaint}


# ------------------------------------------------------------------------------------------------ tables


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(h for h, _ in cols) + " |\n| " + " | ".join("---" for _ in cols) + " |\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(k, "")) for _, k in cols) + " |\n" for r in rows)


QUALITY = [("FD", "fid"), ("CLIP", "clip_score"), ("obj acc", "obj_acc"), ("class acc", "obj_class_acc"),
           ("colour acc", "obj_color_acc")]


def markdown(d: dict) -> str:
    out = ["# Latent diffusion on 32x32 scenes (bench/latent_diffusion.py)\n",
           "2-core CPU dev machine, no GPU, shared with other jobs; OMP_NUM_THREADS=2. FD = Fréchet distance in "
           "scenes-clip feature space (not Inception), images upsampled 2x to the evaluators' 64x64 on both sides; "
           "small n, so FD is biased upward (compare rows, not with published FIDs).\n"]
    if "recon" in d:
        r = d["recon"]
        out += [f"\n## First stage: reconstruction (n = {r['n']}, {r['minutes_each']} min of training each)\n\n",
                _table(r["rows"], [("f", "f"), ("latent", "latent"), ("steps", "steps"), ("train s", "train_s"),
                                   ("PSNR dB", "psnr"), ("R-FD", "r_fd")])]
    if "pixel" in d:
        r = d["pixel"]
        out += [f"\n## Pixel vs latent, layout-to-image ({r['minutes_each']} min of training each; {r['sampler']}, "
                f"guidance {r['guidance']}; n = {r['n']})\n\n",
                _table(r["rows"] + [{"model": "data vs data", **r["floor"]}],
                       [("model", "model"), ("latent", "latent"), ("steps", "steps"), ("train img/s", "train_img_per_s"),
                        ("sample s/img", "sample_s_per_img"), *QUALITY])]
    if "guidance" in d:
        r = d["guidance"]
        out += [f"\n## Text-to-image vs guidance scale s ({r['sampler']}; n = {r['n']}; run {r['run_steps']} steps)\n\n",
                _table(r["rows"], [("s", "guidance"), *QUALITY, ("CLIP seen", "clip_score_seen"),
                                   ("CLIP held-out", "clip_score_heldout"), ("obj acc seen", "obj_acc_seen"),
                                   ("obj acc held-out", "obj_acc_heldout"), ("colour seen", "obj_color_acc_seen"),
                                   ("colour held-out", "obj_color_acc_heldout")])]
    if "lcm" in d:
        r = d["lcm"]
        out += [f"\n## LCM vs DDIM and DPM-Solver++(2M) (guidance {r['guidance']}; LCM {r['lcm_steps']} distillation "
                f"steps; n = {r['n']})\n\n",
                _table(r["rows"], [("method", "method"), ("steps", "steps"), ("s/img", "sample_s_per_img"), *QUALITY])]
    if "inpaint" in d:
        r = d["inpaint"]
        out += [f"\n## Inpainting one object's cell ({r['sampler']}, guidance {r['guidance']}; n = {r['n']})\n\n",
                _table(r["rows"], [("steps", "steps"), ("FD of the cell", "fd_cell"), ("obj acc", "obj_acc"),
                                   ("class acc", "obj_class_acc"), ("colour acc", "obj_color_acc"),
                                   ("L1 outside", "l1_outside"), ("L1 inside", "l1_inside")])]
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=list(STAGES), required=True)
    ap.add_argument("--work", type=Path, default=Path("/work/runs/bench-ld"))
    ap.add_argument("--n", type=int, default=500, help="evaluated images per row")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps of the ldm rows")
    ap.add_argument("--guidance", type=float, default=3.0, help="CFG scale s of the ldm rows and the LCM")
    ap.add_argument("--ae-minutes", type=float, default=1.0)
    ap.add_argument("--ldm-minutes", type=float, default=1.5)
    ap.add_argument("--text-minutes", type=float, default=2.0)
    ap.add_argument("--lcm-minutes", type=float, default=1.5)
    ap.add_argument("--text-run", default="", help="reuse a trained text ldm run for the guidance stage")
    ap.add_argument("--fs", type=lambda s: [int(v) for v in s.split(",")], default=None,
                    help="recon / pixel: only these downsampling factors (e.g. 4, to get a teacher early)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t = time.perf_counter()
    payload = STAGES[args.stage](args)
    payload["wall_s"] = round(time.perf_counter() - t)
    payload["command"] = f"env OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python bench/latent_diffusion.py " \
                         + " ".join(sys.argv[1:])
    merge(args.stage, payload)
    print(f"stage {args.stage}: {payload['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
