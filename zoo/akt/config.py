"""The options of AKT (paper 003, Gupta et al., *Adversarial Knowledge Transfer from Unlabeled Data*)
in one frozen, validated object. Defaults are the paper's (Sec. 4.1) unless a comment says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["METHODS", "PSEUDO_LABELS", "AKTConfig"]

# scratch: M on the labelled target only. pseudo-label: M on the target for `warmup_epochs`, then a
# frozen copy of M labels the source and M trains on both (Eq. 6, no game). akt-di: Algorithm 1 with
# the instance discriminator only. akt: Algorithm 1 with D_I and D_G.
METHODS = ("scratch", "pseudo-label", "akt-di", "akt")
PSEUDO_LABELS = ("hard", "soft")


def _number(name: str, value: object, *, low: float, high: float = math.inf, open_low: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if open_low else f">= {low}"
        bound += f" and <= {high}" if high < math.inf else ""
        raise ValueError(f"AKTConfig.{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"AKTConfig.{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class AKTConfig:
    """Options of one AKT run; every field is validated on construction (ValueError naming the field).

    method: one of METHODS; one code path (`akt_step`) serves all four.
    lambda_di, lambda_dg: weights of the instance and group discriminator losses (Eq. 4; also in G's
        loss, Eq. 5). Paper: 1. `akt-di` ignores lambda_dg (D_G is not used).
    lambda_s: weight of the pseudo-labelled source term in M's loss (Eq. 6). Paper: 1.
    d_steps: discriminator updates per iteration (paper, Sec. 4.1: "updated twice").
    copy_every: copy M's softmax layer into G every this many iterations (paper: every iteration).
    lr_m, lr_g, lr_d: SGD learning rates of M, G and the discriminators (paper: 0.01, 0.01, 0.001).
    momentum, weight_decay: SGD momentum and weight decay (paper: 0.9, 5e-4 "while training the
        classifier"; applied here to M and G, and momentum also to D, which has no weight decay).
    pseudo_labels: "hard" (argmax of G, the paper's "categorical cross-entropy" with G's prediction
        as the label, as in Lee's pseudo-labels [26]) or "soft" (G's probabilities as the target).
    confidence_threshold: source images whose top G probability is below it get weight 0 in Eq. 6
        (0 keeps all, the paper).
    warmup_epochs: epochs of M on the target only before the source is used; at the first epoch that
        uses the source, G becomes a full copy of M. Beyond the paper for akt/akt-di (default 0, the
        paper); for pseudo-label it is the first stage ("train on target, label the source") and must
        be >= 1.
    d_hidden: hidden widths of the discriminator MLPs (paper, CIFAR-10: 512-256-128).
    divergence_patience, divergence_accuracy: `check_divergence` stops a run whose instance
        discriminator accuracy stays >= divergence_accuracy for divergence_patience epochs in a row.
    """

    method: str = "akt"
    lambda_di: float = 1.0
    lambda_dg: float = 1.0
    lambda_s: float = 1.0
    d_steps: int = 2
    copy_every: int = 1
    lr_m: float = 0.01
    lr_g: float = 0.01
    lr_d: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pseudo_labels: str = "hard"
    confidence_threshold: float = 0.0
    warmup_epochs: int = 0
    d_hidden: tuple[int, ...] = (512, 256, 128)
    divergence_patience: int = 5
    divergence_accuracy: float = 0.99

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"AKTConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.pseudo_labels not in PSEUDO_LABELS:
            raise ValueError(
                f"AKTConfig.pseudo_labels must be one of {PSEUDO_LABELS}, got {self.pseudo_labels!r}"
            )
        for name in ("lambda_di", "lambda_dg", "lambda_s", "weight_decay"):
            _number(name, getattr(self, name), low=0.0)
        for name in ("lr_m", "lr_g", "lr_d"):
            _number(name, getattr(self, name), low=0.0, open_low=True)
        _number("momentum", self.momentum, low=0.0, high=0.999)
        _number("confidence_threshold", self.confidence_threshold, low=0.0, high=0.999)
        _number("divergence_accuracy", self.divergence_accuracy, low=0.5, high=1.0)
        _count("d_steps", self.d_steps, 1)
        _count("copy_every", self.copy_every, 1)
        _count("warmup_epochs", self.warmup_epochs, 0)
        _count("divergence_patience", self.divergence_patience, 1)
        if not isinstance(self.d_hidden, tuple) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.d_hidden
        ):
            raise ValueError(f"AKTConfig.d_hidden must be a tuple of integers >= 1, got {self.d_hidden!r}")
        if self.method == "pseudo-label" and self.warmup_epochs < 1:
            raise ValueError(
                "AKTConfig: method 'pseudo-label' first trains M on the target alone: set warmup_epochs >= 1 "
                "(e.g. half of the epochs)"
            )
        if self.adversarial and self.lambda_di == 0 and self.group_weight == 0:
            raise ValueError(f"AKTConfig: method {self.method!r} needs lambda_di or lambda_dg > 0")

    @property
    def uses_source(self) -> bool:
        """Whether the method reads the unlabelled source images (all but scratch)."""
        return self.method != "scratch"

    @property
    def adversarial(self) -> bool:
        """Whether the method plays the game of Eq. 1 (akt-di and akt)."""
        return self.method in ("akt-di", "akt")

    @property
    def group_weight(self) -> float:
        """The effective lambda_DG: 0 unless the method is akt."""
        return self.lambda_dg if self.method == "akt" else 0.0
