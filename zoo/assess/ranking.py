"""One teacher's assessment scores and the ranking of a zoo: what the assess job computes per teacher.

    result = score_teacher("t1", logits, labels, features=f, head=w)       # TeacherScores
    ranked = rank_teachers([r1, r2, ...], metrics=("sinkhorn", "logme"))   # best first
    ranks(ranked, "logme")                                                  # {name: 1, ...}

Every metric is higher-is-better (docs/assess.md). ``sinkhorn`` (Alg. 4, Approximation II) needs the
teacher's penultimate features and its last linear layer, ``logme`` the features; ``leep`` and ``nce``
only the teacher's outputs. A teacher without features (its architecture cannot be split) is scored by
the output metrics and marked with why (`TeacherScores.note`), never dropped: its feature metrics are
None. Pure functions: no Ray, no MLflow, no files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._checks import as_labels, as_matrix
from .leep import leep
from .logme import logme
from .nce import nce
from .sinkhorn_score import sinkhorn_score

__all__ = [
    "METRICS",
    "NEEDS_FEATURES",
    "TeacherScores",
    "parse_metrics",
    "rank_key",
    "rank_teachers",
    "ranks",
    "score_teacher",
]

METRICS: tuple[str, ...] = ("sinkhorn", "logme", "leep", "nce")
NEEDS_FEATURES: frozenset[str] = frozenset({"sinkhorn", "logme"})


@dataclass
class TeacherScores:
    """One teacher's scores (None: not computable for it, `note` says why) and the seconds each took."""

    name: str
    scores: dict[str, float | None]
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scores": dict(self.scores),
            "seconds": dict(self.seconds),
            "note": self.note,
        }


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """``"sinkhorn,leep"`` or a sequence of names -> a tuple of known metrics in the given order
    (the first one ranks); ValueError naming the known ones for an unknown, repeated or empty list."""
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = tuple(str(m).strip().lower() for m in items if str(m).strip())
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose among {','.join(METRICS)}")
    if not names:
        raise ValueError(f"no metric given; choose among {','.join(METRICS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"metric(s) named twice in {','.join(names)}; name each once")
    return names


def _timed(fn: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def score_teacher(
    name: str,
    logits: Tensor,
    labels: Tensor,
    *,
    features: Tensor | None = None,
    head: Tensor | None = None,
    metrics: Sequence[str] = METRICS,
    no_features: str = "",
    sinkhorn_options: Mapping[str, Any] | None = None,
) -> TeacherScores:
    """Score one teacher on a labelled task.

    logits [n, m]: the teacher's logits on the task's n images, in its own class order; labels [n] in
    0..C-1 (every class present, C >= 2: ValueError otherwise); features [n, d]: its penultimate
    features of the same images, and head [m, d]: the weight of its last linear layer (both None when
    its architecture gives none, ``no_features`` saying why). ``sinkhorn_options`` go to
    `sinkhorn_score` (tau, eps, n_iter, normalisation, l2, folds). LEEP takes softmax(logits) (Nguyen et
    al.'s theta), NCE the argmax. Non-finite logits or features leave the metrics that need them None,
    with the reason in the note."""
    metrics = parse_metrics(metrics)
    y, _ = as_labels(labels, "labels")
    z = torch.as_tensor(logits)
    notes: list[str] = []
    if not bool(torch.isfinite(z).all()):
        notes.append("its logits hold NaN or inf: not scored")
        z = None
    else:
        z = as_matrix(z, "logits", rows=y.shape[0]).to(torch.float64)
    f = None
    if features is None:
        notes.append(f"no features ({no_features or 'none given'}): scored by leep, nce only")
    elif not bool(torch.isfinite(torch.as_tensor(features)).all()):
        notes.append("its features hold NaN or inf: scored by leep, nce only")
    else:
        f = as_matrix(features, "features", rows=y.shape[0]).to(torch.float64)
        if head is None:
            notes.append("no last linear layer given: no sinkhorn score")
    computations: dict[str, Callable[[], float]] = {}
    if z is not None:
        computations["leep"] = lambda: leep(torch.softmax(z, dim=1), y)
        computations["nce"] = lambda: nce(z.argmax(dim=1), y)
        if f is not None and head is not None:
            opts = dict(sinkhorn_options or {})
            computations["sinkhorn"] = lambda: sinkhorn_score(f, z, y, head, **opts)
    if f is not None:
        computations["logme"] = lambda: logme(f, y)
    result = TeacherScores(name, {}, {}, "; ".join(n for n in notes if _concerns(n, metrics)))
    for m in metrics:
        if m in computations:
            result.scores[m], result.seconds[m] = _timed(computations[m])
        else:
            result.scores[m] = None
    return result


def _concerns(note: str, metrics: Sequence[str]) -> bool:
    """A missing-features note matters only when a feature metric was asked for."""
    if note.startswith("no last linear"):
        return "sinkhorn" in metrics
    return not note.startswith(("no features", "its features")) or any(m in NEEDS_FEATURES for m in metrics)


def rank_key(result: TeacherScores, metrics: Sequence[str]) -> tuple:
    """Sort key: by the first metric (higher first), ties and missing scores broken by the next ones;
    a teacher without a score for a metric comes after every teacher with one; then by name."""
    key: list[Any] = []
    for m in metrics:
        s = result.scores.get(m)
        key += [0, -s] if s is not None else [1, 0.0]
    return (*key, result.name)


def rank_teachers(results: Iterable[TeacherScores], metrics: Sequence[str]) -> list[TeacherScores]:
    """The teachers best first (`rank_key`): the first metric ranks, the others break ties."""
    metrics = parse_metrics(metrics)
    return sorted(results, key=lambda r: rank_key(r, metrics))


def ranks(results: Iterable[TeacherScores], metric: str) -> dict[str, int | None]:
    """Each teacher's rank by ``metric`` alone: 1 = best, equal scores share the better rank
    ("1, 2, 2, 4"), None for a teacher without a score for it."""
    scored = [(r.name, r.scores.get(metric)) for r in results]
    values = sorted((s for _, s in scored if s is not None), reverse=True)
    first = {}
    for k, s in enumerate(values):
        first.setdefault(s, k + 1)
    return {name: (first[s] if s is not None else None) for name, s in scored}
