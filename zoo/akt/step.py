"""One iteration of AKT's Algorithm 1 (paper 003), for a training loop to call once per batch.

    opt = make_optimisers(nets, cfg)
    metrics = akt_step(nets, opt, x_t, y_t, x_s, cfg, epoch=e, iteration=i)   # dict[str, float]

The order is Algorithm 1's: (a) d_steps updates of D_I and D_G, (b) one update of G, (c) copy M's
softmax layer into G, label the source with G, update M with Eq. 6. See `zoo.akt.losses` for the signs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import AKTConfig
from .losses import (
    akt_discriminator_loss,
    akt_generator_loss,
    classifier_loss,
    discriminator_accuracy,
    pseudo_labels,
)
from .nets import AKTNets, copy_head

__all__ = ["AKTOptimisers", "make_optimisers", "akt_step"]


@dataclass(frozen=True)
class AKTOptimisers:
    """SGD optimisers of M, G's embed (None unless adversarial) and D_I + D_G together (idem)."""

    m: torch.optim.Optimizer
    g: torch.optim.Optimizer | None
    d: torch.optim.Optimizer | None


def make_optimisers(nets: AKTNets, cfg: AKTConfig) -> AKTOptimisers:
    """SGD with the config's learning rates (paper: 0.01 M, 0.01 G, 0.001 D; momentum 0.9). G's optimiser
    holds only G's embed: its head is never trained, it is copied from M."""
    sgd = lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    m = sgd(nets.m.parameters(), cfg.lr_m, cfg.weight_decay)
    if not cfg.adversarial:
        return AKTOptimisers(m, None, None)
    head = {id(p) for p in nets.g_head.parameters()}
    g = sgd([p for p in nets.g.parameters() if id(p) not in head], cfg.lr_g, cfg.weight_decay)
    d = sgd([*nets.d_i.parameters(), *nets.d_g.parameters()], cfg.lr_d, 0.0)
    return AKTOptimisers(m, g, d)


def _check_batch(nets: AKTNets, x_t: Tensor, y_t: Tensor, x_s: Tensor | None, cfg: AKTConfig) -> None:
    shape = nets.input_shape
    device = next(nets.m.parameters()).device
    if x_t.ndim != 4 or tuple(x_t.shape[1:]) != shape or len(x_t) == 0:
        raise ValueError(
            f"x_t must be target images [B >= 1, {', '.join(map(str, shape))}], got {tuple(x_t.shape)}"
        )
    if y_t.shape != (len(x_t),) or y_t.dtype.is_floating_point:
        raise ValueError(
            f"y_t must be integer class indices [{len(x_t)}], got {y_t.dtype} {tuple(y_t.shape)}"
        )
    if len(y_t) and (int(y_t.min()) < 0 or int(y_t.max()) >= nets.num_classes):
        raise ValueError(f"y_t must lie in [0, {nets.num_classes}), got [{int(y_t.min())}, {int(y_t.max())}]")
    if x_t.device != device:
        raise ValueError(f"the images are on {x_t.device} but the networks on {device}: move one of them")
    if not cfg.uses_source:
        return
    if x_s is None or len(x_s) == 0:
        raise ValueError(f"method {cfg.method!r} needs source images x_s, got an empty source batch")
    if x_s.ndim != 4 or tuple(x_s.shape[1:]) != shape:
        raise ValueError(
            f"x_s must be source images [B, {', '.join(map(str, shape))}], got {tuple(x_s.shape)}"
        )
    if x_s.device != device:
        raise ValueError(f"x_s is on {x_s.device} but the networks on {device}: move one of them")


def _discriminator_steps(
    nets: AKTNets, opt: torch.optim.Optimizer, f_t: Tensor, f_s: Tensor, cfg: AKTConfig
) -> dict:
    """Step a: d_steps updates of D_I (and D_G) on detached features, real = M(x_t), fake = G(x_s).
    The metrics are the first update's, i.e. the discriminators as G's current features find them."""
    group = cfg.group_weight
    metrics: dict[str, float] = {}
    for k in range(cfg.d_steps):
        di_real, di_fake = nets.d_i(f_t), nets.d_i(f_s)
        dg_real, dg_fake = (nets.d_g(f_t), nets.d_g(f_s)) if group else (None, None)
        loss = akt_discriminator_loss(di_real, di_fake, dg_real, dg_fake, cfg.lambda_di, group)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k == 0:
            metrics["loss_d"] = loss.item()
            metrics["d_acc"] = discriminator_accuracy(di_real, di_fake).item()
            if group:
                metrics["dg_acc"] = discriminator_accuracy(dg_real, dg_fake).item()
    return metrics


