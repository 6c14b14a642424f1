"""Relational knowledge distillation (RKD; Park et al., CVPR 2019): a label-free feature method, the
baseline of paper 002's Sec. 6.1.3 that applies across label sets because it never looks at classes.

    loss = rkd_loss(student_logits, labels, student_embed, teacher_embed)     # CE + RKD-D + RKD-A

The student's embeddings of a batch must reproduce the teacher's pairwise structure, whatever the two
dimensions: distances normalised by their batch mean (distance-wise, Park et al. Eq. 6-7) and the angles
of every triplet (angle-wise, Eq. 8-9), both compared with the Huber loss (smooth L1, delta 1):

    psi_D(t_i, t_j) = ||t_i - t_j|| / mu,   mu = mean_{i != j} ||t_i - t_j||
    psi_A(t_i, t_j, t_k) = <e_ij, e_kj>,    e_ij = (t_i - t_j) / ||t_i - t_j||

Weights lambda_D = 25, lambda_A = 50 are Park et al.'s (Sec. 4.1). The teacher gets no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_labels, check_weight

__all__ = ["rkd_angle", "rkd_distance", "rkd_loss"]


def _check_embeddings(student_embed: Tensor, teacher_embed: Tensor, min_batch: int) -> None:
    for name, x in (("student_embed", student_embed), ("teacher_embed", teacher_embed)):
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor [B, dim]; flatten feature maps first")
    if student_embed.shape[0] != teacher_embed.shape[0]:
        raise ValueError("student_embed and teacher_embed must hold the same samples (equal B)")
    if student_embed.shape[0] < min_batch:
        raise ValueError(f"RKD needs a batch of at least {min_batch} samples; got {student_embed.shape[0]}")


def _distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances [B, B]; the diagonal is 0 (with a finite gradient)."""
    diff = e[:, None, :] - e[None, :, :]
    squared = diff.pow(2).sum(-1)
    off_diagonal = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(off_diagonal, squared.clamp_min(1e-12).sqrt(), torch.zeros_like(squared))


def _normalised_distances(e: Tensor) -> Tensor:
    d = _distances(e)
    b = e.shape[0]
    return d / (d.sum() / (b * (b - 1))).clamp_min(1e-12)


def rkd_distance(student_embed: Tensor, teacher_embed: Tensor) -> Tensor:
    """Distance-wise RKD loss (Park et al., Eq. 6-7): Huber between mean-normalised pairwise distances."""
    _check_embeddings(student_embed, teacher_embed, 2)
    with torch.no_grad():
        target = _normalised_distances(teacher_embed.to(student_embed.dtype))
    return F.smooth_l1_loss(_normalised_distances(student_embed), target)


def _angles(e: Tensor) -> Tensor:
    """cos of the angle at j of every triplet (i, j, k): [B, B, B], <e_ij, e_kj> with unit e_ij."""
    unit = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # unit[j, i] = (e_i - e_j) / norm
    return unit @ unit.transpose(1, 2)


def rkd_angle(student_embed: Tensor, teacher_embed: Tensor) -> Tensor:
    """Angle-wise RKD loss (Park et al., Eq. 8-9): Huber between the cosines of all triplet angles."""
    _check_embeddings(student_embed, teacher_embed, 3)
    with torch.no_grad():
        target = _angles(teacher_embed.to(student_embed.dtype))
    return F.smooth_l1_loss(_angles(student_embed), target)


def rkd_loss(
    student_logits: Tensor,
    labels: Tensor,
    student_embed: Tensor,
    teacher_embed: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """Cross-entropy on labels + distance_weight * rkd_distance + angle_weight * rkd_angle (a scalar).
    student_embed [B, d_S] and teacher_embed [B, d_T] (any dimensions; B >= 3). Memory O(B^2 d)."""
    check_labels(labels, student_logits)
    distance_weight = check_weight(distance_weight, "distance_weight")
    angle_weight = check_weight(angle_weight, "angle_weight")
    loss = F.cross_entropy(student_logits, labels)
    if distance_weight:
        loss = loss + distance_weight * rkd_distance(student_embed, teacher_embed)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle(student_embed, teacher_embed)
    return loss
