"""Paper 001's teacher protocol (Sec. 4.1.1, Table 1) as a seeded, pure split of a labelled data set.

One trial of the protocol:
- the union L_U: ``n_union_classes`` classes drawn at random from the data set's classes;
- N teachers; in the "random" configuration each classifies a random subset of L_U of
  ``classes_per_teacher`` classes (every class of L_U covered by at least one teacher), in the
  "complete" (completely overlapping) configuration every teacher classifies all of L_U;
- each teacher trains on ``images_per_class`` images per class (paper: 50 to 200) from the training
  split; no image is shared between teachers;
- the transfer set U: ``transfer_size`` training images that no teacher uses, from *all* the data
  set's classes (so that, as in the paper, much of U lies outside L_U);
- the validation set: ``val_size`` labelled training images of L_U's classes that neither the
  teachers nor the transfer set use (for choosing the method, mode, T and lr; never the test images);
- each teacher's held-out slice: ``holdout_per_class`` labelled training images per class of its
  classes, used by nobody else: its owner's own validation data, on which the owner fits the
  calibration it ships with the model (`zoo.unify.calibration.fit_calibration`);
- the evaluation set: the test split restricted to the classes of L_U (the final report only).

The split holds indices only (into the training and the test split), plus a fingerprint of the label
arrays it was drawn from, so SPV (supervised on the union of the teachers' data) and every evaluation
can be recomputed exactly from it. ``split.json`` is ``DemoSplit.to_json()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from zoo.labels import normalize_class_name

OVERLAP_MODES = ("random", "complete")
# The paper's range of training images per class per teacher (Sec. 4.1.1).
IMAGES_PER_CLASS_RANGE = (50, 200)
SPLIT_FORMAT = 1

# Heterogeneous, and fast enough on 2 CPU cores at 28x28 that the demo zoo builds in a few minutes:
# CNNs of three widths and MLPs of two sizes. The torchvision models of the allow-list train 10-40x
# slower per step at 28x28 (stride-1 stems) and make every later inference pass over the transfer
# set as slow: pass them with --archs where there is time (or a GPU).
DEFAULT_ARCHS: tuple[str, ...] = (
    "cnn",
    "cnn:width=8",
    "cnn:width=24",
    "mlp",
    "mlp:hidden=128:layers=1",
)


def parse_arch(spec: str) -> tuple[str, dict[str, Any]]:
    """``"cnn:width=32:depth=2"`` -> ``("cnn", {"width": 32, "depth": 2})``. Values are read as JSON
    (numbers, true/false) and otherwise kept as strings."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"architecture spec must be a non-empty string like 'cnn:width=32', got {spec!r}")
    arch, *parts = spec.strip().split(":")
    kwargs: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ValueError(f"bad architecture spec {spec!r}: write name:key=value:key=value")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return arch, kwargs