def _generator_step(nets: AKTNets, opt: torch.optim.Optimizer, f_s: Tensor, cfg: AKTConfig) -> dict:
    """Step b: one update of G's embed to fool the (just updated, now fixed) discriminators."""
    discriminators = (nets.d_i, nets.d_g)
    for d in discriminators:
        d.requires_grad_(False)
    try:
        dg_fake = nets.d_g(f_s) if cfg.group_weight else None
        loss = akt_generator_loss(nets.d_i(f_s), dg_fake, cfg.lambda_di, cfg.group_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    finally:
        for d in discriminators:
            d.requires_grad_(True)
    return {"loss_g": loss.item()}


@torch.no_grad()
def _label_source(g: nn.Module, x_s: Tensor) -> Tensor:
    """G's logits on the source in eval mode: labels that do not depend on the batch's composition
    (G's BatchNorm statistics are source statistics: G only ever sees source images after warm-up)."""
    g.eval()
    try:
        return g(x_s)
    finally:
        g.train()


def akt_step(
    nets: AKTNets,
    optimisers: AKTOptimisers,
    x_t: Tensor,
    y_t: Tensor,
    x_s: Tensor | None,
    cfg: AKTConfig,
    *,
    epoch: int,
    iteration: int,
) -> dict[str, float]:
    """One iteration of Algorithm 1 on a labelled target batch (x_t [B, C, H, W], y_t int [B]) and an
    unlabelled source batch (x_s [B', C, H, W]; ignored, may be None, for scratch). Returns metrics.

    epoch (0-based) decides the warm-up: before cfg.warmup_epochs, and always for scratch, only M's
    target CE is minimised. At the first step after it, G becomes a full copy of M (`init_generator`).
    iteration (global, 0-based) decides when M's head is copied into G (every cfg.copy_every).

    akt / akt-di: (a) discriminators minimise the BCE with real = M's features of x_t, fake = G's of
    x_s; (b) G minimises the non-saturating -log D(G(x_s)); (c) G's head := M's head, G (eval mode)
    labels x_s, M minimises Eq. 6. pseudo-label: only (c), with G frozen as M was at the end of the
    warm-up and its head not copied (the labels of "train on target, label the source" stay fixed).

    M sees x_t and x_s in one forward pass, so its BatchNorm statistics at training time are the same
    mixture its running statistics (used at test time) accumulate; M's target features for the
    discriminators come from that pass (detached).

    Metrics (floats): loss_m, loss_m_target; with the source: loss_m_source, agreement (fraction of x_s
    where M and G predict the same class), pseudo_kept (fraction above the confidence threshold);
    adversarial: loss_d, d_acc (D_I's accuracy on the batch), loss_g; akt: dg_acc. ValueError for a
    batch of another shape than nets.input_shape, labels out of range, an empty source batch.
    """
    _check_batch(nets, x_t, y_t, x_s, cfg)
    nets.train()
    if not cfg.uses_source or epoch < cfg.warmup_epochs:
        loss = classifier_loss(nets.m(x_t), y_t).total
        optimisers.m.zero_grad(set_to_none=True)
        loss.backward()
        optimisers.m.step()
        return {"loss_m": loss.item(), "loss_m_target": loss.item()}
    if not bool(nets.generator_ready):
        nets.init_generator()

    b = len(x_t)
    features = nets.m_embed(torch.cat([x_t, x_s]))
    logits = nets.m_head(features)
    metrics: dict[str, float] = {}
    if cfg.adversarial:
        if optimisers.g is None or optimisers.d is None:
            raise ValueError(
                f"method {cfg.method!r} needs G's and D's optimisers: use make_optimisers(nets, cfg)"
            )
        f_s = nets.g_embed(x_s)
        metrics |= _discriminator_steps(nets, optimisers.d, features[:b].detach(), f_s.detach(), cfg)
        metrics |= _generator_step(nets, optimisers.g, f_s, cfg)
        if iteration % cfg.copy_every == 0:
            copy_head(nets.m_head, nets.g_head)

    g_logits = _label_source(nets.g, x_s)
    targets, weights = pseudo_labels(g_logits, cfg.pseudo_labels, cfg.confidence_threshold)
    loss = classifier_loss(logits[:b], y_t, logits[b:], targets, weights, cfg.lambda_s)
    optimisers.m.zero_grad(set_to_none=True)
    loss.total.backward()
    optimisers.m.step()

    agreement = (logits[b:].detach().argmax(1) == g_logits.argmax(1)).float().mean()
    metrics |= {
        "loss_m": loss.total.item(),
        "loss_m_target": loss.target.item(),
        "loss_m_source": loss.source.item(),
        "agreement": agreement.item(),
        "pseudo_kept": weights.mean().item(),
    }
    return metrics
