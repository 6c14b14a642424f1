"""Distillation across label sets (paper 002, Sec. 4) and its baselines. Pure tensor functions: no Ray,
no MLflow, no files.

    loss = crosstask_loss(student_logits, teacher_logits, labels, cost, lam=10.0, tau=3.0, eps=0.1,
                          n_iter=100)                                   # Eq. 11, gradient by Eq. 15
    loss = kd_loss(student_logits, teacher_logits, labels, lam=1.0, tau=3.0)        # equal label sets
    loss = rkd_loss(student_logits, labels, student_embed, teacher_embed)           # label-free baseline
    cost = cost_matrix(head, class_centres(features, labels, n))                    # Eq. 6-8 (zoo.assess)
    loss = crosstask_loss_fn(teacher_logits, labels, cost, lam, tau, eps, n_iter)  # -> loss(out, idx)

One method per file; see docs/crosstask.md.
"""

from __future__ import annotations

from zoo.assess import NORMALISATIONS, class_centres, cost_matrix, sinkhorn

from .kd import kd_loss, kd_term
from .loss_fn import RKDLossFn, crosstask_loss_fn, kd_loss_fn, rkd_loss_fn
from .rkd import rkd_angle, rkd_distance, rkd_loss
from .sinkhorn_loss import SinkhornEnvelope, crosstask_loss, sinkhorn_term

__all__ = [
    "NORMALISATIONS",
    "RKDLossFn",
    "SinkhornEnvelope",
    "class_centres",
    "cost_matrix",
    "crosstask_loss",
    "crosstask_loss_fn",
    "kd_loss",
    "kd_loss_fn",
    "kd_term",
    "rkd_angle",
    "rkd_distance",
    "rkd_loss",
    "rkd_loss_fn",
    "sinkhorn",
    "sinkhorn_term",
]
