"""A label-free proxy of the student's accuracy, for sweeps without a labelled validation set.

Paper 001 relates the student's distribution q over the union label space L_U to each teacher's
p_i over its own classes L_i by restriction and renormalisation (Eq. 6 / Eq. 8):

    q_hat_i(l) = q(l) / sum_{k in L_i} q(k),   l in L_i.

If the student were the "true" classifier, q_hat_i would reproduce every teacher on its own classes.
The proxy scores a student by how well q_hat_i matches p_i = softmax(z_i / T) (T = 1: the teachers'
own predictions, not the smoothed targets) on transfer images the student was NOT trained on, averaged
over the teachers:

    agreement  A = 1/N sum_i 1/B sum_b [argmax_{l in L_i} q_hat_i(l|x_b) == argmax_{l in L_i} p_i(l|x_b)]
    neg. x-ent X = -1/N sum_i 1/B sum_b sum_{l in L_i} p_i(l|x_b) log q_hat_i(l|x_b)    (Eq. 7, negated)

Both are "higher is better". Neither needs a label; both only see what the teachers say, so they
cannot reward a student for being right where the teachers are wrong, and a teacher asked about an
image outside its classes still votes (the student then has to reproduce its guess too). The sweep
ranks trials by the agreement; docs/sweep.md reports how well each ranks trials against true accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from zoo.unify import teacher_probs

__all__ = ["PROXIES", "proxy_scores", "restricted_log_probs", "spearman"]

PROXIES: tuple[str, ...] = ("agreement", "neg_xent")


def restricted_log_probs(student_logits: Tensor, mask: Tensor) -> Tensor:
    """log q_hat_i [B, N, L]: the student's softmax restricted to each teacher's classes L_i and
    renormalised there (paper 001, Eq. 6 / Eq. 8); 0 outside L_i. student_logits [B, L], mask [N, L]."""
    if not isinstance(student_logits, Tensor) or student_logits.dim() != 2:
        raise ValueError("student_logits must be a tensor of shape [B, L]")
    if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.shape[1] != student_logits.shape[1]:
        raise ValueError(
            f"mask must be [N, L] with L = {student_logits.shape[1]} (the student's classes); "
            f"got {tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}"
        )
    mask = mask.to(device=student_logits.device, dtype=torch.bool)
    u = student_logits.float().unsqueeze(1)  # [B, 1, L]
    neg_inf = torch.tensor(float("-inf"), device=u.device)
    # log softmax over L_i of the student's logits == log(q(l) / sum_{k in L_i} q(k)) (Eq. 6).
    logq = torch.log_softmax(torch.where(mask, u, neg_inf), dim=-1)
    return torch.where(mask, logq, torch.zeros((), device=u.device))


def proxy_scores(
    student_logits: Tensor, logits: Tensor, mask: Tensor, temperature: float = 1.0
) -> dict[str, Tensor]:
    """Per-teacher proxy scores of a student, from its logits [B, L] on held-out transfer images and
    the teachers' logits [B, N, L] (masked entries ignored) with mask [N, L].

    Returns {"agreement": [N], "neg_xent": [N]} (see the module docstring for the equations); the
    proxy of the student is the mean over teachers, ``scores["agreement"].mean()``. ``temperature``
    smooths the teachers' p_i (Eq. 2); the default T = 1 compares with the teachers' own predictions.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError("logits must be the teachers' logits, a tensor of shape [B, N, L]")
    if tuple(student_logits.shape) != (logits.shape[0], logits.shape[2]):
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} must be [B, L] = "
            f"[{logits.shape[0]}, {logits.shape[2]}] to match the teachers' logits {tuple(logits.shape)}"
        )
    p = teacher_probs(logits.float(), mask, temperature)  # [B, N, L], validates logits and mask
    mask = mask.to(device=p.device, dtype=torch.bool)
    logq = restricted_log_probs(student_logits.to(p.device), mask)  # [B, N, L]
    neg_inf = torch.tensor(float("-inf"), device=p.device)
    student_top = torch.where(mask, logq, neg_inf).argmax(-1)  # [B, N]
    teacher_top = torch.where(mask, p, neg_inf).argmax(-1)  # [B, N]
    agreement = (student_top == teacher_top).float().mean(0)
    neg_xent = (p * logq).sum(-1).mean(0)
    return {"agreement": agreement, "neg_xent": neg_xent}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Spearman rank correlation of two equally long sequences (average ranks for ties); nan when
    either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"spearman needs two 1-D sequences of equal length >= 2; got {a.shape}, {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")
