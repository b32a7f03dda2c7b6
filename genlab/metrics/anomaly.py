"""Anomaly-detection metrics on scores where higher means more anomalous (label 1 = anomaly, 0 = normal).

AUROC is the probability that a random anomaly scores above a random normal sample (ties count one half):
the Mann-Whitney U statistic divided by n_pos * n_neg, computed from average ranks. AUPRC is average precision,
sum over thresholds of (R_k - R_{k-1}) P_k (the step-wise area, as scikit-learn's `average_precision_score`).
"""

from __future__ import annotations

import numpy as np


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("anomaly scores contain NaN or inf")
    if y.all() or not y.any():
        raise ValueError("need both normal (0) and anomalous (1) samples")
    return s, y


def auroc(scores, labels) -> float:
    """Area under the ROC curve from average ranks (exact with ties)."""
    from scipy.stats import rankdata

    s, y = _check(scores, labels)
    ranks = rankdata(s)  # average ranks for ties
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(scores, labels) -> float:
    """Average precision: sum_k (R_k - R_{k-1}) P_k over distinct score thresholds, highest first."""
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_at_fpr(normal_scores, fpr: float) -> float:
    """The smallest threshold t with P(score > t) <= fpr on `normal_scores` (held-out normal data).

    Flagging `score > t` then gives a false-positive rate of at most `fpr` on those scores, and as close to it as
    their ties allow.
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"target false-positive rate must be in [0, 1], got {fpr}")
    s = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("no held-out normal scores to calibrate the threshold on")
    k = int(np.floor(fpr * s.size))  # at most k normals may lie above t
    return float(s[s.size - 1 - k]) if k < s.size else float(s[0] - 1.0)


def confusion(scores, labels, threshold: float) -> dict:
    """Counts and rates when `score > threshold` is flagged anomalous."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    flag = s > threshold
    tp, fp = int((flag & y).sum()), int((flag & ~y).sum())
    fn, tn = int((~flag & y).sum()), int((~flag & ~y).sum())
    return {"tn": tn, "fp": fp, "fn": fn, "tp": tp, "fpr": fp / max(1, fp + tn), "tpr": tp / max(1, tp + fn),
            "precision": tp / max(1, tp + fp), "accuracy": (tp + tn) / max(1, s.size)}
