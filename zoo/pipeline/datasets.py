"""Labelled image sets and the demo zoo's data: what the jobs evaluate, validate and train on.

- `LabelledSet`: images with labels that index a list of classes (an evaluation/test set, a
  validation set, a task's training set), with the fingerprint that makes two students comparable.
- `read_labelled_folder(path, space)`: a labelled ImageFolder over a label space's classes.
- `Dataset`, `load_dataset`, `dataset_for_split`: the labelled data a demo split indexes
  (Fashion-MNIST, or the synthetic stand-in); `demo_set(split, space, "eval" | "val")` and
  `transfer_arrays(split, ds)` are the split's views the jobs use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.artifacts import InputSpec
from zoo.data import (
    FASHION_MNIST_CLASSES,
    ImageDecodeError,
    load_fashion_mnist,
    read_image,
    read_image_folder,
    synthetic_class_names,
    synthetic_images,
)
from zoo.demo import DemoSplit
from zoo.labels import LabelSpace
from zoo.pipeline import JobError

__all__ = [
    "Dataset",
    "LabelledSet",
    "LabelledSetError",
    "dataset_for_split",
    "demo_set",
    "input_spec_for",
    "load_dataset",
    "read_labelled_folder",
    "transfer_arrays",
]

# Sizes of the synthetic stand-in for Fashion-MNIST (--synthetic): 10 classes of 16x16 patterns.
SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_SIZE = 12000, 2000, 16


class LabelledSetError(JobError):
    """A labelled set cannot be read or does not fit the label space; the message says what to fix."""


@dataclass
class LabelledSet:
    """Images (uint8 [B, H, W(, C)] or a list of such arrays, any sizes) and labels int64 [B],
    indices into the classes of the job's label space; ``source`` says where they came from."""

    images: Any
    labels: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"a labelled set has {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, sel: np.ndarray) -> LabelledSet:
        """The samples at indices (or where the boolean mask) ``sel``."""
        sel = np.flatnonzero(sel) if np.asarray(sel).dtype == bool else np.asarray(sel, dtype=np.int64)
        images = self.images[sel] if isinstance(self.images, np.ndarray) else [self.images[i] for i in sel]
        return LabelledSet(images, self.labels[sel], self.source)

    def fingerprint(self) -> str:
        """sha256 of the pixels and labels: two students are comparable only on the same fingerprint."""
        h = hashlib.sha256()
        for img in self.images:
            a = np.ascontiguousarray(img)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()


def read_labelled_folder(
    path: str | Path,
    space: LabelSpace,
    flag: str = "--eval",
    *,
    skip_unknown: bool = False,
    log: Callable[[str], None] = print,
) -> LabelledSet:
    """A labelled ImageFolder (`path/<class>/**/<image>`) over ``space``'s classes, labels as indices
    into them. A class directory outside the label space is an error naming ``flag``, or with
    ``skip_unknown`` is left out and listed in the log (an evaluation folder of more classes than a
    chosen subset of teachers knows). Undecodable images are an error naming the first few."""
    try:
        paths, labels, classes = read_image_folder(path)
    except (NotADirectoryError, ValueError) as e:
        raise LabelledSetError(f"{flag} {path}: {e}") from None
    index = {}
    for k, c in enumerate(classes):
        try:
            index[k] = space.index_of(c)
        except KeyError:
            pass
    unknown = [c for k, c in enumerate(classes) if k not in index]
    if unknown and not skip_unknown:
        raise LabelledSetError(
            f"{flag} {path}: classes {unknown} are not in the teachers' union label space "
            f"{list(space.classes)}; remove those class directories, rename them, or add a synonym "
            "(config key synonyms)"
        )
    if unknown:
        log(f"[eval] {flag} {path}: classes {unknown} are not in the union label space: left out")
    keep = [i for i, lab in enumerate(labels) if int(lab) in index]
    if not keep:
        raise LabelledSetError(f"{flag} {path}: no image of the union classes {list(space.classes)}")
    images, bad = [], []
    for i in keep:
        try:
            images.append(read_image(paths[i]))
        except (ImageDecodeError, OSError) as e:
            bad.append(f"{paths[i]}: {e}")
    if bad:
        raise LabelledSetError(
            f"{flag} {path}: {len(bad)} images cannot be decoded, first: {bad[:3]}; fix or remove them"
        )
    table = np.array([index.get(k, -1) for k in range(len(classes))], dtype=np.int64)
    return LabelledSet(images, table[labels[keep]], f"ImageFolder {path}")


