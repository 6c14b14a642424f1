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

Teacher features: with `features_path`, each teacher's penultimate features (its `embed` of
`zoo.architectures.split_head`, one forward pass with the logits) go to a second file,
`features.parquet`: `id`, then one `fixed_size_list<float16>[D_i]` column `f<i>` per teacher (float16
halves the size: 20k images x 5 teachers x 512 features is 100 MB instead of 200), schema metadata
`zoo.features` (per teacher: name, version, column, dim, dtype, or why it has no features). A teacher
whose architecture cannot be split has no column and is marked there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.util.annotations import RayDeprecationWarning

from zoo.architectures import split_head
from zoo.artifacts import build_net, load_model, preprocess
from zoo.data import decode_image
from zoo.labels import LabelSpace
from zoo.pipeline.cache import FINGERPRINT_KEY, RunDir, StageResult, fingerprint, read_fingerprint, run_stage
from zoo.pipeline.storage import (
    PathLike,
    atomic_path,
    is_uri,
    parquet_file,
    parquet_metadata,
    read_parquet,
    read_vectors,
    vector_column,
)
from zoo.pipeline.teachers import Teacher

__all__ = [
    "VERSION",
    "FeaturesFile",
    "InferenceError",
    "LogitsFile",
    "TeacherPredictor",
    "inference_stage",
    "plan_actors",
    "read_features",
    "read_logits",
    "run_teacher_inference",
    "teacher_logits_local",
    "teacher_outputs_local",
]


VERSION = 2  # 2: teacher features (features.parquet) as an option


class InferenceError(RuntimeError):
    """Teacher inference produced something inconsistent (ids out of order, wrong widths)."""


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


@dataclass
class FeaturesFile:
    """`features.parquet` read back: ids [B] and, per teacher name, its features float32 [B, D_i]
    (teachers that cannot give features are absent; `missing` says why)."""

    ids: list[str]
    features: dict[str, torch.Tensor]
    missing: dict[str, str]


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
    images = [decode_image(bytes(b)) for b in blobs]
    if images and all(im.shape == images[0].shape for im in images):
        return np.stack(images)
    return images


