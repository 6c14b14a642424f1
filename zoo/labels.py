"""Label spaces: the union label space L_U of N teachers, the mask M[N, L] and the index maps.

Paper 001 (Sec. 3.1): teacher C_i predicts the classes L_i; the student predicts L_U = U_i L_i. We keep
the union in a stable order (sorted by normalised class name, so it does not depend on the order in
which teachers are listed), the mask M[i, l] = [l in L_i], and for each teacher the position in L_U of
each of its outputs, so per-teacher logits [B, L_i] can be laid out as [B, N, L] for `zoo.unify`.

Class names from different parties are matched after normalisation (case, surrounding and repeated
whitespace, "_" vs space); an optional synonym map merges names that mean the same class.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["LabelSpace", "LabelSpaceError", "build_label_space", "normalize_class_name"]

_WHITESPACE = re.compile(r"\s+")


class LabelSpaceError(ValueError):
    """A teacher's class list cannot form a label space (empty list, empty or duplicate name...)."""


def normalize_class_name(name: str) -> str:
    """The matching key of a class name: casefolded, "_" read as a space, whitespace stripped and
    collapsed to single spaces. "T-shirt_top", " t-shirt  TOP " and "t-shirt top" all give
    "t-shirt top". An empty result is returned as is; callers decide whether that is an error."""
    if not isinstance(name, str):
        raise TypeError(f"class names must be str, got {type(name).__name__} {name!r}")
    return _WHITESPACE.sub(" ", name.casefold().replace("_", " ")).strip()


def _normalize_synonyms(synonyms: Mapping[str, str] | None) -> dict[str, str]:
    """Normalise an alias -> canonical map and resolve chains (a -> b, b -> c gives a -> c)."""
    if not synonyms:
        return {}
    direct: dict[str, str] = {}
    for alias, canonical in synonyms.items():
        a, c = normalize_class_name(alias), normalize_class_name(canonical)
        if not a or not c:
            raise LabelSpaceError(
                f"synonym {alias!r} -> {canonical!r}: a name normalises to empty; remove this entry"
            )
        if a in direct and direct[a] != c:
            raise LabelSpaceError(
                f"synonym {alias!r} is mapped to both {direct[a]!r} and {c!r} after normalisation; keep one"
            )
        if a != c:
            direct[a] = c
    resolved: dict[str, str] = {}
    for alias in direct:
        seen = [alias]
        target = direct[alias]
        while target in direct:
            if target in seen:
                chain = " -> ".join([*seen, target])
                raise LabelSpaceError(f"synonym cycle {chain}; a canonical name must not be an alias")
            seen.append(target)
            target = direct[target]
        resolved[alias] = target
    return resolved


