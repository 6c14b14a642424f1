"""Stage 2: every teacher scores every image of the transfer set, with Ray Data.

The transfer set streams from `transfer.parquet` (one read task per Parquet row group, so one file
still spreads over many actors) through `map_batches` over a pool of `TeacherPredictor` actors. Each
actor decodes a batch once, converts it to each teacher's input contract (`zoo.artifacts.preprocess`
with the teacher's `InputSpec`), runs the teachers and lays their logits out on the union label space
(`LabelSpace.to_union`, masked entries 0), so a row leaves the actor as `z[N, L]` (paper 001, Sec. 3).
Actors ask for a GPU when the cluster has one, else a fraction of a CPU (whole CPUs for actors starve
the read tasks on small machines: see RAY-NOTES). Row order is kept (`preserve_order`) and checked
against the transfer set's ids while the driver streams the rows into `logits.parquet`.

Spreading over the nodes of a cluster: the actors are placed with the SPREAD strategy, the stage waits
until the whole pool is up before it feeds it (when the cluster has room for it now; otherwise actors
join as they come, e.g. while an autoscaler adds nodes), and a file with fewer row groups than twice
the actors is read in row slices, so that every actor has blocks to take. Without the wait, Ray Data
starts feeding the first actor that is ready and a short stage could end before the others started.

`transfer_path` and `out_path` may be URIs (`s3://`, `file://`...): actors on other nodes read the
transfer set from there with `pyarrow.fs`, and the driver writes `logits.parquet` there.

`strategy="chained"` instead chains one `map_batches` per teacher (each decodes again); on this
machine the fused actor is faster (benchmarks/results/inference.md), so it is the default.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from zoo.labels import LabelSpace
from zoo.pipeline.stages import (
    FINGERPRINT_KEY,
    atomic_path,
    is_uri,
    parquet_file,
    parquet_metadata,
    read_parquet,
)

__all__ = [
    "InferenceError",
    "LogitsFile",
    "TeacherPredictor",
    "TeacherRef",
    "plan_actors",
    "read_logits",
    "run_teacher_inference",
    "teacher_logits_local",
]


class InferenceError(RuntimeError):
    """Teacher inference produced something inconsistent (ids out of order, wrong widths)."""


@dataclass(frozen=True)
class TeacherRef:
    """A teacher to run: its registry name and version, a local artifact directory (weights +
    spec.json) and the MLflow run that logged it (lineage)."""

    name: str
    version: int
    model_dir: Path
    run_id: str | None = None

    def lineage(self) -> dict[str, Any]:
        return {"name": self.name, "version": int(self.version), "run_id": self.run_id}


@dataclass
class LogitsFile:
    """`logits.parquet` read back: ids [B], z [B, N, L] float32, mask [N, L], the label space, and
    the teachers as {name, version, run_id} dicts."""

    ids: list[str]
    logits: torch.Tensor
    mask: torch.Tensor
    label_space: LabelSpace
    teachers: list[dict]
    fingerprint: str | None = None


# ------------------------------------------------------------------------------------------ actors
def _artifact_blob(model_dir: Path) -> dict[str, bytes]:
    """The files of an artifact directory as bytes: actor arguments travel through the object store,
    so actors on other nodes need no shared file system."""
    model_dir = Path(model_dir)
    files = {p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}
    if "spec.json" not in files:
        raise FileNotFoundError(f"{model_dir} has no spec.json: not a model artifact directory")
    return files


def _decode_batch(blobs: Sequence[bytes]) -> np.ndarray | list[np.ndarray]:
    """Decode encoded images; stack them when they share a shape (the fast path of `preprocess`)."""
    from zoo.data import decode_image

    images = [decode_image(bytes(b)) for b in blobs]
    if images and all(im.shape == images[0].shape for im in images):
        return np.stack(images)
    return images


class TeacherPredictor:
    """A `map_batches` callable class: loads its teachers once, then maps a batch {id, image} to
    {id, logits} with logits [b, N * L] (row-major [N, L] on the union label space, masked entries 0).

    With `teacher_slots` it scores only those teachers and emits one column `z<i>` [b, L_i] per
    teacher instead (the chained strategy); the `image` column is passed through for the next one.
    """

    def __init__(
        self,
        teachers: Sequence[dict[str, Any]],
        label_space: dict[str, Any],
        device: str | None = None,
        num_threads: int | None = None,
        teacher_slots: Sequence[int] | None = None,
    ):
        from zoo.artifacts import load_model

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.space = LabelSpace.from_dict(label_space)
        self.slots = list(teacher_slots) if teacher_slots is not None else None
        self.models = []
        with tempfile.TemporaryDirectory(prefix="teacher-") as tmp:
            for k, t in enumerate(teachers):
                d = Path(tmp) / str(k)
                d.mkdir()
                for fname, data in t["files"].items():
                    (d / fname).write_bytes(data)
                model, spec = load_model(d, device=str(self.device))
                model.eval()
                self.models.append((model, spec))

    @torch.inference_mode()
    def _run(self, images: np.ndarray | list[np.ndarray]) -> list[torch.Tensor]:
        from zoo.artifacts import preprocess

        out = []
        for model, spec in self.models:
            x = preprocess(images, spec.input).to(self.device, non_blocking=True)
            out.append(model(x).float().cpu())
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = _decode_batch(batch["image"])
        outs = self._run(images)
        if self.slots is not None:
            result = {k: v for k, v in batch.items()}
            for slot, z in zip(self.slots, outs):
                result[f"z{slot}"] = z.numpy()
            return result
        z = self.space.to_union(outs)
        # t_done: when this batch was scored (for steady-state throughput; not written to the file)
        n = z.shape[0]
        return {"id": batch["id"], "logits": z.reshape(n, -1).numpy(), "t_done": np.full(n, time.time())}


def _assemble_chained(space_dict: dict[str, Any]):
    """A map_batches function gathering the per-teacher columns z<i> into union logits [b, N * L]."""

    def assemble(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        space = LabelSpace.from_dict(space_dict)
        z = space.to_union([torch.from_numpy(np.asarray(batch[f"z{i}"])) for i in range(space.num_teachers)])
        n = z.shape[0]
        return {"id": batch["id"], "logits": z.reshape(n, -1).numpy(), "t_done": np.full(n, time.time())}

    return assemble


def _read_row_groups(path: str):
    """A map_batches function reading the Parquet row slices named in a batch {rg, start, stop}
    (a row group, or a slice of one). One task per slice: Ray Data's own Parquet reader reads a whole
    file in one task, which would feed a single actor (see RAY-NOTES). `path` may be a URI."""

    def read(batch: dict[str, np.ndarray]) -> pa.Table:
        pf = parquet_file(path)
        parts = []
        for rg, start, stop in zip(batch["rg"], batch["start"], batch["stop"]):
            t = pf.read_row_group(int(rg), columns=["id", "image"])
            parts.append(t.slice(int(start), int(stop) - int(start)))
        return pa.concat_tables(parts)

    return read


def _read_pieces(pf: pq.ParquetFile, min_pieces: int) -> list[dict[str, int]]:
    """{rg, start, stop} row slices covering the file in order: its row groups, each cut in equal
    slices when there are fewer row groups than `min_pieces` (so every actor gets blocks)."""
    n_rg = pf.num_row_groups
    cuts = max(1, -(-min_pieces // max(1, n_rg)))
    pieces = []
    for rg in range(n_rg):
        rows = pf.metadata.row_group(rg).num_rows
        k = max(1, min(cuts, rows))
        bounds = [round(rows * j / k) for j in range(k + 1)]
        pieces += [{"rg": rg, "start": a, "stop": b} for a, b in zip(bounds, bounds[1:]) if b > a]
    return pieces


def _pool_fits_now(plan: dict[str, Any]) -> bool:
    """Whether the cluster has the CPUs/GPUs for the whole actor pool free right now."""
    import ray

    free = ray.available_resources()
    k = plan["concurrency"]
    return free.get("CPU", 0) >= k * plan["num_cpus"] and free.get("GPU", 0) >= k * plan["num_gpus"]


# -------------------------------------------------------------------------------------- planning
def plan_actors(
    use_gpu: bool | None = None, concurrency: int | None = None, num_threads: int | None = None
) -> dict[str, Any]:
    """Resources of the actor pool from the running cluster: one actor per GPU when there are GPUs,
    else one actor per two cores with two torch threads each (on the 2-core machine 1 actor x 2
    threads beat 2 x 1: benchmarks/results/inference.md), each asking for a fractional CPU so read
    tasks always find a slot (whole CPUs for actors starve them: RAY-NOTES). Explicit arguments win."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = max(1, int(res.get("CPU", 1)))
    if use_gpu is None:
        use_gpu = gpus > 0
    if use_gpu and gpus == 0:
        raise InferenceError("use_gpu=True but the Ray cluster has no GPU; drop --gpu or add GPU nodes")
    if use_gpu:
        k = concurrency or gpus
        return {
            "concurrency": k,
            "num_gpus": 1,
            "num_cpus": 1,
            "num_threads": num_threads or 2,
            "device": "cuda",
        }
    # Logical CPUs may exceed the cores (a local Ray is started with 2 x cores): on one node count cores.
    cores = min(cpus, os.cpu_count() or cpus) if len(ray.nodes()) == 1 else cpus
    threads = num_threads or min(2, cores)
    k = concurrency or max(1, cores // threads)
    return {"concurrency": k, "num_gpus": 0, "num_cpus": 0.5, "num_threads": threads, "device": "cpu"}


# ------------------------------------------------------------------------------------------ stage
def run_teacher_inference(
    transfer_path: str | Path,
    teachers: Sequence[TeacherRef],
    label_space: LabelSpace,
    out_path: str | Path,
    *,
    batch_size: int = 256,
    use_gpu: bool | None = None,
    concurrency: int | None = None,
    num_threads: int | None = None,
    strategy: str = "fused",
    fingerprint: str | None = None,
    row_group_size: int = 4096,
    stats: dict[str, Any] | None = None,
    wait_for_actors_s: float = 300.0,
) -> str | Path:
    """Score the transfer set with every teacher on Ray Data and write `logits.parquet`:
    `id: string`, `logits: fixed_size_list<float32>[N*L]` (row-major [N, L], masked entries 0), schema
    metadata `zoo.label_space`, `zoo.teachers`, `zoo.mask`, `zoo.fingerprint`. Rows keep the order of
    `transfer.parquet` (checked). Needs a running Ray (`ray.init()`); written atomically. `stats`, when
    given, receives timings: start, first_batch and end (perf_counter), rows, and the actor plan.
    Paths may be URIs. When the cluster has room for the whole actor pool, the stage waits up to
    `wait_for_actors_s` for every actor to start before feeding them (0: do not wait).
    """
    import ray

    if not ray.is_initialized():
        raise InferenceError("run_teacher_inference needs Ray: call ray.init() first")
    if strategy not in ("fused", "chained"):
        raise ValueError(f"strategy must be 'fused' or 'chained', got {strategy!r}")
    names = [t.name for t in teachers]
    if list(label_space.teachers) != names:
        raise ValueError(f"teachers {names} are not the label space's teachers {list(label_space.teachers)}")
    # Absolute: the actors may run in another working directory (or on another node, sharing a mount).
    transfer_path = str(transfer_path) if is_uri(transfer_path) else str(Path(transfer_path).resolve())
    pf = parquet_file(transfer_path)
    expected_ids = pf.read(columns=["id"]).column("id").to_pylist()
    plan = plan_actors(use_gpu, concurrency, num_threads)
    pieces = _read_pieces(pf, 2 * plan["concurrency"])
    wait_s = wait_for_actors_s if wait_for_actors_s > 0 and _pool_fits_now(plan) else -1
    space_dict = label_space.to_dict()
    blobs = [{"name": t.name, "files": _artifact_blob(t.model_dir)} for t in teachers]
    width = label_space.num_teachers * label_space.num_classes

    ctx = ray.data.DataContext.get_current()
    old_order, old_wait = ctx.execution_options.preserve_order, ctx.wait_for_min_actors_s
    ctx.execution_options.preserve_order = True  # logits rows stay aligned with transfer rows
    # Feed the pool only once every actor is up (see the module docstring); the context is captured
    # when the dataset is created, so set it first.
    ctx.wait_for_min_actors_s = wait_s
    try:
        ds = ray.data.from_items(pieces, override_num_blocks=len(pieces))
        ds = ds.map_batches(_read_row_groups(transfer_path), batch_size=1, num_cpus=0.5)
        actor_args = dict(
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=plan["concurrency"]),
            num_cpus=plan["num_cpus"],
            num_gpus=plan["num_gpus"],
            batch_format="numpy",
            # One actor per node before two on one (Ray Data's default too; explicit, as it matters here).
            scheduling_strategy="SPREAD",
        )
        kwargs = {"label_space": space_dict, "device": plan["device"], "num_threads": plan["num_threads"]}
        if strategy == "fused":
            ds = ds.map_batches(
                TeacherPredictor, fn_constructor_kwargs={"teachers": blobs, **kwargs}, **actor_args
            )
        else:
            for i, blob in enumerate(blobs):
                ds = ds.map_batches(
                    TeacherPredictor,
                    fn_constructor_kwargs={"teachers": [blob], "teacher_slots": [i], **kwargs},
                    **actor_args,
                )
            ds = ds.map_batches(
                _assemble_chained(space_dict), batch_size=batch_size, batch_format="numpy", num_cpus=0.25
            )

        meta = {
            "zoo.label_space": json.dumps(space_dict),
            "zoo.teachers": json.dumps([t.lineage() for t in teachers]),
            "zoo.mask": json.dumps(label_space.mask.tolist()),
            "zoo.inference": json.dumps({**plan, "batch_size": batch_size, "strategy": strategy}),
        }
        if fingerprint is not None:
            meta[FINGERPRINT_KEY] = fingerprint
        schema = pa.schema(
            [("id", pa.string()), ("logits", pa.list_(pa.float32(), width))],
            metadata={k.encode(): v.encode() for k, v in meta.items()},
        )
        seen = 0
        if stats is not None:
            stats.update(start=time.perf_counter(), plan=plan, strategy=strategy, batch_size=batch_size)
        with atomic_path(out_path, ".parquet") as tmp:
            with pq.ParquetWriter(tmp, schema) as writer:
                for batch in ds.iter_batches(batch_size=row_group_size, batch_format="numpy"):
                    ids = [str(i) for i in batch["id"]]
                    if ids != expected_ids[seen : seen + len(ids)]:
                        raise InferenceError(
                            f"rows {seen}..{seen + len(ids)} came back out of order; ids no longer align "
                            "with the transfer set"
                        )
                    z = np.ascontiguousarray(
                        np.asarray(batch["logits"], dtype=np.float32).reshape(len(ids), width)
                    )
                    col = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), width)
                    writer.write_table(
                        pa.table({"id": pa.array(ids, pa.string()), "logits": col}, schema=schema)
                    )
                    seen += len(ids)
                    if stats is not None:
                        stats.setdefault("first_batch", time.perf_counter())
                        stats.setdefault("first_rows", seen)
                        if "t_done" in batch:
                            stats.setdefault("t_done", []).append(np.asarray(batch["t_done"]))
            if seen != len(expected_ids):
                raise InferenceError(
                    f"inference returned {seen} rows for {len(expected_ids)} transfer images"
                )
        if stats is not None:
            stats.update(end=time.perf_counter(), rows=seen)
    finally:
        ctx.execution_options.preserve_order = old_order
        ctx.wait_for_min_actors_s = old_wait
    return str(out_path) if is_uri(out_path) else Path(out_path)