def _range(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{name} must be an int or a (low, high) pair of ints, got {value!r}")
    lo, hi = int(value[0]), int(value[1])
    if lo > hi:
        raise ValueError(f"{name}: low {lo} > high {hi}")
    return lo, hi


@dataclass(frozen=True)
class DemoConfig:
    """One trial of paper 001's protocol, plus how its teachers are trained.

    ``archs``: the pool teachers' architectures are drawn from, as ``name[:key=value...]`` specs of
    :mod:`zoo.architectures` (each teacher draws one; the pool is cycled in a random order so that N
    teachers use min(N, pool) different ones). ``transfer_size=None`` takes every image that neither a
    teacher nor the validation set (``val_size`` images) uses.
    """

    seed: int = 0
    n_union_classes: int = 8
    n_teachers: int = 5
    classes_per_teacher: tuple[int, int] = (3, 5)
    images_per_class: tuple[int, int] = (100, 100)
    transfer_size: int | None = 20000
    val_size: int = 2000  # labelled validation images of L_U's classes (0: none)
    holdout_per_class: int = 20  # each teacher owner's held-out images per class of its classes (0: none)
    overlap: str = "random"
    archs: tuple[str, ...] = DEFAULT_ARCHS
    # Teacher training (zoo.train.fit_classifier).
    epochs: int = 15
    lr: float = 3e-3
    batch_size: int = 32
    optimizer: str = "adam"
    augment: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "classes_per_teacher", _range("classes_per_teacher", self.classes_per_teacher)
        )
        object.__setattr__(self, "images_per_class", _range("images_per_class", self.images_per_class))
        archs = (self.archs,) if isinstance(self.archs, str) else tuple(self.archs)
        object.__setattr__(self, "archs", archs)
        for name in ("seed", "n_union_classes", "n_teachers", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if self.n_union_classes < 2:
            raise ValueError(f"n_union_classes must be >= 2, got {self.n_union_classes}")
        if self.n_teachers < 1:
            raise ValueError(f"n_teachers must be >= 1, got {self.n_teachers}")
        lo, hi = self.classes_per_teacher
        if lo < 2:
            raise ValueError(f"classes_per_teacher must be >= 2 (a teacher classifies), got {lo}")
        if (
            self.overlap == "random"
            and self.n_teachers * min(hi, self.n_union_classes) < self.n_union_classes
        ):
            raise ValueError(
                f"{self.n_teachers} teachers of at most {hi} classes cannot cover {self.n_union_classes} "
                "union classes: add teachers, allow more classes per teacher or shrink the union"
            )
        lo, hi = self.images_per_class
        plo, phi = IMAGES_PER_CLASS_RANGE
        if lo < plo or hi > phi:
            raise ValueError(f"images_per_class must lie in the paper's range {plo}-{phi}, got {lo}-{hi}")
        if self.transfer_size is not None and (
            isinstance(self.transfer_size, bool) or self.transfer_size < 0
        ):
            raise ValueError(
                f"transfer_size must be >= 0 or None (all unused images), got {self.transfer_size}"
            )
        if (
            isinstance(self.val_size, bool)
            or not isinstance(self.val_size, (int, np.integer))
            or self.val_size < 0
        ):
            raise ValueError(f"val_size must be an int >= 0 (0: no validation set), got {self.val_size!r}")
        h = self.holdout_per_class
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 0:
            raise ValueError(f"holdout_per_class must be an int >= 0 (0: no held-out slices), got {h!r}")
        if self.overlap not in OVERLAP_MODES:
            raise ValueError(f"overlap must be one of {OVERLAP_MODES}, got {self.overlap!r}")
        if not archs:
            raise ValueError("archs: give at least one architecture")
        for spec in archs:
            parse_arch(spec)
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(
                f"need epochs >= 1, batch_size >= 1, lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes_per_teacher"] = list(self.classes_per_teacher)
        d["images_per_class"] = list(self.images_per_class)
        d["archs"] = list(self.archs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DemoConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DemoConfig fields {unknown}; known: {sorted(known)}")
        d = dict(d)
        for k in ("classes_per_teacher", "images_per_class", "archs"):
            if k in d and isinstance(d[k], list):
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class TeacherSplit:
    """One teacher: its classes (names, in output order), their labels in the data set, its
    architecture, the indices of its training images in the training split, and those of its owner's
    held-out slice (empty in splits saved before it existed)."""

    classes: tuple[str, ...]
    labels: tuple[int, ...]
    arch: str
    arch_kwargs: Mapping[str, Any]
    train_indices: tuple[int, ...]
    holdout_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class DemoSplit:
    """The split of one demo zoo (see the module docstring). ``union_classes`` are in the label
    space's order (sorted by normalised name, as ``zoo.labels.build_label_space`` orders L_U)."""

    dataset: str
    class_names: tuple[str, ...]
    union_labels: tuple[int, ...]
    union_classes: tuple[str, ...]
    teachers: tuple[TeacherSplit, ...]
    transfer_indices: tuple[int, ...]
    eval_indices: tuple[int, ...]
    config: Mapping[str, Any]
    fingerprint: Mapping[str, Any]
    zoo: str = ""
    format: int = SPLIT_FORMAT
    # Labelled validation images (training split, L_U's classes). Empty in splits saved before the
    # validation set existed: they load as they were, without one.
    val_indices: tuple[int, ...] = ()

    @property
    def has_validation(self) -> bool:
        return len(self.val_indices) > 0

    @property
    def has_holdout(self) -> bool:
        """Every teacher has its owner's held-out slice (splits saved before it existed have none)."""
        return all(len(t.holdout_indices) > 0 for t in self.teachers)

    # ------------------------------------------------------------------ data views
    def check_labels(self, labels_train: np.ndarray, labels_test: np.ndarray) -> None:
        """Raise ValueError unless the label arrays are the ones the split was drawn from."""
        got = labels_fingerprint(labels_train, labels_test)
        if got != dict(self.fingerprint):
            raise ValueError(
                f"the split of {self.zoo or 'this zoo'} was drawn from {self.dataset} with labels "
                f"{dict(self.fingerprint)}, the data given has {got}: load the same data set "
                "(same path, or --synthetic with the same sizes)"
            )

    def teacher_data(self, i: int, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Teacher i's training images and its labels as indices into its own classes."""
        t = self.teachers[i]
        idx = np.asarray(t.train_indices, dtype=np.int64)
        return images[idx], _remap(labels[idx], t.labels)

    def teacher_holdout(
        self, i: int, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Teacher i's held-out slice (training split; its owner's labelled validation images) and its
        labels as indices into its own classes. Empty when the split has none."""
        t = self.teachers[i]
        idx = np.asarray(t.holdout_indices, dtype=np.int64)
        return images[idx], _remap(labels[idx], t.labels)

    def teacher_eval(
        self, i: int, images_test: np.ndarray, labels_test: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The test images of teacher i's classes, labels as indices into its own classes (the
        teacher's accuracy on its own classes)."""
        t = self.teachers[i]
        idx = np.flatnonzero(np.isin(labels_test, t.labels))
        return images_test[idx], _remap(labels_test[idx], t.labels)

    def spv_indices(self) -> np.ndarray:
        """Training indices of SPV: the union of all teachers' training data (sorted)."""
        return np.unique(np.concatenate([np.asarray(t.train_indices, dtype=np.int64) for t in self.teachers]))

    def spv_data(
        self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """SPV's training set: the union of the teachers' data, labels as indices into ``classes``
        (default ``union_classes``)."""
        idx = self.spv_indices()
        return images[idx], self._to_classes(labels[idx], classes)

    def transfer_images(self, images: np.ndarray) -> np.ndarray:
        """The transfer set U (unlabelled: its labels are not for the student)."""
        return images[np.asarray(self.transfer_indices, dtype=np.int64)]

    def eval_set(
        self, images_test: np.ndarray, labels_test: np.ndarray, classes: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The labelled evaluation set (test images of L_U), labels as indices into ``classes``
        (default ``union_classes``; any order of the same names, matched by normalised name)."""
        idx = np.asarray(self.eval_indices, dtype=np.int64)
        return images_test[idx], self._to_classes(labels_test[idx], classes)

    def val_set(
        self, images_train: np.ndarray, labels_train: np.ndarray, classes: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The labelled validation set (training images of L_U no teacher and no transfer image uses),
        labels as indices into ``classes`` (default ``union_classes``). Empty when the split has none."""
        idx = np.asarray(self.val_indices, dtype=np.int64)
        return images_train[idx], self._to_classes(labels_train[idx], classes)

    def _to_classes(self, labels: np.ndarray, classes: Sequence[str] | None) -> np.ndarray:
        classes = self.union_classes if classes is None else tuple(classes)
        pos = {normalize_class_name(c): k for k, c in enumerate(classes)}
        table = np.full(len(self.class_names), -1, dtype=np.int64)
        for lab in self.union_labels:
            key = normalize_class_name(self.class_names[lab])
            if key not in pos:
                raise ValueError(f"class {self.class_names[lab]!r} of the union is not among {list(classes)}")
            table[lab] = pos[key]
        out = table[labels]
        if (out < 0).any():
            raise ValueError("labels outside the union classes")
        return out

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "zoo": self.zoo,
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "union_labels": list(self.union_labels),
            "union_classes": list(self.union_classes),
            "teachers": [
                {
                    "classes": list(t.classes),
                    "labels": list(t.labels),
                    "arch": t.arch,
                    "arch_kwargs": dict(t.arch_kwargs),
                    "train_indices": list(t.train_indices),
                    **({"holdout_indices": list(t.holdout_indices)} if t.holdout_indices else {}),
                }
                for t in self.teachers
            ],
            "transfer_indices": list(self.transfer_indices),
            "eval_indices": list(self.eval_indices),
            # Only when present: a split without one keeps the dict (and every fingerprint of it) it had.
            **({"val_indices": list(self.val_indices)} if self.val_indices else {}),
            "config": dict(self.config),
            "fingerprint": dict(self.fingerprint),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DemoSplit:
        try:
            if d.get("format") != SPLIT_FORMAT:
                raise ValueError(
                    f"unsupported split format {d.get('format')!r} (this code reads {SPLIT_FORMAT})"
                )
            teachers = tuple(
                TeacherSplit(
                    classes=tuple(t["classes"]),
                    labels=tuple(int(v) for v in t["labels"]),
                    arch=str(t["arch"]),
                    arch_kwargs=dict(t["arch_kwargs"]),
                    train_indices=tuple(int(v) for v in t["train_indices"]),
                    holdout_indices=tuple(int(v) for v in t.get("holdout_indices", ())),
                )
                for t in d["teachers"]
            )
            split = cls(
                dataset=str(d["dataset"]),
                class_names=tuple(d["class_names"]),
                union_labels=tuple(int(v) for v in d["union_labels"]),
                union_classes=tuple(d["union_classes"]),
                teachers=teachers,
                transfer_indices=tuple(int(v) for v in d["transfer_indices"]),
                eval_indices=tuple(int(v) for v in d["eval_indices"]),
                config=dict(d["config"]),
                fingerprint=dict(d["fingerprint"]),
                zoo=str(d.get("zoo", "")),
                val_indices=tuple(int(v) for v in d.get("val_indices", ())),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a demo split: {e!r}") from e
        split.validate()
        return split

    @classmethod
    def from_json(cls, text: str | bytes) -> DemoSplit:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"split.json is not JSON: {e}") from e
        if not isinstance(d, dict):
            raise ValueError("split.json must hold a JSON object")
        return cls.from_dict(d)

    def validate(self) -> None:
        """The protocol's invariants; raises ValueError naming the broken one."""
        union = set(self.union_labels)
        if len(union) != len(self.union_labels) or not union <= set(range(len(self.class_names))):
            raise ValueError("split: union labels must be distinct labels of the data set")
        if sorted(self.union_classes, key=normalize_class_name) != list(self.union_classes) or sorted(
            self.union_classes
        ) != sorted(self.class_names[lab] for lab in self.union_labels):
            raise ValueError("split: union_classes must be the union labels' names, in label-space order")
        covered: set[int] = set()
        seen: set[int] = set()
        for i, t in enumerate(self.teachers):
            if not set(t.labels) <= union or len(set(t.labels)) != len(t.labels):
                raise ValueError(f"split: teacher {i} has classes outside the union or repeated")
            if tuple(self.class_names[lab] for lab in t.labels) != t.classes:
                raise ValueError(f"split: teacher {i}'s class names do not match its labels")
            covered |= set(t.labels)
            idx = set(t.train_indices)
            if len(idx) != len(t.train_indices) or idx & seen:
                raise ValueError(f"split: teacher {i} shares training images with another teacher")
            seen |= idx
        if covered != union:
            raise ValueError(f"split: union classes {sorted(union - covered)} are covered by no teacher")
        if set(self.transfer_indices) & seen:
            raise ValueError("split: the transfer set shares images with a teacher's training data")
        val = set(self.val_indices)
        if len(val) != len(self.val_indices):
            raise ValueError("split: the validation set repeats images")
        if val & seen or val & set(self.transfer_indices):
            raise ValueError("split: the validation set shares images with a teacher or the transfer set")
        taken = seen | val | set(self.transfer_indices)
        for i, t in enumerate(self.teachers):
            held = set(t.holdout_indices)
            if len(held) != len(t.holdout_indices) or held & taken:
                raise ValueError(f"split: teacher {i}'s held-out slice repeats or shares images")
            taken |= held


def labels_fingerprint(labels_train: np.ndarray, labels_test: np.ndarray) -> dict[str, Any]:
    """Sizes and SHA-256 of the label arrays (int64) a split is drawn from."""

    def sha(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()

    return {
        "n_train": int(len(labels_train)),
        "n_test": int(len(labels_test)),
        "train_labels_sha256": sha(labels_train),
        "test_labels_sha256": sha(labels_test),
    }


def _remap(labels: np.ndarray, order: Sequence[int]) -> np.ndarray:
    table = np.full(int(max(max(order), labels.max(initial=0))) + 1, -1, dtype=np.int64)
    table[list(order)] = np.arange(len(order))
    return table[labels]


def _teacher_classes(rng: np.random.Generator, union: np.ndarray, cfg: DemoConfig) -> list[np.ndarray]:
    """Each teacher's labels (random configuration): sizes drawn in ``classes_per_teacher``, every
    union class given first to a teacher with room left (so the union is covered), the remaining
    room filled with random other union classes."""
    n, u = cfg.n_teachers, len(union)
    lo, hi = (min(v, u) for v in cfg.classes_per_teacher)
    sizes = rng.integers(lo, hi + 1, size=n)
    while sizes.sum() < u:  # not enough room to cover the union: grow random teachers (within hi)
        sizes[rng.choice(np.flatnonzero(sizes < hi))] += 1
    assigned: list[list[int]] = [[] for _ in range(n)]
    for c in rng.permutation(union):
        room = sizes - np.array([len(a) for a in assigned])
        assigned[rng.choice(n, p=room / room.sum())].append(int(c))
    out = []
    for i in range(n):
        rest = np.setdiff1d(union, assigned[i])
        extra = rng.choice(rest, size=sizes[i] - len(assigned[i]), replace=False)
        out.append(np.sort(np.concatenate([np.asarray(assigned[i], dtype=np.int64), extra.astype(np.int64)])))
    return out


def _draw_holdouts(
    free: np.ndarray,
    labels_train: np.ndarray,
    union: np.ndarray,
    teacher_labels: Sequence[np.ndarray],
    cfg: DemoConfig,
) -> list[np.ndarray]:
    """Each teacher's held-out slice: ``holdout_per_class`` images per class of its classes from
    ``free`` (images nobody else uses), none shared between teachers. Its own stream, seeded
    [seed, 7], so that the slices are the ones `benchmarks/reproduce_uhc.py` drew before they were
    part of the split."""
    per = cfg.holdout_per_class
    if per == 0:
        return [np.zeros(0, dtype=np.int64) for _ in teacher_labels]
    rng = np.random.default_rng([int(cfg.seed), 7])
    pools = {int(c): rng.permutation(free[labels_train[free] == c]) for c in union}
    taken = dict.fromkeys(pools, 0)
    out = []
    for labs in teacher_labels:
        parts = []
        for c in labs.tolist():
            if taken[c] + per > len(pools[c]):
                raise ValueError(
                    f"holdout_per_class={per}: class {c} has only {len(pools[c])} images left after the "
                    "teachers, the transfer and the validation set: lower it or transfer_size"
                )
            parts.append(pools[c][taken[c] : taken[c] + per])
            taken[c] += per
        out.append(np.sort(np.concatenate(parts)).astype(np.int64))
    return out


def make_split(
    cfg: DemoConfig,
    labels_train: np.ndarray,
    labels_test: np.ndarray,
    class_names: Sequence[str],
    dataset: str = "fashion-mnist",
) -> DemoSplit:
    """Draw one trial of paper 001's protocol (Sec. 4.1.1) from the label arrays of a data set.

    Pure and seeded by ``cfg.seed``: the same arguments give the same split. Each random choice
    (union and teachers' classes, architectures, images, transfer set) has its own stream, so that
    changing one setting does not reshuffle the others. Raises ValueError when the data set has too
    few classes or images for the configuration.
    """
    labels_train = np.asarray(labels_train, dtype=np.int64)
    labels_test = np.asarray(labels_test, dtype=np.int64)
    class_names = tuple(class_names)
    k = len(class_names)
    if labels_train.ndim != 1 or labels_test.ndim != 1:
        raise ValueError("labels_train and labels_test must be 1-D label arrays")
    for name, lab in (("labels_train", labels_train), ("labels_test", labels_test)):
        if len(lab) and (lab.min() < 0 or lab.max() >= k):
            raise ValueError(f"{name} holds labels outside 0..{k - 1} ({k} class names given)")
    if cfg.n_union_classes > k:
        raise ValueError(f"n_union_classes={cfg.n_union_classes} but the data set has only {k} classes")
    # spawn(6)'s first five children are spawn(5)'s: the validation stream leaves the others unchanged.
    r_union, r_classes, r_arch, r_images, r_transfer, r_val = (
        np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(6)
    )
    union = np.sort(r_union.choice(k, size=cfg.n_union_classes, replace=False)).astype(np.int64)
    if cfg.overlap == "complete":
        teacher_labels = [union.copy() for _ in range(cfg.n_teachers)]
    else:
        teacher_labels = _teacher_classes(r_classes, union, cfg)
    order = r_arch.permutation(len(cfg.archs))
    archs = [parse_arch(cfg.archs[order[i % len(order)]]) for i in range(cfg.n_teachers)]

    # Images: per class, one random permutation of its training images, dealt out in consecutive
    # chunks, so no image goes to two teachers.
    lo, hi = cfg.images_per_class
    counts = [r_images.integers(lo, hi + 1, size=len(t)) for t in teacher_labels]
    pools = {int(c): r_images.permutation(np.flatnonzero(labels_train == c)) for c in union}
    taken = dict.fromkeys(pools, 0)
    train_indices: list[np.ndarray] = []
    for labs, cnts in zip(teacher_labels, counts):
        parts = []
        for c, n in zip(labs.tolist(), cnts.tolist()):
            if taken[c] + n > len(pools[c]):
                raise ValueError(
                    f"class {class_names[c]!r} has {len(pools[c])} training images, the teachers need more: "
                    "lower images_per_class or the number of teachers"
                )
            parts.append(pools[c][taken[c] : taken[c] + n])
            taken[c] += n
        train_indices.append(np.sort(np.concatenate(parts)))

    used = np.concatenate(train_indices)
    free = np.setdiff1d(np.arange(len(labels_train)), used)

    def draw_val(pool: np.ndarray) -> np.ndarray:
        cands = pool[np.isin(labels_train[pool], union)]
        if cfg.val_size > len(cands):
            raise ValueError(
                f"val_size={cfg.val_size} but only {len(cands)} training images of the union classes are "
                "left after the teachers' data and the transfer set: lower val_size or transfer_size"
            )
        return np.sort(r_val.choice(cands, size=cfg.val_size, replace=False))

    if cfg.transfer_size is None:  # the transfer set takes every unused image but the held-out ones
        val = draw_val(free)
        holdouts = _draw_holdouts(np.setdiff1d(free, val), labels_train, union, teacher_labels, cfg)
        transfer = np.setdiff1d(free, np.concatenate([val, *holdouts]))
    else:  # the transfer set is drawn as before the validation set existed, which takes from the rest
        size = cfg.transfer_size
        if size > len(free):
            raise ValueError(
                f"transfer_size={size} but only {len(free)} training images are left after the teachers' "
                "data: lower transfer_size (or pass None for all of them)"
            )
        transfer = np.sort(r_transfer.choice(free, size=size, replace=False))
        val = draw_val(np.setdiff1d(free, transfer))
        holdouts = _draw_holdouts(
            np.setdiff1d(free, np.concatenate([transfer, val])), labels_train, union, teacher_labels, cfg
        )
    eval_indices = np.flatnonzero(np.isin(labels_test, union))

    split = DemoSplit(
        dataset=dataset,
        class_names=class_names,
        union_labels=tuple(union.tolist()),
        union_classes=tuple(sorted((class_names[c] for c in union), key=normalize_class_name)),
        teachers=tuple(
            TeacherSplit(
                classes=tuple(class_names[c] for c in labs),
                labels=tuple(labs.tolist()),
                arch=arch,
                arch_kwargs=kwargs,
                train_indices=tuple(idx.tolist()),
                holdout_indices=tuple(held.tolist()),
            )
            for labs, (arch, kwargs), idx, held in zip(teacher_labels, archs, train_indices, holdouts)
        ),
        transfer_indices=tuple(transfer.tolist()),
        eval_indices=tuple(eval_indices.tolist()),
        config=cfg.to_dict(),
        fingerprint=labels_fingerprint(labels_train, labels_test),
        val_indices=tuple(val.tolist()),
    )
    split.validate()
    return split


def with_zoo(split: DemoSplit, zoo: str) -> DemoSplit:
    """The split, named after its zoo."""
    return replace(split, zoo=zoo)


def save_split(split: DemoSplit, path: str | Path) -> Path:
    """Write ``split.json`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(split.to_json())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_split(path: str | Path) -> DemoSplit:
    """Read a ``split.json`` written by save_split (validated)."""
    return DemoSplit.from_json(Path(path).read_text())


__all__ = [
    "DEFAULT_ARCHS",
    "OVERLAP_MODES",
    "DemoConfig",
    "DemoSplit",
    "TeacherSplit",
    "labels_fingerprint",
    "load_split",
    "make_split",
    "parse_arch",
    "save_split",
    "with_zoo",
]
