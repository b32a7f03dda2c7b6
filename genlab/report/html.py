"""Build `RUN/report.html` (+ PNGs under `RUN/report/`) from what a run directory holds.

Everything comes from files a run writes (config.yaml, run.json, metrics.jsonl, eval.jsonl, samples/,
checkpoints/), so `genlab report RUN` can rebuild the page at any time, also for a run that crashed or is still
going. The page is one static HTML file (no scripts, nothing fetched) that never needs to scroll sideways:
images and figures shrink to the page's width, wide tables and code scroll inside their own box.
"""

from __future__ import annotations

import html
import json
import re
import shlex
from pathlib import Path

import torch

from genlab.data import to_uint8
from genlab.data.png import save_grid
from genlab.report.plots import plot_losses, plot_points
from genlab.report.text import METRICS, count, duration, metric_cell, metric_columns, metric_label, rate

__all__ = ["write_report", "plot_losses", "plot_points"]

SAMPLE_WIDTH = 640  # CSS px for the newest sample grid (scaled by whole or half steps, pixelated)
STRIP_WIDTH = 960  # CSS px at most for family strips (reconstructions, denoising)
OVER_TRAINING = 6  # grids shown side by side, spread evenly over training (the newest included)
EVAL_N = 2000  # the quick evaluation the page suggests


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _load_data(cfg, split: str = "train"):
    try:
        from genlab.training.data import load_data
    except ImportError:  # older layout: the loop module held it
        from genlab.training.loop import load_data
    return load_data(cfg, split)


def _read_config(run_dir: Path) -> tuple[str, dict]:
    path = run_dir / "config.yaml"
    if not path.exists():
        return "(no config.yaml)", {}
    import yaml

    text = path.read_text()
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError:
        cfg = None
    return text, cfg if isinstance(cfg, dict) else {}


def _e(s) -> str:
    return html.escape(str(s))


def _step_of(path: Path) -> int | None:
    m = re.search(r"step-(\d+)", path.stem)
    return int(m.group(1)) if m else None


def _step_label(path: Path) -> str:
    step = _step_of(path)
    return f"step {step:,}" if step is not None else path.stem


def _spread(items: list, k: int) -> list:
    """k items spread evenly over the list, first and last included."""
    if len(items) <= k:
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