def read_logits(path: str | Path) -> LogitsFile:
    """Read `logits.parquet` back: ids, z [B, N, L] float32, mask [N, L] bool, label space, teachers."""
    meta = parquet_metadata(path)
    missing = [k for k in ("zoo.label_space", "zoo.teachers", "zoo.mask") if k not in meta]
    if missing:
        raise InferenceError(f"{path} lacks schema metadata {missing}: not written by run_teacher_inference")
    space = LabelSpace.from_dict(json.loads(meta["zoo.label_space"]))
    mask = torch.tensor(json.loads(meta["zoo.mask"]), dtype=torch.bool)
    t = read_parquet(path, columns=["id", "logits"])
    n, big_l = space.num_teachers, space.num_classes
    col = t.column("logits").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    z = torch.from_numpy(flat.reshape(len(t), n, big_l).copy())
    return LogitsFile(
        ids=t.column("id").to_pylist(),
        logits=z,
        mask=mask,
        label_space=space,
        teachers=json.loads(meta["zoo.teachers"]),
        fingerprint=meta.get(FINGERPRINT_KEY),
    )


def teacher_logits_local(
    images: Sequence[bytes], teachers: Sequence[TeacherRef], label_space: LabelSpace, batch_size: int = 256
) -> torch.Tensor:
    """The plain in-process computation (no Ray) of the same z [B, N, L]: the reference the tests
    compare Ray's output with, and the baseline of benchmarks/inference.py."""
    predictor = TeacherPredictor(
        [{"name": t.name, "files": _artifact_blob(t.model_dir)} for t in teachers],
        label_space.to_dict(),
        device=None,
    )
    parts = []
    for s in range(0, len(images), batch_size):
        out = predictor(
            {
                "id": np.arange(s, min(s + batch_size, len(images))),
                "image": np.asarray(images[s : s + batch_size], dtype=object),
            }
        )
        parts.append(torch.from_numpy(out["logits"]))
    z = torch.cat(parts) if parts else torch.zeros(0, label_space.num_teachers * label_space.num_classes)
    return z.reshape(-1, label_space.num_teachers, label_space.num_classes)
