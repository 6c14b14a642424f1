"""Soft-label estimators of paper 001 (Vongkulbhisal et al., CVPR 2019) and their losses.

    q = estimate_soft_labels(logits, mask, method, temperature=3.0, **solver_options)   # [B, L]
    loss = unify_loss(student_logits, logits, mask, method, temperature=3.0, weights=None)  # scalar (BP)
    w = balance_weights(q_all)                                                            # [L] (BS)
    loss = soft_cross_entropy(student_logits, q, temperature=3.0, weights=None)          # E / BS

One method family per file: sd.py (Sec. 3.1), ce.py (Sec. 3.3), mf_p.py (Sec. 3.4.1), mf_logit.py
(Sec. 3.4.2: MF-LU, MF-LF), balance.py (Sec. 3.5.2), losses.py (Sec. 3.5.1). See docs/unify.md.
"""

from __future__ import annotations

from torch import Tensor

from . import ce, mf_logit, mf_p, sd
from ._common import (
    METHODS,
    MODES,
    ConvergenceWarning,
    check_logits,
    check_options,
    check_temperature,
    fix_component_mass,
    normalize_method,
    teacher_probs,
)
from .balance import balance_weights
from .losses import soft_cross_entropy, unify_loss

__all__ = [
    "METHODS",
    "MODES",
    "ConvergenceWarning",
    "balance_weights",
    "estimate_soft_labels",
    "normalize_method",
    "solver_defaults",
    "soft_cross_entropy",
    "teacher_probs",
    "unify_loss",
]

_ESTIMATORS = {
    "sd": (sd.estimate, sd.OPTIONS),
    "ce": (ce.estimate, ce.OPTIONS),
    "mf-p": (mf_p.estimate, mf_p.OPTIONS),
    "mf-lu": (mf_logit.estimate_lu, mf_logit.LU_OPTIONS),
    "mf-lf": (mf_logit.estimate_lf, mf_logit.LF_OPTIONS),
}


def solver_defaults(method: str) -> dict[str, object]:
    """The solver options ``method`` accepts, with their defaults."""
    return dict(_ESTIMATORS[normalize_method(method)][1])


def estimate_soft_labels(
    logits: Tensor, mask: Tensor, method: str, temperature: float = 3.0, **solver_options: object
) -> Tensor:
    """Soft labels q [B, L] over the union label space from teacher logits [B, N, L] and mask [N, L].

    Teacher probabilities are p_i = softmax(z_i / T) over L_i (Eq. 2); masked logits are ignored whatever
    they hold. Rows of q are non-negative and sum to 1; dtype and device are the logits'. Methods: "sd"
    (Sec. 3.1), "ce" (Eq. 7-9, batched Newton to the global optimum), "mf-p" (Eq. 12-14, Algorithm 1),
    "mf-lu" (Eq. 15-16, lambda = 0.01, Algorithm 2), "mf-lf" (Eq. 15 with v = 1, one linear solve).
    solver_options (per method, see solver_defaults): tol, max_iter, lam (mf-lu), chunk_size (samples per
    block, bounding memory). When the overlap graph of the mask is disconnected, each connected component
    of classes gets mass (its number of teachers) / N, the split SD gives; the data cannot decide it.
    """
    method = normalize_method(method)
    temperature = check_temperature(temperature)
    logits, mask = check_logits(logits, mask)
    fn, defaults = _ESTIMATORS[method]
    options = check_options(method, solver_options, defaults)
    q = fn(logits, mask, temperature, **options)
    q = fix_component_mass(q.clamp_min(0), mask)
    q = q / q.sum(-1, keepdim=True)
    return q.to(logits.dtype)
