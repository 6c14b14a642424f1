"""Evaluate a saved model on a labelled set: top-1 accuracy overall and per class group.

Paper 001's students are compared overall and on the classes that only one teacher knows (where a
unified student has the least to go on), so the groups are counted from the teachers' mask.
"""

from __future__ import annotations

import numpy as np
import torch

from zoo.artifacts import load_model, preprocess
from zoo.data import decode_image
from zoo.pipeline.datasets import LabelledSet
from zoo.pipeline.soft_labels import read_soft_labels
from zoo.pipeline.storage import PathLike, local_copy
from zoo.pipeline.transfer import read_transfer_images

__all__ = ["class_groups", "evaluate_model", "fit_agreement", "group_accuracy", "predict"]


def predict(model_dir: PathLike, images: object, batch_size: int = 1024) -> np.ndarray:
    """Top-1 class indices of the model saved in ``model_dir`` (a path or a URI) on ``images``."""
    with local_copy(model_dir) as d:
        model, spec = load_model(d)
    model.eval()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            preds.append(model(preprocess(images[s : s + batch_size], spec.input)).argmax(1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def class_groups(mask: torch.Tensor) -> dict[str, list[int]]:
    """Union classes grouped by how many teachers predict them: {"1 teacher": [...], "2+ teachers": [...]}."""
    counts = mask.sum(0).tolist()
    groups = {
        "1 teacher": [i for i, c in enumerate(counts) if c == 1],
        "2+ teachers": [i for i, c in enumerate(counts) if c >= 2],
    }
    return {k: v for k, v in groups.items() if v}


def group_accuracy(pred: np.ndarray, labels: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
    """Top-1 accuracy overall ("all") and on the samples of each class group."""
    out = {"all": float((pred == labels).mean()) if len(labels) else float("nan")}
    for name, classes in groups.items():
        sel = np.isin(labels, classes)
        if sel.any():
            out[name] = float((pred[sel] == labels[sel]).mean())
    return out


def evaluate_model(
    model_dir: PathLike, labelled: LabelledSet, groups: dict[str, list[int]]
) -> dict[str, float]:
    """`group_accuracy` of the model in ``model_dir`` on ``labelled``."""
    return group_accuracy(predict(model_dir, labelled.images), labelled.labels, groups)


def fit_agreement(model_dir: PathLike, transfer_path: PathLike, soft_labels_path: PathLike) -> float:
    """The share of transfer images on which the student's top-1 is its soft labels' top-1: how well it
    fits what it was trained on. A student far below 1 has not converged (too few steps, a diverging
    recipe) and its accuracy is no measure of the method."""
    ids, blobs = read_transfer_images(transfer_path)
    q = read_soft_labels(soft_labels_path)
    pos = {i: k for k, i in enumerate(q.ids)}
    target = q.q[[pos[i] for i in ids]].argmax(1).numpy()
    return float((predict(model_dir, [decode_image(b) for b in blobs]) == target).mean())
