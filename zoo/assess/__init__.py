"""Teacher assessment (paper 002, Sec. 5) and the optimal-transport pieces it shares with cross-task
distillation (Sec. 4). Pure tensor functions: no Ray, no MLflow, no files.

    value, alpha, beta = sinkhorn(p_t, p_s, cost, eps=0.1, n_iter=100, tol=None)   # Eq. 12-13, batched
    centres = class_centres(features, labels, num_classes)                         # Eq. 6
    M = cost_matrix(head, centres, normalisation="l2")                             # Eq. 7-8
    sinkhorn_score(features, teacher_logits, labels, head)                         # Alg. 4, -Eq. 24
    leep(source_probs, labels); nce(source_labels, labels); logme(features, labels) # baselines
    score_teacher(name, logits, labels, features=f, head=w); rank_teachers(results, metrics)  # a zoo

Every score is higher-is-better. One method per file; see docs/assess.md.
"""

from __future__ import annotations

from .cost import NORMALISATIONS, class_centres, cost_matrix
from .fictitious import FictitiousStudent, fit_fictitious_student
from .leep import leep
from .logme import logme
from .nce import nce
from .ranking import METRICS, TeacherScores, parse_metrics, rank_teachers, ranks, score_teacher
from .sinkhorn import sinkhorn
from .sinkhorn_score import sinkhorn_score

__all__ = [
    "METRICS",
    "NORMALISATIONS",
    "FictitiousStudent",
    "TeacherScores",
    "class_centres",
    "cost_matrix",
    "fit_fictitious_student",
    "leep",
    "logme",
    "nce",
    "parse_metrics",
    "rank_teachers",
    "ranks",
    "score_teacher",
    "sinkhorn",
    "sinkhorn_score",
]