@dataclass(frozen=True)
class LabelSpace:
    """The union label space of N teachers.

    classes: L_U display names, sorted by normalised (canonical) name.
    teachers: teacher names, in the order of the N axis.
    teacher_classes: each teacher's class names in its output order, as given.
    index: index[i][k] = position in L_U of teacher i's output k.
    synonyms: the alias -> canonical map used to build it, aliases normalised, chains resolved,
        canonical names as first spelled in the map.
    """

    classes: tuple[str, ...]
    teachers: tuple[str, ...]
    teacher_classes: tuple[tuple[str, ...], ...]
    index: tuple[tuple[int, ...], ...]
    synonyms: Mapping[str, str] = field(default_factory=dict, hash=False)
    _positions: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_positions", {self.key(c): p for p, c in enumerate(self.classes)})

    @property
    def num_classes(self) -> int:
        """L = |L_U|."""
        return len(self.classes)

    @property
    def num_teachers(self) -> int:
        """N."""
        return len(self.teachers)

    @property
    def mask(self) -> torch.Tensor:
        """M [N, L] bool: M[i, l] is True iff teacher i predicts class l (a fresh tensor each call)."""
        m = torch.zeros(self.num_teachers, self.num_classes, dtype=torch.bool)
        for i, idx in enumerate(self.index):
            m[i, list(idx)] = True
        return m

    def key(self, name: str) -> str:
        """The canonical matching key of a class name (normalised, synonyms applied)."""
        k = normalize_class_name(name)
        return normalize_class_name(self.synonyms[k]) if k in self.synonyms else k

    def index_of(self, name: str) -> int:
        """Position in L_U of a class, by normalised name with synonyms applied; KeyError otherwise."""
        k = self.key(name)
        if k in self._positions:
            return self._positions[k]
        raise KeyError(f"class {name!r} (normalised {k!r}) is not in the label space {list(self.classes)}")

    def teacher_index(self, teacher: str) -> int:
        """Position of a teacher on the N axis; KeyError otherwise."""
        try:
            return self.teachers.index(teacher)
        except ValueError:
            raise KeyError(f"teacher {teacher!r} is not in the label space {list(self.teachers)}") from None

    def to_union(self, teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Lay out per-teacher logits [B, L_i] (in each teacher's output order) as z [B, N, L] over L_U,
        with 0 where M[i, l] is False (those entries must be ignored through the mask downstream).

        Inputs may be tensors or anything `torch.as_tensor` takes; the result has the promoted
        floating dtype of the inputs and the device of the first one.
        """
        if len(teacher_logits) != self.num_teachers:
            raise ValueError(
                f"to_union got logits of {len(teacher_logits)} teachers, the label space has "
                f"{self.num_teachers} ({list(self.teachers)})"
            )
        tensors = [torch.as_tensor(t) for t in teacher_logits]
        batch = None
        for i, t in enumerate(tensors):
            width = len(self.teacher_classes[i])
            if t.dim() != 2 or t.shape[1] != width:
                raise ValueError(
                    f"teacher {self.teachers[i]!r}: logits must have shape [B, {width}] "
                    f"(one column per class {list(self.teacher_classes[i])}), got {tuple(t.shape)}"
                )
            if batch is None:
                batch = t.shape[0]
            elif t.shape[0] != batch:
                raise ValueError(
                    f"teacher {self.teachers[i]!r}: batch size {t.shape[0]} differs from "
                    f"teacher {self.teachers[0]!r}'s {batch}; all teachers must score the same samples"
                )
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        device = tensors[0].device
        out = torch.zeros(batch, self.num_teachers, self.num_classes, dtype=dtype, device=device)
        for i, t in enumerate(tensors):
            idx = torch.tensor(self.index[i], dtype=torch.long, device=device)
            out[:, i, idx] = t.to(device=device, dtype=dtype)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (for Parquet metadata, spec files); `from_dict` inverts it."""
        return {
            "classes": list(self.classes),
            "teachers": list(self.teachers),
            "teacher_classes": [list(c) for c in self.teacher_classes],
            "synonyms": dict(self.synonyms),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSpace:
        """Rebuild from `to_dict` output and check that the stored union matches the rebuilt one."""
        missing = [k for k in ("classes", "teachers", "teacher_classes") if k not in d]
        if missing:
            raise LabelSpaceError(f"label space dict lacks {missing}; expected the output of to_dict()")
        space = build_label_space(d["teacher_classes"], d["teachers"], d.get("synonyms") or None)
        if list(space.classes) != list(d["classes"]):
            raise LabelSpaceError(
                f"stored classes {list(d['classes'])} differ from those rebuilt from teacher_classes "
                f"{list(space.classes)}; the dict was edited or written by an incompatible version"
            )
        return space


def build_label_space(
    teacher_classes: Sequence[Sequence[str]],
    teachers: Sequence[str] | None = None,
    synonyms: Mapping[str, str] | None = None,
) -> LabelSpace:
    """Build the union label space L_U = U_i L_i (paper 001, Sec. 3.1), the mask and index maps.

    teacher_classes[i] is teacher i's class names in its output order. teachers defaults to
    "teacher_0", "teacher_1", ... . synonyms maps alias -> canonical name (both normalised before
    use). A union class's display name is the first spelling seen in teacher order; for a class
    reached through a synonym it is the first teacher spelling of the canonical name itself, or
    the canonical name as written in the synonym map when no teacher spells it.

    Raises LabelSpaceError (a ValueError) naming the teacher and the class for: an empty class
    list, a name that normalises to empty, two names of one teacher that are equal after
    normalisation and synonyms.
    """
    if isinstance(teacher_classes, str | bytes) or not isinstance(teacher_classes, Sequence):
        raise LabelSpaceError("teacher_classes must be a list of class-name lists, one per teacher")
    n = len(teacher_classes)
    if n == 0:
        raise LabelSpaceError("no teachers: teacher_classes is empty; give at least one class list")
    if teachers is None:
        teachers = [f"teacher_{i}" for i in range(n)]
    teachers = [str(t) for t in teachers]
    if len(teachers) != n:
        raise LabelSpaceError(f"got {len(teachers)} teacher names for {n} class lists; give one name each")
    dup_teachers = sorted({t for t in teachers if teachers.count(t) > 1})
    if dup_teachers:
        raise LabelSpaceError(f"teacher names must be unique, repeated: {dup_teachers}")

    syn = _normalize_synonyms(synonyms)
    canonical_spelling: dict[str, str] = {}  # canonical key -> its first spelling in the synonym map
    for canonical in (synonyms or {}).values():
        c = normalize_class_name(canonical)
        if c not in syn:  # an intermediate name of a chain is not the canonical spelling
            canonical_spelling.setdefault(c, " ".join(canonical.split()))

    display: dict[str, str] = {}  # key -> display name
    exact: set[str] = set()  # keys whose display name is a teacher's spelling of the key itself
    keys_per_teacher: list[list[str]] = []
    for name, classes in zip(teachers, teacher_classes):
        if isinstance(classes, str | bytes) or not isinstance(classes, Sequence):
            raise LabelSpaceError(f"teacher {name!r}: classes must be a list of names, got {classes!r}")
        if len(classes) == 0:
            raise LabelSpaceError(f"teacher {name!r} has an empty class list; a teacher predicts >= 1 class")
        seen: dict[str, str] = {}
        keys: list[str] = []
        for cls in classes:
            if not isinstance(cls, str):
                raise LabelSpaceError(f"teacher {name!r}: class {cls!r} is not a string")
            norm = normalize_class_name(cls)
            if not norm:
                raise LabelSpaceError(f"teacher {name!r}: class {cls!r} normalises to an empty name")
            key = syn.get(norm, norm)
            if key in seen:
                same_norm = normalize_class_name(seen[key]) == norm
                how = "after normalisation" if same_norm else f"after normalisation and synonyms ({key!r})"
                raise LabelSpaceError(
                    f"teacher {name!r}: classes {seen[key]!r} and {cls!r} are the same class {how}; "
                    "each output of a teacher must be a distinct class"
                )
            seen[key] = cls
            keys.append(key)
            if key == norm and key not in exact:
                display[key] = cls
                exact.add(key)
            elif key not in display:
                display[key] = canonical_spelling.get(key, cls)
        keys_per_teacher.append(keys)

    ordered = sorted(display)
    position = {k: p for p, k in enumerate(ordered)}
    return LabelSpace(
        classes=tuple(display[k] for k in ordered),
        teachers=tuple(teachers),
        teacher_classes=tuple(tuple(c) for c in teacher_classes),
        index=tuple(tuple(position[k] for k in keys) for keys in keys_per_teacher),
        synonyms={alias: canonical_spelling[target] for alias, target in sorted(syn.items())},
    )
