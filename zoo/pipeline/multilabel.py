"""The multi-label distillation job (`jobs/distill_multilabel.py`, paper 004): a smaller student over the
labels of a multi-label teacher of the zoo, trained on labelled images with the supervised BCE plus a
distillation term (3D, MLD, PS or none: `zoo.multilabel.loss_fn`).

    result = run_distill_multilabel(cfg)      # cfg: zoo.config.DistillMultilabelConfig

A sequence of stages under the run directory, each skipped on a rerun when its inputs are unchanged:

0. inputs, checked before Ray starts: the teacher (a `task: multilabel` model), the data's train and test
   splits (labels among the teacher's), the student's network, recipe and schedule;
1. transfer.parquet (the training images, `zoo.pipeline.transfer`) and labels.parquet (their labels);
2. logits.parquet: the teacher on every training image with Ray Data (`zoo.pipeline.inference`); with
   the views pairing also view2/transfer.parquet and view2/logits.parquet, the images' horizontal flips;
3. the student on Ray Train (`zoo.pipeline.training.train_network` on `MultilabelDistillData`); the
   runner's per-epoch accuracy is top-1 (multi-class), so no eval set is passed to it;
4. mAP, CF1 and OF1 of the student and the teacher on the test split (`evaluate_multilabel`);
5. registration (task multilabel, thresholds, lineage; `champion` on the test mAP) and the summary
   (`zoo.pipeline.report`).

The pieces the multi-label unification (`zoo.pipeline.unify_multilabel`) shares: `read_multilabel_set`,
`labelled_fingerprint`, `evaluate_multilabel`, `multilabel_student_stage`, `register_multilabel`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from zoo.artifacts import InputSpec, ModelSpec, load_model, preprocess
from zoo.config import DistillMultilabelConfig
from zoo.labels import LabelSpace
from zoo.multilabel import MultilabelSet, multilabel_metrics, read_multilabel
from zoo.multilabel.loss_fn import DistillRecipe, distill_loss_fn
from zoo.pipeline import JobError
from zoo.pipeline.cache import FINGERPRINT_KEY, RunDir, StageResult, fingerprint
from zoo.pipeline.inference import inference_stage, read_logits
from zoo.pipeline.registration import registration_stage
from zoo.pipeline.report import JobResult, publish
from zoo.pipeline.session import Session
from zoo.pipeline.storage import (
    PathLike,
    is_uri,
    join,
    local_copy,
    read_parquet,
    read_vectors,
    vector_column,
    write_parquet_atomic,
)
from zoo.pipeline.teachers import Teacher, label_space, resolve_teachers
from zoo.pipeline.training import TrainingData, train_network
from zoo.pipeline.transfer import load_transfer_images, transfer_stage
from zoo.train import Schedule

__all__ = [
    "MultilabelDistillData",
    "MultilabelInputs",
    "evaluate_multilabel",
    "labelled_fingerprint",
    "labels_stage",
    "multilabel_student_stage",
    "read_multilabel_set",
    "read_split",
    "register_multilabel",
    "run_distill_multilabel",
    "worker_path",
]

LABELS_VERSION = 1
STUDENT_VERSION = 1
METRIC = "mAP"  # what registration ranks multi-label students by
SHOWN = ("mAP", "CF1", "OF1")  # paper 004's three metrics, in the summary table


@dataclass
class MultilabelInputs:
    """Everything the distillation job needs, checked before any compute."""

    teacher: Teacher
    space: LabelSpace  # the teacher's labels, in the union's (sorted) order
    train: MultilabelSet
    val: MultilabelSet | None  # the data's val split, when it has one: the champion is chosen on it
    test: MultilabelSet
    spec: ModelSpec
    recipe: DistillRecipe
    schedule: Schedule


def run_distill_multilabel(cfg: DistillMultilabelConfig, log: Callable[[str], None] = print) -> JobResult:
    """Run the whole job for ``cfg``; returns what it did and prints the summary table."""
    t0 = time.perf_counter()
    with Session(
        cfg.run_path, tracking_uri=cfg.tracking_uri, force=cfg.force, log=log,
        ray_address=cfg.ray_address, num_cpus=cfg.num_cpus,
    ) as s:  # fmt: skip
        inp = check_distill_inputs(cfg, s)
        stages: dict[str, StageResult] = {}
        stages["transfer"] = transfer_stage(s.run, (inp.train.images, inp.train.ids))
        stages["labels"] = labels_stage(s.run, inp.train, stages["transfer"])
        infer = dict(start_ray=s.start_ray, batch_size=cfg.inference_batch_size, use_gpu=cfg.use_gpu)
        stages["inference"] = inference_stage(s.run, stages["transfer"], [inp.teacher], inp.space, **infer)
        view2 = None
        if inp.recipe.pairing == "views":
            stages["transfer_view2"], stages["inference_view2"] = views_stages(s.run, inp, infer)
            view2 = stages["inference_view2"]
        data = MultilabelDistillData(
            worker_path(stages["transfer"].path), worker_path(stages["labels"].path),
            worker_path(stages["inference"].path), None if view2 is None else worker_path(view2.path),
            tuple(inp.space.classes), inp.recipe,
        )  # fmt: skip
        stages["student"] = multilabel_student_stage(
            s, inp.spec, inp.schedule, data, [st.fingerprint for st in stages.values()],
            experiment=cfg.experiment, run_label=f"{cfg.name}-{inp.recipe.method}",
            tags={"zoo.job": "distill-multilabel", "teachers": f"{inp.teacher.name}:{inp.teacher.version}"},
            params={f"job.{k}": v for k, v in cfg.to_dict().items() if v is not None and k != "force"},
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
        )  # fmt: skip
        res, lineage = _evaluate(cfg, s, inp, stages)
        metric, chosen_on = ("val_mAP", inp.val) if inp.val is not None else ("mAP", inp.test)
        res.champion_chosen_on = f"{metric} of {_source(cfg.data, 'val' if inp.val else 'test')}"
        stages["register"] = register_multilabel(
            s, cfg.name, stages["student"], {**lineage, "champion_chosen_on": res.champion_chosen_on},
            chosen_on, metric,
        )  # fmt: skip
        res.registered = stages["register"].value
        res.seconds = time.perf_counter() - t0
        publish(res, s.run.summary, s.client)
        log(res.summary)
        return res


# ------------------------------------------------------------------------------------------ inputs
def check_distill_inputs(cfg: DistillMultilabelConfig, s: Session) -> MultilabelInputs:
    """The teacher, the data's splits and the student, checked before any compute (JobError otherwise)."""
    (teacher,) = resolve_teachers(s.registry, names=[cfg.teacher], log=s.log)
    if teacher.spec.task != "multilabel":
        raise JobError(
            f"teacher {teacher.name} v{teacher.version} is a multi-class model (task {teacher.spec.task!r}); "
            "this job distils multi-label teachers (zoo list --tag task=multilabel lists them)"
        )
    space = label_space([teacher])
    classes = list(space.classes)
    train, test = (read_split(cfg.data, split, classes) for split in ("train", "test"))
    val = read_split(cfg.data, "val", classes) if _split_path(cfg.data, "val") else None
    s.log(
        f"[data] {len(train)} training, {len(val) if val else 'no'} validation and {len(test)} test images "
        f"over the teacher's {len(classes)} labels"
    )
    spec_in = InputSpec(**cfg.student_input) if cfg.student_input else teacher.spec.input
    schedule = cfg.schedule().for_data(len(train), cfg.min_steps)
    if schedule.epochs != cfg.epochs:
        s.log(f"[student] {len(train)} images: {schedule.epochs} epochs, for at least {cfg.min_steps} steps")
    return MultilabelInputs(
        teacher, space, train, val, test, cfg.student_spec(classes, spec_in), cfg.recipe(), schedule
    )


