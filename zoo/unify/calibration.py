"""Lever: per-teacher temperature scaling before estimation, and what a teacher's owner ships (beyond
paper 001).

CE and MF weigh every teacher's probabilities as if they were equally calibrated; small teachers
trained on ~100 images per class are over-confident by different amounts, so a teacher that is sure
and wrong can outvote a teacher that is right. Temperature scaling (Guo et al., 2017) fits one
scalar t_i per teacher on labelled data its owner holds out (the owner has labels; the unifier does
not need them): t_i = argmin_t NLL(softmax(z / t), y). The calibrated logits z_i / t_i then enter
every estimator in place of z_i (with the method's own temperature T on top: p_i = softmax(z_i /
(t_i T)), Eq. 2).

What the owner ships (`TeacherCalibration`, in the model spec's ``metadata["calibration"]``): the
temperature, and the distribution of the teacher's confidence on images of its own classes (quantiles
of the max softmax probability at that temperature, on the same held-out images). From it the
unifier reads a conformal p-value per transfer image (`in_class_pvalues`): the fraction of the
owner's own-class images on which the teacher was at most this confident; a low value says "probably
not one of my classes". The owner runs `fit_calibration(logits, labels)` on its held-out images.

Measured (issue 18, exploration on 3 random-classes trials): the fit with ``prior_count=0`` put one
teacher, right on all 60 of its held-out images, at the search bracket's edge (t = 0.05: the NLL of
a perfectly separated set falls as t -> 0), and q's top-1 fell from 0.889 to 0.864; with
``prior_count=1`` (as if one more held-out image had a label spread over all the teacher's classes)
it was 0.909. The p-values separate "one of my classes" from "not" only weakly there (AUROC 0.4-0.85
per teacher on Fashion-MNIST, whose unseen classes look like seen ones), see docs/unify.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._common import check_logits

__all__ = [
    "CALIBRATION_KEY",
    "TeacherCalibration",
    "apply_teacher_temperatures",
    "calibration_from_metadata",
    "fit_calibration",
    "fit_temperature",
    "in_class_pvalues",
    "teacher_pvalues",
]

# Where a model spec carries its owner's calibration (ModelSpec.metadata).
CALIBRATION_KEY = "calibration"

# log t is searched in this bracket (t from 0.05 to 20): wide enough for any sane teacher.
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def fit_temperature(logits: Tensor, labels: Tensor, iters: int = 60, prior_count: float = 0.0) -> float:
    """t > 0 minimising the mean NLL of softmax(logits / t) at ``labels``.

    logits [m, L_i] of one teacher on its owner's held-out labelled images, labels int [m] (indices
    into that teacher's classes). The NLL is convex in 1/t, hence unimodal in log t: a golden-section
    search on log t in [log 0.05, log 20] finds the optimum without a learning rate.
    ``prior_count`` c >= 0 smooths every label with eps = c / (m + c) of its mass spread evenly over
    the classes (label smoothing; a prior worth about c images): without it (c = 0) a held-out set the
    teacher gets all right drives t to the bracket's lower end; with c = 1 the fit stays finite, and
    the prior fades as m grows.
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
    if not (isinstance(prior_count, int | float) and math.isfinite(prior_count) and prior_count >= 0):
        raise ValueError(f"prior_count must be a finite number >= 0; got {prior_count!r}")
    eps = float(prior_count) / (logits.shape[0] + float(prior_count))
    labels = labels.to(z.device)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), labels, label_smoothing=eps))

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


