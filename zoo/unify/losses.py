"""Losses of the student: BP (paper 001, Sec. 3.5.1) and the soft-label cross-entropy of E and BS modes.

Temperature convention (docs/unify.md): the student's logits are divided by T inside these functions,
as the teachers' are; every loss is a per-sample sum, averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ce, mf_logit, mf_p, sd
from ._common import (
    check_logits,
    check_student,
    check_temperature,
    check_weights,
    normalize_method,
    scaled_logits,
)

_BP_LOSSES = {
    "sd": sd.bp_loss,
    "ce": ce.bp_loss,
    "mf-p": mf_p.bp_loss,
    "mf-lu": mf_logit.bp_loss_lu,
    "mf-lf": mf_logit.bp_loss_lf,
}


def unify_loss(
    student_logits: Tensor,
    logits: Tensor,
    mask: Tensor,
    method: str,
    temperature: float = 3.0,
    weights: Tensor | None = None,
) -> Tensor:
    """BP loss (Sec. 3.5.1): ``method``'s objective as a differentiable function of the student's logits.

    student_logits [B, L]; logits [B, N, L] teacher logits (masked entries ignored); mask [N, L].
    u = student_logits / T takes the place of the estimated variable (q = softmax(u) for SD, CE and MF-P;
    the logit vector u for MF-LU / MF-LF); the other variables (v, c) are solved exactly for that u.
    ``weights`` [L] (BS, from balance_weights) scale every per-class term by w_l. Returns the batch mean.
    """
    method = normalize_method(method)
    temperature = check_temperature(temperature)
    logits, mask = check_logits(logits, mask)
    check_student(student_logits, logits)
    weights = check_weights(weights, logits.shape[2], student_logits)
    z = scaled_logits(logits, mask, temperature, student_logits.dtype).detach()
    u = student_logits / temperature
    return _BP_LOSSES[method](u, z, mask, weights).mean()


def soft_cross_entropy(
    student_logits: Tensor,
    q: Tensor,
    temperature: float = 3.0,
    weights: Tensor | None = None,
    sample_weights: Tensor | None = None,
) -> Tensor:
    """-sum_l w_l q_l log softmax(student_logits / T)_l, averaged over the batch (E and BS modes).

    student_logits [B, L]; q [B, L] soft labels (estimate_soft_labels); weights [L] from balance_weights;
    sample_weights [B] (lever `sample_weighting`, zoo.unify.confidence.sample_weights) weigh each
    sample's term in the batch mean.
    """
    temperature = check_temperature(temperature)
    if not isinstance(student_logits, Tensor) or student_logits.dim() != 2:
        raise ValueError("student_logits must be a tensor of shape [B, L]")
    if not isinstance(q, Tensor) or tuple(q.shape) != tuple(student_logits.shape):
        shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
        raise ValueError(
            f"q must have the student's shape [B, L] = {list(student_logits.shape)}; got {shape}"
        )
    if sample_weights is not None and tuple(sample_weights.shape) != (student_logits.shape[0],):
        raise ValueError(
            f"sample_weights must be [B] = [{student_logits.shape[0]}]; got {tuple(sample_weights.shape)}"
        )
    weights = check_weights(weights, student_logits.shape[1], student_logits)
    term = q.to(student_logits.dtype) * torch.log_softmax(student_logits / temperature, dim=-1)
    if weights is not None:
        term = term * weights
    per_sample = term.sum(-1)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(student_logits.dtype)
    return -per_sample.mean()
