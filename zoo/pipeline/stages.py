"""Run directory, input fingerprints, skip-if-unchanged and atomic writes for the stages of a job.

Each stage's output carries the fingerprint (sha256) of everything it was computed from: in the
Parquet schema metadata (`zoo.fingerprint`) for tables, in a `<output>.json` sidecar for anything
else (a model directory, a metrics file). A rerun recomputes a stage only when the fingerprint it
would write differs from the one on disk, so a crash loses at most the stage in flight; outputs are
written to a temporary path beside the target and renamed into place, so no half-written file ever
carries a valid fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FINGERPRINT_KEY",
    "RunDir",
    "StageResult",
    "atomic_dir",
    "atomic_path",
    "fingerprint",
    "parquet_metadata",
    "read_fingerprint",
    "read_sidecar",
    "run_stage",
    "write_json_atomic",
    "write_parquet_atomic",
    "write_sidecar",
]

FINGERPRINT_KEY = "zoo.fingerprint"
T = TypeVar("T")


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
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `path` when the block ends
    without error, delete it otherwise (a crash leaves the old file, or nothing, never a partial one)."""
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
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Like `atomic_path` for a directory: fill the yielded temporary directory; on success it
    replaces `path` (an older version is removed first), on error it is deleted."""
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


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write `obj` as indented JSON to `path` through a temporary file."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(_canonical(obj), indent=2, sort_keys=True) + "\n")
    return Path(path)


def parquet_metadata(path: str | Path) -> dict[str, str]:
    """The key-value schema metadata of a Parquet file, decoded to str (empty dict if none)."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def write_parquet_atomic(
    table: pa.Table, path: str | Path, metadata: Mapping[str, str] | None = None, **write_kwargs: Any
) -> Path:
    """Write `table` (with `metadata` merged into its schema metadata) to `path` through a temp file."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp, **write_kwargs)
    return Path(path)


def sidecar_path(path: str | Path) -> Path:
    """`<output>.json`, the sidecar holding the fingerprint of a non-Parquet output."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_sidecar(path: str | Path, fp: str, **extra: Any) -> Path:
    """Record that `path` was computed from inputs with fingerprint `fp` (plus any `extra` facts)."""
    return write_json_atomic({"fingerprint": fp, **extra}, sidecar_path(path))


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar of `path`, or None when it is missing or unreadable."""
    side = sidecar_path(path)
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return None


def read_fingerprint(path: str | Path) -> str | None:
    """The fingerprint an output was written with: Parquet schema metadata, else the sidecar; None
    when the output or its fingerprint is missing (so the stage must run)."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file() and path.suffix == ".parquet":
        try:
            return parquet_metadata(path).get(FINGERPRINT_KEY)
        except (OSError, pa.ArrowInvalid):
            return None
    if path.is_file() and path.suffix == ".json":  # a JSON output holds its own fingerprint
        try:
            return json.loads(path.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None
    side = read_sidecar(path)
    return None if side is None else side.get("fingerprint")


class StageResult:
    """What `run_stage` did: the output path, whether it was skipped, and the seconds it took."""

    def __init__(self, name: str, path: Path, skipped: bool, seconds: float, value: Any = None):
        self.name, self.path, self.skipped, self.seconds, self.value = name, path, skipped, seconds, value

    def __repr__(self) -> str:
        state = "skipped" if self.skipped else f"{self.seconds:.1f}s"
        return f"StageResult({self.name!r}, {str(self.path)!r}, {state})"


def run_stage(
    name: str,
    out_path: str | Path,
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
    out_path = Path(out_path)
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
    """The run directory `runs/<name>/` (configurable) and the fixed names of its stage outputs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def ensure(self) -> RunDir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def transfer(self) -> Path:
        return self.root / "transfer.parquet"

    @property
    def logits(self) -> Path:
        return self.root / "logits.parquet"

    @property
    def soft_labels(self) -> Path:
        return self.root / "soft_labels.parquet"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def train_storage(self) -> Path:
        return self.root / "train"

    @property
    def spv(self) -> Path:
        return self.root / "spv"

    @property
    def registration(self) -> Path:
        return self.root / "registration.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"
