"""Class labels for conditional sampling, checked the same way by every conditional family (not a family)."""

from __future__ import annotations

import torch


def class_labels(cond, n: int, class_cond: bool, num_classes: int) -> torch.Tensor | None:
    """The labels of `cond` (a condition dict's "y", or labels given directly) as n int64 labels.

    One label is repeated; None (or a dict without "y") stays None. Errors name the problem.
    """
    if isinstance(cond, dict):
        cond = cond.get("y")
    if cond is None:
        return None
    if not class_cond:
        raise ValueError("this model was trained without class conditioning (model.class_cond=false)")
    cond = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
    cond = cond.expand(n) if cond.numel() == 1 else cond
    if cond.numel() != n:
        raise ValueError(f"got {cond.numel()} class labels for {n} samples")
    if cond.min() < 0 or cond.max() >= num_classes:
        raise ValueError(f"class labels must be in 0..{num_classes - 1} (the model has {num_classes} classes: labels in 0..{num_classes - 1})")
    return cond
