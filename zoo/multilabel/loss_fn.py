"""The multi-label students' per-batch losses, as `zoo.train` takes them: ``loss(outputs, idx)`` over a
training set's labels and teacher logits held once (docs/multilabel.md "The jobs"). The distillation job
(`zoo.pipeline.multilabel`), the multi-label unification (`zoo.pipeline.unify_multilabel`) and the
reproduction (`benchmarks/reproduce_multilabel.py`) train through these, so they train the same thing.

    recipe = DistillRecipe(loss="3d", pairing="batch")               # validated once
    loss = distill_loss_fn(recipe, targets [n, C], teacher [n, C])    # L_BCE + the recipe's term
    loss = distill_loss_fn(recipe.replace(pairing="views"), targets, teacher, images=x, teacher_view2=t2)
    loss.bind(model)                                                  # views: the loss runs the student
    loss = union_loss_fn(logits [n, N, L], mask [N, L], temperature)  # masked BCE against union_targets

The distilled student's loss is the supervised BCE on the labels plus one distillation term:

    none: L_BCE                                  (the student alone)
    mld:  L_BCE + w L_MLD(tau)                   (Yang et al.'s MLD; L2D: w = 10/64, tau = 1)
    ps:   L_BCE + w L_PS(tau)                    (the L2D codebase's partial softmax; w = 1, tau = 1)
    3d:   L_BCE + alpha L_PD(tau) + beta L_NDD(tau)   (paper 004; alpha = 100/64, beta = 10/64, tau = 4)

With ``pairing="views"`` the second view of an image is its horizontal flip (`second_view`): the teacher's
logits on the flipped images are computed beforehand (``teacher_view2``), and the student's at each step,
by a second forward pass of the network the loss is bound to (`bind`; the training core binds it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .bce import multilabel_bce
from .mld import mld_loss
from .ps import ps_loss
from .three_d import ALPHA, BETA, PAIRINGS, three_d_loss
from .union import masked_bce, union_targets

__all__ = [
    "DEFAULT_TAU",
    "DEFAULT_WEIGHT",
    "LOSSES",
    "DistillLoss",
    "DistillRecipe",
    "distill_loss_fn",
    "second_view",
    "union_loss_fn",
]

LOSSES = ("none", "mld", "ps", "3d")
# Each term's own settings when not given: MLD and PS as the L2D codebase runs them (MLD's weight 10 next
# to its batch-summed BCE is 10/64 next to ours, docs/multilabel.md "Weights"), 3D as paper 004 Sec. A.4.
DEFAULT_TAU = {"none": 1.0, "mld": 1.0, "ps": 1.0, "3d": 4.0}
DEFAULT_WEIGHT = {"none": 0.0, "mld": 10.0 / 64, "ps": 1.0, "3d": 0.0}  # 3D: alpha and beta


def _positive(value: Any, name: str, zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if zero else '> 0'}; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DistillRecipe:
    """What the distilled student learns: the distillation term ``loss`` and its settings; None means
    the term's default (`DEFAULT_TAU`, `DEFAULT_WEIGHT`; 3D: `ALPHA`, `BETA`). ``weight`` scales MLD
    and PS; 3D has ``alpha`` (positive divide) and ``beta`` (L_NDD); ``pairing`` is 3D's."""

    loss: str = "3d"
    tau: float | None = None
    weight: float | None = None
    alpha: float | None = None
    beta: float | None = None
    pairing: str = "batch"

    def __post_init__(self) -> None:
        loss = str(self.loss).strip().lower()
        if loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is unknown; choose one of {list(LOSSES)}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing {self.pairing!r} is unknown; choose one of {list(PAIRINGS)}")
        if self.pairing != "batch" and loss != "3d":
            raise ValueError(f"pairing applies to the 3d loss only; got pairing={self.pairing!r} with {loss}")
        if loss != "3d" and (self.alpha is not None or self.beta is not None):
            raise ValueError(f"alpha and beta are the 3d loss's weights; use weight for {loss}")
        if loss == "3d" and self.weight is not None:
            raise ValueError(
                "the 3d loss is weighted by alpha (positive divide) and beta (L_NDD), not weight"
            )
        object.__setattr__(self, "loss", loss)
        settings = {
            "tau": (self.tau, DEFAULT_TAU[loss], False),
            "weight": (self.weight, DEFAULT_WEIGHT[loss], True),
            "alpha": (self.alpha, ALPHA if loss == "3d" else 0.0, True),
            "beta": (self.beta, BETA if loss == "3d" else 0.0, True),
        }
        for name, (given, default, zero) in settings.items():
            object.__setattr__(self, name, _positive(default if given is None else given, name, zero))

    @property
    def method(self) -> str:
        """The recipe's name as the registry and the reports show it (e.g. "3d-views")."""
        return f"3d-{self.pairing}" if self.loss == "3d" else self.loss

    mode = "distill"  # what JobResult shows beside the method

    @property
    def temperature(self) -> float:
        return self.tau

    def replace(self, **changes: Any) -> DistillRecipe:
        """A copy with ``changes``; the settings that were defaults follow a changed ``loss``."""
        if "loss" in changes and changes["loss"] != self.loss:
            base = {k: None for k in ("tau", "weight", "alpha", "beta")}
            return DistillRecipe(**{**base, "pairing": "batch", **changes})
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def second_view(images: Tensor) -> Tensor:
    """The second view of each image for ``pairing="views"``: its horizontal flip ([..., H, W])."""
    return torch.flip(images, dims=[-1])


