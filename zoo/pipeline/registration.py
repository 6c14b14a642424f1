"""Stage 5 of the main job: register the trained student in the zoo with its lineage, and move the
alias ``champion`` to it only when it beats the current champion on the same evaluation set.

The lineage (teachers and their versions, method, mode, temperature, transfer-set fingerprint,
metrics) goes into the spec's metadata (it travels with the weights) and, flattened, into the
version's tags (so the registry can be searched and compared without a download). Two students
are comparable only when they were evaluated on the same evaluation set (same ``eval_fingerprint``)
with the same metric; otherwise the champion stays where it is and the reason is logged and kept
in the new version's ``champion_decision`` tag.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from zoo.artifacts import check_artifact
from zoo.pipeline.cache import StageResult
from zoo.pipeline.session import Session
from zoo.pipeline.storage import local_copy, read_text, write_json_atomic
from zoo.registry import ModelNotFound, ModelRecord, Registry

__all__ = [
    "CHAMPION",
    "REQUIRED_LINEAGE",
    "champion_decision",
    "register_student",
    "registered_version",
    "teachers_tag",
]

log = logging.getLogger(__name__)

CHAMPION = "champion"
REQUIRED_LINEAGE = ("teachers", "method", "mode", "temperature", "transfer_fingerprint")


def teachers_tag(teachers: Any) -> str:
    """``name:version`` of each teacher, comma-separated (teachers: {name, version} dicts or strings)."""
    out = []
    for t in teachers:
        if isinstance(t, Mapping):
            if "name" not in t or "version" not in t:
                raise ValueError(f"lineage teacher {t!r} needs 'name' and 'version'")
            out.append(f"{t['name']}:{t['version']}")
        elif isinstance(t, str):
            out.append(t)
        else:
            raise ValueError(
                f"lineage teachers must be dicts {{name, version}} or 'name:version' strings, got {t!r}"
            )
    return ",".join(out)


def _metric_value(metric: str, lineage: Mapping[str, Any], spec_metadata: Mapping[str, Any]) -> float:
    for source in (lineage.get("metrics") or {}, spec_metadata.get("metrics") or {}):
        if metric in source and isinstance(source[metric], (int, float)) and math.isfinite(source[metric]):
            return float(source[metric])
    raise ValueError(
        f"no finite value of metric {metric!r} in lineage['metrics'] or the spec's metadata['metrics']: "
        "train with an eval_set, or pass the metric in lineage['metrics']"
    )


def champion_decision(
    current: ModelRecord | None, metric: str, value: float, eval_fingerprint: str
) -> tuple[bool, str]:
    """(move the alias?, why). Higher metric values are better; a tie keeps the current champion."""
    if current is None:
        return True, "no champion yet"
    cur_fp = current.tags.get("eval_fingerprint")
    cur_metric = current.tags.get("metric")
    if cur_fp != eval_fingerprint:
        return False, (
            f"champion v{current.version} was evaluated on another evaluation set "
            f"({str(cur_fp)[:12]} vs {eval_fingerprint[:12]}): not comparable, champion kept"
        )
    if cur_metric != metric:
        return (
            False,
            f"champion v{current.version} was ranked by {cur_metric!r}, not {metric!r}: champion kept",
        )
    try:
        cur_value = float(current.tags["metric_value"])
    except (KeyError, ValueError):
        return False, f"champion v{current.version} has no {metric} value: champion kept"
    if value > cur_value:
        return True, f"{metric} {value:.4f} > champion v{current.version}'s {cur_value:.4f}"
    return False, f"{metric} {value:.4f} <= champion v{current.version}'s {cur_value:.4f}: champion kept"


def registered_version(registry: Registry, name: str, student_fingerprint: str) -> ModelRecord | None:
    """The version of ``name`` registered from the student with this fingerprint, if any: a rerun
    that changes nothing registers nothing, even when its own record of the registration was lost."""
    try:
        versions = registry.versions(name)
    except ModelNotFound:
        return None
    return next((r for r in versions if r.tags.get("student_fingerprint") == student_fingerprint), None)


def register_student(
    registry: Registry,
    name: str,
    model_dir: str | Path,
    *,
    lineage: dict[str, Any],
    metric: str,
    eval_fingerprint: str,
    not_champion: str | None = None,
) -> tuple[ModelRecord, bool]:
    """Register ``model_dir`` (the student, zoo artifact format) as a new version of ``name`` with its
    lineage, then move the alias ``champion`` to it if there is no champion, or if the champion was
    evaluated on the same ``eval_fingerprint`` with the same ``metric`` and the new value is strictly
    higher; never when ``not_champion`` gives a reason (e.g. a student that has not converged).
    Returns (the new version's record, whether ``champion`` moved to it).

    ``lineage``: ``teachers`` (list of {name, version[, run_id]}), ``method``, ``mode``,
    ``temperature``, ``transfer_fingerprint``, and ``metrics`` (must hold ``metric`` unless the spec's
    ``metadata["metrics"]`` does); ``student_fingerprint`` when given becomes a tag
    (`registered_version` finds it); anything else is kept in the spec metadata as is.
    """
    if not isinstance(lineage, Mapping):
        raise ValueError(f"lineage must be a dict, got {type(lineage).__name__}")
    missing = [k for k in REQUIRED_LINEAGE if k not in lineage]
    if missing:
        raise ValueError(f"lineage is missing {missing}; it needs {list(REQUIRED_LINEAGE)} (and 'metrics')")
    if not isinstance(eval_fingerprint, str) or not eval_fingerprint:
        raise ValueError("eval_fingerprint must be a non-empty string (e.g. LabelledSet.fingerprint())")
    model_dir = Path(model_dir)
    spec = check_artifact(model_dir)
    value = _metric_value(metric, lineage, spec.metadata or {})

    try:
        current: ModelRecord | None = registry.get(name, alias=CHAMPION)
    except ModelNotFound:
        current = None
    move, why = champion_decision(current, metric, value, eval_fingerprint)
    if not_champion:
        move, why = False, f"{not_champion}: not made champion"

    tags = {
        "role": "student",
        "method": str(lineage["method"]),
        "mode": str(lineage["mode"]),
        "temperature": str(lineage["temperature"]),
        "teachers": teachers_tag(lineage["teachers"]),
        "transfer_fingerprint": str(lineage["transfer_fingerprint"]),
        "eval_fingerprint": eval_fingerprint,
        "metric": metric,
        "metric_value": repr(value),
        "champion_decision": why,
    }
    if lineage.get("student_fingerprint"):
        tags["student_fingerprint"] = str(lineage["student_fingerprint"])
    # The lineage travels with the weights: a copy of the artifact with it in the spec's metadata.
    lineage_json = json.loads(json.dumps({**lineage, "eval_fingerprint": eval_fingerprint}, default=str))
    with tempfile.TemporaryDirectory(prefix="zoo-student-") as tmp:
        staged = Path(tmp) / "model"
        shutil.copytree(model_dir, staged)
        d = spec.to_dict()
        d["metadata"] = {**(d.get("metadata") or {}), "lineage": lineage_json}
        (staged / "spec.json").write_text(json.dumps(d, indent=2, sort_keys=True))
        check_artifact(staged)
        description = (
            f"student of {tags['teachers']} by {tags['method']}-{tags['mode']} (T={tags['temperature']})"
        )
        record = registry.register(name, staged, tags=tags, description=description)
    if move:
        record = registry.set_alias(name, CHAMPION, record.version)
    log.info("registered %s v%d; champion %s: %s", name, record.version, "moved" if move else "kept", why)
    return record, move


REGISTER_VERSION = 1  # of the register stage's record (registration.json)


def registration_stage(
    s: Session,
    name: str,
    student: StageResult,
    lineage: dict[str, Any],
    *,
    metric: str,
    eval_fingerprint: str,
    not_champion: str | None = None,
    inputs: Sequence[Any] = (),
) -> StageResult:
    """Stage: the trained ``student`` (a stage's network directory) registered as a version of ``name``
    with its ``lineage`` and the champion rule of `register_student`, for every job that trains one.
    A rerun that changes nothing registers nothing: the stage is skipped when the student, the name, the
    store and ``inputs`` are unchanged, and a version already holding this student (its fingerprint tag)
    is reported instead of a new one even when `registration.json` was lost. The value: name, version,
    champion, uri, decision."""
    lineage = {**lineage, "student_fingerprint": student.fingerprint}

    def register(path: Any, fp: str) -> dict[str, Any]:
        record = registered_version(s.registry, name, student.fingerprint)
        if record is not None:
            s.log(f"[register] {name} v{record.version} already holds this student: nothing registered")
            champion = CHAMPION in record.aliases
        else:
            with local_copy(student.path) as d:
                record, champion = register_student(
                    s.registry, name, d, lineage=lineage, metric=metric,
                    eval_fingerprint=eval_fingerprint, not_champion=not_champion,
                )  # fmt: skip
        reg = {
            "name": record.name,
            "version": record.version,
            "champion": champion,
            "uri": f"models:/{record.name}/{record.version}",
            "decision": record.tags.get("champion_decision", ""),
        }
        write_json_atomic({"fingerprint": fp, **reg}, path)
        return reg

    key = [student.fingerprint, name, s.tracking_uri, *inputs]
    out = s.run.stage("register", s.run.registration, REGISTER_VERSION, key, register)
    recorded = json.loads(read_text(out.path))
    return replace(out, value={k: v for k, v in recorded.items() if k != "fingerprint"})
