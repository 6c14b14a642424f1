"""LEEP, the log expected empirical prediction (Nguyen et al., ICML 2020): a baseline of paper 002, Sec. 6.2.

    score = leep(source_probs, labels)        # higher = better teacher

theta(x) [m] is the teacher's softmax over its own classes z on a target image x. The empirical joint
P(y, z) = 1/n sum_i theta(x_i)_z [y_i = y] gives P(y | z) = P(y, z) / P(z), and the dummy classifier
x -> sum_z P(y | z) theta(x)_z; LEEP is its mean log-likelihood of the true labels:

    LEEP = 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_labels, as_matrix
from .sinkhorn import SIMPLEX_TOL

__all__ = ["leep"]


def leep(source_probs: Tensor, labels: Tensor) -> float:
    """LEEP score (<= 0, higher is better). source_probs [n, m]: the teacher's probabilities (rows on the
    simplex) on the task's n images; labels [n]: the task's labels 0..C-1, every class present."""
    theta = as_matrix(source_probs, "source_probs").to(torch.float64)
    y, num_classes = as_labels(labels, "labels", theta.shape[0])
    y = y.to(theta.device)
    if bool((theta < 0).any()) or float((theta.sum(1) - 1).abs().max()) > SIMPLEX_TOL:
        raise ValueError("source_probs must be probabilities (rows >= 0 summing to 1): pass softmax(logits)")
    theta = theta / theta.sum(1, keepdim=True)
    n = theta.shape[0]
    joint = torch.zeros(num_classes, theta.shape[1], dtype=theta.dtype, device=theta.device)
    joint.index_add_(0, y, theta / n)  # P(y, z)
    conditional = joint / joint.sum(0, keepdim=True).clamp_min(torch.finfo(theta.dtype).tiny)  # P(y | z)
    eep = (theta * conditional[y]).sum(1)  # sum_z P(y_i | z) theta(x_i)_z
    return float(eep.log().mean())
