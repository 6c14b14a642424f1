"""Plain PyTorch training and evaluation of a classifier (no Ray): the demo zoo's teachers and SPV,
the supervised baseline of paper 001 (trained on the union of the teachers' data).

The schedule follows paper 001, Sec. 4.1.1: a step size ``lr`` for the first half of the epochs and
``lr / 10`` for the second half. The default optimiser is Adam, which trains the small teachers of
the demo from scratch faster and more reliably than SGD; ``optimizer="sgd"`` gives the paper's SGD
with momentum 0.9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OPTIMIZERS = ("adam", "sgd")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU (decided at run time)."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _loss(logits: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
    """Cross-entropy with hard (int [B]) or soft ([B, L] probabilities) targets.

    ``weights`` [L] scales each class's term: for hard targets the usual class-weighted CE
    (normalised by the weights of the batch's targets), for soft targets
    -sum_l w_l q_l log p_l averaged over the batch (the balanced soft labels of paper 001, Sec. 3.5.2).
    """
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return F.cross_entropy(logits, targets.long(), weight=weights)
    logp = F.log_softmax(logits, dim=1)
    per_class = targets * logp if weights is None else targets * logp * weights
    return -per_class.sum(dim=1).mean()


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

    Seeded: the batch order, dropout and augmentation come from ``seed`` (the global RNG state is
    restored afterwards), so two calls with the same model weights and seed give the same result on
    the same device. ``augment`` adds random 2-pixel translations (padding by reflection).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if len(images) != len(targets) or len(images) == 0:
        raise ValueError(f"images ({len(images)}) and targets ({len(targets)}) must be equally many, > 0")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    dev = pick_device(device)
    model = model.to(dev)
    images = images.float()
    if weights is not None:
        weights = weights.to(dev, torch.float32)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    # Paper 001: step size lr for the first half of the epochs, lr / 10 for the second half.
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 2), gamma=0.1)
    n = len(images)
    # BatchNorm cannot train on a batch of one: drop a trailing singleton batch.
    drop_last = n % batch_size == 1 and n > 1
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        bar = _progress(epochs, progress)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(n, generator=gen)
            stop = n - 1 if drop_last else n
            for start in range(0, stop, batch_size):
                idx = order[start : min(start + batch_size, stop)]
                x, y = images[idx].to(dev, non_blocking=True), targets[idx].to(dev, non_blocking=True)
                if augment:
                    x = _translate(x, gen)
                loss = _loss(model(x), y, weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
    model.eval()
    return model


def _translate(x: Tensor, gen: torch.Generator, pad: int = 2) -> Tensor:
    """Shift the whole batch by one random (dy, dx) in [-pad, pad] (reflection padding)."""
    dy, dx = (torch.randint(0, 2 * pad + 1, (2,), generator=gen) - pad).tolist()
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def _progress(total: int, progress: bool | None):
    """A tqdm bar over epochs when asked for, or by default only on a terminal."""
    import sys

    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="epochs", leave=False)


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
    pred = predict_logits(model, images, batch_size).argmax(dim=1)
    return float((pred == torch.as_tensor(labels).cpu().long()).float().mean())
