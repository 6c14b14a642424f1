"""Input checks shared by the multi-label losses (pure tensor functions: no Ray, no MLflow).

Conventions (docs/multilabel.md): logits [B, C], one per label (sigmoid outputs); targets [B, C] in
{0, 1}; every loss is a scalar, the mean over the batch of a per-sample sum over labels ("batchmean",
as the L2D codebase reduces MLD). The teacher's logits are a target: no gradient flows into them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_tau(tau: float, name: str = "tau") -> float:
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number; got {tau!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {tau!r}")
    return t


def check_weight(value: float, name: str) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative number; got {value!r}") from None
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"{name} must be a non-negative finite number; got {value!r}")
    return w


def check_logits(logits: Tensor, name: str = "logits") -> Tensor:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, C]; got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape [B, C] (2 dims); got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point; got {logits.dtype} (use .float())")
    return logits


def check_pair(student: Tensor, teacher: Tensor, suffix: str = "") -> tuple[Tensor, Tensor]:
    """Student and teacher logits of the same shape [B, C]; the teacher is detached (a target)."""
    check_logits(student, f"student{suffix}")
    check_logits(teacher, f"teacher{suffix}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student{suffix} {tuple(student.shape)} and teacher{suffix} {tuple(teacher.shape)} logits "
            "must have the same shape [B, C] (the same labels in the same order)"
        )
    return student, teacher.detach().to(student.dtype)


def check_targets(targets: Tensor, like: Tensor, name: str = "targets") -> Tensor:
    """Targets [B, C] in {0, 1} (bool, integer or float), returned as a bool tensor on like's device."""
    if not isinstance(targets, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, C] of 0/1; got {type(targets).__name__}")
    if targets.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(targets.shape)}, the logits {tuple(like.shape)}; give one 0/1 per label"
        )
    if targets.dtype != torch.bool and not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1 (hard multi-hot labels)")
    return targets.to(device=like.device, dtype=torch.bool)


def zero_loss(like: Tensor) -> Tensor:
    """A zero that keeps the graph (so that backward() works when a loss has no term)."""
    return like.sum() * 0.0
