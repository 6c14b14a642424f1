"""One epoch of AKT (paper 003, Algorithm 1) on the training core's batch order and schedule: the loop
the job's Ray Train workers (`zoo.pipeline.akt`) and the reproduction (`benchmarks/reproduce_akt.py`)
both run, so that they train the same way.

    metrics = akt_epoch(nets, opt, x_t, y_t, x_s, cfg, schedule, epoch=e)   # epoch means of akt_step's

An epoch is one pass over the larger of the two sets (the labelled target and the unlabelled source),
in iterations that each pair a target batch with a source batch; the smaller set is cycled. Both orders
are `zoo.train.epoch_order` permutations, functions of (seed, epoch) alone (so a resumed run sees the
batches it would have seen and every method sees the same batches), strided by rank for data-parallel
workers. Scratch, which ignores the source, takes as many iterations as the other methods.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zoo.train import Schedule, epoch_order

from .config import AKTConfig
from .nets import AKTNets
from .step import AKTOptimisers, akt_step

__all__ = ["akt_epoch", "epoch_batches", "set_learning_rates"]

SOURCE_SEED_OFFSET = 1  # the source's order uses seed + 1: not the target's permutation when n_t == n_s


def epoch_batches(
    n_t: int, n_s: int, batch_size: int, seed: int, epoch: int, world: int = 1, rank: int = 0
) -> list[tuple[Tensor, Tensor | None]]:
    """This rank's (target indices, source indices or None) per iteration of ``epoch``.

    The batch size per rank is ceil(batch_size / world), capped by the rank's share of each set (no
    image twice in a batch); every batch is full, the smaller set's order wrapping around (BatchNorm
    cannot train on a trailing batch of one image). Iterations: ceil(larger share / batch), the same on
    every rank (`epoch_order` pads the shares to equal length). ``n_s = 0``: no source batches."""
    if n_t < 1 or n_s < 0 or batch_size < 1:
        raise ValueError(
            f"epoch_batches needs n_t >= 1, n_s >= 0, batch_size >= 1; got {n_t}, {n_s}, {batch_size}"
        )
    per_rank = math.ceil(batch_size / world)
    order_t = epoch_order(n_t, seed, epoch, world, rank)
    order_s = epoch_order(n_s, seed + SOURCE_SEED_OFFSET, epoch, world, rank) if n_s else None
    b_t = min(per_rank, len(order_t))
    b_s = min(per_rank, len(order_s)) if order_s is not None else 0
    iterations = math.ceil(max(len(order_t), 0 if order_s is None else len(order_s)) / per_rank)
    batches = []
    for i in range(iterations):
        t = order_t[(i * b_t + torch.arange(b_t)) % len(order_t)]
        s = None if order_s is None else order_s[(i * b_s + torch.arange(b_s)) % len(order_s)]
        batches.append((t, s))
    return batches


def set_learning_rates(opt: AKTOptimisers, cfg: AKTConfig, schedule: Schedule, epoch: int) -> float:
    """The schedule's step for M and G (paper: x0.1 after 75 epochs; `Schedule.lr_at` at
    ``lr_step_at``); the discriminators keep cfg.lr_d. Returns M's learning rate."""
    factor = schedule.lr_at(epoch) / schedule.lr
    for optimiser, base in ((opt.m, cfg.lr_m), (opt.g, cfg.lr_g)):
        for group in optimiser.param_groups if optimiser is not None else ():
            group["lr"] = base * factor
    return cfg.lr_m * factor


def akt_epoch(
    nets: AKTNets,
    opt: AKTOptimisers,
    x_t: Tensor,
    y_t: Tensor,
    x_s: Tensor | None,
    cfg: AKTConfig,
    schedule: Schedule,
    *,
    epoch: int,
    world: int = 1,
    rank: int = 0,
) -> dict[str, float]:
    """One epoch: the learning rates of `set_learning_rates`, then `akt_step` on every batch pair of
    `epoch_batches(len(x_t), len(x_s), schedule.batch_size, schedule.seed, epoch, world, rank)`.

    x_t [n_t, C, H, W], y_t int [n_t], x_s [n_s, C, H, W] (None or empty: scratch only) on the nets'
    device. Returns the means over the iterations of akt_step's metrics, and train_loss (M's loss,
    Eq. 6), lr (M's), iterations and samples (images this rank stepped on)."""
    n_s = 0 if x_s is None else len(x_s)
    if n_s == 0 and cfg.uses_source:
        raise ValueError(f"method {cfg.method!r} needs source images; got none")
    lr = set_learning_rates(opt, cfg, schedule, epoch)
    batches = epoch_batches(len(x_t), n_s, schedule.batch_size, schedule.seed, epoch, world, rank)
    warm_up = epoch < cfg.warmup_epochs  # akt_step uses M on the target only (x_s is still checked)
    sums: dict[str, float] = {}
    samples = 0
    for i, (t, s) in enumerate(batches):
        xs = x_s[s.to(x_s.device)] if cfg.uses_source else None  # scratch ignores the source
        t = t.to(x_t.device)
        metrics = akt_step(
            nets, opt, x_t[t], y_t[t], xs, cfg, epoch=epoch, iteration=epoch * len(batches) + i
        )
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        samples += len(t) + (len(xs) if xs is not None and not warm_up else 0)
    out = {k: v / len(batches) for k, v in sums.items()}
    return {**out, "train_loss": out["loss_m"], "lr": lr, "iterations": len(batches), "samples": samples}
