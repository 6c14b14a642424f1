"""Multi-label unification: one student over the union of several multi-label teachers' label sets
(beyond the papers; docs/multilabel.md "Unification").

With softmax outputs (paper 001) a teacher's probabilities depend on which classes it knows, and the
estimators must undo that renormalisation (Eq. 6). With sigmoid outputs they do not: each label is its
own binary problem, and a teacher's p_il = sigmoid(z_il) is already an estimate of P(label l | x) that
does not depend on the teacher's other labels. So the union target of label l is the mean of the
probabilities of the teachers that know l, and a label no teacher knows has no target at all:

    known_l = OR_i mask_il
    q_bl    = (1 / |{i : mask_il}|) sum_{i : mask_il} sigmoid(z_bil / T)      where known_l (else 0)

A teacher that lacks label l says nothing about it (its images may hold l or not): it is neither a
positive nor a negative vote. The student is trained with the BCE against q on the known labels only:

    L = (1/B) sum_b sum_{l : known} BCE(sigmoid(u_bl), q_bl)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_logits, check_tau


def _check_mask(mask: Tensor, logits: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be a torch.Tensor [N, L] (teacher i knows label l); got {mask!r:.80}")
    if tuple(mask.shape) != tuple(logits.shape[1:]):
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match the logits [B, N, L] {tuple(logits.shape)}; "
            "give one row per teacher and one column per union label"
        )
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0/1 (or True/False)")
    mask = mask.to(device=logits.device, dtype=torch.bool)
    if not bool(mask.any(-1).all()):
        raise ValueError(
            f"teacher(s) {torch.nonzero(~mask.any(-1)).flatten().tolist()} know no label in mask"
        )
    return mask


def union_targets(logits: Tensor, mask: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Targets q [B, L] and the known-label mask [L] from teacher logits [B, N, L] on the union label
    space and mask [N, L]. Logits where mask is False are ignored whatever they hold (nan, inf).
    q is the mean of the knowing teachers' sigmoid(z / T); 0 where no teacher knows the label."""
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.dtype.is_floating_point:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating torch.Tensor [B, N, L]; got {shape}")
    mask = _check_mask(mask, logits)
    temperature = check_tau(temperature, "temperature")
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    # torch.where first: masked entries may hold nan or inf, which must never reach the arithmetic.
    z = torch.where(mask, logits, zero) / temperature
    p = torch.where(mask, z.sigmoid(), zero)
    votes = mask.sum(0)  # [L]
    known = votes > 0
    q = p.sum(1) / votes.clamp_min(1).to(logits.dtype)
    return q.detach(), known


def masked_bce(student: Tensor, targets: Tensor, known: Tensor) -> Tensor:
    """BCE with logits of the student [B, L] against soft targets [B, L] in [0, 1] on the known labels
    (known: bool [L] or [B, L]); a scalar, the sum over known labels averaged over the batch."""
    check_logits(student, "student")
    if not isinstance(targets, Tensor) or targets.shape != student.shape:
        raise ValueError(f"targets must be a tensor of the student's shape {tuple(student.shape)}")
    if not isinstance(known, Tensor) or known.shape not in (student.shape[1:], student.shape):
        raise ValueError(
            f"known must be a bool tensor [L] or [B, L] for student logits {tuple(student.shape)}; "
            f"got {tuple(known.shape) if isinstance(known, Tensor) else type(known).__name__}"
        )
    known = known.to(device=student.device, dtype=torch.bool).expand_as(student)
    q = torch.where(
        known, targets.to(student.dtype), torch.zeros((), dtype=student.dtype, device=student.device)
    )
    if bool(((q < 0) | (q > 1)).any()):
        raise ValueError("targets must be probabilities in [0, 1] on the known labels")
    bce = F.binary_cross_entropy_with_logits(student, q.detach(), reduction="none")
    return torch.where(known, bce, torch.zeros((), dtype=bce.dtype, device=bce.device)).sum() / len(student)


def union_thresholds(thresholds: Tensor, mask: Tensor, default: float = 0.5) -> Tensor:
    """The unified student's threshold per union label [L]: the mean of the thresholds of the teachers
    that know the label (the student learns the mean of their probabilities, so it inherits their
    decision points), ``default`` where no teacher knows it. ``thresholds`` [N, L] on the union label
    space (entries where ``mask`` is False are ignored), each known one in (0, 1)."""
    if not isinstance(thresholds, Tensor) or thresholds.dim() != 2:
        raise ValueError(
            f"thresholds must be a tensor [N, L]; got {getattr(thresholds, 'shape', thresholds)!r}"
        )
    mask = _check_mask(mask, thresholds.unsqueeze(0))
    t = torch.where(mask, thresholds.to(torch.float64), torch.zeros((), dtype=torch.float64))
    if bool(((t <= 0) | (t >= 1))[mask].any()):
        raise ValueError("each teacher's thresholds must be strictly between 0 and 1 on the labels it knows")
    votes = mask.sum(0)
    mean = t.sum(0) / votes.clamp_min(1)
    return torch.where(votes > 0, mean, torch.full_like(mean, float(default)))