def _png_width(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.width


def _scaled_width(natural: int, target: int) -> int:
    """Display width near `target`: the natural width times a multiple of 1/2 (>= 1), so the 2x or 4x enlarged
    grids that save_grid writes keep square pixels; CSS max-width shrinks it on narrow screens."""
    k = max(1.0, round(2 * target / max(natural, 1)) / 2)
    return int(natural * k)


def _strip_width(png: Path) -> int:
    """Family strips (reconstructions, denoising, interpolations): enlarged up to the sample grid's width."""
    natural = _png_width(png)
    return _scaled_width(natural, min(STRIP_WIDTH, max(natural, SAMPLE_WIDTH)))


def _img(path: Path, root: Path, caption: str, *, width: int | None = None, pixels: bool = False,
         cls: str = "") -> str:
    """A figure; `pixels` marks a grid of small images (upscaled without blurring)."""
    rel = _e(path.relative_to(root).as_posix())
    style = f' style="width:{width}px"' if width else ""
    klass = " ".join(c for c in ("px" if pixels else "", cls) if c)
    klass = f' class="{klass}"' if klass else ""
    return (f'<figure{klass}><img src="{rel}"{style} alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<div class="scroll"><table class="kv">{body}</table></div>'


def _section(anchor: str, title: str, intro: str, body: str) -> str:
    intro = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{intro}{body}</section>'


def _code(text: str) -> str:
    return f"<code>{_e(text)}</code>"


def _every(n) -> str:
    return f"every {count(n)} steps" if isinstance(n, int) and n > 1 else "every step"


def _get(d: dict, dotted: str, default=None):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def write_report(run_dir: str | Path, *, family_pictures: bool = True, latent_method: str = "pca") -> Path:
    """Write RUN/report.html and return its path (`latent_method`: pca | tsne for latents of > 2 dims)."""
    from genlab.training.run import load_run

    run_dir = Path(run_dir)
    assets = run_dir / "report"
    assets.mkdir(parents=True, exist_ok=True)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    config_text, cfg = _read_config(run_dir)
    family = info.get("family") or cfg.get("family") or "?"
    data_name = info.get("data") or _get(cfg, "data.name") or "?"
    records = _read_jsonl(run_dir / "metrics.jsonl")
    evals = _read_jsonl(run_dir / "eval.jsonl")
    sections = []

    run, load_error = None, ""
    if (run_dir / "checkpoints").is_dir():
        try:
            run = load_run(run_dir)
        except Exception as e:  # a report of a broken run still shows what there is
            load_error = str(e)
    else:
        load_error = "no checkpoints/ folder yet"

    # ---- samples: the newest grid large, then a row over training (same seed, so the same noise in each)
    grids = sorted((run_dir / "samples").glob("step-*.png"), key=lambda p: (_step_of(p) or 0, p.name))
    point_files = sorted((run_dir / "samples").glob("step-*.safetensors"), key=lambda p: (_step_of(p) or 0, p.name))
    weights = "the EMA weights" if (_get(cfg, "train.ema_decay", 0) or 0) > 0 else "the trained weights"
    seed_note = (f"Each grid is drawn from {weights} with the same seed (train.seed), so grids at different steps "
                 "start from the same noise and can be compared tile by tile.")
    if grids:
        newest = grids[-1]
        body = _img(newest, run_dir, f"samples at {_step_label(newest)} (newest)", pixels=True, cls="hero",
                    width=_scaled_width(_png_width(newest), SAMPLE_WIDTH))
        if len(grids) > 1:
            chosen = _spread(grids, OVER_TRAINING)
            row = "".join(_img(g, run_dir, _step_label(g), pixels=True) for g in chosen)
            cols = 2 if len(chosen) in (2, 4) else 3  # few, large columns: a grid must stay readable
            body += f'<h3>Over training</h3><div class="row" style="--cols:{cols}">{row}</div>'
        sections.append(_section("samples", "Samples", seed_note, body))
    elif point_files:
        from safetensors.torch import load_file

        data = None
        if run is not None:
            data = _load_data(run.config).x[:5000]
        from genlab.data.toys import toy_modes

        modes = toy_modes(data_name) if data_name in ("ring8", "grid25") else None
        pngs = [(p, plot_points(load_file(str(p))["points"], data, assets / f"{p.stem}-points.png", _step_label(p),
                                modes)) for p in _spread(point_files, 4)]
        extra = "; black crosses mark the mode centres, circles their 3-sigma regions" if modes else ""
        intro = f"2-D samples (red) over the training data (grey){extra}. {seed_note}"
        body = _img(pngs[-1][1], run_dir, f"samples at {_step_label(pngs[-1][0])} (newest)", cls="plot")
        if len(pngs) > 1:
            body += '<h3>Over training</h3><div class="row">' + "".join(
                _img(png, run_dir, _step_label(p)) for p, png in pngs) + "</div>"
        sections.append(_section("samples", "Samples", intro, body))
    else:
        sections.append(_section("samples", "Samples", "", "<p>No sample grids: this family has no prior to sample "
                                 "from (see the reconstructions), or the run has not written any yet.</p>"))

    # ---- family pictures (denoising strip, reconstructions, ...)
    if run is not None and family_pictures and hasattr(run.family, "report_images"):
        data = _load_data(run.config, "test")
        idx = torch.arange(min(16, len(data)))
        batch = data.batch(idx) if hasattr(data, "batch") else data.get(idx)  # a dict batch (the family contract)
        pictures = run.family.report_images(run.model, batch, torch.Generator().manual_seed(0))
        for name, strip in pictures.items():
            if name == "prompts" and "text" in batch:  # text-to-image samples: each caption under its image
                from genlab.report.prompts import save_captioned_grid

                png = save_captioned_grid(to_uint8(strip), list(batch["text"][: len(strip)]), assets / f"{name}.png")
            else:
                png = save_grid(to_uint8(strip), assets / f"{name}.png")
            fig = _img(png, run_dir, _CAPTIONS.get(name, name), pixels=True, width=_strip_width(png))
            sections.append(_section(name, name.capitalize(), _INTROS.get(name, ""), fig))

    # ---- latent space (families with encode/decode)
    if run is not None and family_pictures and hasattr(run.family, "encode") and hasattr(run.family, "decode"):
        sections.append(_latent_section(run, run_dir, assets, latent_method))

    # ---- curves
    loss_png = plot_losses(records, assets / "losses.png")
    if loss_png:
        n_pts = len(records)
        sections.append(_section(
            "curves", "Training curves",
            f"What the training step returned, logged {_every(_get(cfg, 'train.log_every', 1))} "
            f"({count(n_pts)} points in metrics.jsonl, averaged over processes). Faint lines are the raw values, "
            "solid ones an exponential moving average; a y axis is logarithmic where all its values are positive, "
            "so an early spike does not flatten the rest. A falling loss says the objective improves, not that "
            "samples look better: for that, see the samples and the metrics.",
            _img(loss_png, run_dir, "losses and other values logged in metrics.jsonl, against the training step",
                 cls="plot")))
    else:
        sections.append(_section("curves", "Training curves", "", "<p>No losses logged yet (metrics.jsonl is "
                                 "missing or empty).</p>"))

    # ---- metrics
    sections.append(_metrics_section(evals, run_dir, data_name))

    # ---- run facts and the config
    facts = _facts(info, cfg, run)
    if load_error:
        facts.append(("model", f'<span class="muted">not loaded ({_e(load_error)}): pictures that need the model '
                               "(reconstructions, latents) are left out</span>"))
    sections.append(_section("run", "Run", "Where the time went and what was saved.", _table(facts)))
    sections.append(_section("config", "Resolved config", "Every setting of this run, defaults included "
                             "(config.yaml): pass it to <code>--config</code> to train the same run again.",
                             _config_blocks(config_text)))

    title = f"{family} on {data_name}"
    page = _PAGE.format(title=_e(f"{title} - genlab run {run_dir.name}"), header=_header(run_dir, info, cfg, run,
                        family, data_name, evals), nav=_nav(sections), body="\n".join(sections))
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _config_blocks(text: str) -> str:
    """config.yaml cut at its top-level sections (data, train, eval, model), laid out side by side."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        opened = any(x.rstrip().endswith(":") for x in blocks[-1] if x and not x[0].isspace())
        if line and not line[0].isspace() and line.rstrip().endswith(":") and opened:  # top-level scalars stay
            blocks.append([])
        blocks[-1].append(line)
    pres = "".join(f"<pre>{_e(chr(10).join(b).strip(chr(10)))}</pre>" for b in blocks if any(x.strip() for x in b))
    return f'<div class="config">{pres}</div>'


# ---------------------------------------------------------------------------------------------------------- header
_STATUS = {
    "done": "training finished",
    "running": "this page is a snapshot of a run still going: <code>genlab report RUN</code> rewrites it",
    "diverged": "a loss became NaN or inf: training stopped; the last good checkpoint is kept",
}


def reproduce_command(run_dir: Path, info: dict, cfg: dict) -> str:
    """The command line that made the run (run.json 'command'), or one rebuilt from its resolved config."""
    cmd = info.get("command")
    if isinstance(cmd, list):
        return shlex.join(str(c) for c in cmd)
    if isinstance(cmd, str) and cmd.strip():
        return cmd.strip()
    family = info.get("family") or cfg.get("family") or "FAMILY"
    data = info.get("data") or _get(cfg, "data.name") or "DATA"
    return f"genlab train {family} --data {shlex.quote(str(data))} --config {shlex.quote(str(run_dir / 'config.yaml'))}"


def _header(run_dir: Path, info: dict, cfg: dict, run, family: str, data: str, evals: list[dict]) -> str:
    status = info.get("status", "unknown")
    step, total = info.get("step"), _get(cfg, "train.steps")
    steps = count(step) if step is not None else "-"
    if isinstance(step, int) and isinstance(total, int) and total > 0 and step != total:
        steps += f" of {count(total)}"
    cards = [("status", f'<span class="status {_e(status)}">{_e(status)}</span>'), ("steps", steps)]
    if "train_s" in info:
        cards.append(("training time", duration(info["train_s"])))
    if "images_per_s" in info:
        cards.append(("throughput", rate(info["images_per_s"])))
    if run is not None:
        cards.append(("parameters", count(sum(p.numel() for p in run.model.parameters()))))
    latest = next((e for e in reversed(evals) if isinstance(e.get("fid"), (int, float))), None)
    if latest is not None:
        floor = (latest.get("floor") or {}).get("fid")
        extra = f' <span class="muted">(floor {metric_cell("fid", latest["floor"])})</span>' if isinstance(floor, (int, float)) else ""
        cards.append((f"FID \u2193 at step {count(latest.get('step', '?'))}", metric_cell("fid", latest) + extra))
    dl = "".join(f"<div><dt>{_e(k)}</dt><dd>{v}</dd></div>" for k, v in cards)
    status_note = _STATUS.get(status, "").replace("RUN", _e(shlex.quote(str(run_dir))))
    cmd = reproduce_command(run_dir, info, cfg)
    where = f"run folder {_code(str(run_dir))}"
    if info.get("updated"):
        where += f" &middot; updated {_e(info['updated'])}"
    if info.get("genlab_version"):
        where += f" &middot; genlab {_e(info['genlab_version'])}"
    rebuilt = "" if info.get("command") else (' <span class="muted">(rebuilt from config.yaml; add '
                                              "<code>--out DIR</code> to train into a new folder)</span>")
    return (f'<header><p class="kicker">genlab run report</p><h1>{_e(family)} on {_e(data)}</h1>'
            f'<p class="muted">{where}</p><dl class="cards">{dl}</dl>'
            + (f'<p class="muted">{status_note}</p>' if status_note else "")
            + f'<p class="repro">Reproduce:{rebuilt}</p><pre class="cmd">{_e(cmd)}</pre></header>')


def _nav(sections: list[str]) -> str:
    links = re.findall(r'<section id="([^"]+)"><h2>([^<]+)</h2>', "".join(sections))
    return "<nav>" + " ".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>"


def _facts(info: dict, cfg: dict, run) -> list[tuple[str, str]]:
    rows = []
    if "status" in info:
        rows.append(("status", _e(info["status"])))
    if "step" in info:
        rows.append(("steps done", count(info["step"])))
    batch = _get(cfg, "train.batch_size")
    if isinstance(batch, int):
        accum = _get(cfg, "train.grad_accum", 1) or 1
        procs = info.get("processes", 1) or 1
        rows.append(("images per step", f"{count(batch * accum * procs)} ({count(batch)} per process"
                     f"{f' x {accum} accumulated' if accum > 1 else ''}{f' x {procs} processes' if procs > 1 else ''})"))
    if "train_s" in info:
        per_step = info["train_s"] / info["step"] if info.get("step") else None
        rows.append(("training time", duration(info["train_s"])
                     + (f" ({duration(per_step)} per step)" if per_step else "")))
    if "train_cpu_s" in info:  # CPU seconds of the main process: the wall time on a machine others shared
        rows.append(("training CPU time", duration(info["train_cpu_s"]) + " (main process, all its threads)"))
    if "images_per_s" in info:
        rows.append(("throughput", rate(info["images_per_s"])))
    if "sample_s" in info:
        rows.append(("final sample grid", duration(info["sample_s"])))
    if "processes" in info:
        rows.append(("processes", count(info["processes"])))
    if run is not None:
        rows.append(("parameters", count(sum(p.numel() for p in run.model.parameters()))))
        path = getattr(getattr(run, "checkpoint", None), "path", None)
        name = Path(path).with_suffix("").name if path else f"step {run.step}"
        rows.append(("checkpoint loaded", f"{_code(name)} (the newest valid one; step {count(run.step)})"))
    for name, dep in (info.get("deps") or {}).items():  # frozen runs this one builds on (autoencoder, teacher, ...)
        if isinstance(dep, dict) and "source" in dep:
            text = f"{dep.get('family', '?')} run {dep['source']} at step {dep.get('source_step', '?')}"
            sha = str(dep.get("source_sha256", ""))[:12]
            rows.append((f"uses {name}", _code(text) + (f" (sha256 {_e(sha)}...)" if sha else "")))
        else:
            rows.append((f"uses {name}", _code(json.dumps(dep))))
    for k in ("genlab_version", "updated"):
        if k in info:
            rows.append((k.replace("_", " "), _e(info[k])))
    return rows


# --------------------------------------------------------------------------------------------------------- metrics
def _metrics_section(evals: list[dict], run_dir: Path, data_name: str) -> str:
    run_arg = shlex.quote(str(run_dir))
    intro = ("Samples and real images go through the same evaluator network; the metrics compare the two sets of "
             "features. Arrows say which way is better. A number means little alone: compare it with the floor, "
             "real data against real data at the same n, which is the best a model can hope for.")
    if not evals:
        body = (f"<p><strong>No evaluation yet.</strong> Run</p><pre class=\"cmd\">genlab eval {_e(run_arg)} "
                f"--n {EVAL_N}</pre><p>to sample {count(EVAL_N)} images and score them (a quick look; drop "
                "<code>--n</code> for the protocol's full n, the number to compare across runs, or set "
                "<code>eval.every</code> to evaluate during training). It prints the floor row beside the model's "
                "and adds a line to eval.jsonl, which this page shows after <code>genlab report "
                f"{_e(run_arg)}</code>.</p>"
                + (f'<p class="muted">{_e(data_name)} has no evaluation protocol of its own; pass '
                   "<code>--protocol</code>.</p>" if _protocol_for(data_name) is None else "")
                + "<h3>What it measures</h3>" + _glossary(["fid", "kid", "precision", "recall", "density", "coverage"]))
        return _section("metrics", "Metrics", intro, body)

    keys = metric_columns(evals)
    head = "<tr><th>images</th><th>step</th><th>n</th>" + "".join(
        f'<th title="{_e(METRICS[k].explain) if k in METRICS else ""}">{_e(metric_label(k))}</th>' for k in keys) + "</tr>"
    rows, groups, no_floor = [], {}, []
    for e in evals:  # one block per (protocol, n): its floor row first, then the model's rows
        groups.setdefault((e.get("protocol"), e.get("n")), []).append(e)
    for (protocol, n), group in groups.items():
        floor = next((g["floor"] for g in reversed(group) if isinstance(g.get("floor"), dict)), None)
        where = f"{protocol}" if protocol else "-"
        if floor is not None:
            rows.append(f'<tr class="floor"><td>real data vs real data <span class="muted">({_e(where)})</span></td>'
                        f"<td>-</td><td>{count(n) if n is not None else '-'}</td>"
                        + "".join(f"<td>{_e(metric_cell(k, floor))}</td>" for k in keys) + "</tr>")
        else:
            no_floor.append((protocol, n))
        for e in group:
            rows.append(f'<tr><td>model <span class="muted">({_e(where)})</span></td><td>{count(e.get("step", "-"))}</td>'
                        f"<td>{count(n) if n is not None else '-'}</td>"
                        + "".join(f"<td>{_e(metric_cell(k, e))}</td>" for k in keys) + "</tr>")
    body = f'<div class="scroll"><table class="metrics">{head}{"".join(rows)}</table></div>'
    body += _reading(evals[-1])
    for protocol, n in no_floor:
        cmd = f"genlab eval data --protocol {protocol or 'P'} --n {n or 'N'}"
        body += (f"<p>No floor was recorded with the {_e(protocol or '')} n = {_e(count(n) if n else '?')} results: "
                 f"the floor is what <code>{_e(cmd)}</code> prints.</p>")
    body += _glossary(keys)
    return _section("metrics", "Metrics", intro, body)


def _glossary(keys: list[str]) -> str:
    items = "".join(f"<dt>{_e(metric_label(k))}</dt><dd>{_e(METRICS[k].explain)}</dd>" for k in keys if k in METRICS)
    return f'<dl class="glossary">{items}</dl>' if items else ""


def _reading(latest: dict) -> str:
    """One sentence putting the latest FID against its floor."""
    fid, floor = latest.get("fid"), (latest.get("floor") or {}).get("fid")
    if not isinstance(fid, (int, float)) or not isinstance(floor, (int, float)):
        return ""
    ratio = f" ({fid / floor:.1f}x the floor)" if floor > 0 else ""
    return (f'<p class="reading">At step {count(latest.get("step", "?"))}, FID is {metric_cell("fid", latest)} where '
            f"real data scores {metric_cell('fid', latest['floor'])}{ratio} at the same n: the closer to the floor, the "
            "closer the samples' feature statistics are to the data's.</p>")


def _protocol_for(data_name: str):
    try:
        from genlab.metrics.protocols import protocol_for_dataset

        return protocol_for_dataset(data_name)
    except Exception:
        return None


# --------------------------------------------------------------------------------------------------------- latents
def _latent_section(run, run_dir: Path, assets: Path, method: str, n: int = 2000) -> str:
    """Test latents in 2-D coloured by class, and interpolation strips between pairs of test images."""
    from genlab.report.latents import encode_all, interpolations, plot_latents, project_2d

    data = _load_data(run.config, "test")
    x, y = data.get(torch.arange(min(n, len(data))))
    z = encode_all(run.family, run.model, x)
    how = "the latents themselves" if z.shape[1] <= 2 else f"{method.upper()} of {z.shape[1]}-d latents"
    png = plot_latents(project_2d(z, method), y, data.classes, assets / "latents.png", how)
    body = _img(png, run_dir, f"{len(x)} test inputs encoded; {how}, coloured by class", cls="plot")
    if data.is_image:
        strip = interpolations(run.family, run.model, x[:8], x[8:16])  # (8, 10, C, H, W)
        png = save_grid(to_uint8(strip), assets / "interpolations.png")
        body += "<h3>Interpolations</h3>" + _img(png, run_dir, "latent interpolation: each row decodes the straight line from one test image's "
                     "latent (left) to another's (right)", pixels=True,
                     width=_strip_width(png))
    intro = ("Where the encoder puts test images. Classes the model was never told about falling into separate "
             "clusters means the latent space captured them; smooth interpolations mean nearby latents decode to "
             "similar images.")
    return _section("latents", "Latent space", intro, body)


_CAPTIONS = {
    "denoising": "DDIM denoising: each row one image, from pure noise x_T (left) to the sample x_0 (right)",
    "reconstructions": "top: test images; bottom: their reconstructions (posterior mean / nearest codes)",
    "denoised": "rows: corrupted test images, the denoising AE's outputs, the clean images",
}
_INTROS = {
    "denoising": "The reverse process at work: noise turns into an image step by step.",
    "reconstructions": "Test images through the encoder and back: what the bottleneck keeps and what it loses.",
    "denoised": "Corrupted test images and what the denoising autoencoder makes of them.",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
*, *::before, *::after {{ box-sizing: border-box; }}
body {{ font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 0 auto;
  padding: 1.5em 1em 3em; color: #1d1d1f; background: #fff; overflow-wrap: break-word; }}
h1 {{ margin: 0.1em 0 0.2em; font-size: 2em; }} h2 {{ margin: 1.6em 0 0.3em; border-bottom: 1px solid #e3e3e3; }}
h3 {{ margin: 1.2em 0 0.4em; font-size: 1.05em; color: #444; }}
.kicker {{ margin: 0; text-transform: uppercase; letter-spacing: 0.08em; font-size: 0.75em; color: #888; }}
.muted {{ color: #6b6b6b; }} .intro {{ color: #444; max-width: 60em; }}
code, pre {{ font: 0.9em/1.45 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }}
code {{ background: #f3f3f3; padding: 0.05em 0.3em; border-radius: 3px; overflow-wrap: anywhere; }}
pre {{ background: #f6f6f6; padding: 0.8em 1em; overflow-x: auto; max-width: 100%; border-radius: 4px; }}
pre.cmd {{ background: #1f2430; color: #e6e6e6; white-space: pre-wrap; overflow-wrap: anywhere; }}
.config {{ columns: 3 16em; column-gap: 1em; }} .config pre {{ break-inside: avoid; margin: 0 0 1em; }}
.repro {{ margin: 1em 0 0.2em; }}
nav {{ position: sticky; top: 0; background: rgba(255,255,255,0.95); padding: 0.5em 0; border-bottom: 1px solid #eee;
  display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; font-size: 0.9em; z-index: 1; }}
nav a {{ color: #2a5db0; text-decoration: none; }}
dl.cards {{ display: flex; flex-wrap: wrap; gap: 0.6em; margin: 1em 0; }}
dl.cards div {{ background: #f5f7fa; border: 1px solid #e3e7ee; border-radius: 6px; padding: 0.4em 0.9em; min-width: 8em; }}
dl.cards dt {{ font-size: 0.75em; color: #666; text-transform: uppercase; letter-spacing: 0.04em; }}
dl.cards dd {{ margin: 0; font-size: 1.15em; font-weight: 600; }}
.status {{ padding: 0 0.4em; border-radius: 4px; }} .status.done {{ background: #dff3e4; color: #17602b; }}
.status.running {{ background: #e3edfb; color: #1f4f99; }} .status.diverged {{ background: #fbe3e3; color: #8c1d1d; }}
figure {{ margin: 0.6em 0; max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; margin-top: 0.2em; }}
img {{ max-width: 100%; height: auto; display: block; }}
figure.px img {{ image-rendering: pixelated; border: 1px solid #ddd; }}
.row {{ display: grid; grid-template-columns: repeat(var(--cols, 3), minmax(0, 1fr)); gap: 0.8em; }}
@media (max-width: 700px) {{ .row {{ grid-template-columns: repeat(2, minmax(0, 1fr)); }} }}
.row figure {{ margin: 0; }} .row img {{ width: 100%; }}
.scroll {{ overflow-x: auto; max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 0.92em; }}
th, td {{ border: 1px solid #e0e0e0; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }}
table.metrics td {{ text-align: right; white-space: nowrap; }} table.metrics td:first-child {{ text-align: left; }}
table.metrics th {{ background: #f5f7fa; white-space: nowrap; }}
tr.floor td {{ background: #f3f8ef; font-style: italic; }}
table.kv th {{ background: #fafafa; font-weight: 600; white-space: nowrap; }}
dl.glossary {{ display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 0.25em 1em; font-size: 0.92em; }}
dl.glossary dt {{ font-weight: 600; }} dl.glossary dd {{ margin: 0; color: #444; }}
.reading {{ background: #fffbea; border-left: 3px solid #e6c200; padding: 0.4em 0.8em; }}
footer {{ margin-top: 3em; color: #888; font-size: 0.8em; }}
</style></head>
<body>
{header}
{nav}
{body}
<footer>Written by <code>genlab report</code> from the files in the run folder; run it again to refresh this page.</footer>
</body></html>
"""
