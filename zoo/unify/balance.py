"""BS: balancing soft labels (paper 001, Sec. 3.5.2).

The weight of class l is the inverse of the mean of q(l) over the transfer set: w_l = 1 / mean_b q_b(l).
The scale is the paper's: on perfectly balanced soft labels w_l = L for every class (a trainer that wants
a loss on the unweighted scale can divide by L, which changes nothing else).
"""

from __future__ import annotations

import torch
from torch import Tensor


def balance_weights(q_all: Tensor) -> Tensor:
    """w [L] = 1 / mean over samples of q_all [B, L] (soft labels of the whole transfer set)."""
    if not isinstance(q_all, Tensor) or q_all.dim() != 2:
        shape = tuple(q_all.shape) if isinstance(q_all, Tensor) else type(q_all).__name__
        raise ValueError(f"q_all must be a tensor of soft labels of shape [B, L]; got {shape}")
    if q_all.shape[0] == 0 or q_all.shape[1] == 0:
        raise ValueError(f"q_all must hold at least one sample and one class; got shape {tuple(q_all.shape)}")
    q = q_all if q_all.is_floating_point() else q_all.to(torch.float32)
    if not bool(torch.isfinite(q).all()) or bool((q < 0).any()):
        raise ValueError("q_all must be finite and non-negative (soft labels from estimate_soft_labels)")
    mean = q.to(torch.float64).mean(dim=0)
    empty = (mean <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"class(es) {empty} have zero soft-label mass over the transfer set: no finite weight"
        )
    return (1.0 / mean).to(q.dtype)
