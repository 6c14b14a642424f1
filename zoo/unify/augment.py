"""Lever: augmentation of the transfer images while the student trains (beyond paper 001).

The student sees each transfer image with the same soft label every epoch; small random
translations (as the demo's teachers may use, `zoo.train._translate`) make it fit the label's
class rather than the exact pixels, which matters when q is noisy. Unlike `zoo.train._translate`
(one shift per batch) every sample gets its own shift; padding by reflection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_translate"]


def random_translate(x: Tensor, generator: torch.Generator, pad: int = 2) -> Tensor:
    """x [B, C, H, W] with sample b shifted by its own (dy, dx), uniform in [-pad, pad]^2.

    ``generator`` (a CPU torch.Generator) makes the shifts reproducible: the same seed gives the same
    batch. pad = 0 returns x unchanged."""
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
