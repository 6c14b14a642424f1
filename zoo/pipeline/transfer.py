"""The transfer set U (paper 001, Sec. 3): unlabelled images, materialised once per run as
`transfer.parquet` (`id: string`, `image: binary` encoded PNG/JPEG), the input of Ray Data inference.

Sources: a directory of images (any depth, labels ignored; ids are the relative paths), Parquet with
an image column (binary encoded images, or an HF-style struct with a `bytes` field; ids from an `id`
column or the row number), or in-memory arrays with ids (the demo split). Every image is decoded once
here, so an empty or unreadable transfer set stops the job before any compute, with the first bad
files named.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from zoo.artifacts import InputSpec, preprocess
from zoo.data import ImageDecodeError, decode_image, encode_png, list_images
from zoo.pipeline import JobError
from zoo.pipeline.cache import FINGERPRINT_KEY, RunDir, StageResult, fingerprint
from zoo.pipeline.storage import PathLike, atomic_path, is_uri, parquet_metadata, read_parquet

__all__ = [
    "IMAGE_COLUMNS",
    "VERSION",
    "TransferSetError",
    "TransferSource",
    "load_transfer_images",
    "materialize_transfer_set",
    "read_transfer_ids",
    "read_transfer_images",
    "transfer_content_fingerprint",
    "transfer_source_fingerprint",
    "transfer_stage",
]

VERSION = 1  # of the stage's output (bump when the format or the computation changes)
IMAGE_COLUMNS = ("image", "img", "bytes")
ID_COLUMNS = ("id",)
CONTENT_KEY = "zoo.content_sha256"
# Row groups of this many rows: Ray Data reads Parquet per row group, so this bounds the size of
# a read task (about 0.5-1 MB of 28x28 PNGs) and gives enough blocks to stream through actors.
ROW_GROUP_SIZE = 2048
_SHOW_BAD = 5

TransferSource = str | Path | tuple[Any, Sequence[str]]


class TransferSetError(JobError):
    """The transfer set is empty, unreadable or malformed; the message says what to fix."""


def _is_parquet(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".parquet", ".pq")


def _parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or a directory holding Parquet files only (a Parquet data set)."""
    if _is_parquet(path):
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".parquet", ".pq"))
        return files
    return []


def _image_column(schema: pa.Schema, image_column: str | None, where: Path) -> str:
    names = schema.names
    if image_column is not None:
        if image_column not in names:
            raise TransferSetError(
                f"{where}: no column {image_column!r} (columns: {names}); fix --image-column"
            )
        return image_column
    for c in IMAGE_COLUMNS:
        if c in names:
            return c
    raise TransferSetError(
        f"{where}: no image column found (looked for {list(IMAGE_COLUMNS)}; columns: {names}); "
        "name the column holding encoded image bytes with --image-column"
    )


def _column_bytes(col: pa.ChunkedArray, name: str, where: Path) -> list[bytes | None]:
    """Encoded bytes from a binary column or a struct column with a `bytes` field (HF datasets)."""
    t = col.type
    if pa.types.is_struct(t):
        if t.get_field_index("bytes") < 0:
            raise TransferSetError(f"{where}: column {name!r} is a struct without a 'bytes' field ({t})")
        col = pa.chunked_array([c.field("bytes") for c in col.chunks], type=t.field("bytes").type)
        t = col.type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise TransferSetError(
            f"{where}: column {name!r} has type {t}; the transfer set needs encoded image bytes "
            "(PNG/JPEG) in a binary column"
        )
    return col.to_pylist()


def transfer_source_fingerprint(
    source: TransferSource, *, image_column: str | None = None, id_column: str | None = None
) -> str:
    """A cheap fingerprint of a transfer-set source, to decide whether to re-materialise it: file
    listings with sizes and modification times for paths, the bytes themselves for arrays."""
    if isinstance(source, tuple):
        images, ids = source
        h = hashlib.sha256()
        if isinstance(images, np.ndarray):
            h.update(str((images.shape, images.dtype.str)).encode())
            h.update(np.ascontiguousarray(images).tobytes())
        else:
            for im in images:
                a = np.ascontiguousarray(im)
                h.update(str((a.shape, a.dtype.str)).encode())
                h.update(a.tobytes())
        h.update(json.dumps([str(i) for i in ids]).encode())
        return fingerprint("arrays", h.hexdigest())
    path = Path(source)
    if not path.exists():
        raise TransferSetError(
            f"transfer set {path} does not exist; pass a directory of images or a Parquet file"
        )
    files = _parquet_files(path) or list_images(path)
    listing = [
        (str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns)
        for p in files
    ]
    return fingerprint("path", str(path.resolve()), listing, image_column, id_column)


