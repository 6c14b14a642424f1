"""MLD: multi-label logit distillation by one binary KL per label (Yang et al., ICCV 2023 "L2D",
criterion/distiller_zoo/logits_based/mld.py; the "MLD" baseline of paper 004, Tables B.1-B.3).

Each label is its own binary problem with probabilities p = sigmoid(z / tau):

    L_MLD = tau^2 (1/B) sum_b sum_c KL( Bern(p^t_bc) || Bern(p^s_bc) )
          = tau^2 (1/B) sum_b sum_c [ p^t log(p^t / p^s) + (1 - p^t) log((1 - p^t) / (1 - p^s)) ]

L2D uses no temperature (tau = 1; then this is its loss exactly). With a temperature, the tau^2 factor
keeps the gradient's scale as tau grows, as in Hinton et al.'s distillation: d/ds = tau (p^s - p^t).
Computed from log-sigmoids (no clamping), so it is exact and finite for any finite logits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._common import check_pair, check_tau


def binary_kl(student: Tensor, teacher: Tensor, tau: float = 1.0) -> Tensor:
    """KL(Bern(sigmoid(t / tau)) || Bern(sigmoid(s / tau))) per label, [B, C] (no tau^2, no reduction)."""
    s, t = student / tau, teacher / tau
    p_t = t.sigmoid()
    return p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))


def mld_loss(student: Tensor, teacher: Tensor, tau: float = 4.0) -> Tensor:
    """L_MLD above from student and teacher logits [B, C]; a scalar, 0 when they are equal."""
    student, teacher = check_pair(student, teacher)
    tau = check_tau(tau)
    return tau**2 * binary_kl(student, teacher, tau).sum() / student.shape[0]