def _split_or_none(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | str:
    """(embed, head) of `zoo.architectures.split_head`, or why the model cannot give features."""
    try:
        return split_head(model)
    except ValueError as e:
        return str(e)


class TeacherPredictor:
    """A `map_batches` callable class: loads its teachers once, then maps a batch {id, image} to
    {id, logits} with logits [b, N * L] (row-major [N, L] on the union label space, masked entries 0),
    and with ``features`` also {f<i>: [b, D_i] float16} for every teacher that can give them."""

    def __init__(
        self,
        teachers: Sequence[dict[str, Any]],
        label_space: dict[str, Any],
        device: str | None = None,
        num_threads: int | None = None,
        features: bool = False,
    ):
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.space = LabelSpace.from_dict(label_space)
        self.models = []
        with tempfile.TemporaryDirectory(prefix="teacher-") as tmp:
            for k, t in enumerate(teachers):
                d = Path(tmp) / str(k)
                d.mkdir()
                for fname, data in t["files"].items():
                    (d / fname).write_bytes(data)
                model, spec = load_model(d, device=str(self.device))
                model.eval()
                split = _split_or_none(model) if features else None
                self.models.append((model, spec, split if isinstance(split, tuple) else None))

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = _decode_batch(batch["image"])
        outs, result = [], {"id": batch["id"]}
        for i, (model, spec, split) in enumerate(self.models):
            x = preprocess(images, spec.input).to(self.device, non_blocking=True)
            if split is None:
                outs.append(model(x).float().cpu())
                continue
            embed, head = split
            f = embed(x)
            outs.append(head(f).float().cpu())
            result[f"f{i}"] = f.to(torch.float16).cpu().numpy()
        z = self.space.to_union(outs)
        result["logits"] = z.reshape(z.shape[0], -1).numpy()
        return result


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
    transfer_path: PathLike,
    teachers: Sequence[Teacher],
    label_space: LabelSpace,
    out_path: PathLike,
    *,
    features_path: PathLike | None = None,
    batch_size: int = 256,
    use_gpu: bool | None = None,
    concurrency: int | None = None,
    num_threads: int | None = None,
    fingerprint: str | None = None,
    row_group_size: int = 4096,
    wait_for_actors_s: float = 300.0,
    progress: Callable[[int], None] | None = None,
) -> PathLike:
    """Score the images of `transfer_path` (id, image) with every teacher on Ray Data and write
    `logits.parquet`: `id: string`, `logits: fixed_size_list<float32>[N*L]` (row-major [N, L], masked
    entries 0), schema metadata `zoo.label_space`, `zoo.teachers`, `zoo.mask`, `zoo.fingerprint`; with
    ``features_path`` also the teachers' features (module docstring). Rows keep the order of the
    input (checked). Needs a running Ray; written atomically; paths may be URIs. When the cluster has
    room for the whole actor pool, the stage waits up to `wait_for_actors_s` for every actor to start
    before feeding them (0: do not wait). ``progress(rows)`` is called as rows are written."""
    if not ray.is_initialized():
        raise InferenceError("run_teacher_inference needs Ray: call ray.init() first")
    names = [t.name for t in teachers]
    if list(label_space.teachers) != names:
        raise ValueError(f"teachers {names} are not the label space's teachers {list(label_space.teachers)}")
    # Absolute: the actors may run in another working directory (or on another node, sharing a mount).
    transfer_path = str(transfer_path) if is_uri(transfer_path) else str(Path(transfer_path).resolve())
    pf = parquet_file(transfer_path)
    expected_ids = pf.read(columns=["id"]).column("id").to_pylist()
    plan = plan_actors(use_gpu, concurrency, num_threads)
    feats = _feature_columns(teachers) if features_path is not None else None
    schema = _logits_schema(teachers, label_space, plan, batch_size, fingerprint)
    ctx = ray.data.DataContext.get_current()
    old_order, old_wait = ctx.execution_options.preserve_order, ctx.wait_for_min_actors_s
    ctx.execution_options.preserve_order = True  # logits rows stay aligned with transfer rows
    # Feed the pool only once every actor is up (see the module docstring); the context is captured
    # when the dataset is created, so set it first.
    ctx.wait_for_min_actors_s = wait_for_actors_s if wait_for_actors_s > 0 and _pool_fits_now(plan) else -1
    try:
        ds = _scoring_dataset(transfer_path, pf, teachers, label_space, plan, batch_size, feats is not None)
        batches = ds.iter_batches(batch_size=row_group_size, batch_format="numpy")
        with contextlib.ExitStack() as stack:
            writer = _open_writer(stack, out_path, schema)
            fwriter = None
            if feats is not None:
                fwriter = _open_writer(stack, features_path, _features_schema(teachers, feats, fingerprint))
            seen = 0
            for batch in batches:
                ids = [str(i) for i in batch["id"]]
                if ids != expected_ids[seen : seen + len(ids)]:
                    raise InferenceError(
                        f"rows {seen}..{seen + len(ids)} came back out of order; ids no longer align "
                        "with the transfer set"
                    )
                _write_batch(writer, fwriter, ids, batch, schema, feats)
                seen += len(ids)
                if progress is not None:
                    progress(seen)
            if seen != len(expected_ids):
                raise InferenceError(
                    f"inference returned {seen} rows for {len(expected_ids)} transfer images"
                )
    finally:
        ctx.execution_options.preserve_order = old_order
        ctx.wait_for_min_actors_s = old_wait
    return str(out_path) if is_uri(out_path) else Path(out_path)


def _scoring_dataset(
    path: str,
    pf: pq.ParquetFile,
    teachers: Sequence[Teacher],
    space: LabelSpace,
    plan: dict[str, Any],
    batch_size: int,
    features: bool,
) -> Any:
    """Row slices -> read tasks -> the pool of TeacherPredictor actors (module docstring)."""
    pieces = _read_pieces(pf, 2 * plan["concurrency"])
    ds = ray.data.from_items(pieces, override_num_blocks=len(pieces))
    ds = ds.map_batches(_read_row_groups(path), batch_size=1, num_cpus=0.5)
    blobs = [{"name": t.name, "files": _artifact_blob(t.model_dir)} for t in teachers]
    # Ray 2.60 deprecates `ray_remote_args` (and `ray_remote_args_fn`) without a named parameter for
    # the scheduling strategy, and SPREAD is what puts the actors on every node (tests/test_multinode):
    # kept, its warning silenced here until Ray has the replacement (before Ray 2.64 removes it).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return ds.map_batches(
            TeacherPredictor,
            fn_constructor_kwargs={
                "teachers": blobs,
                "label_space": space.to_dict(),
                "device": plan["device"],
                "num_threads": plan["num_threads"],
                "features": features,
            },
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=plan["concurrency"]),
            num_cpus=plan["num_cpus"],
            num_gpus=plan["num_gpus"],
            batch_format="numpy",
            # One actor per node before two on one (Ray Data's default too; explicit, as it matters here).
            scheduling_strategy="SPREAD",
        )


