"""Input validation and quantities shared by every estimator (paper 001, Sec. 3).

Conventions (see docs/unify.md):
- ``logits`` [B, N, L]: teacher logits on the union label space; entries where ``mask`` [N, L] is False
  are ignored whatever they hold (any value, inf, nan). They are replaced with ``torch.where`` before any
  arithmetic, so nothing non-finite ever reaches a multiply.
- Temperature: teacher logits are divided by T; p_i = softmax(z_i / T) over L_i (Eq. 2).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

METHODS: tuple[str, ...] = ("sd", "ce", "mf-p", "mf-lu", "mf-lf")
MODES: tuple[str, ...] = ("e", "bp", "bs")

# Samples per chunk are picked so that one float64 [b, N, L] tensor stays near 64 MiB: the solvers hold a
# handful of them at once, so peak memory is bounded whatever B is (chunks loop over blocks, never samples).
_CHUNK_ELEMENTS = 1 << 23


class ConvergenceWarning(UserWarning):
    """An iterative solver hit max_iter before its tolerance on some samples."""


def normalize_method(method: str) -> str:
    """``method`` as one of METHODS (case-insensitive, '_' accepted for '-'); ValueError otherwise."""
    if not isinstance(method, str):
        raise ValueError(f"method must be a string, one of {METHODS}; got {method!r}")
    name = method.strip().lower().replace("_", "-")
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {METHODS}")
    return name


def check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")
    return t


def check_options(method: str, options: Mapping[str, object], defaults: Mapping[str, object]) -> dict:
    """Merge solver ``options`` into ``defaults``; unknown names raise ValueError naming the allowed ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"unknown solver option(s) {unknown} for method {method!r}; allowed: {allowed}")
    merged = dict(defaults)
    merged.update(options)
    for key in ("tol", "lam"):
        if key in merged:
            value = float(merged[key])
            if not math.isfinite(value) or value < 0 or (key == "tol" and value == 0):
                raise ValueError(f"solver option {key} must be a positive finite number; got {merged[key]!r}")
            merged[key] = value
    for key in ("max_iter", "chunk_size"):
        if key in merged and merged[key] is not None:
            value = merged[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"solver option {key} must be a positive integer; got {value!r}")
    return merged


def check_mask(mask: Tensor, num_teachers: int | None = None, num_classes: int | None = None) -> Tensor:
    """Validate the [N, L] mask: boolean-like, every teacher has a class, every class has a teacher."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a torch.Tensor of shape [N, L]; got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape [N, L] (2 dims); got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean (or 0/1): True where teacher i predicts class l")
        mask = mask != 0
    n, l_ = mask.shape
    if n == 0 or l_ == 0:
        raise ValueError(f"mask must have at least one teacher and one class; got shape {tuple(mask.shape)}")
    if num_teachers is not None and (n, l_) != (num_teachers, num_classes):
        raise ValueError(
            f"logits [B, N, L] = [*, {num_teachers}, {num_classes}] do not match mask [N, L] = "
            f"{list(mask.shape)}: lay teacher logits out on the mask's union label space"
        )
    empty_teachers = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty_teachers:
        raise ValueError(f"teacher(s) {empty_teachers} have no class in the mask (a teacher with no class)")
    orphan_classes = (~mask.any(dim=0)).nonzero().flatten().tolist()
    if orphan_classes:
        raise ValueError(
            f"class(es) {orphan_classes} are predicted by no teacher: drop them from the union label space"
        )
    return mask


def check_logits(logits: Tensor, mask: Tensor, name: str = "logits") -> tuple[Tensor, Tensor]:
    """Validate teacher ``logits`` [B, N, L] against ``mask`` [N, L]; returns (logits, bool mask)."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, N, L]; got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"{name} must have shape [B, N, L] (3 dims); got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {logits.dtype}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} has no sample (B = 0)")
    mask = check_mask(mask, logits.shape[1], logits.shape[2]).to(logits.device)
    # Observed entries must be finite: a teacher's inf/nan logit is a bug upstream, not something to average.
    bad = mask.unsqueeze(0) & ~torch.isfinite(logits)
    if bool(bad.any()):
        first = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{name} hold non-finite values at observed (mask=True) entries, e.g. at [b, i, l] = {first}; "
            "only entries where mask is False may hold inf or nan"
        )
    return logits, mask


def check_student(student_logits: Tensor, logits: Tensor) -> None:
    if not isinstance(student_logits, Tensor) or student_logits.dim() != 2:
        shape = tuple(student_logits.shape) if isinstance(student_logits, Tensor) else type(student_logits)
        raise ValueError(f"student_logits must be a tensor of shape [B, L]; got {shape}")
    if not student_logits.is_floating_point():
        raise ValueError(f"student_logits must be floating point; got {student_logits.dtype}")
    b, _, l_ = logits.shape
    if tuple(student_logits.shape) != (b, l_):
        raise ValueError(
            f"student_logits shape {tuple(student_logits.shape)} does not match teacher logits [B, N, L] = "
            f"{list(logits.shape)}: expected [B, L] = [{b}, {l_}]"
        )


