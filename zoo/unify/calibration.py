"""Lever: per-teacher temperature scaling before estimation (beyond paper 001).

CE and MF weigh every teacher's probabilities as if they were equally calibrated; small teachers
trained on ~100 images per class are over-confident by different amounts, so a teacher that is sure
and wrong can outvote a teacher that is right. Temperature scaling (Guo et al., 2017) fits one
scalar t_i per teacher on labelled data its owner holds out (the owner has labels; the unifier does
not need them): t_i = argmin_t NLL(softmax(z / t), y). The calibrated logits z_i / t_i then enter
every estimator in place of z_i (with the method's own temperature T on top: p_i = softmax(z_i /
(t_i T)), Eq. 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["apply_teacher_temperatures", "fit_temperature"]

# log t is searched in this bracket (t from 0.05 to 20): wide enough for any sane teacher.
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def fit_temperature(logits: Tensor, labels: Tensor, iters: int = 60) -> float:
    """t > 0 minimising the mean NLL of softmax(logits / t) at ``labels``.

    logits [m, L_i] of one teacher on its owner's held-out labelled images, labels int [m] (indices
    into that teacher's classes). The NLL is convex in 1/t, hence unimodal in log t: a golden-section
    search on log t in [log 0.05, log 20] finds the optimum without a learning rate.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"logits must be a [m, L_i] tensor with m >= 1 samples and L_i >= 2 classes; got {shape}"
        )
    labels = torch.as_tensor(labels).long().flatten()
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels ({labels.shape[0]}) and logits ({logits.shape[0]}) must be equally many")
    if bool((labels < 0).any()) or bool((labels >= logits.shape[1]).any()):
        raise ValueError(f"labels must be indices into the teacher's {logits.shape[1]} classes")
    z = logits.detach().to(torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ValueError("logits must be finite to fit a temperature")

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), labels))

    lo, hi = _LOG_T_RANGE
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def apply_teacher_temperatures(logits: Tensor, temperatures: Sequence[float] | Tensor) -> Tensor:
    """logits [B, N, L] with teacher i's logits divided by temperatures[i] ([N], all > 0).

    Masked entries are divided too, which changes nothing: every estimator ignores them."""
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError("logits must be a tensor of shape [B, N, L]")
    t = torch.as_tensor(temperatures, dtype=logits.dtype, device=logits.device).flatten()
    if t.shape[0] != logits.shape[1]:
        raise ValueError(
            f"teacher_temperatures has {t.shape[0]} values but there are {logits.shape[1]} teachers: "
            "give one per teacher"
        )
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"teacher temperatures must be finite and > 0; got {t.tolist()}")
    return logits / t.view(1, -1, 1)
