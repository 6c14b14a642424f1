"""SD: the naive extension of standard distillation (paper 001, Sec. 3.1, Eq. 1).

Each teacher's p_i is zero-filled on the classes it lacks, then the teachers are averaged:
q = (1/N) sum_i p_i. Its BP loss is Eq. 1 divided by N, i.e. the cross-entropy of the student against
that q, so SD-BP and SD-E train on the same target.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import run_chunked, teacher_log_probs

OPTIONS: dict[str, object] = {"chunk_size": None}


def soft_labels(z: Tensor, mask: Tensor) -> Tensor:
    """q = mean_i of the zero-padded p_i, from z = logits / T (masked entries already 0). [B, L]."""
    p = torch.where(mask, teacher_log_probs(z, mask).exp(), torch.zeros((), dtype=z.dtype, device=z.device))
    return p.mean(dim=1)


def _fast(x: Tensor, mask: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """The same q in one fused pass: masked logits -> -inf (torch.where first), softmax gives them 0."""
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    return torch.softmax(torch.where(mask, x, neg_inf).to(dtype) / temperature, dim=-1).mean(dim=1)


def estimate(logits: Tensor, mask: Tensor, temperature: float, chunk_size: int | None = None) -> Tensor:
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return run_chunked(lambda x: _fast(x, mask, temperature, dtype), logits, chunk_size)


def bp_loss(u: Tensor, z: Tensor, mask: Tensor, weights: Tensor | None) -> Tensor:
    """Per-sample -sum_l w_l q_l log softmax(u)_l with q the SD soft labels (u = student logits / T). [B]."""
    q = soft_labels(z, mask).detach()
    term = q * torch.log_softmax(u, dim=-1)
    if weights is not None:
        term = term * weights
    return -term.sum(dim=-1)
