"""Run directory, input fingerprints, skip-if-unchanged and atomic writes for the stages of a job.

Each stage's output carries the fingerprint (sha256) of everything it was computed from: in the
Parquet schema metadata (`zoo.fingerprint`) for tables, in a `<output>.json` sidecar for anything
else (a model directory, a metrics file). A rerun recomputes a stage only when the fingerprint it
would write differs from the one on disk, so a crash loses at most the stage in flight; outputs are
written to a temporary path beside the target and renamed into place, so no half-written file ever
carries a valid fingerprint.

Paths may be local paths or URIs (`s3://`, `gs://`, `file://`, anything `pyarrow.fs` opens), so that
a run directory can live where every node of a cluster reaches it. Writers still write into a local
temporary file (`atomic_path` yields one); for a URI it is then uploaded under a temporary name beside
the target and moved into place (a rename on `file://`; on object stores the move is a copy and a
delete, and an object becomes visible only once whole, so readers never see a partial file there
either).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "FINGERPRINT_KEY",
    "RunDir",
    "StageResult",
    "atomic_dir",
    "atomic_path",
    "fingerprint",
    "fs_path",
    "is_uri",
    "join",
    "local_copy",
    "parquet_file",
    "parquet_metadata",
    "path_exists",
    "read_parquet",
    "read_text",
    "read_fingerprint",
    "read_sidecar",
    "run_stage",
    "write_json_atomic",
    "write_parquet_atomic",
    "write_sidecar",
]

FINGERPRINT_KEY = "zoo.fingerprint"
T = TypeVar("T")
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


def _is_file(path: PathLike) -> bool:
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


def _canonical(obj: Any) -> Any:
    """A JSON-able canonical form: dataclasses as dicts, paths as strings, tuples as lists, sets sorted."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_canonical(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj.is_integer():
        # 3 and 3.0 are the same temperature: do not let the YAML spelling change the fingerprint.
        return int(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _canonical(obj.tolist())
    return repr(obj)


def fingerprint(*parts: Any) -> str:
    """sha256 (hex) of the canonical JSON of `parts` (dicts are key-sorted, so order-free)."""
    blob = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


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
    (`run_stage(..., sidecar=True)`) write the fingerprint sidecar only after, so such a directory
    is never taken as done."""
    if is_uri(path):
        fs, p = fs_path(path)
        tmp = Path(tempfile.mkdtemp(prefix="zoo-dir-"))
        try:
            yield tmp
            if fs.get_file_info(p).type == pafs.FileType.Directory:
                fs.delete_dir(p)
            fs.create_dir(p, recursive=True)
            pafs.copy_files(str(tmp), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
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


def _same_kind(path: PathLike) -> PathLike:
    return str(path) if is_uri(path) else Path(path)


def write_json_atomic(obj: Any, path: PathLike) -> PathLike:
    """Write `obj` as indented JSON to `path` (local or URI) through a temporary file."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(_canonical(obj), indent=2, sort_keys=True) + "\n")
    return _same_kind(path)


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
    return _same_kind(path)


def sidecar_path(path: PathLike) -> PathLike:
    """`<output>.json`, the sidecar holding the fingerprint of a non-Parquet output."""
    if is_uri(path):
        return str(path).rstrip("/") + ".json"
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_sidecar(path: PathLike, fp: str, **extra: Any) -> PathLike:
    """Record that `path` was computed from inputs with fingerprint `fp` (plus any `extra` facts)."""
    return write_json_atomic({"fingerprint": fp, **extra}, sidecar_path(path))


def read_sidecar(path: PathLike) -> dict[str, Any] | None:
    """The sidecar of `path`, or None when it is missing or unreadable."""
    side = sidecar_path(path)
    try:
        return json.loads(read_text(side))
    except (OSError, ValueError):
        return None


def read_fingerprint(path: PathLike) -> str | None:
    """The fingerprint an output was written with: Parquet schema metadata, else the sidecar; None
    when the output or its fingerprint is missing (so the stage must run)."""
    if not path_exists(path):
        return None
    suffix = os.path.splitext(str(path).rstrip("/"))[1]
    if suffix == ".parquet" and _is_file(path):
        try:
            return parquet_metadata(path).get(FINGERPRINT_KEY)
        except (OSError, pa.ArrowInvalid):
            return None
    if suffix == ".json" and _is_file(path):  # a JSON output holds its own fingerprint
        try:
            return json.loads(read_text(path)).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None
    side = read_sidecar(path)
    return None if side is None else side.get("fingerprint")


class StageResult:
    """What `run_stage` did: the output path, whether it was skipped, and the seconds it took."""

    def __init__(self, name: str, path: PathLike, skipped: bool, seconds: float, value: Any = None):
        self.name, self.path, self.skipped, self.seconds, self.value = name, path, skipped, seconds, value

    def __repr__(self) -> str:
        state = "skipped" if self.skipped else f"{self.seconds:.1f}s"
        return f"StageResult({self.name!r}, {str(self.path)!r}, {state})"


def run_stage(
    name: str,
    out_path: PathLike,
    fp: str,
    compute: Callable[[], Any],
    *,
    force: bool = False,
    sidecar: bool = False,
    log: Callable[[str], None] = print,
) -> StageResult:
    """Run `compute()` unless `out_path` already carries fingerprint `fp` (then print "skipped (up to
    date)"). `compute` must write `out_path` atomically with `fp` in it; with `sidecar=True` this
    function writes the `<out_path>.json` sidecar after `compute` returns (for outputs that cannot
    hold metadata), so an output whose sidecar is missing is recomputed."""
    out_path = _same_kind(out_path)
    if not force and read_fingerprint(out_path) == fp:
        log(f"[{name}] skipped (up to date): {out_path}")
        return StageResult(name, out_path, True, 0.0)
    log(f"[{name}] running -> {out_path}")
    start = time.perf_counter()
    value = compute()
    seconds = time.perf_counter() - start
    if sidecar:
        write_sidecar(out_path, fp, seconds=round(seconds, 3))
    elif read_fingerprint(out_path) != fp:
        raise RuntimeError(f"stage {name!r} did not write {out_path} with its fingerprint (a bug)")
    log(f"[{name}] done in {seconds:.1f}s")
    return StageResult(name, out_path, False, seconds, value)


class RunDir:
    """The run directory `runs/<name>/` (configurable) and the fixed names of its stage outputs.

    `root` is a local path (a `Path`) or a URI (`s3://bucket/runs/x`, `file:///mnt/zoo/runs/x`: a
    `str`), so that workers on other nodes read and write the same files; the properties are of the
    same kind (`join`)."""

    def __init__(self, root: PathLike):
        self.root: PathLike = str(root).rstrip("/") if is_uri(root) else Path(root)

    @property
    def is_remote(self) -> bool:
        return is_uri(self.root)

    def ensure(self) -> RunDir:
        if self.is_remote:
            fs, p = fs_path(self.root)
            fs.create_dir(p, recursive=True)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
        return self

    def path(self, *parts: str) -> PathLike:
        return join(self.root, *parts)

    @property
    def display(self) -> str:
        """The root as shown and recorded (absolute for a local path)."""
        return str(self.root) if self.is_remote else str(Path(self.root).resolve())

    @property
    def transfer(self) -> PathLike:
        return self.path("transfer.parquet")

    @property
    def logits(self) -> PathLike:
        return self.path("logits.parquet")

    @property
    def soft_labels(self) -> PathLike:
        return self.path("soft_labels.parquet")

    @property
    def student(self) -> PathLike:
        return self.path("student")

    @property
    def train_storage(self) -> PathLike:
        return self.path("train")

    @property
    def spv(self) -> PathLike:
        return self.path("spv")

    @property
    def registration(self) -> PathLike:
        return self.path("registration.json")

    @property
    def summary(self) -> PathLike:
        return self.path("summary.json")

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"