def read_multilabel_set(path: str | Path, classes: Sequence[str], flag: str) -> MultilabelSet:
    """A multi-label set (Parquet, or a folder with labels.csv) over ``classes``: every label of the file
    must be one of them (matched by normalised name); JobError naming ``flag`` otherwise."""
    try:
        data = read_multilabel(path, classes=classes)
    except (ValueError, OSError) as e:
        raise JobError(f"{flag} {path}: {e}") from None
    if len(data) == 0:
        raise JobError(f"{flag} {path} holds no image; give a multi-label set (id, image, labels)")
    return data


def _split_path(data_dir: str | Path, split: str) -> Path | None:
    root = Path(data_dir)
    candidates = (root / f"{split}.parquet", root / f"{split}.pq", root / split)
    return next((c for c in candidates if c.exists()), None)


def read_split(data_dir: str | Path, split: str, classes: Sequence[str]) -> MultilabelSet:
    """The ``split`` of a data directory: `<dir>/<split>.parquet`, else `<dir>/<split>/labels.csv`."""
    path, root = _split_path(data_dir, split), Path(data_dir)
    if path is not None:
        return read_multilabel_set(path, classes, f"--data ({split})")
    raise JobError(
        f"--data {root}: no {split} split; expected {root}/{split}.parquet or {root}/{split}/labels.csv "
        "(python jobs/make_multilabel_zoo.py --data DIR writes the demo mosaics)"
    )


