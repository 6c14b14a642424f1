"""3D: positive divide and negative discrepancy (Li and Cheng, paper 004; only its supplement is in the
seeds: the hyper-parameters alpha = 100, beta = 10, tau = 4, gamma_b = 2 of Sec. A.4 and the L_NDD
reformulation of Sec. C.2). What the supplement leaves open is chosen here and stated in
docs/multilabel.md ("3D: what we implement").

Probabilities are softened, p~ = sigmoid(z / tau). With y the ground truth, P_b = {c : y_bc = 1} the
positive and N_b = {c : y_bc = 0} the negative labels of sample b:

- Positive divide (L_PD): the labels are divided into positives and negatives. The positives are
  distilled label by label, by the binary KL of MLD restricted to P_b:
      L_PD = tau^2 (1/B) sum_b sum_{c in P_b} KL( Bern(p~^t_bc) || Bern(p~^s_bc) )
  (so L_PD + the negatives' part = L_MLD exactly). The teacher is near-certain and right on the
  negatives (Assumption 3.1, Table C.4: negative score 0.01-0.03), so matching them value by value
  teaches little; they go to L_NDD instead.
- Negative discrepancy (L_NDD, Sec. C.2 Eq. 2): for a pair of output vectors (1, 2) and the labels
  negative in both, N = N_1 n N_2, the student matches the teacher's difference rho = p~_1 - p~_2:
      L_NDD = (1/|N|) sum_{i in N} ((p~^s_1i - p~^s_2i) - (p~^t_1i - p~^t_2i))^2
  averaged over the pairs with a non-empty N.
  Which vectors 1 and 2 are is not stated; `pairing` chooses:
    "batch": two images of the batch, every unordered pair (b, b'), b < b' (the default: it needs no
             second forward pass, and uses every image B - 1 times);
    "views": two augmented views of one image (the caller passes the second view's logits; N = N_b).

    L_3D = alpha L_PD + beta L_NDD          (the supervised BCE is added by the caller)

Weights: the paper's alpha = 100, beta = 10 sit next to the L2D codebase's BCE, summed over the batch
(B = 64); our BCE is averaged over the batch, so the same balance is alpha = 100 / 64, beta = 10 / 64,
the defaults (measured against the raw 100 and 10 in docs/multilabel.md).

gamma_b (= 2 in Sec. A.4) is not defined anywhere in the supplement; it is not used here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_pair, check_targets, check_tau, check_weight, zero_loss
from .mld import binary_kl

PAIRINGS = ("batch", "views")
PAPER_BATCH_SIZE = 64  # Sec. A.4
ALPHA = 100.0 / PAPER_BATCH_SIZE  # the paper's alpha = 100 next to a batch-summed BCE
BETA = 10.0 / PAPER_BATCH_SIZE  # the paper's beta = 10, likewise


def positive_divide_loss(student: Tensor, teacher: Tensor, targets: Tensor, tau: float = 4.0) -> Tensor:
    """L_PD above: the MLD binary KL summed over each sample's positive labels, mean over the batch."""
    student, teacher = check_pair(student, teacher)
    pos = check_targets(targets, student)
    tau = check_tau(tau)
    kl = binary_kl(student, teacher, tau)
    return tau**2 * torch.where(pos, kl, torch.zeros((), dtype=kl.dtype, device=kl.device)).sum() / len(kl)


def ndd_loss(
    student_1: Tensor,
    teacher_1: Tensor,
    student_2: Tensor,
    teacher_2: Tensor,
    negatives: Tensor,
    tau: float = 4.0,
) -> Tensor:
    """L_NDD (Sec. C.2, Eq. 2) over P already-formed pairs: row k of the `_1` logits [P, C] with row k of
    the `_2` logits, `negatives` [P, C] the labels negative in both. Mean over pairs with a common
    negative of the per-pair MSE; 0 when there is none."""
    s1, t1 = check_pair(student_1, teacher_1, "_1")
    s2, t2 = check_pair(student_2, teacher_2, "_2")
    if s1.shape != s2.shape:
        raise ValueError(
            f"the two sides of the pairs differ in shape: {tuple(s1.shape)} vs {tuple(s2.shape)}"
        )
    neg = check_targets(negatives, s1, "negatives")
    tau = check_tau(tau)
    rho_s = (s1 / tau).sigmoid() - (s2 / tau).sigmoid()
    rho_t = (t1 / tau).sigmoid() - (t2 / tau).sigmoid()
    sq = torch.where(neg, (rho_s - rho_t).square(), torch.zeros((), dtype=s1.dtype, device=s1.device))
    count = neg.sum(-1)
    valid = count > 0
    if not bool(valid.any()):
        return zero_loss(s1)
    return (sq.sum(-1)[valid] / count[valid]).mean()


def batch_pairs(batch_size: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Indices (i, j) of every unordered pair i < j of a batch: two LongTensors [B (B - 1) / 2]."""
    i, j = torch.triu_indices(batch_size, batch_size, offset=1, device=device)
    return i, j


def three_d_loss(
    student: Tensor,
    teacher: Tensor,
    targets: Tensor,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    tau: float = 4.0,
    pairing: str = "batch",
    student_view2: Tensor | None = None,
    teacher_view2: Tensor | None = None,
) -> Tensor:
    """L_3D = alpha L_PD + beta L_NDD from logits [B, C] and ground truth [B, C] (see the module text).

    pairing="batch": L_NDD pairs the images of the batch. pairing="views": `student_view2` and
    `teacher_view2` [B, C] are the logits of a second view of the same images (same targets); L_NDD
    pairs each image's two views and L_PD is the mean of the two views' L_PD."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}; got {pairing!r}")
    alpha, beta = check_weight(alpha, "alpha"), check_weight(beta, "beta")
    student, teacher = check_pair(student, teacher)
    pos = check_targets(targets, student)
    has_view2 = student_view2 is not None or teacher_view2 is not None
    if pairing == "batch":
        if has_view2:
            raise ValueError("pairing='batch' takes no second view; pass pairing='views' to pair two views")
        pd = positive_divide_loss(student, teacher, pos, tau)
        i, j = batch_pairs(len(student), student.device)
        ndd = ndd_loss(student[i], teacher[i], student[j], teacher[j], ~pos[i] & ~pos[j], tau)
    else:
        if student_view2 is None or teacher_view2 is None:
            raise ValueError(
                "pairing='views' needs student_view2 and teacher_view2, the second view's logits"
            )
        s2, t2 = check_pair(student_view2, teacher_view2, "_view2")
        if s2.shape != student.shape:
            raise ValueError(
                f"the second view's logits {tuple(s2.shape)} must match the first's {tuple(student.shape)}"
            )
        pd = 0.5 * (positive_divide_loss(student, teacher, pos, tau) + positive_divide_loss(s2, t2, pos, tau))
        ndd = ndd_loss(student, teacher, s2, t2, ~pos, tau)
    return alpha * pd + beta * ndd
