"""The distillation losses as the loss of a batch, `loss(out, idx)`, the form `zoo.train` trains with.

    loss = crosstask_loss_fn(teacher_logits, labels, cost, lam=10.0, tau=3.0, eps=0.1, n_iter=100)
    loss = kd_loss_fn(teacher_logits, labels, lam=1.0, tau=3.0)          # equal label sets (Sec. 6.1.4)
    loss = rkd_loss_fn(student, teacher_embed, labels)                    # the label-free baseline
    value = loss(student_logits_of_the_batch, idx)                        # idx: rows of the inputs

The teacher's outputs and the labels of the whole training set are given once, row i for training image
i; a batch picks its rows by ``idx`` (as `zoo.train.train_epoch` passes them). The same function serves
the Ray Train student (`zoo.pipeline.distill.CrossTaskData.load`), the in-process reproduction
(`benchmarks/reproduce_crosstask.py`) and teacher assessment's ground truth. Inputs are checked here, once,
so a mismatch stops before the first batch rather than in it. Tensors stay where they are given; a
batch's rows are moved to the device of ``out``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.architectures import split_head
from zoo.assess._checks import positive
from zoo.train import LossFn

from ._common import check_labels, check_weight
from .kd import kd_loss
from .rkd import rkd_loss
from .sinkhorn_loss import crosstask_loss

__all__ = ["RKDLossFn", "crosstask_loss_fn", "kd_loss_fn", "rkd_loss_fn"]


def _check_rows(teacher: Tensor, labels: Tensor, name: str) -> None:
    if not isinstance(teacher, Tensor) or teacher.dim() != 2 or not teacher.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor [N, dim], one row per training image")
    if not bool(torch.isfinite(teacher).all()):
        raise ValueError(f"{name} holds NaN or inf values")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"labels must be a 1-D tensor with one class index per row of {name} ({teacher.shape[0]})"
        )


def _rows(x: Tensor, idx: Tensor, device: torch.device) -> Tensor:
    return x[idx.to(x.device)].to(device, non_blocking=True)


def crosstask_loss_fn(
    teacher_logits: Tensor,
    labels: Tensor,
    cost: Tensor,
    lam: float = 10.0,
    tau: float = 3.0,
    eps: float = 0.1,
    n_iter: int = 100,
) -> LossFn:
    """loss(out, idx) = Eq. 11 on the batch: CE(labels[idx], out) + lam * S_eps(rho_tau(teacher_logits[idx]),
    rho_tau(out)), gradient by Eq. 15 (`crosstask_loss`). teacher_logits [N, m] in the order of the
    teacher's head, labels [N] in 0..n-1, cost [m, n] (`zoo.assess.cost_matrix`). lam = 0: plain CE."""
    _check_rows(teacher_logits, labels, "teacher_logits")
    m = teacher_logits.shape[1]
    if not isinstance(cost, Tensor) or cost.dim() != 2 or cost.shape[0] != m:
        shape = tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
        raise ValueError(f"cost must be [teacher classes = {m}, student classes]; got {shape}")
    if not bool(torch.isfinite(cost).all()) or bool((cost < 0).any()):
        raise ValueError("cost must hold finite values >= 0")
    check_labels(labels, torch.empty(labels.shape[0], cost.shape[1]))
    lam, tau, eps = check_weight(lam, "lam"), positive(tau, "tau"), positive(eps, "eps")
    n_iter = int(positive(n_iter, "n_iter"))
    cost = cost.detach()

    def loss(out: Tensor, idx: Tensor) -> Tensor:
        return crosstask_loss(
            out,
            _rows(teacher_logits, idx, out.device),
            _rows(labels, idx, out.device),
            cost.to(out.device),
            lam,
            tau,
            eps,
            n_iter,
        )

    return loss


def kd_loss_fn(teacher_logits: Tensor, labels: Tensor, lam: float = 1.0, tau: float = 3.0) -> LossFn:
    """loss(out, idx) = `kd_loss` on the batch: CE + lam tau^2 KL (Hinton et al.); teacher_logits [N, n]
    over the student's classes in the student's order (equal label sets, paper 002 Sec. 6.1.4)."""
    _check_rows(teacher_logits, labels, "teacher_logits")
    check_labels(labels, teacher_logits)
    lam, tau = check_weight(lam, "lam"), positive(tau, "tau")

    def loss(out: Tensor, idx: Tensor) -> Tensor:
        return kd_loss(out, _rows(teacher_logits, idx, out.device), _rows(labels, idx, out.device), lam, tau)

    return loss


class RKDLossFn:
    """loss(out, idx) = `rkd_loss` on the batch, with the student's embedding of the batch read from the
    input of its head as the forward pass computes it (a hook on `split_head(student)[1]`, so nothing is
    computed twice). `remove()` takes the hook off the student."""

    def __init__(
        self,
        student: nn.Module,
        teacher_embed: Tensor,
        labels: Tensor,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
    ):
        _check_rows(teacher_embed, labels, "teacher_embed")
        self.teacher_embed, self.labels = teacher_embed.detach(), labels
        self.weights = (
            check_weight(distance_weight, "distance_weight"),
            check_weight(angle_weight, "angle_weight"),
        )
        _, head = split_head(student)  # ValueError for a network that cannot be split
        self._embed: Tensor | None = None
        self._hook = head.register_forward_pre_hook(self._keep)

    def _keep(self, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._embed = args[0]

    def __call__(self, out: Tensor, idx: Tensor) -> Tensor:
        embed, self._embed = self._embed, None
        if embed is None or embed.shape[0] != out.shape[0]:
            raise RuntimeError(
                "RKD saw no student embedding for this batch: the student's head is not called by its forward"
            )
        t = _rows(self.teacher_embed, idx, out.device)
        return rkd_loss(out, _rows(self.labels, idx, out.device), embed.flatten(1), t, *self.weights)

    def remove(self) -> None:
        self._hook.remove()


def rkd_loss_fn(
    student: nn.Module,
    teacher_embed: Tensor,
    labels: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> RKDLossFn:
    """loss(out, idx) = CE + RKD (Park et al.) between the student's embedding of the batch and
    teacher_embed[idx] [N, d_T] (the teacher's penultimate features; any dimension). Batches of >= 3."""
    return RKDLossFn(student, teacher_embed, labels, distance_weight, angle_weight)
