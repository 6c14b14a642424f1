"""Input checks shared by the distillation losses: ValueError naming the input and the fix."""

from __future__ import annotations

import torch
from torch import Tensor


def check_labels(labels: Tensor, student_logits: Tensor) -> None:
    """labels: 1-D integer class indices, one per row of student_logits, in 0..n-1."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != student_logits.shape[0]:
        raise ValueError("labels must be a 1-D tensor with one class index per row of student_logits")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices; got dtype {labels.dtype}")
    n = student_logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
        raise ValueError(
            f"labels must be student classes 0..{n - 1}; got {int(labels.min())}..{int(labels.max())}"
        )


def check_weight(value: object, name: str) -> float:
    """A loss weight: a finite number >= 0."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}") from None
    if not (w >= 0 and w < float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return w