# ------------------------------------------------------------------------------------ demo data
@dataclass(frozen=True)
class Dataset:
    """A labelled data set with a train and a test split (uint8 images, int64 labels)."""

    name: str
    images_train: np.ndarray
    labels_train: np.ndarray
    images_test: np.ndarray
    labels_test: np.ndarray
    class_names: tuple[str, ...]


def load_dataset(data: str | Path | None = None, synthetic: bool = False, download: bool = False) -> Dataset:
    """Fashion-MNIST (from ``data``, or where `zoo.data.find_fashion_mnist` looks), or with
    ``synthetic=True`` the synthetic stand-in (10 classes, 16x16; for tests and machines without it)."""
    if synthetic:
        xtr, ytr = synthetic_images(SYNTHETIC_TRAIN, 10, size=SYNTHETIC_SIZE, seed=0)
        xte, yte = synthetic_images(SYNTHETIC_TEST, 10, size=SYNTHETIC_SIZE, seed=1)
        return Dataset("synthetic", xtr, ytr, xte, yte, synthetic_class_names(10))
    xtr, ytr = load_fashion_mnist("train", data, download=download)
    xte, yte = load_fashion_mnist("test", data, download=download)
    return Dataset("fashion-mnist", xtr, ytr, xte, yte, FASHION_MNIST_CLASSES)


_LOADED: dict[str, Dataset] = {}  # one data set kept: a job reads its split's data several times


def dataset_for_split(split: DemoSplit, data: str | Path | None = None, download: bool = False) -> Dataset:
    """The data set a split was drawn from (Fashion-MNIST or the synthetic one), checked against the
    split's label fingerprint: with it, the split's views (teacher data, SPV, transfer, validation and
    evaluation sets) are exactly those of the build. The last one loaded is kept in memory."""
    key = f"{split.dataset}:{data}"
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_dataset(data, synthetic=split.dataset == "synthetic", download=download)
    ds = _LOADED[key]
    split.check_labels(ds.labels_train, ds.labels_test)
    return ds


def transfer_arrays(split: DemoSplit, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """The transfer set of a demo split as (images uint8 [B, H, W], ids ``train-<index>``), the form
    `zoo.pipeline.transfer.materialize_transfer_set` takes."""
    return split.transfer_images(ds.images_train), [f"train-{i}" for i in split.transfer_indices]


def demo_set(split: DemoSplit, space: LabelSpace, which: str = "eval") -> LabelledSet | None:
    """The demo split's evaluation set ("eval": test images of the union classes, the final report
    only) or validation set ("val": training images no teacher and no transfer image uses; None for a
    split saved before it had one), over the classes of ``space`` that the split knows (all of them
    unless a subset of the demo teachers was picked)."""
    if which not in ("eval", "val"):
        raise ValueError(f"which must be 'eval' or 'val', got {which!r}")
    if which == "val" and not split.has_validation:
        return None
    ds = dataset_for_split(split)
    if which == "eval":
        images, labels = split.eval_set(ds.images_test, ds.labels_test, classes=split.union_classes)
    else:
        images, labels = split.val_set(ds.images_train, ds.labels_train, classes=split.union_classes)
    remap = np.array([_index_or(space, c) for c in split.union_classes], dtype=np.int64)
    what = "test images" if which == "eval" else "validation images"
    sel = remap[labels] >= 0
    return LabelledSet(images[sel], remap[labels[sel]], f"demo split of {split.zoo or 'the zoo'} ({what})")


def _index_or(space: LabelSpace, name: str, missing: int = -1) -> int:
    try:
        return space.index_of(name)
    except KeyError:
        return missing


def input_spec_for(images: np.ndarray) -> InputSpec:
    """The input contract of a data set's models (an InputSpec): its size and channels, normalised
    with the mean and standard deviation of ``images`` (the training split)."""
    x = images.astype(np.float32) / 255.0
    if images.ndim == 3:
        return InputSpec(1, images.shape[1], images.shape[2], (float(x.mean()),), (float(x.std()),))
    axes: Sequence[int] = (0, 1, 2)
    return InputSpec(
        images.shape[3],
        images.shape[1],
        images.shape[2],
        tuple(map(float, x.mean(axes))),
        tuple(map(float, x.std(axes))),
    )
