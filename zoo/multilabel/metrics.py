"""Multi-label metrics of paper 004 (Sec. A.3): mAP, CF1 and OF1 (with CP, CR, OP, OR).

    m = multilabel_metrics(scores [n, C], targets [n, C] in {0, 1}, threshold=0.5)

- mAP: the mean, over the classes with at least one positive, of the non-interpolated average precision
  AP_c = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds taken in decreasing order (tied
  scores enter together), i.e. scikit-learn's average_precision_score per class. NaN when no class has
  a positive.
- Predictions are scores >= threshold (a scalar or one threshold per class). Pass probabilities
  (sigmoid outputs) with the default 0.5; with raw logits, pass threshold=0.
- CP, CR: per-class precision TP_c / (TP_c + FP_c) and recall TP_c / (TP_c + FN_c), averaged over all
  C classes; a 0/0 counts as 0 (scikit-learn's zero_division=0). CF1 = 2 CP CR / (CP + CR), the F1 of
  the averages (the ML-GCN convention), not scikit-learn's macro F1 (the average of per-class F1s).
- OP, OR, OF1: the same over all (sample, class) pairs pooled (micro averages; OF1 is scikit-learn's
  f1_score(average="micro")).

Every value is a Python float in [0, 1]. The L2D codebase instead predicts each sample's top-k scores,
k its true number of labels (an oracle count); we threshold, as the task and ML-GCN do.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


def _as_array(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{name} must be a numeric array or tensor; got dtype {a.dtype}")
    return a


def _check(scores: object, targets: object) -> tuple[np.ndarray, np.ndarray]:
    s = _as_array(scores, "scores").astype(np.float64)
    y = _as_array(targets, "targets")
    if s.ndim != 2 or s.shape != y.shape or s.shape[0] == 0:
        raise ValueError(
            f"scores {s.shape} and targets {y.shape} must both be [n, C] with n >= 1; "
            "one row per sample, one column per class"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no nan or inf)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("targets must hold only 0 and 1 (multi-hot labels)")
    return s, y.astype(bool)


def _threshold(threshold: object, num_classes: int) -> np.ndarray:
    t = _as_array(threshold, "threshold").astype(np.float64)
    if t.ndim == 0:
        t = np.full(num_classes, float(t))
    if t.shape != (num_classes,) or not np.isfinite(t).all():
        raise ValueError(
            f"threshold must be a finite number or one per class ({num_classes}); got shape {t.shape}"
        )
    return t


def average_precision(scores: object, targets: object) -> np.ndarray:
    """Per-class non-interpolated AP [C] (NaN for a class without positives), as scikit-learn's
    average_precision_score: AP = (1 / n_pos) sum over positives of the precision at their score,
    counting every sample with a score >= that score (ties enter together)."""
    s, y = _check(scores, targets)
    n, num_classes = s.shape
    ap = np.full(num_classes, np.nan)
    for c in range(num_classes):
        n_pos = int(y[:, c].sum())
        if n_pos == 0:
            continue
        order = np.argsort(-s[:, c], kind="stable")
        desc, hits = s[order, c], y[order, c]
        tp = np.cumsum(hits)
        # the end of each sample's tie group: the number of samples scoring >= its score, minus 1
        end = np.searchsorted(-desc, -desc, side="right") - 1
        precision = tp[end] / (end + 1)
        ap[c] = precision[hits].sum() / n_pos
    return ap


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(np.shape(num), dtype=np.float64), where=den > 0)


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def multilabel_metrics(scores: object, targets: object, threshold: object = 0.5) -> dict[str, float]:
    """mAP, CP, CR, CF1, OP, OR, OF1 of scores [n, C] against 0/1 targets [n, C] (see the module text).
    Numpy arrays or torch tensors; threshold: a number or one per class [C]."""
    s, y = _check(scores, targets)
    pred = s >= _threshold(threshold, s.shape[1])[None, :]
    tp = (pred & y).sum(0).astype(np.float64)
    n_pred = pred.sum(0).astype(np.float64)
    n_true = y.sum(0).astype(np.float64)
    ap = average_precision(s, y)
    cp, cr = float(_ratio(tp, n_pred).mean()), float(_ratio(tp, n_true).mean())
    op, orr = float(_ratio(tp.sum(), n_pred.sum())), float(_ratio(tp.sum(), n_true.sum()))
    return {
        "mAP": float(np.nanmean(ap)) if not np.isnan(ap).all() else float("nan"),
        "CP": cp,
        "CR": cr,
        "CF1": _f1(cp, cr),
        "OP": op,
        "OR": orr,
        "OF1": _f1(op, orr),
    }