def _records_from_arrays(images: Any, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None, str]]:
    if len(images) != len(ids):
        raise TransferSetError(f"{len(images)} images but {len(ids)} ids; give one id per image")
    for i, (im, sid) in enumerate(zip(images, ids)):
        a = np.asarray(im)
        if a.dtype != np.uint8 or a.ndim not in (2, 3):
            raise TransferSetError(
                f"image {i} (id {sid!r}) has dtype {a.dtype} and shape {a.shape}; arrays must be uint8 "
                "[H, W] or [H, W, C]"
            )
        yield str(sid), encode_png(a), str(sid)


def _records_from_dir(root: Path) -> Iterator[tuple[str, bytes | None, str]]:
    for p in list_images(root):
        rel = p.relative_to(root).as_posix()
        try:
            data = p.read_bytes()
        except OSError:
            data = None
        yield rel, data, str(p)


def _records_from_parquet(
    files: list[Path], image_column: str | None, id_column: str | None
) -> Iterator[tuple[str, bytes | None, str]]:
    row = 0
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except (OSError, pa.ArrowInvalid) as e:
            raise TransferSetError(f"{f} is not a readable Parquet file ({e}); fix or remove it") from e
        col = _image_column(pf.schema_arrow, image_column, f)
        idc = (
            id_column
            if id_column is not None
            else next((c for c in ID_COLUMNS if c in pf.schema_arrow.names), None)
        )
        if idc is not None and idc not in pf.schema_arrow.names:
            raise TransferSetError(
                f"{f}: no id column {idc!r} (columns: {pf.schema_arrow.names}); fix --id-column"
            )
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=[col] + ([idc] if idc else []))
            images = _column_bytes(t.column(col), col, f)
            ids = [str(v) for v in t.column(idc).to_pylist()] if idc else None
            for k, data in enumerate(images):
                sid = ids[k] if ids is not None else str(row)
                yield sid, data, f"{f} row {row} (id {sid!r})"
                row += 1


def materialize_transfer_set(
    source: TransferSource,
    out_path: str | Path,
    *,
    image_column: str | None = None,
    id_column: str | None = None,
    fingerprint: str | None = None,
    limit: int | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
) -> str | Path:
    """Validate a transfer set and write it to `out_path` as Parquet (`id`, `image` encoded bytes).

    `source`: a directory of images (any depth), a Parquet file or directory of Parquet files with an
    image column (`image`/`img`/`bytes` or `image_column`), or `(images, ids)` with uint8 arrays
    (encoded as PNG). Every image is decoded once to check it; an empty set, undecodable images
    (the first few are named, with the count) or duplicate ids raise `TransferSetError` and leave
    nothing behind. `limit` keeps the first `limit` images. The schema metadata holds `fingerprint`
    (the stage's input fingerprint) and `zoo.content_sha256` (of ids and bytes: the transfer set's
    identity in lineage). `out_path` may be a URI (`s3://`, `file://`).
    """
    records, total, described = _open_source(source, image_column, id_column)
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    # Bytes we encoded ourselves (arrays) need no check; files and Parquet cells are decoded once.
    ids, blobs, content = _collect(records, total, limit, described, check=not isinstance(source, tuple))
    table = pa.table({"id": pa.array(ids, pa.string()), "image": pa.array(blobs, pa.binary())})
    meta = {CONTENT_KEY: content, "zoo.num_images": str(len(ids)), "zoo.source": described}
    if fingerprint is not None:
        meta[FINGERPRINT_KEY] = fingerprint
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    out_path = str(out_path) if is_uri(out_path) else Path(out_path)  # a local path or a URI
    with atomic_path(out_path, ".parquet") as tmp:
        pq.write_table(table, tmp, row_group_size=max(1, row_group_size), compression="snappy")
    return out_path


def _open_source(
    source: TransferSource, image_column: str | None, id_column: str | None
) -> tuple[Iterator[tuple[str, bytes | None, str]], int | None, str]:
    """(records (id, bytes, where), how many if known, a description) of a transfer-set source."""
    if isinstance(source, tuple):
        if len(source) != 2:
            raise TransferSetError("an in-memory transfer set is a tuple (images, ids)")
        return _records_from_arrays(*source), len(source[1]), f"{len(source[1])} in-memory images"
    path = Path(source)
    if not path.exists():
        raise TransferSetError(
            f"transfer set {path} does not exist; pass --transfer DIR (images, any depth) or a Parquet file"
        )
    files = _parquet_files(path)
    if files:
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        return _records_from_parquet(files, image_column, id_column), total, str(path)
    if path.is_dir():
        return _records_from_dir(path), None, str(path)
    raise TransferSetError(
        f"transfer set {path} is neither a directory of images nor a Parquet file (.parquet)"
    )


