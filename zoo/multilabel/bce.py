"""The supervised multi-label loss: binary cross-entropy with logits, one binary problem per label.

    L_BCE = (1/B) sum_b sum_c BCE(sigmoid(z_bc), y_bc)

Reduced as the distillation losses are (sum over labels, mean over the batch), so that their weights
compare directly. The L2D codebase (criterion/loss/bce.py) sums over the batch as well: its loss is
B times this one, which matters when reading the paper's weights alpha and beta (docs/multilabel.md).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._common import check_logits, check_targets


def multilabel_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE with logits [B, C] against 0/1 targets [B, C]; a scalar (sum over labels, mean over batch)."""
    check_logits(logits)
    y = check_targets(targets, logits).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / logits.shape[0]
