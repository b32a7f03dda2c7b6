"""Words and numbers for the report: durations, rates, counts, and what each evaluation metric means.

Kept apart from the page layout so the CLI or a leaderboard can print the same names and explanations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def duration(seconds: float | None) -> str:
    """2763 -> '46 min 3 s', 4.2 -> '4.2 s', 0.012 -> '12 ms', 7384 -> '2 h 3 min' (None -> '-')."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return "< 1 ms" if seconds < 0.0005 else f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def count(v) -> str:
    """Integers (and integral floats) with thousands separators: 1234567 -> '1,234,567'."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{v:,}" if isinstance(v, int) else number(v)


def number(v) -> str:
    """A metric value: 4 significant digits, separators from 10,000 on ('-' for None)."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def rate(per_second: float | None, unit: str = "images") -> str:
    """1234.5 -> '1,234 images/s', 3.456 -> '3.46 images/s'."""
    if per_second is None or not math.isfinite(per_second):
        return "-"
    body = f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"
    return f"{body} {unit}/s"


@dataclass(frozen=True)
class Metric:
    label: str  # column heading, with the direction arrow
    better: str  # "lower" | "higher" | "" (no direction)
    explain: str  # one line for a learner


ARROW = {"lower": " \u2193", "higher": " \u2191", "": ""}

# Eval record keys in table order. Companion keys (kid_std, is_std, num_classes, kid_subset_size) are folded into
# their metric's cell rather than shown as columns of their own.
METRICS: dict[str, Metric] = {
    "fid": Metric("FID", "lower", "Fr\u00e9chet distance between Gaussians fitted to the evaluator's features of real "
                  "and generated images (Heusel et al. 2017); 0 = same mean and covariance. Biased upwards at small n: "
                  "compare only at the same n and protocol."),
    "kid": Metric("KID", "lower", "Kernel (polynomial) MMD\u00b2 between the same features, unbiased, averaged over "
                  "random subsets (Bi\u0144kowski et al. 2018); about 0 for the same distribution, \u00b1 is the spread "
                  "over subsets."),
    "is": Metric("IS", "higher", "Inception Score: exp E KL(p(y|x) || p(y)) of the evaluator's class predictions "
                 "(Salimans et al. 2016); high when each sample is clearly one class and all classes appear. At most "
                 "the number of classes."),
    "precision": Metric("Precision", "higher", "Share of generated images inside the k-NN neighbourhoods of real "
                        "images: fidelity, do samples look like data? (Kynk\u00e4\u00e4nniemi et al. 2019)"),
    "recall": Metric("Recall", "higher", "Share of real images inside the k-NN neighbourhoods of generated images: "
                     "diversity, does the model cover the data? (Kynk\u00e4\u00e4nniemi et al. 2019)"),
    "density": Metric("Density", "higher", "How many real neighbourhoods contain each generated image, on average, "
                      "divided by k (Naeem et al. 2020); about 1 for real data, can exceed 1."),
    "coverage": Metric("Coverage", "higher", "Share of real images with at least one generated image in their "
                       "neighbourhood (Naeem et al. 2020): a recall that outliers cannot inflate."),
    "cond_acc": Metric("Cond. accuracy", "higher", "Share of class-conditional samples that the evaluator "
                       "classifies as the class that was asked for."),
    "color_acc": Metric("Colour accuracy", "higher", "Share of colour-conditional samples whose colour the evaluator "
                        "reads as the colour that was asked for (fmnist-color)."),
    "clip_score": Metric("CLIP score", "higher", "2.5 x the cosine (clipped at 0) between a sample and its caption in "
                         "the domain CLIP's space (Hessel et al. 2021, Eq. 1; scenes-clip, trained on genlab's scenes, "
                         "not OpenAI's CLIP)."),
    "obj_acc": Metric("Object accuracy", "higher", "Share of requested objects drawn in their cell with the right "
                      "class and colour, read by the scenes cell classifier (real scenes score about 0.8)."),
    "empty_acc": Metric("Empty cells", "higher", "Share of cells asked to stay empty that the cell classifier "
                        "finds empty."),
    "classes_covered": Metric("Classes covered", "higher", "Number of classes the evaluator finds among the "
                              "samples (mode collapse drops classes)."),
    "class_reverse_kl": Metric("Class KL", "lower", "KL(sample class histogram || data class histogram): 0 when "
                               "samples are spread over classes like the data."),
    "nll_nats": Metric("NLL (nats)", "lower", "Negative log-likelihood of the test images under the model, nats per "
                       "image."),
    "bits_per_dim": Metric("Bits/dim", "lower", "The same likelihood per pixel and channel in bits, "
                           "-log\u2082 p(x) / D: the compression view (Theis et al. 2016); comparable across image "
                           "sizes."),
}
COMPANIONS = {"kid_std", "kid_subset_size", "is_std", "num_classes", "nll_kind", "obj_class_acc", "obj_color_acc"}
NOT_METRICS = {"step", "protocol", "n", "floor", "time_s", "eval_s"}


def metric_label(key: str) -> str:
    m = METRICS.get(key)
    return m.label + ARROW[m.better] if m else key


def metric_cell(key: str, record: dict) -> str:
    """The text of one metric's cell, with its companion: 'KID 0.012 \u00b1 0.003', 'classes 9 / 10'."""
    v = record.get(key)
    if v is None:
        return "-"
    if key == "kid" and isinstance(record.get("kid_std"), (int, float)):
        return f"{number(v)} \u00b1 {number(record['kid_std'])}"
    if key == "is" and isinstance(record.get("is_std"), (int, float)):
        return f"{number(v)} \u00b1 {number(record['is_std'])}"
    if key == "classes_covered" and isinstance(record.get("num_classes"), (int, float)):
        return f"{count(v)} / {count(record['num_classes'])}"
    return number(v)


def metric_columns(records: list[dict]) -> list[str]:
    """Known metrics in table order, then any other numeric keys the records hold."""
    present = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    present |= {k for r in records for k in (r.get("floor") or {}) if isinstance((r.get("floor") or {}).get(k), (int, float))}
    present -= COMPANIONS | NOT_METRICS
    return [k for k in METRICS if k in present] + sorted(present - set(METRICS))
