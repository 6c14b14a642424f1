"""The student's recipe: how the teachers' logits become the student's targets and loss.

A `Recipe` is paper 001's method (SD, CE, MF-P, MF-LU, MF-LF; Sec. 3.1-3.4), mode (E: estimate q then
train; BP: backpropagate the method's loss; BS: E with balanced class weights; Sec. 3.5) and
temperature T, plus the levers beyond the paper (docs/unify.md, "Beyond the paper: levers"). It is
validated once, when made, and passed as is: the job's config builds one, the sweep returns the best
one, the student trains on one, and a stage's fingerprint holds the fields that change its output.

    targets = build_targets(logits, mask, recipe, features=f)  # q (+ class, sample weights), or z and mask
    loss = make_loss(recipe, targets, device)            # loss(student_logits, idx) -> scalar
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from zoo.unify import estimate_soft_labels

from ._common import METHODS, MODES
from .balance import balance_weights
from .calibration import apply_teacher_temperatures
from .confidence import SAMPLE_WEIGHTINGS, sample_weights
from .losses import soft_cross_entropy, unify_loss
from .propagate import Propagation, propagate_soft_labels
from .self_training import add_student_teacher
from .sharpen import sharpen

__all__ = ["Q_LEVERS_OFF", "Recipe", "Targets", "build_targets", "make_loss"]

# The levers that act on q (modes E and BS), switched off: what a BP recipe holds (Recipe.replace(**)).
Q_LEVERS_OFF: dict[str, Any] = {"estimation_temperature": None, "propagation": None, "sharpen": 1.0}


@dataclass(frozen=True)
class Recipe:
    """Method, mode and temperature of paper 001, and the levers (all off by default):

    - ``teacher_temperatures``: one per teacher, in the logits' teacher order; each teacher's logits
      are divided by its own before estimation (`zoo.unify.calibration`);
    - ``sample_weighting``: "confidence" weighs each transfer image's loss by how confidently some
      teacher claims it (`zoo.unify.confidence`; modes E and BS);
    - ``augment``: random translations of the transfer images while the student trains;
    - ``self_train_rounds``: retrain with the student added as a teacher over all classes
      (`zoo.unify.self_training`; the sweep's trials only);
    - ``estimation_temperature``: the T at which q is estimated (Eq. 2), apart from the student's
      ``temperature`` (None: the same);
    - ``propagation``: smooth q over the kNN graph of the teachers' features (`zoo.unify.propagate`;
      a `Propagation` or its mapping {k, alpha, dim, gamma}; None: off);
    - ``sharpen``: tau of `zoo.unify.sharpen` applied to q last (1: q as estimated, 0: one-hot argmax).

    The last three act on q, so on modes E and BS only (mode BP has no q: they must be off)."""

    method: str = "ce"
    mode: str = "bs"
    temperature: float = 3.0
    teacher_temperatures: tuple[float, ...] | None = None
    sample_weighting: str = "none"
    augment: bool = False
    self_train_rounds: int = 0
    estimation_temperature: float | None = None
    propagation: Propagation | None = None
    sharpen: float = 1.0

    def __post_init__(self) -> None:
        method = str(self.method).strip().lower().replace("_", "-")
        mode = str(self.mode).strip().lower()
        if method not in METHODS:
            raise ValueError(f"method {self.method!r} is unknown; choose one of {list(METHODS)}")
        if mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is unknown; choose one of {list(MODES)}")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "mode", mode)
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        temps = self.teacher_temperatures
        if temps is not None:
            if isinstance(temps, (str, bytes)) or not isinstance(temps, Sequence) or not temps:
                raise ValueError(f"teacher_temperatures must be null or a list of numbers > 0; got {temps!r}")
            if not all(isinstance(t, (int, float)) and 0 < t < math.inf for t in temps):
                raise ValueError(f"teacher_temperatures must each be a finite number > 0; got {temps!r}")
            object.__setattr__(self, "teacher_temperatures", tuple(float(t) for t in temps))
        if self.sample_weighting not in SAMPLE_WEIGHTINGS:
            raise ValueError(
                f"sample_weighting {self.sample_weighting!r} is unknown; "
                f"choose one of {list(SAMPLE_WEIGHTINGS)}"
            )
        if self.sample_weighting != "none" and self.mode == "bp":
            raise ValueError(
                "sample_weighting weighs the soft-label loss of modes e and bs: set it to none for bp"
            )
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment must be true or false; got {self.augment!r}")
        rounds = self.self_train_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"self_train_rounds must be an int >= 0; got {rounds!r}")
        self._check_q_levers()

    def _check_q_levers(self) -> None:
        t = self.estimation_temperature
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < math.inf:
                raise ValueError(f"estimation_temperature must be null or a finite number > 0; got {t!r}")
            object.__setattr__(self, "estimation_temperature", float(t))
        if isinstance(self.propagation, Mapping):
            object.__setattr__(self, "propagation", Propagation.from_dict(self.propagation))
        elif self.propagation is not None and not isinstance(self.propagation, Propagation):
            raise ValueError(
                f"propagation must be null or a mapping {{k, alpha, dim}}; got {self.propagation!r}"
            )
        tau = self.sharpen
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 <= tau <= 1:
            raise ValueError(
                f"sharpen must be a number in [0, 1] (1: q as estimated, 0: hard labels); got {tau!r}"
            )
        object.__setattr__(self, "sharpen", float(tau))
        on = [k for k, off in Q_LEVERS_OFF.items() if getattr(self, k) != off]
        if on and self.mode == "bp":
            raise ValueError(
                f"{', '.join(on)} act on the soft labels q of modes e and bs: turn them off for bp"
            )

    @property
    def q_temperature(self) -> float:
        """The T at which q is estimated: ``estimation_temperature``, else the student's."""
        return self.temperature if self.estimation_temperature is None else self.estimation_temperature

    @property
    def name(self) -> str:
        """E.g. "CE-BS", as paper 001's Table 2 names methods."""
        return f"{self.method}-{self.mode}".upper()

    def replace(self, **changes: Any) -> Recipe:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Targets:
    """What the student's loss needs: soft labels q [B, L] with BS class weights [L] (mode BS) and
    per-sample weights [B] (lever sample_weighting) for modes E and BS; the teachers' logits
    [B, N, L] and mask [N, L] for mode BP."""

    q: Tensor | None = None
    class_weights: Tensor | None = None
    sample_weights: Tensor | None = None
    logits: Tensor | None = None
    mask: Tensor | None = None

    def take(self, idx: Tensor) -> Targets:
        """The targets of samples ``idx`` (e.g. a held-out part of the transfer set)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Targets(
            pick(self.q), self.class_weights, pick(self.sample_weights), pick(self.logits), self.mask
        )


def build_targets(
    logits: Tensor,
    mask: Tensor,
    recipe: Recipe,
    student_logits: Tensor | None = None,
    *,
    features: Tensor | Sequence[Tensor] | None = None,
    chunk_size: int | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> Targets:
    """The recipe's targets from the teachers' logits [B, N, L] and mask [N, L]: teacher temperatures
    first, then ``student_logits`` [B, L] (a previous self-training round's student) added as a
    teacher over all classes, then q by the method (Sec. 3.1-3.4) at ``recipe.q_temperature``,
    propagated over the kNN graph of ``features`` (the teachers' penultimate features of the same B
    images, one [B, D_i] tensor per teacher; needed only with ``recipe.propagation``), sharpened,
    then BS's class weights of that q (Sec. 3.5.2) and the sample weights from the (calibrated)
    teachers alone; mode BP keeps the logits.

    q is estimated ``chunk_size`` samples at a time (every method is per-sample, so chunking bounds
    memory and changes nothing), over ``progress(chunk starts)`` when given (e.g. tqdm)."""
    if recipe.teacher_temperatures is not None:
        logits = apply_teacher_temperatures(logits, list(recipe.teacher_temperatures))
    teachers, teacher_mask = logits, mask
    if student_logits is not None:
        logits, mask = add_student_teacher(logits, mask, student_logits)
    if recipe.mode == "bp":
        return Targets(logits=logits, mask=mask)
    if recipe.propagation is not None and features is None:
        raise ValueError(
            "recipe.propagation smooths q over the teachers' features: pass features= (one [B, D_i] "
            "tensor per teacher; the job: teacher inference with features=True)"
        )
    step = chunk_size or max(1, len(logits))
    starts: Iterable[int] = range(0, len(logits), step)
    if progress is not None:
        starts = progress(starts)
    T = recipe.q_temperature
    parts = [estimate_soft_labels(logits[s : s + step], mask, recipe.method, T) for s in starts]
    q = torch.cat(parts).float() if parts else logits.new_zeros(0, mask.shape[1])
    if recipe.propagation is not None and len(q):
        q = propagate_soft_labels(q, features, **recipe.propagation.to_dict())
    # BS's weights balance the estimated class distribution, so they come from q before sharpening
    # (a one-hot q may leave a class with no image at all, and its weight undefined).
    weights = balance_weights(q).float() if recipe.mode == "bs" and len(q) else None
    if recipe.sharpen != 1.0 and len(q):
        q = sharpen(q, recipe.sharpen)
    return Targets(
        q=q,
        class_weights=weights,
        sample_weights=sample_weights(teachers, teacher_mask, recipe.sample_weighting) if len(q) else None,
    )


def make_loss(recipe: Recipe, targets: Targets, device: torch.device | str = "cpu"):
    """loss(student_logits, idx) for a batch of transfer-set indices (the targets move to ``device``
    once): the method's BP loss on the logits (Sec. 3.5.1), else the soft cross-entropy against q
    with the class and sample weights (Sec. 3.5, Eq. 17)."""
    T = recipe.temperature
    on = lambda t: None if t is None else t.to(device)  # noqa: E731
    if recipe.mode == "bp":
        if targets.logits is None or targets.mask is None:
            raise ValueError("mode bp trains on the teachers' logits: the targets hold none")
        logits, mask = targets.logits.to(device), targets.mask.to(device)
        return lambda out, idx: unify_loss(out, logits[idx], mask, recipe.method, temperature=T)
    if targets.q is None:
        raise ValueError(f"mode {recipe.mode} trains on soft labels q: the targets hold none")
    q, w, s = targets.q.to(device), on(targets.class_weights), on(targets.sample_weights)
    return lambda out, idx: soft_cross_entropy(
        out, q[idx], temperature=T, weights=w, sample_weights=None if s is None else s[idx]
    )
