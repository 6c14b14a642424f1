"""The main job (`jobs/unify.py`) for a zoo of multi-label teachers (`task: multilabel`): one multi-label
student over the union of their label sets (beyond the papers; docs/multilabel.md "Unification").

`zoo.pipeline.unify.run_unify` hands over to this module when the teachers it resolved are multi-label
(`teachers_task`; a mix of multi-class and multi-label teachers is refused). What the student learns:
with sigmoid outputs each label is its own binary problem and a teacher's probability does not depend on
its other labels, so paper 001's renormalisation (Eq. 6) and its estimators do not apply. For label l:

    known_l = some teacher knows l;  q_bl = the mean of sigmoid(z_bil / T) over the teachers that know l

and the student trains with the BCE against q on the known labels only (`zoo.multilabel.union_targets`,
`masked_bce`; a label no teacher knows has no target). T = 1: the teachers' own probabilities. Its
threshold for label l is the mean of the knowing teachers' thresholds (`union_thresholds`).

Stages, as the main job's and through the same pieces: transfer.parquet (`transfer_stage`), logits.parquet
(`inference_stage`: Ray Data, the teachers' logits on the union label space, masked entries 0), the
student on Ray Train (`train_network` on `UnionData`), mAP / CF1 / OF1 on the multi-label eval set per
class group, registration with lineage (`champion` on mAP) and the summary (`zoo.pipeline.report`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from zoo.artifacts import InputSpec, ModelSpec
from zoo.config import UnifyConfig
from zoo.labels import LabelSpace
from zoo.multilabel import MultilabelSet, union_loss_fn, union_thresholds
from zoo.pipeline import JobError
from zoo.pipeline.cache import StageResult
from zoo.pipeline.evaluation import class_groups
from zoo.pipeline.inference import inference_stage, read_logits
from zoo.pipeline.multilabel import (
    SHOWN,
    evaluate_multilabel,
    multilabel_student_stage,
    read_multilabel_set,
    register_multilabel,
    worker_path,
)
from zoo.pipeline.registration import teachers_tag
from zoo.pipeline.report import JobResult, publish
from zoo.pipeline.session import Session
from zoo.pipeline.storage import parquet_metadata, read_parquet
from zoo.pipeline.teachers import Teacher, common_input, label_space
from zoo.pipeline.transfer import TransferSource, load_transfer_images, transfer_stage
from zoo.train import Schedule

__all__ = [
    "MultilabelUnifyInputs",
    "UnionData",
    "UnionRecipe",
    "multilabel_inputs",
    "run_unify_multilabel",
    "teachers_task",
]


@dataclass(frozen=True)
class UnionRecipe:
    """How the unified multi-label student learns, as the reports and the lineage show a recipe."""

    temperature: float = 1.0
    method = "union-mean"  # q = the mean of the knowing teachers' probabilities
    mode = "masked-bce"  # BCE against q on the labels some teacher knows

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "mode": self.mode, "temperature": self.temperature}


@dataclass
class MultilabelUnifyInputs:
    """Everything the multi-label unification needs, checked before any compute."""

    teachers: list[Teacher]
    space: LabelSpace
    source: TransferSource
    eval_set: MultilabelSet
    val_set: MultilabelSet | None  # --val: the champion is chosen on it when given
    spec: ModelSpec  # task multilabel, thresholds from the teachers'
    schedule: Schedule
    recipe: UnionRecipe


def teachers_task(teachers: Sequence[Teacher]) -> str:
    """ "multiclass" or "multilabel": the teachers' common task; a mix is refused (JobError)."""
    tasks = {t.spec.task for t in teachers}
    if len(tasks) > 1:
        by = {k: [t.name for t in teachers if t.spec.task == k] for k in sorted(tasks)}
        raise JobError(
            f"the teachers mix multi-class {by['multiclass']} and multi-label {by['multilabel']} models: "
            "unify one kind at a time (pick them with --teachers, or --tag task=multilabel)"
        )
    return tasks.pop()