# ------------------------------------------------------------------------------- what owners ship
@dataclass(frozen=True)
class TeacherCalibration:
    """What a teacher's owner measures on its own labelled held-out images and ships with the model.

    temperature: t of fit_temperature (the teacher's logits are divided by it). quantiles: the
    quantiles, at evenly spaced levels 0, 1/K, ..., 1, of the teacher's confidence on those images,
    i.e. the max softmax probability over its classes of z / t ("msp"); non-decreasing. n: how many
    images. accuracy: the teacher's top-1 accuracy on them (for the record). Stored as
    ``metadata["calibration"] = to_dict()`` in the model spec; specs without it have none.
    """

    temperature: float
    quantiles: tuple[float, ...]
    n: int
    accuracy: float | None = None
    score: str = "msp"
    version: int = 1

    SCORES = ("msp",)
    _FIELDS = ("temperature", "quantiles", "n", "accuracy", "score", "version")

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"calibration temperature must be a finite number > 0; got {t!r}")
        q = self.quantiles
        if (
            not isinstance(q, list | tuple)
            or len(q) < 2
            or any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in q)
        ):
            raise ValueError(f"calibration quantiles must be a list of >= 2 finite numbers; got {q!r}")
        if any(b < a for a, b in zip(q, q[1:])):
            raise ValueError(f"calibration quantiles must be non-decreasing (levels 0 to 1); got {list(q)}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"calibration n (held-out images) must be an int >= 1; got {self.n!r}")
        a = self.accuracy
        if a is not None and (isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 1):
            raise ValueError(f"calibration accuracy must be a number in [0, 1] or null; got {a!r}")
        if self.score not in self.SCORES:
            raise ValueError(f"calibration score must be one of {self.SCORES}; got {self.score!r}")
        if self.version != 1:
            raise ValueError(f"calibration version {self.version!r} is not supported (this zoo reads 1)")
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "quantiles", tuple(float(v) for v in q))
        object.__setattr__(self, "accuracy", None if a is None else float(a))

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "quantiles": list(self.quantiles),
            "n": self.n,
            "accuracy": self.accuracy,
            "score": self.score,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TeacherCalibration:
        """Validated; ValueError naming the field for a missing, unknown or bad one."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a calibration must be a JSON object; got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls._FIELDS))
        if unknown:
            raise ValueError(f"calibration has unknown field(s) {unknown}; allowed: {list(cls._FIELDS)}")
        missing = [k for k in ("temperature", "quantiles", "n") if k not in d]
        if missing:
            raise ValueError(
                f"calibration lacks {missing}; make it with zoo.unify.calibration.fit_calibration"
            )
        return cls(**dict(d))


def _msp(logits: Tensor, temperature: float) -> Tensor:
    return torch.softmax(logits.to(torch.float64) / temperature, dim=-1).amax(dim=-1)


def fit_calibration(
    logits: Tensor, labels: Tensor, num_quantiles: int = 20, prior_count: float = 1.0
) -> TeacherCalibration:
    """The few lines a teacher's owner runs on its labelled held-out images (logits [m, L_i], labels
    [m] indices into the teacher's classes): the temperature (fit_temperature with ``prior_count``)
    and the quantiles of the teacher's confidence at it on the same images (levels 0, 1/K, ..., 1 for
    K = ``num_quantiles``). This is what a zoo builder calls per teacher (the demo zoo's make_zoo will)."""
    if isinstance(num_quantiles, bool) or not isinstance(num_quantiles, int) or num_quantiles < 1:
        raise ValueError(f"num_quantiles must be an int >= 1; got {num_quantiles!r}")
    t = fit_temperature(logits, labels, prior_count=prior_count)
    s = _msp(logits.detach(), t)
    levels = torch.linspace(0, 1, num_quantiles + 1, dtype=torch.float64, device=s.device)
    quantiles = torch.quantile(s, levels)
    labels = torch.as_tensor(labels, device=logits.device).long().flatten()
    accuracy = float((logits.argmax(-1) == labels).double().mean())
    return TeacherCalibration(t, tuple(quantiles.tolist()), int(logits.shape[0]), accuracy)


def in_class_pvalues(logits: Tensor, calibration: TeacherCalibration) -> Tensor:
    """p [B] in [0, 1]: the share of the owner's own-class images on which the teacher was at most as
    confident as on each of these images (logits [B, L_i], its classes only), read off the shipped
    quantiles with linear interpolation (a conformal p-value; low = unlike the teacher's classes)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(
            "logits must be a floating-point [B, L_i] tensor: one teacher's logits over its classes"
        )
    if not isinstance(calibration, TeacherCalibration):
        raise ValueError(f"calibration must be a TeacherCalibration; got {type(calibration).__name__}")
    s = _msp(logits.detach(), calibration.temperature)
    xp = torch.tensor(calibration.quantiles, dtype=torch.float64, device=s.device)
    fp = torch.linspace(0, 1, len(xp), dtype=torch.float64, device=s.device)
    # Linear interpolation of the CDF through (quantile_k, k / K); on a run of tied quantiles the
    # right-most level (the share of images at or below that score) wins.
    hi = torch.searchsorted(xp, s, right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[hi - 1], xp[hi], fp[hi - 1], fp[hi]
    step = torch.where(x1 > x0, (s - x0) / (x1 - x0).clamp_min(1e-300), torch.ones_like(s))
    p = f0 + (f1 - f0) * step.clamp(0, 1)
    p = torch.where(s < xp[0], torch.zeros_like(p), p)
    return torch.where(s >= xp[-1], torch.ones_like(p), p).to(logits.dtype)


def teacher_pvalues(logits: Tensor, mask: Tensor, calibrations: Sequence[TeacherCalibration]) -> Tensor:
    """P [B, N]: in_class_pvalues of every teacher (logits [B, N, L] on the union, mask [N, L])."""
    logits, mask = check_logits(logits, mask)
    if len(calibrations) != mask.shape[0]:
        raise ValueError(
            f"got {len(calibrations)} calibrations for {mask.shape[0]} teachers: give one per teacher"
        )
    cols = [in_class_pvalues(logits[:, i, mask[i]], c) for i, c in enumerate(calibrations)]
    return torch.stack(cols, dim=1)


def calibration_from_metadata(metadata: Mapping[str, Any] | None) -> TeacherCalibration | None:
    """The owner's calibration in a model spec's metadata (``metadata["calibration"]``), validated;
    None for a spec without one (every spec made before it existed)."""
    if not metadata or metadata.get(CALIBRATION_KEY) is None:
        return None
    try:
        return TeacherCalibration.from_dict(metadata[CALIBRATION_KEY])
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"the model spec's metadata[{CALIBRATION_KEY!r}] is not a valid calibration: {exc}"
        ) from None
