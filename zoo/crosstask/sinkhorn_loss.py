"""Cross-task distillation with a Sinkhorn distance (paper 002, Sec. 4, Eq. 10-15, Alg. 2).

    loss = crosstask_loss(student_logits, teacher_logits, labels, cost, lam=10.0, tau=3.0, eps=0.1,
                          n_iter=100)

    L = 1/B sum_i CE(y_i, f_S(x_i)) + lam * 1/B sum_i S_eps(rho_tau(f_T(x_i)), rho_tau(f_S(x_i)))   (Eq. 11)

rho_tau is the softmax at temperature tau (Eq. 10); S_eps the Sinkhorn distance with the cost matrix M
between the teacher's m classes and the student's n classes (zoo.assess.sinkhorn, cost_matrix).

Gradient. The Sinkhorn iterations are not backpropagated: by the envelope theorem the gradient of
S_eps w.r.t. p_S is the optimal dual potential beta* (Eq. 14), and through the softmax

    dS / d f_S(x) = (beta* - <beta*, p_S>) * p_S / tau                                      (Eq. 15)

(the paper's Eq. 15 omits the 1/tau of rho_tau's chain rule; it is included here, so the gradient is the
exact derivative, as autograd through a converged solve gives). The teacher is frozen and M is a
constant (Alg. 2): neither gets a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.assess import sinkhorn
from zoo.assess._checks import positive

from ._common import check_labels, check_weight

__all__ = ["SinkhornEnvelope", "crosstask_loss", "sinkhorn_term"]


class SinkhornEnvelope(torch.autograd.Function):
    """S_eps(p_T, softmax(student_logits / tau)) [B], with the gradient of Eq. 15 w.r.t. student_logits."""

    @staticmethod
    def forward(ctx, student_logits, p_t, cost, tau, eps, n_iter):
        p_s = torch.softmax(_upcast(student_logits) / tau, dim=1)
        value, _, beta = sinkhorn(p_t, p_s, cost, eps=eps, n_iter=n_iter)
        ctx.save_for_backward(p_s, beta)
        ctx.tau = tau
        ctx.logits_dtype = student_logits.dtype
        return value

    @staticmethod
    def backward(ctx, grad_value):
        p_s, beta = ctx.saved_tensors
        centred = beta - (beta * p_s).sum(1, keepdim=True)
        grad = grad_value.to(p_s.dtype)[:, None] * centred * p_s / ctx.tau  # Eq. 15
        return grad.to(ctx.logits_dtype), None, None, None, None, None


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _check_logits(student_logits: Tensor, teacher_logits: Tensor, cost: Tensor) -> None:
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point() or x.shape[0] == 0:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating-point tensor [B, classes] with B >= 1; got {shape}")
        if not bool(torch.isfinite(x.detach()).all()):
            raise ValueError(f"{name} holds NaN or inf values")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"student_logits ({student_logits.shape[0]}) and teacher_logits ({teacher_logits.shape[0]}) "
            "must hold the same samples"
        )
    m, n = teacher_logits.shape[1], student_logits.shape[1]
    if not isinstance(cost, Tensor) or cost.dim() != 2 or tuple(cost.shape) != (m, n):
        shape = tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
        raise ValueError(f"cost must be [teacher classes, student classes] = ({m}, {n}); got {shape}")


def sinkhorn_term(
    student_logits: Tensor,
    teacher_logits: Tensor,
    cost: Tensor,
    tau: float = 3.0,
    eps: float = 0.1,
    n_iter: int = 100,
) -> Tensor:
    """1/B sum_i S_eps(rho_tau(teacher_logits_i), rho_tau(student_logits_i)): the second term of Eq. 11 (a
    scalar), differentiable w.r.t. student_logits by Eq. 15. student_logits [B, n], teacher_logits [B, m],
    cost [m, n] >= 0 (zoo.assess.cost_matrix). Computed in float32 (float64 for float64 logits)."""
    _check_logits(student_logits, teacher_logits, cost)
    tau = positive(tau, "tau")
    p_t = torch.softmax(_upcast(teacher_logits.detach()) / tau, dim=1)
    value = SinkhornEnvelope.apply(student_logits, p_t, cost.detach(), tau, eps, n_iter)
    return value.mean()


def crosstask_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    cost: Tensor,
    lam: float = 10.0,
    tau: float = 3.0,
    eps: float = 0.1,
    n_iter: int = 100,
) -> Tensor:
    """Eq. 11: cross-entropy of student_logits [B, n] on labels [B] (0..n-1) + lam * sinkhorn_term.

    Defaults: the paper's CIFAR-100 setting (lam = 10, tau = 3, eps = 0.1, Sec. 6.1.2; CUB uses lam = 100).
    The cross-entropy is at temperature 1; lam = 0 gives the no-teacher student's loss."""
    _check_logits(student_logits, teacher_logits, cost)
    check_labels(labels, student_logits)
    lam = check_weight(lam, "lam")
    ce = F.cross_entropy(student_logits, labels)
    if lam == 0:
        return ce
    return ce + lam * sinkhorn_term(student_logits, teacher_logits, cost, tau, eps, n_iter)
