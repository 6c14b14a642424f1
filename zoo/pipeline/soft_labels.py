"""Stage: soft labels q [B, L] from the teachers' logits (paper 001, Sec. 3.1-3.5), for modes E and
BS; mode BP trains the student on the logits directly and needs none. And the reader that hands the
student its targets, from either file.

With the propagation lever the stage also reads the teachers' penultimate features
(`features.parquet`, written by the inference stage with ``features=True``).

`soft_labels.parquet`: `id: string`, `q: fixed_size_list<float32>[L]`, optionally `sample_weight:
float32` (lever sample_weighting); schema metadata `zoo.recipe` (the Recipe, JSON), `zoo.method`,
`zoo.mode`, `zoo.temperature`, `zoo.weights` (BS: w_l = 1 / mean_b q_b(l), Sec. 3.5.2; JSON [L]),
`zoo.classes`, `zoo.teachers`, `zoo.fingerprint`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from zoo.pipeline import JobError
from zoo.pipeline.cache import FINGERPRINT_KEY, RunDir, StageResult
from zoo.pipeline.inference import read_features, read_logits
from zoo.pipeline.storage import (
    PathLike,
    parquet_metadata,
    read_parquet,
    read_vectors,
    vector_column,
    write_parquet_atomic,
)
from zoo.unify import balance_weights
from zoo.unify.recipe import Recipe, Targets, build_targets

__all__ = ["VERSION", "SoftLabels", "TargetError", "load_targets", "read_soft_labels", "soft_labels_stage"]

VERSION = 3  # 2: the recipe in the fingerprint and the metadata; 3: the levers on q (issue 18)
CHUNK = 8192


class TargetError(JobError):
    """The transfer set and the targets file do not fit together (ids, classes, mode, method)."""


@dataclass
class SoftLabels:
    """`soft_labels.parquet` read back: ids [B], q [B, L] float32, BS weights [L] or None, metadata."""

    ids: list[str]
    q: torch.Tensor
    weights: torch.Tensor | None
    meta: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return json.loads(self.meta["zoo.classes"])


def write_soft_labels(
    logits_path: PathLike,
    out_path: PathLike,
    recipe: Recipe,
    *,
    features_path: PathLike | None = None,
    fingerprint: str | None = None,
    chunk_size: int = CHUNK,
) -> PathLike:
    """q of ``recipe`` over `logits.parquet` (`zoo.unify.recipe.build_targets`, ``chunk_size``
    samples at a time: every method is per-sample, so chunking changes nothing; the propagation
    lever then takes the teachers' features from ``features_path``), with BS's class weights in the
    metadata and the lever's per-sample weights as a column; written atomically to ``out_path`` (a
    path or a URI)."""
    if recipe.mode == "bp":
        raise ValueError("mode 'bp' backpropagates the loss on the logits directly: it has no soft labels")
    lf = read_logits(logits_path)
    feats = _teacher_features(features_path, lf.ids) if recipe.propagation is not None else None
    desc = f"soft labels {recipe.name}"
    bar = lambda starts: tqdm(starts, desc=desc, unit="chunk", leave=False, disable=None)  # noqa: E731
    t = build_targets(lf.logits, lf.mask, recipe, features=feats, chunk_size=chunk_size, progress=bar)
    meta = {
        "zoo.recipe": json.dumps(recipe.to_dict()),
        "zoo.method": recipe.method,
        "zoo.mode": recipe.mode,
        "zoo.temperature": json.dumps(recipe.temperature),
        "zoo.classes": json.dumps(list(lf.label_space.classes)),
        "zoo.teachers": json.dumps(lf.teachers),
    }
    if t.class_weights is not None:
        meta["zoo.weights"] = json.dumps(t.class_weights.double().tolist())
    if fingerprint is not None:
        meta[FINGERPRINT_KEY] = fingerprint
    columns = {"id": pa.array(lf.ids, pa.string()), "q": vector_column(t.q.numpy())}
    if t.sample_weights is not None:
        columns["sample_weight"] = pa.array(t.sample_weights.float().numpy())
    return write_parquet_atomic(pa.table(columns), out_path, meta, row_group_size=65536)


def _teacher_features(path: PathLike | None, ids: Sequence[str]) -> list[torch.Tensor]:
    """The teachers' features [B, D_i] in the logits' row order (TargetError when they do not fit)."""
    if path is None:
        raise TargetError("the propagation lever needs the teachers' features: run inference with features")
    ff = read_features(path)
    if ff.ids != list(ids):
        raise TargetError(f"{path} is not of the transfer set of the logits: rerun teacher inference")
    if not ff.features:
        raise TargetError(
            f"no teacher could give features ({ff.missing}): turn propagation off (--no-propagate)"
        )
    return list(ff.features.values())


def soft_labels_stage(
    run: RunDir, logits: StageResult, recipe: Recipe, features: PathLike | None = None
) -> StageResult:
    """Stage: `<run>/soft_labels.parquet`, redone when the logits or the recipe's soft-label fields
    (method, temperatures, levers on q, sample weighting; the mode only as E vs BS) change.
    ``features``: the inference stage's features.parquet (same fingerprint as the logits), read when
    the recipe propagates q."""
    inputs = [logits.fingerprint, {k: v for k, v in recipe.to_dict().items() if k not in ("augment",)}]
    return run.stage(
        "soft_labels",
        run.soft_labels,
        VERSION,
        inputs,
        lambda path, fp: write_soft_labels(logits.path, path, recipe, features_path=features, fingerprint=fp),
    )


def read_soft_labels(path: PathLike) -> SoftLabels:
    """Read `soft_labels.parquet` back: ids, q [B, L], BS weights [L] (None in mode E), metadata."""
    meta = parquet_metadata(path)
    if "zoo.classes" not in meta:
        raise ValueError(f"{path} lacks zoo.classes metadata: not written by write_soft_labels")
    t = read_parquet(path, columns=["id", "q"])
    q = torch.from_numpy(read_vectors(t, "q").copy())
    weights = (
        torch.tensor(json.loads(meta["zoo.weights"]), dtype=torch.float32) if "zoo.weights" in meta else None
    )
    return SoftLabels(ids=t.column("id").to_pylist(), q=q, weights=weights, meta=meta)


# ------------------------------------------------------------------------------ the student's targets
def load_targets(path: PathLike, ids: Sequence[str], classes: Sequence[str], recipe: Recipe) -> Targets:
    """The student's targets aligned to ``ids`` (the transfer set's order): q (+ BS class weights,
    sample weights) from soft_labels.parquet for modes E and BS, the teachers' logits and mask from
    logits.parquet for mode BP. TargetError when the file does not fit the transfer set, the classes,
    the mode or the method."""
    table = read_parquet(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    order = _align(table, ids, path)
    if recipe.mode == "bp":
        return _logit_targets(table, meta, order, classes, path)
    if "q" not in table.column_names:
        raise TargetError(
            f"mode {recipe.mode!r} trains on soft labels: {path} has no 'q' column "
            "(pass soft_labels.parquet; logits.parquet is for mode 'bp')"
        )
    _check_classes(json.loads(meta["zoo.classes"]) if "zoo.classes" in meta else None, classes, path)
    got = meta.get("zoo.method")
    if got is not None and got.lower() != recipe.method:
        raise TargetError(
            f"{path} holds soft labels of method {got!r}, the student asks for {recipe.method!r}"
        )
    # The same q serves E and BS (BS only adds class weights), so only a BP file is refused.
    if meta.get("zoo.mode", "e").lower() not in ("e", "bs"):
        raise TargetError(f"{path} was written for mode {meta['zoo.mode']!r}, not e/bs")
    q = read_vectors(table, "q")
    if q.shape[1] != len(classes):
        raise TargetError(f"{path}: q has {q.shape[1]} classes, the student has {len(classes)}")
    q = torch.from_numpy(q[order])
    weights = None
    if recipe.mode == "bs":
        raw = meta.get("zoo.weights")
        has = raw not in (None, "", "null")
        weights = torch.tensor(json.loads(raw), dtype=torch.float32) if has else balance_weights(q).float()
    sample = None
    if "sample_weight" in table.column_names:
        sample = torch.from_numpy(table.column("sample_weight").to_numpy().astype(np.float32)[order])
    return Targets(q=q, class_weights=weights, sample_weights=sample)


def _align(table: pa.Table, ids: Sequence[str], path: PathLike) -> np.ndarray:
    """Row order that puts the file's rows in ``ids``' order (TargetError when the ids differ)."""
    if "id" not in table.column_names:
        raise TargetError(f"{path} has no 'id' column")
    target_ids = [str(i) for i in table.column("id").to_pylist()]
    if len(set(target_ids)) != len(target_ids):
        raise TargetError(f"{path} has duplicate ids")
    pos = {i: k for k, i in enumerate(target_ids)}
    missing = [i for i in ids if i not in pos]
    if missing or len(target_ids) != len(ids):
        raise TargetError(
            f"ids of {path} ({len(target_ids)} rows) do not match the transfer set ({len(ids)} rows; "
            f"{len(missing)} transfer ids missing, e.g. {missing[:3]}): recompute the targets from this "
            "transfer set"
        )
    return np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))


def _check_classes(file_classes: Sequence[str] | None, classes: Sequence[str], path: PathLike) -> None:
    if file_classes is not None and list(file_classes) != list(classes):
        raise TargetError(f"{path} is over classes {list(file_classes)}, the student over {list(classes)}")


def _logit_targets(
    table: pa.Table, meta: dict[str, str], order: np.ndarray, classes: Sequence[str], path: PathLike
) -> Targets:
    if "logits" not in table.column_names:
        raise TargetError(
            f"mode 'bp' backpropagates from the teachers' logits: {path} has no 'logits' column "
            "(pass logits.parquet)"
        )
    if "zoo.mask" not in meta:
        raise TargetError(f"{path} has no 'zoo.mask' schema metadata: write it with run_teacher_inference")
    mask = torch.tensor(json.loads(meta["zoo.mask"]), dtype=torch.bool)
    L = len(classes)
    if mask.ndim != 2 or mask.shape[1] != L:
        raise TargetError(f"{path}: mask has shape {tuple(mask.shape)}, expected [N, {L}]")
    if "zoo.label_space" in meta:
        _check_classes(json.loads(meta["zoo.label_space"]).get("classes"), classes, path)
    flat = read_vectors(table, "logits")
    N = mask.shape[0]
    if flat.shape[1] != N * L:
        raise TargetError(f"{path}: logits have width {flat.shape[1]}, expected N*L = {N}*{L}")
    return Targets(logits=torch.from_numpy(flat[order].reshape(len(order), N, L)), mask=mask)
