"""Teacher assessment by Approximation II (paper 002, Sec. 5, Eq. 24, Alg. 4).

    score = sinkhorn_score(features, teacher_logits, labels, head)     # higher = better teacher

For teacher h: fit a linear fictitious student f_F on the teacher's features of the task's labelled
images (fictitious.py), build the cost matrix from the same features (Eq. 6-8, cost.py), and average the
Sinkhorn distance between the teacher's and the fictitious student's tempered predictions:

    M(f_T) = 1/N sum_i S_eps(rho_tau(f_T(x_i)), rho_tau(f_F(x_i)))            (Eq. 24 with f_S -> f_F)

The score is Q = -M(f_T) (Sec. 6.2.3), so that higher is better like every other score here.

In-sample or cross-fitted: Alg. 4 fits f_F on {(phi(x_i), y_i)}_{i=1..N} and averages S_eps over the same
N images, so ``folds=1`` (the default) does exactly that. ``folds=k`` (k >= 2) instead scores each image
with an f_F fitted on the other k-1 folds (stratified: within each class, images in their given order go
to folds 0, 1, ..., k-1, 0, ...; deterministic), i.e. the fictitious student's predictions on images it
has not seen, as a true student's would be on test images. The paper's true students (Eq. 24) are also
evaluated on their own training images, which is why in-sample is the default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import as_labels, as_matrix, positive, positive_int
from .cost import class_centres, cost_matrix
from .fictitious import fit_fictitious_student
from .sinkhorn import sinkhorn

__all__ = ["fold_ids", "sinkhorn_score"]


def fold_ids(labels: Tensor, folds: int) -> Tensor:
    """Fold of each sample [n]: within each class, samples in order go to folds 0, 1, ..., folds-1, 0, ..."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)  # start of each sample's class
    position = torch.arange(labels.shape[0], device=labels.device) - first
    ids = torch.empty_like(labels)
    ids[order] = position % folds
    return ids


def _fictitious_logits(features: Tensor, labels: Tensor, num_classes: int, l2: float, folds: int) -> Tensor:
    if folds == 1:
        return fit_fictitious_student(features, labels, num_classes, l2=l2).logits(features)
    ids = fold_ids(labels, folds)
    out = torch.empty(features.shape[0], num_classes, dtype=torch.float64, device=features.device)
    for k in range(folds):
        held = ids == k
        student = fit_fictitious_student(features[~held], labels[~held], num_classes, l2=l2)
        out[held] = student.logits(features[held])
    return out


def sinkhorn_score(
    features: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    head: Tensor | nn.Linear,
    *,
    tau: float = 3.0,
    eps: float = 0.1,
    n_iter: int = 100,
    normalisation: str = "l2",
    l2: float = 1e-3,
    folds: int = 1,
) -> float:
    """Q = -(1/N) sum_i S_eps(rho_tau(f_T(x_i)), rho_tau(f_F(x_i))) for one teacher (Alg. 4), higher=better.

    features [N, d]: the teacher's embedding phi_T of the task's labelled images; teacher_logits [N, m]:
    its logits on them; labels [N] in 0..C-1 (every class present, C >= 2); head: the teacher's last
    linear layer (nn.Linear, weight [m, d]) or its weight, giving the teacher's centres (Eq. 8).
    tau, eps, n_iter: as the distillation loss (paper: tau = 3, eps = 0.1). normalisation: of the cost
    matrix (cost.py). l2: the fictitious student's penalty (fictitious.py). folds: 1 = fit and score on
    the same images (Alg. 4), k >= 2 = k-fold cross-fitted (module docstring). Runs in float64.
    """
    x = as_matrix(features, "features")
    z = as_matrix(teacher_logits, "teacher_logits", rows=x.shape[0]).to(torch.float64)
    y, num_classes = as_labels(labels, "labels", x.shape[0])
    y = y.to(x.device)
    w = head.weight if isinstance(head, nn.Linear) else head
    w = as_matrix(w.detach() if isinstance(w, Tensor) else w, "head weight", cols=x.shape[1])
    if w.shape[0] != z.shape[1]:
        raise ValueError(
            f"head has {w.shape[0]} outputs but teacher_logits has {z.shape[1]} columns: "
            "give the head and logits of one teacher"
        )
    tau = positive(tau, "tau")
    folds = positive_int(folds, "folds")
    if folds > int(torch.bincount(y).min()):
        raise ValueError(f"folds = {folds} exceeds the smallest class's number of images: use fewer folds")
    cost = cost_matrix(w.to(torch.float64), class_centres(x.to(torch.float64), y, num_classes), normalisation)
    student = _fictitious_logits(x, y, num_classes, l2, folds)
    p_t = torch.softmax(z / tau, dim=1)
    p_f = torch.softmax(student / tau, dim=1)
    value, _, _ = sinkhorn(p_t, p_f, cost.to(p_t.device), eps=eps, n_iter=n_iter)
    return -float(value.mean())
