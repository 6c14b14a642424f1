"""The training core: one way to train a network an epoch at a time, with no Ray in it.

Every trainer of the project stands on these pieces: the unified student on Ray Train
(`zoo.pipeline.training`), the sweep's short trials (`zoo.pipeline.sweep`), the demo zoo's teachers
and SPV (`fit_classifier`), and the reproductions in `benchmarks/`.

- `Schedule`: epochs, batch size, optimiser and step size, with paper 001's schedule (Sec. 4.1.1):
  ``lr`` for the first ``lr_step_at`` of the epochs, then ``lr / 10``.
- `epoch_order(n, seed, epoch, world_size, rank)`: the batch order of an epoch, a function of
  (seed, epoch) alone, so a resumed run sees the batches it would have seen and every method of a
  trial sees the same batches (paper 001, Sec. 4.1.1); strided by rank for data-parallel workers.
- `train_epoch(model, optimizer, images, loss_fn, order, batch_size)`: one pass; ``loss_fn(out, idx)``
  takes the batch's outputs and its indices into ``images``, so a trainer keeps its targets (labels,
  soft labels, teacher logits) where it likes and the loop stays the same.
- `fit`: `train_epoch` over the epochs in one process, a callback after each (metrics, early stop).
- `fit_classifier`: supervised training on hard or soft labels.

Networks come from their spec (`zoo.artifacts.build_net(ModelSpec)`), never from a bare
`build_model(...)` call spelled out again by each trainer.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "OPTIMIZERS",
    "LossFn",
    "Schedule",
    "augment_generator",
    "classification_loss",
    "epoch_order",
    "evaluate",
    "fit",
    "fit_classifier",
    "pick_device",
    "predict_logits",
    "random_translate",
    "train_epoch",
]

OPTIMIZERS = ("sgd", "adam")
LossFn = Callable[[Tensor, Tensor], Tensor]  # loss(outputs [b, ...], indices [b]) -> scalar


@dataclass(frozen=True)
class Schedule:
    """How a network is trained: epochs, batch size, optimiser (SGD with momentum, as paper 001, or
    Adam) and the step size ``lr``, divided by 10 from epoch ``int(epochs * lr_step_at)`` on."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step_at: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'seed' else 1}, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.lr_step_at <= 1.0:
            raise ValueError(f"lr_step_at must be in [0, 1], got {self.lr_step_at!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(
                f"need weight_decay >= 0 and momentum in [0, 1), got {self.weight_decay}, {self}"
            )

    def for_data(self, n: int, min_steps: int) -> Schedule:
        """This schedule with enough epochs for at least ``min_steps`` optimiser steps on ``n``
        samples: the budget follows the data (a few hundred images get many more epochs than 20k)."""
        per_epoch = math.ceil(n / self.batch_size)
        return replace(self, epochs=max(self.epochs, math.ceil(min_steps / max(1, per_epoch))))

    def lr_at(self, epoch: int) -> float:
        """Paper 001's schedule (Sec. 4.1.1). A run too short to have a first part (e.g. 1 epoch with
        lr_step_at 0.5) keeps ``lr`` throughout."""
        step = int(self.epochs * self.lr_step_at)
        return self.lr * (0.1 if 0 < step <= epoch else 1.0)

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def set_lr(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU (decided at run time)."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def epoch_order(n: int, seed: int, epoch: int, world_size: int = 1, rank: int = 0) -> Tensor:
    """This rank's sample indices for ``epoch``: a permutation that depends only on (seed, epoch),
    padded by wrapping to a multiple of ``world_size`` (every rank takes the same number of steps,
    or DDP would wait forever), then strided by rank. With one worker: the plain permutation."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    pad = (-n) % world_size
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm[rank::world_size]


def augment_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of an epoch's augmentation, seeded by (seed, epoch, rank) like the order."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919 * (rank + 1))


def random_translate(x: Tensor, generator: torch.Generator, pad: int = 2) -> Tensor:
    """x [B, C, H, W] with sample b shifted by its own (dy, dx), uniform in [-pad, pad]^2, padding by
    reflection: the network fits the class rather than the exact pixels. ``generator`` (CPU) makes the
    shifts reproducible; pad = 0 returns x unchanged."""
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W]; got shape {tuple(x.shape)}")
    if pad < 0 or pad >= min(x.shape[-2:]):
        raise ValueError(f"pad must be in [0, min(H, W)); got {pad} for images {tuple(x.shape[-2:])}")
    if pad == 0:
        return x
    b, _, h, w = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = shifts[0][:, None] + torch.arange(h, device=x.device)[None, :]  # [B, H]
    cols = shifts[1][:, None] + torch.arange(w, device=x.device)[None, :]  # [B, W]
    bi = torch.arange(b, device=x.device)[:, None, None]
    # padded[b, :, rows[b, i], cols[b, j]] -> [B, H, W, C] -> [B, C, H, W]
    return padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    loss_fn: LossFn,
    order: Tensor,
    batch_size: int,
    augment: torch.Generator | None = None,
) -> float:
    """One pass over ``images[order]`` in batches of ``batch_size``; returns the mean loss (NaN or
    inf when training diverged). A trailing batch of one sample is skipped after the first batch:
    BatchNorm cannot train on it."""
    model.train()
    order = order.to(images.device)
    total, count = torch.zeros((), device=images.device), 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2 and count:
            continue
        x = images[idx] if augment is None else random_translate(images[idx], augment)
        loss = loss_fn(model(x), idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
        count += len(idx)
    return float(total) / max(1, count)


def fit(
    model: nn.Module,
    images: Tensor,
    loss_fn: LossFn,
    schedule: Schedule,
    *,
    augment: bool = False,
    on_epoch: Callable[[int, nn.Module, dict[str, Any]], Any] | None = None,
    progress: bool | None = False,
) -> list[dict[str, Any]]:
    """Train ``model`` (on ``images``' device) for ``schedule.epochs`` epochs in this process and
    return the per-epoch metrics. After each epoch ``on_epoch(epoch, model, metrics)`` may add to the
    metrics dict (e.g. a validation accuracy) and return True to stop early. A non-finite loss stops
    the run with a RuntimeWarning: the weights are NaN from there on."""
    opt = schedule.make_optimizer(model.parameters())
    history: list[dict[str, Any]] = []
    bar = tqdm(total=schedule.epochs, desc="epochs", leave=False, disable=not _show(progress))
    for epoch in range(schedule.epochs):
        lr = schedule.set_lr(opt, epoch)
        order = epoch_order(len(images), schedule.seed, epoch)
        gen = augment_generator(schedule.seed, epoch) if augment else None
        loss = train_epoch(model, opt, images, loss_fn, order, schedule.batch_size, gen)
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss, "lr": lr}
        stop = on_epoch(epoch, model, metrics) if on_epoch is not None else False
        history.append(metrics)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(1)
        if not math.isfinite(loss):
            warnings.warn(
                f"the loss is not finite at epoch {epoch + 1} (lr {lr:g}): training stopped; lower the lr",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        if stop:
            break
    bar.close()
    model.eval()
    return history


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def classification_loss(targets: Tensor, weights: Tensor | None = None) -> LossFn:
    """Cross-entropy against ``targets[idx]``: int [B] class indices, or float [B, L] soft labels.

    ``weights`` [L] scales each class's term: for hard targets the usual class-weighted CE
    (normalised by the weights of the batch's targets), for soft targets -sum_l w_l q_l log p_l
    averaged over the batch (the balanced soft labels of paper 001, Sec. 3.5.2)."""
    hard = not targets.is_floating_point()

    def loss(out: Tensor, idx: Tensor) -> Tensor:
        y = targets[idx]
        if hard:
            return F.cross_entropy(out, y.long(), weight=weights)
        logp = F.log_softmax(out, dim=1)
        per_class = y * logp if weights is None else y * logp * weights
        return -per_class.sum(dim=1).mean()

    return loss


def fit_classifier(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weights: Tensor | None = None,
    device: str | torch.device | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    augment: bool = False,
    progress: bool | None = None,
) -> nn.Module:
    """Train ``model`` on ``images`` float [B, C, H, W] (already preprocessed) with ``targets``
    int [B] (class indices) or float [B, L] (soft labels); returns the model, in eval mode, on ``device``.

    `fit` with `classification_loss` and a `Schedule` (default optimiser Adam: it trains the demo's
    small teachers from scratch faster and more reliably than SGD). Seeded: the batch order, dropout
    and augmentation come from ``seed``, and the global RNG state is restored afterwards, so two calls
    with the same weights and seed give the same model on the same device."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if len(images) != len(targets) or len(images) == 0:
        raise ValueError(f"images ({len(images)}) and targets ({len(targets)}) must be equally many, > 0")
    schedule = Schedule(
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay, seed=seed
    )
    dev = pick_device(device)
    model = model.to(dev)
    loss = classification_loss(targets.to(dev), None if weights is None else weights.to(dev, torch.float32))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout
        fit(model, images.float().to(dev), loss, schedule, augment=augment, progress=progress)
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Logits [B, L] of ``model`` (in eval mode, on its own device), returned on the CPU."""
    model.eval()
    dev = next(model.parameters()).device
    out = [model(images[i : i + batch_size].float().to(dev)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``images`` [B, C, H, W] with ``labels`` int [B]."""
    if len(images) != len(labels):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) must be equally many")
    if len(images) == 0:
        raise ValueError("evaluate needs at least one image")
    was_training = model.training
    pred = predict_logits(model, images, batch_size).argmax(dim=1)
    model.train(was_training)
    return float((pred == torch.as_tensor(labels).cpu().long()).float().mean())
