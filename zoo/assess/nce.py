"""NCE, the negative conditional entropy (Tran et al., ICCV 2019): a baseline of paper 002, Sec. 6.2.

    score = nce(source_labels, labels)        # higher = better teacher

Z is the teacher's label of each target image (its argmax over its own classes), Y the true label; with
the empirical joint P(z, y) over the n images,

    NCE = -H(Y | Z) = sum_{z, y} P(z, y) log P(y | z) = sum_{z, y} P(z, y) log (P(z, y) / P(z))
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import as_indices, as_labels

__all__ = ["nce"]


def nce(source_labels: Tensor, labels: Tensor) -> float:
    """-H(Y | Z) in nats (<= 0, higher is better). source_labels [n]: the teacher's predicted class of
    each image (non-negative integers, any number of teacher classes); labels [n]: 0..C-1, every class
    present. Pairs (z, y) that never occur contribute 0 (0 log 0 = 0)."""
    z = as_indices(source_labels, "source_labels")
    y, num_classes = as_labels(labels, "labels", z.shape[0])
    y = y.to(z.device)
    counts = torch.bincount(z * num_classes + y, minlength=(int(z.max()) + 1) * num_classes)
    joint = counts.view(-1, num_classes).to(torch.float64) / z.shape[0]  # P(z, y)
    marginal = joint.sum(1, keepdim=True)  # P(z)
    seen = joint > 0
    terms = torch.where(seen, joint * (joint / marginal.clamp_min(1e-300)).log(), torch.zeros_like(joint))
    return float(terms.sum())
