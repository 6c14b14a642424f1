"""AKT's losses (paper 003, Eq. 2-6) as pure functions of logits.

Signs. Eq. 2-4 write the discriminators' log-likelihood, log D(real) + log(1 - D(fake)), and Eq. 5
G's log(1 - D(fake)); Algorithm 1 then says "minimise L_D, maximise L_G", which read literally makes
the discriminators confuse the domains on purpose and G make its features *more* recognisable as
source. The game that is meant (Eq. 1, Sec. 3.3: "discriminators ... using binary cross-entropy",
"G is trained to produce features such that the discriminators are fooled") is the usual GAN game,
implemented here:

- the discriminators *minimise* the binary cross-entropy, -[log D(real) + log(1 - D(fake))], i.e. the
  negative of Eq. 2-4 (`discriminator_loss`, `akt_discriminator_loss`);
- G *minimises* the non-saturating loss -log D(G(x_s)) (Goodfellow et al.'s standard replacement for
  minimising Eq. 5, which has vanishing gradients while D wins) (`generator_loss`, `akt_generator_loss`).

Logits are pre-sigmoid; every loss uses softplus (log-sum-exp stable): -log sigmoid(z) = softplus(-z),
-log(1 - sigmoid(z)) = softplus(z).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "discriminator_loss",
    "akt_discriminator_loss",
    "generator_loss",
    "akt_generator_loss",
    "discriminator_accuracy",
    "pseudo_labels",
    "ClassifierLoss",
    "classifier_loss",
]


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Binary cross-entropy of one discriminator, the negative of Eq. 2 (D_I, logits [B]) or Eq. 3
    (D_G, logits [1] of the batch means): mean softplus(-real) + mean softplus(fake)."""
    if real_logits.numel() == 0 or fake_logits.numel() == 0:
        raise ValueError("discriminator_loss needs at least one real and one fake logit")
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def akt_discriminator_loss(
    di_real: Tensor,
    di_fake: Tensor,
    dg_real: Tensor | None,
    dg_fake: Tensor | None,
    lambda_di: float,
    lambda_dg: float,
) -> Tensor:
    """L_D of Eq. 4 with the sign the discriminators minimise: lambda_DI * BCE(D_I) + lambda_DG * BCE(D_G).
    D_G's logits may be None when lambda_dg is 0 (akt-di)."""
    loss = lambda_di * discriminator_loss(di_real, di_fake)
    if lambda_dg:
        if dg_real is None or dg_fake is None:
            raise ValueError("akt_discriminator_loss: lambda_dg > 0 needs D_G's logits")
        loss = loss + lambda_dg * discriminator_loss(dg_real, dg_fake)
    return loss


def generator_loss(fake_logits: Tensor) -> Tensor:
    """G's non-saturating loss against one discriminator: mean -log D(G(x_s)) = mean softplus(-fake).
    Replaces minimising Eq. 5's log(1 - D(G(x_s))): same fixed point, gradients that do not vanish
    when the discriminator is winning."""
    if fake_logits.numel() == 0:
        raise ValueError("generator_loss needs at least one logit")
    return F.softplus(-fake_logits).mean()


def akt_generator_loss(di_fake: Tensor, dg_fake: Tensor | None, lambda_di: float, lambda_dg: float) -> Tensor:
    """G's loss over both discriminators (Eq. 5, non-saturating): lambda_DI * gen(D_I) + lambda_DG * gen(D_G).
    The paper writes Eq. 5 unweighted; the weights of Eq. 4 are reused so that lambda_dg = 0 (akt-di)
    removes D_G from G's loss too."""
    loss = lambda_di * generator_loss(di_fake)
    if lambda_dg:
        if dg_fake is None:
            raise ValueError("akt_generator_loss: lambda_dg > 0 needs D_G's logit")
        loss = loss + lambda_dg * generator_loss(dg_fake)
    return loss


def discriminator_accuracy(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Fraction of real logits > 0 and fake logits < 0, over both (0.5 is chance, 1 is a lost game)."""
    hits = (real_logits > 0).sum() + (fake_logits < 0).sum()
    return hits.float() / (real_logits.numel() + fake_logits.numel())


def pseudo_labels(g_logits: Tensor, mode: str = "hard", threshold: float = 0.0) -> tuple[Tensor, Tensor]:
    """Targets for the source images from G's logits [B, C] (Eq. 6's G(x_s)), and per-image weights [B].

    mode "hard": int64 [B], argmax of G; "soft": float [B, C], G's softmax probabilities. Weights are 1
    where G's top probability is >= threshold, else 0 (threshold 0 keeps every image).
    """
    if g_logits.ndim != 2 or g_logits.shape[0] == 0:
        raise ValueError(f"pseudo_labels takes G's logits [B >= 1, C], got shape {tuple(g_logits.shape)}")
    if mode not in ("hard", "soft"):
        raise ValueError(f"pseudo_labels mode must be 'hard' or 'soft', got {mode!r}")
    probs = torch.softmax(g_logits.detach().float(), dim=1)
    confidence, label = probs.max(dim=1)
    weights = (confidence >= threshold).to(probs.dtype)
    return (label if mode == "hard" else probs), weights


class ClassifierLoss(NamedTuple):
    """Eq. 6: total = target + lambda_s * source (source None when there is no source term)."""

    total: Tensor
    target: Tensor
    source: Tensor | None


def classifier_loss(
    logits_t: Tensor,
    y_t: Tensor,
    logits_s: Tensor | None = None,
    targets_s: Tensor | None = None,
    weights_s: Tensor | None = None,
    lambda_s: float = 1.0,
) -> ClassifierLoss:
    """M's loss of Eq. 6: CE(M(x_t), y_t) averaged over the target batch plus lambda_s times the source
    term (1/b) sum_i w_i CE(M(x_s_i), G(x_s_i)), with hard (int [B]) or soft ([B, C]) targets and the
    weights w from `pseudo_labels` (the 1/b counts dropped images too, so a threshold also shrinks the
    term). Without source logits (scratch, warm-up) the total is the target CE."""
    if logits_t.ndim != 2 or y_t.shape != logits_t.shape[:1] or logits_t.shape[0] == 0:
        raise ValueError(
            "classifier_loss: need logits_t [B >= 1, C] and y_t [B]; "
            f"got {tuple(logits_t.shape)}, {tuple(y_t.shape)}"
        )
    loss_t = F.cross_entropy(logits_t, y_t.long())
    if logits_s is None:
        return ClassifierLoss(loss_t, loss_t, None)
    if targets_s is None:
        raise ValueError("classifier_loss: source logits given without their pseudo-labels")
    if targets_s.dtype.is_floating_point:
        per_image = -(targets_s * F.log_softmax(logits_s, dim=1)).sum(dim=1)
    else:
        per_image = F.cross_entropy(logits_s, targets_s, reduction="none")
    if weights_s is not None:
        per_image = per_image * weights_s
    loss_s = per_image.mean()
    return ClassifierLoss(loss_t + lambda_s * loss_s, loss_t, loss_s)