def labelled_fingerprint(data: MultilabelSet) -> str:
    """sha256 of the pixels, labels and classes: two students are comparable only on the same one."""
    h = hashlib.sha256(json.dumps(list(data.classes)).encode())
    for image in data.images:
        a = np.ascontiguousarray(image)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update(np.ascontiguousarray(data.targets).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ stages
def labels_stage(run: RunDir, data: MultilabelSet, transfer: StageResult) -> StageResult:
    """Stage: `<run>/labels.parquet`, the training images' labels (`id`, `targets` [C] as 0/1 floats,
    metadata `zoo.classes`) in transfer.parquet's row order, where every worker reads them."""

    def write(path: PathLike, fp: str) -> None:
        table = pa.table(
            {"id": pa.array(data.ids, pa.string()), "targets": vector_column(data.targets.astype(np.float32))}
        )
        meta = {FINGERPRINT_KEY: fp, "zoo.classes": json.dumps(list(data.classes))}
        write_parquet_atomic(table, path, meta)

    inputs = [transfer.value, labelled_fingerprint(data)]
    return run.stage("labels", "labels.parquet", LABELS_VERSION, inputs, write)


def read_labels(path: PathLike, ids: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """labels.parquet's targets [n, C] for ``ids`` (in that order), checked against ``classes``."""
    table = read_parquet(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if json.loads(meta.get("zoo.classes", "null")) != list(classes):
        raise ValueError(f"{path} holds the labels of other classes: {meta.get('zoo.classes')}")
    if [str(i) for i in table.column("id").to_pylist()] != list(ids):
        raise ValueError(f"{path} is not in the transfer set's row order: rerun with --force")
    return torch.from_numpy(read_vectors(table, "targets").copy())


def views_stages(
    run: RunDir, inp: MultilabelInputs, infer: Mapping[str, Any]
) -> tuple[StageResult, StageResult]:
    """Stages for the views pairing: the flipped training images and the teacher's logits on them, in
    `<run>/view2/` (the same transfer and inference stages, in a run directory of their own)."""
    sub = RunDir(run.path("view2"), force=run.force, log=run.log).ensure()
    # `second_view` of the decoded images (H x W or H x W x C: the width is axis 1), as the loss flips
    # the preprocessed ones; a list, so images of any sizes work.
    flipped = [np.ascontiguousarray(np.asarray(im)[:, ::-1]) for im in inp.train.images]
    transfer = transfer_stage(sub, (flipped, inp.train.ids))
    return transfer, inference_stage(sub, transfer, [inp.teacher], inp.space, **infer)


@dataclass(frozen=True)
class MultilabelDistillData:
    """The distilled student's `TrainingData`: the training images, their labels and the teacher's logits
    (and, for the views pairing, its logits on the flipped images), with the recipe's loss."""

    transfer_path: str
    labels_path: str
    logits_path: str
    view2_logits_path: str | None
    classes: tuple[str, ...]
    recipe: DistillRecipe

    def _teacher(self, path: str, ids: Sequence[str]) -> torch.Tensor:
        lf = read_logits(path)
        if lf.ids != list(ids) or list(lf.label_space.classes) != list(self.classes):
            raise ValueError(f"{path} does not match the transfer set's ids or the student's classes")
        return lf.logits[:, 0]  # the one teacher, [n, C]

    def check(self) -> None:
        ids = [str(i) for i in read_parquet(self.transfer_path, columns=["id"]).column("id").to_pylist()]
        y = read_labels(self.labels_path, ids, self.classes)
        if (self.view2_logits_path is None) == (self.recipe.pairing == "views"):
            raise ValueError("the views pairing needs the teacher's logits on the second views, and only it")
        for path in filter(None, (self.logits_path, self.view2_logits_path)):
            if self._teacher(path, ids).shape != y.shape:
                raise ValueError(f"{path}: the teacher's logits do not match the labels {tuple(y.shape)}")

    def load(self, spec: InputSpec, device: torch.device):
        ids, images = load_transfer_images(self.transfer_path, spec)
        images = images.to(device)
        y = read_labels(self.labels_path, ids, self.classes).to(device)
        t = self._teacher(self.logits_path, ids).to(device)
        t2 = None if self.view2_logits_path is None else self._teacher(self.view2_logits_path, ids).to(device)
        views = self.recipe.pairing == "views"
        return images, distill_loss_fn(self.recipe, y, t, images=images if views else None, teacher_view2=t2)

    def describe(self) -> dict[str, Any]:
        return {f"recipe.{k}": v for k, v in self.recipe.to_dict().items()}


def worker_path(path: PathLike) -> str:
    """``path`` as Ray workers read it: a URI as is, a local path made absolute (they run elsewhere)."""
    return str(path) if is_uri(path) else os.path.abspath(path)


def multilabel_student_stage(
    s: Session,
    spec: ModelSpec,
    schedule: Schedule,
    data: TrainingData,
    inputs: Sequence[Any],
    *,
    experiment: str,
    run_label: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    num_workers: int | None,
    use_gpu: bool | None,
) -> StageResult:
    """Stage: a multi-label student on Ray Train in `<run>/train/student-<fp>/student`, with its MLflow
    run; ``inputs`` are the fingerprints of what ``data`` reads. No eval set goes to the runner (its
    per-epoch accuracy is top-1); the sidecar keeps the training metrics and the MLflow run id."""
    net = replace(spec, metadata={})
    fp = fingerprint(
        "student", STUDENT_VERSION, *inputs, net.to_dict(), schedule, data.describe(), num_workers
    )
    run_name = f"student-{fp[:12]}"

    def train(path: Any, _fp: str) -> dict[str, Any]:
        s.start_ray()
        run_id = s.open_mlflow_run(
            experiment, run_label, tags={**tags, "zoo.run_dir": s.run.display}, params=params
        )
        result = train_network(
            spec, schedule, data, storage_path=s.run.train_storage, run_name=run_name,
            num_workers=num_workers, use_gpu=use_gpu, mlflow_tracking_uri=s.tracking_uri,
            mlflow_run_id=run_id, output_name="student",
        )  # fmt: skip
        return {**json.loads(json.dumps(result.metrics, default=str)), "mlflow_run_id": run_id}

    path = join(s.run.train_storage, run_name, "student")
    out = s.run.stage("student", path, STUDENT_VERSION, [fp], train, sidecar=True)
    if not (out.value or {}).get("mlflow_run_id"):
        raise JobError(f"{out.path}.json has no MLflow run id: rerun with --force")
    return out


# ------------------------------------------------------------------------------------------ evaluation
def predict_scores(model_dir: PathLike, images: Any, batch_size: int = 512) -> tuple[np.ndarray, ModelSpec]:
    """sigmoid of the logits of the model in ``model_dir`` on ``images``: [n, C] in its output order."""
    with local_copy(model_dir) as d:
        model, spec = load_model(d)
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(model(preprocess(images[i : i + batch_size], spec.input)).sigmoid().numpy())
    return np.concatenate(out), spec


def evaluate_multilabel(
    model_dir: PathLike,
    data: MultilabelSet,
    space: LabelSpace | None = None,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, dict[str, float]]:
    """Paper 004's metrics (`zoo.multilabel.multilabel_metrics`) of a multi-label model on ``data``, at
    the model's own thresholds: {"all": {mAP, CP, CR, CF1, OP, OR, OF1}, group: {...}} for each class
    group (indices into ``data.classes``). With ``space`` the model is that space's only teacher, and its
    outputs are laid on the space's classes first (a teacher's output order is its own)."""
    scores, spec = predict_scores(model_dir, data.images)
    thresholds = np.asarray(spec.thresholds, dtype=np.float64)
    if space is not None:
        scores = space.to_union([torch.from_numpy(scores)])[:, 0].numpy()
        thresholds = space.to_union([torch.from_numpy(thresholds[None, :])])[0, 0].numpy()
    if scores.shape[1] != data.targets.shape[1]:
        raise ValueError(f"the model has {scores.shape[1]} outputs for {data.targets.shape[1]} classes")
    out = {"all": multilabel_metrics(scores, data.targets, threshold=thresholds)}
    for name, cols in (groups or {}).items():
        cols = list(cols)
        out[name] = multilabel_metrics(scores[:, cols], data.targets[:, cols], threshold=thresholds[cols])
    return out


def _evaluate(
    cfg: DistillMultilabelConfig, s: Session, inp: MultilabelInputs, stages: dict[str, StageResult]
) -> tuple[JobResult, dict[str, Any]]:
    """The job's result with its metric table (the student's and the teacher's metrics on the test split,
    the student's on the validation split when there is one) and the lineage to register."""
    t = inp.teacher
    res = JobResult(
        name=cfg.name, run_dir=s.run.root, classes=list(inp.space.classes), groups={}, recipe=inp.recipe,
        teachers=[{**t.lineage(), "arch": t.spec.arch, "classes": t.spec.classes}],
        schedule=inp.schedule, arch=cfg.arch, selected_by="the config", eval_source=_source(cfg.data, "test"),
        stages=stages, mlflow_run_id=stages["student"].value["mlflow_run_id"], tracking_uri=s.tracking_uri,
        kind="Multi-label student",
    )  # fmt: skip
    student = evaluate_multilabel(stages["student"].path, inp.test)["all"]
    teacher = evaluate_multilabel(t.model_dir, inp.test, space=inp.space)["all"]
    res.table = {
        f"student ({inp.recipe.method})": {k: student[k] for k in SHOWN},
        f"teacher {t.name}": {k: teacher[k] for k in SHOWN},
    }
    metrics = {**student, **{f"teacher_{k}": v for k, v in teacher.items()}}
    if inp.val is not None:
        val = evaluate_multilabel(stages["student"].path, inp.val)["all"]
        res.table[f"student ({inp.recipe.method}), val split"] = {k: val[k] for k in SHOWN}
        res.val_source, res.val_accuracy = _source(cfg.data, "val"), val["mAP"]
        metrics.update({f"val_{k}": v for k, v in val.items()})
    lineage = {
        "teachers": [t.lineage()],
        "method": inp.recipe.method,
        "mode": inp.recipe.mode,
        "temperature": inp.recipe.tau,
        "recipe": inp.recipe.to_dict(),
        "schedule": inp.schedule.to_dict(),
        "transfer_fingerprint": stages["transfer"].value,
        "classes": list(inp.space.classes),
        "metrics": metrics,
        "mlflow_run_id": res.mlflow_run_id,
        "eval_source": res.eval_source,
    }
    return res, lineage


def _source(data_dir: str, split: str) -> str:
    return f"{data_dir} ({split})"


# ------------------------------------------------------------------------------------------ registration
def register_multilabel(
    s: Session,
    name: str,
    student: StageResult,
    lineage: dict[str, Any],
    chosen_on: MultilabelSet,
    metric: str = METRIC,
) -> StageResult:
    """Stage: the student registered as a version of ``name`` (a multi-label spec: the registry tags it
    task=multilabel) with its lineage; `champion` moves only when its ``metric`` (in the lineage's
    metrics) on the same set ``chosen_on`` beats the champion's: the validation set when the job has
    one, else the test set. A rerun that changes nothing registers nothing (`registration.json`)."""
    eval_fp = labelled_fingerprint(chosen_on)

    return registration_stage(
        s, name, student, lineage, metric=metric, eval_fingerprint=eval_fp, inputs=[eval_fp, metric]
    )
