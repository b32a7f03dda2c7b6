"""Matplotlib figures for the report (Agg backend, PNG files): training curves and 2-D sample scatters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

NOT_CURVES = ("step", "lr", "time_s")  # logged beside the losses, plotted differently or not at all
MAX_COLS = 3  # panels per row: keeps the figure within the page at any number of losses


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing); NaNs (missing values) are skipped."""
    out, acc, norm = np.full(len(values), np.nan), 0.0, 0.0
    for i, v in enumerate(values):
        if math.isfinite(v):
            acc, norm = weight * acc + (1 - weight) * v, weight * norm + (1 - weight)
        if norm > 0:
            out[i] = acc / norm
    return out


def smoothing_weight(n: int) -> float:
    """0 (no smoothing) up to ~10 points, then an EMA spanning about n/10 points (0.9 at 100, 0.99 at 1,000)."""
    return min(0.99, max(0.0, 1 - 10 / n)) if n else 0.0


def loss_panels(keys: list[str]) -> dict[str, list[str]]:
    """Keys sharing a prefix share a panel: loss_d + loss_g, d_acc_real + d_acc_fake; the rest get one each."""
    panels: dict[str, list[str]] = {}
    for k in keys:
        prefix = k.rsplit("_", 1)[0] if "_" in k else k
        group = prefix if sum(x.rsplit("_", 1)[0] == prefix for x in keys if "_" in x) > 1 else k
        panels.setdefault(group, []).append(k)
    return panels


def _minor_label(y: float, _pos) -> str:
    mantissa = round(y / 10 ** math.floor(math.log10(y))) if y > 0 else 0
    return f"{y:g}" if mantissa in (2, 3, 5) else ""


def _y_scale(ax, values: np.ndarray) -> str:
    """Log scale when every value is positive and they span a factor >= 3 (a first-step spike then no longer
    flattens the rest); otherwise linear, clipped to the 2nd-98th percentile when outliers would dominate.
    Returns a note for the panel title ('' when nothing special was done)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return ""
    if v.min() > 0 and v.max() / v.min() >= 3:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))  # 300, 0.02: not 3x10^2
        # within one decade the 10^k ticks may be missing: label the 2, 3 and 5 x 10^k minor ticks instead
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label) if v.max() / v.min() < 10 else NullFormatter())
        return "log scale"
    lo, hi = np.percentile(v, [2, 98])
    span = hi - lo
    if len(v) >= 20 and span > 0 and (v.max() - v.min()) > 2 * span:
        ax.set_ylim(lo - 0.15 * span, hi + 0.15 * span)
        return "clipped to 2-98%"
    return ""


def plot_losses(records: list[dict], path: Path) -> Path | None:
    """One panel per logged quantity (terms sharing a prefix together) against the step: the raw values faint,
    a smoothed line over them, a log y axis where the values allow it; the learning rate when it changes.
    Panels wrap into rows of at most MAX_COLS so the figure keeps a page's width."""
    keys = list(dict.fromkeys(k for r in records for k in r if k not in NOT_CURVES))
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
    keys.sort(key=lambda k: not k.startswith("loss"))  # the objective first, its terms after (stable sort)
    if not keys:
        return None
    plt = _pyplot()
    panels = loss_panels(keys)
    lrs = [r.get("lr") for r in records]
    if all(isinstance(x, (int, float)) for x in lrs) and len(set(lrs)) > 1:
        panels["learning rate"] = ["lr"]
    steps = np.array([r["step"] for r in records], dtype=float)
    ncols = min(MAX_COLS, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.7 * ncols, 2.9 * nrows), squeeze=False)
    weight = smoothing_weight(len(records))
    for ax, (title, group) in zip(axes.flat, panels.items()):
        series = {k: np.array([float(r[k]) if isinstance(r.get(k), (int, float)) else np.nan for r in records]) for k in group}
        note = _y_scale(ax, np.concatenate(list(series.values())))
        log = ax.get_yscale() == "log"
        for i, (k, v) in enumerate(series.items()):
            color = f"C{i}"
            if weight > 0:  # raw faint, smoothed on top (in log space on a log axis: a geometric mean)
                ax.plot(steps, v, lw=0.8, color=color, alpha=0.3)
                s = np.exp(smooth(np.log(v), weight)) if log else smooth(v, weight)
                ax.plot(steps, s, lw=1.8, color=color, label=k)
            else:
                ax.plot(steps, v, lw=1.2, color=color, label=k, marker="o", ms=3)
        if len(group) > 1:
            ax.legend(fontsize=8)
        ax.set_title(f"{title} ({note})" if note else title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(group[0] if len(group) == 1 else title)
        ax.grid(alpha=0.3, which="both" if log else "major")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_points(points: torch.Tensor, data: torch.Tensor | None, path: Path, title: str, modes=None) -> Path:
    """Scatter of 2-D samples over the training data; `modes` = (means, std) draws each mixture component's
    centre and its 3-sigma "high quality" circle (the VEEGAN/PacGAN criterion)."""
    plt = _pyplot()
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
