"""Standard knowledge distillation (Hinton et al., 2015) for equal label sets: the special case of
cross-task distillation in paper 002, Sec. 6.1.4 (teacher and student share their classes, in order).

    loss = kd_loss(student_logits, teacher_logits, labels, lam=1.0, tau=3.0)

    L = 1/B sum_i CE(y_i, f_S(x_i)) + lam * tau^2 * 1/B sum_i KL(rho_tau(f_T(x_i)) || rho_tau(f_S(x_i)))

The tau^2 keeps the soft term's gradient on the scale of the hard term's when tau changes (Hinton et
al., Sec. 2). Same signature as crosstask_loss minus the cost matrix, so a job can swap one for the other.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from zoo.assess._checks import positive

from ._common import check_labels, check_weight

__all__ = ["kd_loss", "kd_term"]


def kd_term(student_logits: Tensor, teacher_logits: Tensor, tau: float = 3.0) -> Tensor:
    """tau^2 * mean_i KL(softmax(teacher_i / tau) || softmax(student_i / tau)), a scalar; the teacher gets
    no gradient. student_logits and teacher_logits [B, C] over the same classes in the same order."""
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point() or x.shape[0] == 0:
            raise ValueError(f"{name} must be a floating-point tensor [B, classes] with B >= 1")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"standard KD needs equal label sets: student_logits {tuple(student_logits.shape)} and "
            f"teacher_logits {tuple(teacher_logits.shape)} differ (use crosstask_loss for different classes)"
        )
    tau = positive(tau, "tau")
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().to(log_p_s.dtype) / tau, dim=1)
    return tau**2 * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, lam: float = 1.0, tau: float = 3.0
) -> Tensor:
    """Cross-entropy on labels [B] + lam * kd_term (Hinton et al.); lam = 0 is the no-teacher loss."""
    term = kd_term(student_logits, teacher_logits, tau)  # validates the logits first
    check_labels(labels, student_logits)
    lam = check_weight(lam, "lam")
    return F.cross_entropy(student_logits, labels) + lam * term
