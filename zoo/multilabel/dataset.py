"""The on-disk layouts of a multi-label data set, the input the multi-label jobs take
(docs/multilabel.md "Data layout").

- Parquet (one file per split): columns `id` (string), `image` (binary: encoded PNG/JPEG, as the main
  job's transfer sets) and `labels` (list<string>: the class names present; empty for none). The
  schema metadata `zoo.classes` holds the class order as a JSON list, so that a class with no positive
  in this file keeps its column.
- Folder: `<root>/images/<id>.png` and `<root>/labels.csv`, a wide table with the header
  `image,<class 1>,...,<class C>` (the class order) and one row per image: its path relative to root
  and one 0/1 per class. A wide table needs no separator inside a cell, so any class name works.

Readers return a MultilabelSet; `classes=` imposes a class order (names are matched as zoo.labels
matches classes: case, "_" and spacing ignored) and refuses a label outside it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zoo.data import decode_image, encode_png
from zoo.labels import normalize_class_name

from .mosaic import SPLITS, fashion_mosaics

CLASSES_KEY = b"zoo.classes"
LABELS_CSV = "labels.csv"
IMAGES_DIR = "images"
ROW_GROUP_SIZE = 2048  # rows per Parquet row group: the unit of a Ray Data read task
DEFAULT_SIZES = {"train": 20_000, "val": 2_000, "test": 5_000}


@dataclass(frozen=True)
class MultilabelSet:
    """Images (uint8 [n, H, W] or [n, H, W, 3] when they share a size, else a list), multi-hot
    targets uint8 [n, C] in the order of `classes`, and one id per image."""

    ids: list[str]
    images: np.ndarray | list[np.ndarray]
    targets: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def _check_set(images: object, targets: object, classes: Sequence[str], ids: Sequence[str] | None):
    targets = np.asarray(targets)
    classes = [str(c) for c in classes]
    if targets.ndim != 2 or targets.shape[1] != len(classes) or not np.isin(targets, (0, 1)).all():
        raise ValueError(
            f"targets must be 0/1 [n, {len(classes)}] (one column per class); got shape {targets.shape}"
        )
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} target rows; give one row per image")
    keys = [normalize_class_name(c) for c in classes]
    if len(set(keys)) != len(keys) or not all(keys):
        raise ValueError(f"class names must be non-empty and distinct (after normalisation); got {classes}")
    ids = [f"{i:06d}" for i in range(len(targets))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(targets) or len(set(ids)) != len(ids):
        raise ValueError(f"ids must be unique, one per image; got {len(ids)} ids for {len(targets)} images")
    return targets.astype(np.uint8), classes, ids


def _class_index(
    file_classes: Sequence[str], seen: set[str], classes: Sequence[str] | None, where: Path
) -> tuple[list[str], dict[str, int]]:
    """The output class order (`classes`, else the file's) and a map from a normalised name to its
    column; a label `seen` on some image but outside the order is refused."""
    order = list(file_classes) if classes is None else [str(c) for c in classes]
    index = {normalize_class_name(c): k for k, c in enumerate(order)}
    unknown = sorted({c for c in seen if normalize_class_name(c) not in index})
    if unknown:
        raise ValueError(
            f"{where}: labels {unknown[:8]} are not among the classes {order}; pass classes= that holds them"
        )
    return order, index


def _stack(images: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    return np.stack(images) if images and len({im.shape for im in images}) == 1 else images


# ------------------------------------------------------------------------------------------- Parquet
def write_multilabel_parquet(
    path: str | Path,
    images: object,
    targets: object,
    classes: Sequence[str],
    ids: Sequence[str] | None = None,
) -> Path:
    """Write uint8 images ([n, H, W(, C)] or a list), 0/1 targets [n, C] and ids as Parquet (PNG bytes)."""
    targets, classes, ids = _check_set(images, targets, classes, ids)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "image": pa.array([encode_png(np.asarray(im)) for im in images], pa.binary()),
            "labels": pa.array(
                [[classes[k] for k in np.flatnonzero(row)] for row in targets], pa.list_(pa.string())
            ),
        }
    )
    table = table.replace_schema_metadata({CLASSES_KEY: json.dumps(classes).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE)
    return path


def read_multilabel_parquet(path: str | Path, classes: Sequence[str] | None = None) -> MultilabelSet:
    """Read a file written by write_multilabel_parquet (or any Parquet with `image` bytes and `labels`
    lists; `id` optional). Class order: `classes`, else the file's `zoo.classes`, else sorted labels."""
    path = Path(path)
    table = pq.read_table(path)
    missing = sorted({"image", "labels"} - set(table.column_names))
    if missing:
        raise ValueError(
            f"{path}: no column(s) {missing} (columns: {table.column_names}); expected id, image, labels"
        )
    labels = table.column("labels").to_pylist()
    seen = {c for row in labels for c in row or []}
    meta = table.schema.metadata or {}
    file_classes = json.loads(meta[CLASSES_KEY]) if CLASSES_KEY in meta else sorted(seen)
    order, index = _class_index(file_classes, seen, classes, path)
    targets = np.zeros((len(labels), len(order)), dtype=np.uint8)
    for i, row in enumerate(labels):
        for c in row or []:
            targets[i, index[normalize_class_name(c)]] = 1
    ids = (
        table.column("id").to_pylist() if "id" in table.column_names else [str(i) for i in range(len(labels))]
    )
    images = [decode_image(b) for b in table.column("image").to_pylist()]
    return MultilabelSet([str(i) for i in ids], _stack(images), targets, order)


# -------------------------------------------------------------------------------------------- folder
def write_multilabel_folder(
    root: str | Path,
    images: object,
    targets: object,
    classes: Sequence[str],
    ids: Sequence[str] | None = None,
) -> Path:
    """Write `<root>/images/<id>.png` and `<root>/labels.csv` (wide: image, one 0/1 column per class)."""
    targets, classes, ids = _check_set(images, targets, classes, ids)
    bad = [i for i in ids if not i or "/" in i or "\\" in i or i.startswith(".")]
    if bad:
        raise ValueError(f"ids {bad[:4]} cannot be file names; use letters, digits, '-' and '_'")
    root = Path(root)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, image, row in zip(ids, images, targets):
        rel = f"{IMAGES_DIR}/{image_id}.png"
        (root / rel).write_bytes(encode_png(np.asarray(image)))
        rows.append([rel, *(int(v) for v in row)])
    with open(root / LABELS_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *classes])
        writer.writerows(rows)
    return root


