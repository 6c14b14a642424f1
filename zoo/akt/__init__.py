"""AKT, Adversarial Knowledge Transfer from unlabelled data of other classes (paper 003, Gupta et al.).

    cfg = AKTConfig(method="akt")                       # or scratch | pseudo-label | akt-di
    nets = build_akt_nets("cnn", num_classes=5, in_channels=1, image_size=28, d_hidden=cfg.d_hidden)
    opt = make_optimisers(nets, cfg)
    for each batch:  metrics = akt_step(nets, opt, x_t, y_t, x_s, cfg, epoch=e, iteration=i)
    or per epoch:    metrics = akt_epoch(nets, opt, x_t, y_t, x_s, cfg, schedule, epoch=e)  # the core's order
    per epoch:       message = check_divergence(history, cfg)   # None while healthy
    the classifier:  nets.m

One concept per file: config.py (options), discriminators.py (D_I, D_G), nets.py (M, G, D_I, D_G,
the softmax-layer copy), losses.py (Eq. 2-6, signs explained there), step.py (Algorithm 1, one
iteration), epoch.py (one epoch on the training core's batch order and schedule), divergence.py.
See docs/akt.md.
"""

from __future__ import annotations

from .config import METHODS, PSEUDO_LABELS, AKTConfig
from .discriminators import GroupDiscriminator, InstanceDiscriminator
from .divergence import check_divergence
from .epoch import akt_epoch, epoch_batches, set_learning_rates
from .losses import (
    ClassifierLoss,
    akt_discriminator_loss,
    akt_generator_loss,
    classifier_loss,
    discriminator_accuracy,
    discriminator_loss,
    generator_loss,
    pseudo_labels,
)
from .nets import AKTNets, akt_nets_for, build_akt_nets, copy_head
from .step import AKTOptimisers, akt_step, make_optimisers

__all__ = [
    "METHODS",
    "PSEUDO_LABELS",
    "AKTConfig",
    "AKTNets",
    "AKTOptimisers",
    "ClassifierLoss",
    "GroupDiscriminator",
    "InstanceDiscriminator",
    "akt_discriminator_loss",
    "akt_epoch",
    "akt_generator_loss",
    "akt_nets_for",
    "akt_step",
    "build_akt_nets",
    "check_divergence",
    "classifier_loss",
    "copy_head",
    "discriminator_accuracy",
    "discriminator_loss",
    "epoch_batches",
    "generator_loss",
    "make_optimisers",
    "pseudo_labels",
    "set_learning_rates",
]
