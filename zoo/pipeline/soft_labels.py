"""Stage 3: soft labels q [B, L] from the teachers' logits (paper 001, Sec. 3.1-3.5), for the E and
BS modes; BP trains the student on the logits directly and needs no soft labels.

`soft_labels.parquet`: `id: string`, `q: fixed_size_list<float32>[L]`; schema metadata `zoo.method`,
`zoo.mode`, `zoo.temperature`, `zoo.weights` (BS: w_l = 1 / mean_b q_b(l), Sec. 3.5.2; JSON [L]),
`zoo.classes`, `zoo.fingerprint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from zoo.pipeline.inference import read_logits
from zoo.pipeline.stages import FINGERPRINT_KEY, parquet_metadata, read_parquet, write_parquet_atomic

__all__ = ["SoftLabels", "read_soft_labels", "write_soft_labels"]

CHUNK = 8192


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
    logits_path: str | Path,
    out_path: str | Path,
    method: str,
    mode: str,
    temperature: float,
    *,
    fingerprint: str | None = None,
    chunk_size: int = CHUNK,
    teacher_temperatures: list[float] | None = None,
    sample_weighting: str = "none",
    **solver_options: object,
) -> Path:
    """Estimate q with `zoo.unify.estimate_soft_labels` over `logits.parquet` in chunks of
    `chunk_size` samples (every method is per-sample, so chunking changes nothing), and in BS mode the
    class weights with `zoo.unify.balance_weights` (Sec. 3.5.2); write `soft_labels.parquet` atomically.

    Levers (docs/unify.md, "Beyond the paper: levers"): ``teacher_temperatures`` [N] (one per teacher,
    in logits.parquet's order) divide each teacher's logits first (`zoo.unify.calibration`);
    ``sample_weighting="confidence"`` adds a column ``sample_weight`` (`zoo.unify.confidence`), which
    the student's loss then applies per sample.
    """
    from zoo.unify import MODES, balance_weights, estimate_soft_labels, normalize_method
    from zoo.unify.calibration import apply_teacher_temperatures
    from zoo.unify.confidence import sample_weights

    method = normalize_method(method)
    mode = str(mode).lower()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {list(MODES)}")
    if mode == "bp":
        raise ValueError("mode 'bp' backpropagates the loss on the logits directly: it has no soft labels")
    lf = read_logits(logits_path)
    z, mask = lf.logits, lf.mask
    if teacher_temperatures is not None:
        z = apply_teacher_temperatures(z, teacher_temperatures)
    parts = []
    for s in tqdm(
        range(0, len(lf.ids), chunk_size),
        desc=f"soft labels {method}-{mode}",
        unit="chunk",
        leave=False,
        disable=None,
    ):
        parts.append(estimate_soft_labels(z[s : s + chunk_size], mask, method, temperature, **solver_options))
    big_l = lf.label_space.num_classes
    q = torch.cat(parts).float() if parts else torch.zeros(0, big_l)
    meta = {
        "zoo.method": method,
        "zoo.mode": mode,
        "zoo.temperature": json.dumps(float(temperature)),
        "zoo.classes": json.dumps(list(lf.label_space.classes)),
        "zoo.teachers": json.dumps(lf.teachers),
    }
    if solver_options:
        meta["zoo.solver_options"] = json.dumps(solver_options, default=str)
    if mode == "bs":
        meta["zoo.weights"] = json.dumps(balance_weights(q).double().tolist())
    if fingerprint is not None:
        meta[FINGERPRINT_KEY] = fingerprint
    if teacher_temperatures is not None:
        meta["zoo.teacher_temperatures"] = json.dumps([float(t) for t in teacher_temperatures])
    flat = pa.array(np.ascontiguousarray(q.numpy()).reshape(-1))
    columns = {"id": pa.array(lf.ids, pa.string()), "q": pa.FixedSizeListArray.from_arrays(flat, big_l)}
    weight = sample_weights(z, mask, sample_weighting) if len(lf.ids) else None
    if weight is not None:
        columns["sample_weight"] = pa.array(weight.float().numpy())
    table = pa.table(columns)
    return write_parquet_atomic(table, out_path, meta, row_group_size=65536)


def read_soft_labels(path: str | Path) -> SoftLabels:
    """Read `soft_labels.parquet` back: ids, q [B, L], BS weights [L] (None in mode E), metadata."""
    meta = parquet_metadata(path)
    if "zoo.classes" not in meta:
        raise ValueError(f"{path} lacks zoo.classes metadata: not written by write_soft_labels")
    big_l = len(json.loads(meta["zoo.classes"]))
    t = read_parquet(path, columns=["id", "q"])
    flat = t.column("q").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    q = torch.from_numpy(np.asarray(flat, dtype=np.float32).reshape(len(t), big_l).copy())
    weights = (
        torch.tensor(json.loads(meta["zoo.weights"]), dtype=torch.float32) if "zoo.weights" in meta else None
    )
    return SoftLabels(ids=t.column("id").to_pylist(), q=q, weights=weights, meta=meta)
