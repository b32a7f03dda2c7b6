"""Build `RUN/report.html` (+ PNGs under `RUN/report/`) from what a run directory holds.

Everything comes from files a run writes (config.yaml, run.json, metrics.jsonl, samples/, checkpoints/), so
`genlab report RUN` can rebuild the page at any time, also for a run that crashed or is still going.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from genlab.data import to_uint8
from genlab.data.png import save_grid


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(records: list[dict], path: Path) -> Path | None:
    """One panel per logged quantity (loss terms), against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in records[0] if k not in ("step", "lr", "time_s")] if records else []
    if not keys:
        return None
    panels: dict[str, list[str]] = {}  # keys sharing a prefix share a panel: loss_d + loss_g, d_acc_real + d_acc_fake
    for k in keys:
        prefix = k.rsplit("_", 1)[0] if "_" in k else k
        group = prefix if sum(x.rsplit("_", 1)[0] == prefix for x in keys if "_" in x) > 1 else k
        panels.setdefault(group, []).append(k)
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, (title, group) in zip(axes[0], panels.items()):
        for k in group:
            ax.plot(steps, [r.get(k) for r in records], lw=1, label=k, marker="o" if len(steps) < 3 else None)
        if len(group) > 1:
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_points(points: torch.Tensor, data: torch.Tensor | None, path: Path, title: str, modes=None) -> Path:
    """Scatter of 2-D samples over the training data; `modes` = (means, std) draws each mixture component's
    centre and its 3-sigma "high quality" circle (the VEEGAN/PacGAN criterion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if data is not None:
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.75", label="data")
    ax.scatter(points[:, 0], points[:, 1], s=3, c="tab:red", label="samples")
    if modes is not None:
        means, std = modes
        ax.scatter(means[:, 0], means[:, 1], marker="x", s=30, c="k", lw=1, label="mode centres")
        for m in means.tolist():
            ax.add_patch(plt.Circle(m, 3 * std, fill=False, ec="k", lw=0.5))
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _img(path: Path, root: Path, caption: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    rel = html.escape(str(path.relative_to(root)))
    return f'<figure><img src="{rel}"{w} alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def write_report(run_dir: str | Path, *, family_pictures: bool = True, latent_method: str = "pca") -> Path:
    """Write RUN/report.html and return its path (`latent_method`: pca | tsne for latents of > 2 dims)."""
    from genlab.training.run import load_run

    run_dir = Path(run_dir)
    assets = run_dir / "report"
    assets.mkdir(parents=True, exist_ok=True)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else "(no config.yaml)"
    records = _read_jsonl(run_dir / "metrics.jsonl")
    evals = _read_jsonl(run_dir / "eval.jsonl")
    sections = []

    # ---- samples (newest last) and how they changed over training
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    point_files = sorted((run_dir / "samples").glob("step-*.safetensors"))
    run = None
    try:
        run = load_run(run_dir)
    except Exception as e:  # a report of a broken run still shows what there is
        sections.append(f"<p class=warn>Model not loaded: {html.escape(str(e))}</p>")
    if grids:
        figs = [_img(grids[-1], run_dir, f"samples at {grids[-1].stem} (EMA weights, fixed seed)", 420)]
        figs += [_img(g, run_dir, g.stem, 160) for g in grids[-6:-1]]
        sections.append("<h2>Samples</h2>" + figs[0] + ("<h3>Over training</h3>" + "".join(figs[1:]) if figs[1:] else ""))
    elif point_files:
        from safetensors.torch import load_file

        data = None
        if run is not None:
            from genlab.training.loop import load_data

            data = load_data(run.config).x[:5000]
        from genlab.data.toys import toy_modes

        modes = toy_modes(info.get("data", "")) if info.get("data") in ("ring8", "grid25") else None
        figs = []
        for p in point_files[-4:]:
            png = plot_points(load_file(str(p))["points"], data, assets / f"{p.stem}-points.png", p.stem, modes)
            extra = ", mode centres (x) with 3-sigma circles" if modes else ""
            figs.append(_img(png, run_dir, f"samples (red) over data (grey){extra}, {p.stem}", 360))
        sections.append("<h2>Samples</h2>" + "".join(reversed(figs)))

    # ---- family pictures (denoising strip, reconstructions, ...)
    if run is not None and family_pictures and hasattr(run.family, "report_images"):
        from genlab.training.loop import load_data

        data = load_data(run.config, "test")
        batch = data.get(torch.arange(min(16, len(data))))
        pictures = run.family.report_images(run.model, batch, torch.Generator().manual_seed(0))
        for name, strip in pictures.items():
            png = save_grid(to_uint8(strip), assets / f"{name}.png")
            sections.append(f"<h2>{html.escape(name.capitalize())}</h2>" + _img(png, run_dir, _CAPTIONS.get(name, name)))

    # ---- latent space (families with encode/decode)
    if run is not None and family_pictures and hasattr(run.family, "encode") and hasattr(run.family, "decode"):
        sections.append(_latent_section(run, run_dir, assets, latent_method))

    # ---- curves
    loss_png = plot_losses(records, assets / "losses.png")
    if loss_png:
        sections.append("<h2>Training curves</h2>" + _img(loss_png, run_dir, "losses logged in metrics.jsonl"))

    # ---- metrics table slot
    if evals:
        keys = [k for k in evals[-1] if k not in ("step",)]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["step", *keys])
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(e.get(k)))}</td>" for k in ["step", *keys]) + "</tr>" for e in evals)
        sections.append(f"<h2>Metrics</h2><table><tr>{head}</tr>{rows}</table>")
    else:
        sections.append("<h2>Metrics</h2><p>No evaluation recorded for this run yet (eval.jsonl is empty).</p>")

    # ---- timings and status
    timing_rows = [(k, _fmt(info[k])) for k in ("status", "step", "processes", "train_s", "images_per_s", "sample_s", "updated") if k in info]
    if run is not None:
        n_params = sum(p.numel() for p in run.model.parameters())
        timing_rows.append(("parameters", f"{n_params:,}"))
    sections.append("<h2>Run</h2>" + _table(timing_rows))
    sections.append(f"<h2>Resolved config</h2><pre>{html.escape(config_text)}</pre>")

    title = f"genlab run {run_dir.name}: {info.get('family', '?')} on {info.get('data', '?')}"
    page = _PAGE.format(title=html.escape(title), body="\n".join(sections))
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _latent_section(run, run_dir: Path, assets: Path, method: str, n: int = 2000) -> str:
    """Test latents in 2-D coloured by class, and interpolation strips between pairs of test images."""
    from genlab.report.latents import encode_all, interpolations, plot_latents, project_2d
    from genlab.training.loop import load_data

    data = load_data(run.config, "test")
    x, y = data.get(torch.arange(min(n, len(data))))
    z = encode_all(run.family, run.model, x)
    how = "the latents themselves" if z.shape[1] <= 2 else f"{method.upper()} of {z.shape[1]}-d latents"
    png = plot_latents(project_2d(z, method), y, data.classes, assets / "latents.png", how)
    out = "<h2>Latent space</h2>" + _img(png, run_dir, f"{len(x)} test inputs encoded; {how}, coloured by class", 480)
    if data.is_image:
        strip = interpolations(run.family, run.model, x[:8], x[8:16])  # (8, 10, C, H, W)
        png = save_grid(to_uint8(strip), assets / "interpolations.png")
        out += _img(png, run_dir, "latent interpolation: each row decodes the straight line from one test image's "
                    "latent (left) to another's (right)")
    return out


_CAPTIONS = {
    "denoising": "DDIM denoising: each row one image, from pure noise x_T (left) to the sample x_0 (right)",
    "reconstructions": "top: test images; bottom: their reconstructions (posterior mean / nearest codes)",
    "denoised": "rows: corrupted test images, the denoising AE's outputs, the clean images",
}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figcaption {{ font-size: 0.85em; color: #555; max-width: 420px; }}
img {{ image-rendering: pixelated; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }} .warn {{ color: #a40; }}
</style></head>
<body><h1>{title}</h1>
{body}
<p style="color:#888;font-size:0.8em">Written by genlab report.</p>
</body></html>
"""
