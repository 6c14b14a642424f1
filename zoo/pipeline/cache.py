"""Skip a stage whose inputs have not changed: fingerprints, the run directory, `run_stage`.

Each stage's output carries the fingerprint (sha256) of everything it was computed from: in the
Parquet schema metadata (`zoo.fingerprint`) for tables, in a `<output>.json` sidecar for anything
else (a model directory), inside the file for a JSON output. A rerun recomputes a stage only when
the fingerprint it would write differs from the one on disk, so a crash loses at most the stage in
flight; outputs are written atomically (`zoo.pipeline.storage`), so no half-written file ever carries
a valid fingerprint.

Each stage owns its inputs and its version: a stage function (e.g.
`zoo.pipeline.soft_labels.soft_labels_stage`) calls `RunDir.stage(name, output, version, inputs,
compute)`, which fingerprints `(name, version, *inputs)` and runs `compute(path, fingerprint)` only
when needed. Bump a stage's version when its output format or computation changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from zoo.pipeline.storage import (
    PathLike,
    fs_path,
    is_file,
    is_uri,
    join,
    parquet_metadata,
    path_exists,
    read_text,
    same_kind,
    write_json_atomic,
)

__all__ = [
    "FINGERPRINT_KEY",
    "RunDir",
    "StageResult",
    "fingerprint",
    "read_fingerprint",
    "read_sidecar",
    "run_stage",
    "write_sidecar",
]

FINGERPRINT_KEY = "zoo.fingerprint"


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
    try:
        return json.loads(read_text(sidecar_path(path)))
    except (OSError, ValueError):
        return None


def read_fingerprint(path: PathLike) -> str | None:
    """The fingerprint an output was written with: Parquet schema metadata, the JSON's own
    `fingerprint`, else the sidecar; None when the output or its fingerprint is missing."""
    if not path_exists(path):
        return None
    suffix = os.path.splitext(str(path).rstrip("/"))[1]
    if suffix == ".parquet" and is_file(path):
        try:
            return parquet_metadata(path).get(FINGERPRINT_KEY)
        except (OSError, pa.ArrowInvalid):
            return None
    if suffix == ".json" and is_file(path):
        try:
            return json.loads(read_text(path)).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None
    side = read_sidecar(path)
    return None if side is None else side.get("fingerprint")


@dataclass(frozen=True)
class StageResult:
    """What a stage did: its output, the fingerprint the output carries (the input of the next
    stage's fingerprint), whether it was skipped, the seconds it took, and what `compute` returned."""

    name: str
    path: PathLike
    fingerprint: str
    skipped: bool
    seconds: float
    value: Any = None


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
    """Run `compute()` unless `out_path` already carries fingerprint `fp` (then log "skipped (up to
    date)"). `compute` must write `out_path` atomically with `fp` in it; with `sidecar=True` this
    function writes the `<out_path>.json` sidecar after `compute` returns (for outputs that cannot
    hold metadata), so an output whose sidecar is missing is recomputed. A sidecar stage's `compute`
    may return a dict of facts to keep there (e.g. metrics): a skipped stage's `value` is the
    sidecar, so they come back with it."""
    out_path = same_kind(out_path)
    if not force and read_fingerprint(out_path) == fp:
        log(f"[{name}] skipped (up to date): {out_path}")
        return StageResult(name, out_path, fp, True, 0.0, read_sidecar(out_path) if sidecar else None)
    log(f"[{name}] running -> {out_path}")
    start = time.perf_counter()
    value = compute()
    seconds = time.perf_counter() - start
    if sidecar:
        facts = dict(value) if isinstance(value, Mapping) else {}
        write_sidecar(out_path, fp, **{**facts, "seconds": round(seconds, 3)})
    elif read_fingerprint(out_path) != fp:
        raise RuntimeError(f"stage {name!r} did not write {out_path} with its fingerprint (a bug)")
    log(f"[{name}] done in {seconds:.1f}s")
    return StageResult(name, out_path, fp, False, seconds, value)


class RunDir:
    """A job's run directory (`runs/<name>/` by default): a local path (a `Path`) or a URI
    (`s3://bucket/runs/x`, `file:///mnt/zoo/runs/x`: a `str`), so that workers on other nodes read
    and write the same files; the paths it hands out are of the same kind. It also carries how the
    run treats up-to-date stages (`force`) and where stages say what they do (`log`)."""

    def __init__(self, root: PathLike, *, force: bool = False, log: Callable[[str], None] = print):
        self.root: PathLike = str(root).rstrip("/") if is_uri(root) else Path(root)
        self.force = force
        self.log = log

    @property
    def is_remote(self) -> bool:
        return is_uri(self.root)

    @property
    def display(self) -> str:
        """The root as shown and recorded (absolute for a local path)."""
        return str(self.root) if self.is_remote else str(Path(self.root).resolve())

    def ensure(self) -> RunDir:
        if self.is_remote:
            fs, p = fs_path(self.root)
            fs.create_dir(p, recursive=True)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
        return self

    def path(self, *parts: str) -> PathLike:
        return join(self.root, *parts)

    def stage(
        self,
        name: str,
        output: str | PathLike,
        version: int,
        inputs: Sequence[Any],
        compute: Callable[[PathLike, str], Any],
        *,
        sidecar: bool = False,
    ) -> StageResult:
        """Run stage `name` into `output` (a file name in the run directory, or a path) unless it is
        up to date: its fingerprint is that of (name, version, *inputs); `compute(path, fingerprint)`
        writes the output (with the fingerprint in it, or `sidecar=True`)."""
        path = self.path(output) if isinstance(output, str) and not is_uri(output) else output
        fp = fingerprint(name, version, *inputs)
        return run_stage(
            name, path, fp, lambda: compute(path, fp), force=self.force, sidecar=sidecar, log=self.log
        )

    # The outputs several jobs share (a job's own outputs are named by its stage functions).
    @property
    def transfer(self) -> PathLike:
        return self.path("transfer.parquet")

    @property
    def logits(self) -> PathLike:
        return self.path("logits.parquet")

    @property
    def features(self) -> PathLike:
        return self.path("features.parquet")

    @property
    def soft_labels(self) -> PathLike:
        return self.path("soft_labels.parquet")

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
