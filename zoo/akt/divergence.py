"""Divergence check of an AKT run from its per-epoch metrics (the means of `akt_step`'s metrics over
an epoch), a pure function so that a job can stop, and register nothing, with a clear message."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .config import AKTConfig

__all__ = ["check_divergence"]


def check_divergence(history: Sequence[Mapping[str, float]], cfg: AKTConfig) -> str | None:
    """None while the run is healthy, else a message saying what went wrong and what to try.

    Diverged: any metric of any epoch is NaN or infinite; or the instance discriminator's accuracy
    `d_acc` is >= cfg.divergence_accuracy in each of the last cfg.divergence_patience epochs (D wins the
    game outright: G's features no longer move towards M's, and G's pseudo-labels are those of
    unaligned features). Epochs without `d_acc` (scratch, pseudo-label, warm-up) never count as won.
    """
    for epoch, metrics in enumerate(history):
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            return (
                f"AKT diverged: epoch {epoch} has non-finite {', '.join(bad)}; "
                "lower the learning rates (lr_m, lr_g, lr_d) or the loss weights"
            )
    window = history[-cfg.divergence_patience :]
    if len(window) == cfg.divergence_patience and all(
        m.get("d_acc", 0.0) >= cfg.divergence_accuracy for m in window
    ):
        first = len(history) - cfg.divergence_patience
        return (
            f"AKT diverged: the instance discriminator's accuracy stayed >= {cfg.divergence_accuracy:.0%} "
            f"for {cfg.divergence_patience} epochs (epochs {first}-{len(history) - 1}): "
            "G no longer fools it; "
            "lower lr_d or d_steps, or raise lr_g"
        )
    return None