class DistillLoss:
    """``loss(outputs, idx)`` of `distill_loss_fn`; with the views pairing, `bind` it to the network."""

    def __init__(
        self,
        recipe: DistillRecipe,
        targets: Tensor,
        teacher: Tensor | None,
        images: Tensor | None,
        teacher_view2: Tensor | None,
    ):
        self.recipe, self.targets, self.teacher = recipe, targets, teacher
        self.images, self.teacher_view2 = images, teacher_view2
        self.model: nn.Module | None = None

    def bind(self, model: nn.Module) -> None:
        """The network whose second-view outputs the views pairing needs (the training core calls it)."""
        self.model = model

    def __call__(self, out: Tensor, idx: Tensor) -> Tensor:
        r, y = self.recipe, self.targets[idx]
        loss = multilabel_bce(out, y)
        if r.loss == "none":
            return loss
        t = self.teacher[idx]
        if r.loss == "mld":
            return loss + r.weight * mld_loss(out, t, r.tau)
        if r.loss == "ps":
            return loss + r.weight * ps_loss(out, t, y, r.tau)
        if r.pairing == "batch":
            return loss + three_d_loss(out, t, y, alpha=r.alpha, beta=r.beta, tau=r.tau)
        if self.model is None:
            raise RuntimeError(
                "pairing='views' runs the student on a second view: call loss.bind(model) first"
            )
        s2 = self.model(second_view(self.images[idx]))
        return loss + three_d_loss(
            out, t, y, alpha=r.alpha, beta=r.beta, tau=r.tau, pairing="views",
            student_view2=s2, teacher_view2=self.teacher_view2[idx],
        )  # fmt: skip


def distill_loss_fn(
    recipe: DistillRecipe,
    targets: Tensor,
    teacher: Tensor | None = None,
    *,
    images: Tensor | None = None,
    teacher_view2: Tensor | None = None,
) -> DistillLoss:
    """The distilled student's loss over a training set: ``targets`` 0/1 [n, C], the teacher's logits
    [n, C] on the same images (not needed for loss "none"); for the views pairing also the (preprocessed)
    ``images`` [n, ...] and the teacher's logits on their second views ``teacher_view2`` [n, C]. Checked
    here once, so that a batch never fails half-way through an epoch."""
    if not isinstance(targets, Tensor) or targets.dim() != 2:
        raise ValueError(f"targets must be a tensor [n, C]; got {getattr(targets, 'shape', targets)!r}")
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("targets must hold only 0 and 1 (multi-hot labels)")
    needed = {"teacher": teacher} if recipe.loss != "none" else {}
    if recipe.pairing == "views":
        needed.update(images=images, teacher_view2=teacher_view2)
    for name, value in needed.items():
        if value is None:
            raise ValueError(f"loss {recipe.method} needs {name}")
        if len(value) != len(targets):
            raise ValueError(f"{name} has {len(value)} rows for {len(targets)} targets; give one per image")
        if name != "images" and tuple(value.shape) != tuple(targets.shape):
            raise ValueError(f"{name} {tuple(value.shape)} must match the targets {tuple(targets.shape)}")
    return DistillLoss(recipe, targets, teacher, images, teacher_view2)


def union_loss_fn(logits: Tensor, mask: Tensor, temperature: float = 1.0):
    """The unified multi-label student's loss: `masked_bce` against `union_targets` (the mean of the
    knowing teachers' probabilities; no target for a label no teacher knows), over teacher logits
    [n, N, L] on the union label space and their mask [N, L]."""
    q, known = union_targets(logits, mask, temperature)

    def loss(out: Tensor, idx: Tensor) -> Tensor:
        return masked_bce(out, q[idx], known)

    return loss
