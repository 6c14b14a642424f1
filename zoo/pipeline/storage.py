"""Where stage outputs live, and how they are written: local paths or URIs, atomic writes, Parquet.

Paths may be local paths or URIs (`s3://`, `gs://`, `file://`, anything `pyarrow.fs` opens), so that
a run directory can live where every node of a cluster reaches it. Writers write into a local
temporary file (`atomic_path` yields one); for a local target it is renamed into place, for a URI it
is uploaded under a temporary name beside the target and moved into place (a rename on `file://`; on
object stores the move is a copy and a delete, and an object becomes visible only once whole, so
readers never see a partial file there either).

Fixed-size list columns (`fixed_size_list<float32>[W]`) carry per-sample vectors (logits, soft labels,
features): `vector_column` writes one from a [rows, W] array, `read_vectors` reads it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "PathLike",
    "atomic_dir",
    "atomic_path",
    "fs_path",
    "is_file",
    "is_uri",
    "join",
    "local_copy",
    "parquet_file",
    "parquet_metadata",
    "path_exists",
    "read_parquet",
    "read_text",
    "read_vectors",
    "same_kind",
    "upload_dir",
    "vector_column",
    "write_json_atomic",
    "write_parquet_atomic",
    "write_text",
]

PathLike = str | Path  # a local path or a URI (str)


# ------------------------------------------------------------------------------ paths and URIs
def is_uri(path: PathLike) -> bool:
    """True for `scheme://...` (s3, gs, file, ...), False for a plain local path."""
    return "://" in str(path)


def fs_path(path: PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path (made absolute) or a URI."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), os.path.abspath(str(path))


def join(base: PathLike, *parts: str) -> PathLike:
    """`base / parts`: a Path for a local base, a URI string for a URI."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def _info(path: PathLike) -> pafs.FileInfo:
    fs, p = fs_path(path)
    return fs.get_file_info(p)


def path_exists(path: PathLike) -> bool:
    """Whether a file or directory exists at a local path or URI."""
    if not is_uri(path):
        return Path(path).exists()
    return _info(path).type != pafs.FileType.NotFound


def is_file(path: PathLike) -> bool:
    return Path(path).is_file() if not is_uri(path) else _info(path).type == pafs.FileType.File


