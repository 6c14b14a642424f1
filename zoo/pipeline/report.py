"""What a job tells its user at the end: the summary table, `summary.json`, the MLflow run's last
metrics and artifact (the unify job's accuracy per class group, or another job's metric table)."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from zoo.pipeline.cache import StageResult
from zoo.pipeline.storage import PathLike, local_copy, write_json_atomic
from zoo.train import Schedule
from zoo.unify.recipe import Recipe

__all__ = ["JobResult", "format_summary", "publish"]

RULE, THIN = "=" * 78, "-" * 78


@dataclass
class JobResult:
    """What the unify job did: its inputs, stages, the student's (and SPV's) accuracy per class group
    on the evaluation set, the registration, where everything is, and the printed summary."""

    name: str
    run_dir: Path | str  # a local path or a URI
    teachers: list[dict[str, Any]]  # name, version, run_id, arch, classes
    classes: list[str]
    groups: dict[str, list[int]]
    recipe: Recipe
    schedule: Schedule
    arch: str
    selected_by: str  # how the recipe was chosen (the config, or the sweep on which set)
    eval_source: str
    stages: dict[str, StageResult] = field(default_factory=dict)
    student_accuracy: dict[str, float] | None = None
    spv_accuracy: dict[str, float] | None = None
    registered: dict[str, Any] | None = None
    val_source: str | None = None
    val_accuracy: float | None = None  # the student's, on the validation set (the champion's yardstick)
    agreement: float | None = None  # the student's top-1 vs its soft labels' on the transfer set
    champion_chosen_on: str = ""
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    seconds: float = 0.0
    summary: str = ""
    # Other jobs' results (the multi-label jobs): what the model is, and the metric table in place of the
    # accuracy per class group, rows of {column: value} (e.g. "student" -> {"mAP": .., "CF1": ..}).
    kind: str = "Unified model"
    table: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """`summary.json`."""
        return {
            "teachers": self.teachers,
            "classes": self.classes,
            "method": self.recipe.method,
            "mode": self.recipe.mode,
            "temperature": self.recipe.temperature,
            "recipe": self.recipe.to_dict(),
            "schedule": self.schedule.to_dict(),
            "selected_by": self.selected_by,
            "eval_source": self.eval_source,
            "student_accuracy": self.student_accuracy,
            "spv_accuracy": self.spv_accuracy,
            "val_source": self.val_source,
            "val_accuracy": self.val_accuracy,
            "agreement": self.agreement,
            "champion_chosen_on": self.champion_chosen_on,
            "registered": self.registered,
            "mlflow_run_id": self.mlflow_run_id,
            "tracking_uri": self.tracking_uri,
            "seconds": round(self.seconds, 1),
            "stages": {k: _stage_facts(s) for k, s in self.stages.items()},
            **({"table": self.table} if self.table is not None else {}),
        }


def _stage_facts(stage: StageResult) -> dict[str, Any]:
    """Skipped or not, seconds, and a training stage's split of its time (epochs, checkpoints and
    reports, all of Ray Train's fit) when it has one."""
    value = stage.value if isinstance(stage.value, dict) else {}
    split = {k: round(float(value[k]), 2) for k in ("compute_s", "overhead_s", "fit_seconds") if k in value}
    return {"skipped": stage.skipped, "seconds": round(stage.seconds, 2), **split}


def _levers_line(r: Any) -> list[str]:
    """The levers on q a unification recipe turns on (issue 18), as one line of the summary, or none."""
    temps = getattr(r, "teacher_temperatures", None) or ()
    on = [f"per-teacher temperatures {', '.join(f'{t:.2f}' for t in temps)}"] if set(temps) - {1.0} else []
    q_t = getattr(r, "estimation_temperature", None)
    on += [f"q estimated at T={q_t:g}"] if q_t is not None and q_t != r.temperature else []
    on += ["propagation over the teachers' features"] if getattr(r, "propagation", None) else []
    on += [f"sharpened (tau {r.sharpen:g})"] if getattr(r, "sharpen", 1.0) != 1.0 else []
    return [f"levers on q: {', '.join(on)}"] if on else []