def _logits_schema(
    teachers: Sequence[Teacher], space: LabelSpace, plan: dict[str, Any], batch_size: int, fp: str | None
) -> pa.Schema:
    meta = {
        "zoo.label_space": json.dumps(space.to_dict()),
        "zoo.teachers": json.dumps([t.lineage() for t in teachers]),
        "zoo.mask": json.dumps(space.mask.tolist()),
        "zoo.inference": json.dumps({**plan, "batch_size": batch_size}),
    }
    if fp is not None:
        meta[FINGERPRINT_KEY] = fp
    width = space.num_teachers * space.num_classes
    return pa.schema(
        [("id", pa.string()), ("logits", pa.list_(pa.float32(), width))],
        metadata={k.encode(): v.encode() for k, v in meta.items()},
    )


def _feature_columns(teachers: Sequence[Teacher]) -> list[dict[str, Any]]:
    """Per teacher: its features column and width, or why it has none (checked on the driver, from
    the spec: the same split the actors make)."""
    out = []
    for i, t in enumerate(teachers):
        entry: dict[str, Any] = {**t.lineage(), "column": None, "dim": None, "dtype": "float16"}
        split = _split_or_none(build_net(t.spec))
        if isinstance(split, tuple):
            entry.update(column=f"f{i}", dim=int(split[1].in_features))
        else:
            entry["missing"] = split
        out.append(entry)
    return out


def _features_schema(teachers: Sequence[Teacher], feats: list[dict[str, Any]], fp: str | None) -> pa.Schema:
    meta = {"zoo.features": json.dumps(feats), "zoo.teachers": json.dumps([t.lineage() for t in teachers])}
    if fp is not None:
        meta[FINGERPRINT_KEY] = fp
    fields = [("id", pa.string())] + [
        (f["column"], pa.list_(pa.float16(), f["dim"])) for f in feats if f["column"]
    ]
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in meta.items()})


def _open_writer(stack: contextlib.ExitStack, path: PathLike, schema: pa.Schema) -> pq.ParquetWriter:
    tmp = stack.enter_context(atomic_path(path, ".parquet"))
    return stack.enter_context(pq.ParquetWriter(tmp, schema))


def _write_batch(
    writer: pq.ParquetWriter,
    fwriter: pq.ParquetWriter | None,
    ids: list[str],
    batch: dict[str, np.ndarray],
    schema: pa.Schema,
    feats: list[dict[str, Any]] | None,
) -> None:
    width = schema.field("logits").type.list_size
    z = np.asarray(batch["logits"], dtype=np.float32).reshape(len(ids), width)
    id_col = pa.array(ids, pa.string())
    writer.write_table(pa.table({"id": id_col, "logits": vector_column(z)}, schema=schema))
    if fwriter is not None:
        cols = {"id": id_col}
        for f in feats or []:
            if f["column"]:
                rows = np.asarray(batch[f["column"]], dtype=np.float16).reshape(len(ids), f["dim"])
                cols[f["column"]] = vector_column(rows)
        fwriter.write_table(pa.table(cols, schema=fwriter.schema))