def read_multilabel_folder(root: str | Path, classes: Sequence[str] | None = None) -> MultilabelSet:
    """Read `<root>/labels.csv` and the images it names; ids are the image paths without extension."""
    root = Path(root)
    csv_path = root / LABELS_CSV
    if not csv_path.is_file():
        raise ValueError(
            f"{csv_path} not found; a multi-label folder holds {LABELS_CSV} and the images it lists"
        )
    with open(csv_path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    if not header or header[0] != "image" or len(header) < 2:
        raise ValueError(f"{csv_path}: the header must be image,<class 1>,...; got {header[:4]}")
    for i, row in enumerate(rows):
        if len(row) != len(header) or any(v not in ("0", "1") for v in row[1:]):
            raise ValueError(
                f"{csv_path}: row {i + 2} must be an image path and {len(header) - 1} 0/1 values"
            )
    wide = np.asarray([row[1:] for row in rows], dtype=np.uint8).reshape(len(rows), len(header) - 1)
    seen = {c for c, any_positive in zip(header[1:], wide.any(0)) if any_positive}
    order, index = _class_index(header[1:], seen, classes, csv_path)
    # a column outside `classes` is dropped (it has no positive, or _class_index refused it)
    kept = [
        (k, index[normalize_class_name(c)])
        for k, c in enumerate(header[1:])
        if normalize_class_name(c) in index
    ]
    targets = np.zeros((len(rows), len(order)), dtype=np.uint8)
    if kept:
        src, dst = map(list, zip(*kept))
        targets[:, dst] = wide[:, src]
    ids, images = [], []
    inside = root.resolve()
    for row in rows:
        if not (root / row[0]).resolve().is_relative_to(inside):
            raise ValueError(
                f"{csv_path}: image path {row[0]!r} leaves the folder; paths are relative to {root}"
            )
        ids.append(str(Path(row[0]).with_suffix("")).removeprefix(f"{IMAGES_DIR}/"))
        images.append(decode_image((root / row[0]).read_bytes()))
    return MultilabelSet(ids, _stack(images), targets, order)


def read_multilabel(path: str | Path, classes: Sequence[str] | None = None) -> MultilabelSet:
    """A Parquet file, or a folder with labels.csv (see the module text)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".parquet", ".pq"):
        return read_multilabel_parquet(path, classes)
    if (path / LABELS_CSV).is_file():
        return read_multilabel_folder(path, classes)
    raise ValueError(f"{path} is neither a .parquet file nor a folder with {LABELS_CSV}")


# ------------------------------------------------------------------------------------------ mosaics
def write_fashion_mosaics(
    root: str | Path,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    layout: str = "parquet",
    path: str | Path | None = None,
) -> dict[str, Path]:
    """Write the Fashion-MNIST mosaic splits under root: `<split>.parquet` (layout "parquet") or
    `<split>/labels.csv` + images (layout "folder"). sizes: images per split (DEFAULT_SIZES);
    path: the Fashion-MNIST directory (default: zoo.data.find_fashion_mnist)."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown or layout not in ("parquet", "folder"):
        raise ValueError(
            f"splits must be among {SPLITS} (got {unknown}) and layout 'parquet' or 'folder' ({layout!r})"
        )
    out = {}
    for split, n in sizes.items():
        images, targets, classes = fashion_mosaics(split, n, seed, path)
        ids = [f"{split}-{i:06d}" for i in range(n)]
        if layout == "parquet":
            out[split] = write_multilabel_parquet(
                Path(root) / f"{split}.parquet", images, targets, classes, ids
            )
        else:
            out[split] = write_multilabel_folder(Path(root) / split, images, targets, classes, ids)
    return out