def format_summary(res: JobResult) -> str:
    """The table printed at the end: teachers, recipe, accuracies per class group, where to look."""
    lines = [
        "",
        RULE,
        f"{res.kind} {res.name!r}: {len(res.teachers)} teacher{'s' if len(res.teachers) != 1 else ''} "
        f"-> {len(res.classes)} classes",
        THIN,
        f"{'teacher':<28} {'version':>7}  {'arch':<10} classes",
    ]
    for t in res.teachers:
        lines.append(f"{t['name']:<28} {t['version']:>7}  {t['arch']:<10} {', '.join(t['classes'])}")
    r = res.recipe
    lines += [
        THIN,
        f"method {r.method}, mode {r.mode}, T={r.temperature:g}, student {res.arch}, "
        f"{res.schedule.epochs} epochs",
        *_levers_line(r),
        f"config selected by {res.selected_by}",
        "",
    ]
    if res.table is not None:
        lines += _table_lines(res.table, res.eval_source)
        lines += ["", f"the champion is chosen on {res.champion_chosen_on}"] if res.champion_chosen_on else []
    else:
        cols = ["all", *res.groups]
        lines.append(f"{'accuracy on the eval set':<26}" + "".join(f"{c:>16}" for c in cols))
        for label, acc in (("student", res.student_accuracy), ("SPV (supervised)", res.spv_accuracy)):
            if acc:
                lines.append(f"{label:<26}" + "".join(f"{acc.get(c, float('nan')):>16.4f}" for c in cols))
        sizes = [len(res.classes) if c == "all" else len(res.groups[c]) for c in cols]
        lines.append(f"{'(classes in group)':<26}" + "".join(f"{n:>16}" for n in sizes))
        lines += _notes(res)
    stages = ", ".join(f"{k} {_stage_time(st)}" for k, st in res.stages.items())
    reg = res.registered or {}
    lines += [
        THIN,
        f"stages: {stages}; total {res.seconds:.0f}s",
        "where to look:",
        f"  run directory     {res.run_dir}",
        f"  MLflow            {res.tracking_uri}  run {res.mlflow_run_id}"
        f"  (mlflow ui --backend-store-uri {res.tracking_uri})",
        f"  registered model  {reg.get('uri')}  champion: {'yes' if reg.get('champion') else 'no'}"
        f" ({reg.get('decision', '')})",
        RULE,
    ]
    return "\n".join(lines)


def _table_lines(table: dict[str, dict[str, float]], source: str) -> list[str]:
    """A metric table: one row per entry, the columns of the first row."""
    cols = list(next(iter(table.values()), {}))
    out = [f"{'on ' + source:<34.34}" + "".join(f"{c:>10}" for c in cols)]
    for label, row in table.items():
        out.append(f"{label:<34.34}" + "".join(f"{row.get(c, float('nan')):>10.4f}" for c in cols))
    return out


def _notes(res: JobResult) -> list[str]:
    """What the table alone does not say: the validation accuracy the champion is chosen on, a student
    that has not converged, why there is no SPV row."""
    notes = []
    if res.val_accuracy is not None:
        notes.append(
            f"validation accuracy {res.val_accuracy:.4f} ({res.val_source}): the champion is chosen on it"
        )
    if res.agreement is not None:
        notes.append(
            f"the student agrees with its own soft labels on {res.agreement:.1%} of the transfer set"
        )
    if res.spv_accuracy is None:
        notes.append(
            "no SPV row: it needs the teachers' labelled data (the demo zoo's split, or --spv-data DIR)"
        )
    return [""] + notes if notes else []


def _stage_time(stage: StageResult) -> str:
    if stage.skipped:
        return "skipped"
    facts = _stage_facts(stage)
    if "compute_s" not in facts:
        return f"{stage.seconds:.0f}s"
    overhead = facts.get("overhead_s", 0.0)
    return f"{stage.seconds:.0f}s (epochs {facts['compute_s']:.0f}s, checkpoints {overhead:.0f}s)"


def _metric_key(group: str) -> str:
    return group.replace(" ", "_").replace("+", "plus")


def publish(res: JobResult, summary_path: PathLike, client: MlflowClient) -> None:
    """Write `summary.json`, log the final accuracies, the registered version and the summary to the
    job's MLflow run, and close it."""
    res.summary = format_summary(res)
    write_json_atomic(res.to_dict(), summary_path)
    run_id = res.mlflow_run_id
    now = int(time.time() * 1000)
    for who, acc in (("student", res.student_accuracy), ("spv", res.spv_accuracy)):
        for k, v in (acc or {}).items():
            client.log_metric(run_id, f"{who}.eval_accuracy.{_metric_key(k)}", v, timestamp=now)
    for row, values in (res.table or {}).items():
        for k, v in ((k, v) for k, v in values.items() if math.isfinite(v)):
            key = re.sub(r"[^\w\-./ ]", "", f"{_metric_key(row)}.{_metric_key(k)}")  # MLflow's charset
            client.log_metric(run_id, key, v, timestamp=now)
    reg = res.registered or {}
    client.set_tag(run_id, "registered_model", f"{reg.get('name')}:{reg.get('version')}")
    client.log_metric(run_id, "job.seconds", res.seconds, timestamp=now)
    with local_copy(summary_path) as f:
        client.log_artifact(run_id, str(f))
    client.set_terminated(run_id)
