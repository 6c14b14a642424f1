"""Input validation shared by the assessment scores and the Sinkhorn solver.

Every check raises ValueError with a message that names the input and says what it must be. Tensors keep
their device; numpy arrays and lists are accepted where a score takes data (``as_matrix``, ``as_labels``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_matrix(x: object, name: str, rows: int | None = None, cols: int | None = None) -> Tensor:
    """``x`` as a finite floating-point [rows, cols] tensor (numpy and lists accepted)."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a 2-D tensor or array; got {type(x).__name__}") from None
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, columns]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows (one per sample); got {x.shape[0]}")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns; got {x.shape[1]}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or inf values: pass finite numbers")
    return x


def as_indices(x: object, name: str, n: int | None = None) -> Tensor:
    """``x`` as a 1-D int64 tensor of non-negative integers (of length ``n`` if given)."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a 1-D tensor or array of integers") from None
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D [n]; got shape {tuple(x.shape)}")
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} holds NaN or inf values: pass integer class indices")
        if not bool((x == x.round()).all()):
            raise ValueError(f"{name} must hold integer class indices; got non-integer values")
    elif x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must hold integer class indices; got dtype {x.dtype}")
    x = x.long()
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} entries but there are {n} samples: give one per sample")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if bool((x < 0).any()):
        raise ValueError(f"{name} must be non-negative class indices; got min {int(x.min())}")
    return x


def as_labels(x: object, name: str = "labels", n: int | None = None) -> tuple[Tensor, int]:
    """Task labels: integers 0..C-1 with every class present and C >= 2. Returns (labels, C)."""
    y = as_indices(x, name, n)
    num_classes = int(y.max()) + 1
    counts = torch.bincount(y, minlength=num_classes)
    if num_classes < 2:
        raise ValueError(f"{name} hold one class only: a task needs at least 2 classes")
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ValueError(
            f"{name} must be 0..C-1 with every class present; classes {missing[:10]} have no sample "
            "(relabel the classes consecutively)"
        )
    return y, num_classes


def positive(value: object, name: str) -> float:
    """``value`` as a positive finite float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number; got {value!r}") from None
    if not (v > 0 and v < float("inf")):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return v


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value
