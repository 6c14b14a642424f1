"""Lever: iterate estimation with the student's own predictions (beyond paper 001).

A student trained on q generalises over the transfer set: it averages the teachers' mistakes out
across similar images, and it covers all of L_U. Adding it as one more teacher over all classes
(mask row all True) and estimating q again lets the estimator (CE, MF) weigh it against the real
teachers; the student is then trained again on the new q (a round of self-training).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_logits

__all__ = ["add_student_teacher"]


def add_student_teacher(logits: Tensor, mask: Tensor, student_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(logits [B, N+1, L], mask [N+1, L]): the teachers plus the student as teacher N+1 over all L.

    logits [B, N, L], mask [N, L], student_logits [B, L] (the student's raw logits, T = 1, like the
    teachers')."""
    logits, mask = check_logits(logits, mask)
    if student_logits.dim() != 2 or tuple(student_logits.shape) != (logits.shape[0], logits.shape[2]):
        raise ValueError(
            f"student_logits must be [B, L] = [{logits.shape[0]}, {logits.shape[2]}]; "
            f"got {tuple(student_logits.shape)}"
        )
    z = torch.cat([logits, student_logits.to(logits.dtype).unsqueeze(1)], dim=1)
    m = torch.cat([mask, torch.ones(1, mask.shape[1], dtype=torch.bool, device=mask.device)], dim=0)
    return z, m
