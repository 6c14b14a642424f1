"""Lever: down-weight transfer samples no teacher claims confidently (beyond paper 001).

Paper 001's transfer set is drawn from all the data set's classes, so some of it (here ~20%) lies
outside the union L_U; every teacher still spreads its probability over its own classes for such an
image and the estimators turn that into a confident-looking q over L_U. A per-sample weight s_b in the
student's loss, sum_b s_b CE(q_b, p_b) / sum_b s_b, lets the samples that some teacher recognises
dominate. The score is the largest probability any teacher gives any of its classes at T = 1
(max_i max_{l in L_i} p_i(l | x_b)); s_b = score^power, rescaled to mean 1 over the transfer set so the
loss keeps its scale (and the learning rate its meaning). ``threshold`` drops (s_b = 0) samples below it.

``in_union_weights`` does the same from what the teachers' owners ship (zoo.unify.calibration): an
image is in the union when it is one of some teacher's classes, so its score is the largest of the
teachers' conformal p-values (how typical the teacher's confidence is of its own classes); images
below ``threshold`` are dropped, or (soft) every image is weighted by its score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._common import check_logits
from .calibration import TeacherCalibration, teacher_pvalues

__all__ = ["SAMPLE_WEIGHTINGS", "confidence_scores", "in_union_weights", "sample_weights"]

SAMPLE_WEIGHTINGS = ("none", "confidence")


def confidence_scores(logits: Tensor, mask: Tensor) -> Tensor:
    """c [B] = max_i max_{l in L_i} softmax(z_i over L_i)_l, teacher logits [B, N, L] at T = 1."""
    logits, mask = check_logits(logits, mask)
    z = torch.where(mask, logits, torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))
    return torch.softmax(z.float(), dim=-1).amax(dim=(1, 2))


def sample_weights(
    logits: Tensor, mask: Tensor, weighting: str = "confidence", power: float = 1.0, threshold: float = 0.0
) -> Tensor | None:
    """Per-sample loss weights s [B] (mean 1), or None for ``weighting="none"``.

    "confidence": s_b proportional to confidence_scores^power, 0 where the score is below ``threshold``.
    """
    if weighting not in SAMPLE_WEIGHTINGS:
        raise ValueError(f"sample_weighting must be one of {SAMPLE_WEIGHTINGS}; got {weighting!r}")
    if weighting == "none":
        return None
    if not power >= 0 or not 0 <= threshold < 1:
        raise ValueError(f"need confidence power >= 0 and 0 <= threshold < 1; got {power}, {threshold}")
    c = confidence_scores(logits, mask)
    s = c.pow(power) * (c >= threshold)
    if not bool((s > 0).any()):
        raise ValueError(f"every transfer sample scores below the confidence threshold {threshold}: lower it")
    return s / s.mean()


def in_union_weights(
    logits: Tensor,
    mask: Tensor,
    calibrations: Sequence[TeacherCalibration],
    threshold: float = 0.05,
    soft: bool = False,
) -> Tensor:
    """Per-sample loss weights s [B] (mean 1) that drop (or, ``soft``, down-weight) transfer images no
    teacher recognises as one of its classes.

    Score u_b = max_i p_i(x_b), p_i the teacher's conformal p-value (calibration.teacher_pvalues; one
    TeacherCalibration per teacher). Drop: s_b = [u_b >= threshold]; soft: s_b = u_b. Under "x_b is of
    teacher i's classes" p_i is uniform, so a threshold of 0.05 drops about 5% of such images."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must lie in [0, 1); got {threshold!r}")
    u = teacher_pvalues(logits, mask, calibrations).amax(dim=1).float()
    s = u if soft else (u >= threshold).float()
    if not bool((s > 0).any()):
        raise ValueError(f"no transfer image reaches the in-union threshold {threshold}: lower it")
    return s / s.mean()