def _collect(
    records: Iterator[tuple[str, bytes | None, str]],
    total: int | None,
    limit: int | None,
    described: str,
    check: bool,
) -> tuple[list[str], list[bytes], str]:
    """(ids, encoded images, content sha256) of the first ``limit`` records, each decoded once when
    ``check``; undecodable images, duplicate ids or nothing at all raise TransferSetError."""
    ids: list[str] = []
    blobs: list[bytes] = []
    bad: list[str] = []
    seen: set[str] = set()
    dupes: list[str] = []
    h = hashlib.sha256()
    bar = tqdm(
        records, total=total, desc="transfer set", unit="img", leave=False, mininterval=2.0, disable=None
    )
    for sid, data, where in bar:
        if limit is not None and len(ids) + len(bad) >= limit:
            break
        try:
            if data is None:
                raise ImageDecodeError("unreadable file")
            if check:
                decode_image(data)
        except ImageDecodeError as e:
            bad.append(f"{where}: {e}")
            continue
        if sid in seen:
            dupes.append(sid)
            continue
        seen.add(sid)
        ids.append(sid)
        blobs.append(data)
        h.update(sid.encode() + b"\0" + hashlib.sha256(data).digest())
    if bad:
        shown = "\n  ".join(bad[:_SHOW_BAD])
        more = f"\n  ... and {len(bad) - _SHOW_BAD} more" if len(bad) > _SHOW_BAD else ""
        raise TransferSetError(
            f"transfer set {described}: {len(bad)} of {len(bad) + len(ids) + len(dupes)} images cannot be "
            f"decoded:\n  {shown}{more}\nFix: remove or re-encode them (PNG, JPEG, WebP, BMP)"
        )
    if dupes:
        raise TransferSetError(
            f"transfer set {described}: {len(dupes)} duplicate ids (first: {dupes[:_SHOW_BAD]}); "
            "ids must be unique (fix the id column, or drop it to use row numbers)"
        )
    if not ids:
        raise TransferSetError(
            f"transfer set {described} is empty: it holds no images (png, jpg, jpeg, webp, bmp) "
            "or no rows; point --transfer at unlabelled images"
        )
    return ids, blobs, h.hexdigest()


def read_transfer_ids(path: str | Path) -> list[str]:
    """The sample ids of a materialised transfer set, in row order."""
    return read_parquet(path, columns=["id"]).column("id").to_pylist()


def read_transfer_images(path: str | Path) -> tuple[list[str], list[bytes]]:
    """Ids and encoded image bytes of a materialised transfer set, in row order."""
    t = read_parquet(path)
    missing = [c for c in ("id", "image") if c not in t.column_names]
    if missing:
        raise TransferSetError(f"{path} has no column(s) {missing}: is it a transfer.parquet?")
    return t.column("id").to_pylist(), t.column("image").to_pylist()


def transfer_content_fingerprint(path: str | Path) -> str:
    """sha256 of the ids and image bytes of a materialised transfer set (lineage identity)."""
    meta = parquet_metadata(path)
    if CONTENT_KEY not in meta:
        raise TransferSetError(f"{path} has no {CONTENT_KEY}: it was not written by materialize_transfer_set")
    return meta[CONTENT_KEY]


def load_transfer_images(path: PathLike, spec: InputSpec) -> tuple[list[str], torch.Tensor]:
    """Ids and the images of transfer.parquet decoded and preprocessed to ``spec``: float32 [B, C, H, W]."""
    ids, blobs = read_transfer_images(path)
    return [str(i) for i in ids], preprocess([decode_image(b) for b in blobs], spec)


def transfer_stage(
    run: RunDir,
    source: TransferSource,
    *,
    image_column: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
) -> StageResult:
    """Stage: `<run>/transfer.parquet` from ``source``, redone only when the source (its listing, or
    the arrays' bytes) or ``limit`` changed. The result's ``value`` is the content fingerprint (the
    transfer set's identity in lineage), read back when the stage is skipped too."""
    src = transfer_source_fingerprint(source, image_column=image_column, id_column=id_column)
    out = run.stage(
        "transfer",
        run.transfer,
        VERSION,
        [src, limit],
        lambda path, fp: materialize_transfer_set(
            source, path, image_column=image_column, id_column=id_column, fingerprint=fp, limit=limit
        ),
    )
    return replace(out, value=transfer_content_fingerprint(out.path))