def _refuse_multiclass_settings(cfg: UnifyConfig, s: Session) -> None:
    """Settings of the multi-class path that have no meaning here: refused when set, else said once."""
    set_ = {
        "--sweep": cfg.sweep,
        "sample_weighting": cfg.sample_weighting != "none",
        "teacher_temperatures": bool(cfg.teacher_temperatures),
        "--augment": cfg.augment,
        "--spv-data": cfg.spv_data is not None,
        "--patience": bool(cfg.patience),
    }
    if any(set_.values()):
        raise JobError(
            f"{[k for k, v in set_.items() if v]} apply to multi-class teachers; a multi-label zoo is "
            "unified by the mean of the knowing teachers' probabilities (docs/multilabel.md): drop them"
        )
    s.log(
        "[teachers] multi-label teachers: the student learns the mean of the knowing teachers' "
        "probabilities per label (T = 1); method, mode, temperature, the levers on q, SPV and "
        "min_agreement are for multi-class teachers"
    )


def multilabel_inputs(cfg: UnifyConfig, s: Session, teachers: list[Teacher]) -> MultilabelUnifyInputs:
    """The unification's inputs for multi-label ``teachers`` (resolved by the main job): the union label
    space, the transfer set (``--transfer``), the multi-label eval set (``--eval``: Parquet or a folder
    with labels.csv, its labels in the union) and the student (a multi-label spec)."""
    _refuse_multiclass_settings(cfg, s)
    space = label_space(teachers, cfg.synonyms)
    if cfg.transfer is None:
        raise JobError(
            "a multi-label zoo has no demo split: pass --transfer (images, or Parquet with an image column)"
        )
    if cfg.eval is None:
        raise JobError(
            "pass --eval PATH: a multi-label set (Parquet id, image, labels; or a folder with labels.csv) "
            f"whose labels are among the union {list(space.classes)}"
        )
    eval_set = read_multilabel_set(cfg.eval, space.classes, "--eval")
    s.log(f"[eval] {len(eval_set)} multi-label images from {cfg.eval} (the final report)")
    val_set = None if cfg.val is None else read_multilabel_set(cfg.val, space.classes, "--val")
    if val_set is not None:
        s.log(f"[val] {len(val_set)} multi-label images from {cfg.val} (the champion is chosen on them)")
    spec_in = (
        InputSpec(**cfg.student_input)
        if cfg.student_input
        else common_input([t.spec.input for t in teachers], s.log)
    )
    spec = cfg.student_spec(space.classes, spec_in)
    per_teacher = space.to_union([torch.tensor([t.spec.thresholds]) for t in teachers])[0]  # [N, L]
    thresholds = [float(v) for v in union_thresholds(per_teacher, space.mask)]
    spec = replace(spec, task="multilabel", thresholds=thresholds)
    return MultilabelUnifyInputs(
        teachers, space, cfg.transfer, eval_set, val_set, spec, cfg.schedule(), UnionRecipe()
    )


@dataclass(frozen=True)
class UnionData:
    """The unified multi-label student's `TrainingData`: the transfer set and the teachers' logits on it
    (logits.parquet), with `zoo.multilabel.union_loss_fn` as the loss."""

    transfer_path: str
    logits_path: str
    classes: tuple[str, ...]
    temperature: float = 1.0

    def _logits(self, ids: Sequence[str]):
        lf = read_logits(self.logits_path)
        if lf.ids != list(ids) or tuple(lf.label_space.classes) != self.classes:
            raise ValueError(f"{self.logits_path} does not match the transfer set's ids or the classes")
        return lf

    def check(self) -> None:
        ids = read_parquet(self.transfer_path, columns=["id"]).column("id").to_pylist()
        self._logits([str(i) for i in ids])

    def load(self, spec: InputSpec, device: torch.device):
        ids, images = load_transfer_images(self.transfer_path, spec)
        lf = self._logits(ids)
        return images.to(device), union_loss_fn(lf.logits.to(device), lf.mask.to(device), self.temperature)

    def describe(self) -> dict[str, Any]:
        return {"method": UnionRecipe.method, "mode": UnionRecipe.mode, "temperature": self.temperature}


