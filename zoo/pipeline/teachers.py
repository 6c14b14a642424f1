"""The teachers of a job, resolved in the zoo (the MLflow registry) and fetched, checked before any compute.

    teachers = resolve_teachers(registry, names=["a", "b:3", "c@champion"])   # or tags=, or zoo=
    space = label_space(teachers, synonyms)

A teacher is a registered model version with its artifact downloaded to a local directory
(`Teacher.model_dir`: weights.safetensors + spec.json) and loaded once to check it, so that a damaged
version stops the job here, with the fix, instead of inside a Ray actor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.artifacts import InputSpec, ModelSpec
from zoo.labels import LabelSpace, build_label_space
from zoo.pipeline import JobError
from zoo.registry import ModelNotFound, ModelRecord, Registry

__all__ = ["Teacher", "TeacherError", "label_space", "parse_teacher", "resolve_teachers"]


class TeacherError(JobError):
    """Teachers that cannot be used as named; the message says what to fix."""


@dataclass(frozen=True)
class Teacher:
    """A teacher to run: its registry name and version, a local artifact directory (weights +
    spec.json), the MLflow run that logged it (lineage), its spec and registry tags."""

    name: str
    version: int
    model_dir: Path
    run_id: str | None = None
    spec: ModelSpec | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def lineage(self) -> dict[str, Any]:
        return {"name": self.name, "version": int(self.version), "run_id": self.run_id}


def parse_teacher(text: str) -> tuple[str, int | None, str | None]:
    """`name`, `name:3` (a version) or `name@alias` -> (name, version, alias)."""
    text = text.strip()
    if "@" in text:
        name, alias = text.split("@", 1)
        return name, None, alias
    if ":" in text:
        name, version = text.rsplit(":", 1)
        if not version.isdigit():
            raise TeacherError(f"teacher {text!r}: the version after ':' must be a number (name:3)")
        return name, int(version), None
    return text, None, None


def _named(registry: Registry, names: Sequence[str]) -> list[ModelRecord]:
    records = []
    for text in names:
        name, version, alias = parse_teacher(text)
        try:
            records.append(registry.get(name, version=version, alias=alias))
        except (ModelNotFound, ValueError) as e:
            available = sorted(r.name for r in registry.list())
            raise TeacherError(
                f"unknown teacher {text!r}: {e}. Teachers in the zoo: {available or 'none'}; fix --teachers"
            ) from None
    return records


def _tagged(registry: Registry, tags: Mapping[str, str], zoo: str | None) -> list[ModelRecord]:
    """Models matching every tag (students included, as asked), or the zoo's (students excluded)."""
    if tags:
        return registry.list(dict(tags))
    return sorted(
        (r for r in registry.list({"zoo": str(zoo)}) if r.tags.get("role") != "student"),
        key=lambda r: r.name,
    )


def resolve_teachers(
    registry: Registry,
    *,
    names: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    zoo: str | None = None,
    build_zoo: Callable[[], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[Teacher]:
    """The teachers ``names`` (in that order), else the models matching every ``tags`` k=v, else every
    model of ``zoo`` (tagged zoo=<zoo>, students excluded, by name); when the zoo is empty and
    ``build_zoo`` is given, it is called first (the demo zoo). Each is downloaded and loaded once."""
    if names:
        records = _named(registry, names)
    else:
        records = _tagged(registry, tags or {}, zoo)
        if not records and not tags and build_zoo is not None:
            log(f"[teachers] zoo {zoo!r} is empty: building the demo zoo first")
            build_zoo()
            records = _tagged(registry, {}, zoo)
    if not records:
        what = f"tags {dict(tags)}" if tags else f"zoo {zoo!r} (models tagged zoo={zoo})"
        raise TeacherError(
            f"no teachers match {what} in {registry.tracking_uri}; register teachers "
            "(python -m zoo register ...), build the demo zoo (python jobs/make_zoo.py), "
            "or pick them with --teachers a,b,c"
        )
    seen = [r.name for r in records]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise TeacherError(f"teacher(s) {dupes} named more than once; name each teacher once")
    return [_fetch(registry, r) for r in records]


def _fetch(registry: Registry, r: ModelRecord) -> Teacher:
    try:
        _model, spec, _ = registry.load(r.name, version=r.version)
        model_dir = registry.download(r.name, version=r.version)
    except Exception as e:  # any failure to fetch or rebuild the teacher stops the job here
        raise TeacherError(
            f"teacher {r.name} v{r.version} fails to load: {e}. Fix or delete that version "
            f"(models:/{r.name}/{r.version}), or leave it out with --teachers"
        ) from e
    return Teacher(r.name, int(r.version), Path(model_dir), r.run_id, spec, dict(r.tags))


def label_space(teachers: Sequence[Teacher], synonyms: Mapping[str, str] | None = None) -> LabelSpace:
    """The union label space L_U of the teachers' classes and the mask M[N, L] (paper 001, Sec. 3)."""
    return build_label_space([t.spec.classes for t in teachers], [t.name for t in teachers], synonyms or None)


def common_input(specs: Sequence[InputSpec], log: Callable[[str], None]) -> InputSpec:
    """The student's input contract from the teachers': theirs when they all share one, else the most
    common (ties: the largest images), said in the log."""
    counts: dict[InputSpec, int] = {}
    for spec in specs:
        counts[spec] = counts.get(spec, 0) + 1
    best = max(counts, key=lambda x: (counts[x], x.height * x.width, x.channels))
    if len(counts) > 1:
        log(
            f"[student] teachers have {len(counts)} input contracts; the student uses {best} "
            "(set student_input in the config to choose)"
        )
    return best
