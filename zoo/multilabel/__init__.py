"""Multi-label models (sigmoid outputs, one binary problem per label): metrics, the distillation losses
of paper 004 and its baselines, a unification rule for teachers with different label sets, and the
Fashion-MNIST mosaic demo data. Pure functions: no Ray, no MLflow. See docs/multilabel.md.

    m = multilabel_metrics(scores, targets, threshold=0.5)        # mAP, CP, CR, CF1, OP, OR, OF1
    loss = multilabel_bce(student, targets)                       # the supervised loss
    loss = mld_loss(student, teacher, tau=4.0)                    # MLD (L2D)
    loss = ps_loss(student, teacher, targets, tau=1.0)            # partial softmax (L2D codebase)
    loss = three_d_loss(student, teacher, targets, pairing="batch")   # 3D: alpha L_PD + beta L_NDD
    q, known = union_targets(logits [B, N, L], mask [N, L])       # multi-label unification
    loss = masked_bce(student, q, known)
    th = union_thresholds(thresholds [N, L], mask)                # the unified student's thresholds
    loss = distill_loss_fn(DistillRecipe("3d"), targets, teacher)  # loss(out, idx) for zoo.train
    images, targets, classes = fashion_mosaics("train", n, seed)  # demo data
    data = read_multilabel(path)                                  # Parquet or labels.csv folder

One concept per file: metrics.py, bce.py, mld.py, ps.py, three_d.py, union.py, mosaic.py, dataset.py;
loss_fn.py wires the losses for the training core.
"""

from __future__ import annotations

from .bce import multilabel_bce
from .dataset import (
    MultilabelSet,
    read_multilabel,
    read_multilabel_folder,
    read_multilabel_parquet,
    write_fashion_mosaics,
    write_multilabel_folder,
    write_multilabel_parquet,
)
from .loss_fn import LOSSES, DistillRecipe, distill_loss_fn, second_view, union_loss_fn
from .metrics import METRICS, average_precision, multilabel_metrics
from .mld import binary_kl, mld_loss
from .mosaic import fashion_mosaics, holdout_indices, mosaic_plan
from .ps import ps_loss
from .three_d import PAIRINGS, batch_pairs, ndd_loss, positive_divide_loss, three_d_loss
from .union import masked_bce, union_targets, union_thresholds

__all__ = [
    "LOSSES",
    "METRICS",
    "PAIRINGS",
    "DistillRecipe",
    "MultilabelSet",
    "average_precision",
    "batch_pairs",
    "binary_kl",
    "distill_loss_fn",
    "fashion_mosaics",
    "holdout_indices",
    "masked_bce",
    "mld_loss",
    "mosaic_plan",
    "multilabel_bce",
    "multilabel_metrics",
    "ndd_loss",
    "positive_divide_loss",
    "ps_loss",
    "read_multilabel",
    "read_multilabel_folder",
    "read_multilabel_parquet",
    "second_view",
    "three_d_loss",
    "union_loss_fn",
    "union_targets",
    "union_thresholds",
    "write_fashion_mosaics",
    "write_multilabel_folder",
    "write_multilabel_parquet",
]