def read_text(path: PathLike) -> str:
    """The text of a file at a local path or URI."""
    if not is_uri(path):
        return Path(path).read_text()
    fs, p = fs_path(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def read_parquet(path: PathLike, columns: list[str] | None = None) -> pa.Table:
    """`pq.read_table` for a local path or a URI."""
    fs, p = fs_path(path)
    return pq.read_table(p, columns=columns, filesystem=fs)


def parquet_file(path: PathLike) -> pq.ParquetFile:
    """A `pq.ParquetFile` on a local path or a URI (row groups read lazily)."""
    if not is_uri(path):
        return pq.ParquetFile(path)
    fs, p = fs_path(path)
    return pq.ParquetFile(fs.open_input_file(p))


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[Path]:
    """A local path holding the file or directory at `path`: `path` itself when local, else a
    temporary download (deleted when the block ends). For what needs a local file (model loading,
    MLflow artifact upload)."""
    if not is_uri(path):
        yield Path(path)
        return
    fs, p = fs_path(path)
    with tempfile.TemporaryDirectory(prefix="zoo-dl-") as tmp:
        dest = Path(tmp) / p.rstrip("/").rsplit("/", 1)[-1]
        if fs.get_file_info(p).type == pafs.FileType.Directory:
            dest.mkdir()
        pafs.copy_files(p, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield dest


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `path` when the block ends
    without error, delete it otherwise (a crash leaves the old file, or nothing, never a partial one).
    For a URI the yielded path is a local temporary file, uploaded when the block ends (module doc)."""
    if is_uri(path):
        with _atomic_remote(str(path), suffix) as tmp:
            yield tmp
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def _atomic_remote(uri: str, suffix: str) -> Iterator[Path]:
    fs, p = fs_path(uri)
    parent, name = p.rstrip("/").rsplit("/", 1)
    fd, local = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix or ".tmp")
    os.close(fd)
    remote_tmp = f"{parent}/.{name}.{uuid.uuid4().hex}{suffix or '.tmp'}"
    try:
        yield Path(local)
        fs.create_dir(parent, recursive=True)
        with open(local, "rb") as src, fs.open_output_stream(remote_tmp) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        # A rename where the file system has one (file://, HDFS): atomic. On S3/GCS a copy + delete;
        # the target object appears whole when the copy completes, never partly written.
        fs.move(remote_tmp, p)
    finally:
        os.unlink(local)
        with contextlib.suppress(OSError):
            if fs.get_file_info(remote_tmp).type != pafs.FileType.NotFound:
                fs.delete_file(remote_tmp)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Like `atomic_path` for a directory: fill the yielded temporary directory; on success it
    replaces `path` (an older version is removed first), on error it is deleted. For a URI the local
    directory is uploaded into place at the end; object stores have no atomic directory rename, so
    a crash mid-upload can leave a partial directory there: stages that write directories
    (`zoo.pipeline.cache.run_stage(..., sidecar=True)`) write the fingerprint sidecar only after,
    so such a directory is never taken as done."""
    if is_uri(path):
        tmp = Path(tempfile.mkdtemp(prefix="zoo-dir-"))
        try:
            yield tmp
            upload_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}.{time.monotonic_ns()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def same_kind(path: PathLike) -> PathLike:
    """`path` as a Path when local, as a URI string otherwise."""
    return str(path) if is_uri(path) else Path(path)


def write_json_atomic(obj: Any, path: PathLike) -> PathLike:
    """Write `obj` as indented JSON to `path` (local or URI) through a temporary file."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return same_kind(path)


def parquet_metadata(path: PathLike) -> dict[str, str]:
    """The key-value schema metadata of a Parquet file, decoded to str (empty dict if none)."""
    raw = (pq.read_schema(path) if not is_uri(path) else parquet_file(path).schema_arrow).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def write_parquet_atomic(
    table: pa.Table, path: PathLike, metadata: Mapping[str, str] | None = None, **write_kwargs: Any
) -> PathLike:
    """Write `table` (with `metadata` merged into its schema metadata) to `path` through a temp file."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp, **write_kwargs)
    return same_kind(path)


def _json_default(obj: Any) -> Any:
    """JSON for what `json` does not know: paths, tuples and sets, numpy / torch values."""
    if isinstance(obj, Path):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return repr(obj)


def write_text(path: PathLike, text: str) -> PathLike:
    """Write `text` to `path` (local or URI) through a temporary file."""
    with atomic_path(path, ".txt") as tmp:
        tmp.write_text(text)
    return same_kind(path)


def upload_dir(local: Path, path: PathLike) -> None:
    """Copy the local directory `local` to `path` (a URI), replacing what is there."""
    fs, p = fs_path(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)
    fs.create_dir(p, recursive=True)  # needed where directories are real (file://, HDFS)
    pafs.copy_files(str(local), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def vector_column(rows: np.ndarray) -> pa.FixedSizeListArray:
    """A `fixed_size_list<float>[W]` column from a [rows, W] array (float32 or float16)."""
    rows = np.ascontiguousarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"vector_column needs a [rows, width] array, got shape {rows.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


def read_vectors(table: pa.Table, column: str, dtype: Any = np.float32) -> np.ndarray:
    """A `fixed_size_list<float>[W]` column of `table` as a [rows, W] array of `dtype`."""
    col = table.column(column).combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise ValueError(f"column {column!r} must be a fixed_size_list of floats, got {col.type}")
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(dtype, copy=False).reshape(len(col), col.type.list_size)
