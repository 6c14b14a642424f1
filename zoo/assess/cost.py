"""The cost matrix between a teacher's and a student's classes (paper 002, Sec. 4.1.2, Eq. 6-8).

    centres = class_centres(features, labels, num_classes)          # [C, d], Eq. 6
    M = cost_matrix(head, centres, normalisation="l2")             # [m, n] >= 0, Eq. 7-8

features are the teacher's embedding phi_T(x) of the student's labelled images; head is the teacher's last
linear layer (nn.Linear, weight [m, d]: ``zoo.architectures.split_head(model)`` gives it) or its weight.

Scales. Eq. 8 makes the teacher's centres unit vectors (normalised rows of W_T) while Eq. 6 gives the
student's centres as raw feature means, whose norms are whatever the embedding produces (often 1-100).
Under "none" (the paper read literally) M_mn ~ ||e_S,n|| - cos(e_T,m, e_S,n) for large centres: each
column n carries an offset ~ ||e_S,n||. An offset per column does not change the optimal plan (it adds
<c, p_S> to every plan's cost) but it does change the value and its gradient beta by c: the loss then
pushes the student towards the classes whose centres are short, which has nothing to do with the
teacher. Normalisations:

- "l2" (default): both sides unit-norm; M_mn = sqrt(2 - 2 cos(W_T,m, e_S,n)) in [0, 2], a function of the
  angle only, which is what Eq. 9's NCM argument compares (inner products with unit centres).
- "scale": the student's centres divided by their mean norm (one common scale, relative norms kept);
  M is then on the teacher's unit scale and invariant to a global rescaling of the features.
- "none": Eq. 7-8 as written (raw student centres).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import as_indices, as_matrix, positive_int

__all__ = ["NORMALISATIONS", "class_centres", "cost_matrix"]

NORMALISATIONS: tuple[str, ...] = ("l2", "scale", "none")


def class_centres(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """e_S,n = mean of phi_T(x) over the labelled images of class n (Eq. 6). features [N, d], labels [N]
    in 0..num_classes-1, every class present. Returns [num_classes, d] in the features' dtype/device."""
    x = as_matrix(features, "features")
    num_classes = positive_int(num_classes, "num_classes")
    y = as_indices(labels, "labels", x.shape[0]).to(x.device)
    if int(y.max()) >= num_classes:
        raise ValueError(f"labels must be < num_classes = {num_classes}; got {int(y.max())}")
    counts = torch.bincount(y, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty[:10]} have no labelled image: a class centre needs at least one")
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
    return sums / counts.to(x.dtype)[:, None]


def _rows_unit(x: Tensor, name: str) -> Tensor:
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError(f"{name} has a zero row: it has no direction to normalise (Eq. 8)")
    return x / norms


def cost_matrix(
    teacher_centres: Tensor | nn.Linear, student_centres: Tensor, normalisation: str = "l2"
) -> Tensor:
    """M_mn = ||e_T,m - e_S,n||_2 (Eq. 7) with e_T,m = norm(W_T[m]) (Eq. 8). Returns [m, n] >= 0.

    teacher_centres: the teacher's head (nn.Linear with weight [m, d]) or a tensor [m, d] (its weight, or
    true class centres if the teacher's owner has them): rows are always unit-normalised (Eq. 8).
    student_centres [n, d] from class_centres. normalisation: "l2" (default), "scale" or "none"; see the
    module docstring. The result follows the inputs' dtype and device and carries no gradient.
    """
    if isinstance(teacher_centres, nn.Linear):
        teacher_centres = teacher_centres.weight
    w = as_matrix(
        teacher_centres.detach() if isinstance(teacher_centres, Tensor) else teacher_centres,
        "teacher_centres",
    )
    e_s = as_matrix(
        student_centres.detach() if isinstance(student_centres, Tensor) else student_centres,
        "student_centres",
        cols=w.shape[1],
    )
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}; got {normalisation!r}")
    dtype = torch.promote_types(w.dtype, e_s.dtype)
    e_t = _rows_unit(w.to(dtype), "teacher_centres")
    e_s = e_s.to(device=e_t.device, dtype=dtype)
    if normalisation == "l2":
        e_s = _rows_unit(e_s, "student_centres")
    elif normalisation == "scale":
        scale = e_s.norm(dim=1).mean()
        if scale == 0:
            raise ValueError("student_centres are all zero: no common scale")
        e_s = e_s / scale
    # The difference form, not the |a|^2 + |b|^2 - 2ab expansion: exact zeros stay zero.
    return (e_t[:, None, :] - e_s[None, :, :]).norm(dim=-1)
