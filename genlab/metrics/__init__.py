"""Evaluation: feature extractors, pure metric functions and named protocols.

Staged as images -> features (`extract_features`) -> statistics (`gaussian_stats`, k-NN radii) -> values.
"""

from genlab.metrics.fid import GaussianStats, frechet_distance, gaussian_stats
from genlab.metrics.inception_score import inception_score, inception_score_from_probs
from genlab.metrics.kid import kid
from genlab.metrics.likelihood import bits_per_dim, dequantization_offset
from genlab.metrics.mode_coverage import class_coverage, toy_mode_coverage
from genlab.metrics.prdc import density_coverage, knn_radii, prdc, prdc_ks, precision_recall
from genlab.metrics.protocols import (
    METRIC_FNS,
    METRICS,
    PROTOCOLS,
    EvalWarning,
    Protocol,
    evaluate,
    floor,
    get_protocol,
)

__all__ = [
    "GaussianStats", "gaussian_stats", "frechet_distance", "kid", "inception_score", "inception_score_from_probs",
    "prdc", "prdc_ks", "precision_recall", "density_coverage", "knn_radii", "class_coverage", "toy_mode_coverage",
    "bits_per_dim", "dequantization_offset", "METRICS", "METRIC_FNS", "EvalWarning", "PROTOCOLS", "Protocol",
    "evaluate", "floor", "get_protocol",
]