def check_weights(weights: Tensor | None, num_classes: int, like: Tensor) -> Tensor | None:
    """BS class weights [L] (non-negative, finite), cast to ``like``'s dtype and device; None passes."""
    if weights is None:
        return None
    if not isinstance(weights, Tensor):
        weights = torch.as_tensor(weights)
    if weights.dim() != 1 or weights.shape[0] != num_classes:
        raise ValueError(f"weights must have shape [L] = [{num_classes}]; got {tuple(weights.shape)}")
    weights = weights.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("weights must be finite and non-negative (see balance_weights)")
    return weights


def scaled_logits(logits: Tensor, mask: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """Z = logits / T in ``dtype``, masked entries set to 0 (torch.where first: inf/nan never multiply)."""
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    return torch.where(mask, logits, zero).to(dtype) / temperature


def teacher_log_probs(z: Tensor, mask: Tensor) -> Tensor:
    """log p_i(l) = log softmax over L_i of z_i (Eq. 2 with z already divided by T); 0 where masked."""
    neg_inf = torch.tensor(float("-inf"), dtype=z.dtype, device=z.device)
    logp = torch.log_softmax(torch.where(mask, z, neg_inf), dim=-1)
    return torch.where(mask, logp, torch.zeros((), dtype=z.dtype, device=z.device))


def teacher_probs(logits: Tensor, mask: Tensor, temperature: float = 3.0) -> Tensor:
    """p_i(l) = softmax(z_i / T) over L_i (Eq. 2), zero-padded to [B, N, L] (the matrix P of Sec. 3.4.1)."""
    temperature = check_temperature(temperature)
    logits, mask = check_logits(logits, mask)
    dtype = logits.dtype
    z = scaled_logits(logits, mask, temperature, torch.float64 if dtype == torch.float64 else torch.float32)
    return torch.where(mask, teacher_log_probs(z, mask).exp(), 0.0).to(dtype)


def masked_softmax(u: Tensor, mask: Tensor) -> Tensor:
    """softmax of u [B, L] over each teacher's classes: [B, N, L], zero outside L_i (q-hat_i, Eq. 8)."""
    neg_inf = torch.tensor(float("-inf"), dtype=u.dtype, device=u.device)
    s = torch.softmax(torch.where(mask, u.unsqueeze(1), neg_inf), dim=-1)
    return torch.where(mask, s, torch.zeros((), dtype=u.dtype, device=u.device))


def components(mask: Tensor) -> tuple[Tensor, Tensor, int]:
    """Connected components of the overlap graph (teachers linked through shared classes).

    Returns (class_component [L], teacher_component [N], number of components), all on mask's device.
    The mask is shared by the batch, so this runs once per call, on N + L nodes.
    """
    m = mask.detach().cpu()
    n, l_ = m.shape
    parent = list(range(n + l_))  # union-find over teachers 0..N-1 and classes N..N+L-1

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, k in m.nonzero().tolist():
        ri, rl = find(i), find(n + k)
        if ri != rl:
            parent[rl] = ri
    roots: dict[int, int] = {}
    labels = [roots.setdefault(find(x), len(roots)) for x in range(n + l_)]
    comp = torch.tensor(labels, dtype=torch.long)
    return comp[n:].to(mask.device), comp[:n].to(mask.device), len(roots)


def fix_component_mass(q: Tensor, mask: Tensor) -> Tensor:
    """Set the mass of each connected component of classes to (its number of teachers) / N.

    When the overlap graph is disconnected the teachers say nothing about how mass splits between
    components (every method's objective is invariant to it), so every method returns its within-component
    distribution scaled to this split, which is what SD gives. No-op (returns q) for a connected graph.
    """
    class_comp, teacher_comp, count = components(mask)
    if count == 1:
        return q
    n = mask.shape[0]
    target = torch.bincount(teacher_comp, minlength=count).to(q.dtype) / n  # [C]
    onehot = torch.nn.functional.one_hot(class_comp, count).to(q.dtype)  # [L, C]
    mass = q @ onehot  # [B, C]
    size = onehot.sum(0)  # classes per component
    # A component with no mass (possible in MF-P) gets a uniform split of its target mass.
    uniform = (target / size)[class_comp].expand_as(q)
    scaled = q * (target / mass.clamp_min(torch.finfo(q.dtype).tiny))[:, class_comp]
    return torch.where(mass[:, class_comp] > 0, scaled, uniform)


def run_chunked(fn: Callable[[Tensor], Tensor], logits: Tensor, chunk_size: int | None) -> Tensor:
    """Apply ``fn`` to blocks of samples (bounded memory) and concatenate; one block when it fits."""
    b, n, l_ = logits.shape
    size = chunk_size or max(1, _CHUNK_ELEMENTS // (n * l_))
    if b <= size:
        return fn(logits)
    return torch.cat([fn(logits[start : start + size]) for start in range(0, b, size)], dim=0)


def warn_unconverged(method: str, count: int, total: int, max_iter: int) -> None:
    if count:
        warnings.warn(
            f"{method}: {count} of {total} samples did not reach the tolerance in max_iter={max_iter} "
            "iterations; raise max_iter or loosen tol",
            ConvergenceWarning,
            stacklevel=3,
        )