def inference_stage(
    run: RunDir,
    transfer: StageResult,
    teachers: Sequence[Teacher],
    space: LabelSpace,
    *,
    features: bool = False,
    start_ray: Callable[[], Any] | None = None,
    out_dir: str | None = None,
    **options: Any,
) -> StageResult:
    """Stage: `<run>/logits.parquet` (and with ``features`` `<run>/features.parquet`) from the
    transfer set, redone when the teachers (name, version), the transfer set's content or the label
    space change, or when features are asked for and not up to date. ``start_ray`` is called first
    when the stage runs (Ray starts only when needed); ``options`` go to `run_teacher_inference`.
    ``out_dir``: a subdirectory of the run directory for the two files instead of the run directory
    itself, so that inferences cached separately live side by side (the assess job keeps one per
    teacher: a teacher added later does not recompute the others)."""
    fp = fingerprint("inference", VERSION, [t.lineage() for t in teachers], transfer.value, space.to_dict())
    logits_path = run.logits if out_dir is None else run.path(out_dir, "logits.parquet")
    features_path = run.features if out_dir is None else run.path(out_dir, "features.parquet")
    stale_features = features and read_fingerprint(features_path) != fp

    def compute() -> None:
        if start_ray is not None:
            start_ray()
        run_teacher_inference(
            transfer.path,
            teachers,
            space,
            logits_path,
            features_path=features_path if features else None,
            fingerprint=fp,
            **options,
        )

    name = "inference" if out_dir is None else f"inference {out_dir}"
    return run_stage(name, logits_path, fp, compute, force=run.force or stale_features, log=run.log)


def read_logits(path: PathLike) -> LogitsFile:
    """Read `logits.parquet` back: ids, z [B, N, L] float32, mask [N, L] bool, label space, teachers."""
    meta = parquet_metadata(path)
    missing = [k for k in ("zoo.label_space", "zoo.teachers", "zoo.mask") if k not in meta]
    if missing:
        raise InferenceError(f"{path} lacks schema metadata {missing}: not written by run_teacher_inference")
    space = LabelSpace.from_dict(json.loads(meta["zoo.label_space"]))
    mask = torch.tensor(json.loads(meta["zoo.mask"]), dtype=torch.bool)
    t = read_parquet(path, columns=["id", "logits"])
    z = read_vectors(t, "logits").reshape(len(t), space.num_teachers, space.num_classes)
    return LogitsFile(
        ids=t.column("id").to_pylist(),
        logits=torch.from_numpy(z.copy()),
        mask=mask,
        label_space=space,
        teachers=json.loads(meta["zoo.teachers"]),
        fingerprint=meta.get(FINGERPRINT_KEY),
    )


def read_features(path: PathLike) -> FeaturesFile:
    """Read `features.parquet` back: ids and each teacher's features as float32 [B, D_i]."""
    meta = parquet_metadata(path)
    if "zoo.features" not in meta:
        raise InferenceError(
            f"{path} lacks schema metadata zoo.features: not written by run_teacher_inference"
        )
    t = read_parquet(path)
    feats, missing = {}, {}
    for f in json.loads(meta["zoo.features"]):
        if f["column"]:
            feats[f["name"]] = torch.from_numpy(read_vectors(t, f["column"]).copy())
        else:
            missing[f["name"]] = f.get("missing", "no features")
    return FeaturesFile(ids=t.column("id").to_pylist(), features=feats, missing=missing)


def teacher_outputs_local(
    images: Sequence[bytes],
    teachers: Sequence[Teacher],
    label_space: LabelSpace,
    batch_size: int = 256,
    features: bool = False,
) -> dict[str, np.ndarray]:
    """The plain in-process computation (no Ray) of what the actors return, over all images:
    "logits" [B, N * L] and with ``features`` "f<i>" [B, D_i]: the reference the tests compare Ray's
    output with, and the baseline of benchmarks/inference.py."""
    predictor = TeacherPredictor(
        [{"name": t.name, "files": _artifact_blob(t.model_dir)} for t in teachers],
        label_space.to_dict(),
        device=None,
        features=features,
    )
    parts = [
        predictor(
            {"id": np.arange(s, min(s + batch_size, len(images))), "image": list(images[s : s + batch_size])}
        )
        for s in range(0, len(images), batch_size)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in (parts[0] if parts else {}) if k != "id"}


def teacher_logits_local(
    images: Sequence[bytes], teachers: Sequence[Teacher], label_space: LabelSpace, batch_size: int = 256
) -> torch.Tensor:
    """`teacher_outputs_local`'s logits as z [B, N, L]."""
    n, big_l = label_space.num_teachers, label_space.num_classes
    out = teacher_outputs_local(images, teachers, label_space, batch_size)
    return torch.from_numpy(out.get("logits", np.zeros((0, n * big_l), np.float32))).reshape(-1, n, big_l)