def run_unify_multilabel(cfg: UnifyConfig, s: Session, inp: MultilabelUnifyInputs, t0: float) -> JobResult:
    """The stages for multi-label teachers (see the module text), in the main job's session."""
    stages: dict[str, StageResult] = {}
    stages["transfer"] = transfer_stage(
        s.run, inp.source, image_column=cfg.image_column, id_column=cfg.id_column, limit=cfg.transfer_limit
    )
    stages["inference"] = inference_stage(
        s.run, stages["transfer"], inp.teachers, inp.space, start_ray=s.start_ray,
        batch_size=cfg.inference_batch_size, use_gpu=cfg.use_gpu,
        concurrency=cfg.inference_concurrency, num_threads=cfg.inference_threads,
    )  # fmt: skip
    paths = (worker_path(stages["transfer"].path), worker_path(stages["inference"].path))
    data = UnionData(*paths, tuple(inp.space.classes), inp.recipe.temperature)
    n = int(parquet_metadata(stages["transfer"].path)["zoo.num_images"])
    inp.schedule = inp.schedule.for_data(n, cfg.min_steps)  # the main job's budget rule
    s.log(f"[student] {n} transfer images: {inp.schedule.epochs} epochs (at least {cfg.min_steps} steps)")
    stages["student"] = multilabel_student_stage(
        s, inp.spec, inp.schedule, data, [stages["inference"].fingerprint, stages["transfer"].value],
        experiment=cfg.experiment, run_label=f"{cfg.name}-{inp.recipe.method}",
        tags={"zoo.job": "unify", "task": "multilabel", "teachers": _teachers(inp.teachers)},
        params={f"job.{k}": v for k, v in cfg.to_dict().items() if v is not None and k != "force"},
        num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
    )  # fmt: skip
    res = JobResult(
        name=cfg.name, run_dir=s.run.root, classes=list(inp.space.classes),
        groups=class_groups(inp.space.mask),
        teachers=[{**t.lineage(), "arch": t.spec.arch, "classes": t.spec.classes} for t in inp.teachers],
        recipe=inp.recipe, schedule=inp.schedule, arch=cfg.arch, selected_by="the rule (no choice to make)",
        eval_source=str(cfg.eval), stages=stages,
        mlflow_run_id=stages["student"].value["mlflow_run_id"],
        tracking_uri=s.tracking_uri, kind="Unified multi-label model",
    )  # fmt: skip
    metrics = evaluate_multilabel(stages["student"].path, inp.eval_set, groups=res.groups)
    res.table = {
        ("student" if g == "all" else f"student, labels of {g}"): {k: m[k] for k in SHOWN}
        for g, m in metrics.items()
    }
    metric, chosen_on = "mAP", inp.eval_set
    if inp.val_set is not None:
        val = evaluate_multilabel(stages["student"].path, inp.val_set)["all"]
        res.table["student, validation set"] = {k: val[k] for k in SHOWN}
        res.val_source, res.val_accuracy = str(cfg.val), val["mAP"]
        metrics["all"].update({f"val_{k}": v for k, v in val.items()})
        metric, chosen_on = "val_mAP", inp.val_set
    res.champion_chosen_on = f"{metric} of {cfg.val if inp.val_set is not None else cfg.eval}"
    lineage = {
        "teachers": [t.lineage() for t in inp.teachers], **inp.recipe.to_dict(),
        "schedule": inp.schedule.to_dict(), "transfer_fingerprint": stages["transfer"].value,
        "classes": list(inp.space.classes), "mlflow_run_id": res.mlflow_run_id,
        "eval_source": res.eval_source, "metrics": {**metrics["all"], **_group_metrics(metrics)},
        "champion_chosen_on": res.champion_chosen_on,
    }  # fmt: skip
    stages["register"] = register_multilabel(s, cfg.name, stages["student"], lineage, chosen_on, metric)
    res.registered = stages["register"].value
    res.seconds = time.perf_counter() - t0
    publish(res, s.run.summary, s.client)
    s.log(res.summary)
    return res


def _group_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """The shown metrics of each class group, flattened for the lineage: {"mAP[1 teacher]": ...}."""
    return {f"{k}[{g}]": m[k] for g, m in metrics.items() if g != "all" for k in SHOWN}


def _teachers(teachers: Sequence[Teacher]) -> str:
    return teachers_tag([t.lineage() for t in teachers])
