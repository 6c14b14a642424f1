"""PS: partial softmax distillation, the baseline of the L2D codebase (Yang et al., ICCV 2023;
github.com/penghui-yang/L2D, criterion/distiller_zoo/logits_based/psm.py, `PartialSoftmaxDistiller`),
"PS" in paper 004, Tables B.1-B.3.

A softmax over all labels would make the positives of an image compete with each other. PS divides
the output instead: for every positive label j of sample b (from the ground truth y), one softmax over
{j} and the sample's negative labels N_b = {c : y_bc = 0}, and a KL between teacher and student:

    L_PS = tau^2 (1/B) sum_b sum_{j : y_bj = 1} KL( softmax(t_b[S_bj] / tau) || softmax(s_b[S_bj] / tau) ),
    S_bj = {j} u N_b

L2D has no temperature (tau = 1, our default: then this is its loss exactly, reduction "sum" divided by
the batch size B, samples without positives adding 0). Vectorised: the (B, C, C) tensor of masked logits
holds one row per (sample, candidate positive j); rows of non-positive j are dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_pair, check_targets, check_tau, zero_loss


def ps_loss(student: Tensor, teacher: Tensor, targets: Tensor, tau: float = 1.0) -> Tensor:
    """L_PS above from logits [B, C] and ground-truth targets [B, C] in {0, 1}; a scalar."""
    student, teacher = check_pair(student, teacher)
    pos = check_targets(targets, student)
    tau = check_tau(tau)
    b, c = student.shape
    if not bool(pos.any()):
        return zero_loss(student)
    eye = torch.eye(c, dtype=torch.bool, device=student.device)
    # keep[b, j, k]: label k is in the distribution of (sample b, positive j)
    keep = eye.unsqueeze(0) | ~pos.unsqueeze(1)
    neg_inf = torch.tensor(float("-inf"), dtype=student.dtype, device=student.device)
    log_ps = torch.where(keep, student.unsqueeze(1) / tau, neg_inf).log_softmax(-1)
    log_pt = torch.where(keep, teacher.unsqueeze(1) / tau, neg_inf).log_softmax(-1)
    zero = torch.zeros((), dtype=student.dtype, device=student.device)
    # torch.where before the product: -inf - (-inf) would be nan where keep is False.
    kl = torch.where(keep, log_pt.exp() * (log_pt - log_ps), zero).sum(-1)  # [B, C]: one KL per (b, j)
    return tau**2 * torch.where(pos, kl, zero).sum() / b
