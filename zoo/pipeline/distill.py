"""Cross-task distillation (`jobs/distill.py`): a student for a labelled task, taught by one zoo teacher
whose classes may differ from the task's (paper 002, Sec. 4, Alg. 2).

    result = run_distill(cfg)      # cfg: zoo.config.DistillConfig

A sequence of stages, each writing under the run directory and skipped on a rerun when its inputs are
unchanged (`zoo.pipeline.cache`):

0. inputs, all checked before Ray starts: the task (a labelled ImageFolder or Parquet, >= 2 classes),
   the val and eval sets over its classes, the teacher (resolved in the zoo, loaded, split into features
   and head by `zoo.architectures.split_head`, run on one image of each shape of the task), the method
   (standard KD when the teacher's classes are the task's, else Eq. 11) and the student's network;
1. transfer.parquet: the task's images (`zoo.pipeline.transfer`);
2. logits.parquet and features.parquet: the teacher on the task's images, with Ray Data;
3. cost.json: the cost matrix M [m, n] of Eq. 7 from the teacher's head (Eq. 8) and the class centres of
   its features of the task's images (Eq. 6), `zoo.assess.cost_matrix`;
4. the student on Ray Train (`train_network` on `CrossTaskData`: the loss of `zoo.crosstask.loss_fn`);
5. evaluation (all classes; those shared with the teacher; those new to it), registration with the
   lineage (teacher, method, lambda, tau, eps, normalisation), summary.json and the printed table.

With ``--teacher none`` stages 2-3 are skipped and the same student trains on cross-entropy alone: the
baseline the distilled student is compared with.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from mlflow.tracking import MlflowClient

from zoo.architectures import split_head
from zoo.artifacts import InputSpec, ModelSpec, load_model, preprocess
from zoo.assess import class_centres, cost_matrix
from zoo.config import DistillConfig
from zoo.crosstask import crosstask_loss_fn, kd_loss_fn
from zoo.data import ImageDecodeError, decode_image, read_image_folder
from zoo.labels import LabelSpace, LabelSpaceError, build_label_space, normalize_class_name
from zoo.pipeline import JobError
from zoo.pipeline.cache import RunDir, StageResult, fingerprint
from zoo.pipeline.datasets import LabelledSet, read_labelled_folder
from zoo.pipeline.evaluation import evaluate_model
from zoo.pipeline.inference import inference_stage, read_features, read_logits
from zoo.pipeline.make_zoo import DEMO_ZOO, ensure_demo_zoo
from zoo.pipeline.registration import registration_stage
from zoo.pipeline.session import Session
from zoo.pipeline.storage import join, local_copy, read_parquet, read_text, write_json_atomic
from zoo.pipeline.teachers import Teacher, TeacherError, label_space, parse_teacher, resolve_teachers
from zoo.pipeline.training import train_network
from zoo.pipeline.transfer import (
    _column_bytes,
    _image_column,
    load_transfer_images,
    read_transfer_ids,
    transfer_stage,
)
from zoo.train import LossFn, Schedule, classification_loss

__all__ = [
    "CrossTaskData",
    "DistillInputs",
    "DistillResult",
    "check_inputs",
    "class_key",
    "cost_stage",
    "read_labelled",
    "run_distill",
    "task_input_spec",
]

STUDENT_VERSION = 1
COST_VERSION = 1
LABEL_COLUMNS = ("label", "labels", "class")
METHOD_TEXT = {
    "crosstask": "Eq. 11 (cross-entropy + Sinkhorn distance to the teacher, paper 002)",
    "kd": "standard KD (equal label sets, paper 002 Sec. 6.1.4)",
    "none": "no teacher (cross-entropy only: the baseline)",
}


def class_key(name: str) -> str:
    """How a task's class is matched with a teacher's: `normalize_class_name`, with "/" read as a space
    (a directory name cannot hold "/": "T-shirt_top" is the teacher's "T-shirt/top")."""
    return normalize_class_name(name.replace("/", " "))


# ------------------------------------------------------------------------------------- training data
@dataclass(frozen=True)
class CrossTaskData:
    """What each Ray Train worker trains on (a `zoo.pipeline.training.TrainingData`): the task's images
    (transfer.parquet), their labels (indices into the student's classes), and for a teacher its logits
    (logits.parquet: ``teacher_columns`` pick and order them: the head's order for Eq. 11, the student's
    for KD) and the cost matrix [m, n] (Eq. 11 only)."""

    images_path: str
    labels: tuple[int, ...]
    method: str  # crosstask | kd | none
    logits_path: str | None = None
    teacher_columns: tuple[int, ...] = ()
    cost: tuple[tuple[float, ...], ...] = ()
    lam: float = 0.0
    tau: float = 3.0
    eps: float = 0.1
    n_iter: int = 100
    normalisation: str | None = None
    teacher: str | None = None  # name:version
    task_fingerprint: str = ""

    def check(self) -> None:
        ids = [str(i) for i in read_transfer_ids(self.images_path)]
        if len(ids) != len(self.labels):
            raise ValueError(f"{self.images_path} holds {len(ids)} images for {len(self.labels)} labels")
        if self.method == "none":
            return
        logit_ids = [str(i) for i in read_parquet(self.logits_path, columns=["id"]).column("id").to_pylist()]
        if logit_ids != ids:
            raise ValueError(
                f"{self.logits_path} does not hold the task's images in order: rerun with --force"
            )

    def load(self, spec: InputSpec, device: torch.device) -> tuple[torch.Tensor, LossFn]:
        _, images = load_transfer_images(self.images_path, spec)
        y = torch.tensor(self.labels, dtype=torch.int64, device=device)
        if self.method == "none":
            return images.to(device), classification_loss(y)
        z = read_logits(self.logits_path).logits[:, 0, list(self.teacher_columns)].to(device)
        if self.method == "kd":
            return images.to(device), kd_loss_fn(z, y, self.lam, self.tau)
        cost = torch.tensor(self.cost, dtype=torch.float32, device=device)
        return images.to(device), crosstask_loss_fn(z, y, cost, self.lam, self.tau, self.eps, self.n_iter)

    def describe(self) -> dict[str, Any]:
        d = {"method": self.method, "teacher": self.teacher or "none", "task": self.task_fingerprint[:16]}
        if self.method != "none":
            d.update({"lambda": self.lam, "tau": self.tau})
        if self.method == "crosstask":
            cost = hashlib.sha256(json.dumps(self.cost).encode()).hexdigest()[:16]
            d.update(
                {"eps": self.eps, "n_iter": self.n_iter, "normalisation": self.normalisation, "cost": cost}
            )
        return d


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class DistillInputs:
    """Everything the job needs, checked before any compute."""

    teacher: Teacher | None
    method: str  # crosstask | kd | none
    lam: float
    task: LabelledSet  # the student's labelled training images; labels index space.classes
    space: LabelSpace  # the student's classes (the task's)
    val_set: LabelledSet | None
    eval_set: LabelledSet
    spec: ModelSpec  # the student's network
    schedule: Schedule
    shared: list[int] = field(default_factory=list)  # student classes the teacher knows
    teacher_order: list[int] | None = None  # KD: the teacher's output of each student class

    @property
    def classes(self) -> list[str]:
        return list(self.space.classes)

    def groups(self) -> dict[str, list[int]]:
        """Evaluation groups: the classes the teacher knows and those it does not (when both exist)."""
        new = [j for j in range(len(self.classes)) if j not in self.shared]
        if self.teacher is None or not self.shared or not new:
            return {}
        return {"shared with teacher": list(self.shared), "new to teacher": new}


def check_inputs(cfg: DistillConfig, s: Session) -> DistillInputs:
    """The task, val and eval sets, the teacher and the method, the student: every input of the job,
    checked before any compute (JobError naming the fix otherwise)."""
    task, space = read_labelled(cfg.task, "--task", cfg)
    if space.num_classes < 2:
        raise JobError(
            f"--task {cfg.task} has one class ({space.classes[0]!r}): a classifier needs at least 2; "
            "add a directory of images per class"
        )
    s.log(f"[task] {len(task)} labelled images of {space.num_classes} classes: {list(space.classes)}")
    val = read_labelled(cfg.val, "--val", cfg, space)[0] if cfg.val else None
    ev = read_labelled(cfg.eval, "--eval", cfg, space)[0] if cfg.eval else val
    if ev is None:
        raise JobError(
            "no evaluation set: pass --eval DIR (or --val DIR), labelled images of the task's classes "
            "held out of --task (the report and the champion are decided on it)"
        )
    s.log(f"[eval] {len(ev)} labelled images from {ev.source}")
    teacher = _resolve_teacher(cfg, s)
    method, shared, order = _method(cfg, teacher, list(space.classes))
    if teacher is not None:
        _check_teacher(teacher, task)
        s.log(
            f"[teacher] {teacher.name} v{teacher.version} ({teacher.spec.arch}), classes "
            f"{list(teacher.spec.classes)}; {len(shared)} of the task's classes shared"
        )
    s.log(f"[method] {method}: {METHOD_TEXT[method]}")
    spec_in = InputSpec(**cfg.student_input) if cfg.student_input else task_input_spec(task.images)
    return DistillInputs(
        teacher=teacher,
        method=method,
        lam=cfg.lam_for(method),
        task=task,
        space=space,
        val_set=val,
        eval_set=ev,
        spec=cfg.student_spec(space.classes, spec_in),
        schedule=cfg.schedule(),
        shared=shared,
        teacher_order=order,
    )


def read_labelled(
    path: str, flag: str, cfg: DistillConfig, space: LabelSpace | None = None
) -> tuple[LabelledSet, LabelSpace]:
    """A labelled set (ImageFolder, or Parquet with an image and a label column) over ``space``'s
    classes, or, without ``space``, over its own classes (the task's, which become the student's)."""
    p = Path(path)
    if not p.exists():
        raise JobError(f"{flag} {path} does not exist; pass a labelled ImageFolder DIR/<class>/<image>")
    try:
        if p.is_file() and p.suffix.lower() in (".parquet", ".pq"):
            images, names = _read_labelled_parquet(p, flag, cfg.image_column, cfg.label_column)
            space = space or build_label_space([sorted(set(names))], ["task"])
            unknown = sorted({n for n in names if not _in(space, n)})
            if unknown:
                raise JobError(f"{flag} {path}: classes {unknown} are not the task's {list(space.classes)}")
            return LabelledSet(images, [space.index_of(n) for n in names], f"Parquet {p}"), space
        if space is None:
            space = build_label_space([read_image_folder(p)[2]], ["task"])
        return read_labelled_folder(p, space, flag), space
    except (LabelSpaceError, NotADirectoryError, ValueError) as e:
        if isinstance(e, JobError):
            raise
        raise JobError(f"{flag} {path}: {e}") from None


def _in(space: LabelSpace, name: str) -> bool:
    try:
        space.index_of(name)
    except KeyError:
        return False
    return True


def _read_labelled_parquet(
    path: Path, flag: str, image_column: str | None, label_column: str | None
) -> tuple[list[np.ndarray], list[str]]:
    """Decoded images and their class names (str) from a Parquet file's image and label columns."""
    schema = pq.read_schema(path)
    col = _image_column(schema, image_column, path)
    lab = label_column or next((c for c in LABEL_COLUMNS if c in schema.names), None)
    if lab is None or lab not in schema.names:
        raise JobError(
            f"{flag} {path}: no label column (looked for {label_column or list(LABEL_COLUMNS)}; columns "
            f"{schema.names}); name it with --label-column"
        )
    t = pq.read_table(path, columns=[col, lab])
    images, bad = [], []
    for i, data in enumerate(_column_bytes(t.column(col), col, path)):
        try:
            images.append(decode_image(data if data is not None else b""))
        except ImageDecodeError as e:
            bad.append(f"row {i}: {e}")
    if bad:
        raise JobError(f"{flag} {path}: {len(bad)} images cannot be decoded, first: {bad[:3]}")
    return images, [str(v) for v in t.column(lab).to_pylist()]


def _resolve_teacher(cfg: DistillConfig, s: Session) -> Teacher | None:
    """The teacher in the zoo, downloaded and loaded (None for --teacher none). A teacher of the demo
    zoo (fmnist-demo-t<i>) builds the demo zoo first when the zoo holds none of it."""
    if not cfg.has_teacher:
        return None
    try:
        return resolve_teachers(s.registry, names=[cfg.teacher], log=s.log)[0]
    except TeacherError:
        name = parse_teacher(cfg.teacher)[0]
        if not (
            cfg.build_demo_zoo and name.startswith(f"{DEMO_ZOO}-t") and not s.registry.list({"zoo": DEMO_ZOO})
        ):
            raise
    s.log(f"[teacher] {name} is a teacher of the demo zoo, which is absent: building {DEMO_ZOO} first")
    s.start_ray()
    ensure_demo_zoo(DEMO_ZOO, tracking_uri=s.tracking_uri)
    return resolve_teachers(s.registry, names=[cfg.teacher], log=s.log)[0]


def _method(
    cfg: DistillConfig, teacher: Teacher | None, classes: list[str]
) -> tuple[str, list[int], list[int] | None]:
    """(method, the student classes the teacher knows, KD's teacher output per student class)."""
    if teacher is None:
        return "none", [], None
    t_keys = [class_key(c) for c in teacher.spec.classes]
    s_keys = [class_key(c) for c in classes]
    shared = [j for j, k in enumerate(s_keys) if k in t_keys]
    equal = sorted(t_keys) == sorted(s_keys)
    method = cfg.method if cfg.method != "auto" else ("kd" if equal else "crosstask")
    if method == "kd" and not equal:
        raise JobError(
            f"--method kd needs the teacher's classes to be the task's: teacher {teacher.name} has "
            f"{list(teacher.spec.classes)}, the task {classes}; use --method crosstask (or auto)"
        )
    return method, shared, ([t_keys.index(k) for k in s_keys] if method == "kd" else None)


def _check_teacher(teacher: Teacher, task: LabelledSet) -> None:
    """The teacher splits into features + head (Eq. 6-8 need both) and takes the task's images: one
    image of each shape, converted to its input contract (`preprocess`), through its embedding and head."""
    model, spec = load_model(teacher.model_dir)
    try:
        embed, head = split_head(model.eval())
    except ValueError as e:
        raise JobError(
            f"teacher {teacher.name} v{teacher.version} ({spec.arch}) cannot be split into features and a "
            f"linear head, which the cost matrix needs (paper 002 Eq. 6-8): {e}. Pick another teacher"
        ) from None
    firsts: dict[tuple[int, ...], int] = {}
    for i, im in enumerate(task.images):
        firsts.setdefault(tuple(np.shape(im)), i)
    for shape, i in firsts.items():
        try:
            with torch.inference_mode():
                out = head(embed(preprocess([np.asarray(task.images[i])], spec.input)))
            if out.shape != (1, len(spec.classes)) or not bool(torch.isfinite(out).all()):
                raise ValueError(
                    f"its output is {tuple(out.shape)}, finite={bool(torch.isfinite(out).all())}"
                )
        except Exception as e:  # any failure to run the teacher on this image is the user's to fix
            raise JobError(
                f"the task's images of shape {shape} cannot be given to teacher {teacher.name} (input "
                f"{spec.input.channels}x{spec.input.height}x{spec.input.width}): {e}. Convert them"
            ) from None


def task_input_spec(images: Sequence[np.ndarray] | np.ndarray) -> InputSpec:
    """The student's input contract from the task's images: their most common size, RGB when any image
    is in colour (else grey), normalised with the images' per-channel mean and standard deviation."""
    sizes = Counter(tuple(np.shape(im)[:2]) for im in images)
    (h, w), _ = sizes.most_common(1)[0]
    c = 3 if any(np.ndim(im) == 3 and np.shape(im)[2] >= 3 for im in images) else 1
    x = preprocess(
        list(images) if not isinstance(images, np.ndarray) else images,
        InputSpec(c, h, w, (0.0,) * c, (1.0,) * c),
    )
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return InputSpec(c, h, w, tuple(map(float, mean)), tuple(map(float, std)))


# ------------------------------------------------------------------------------------------ stages
def run_distill(cfg: DistillConfig, log: Callable[[str], None] = print) -> DistillResult:
    """Run the whole job for ``cfg``; returns what it did and prints the summary table. Ray starts only
    when a stage needs it (joining the job's cluster under `ray job submit`)."""
    t0 = time.perf_counter()
    with Session(
        cfg.run_path,
        tracking_uri=cfg.tracking_uri,
        force=cfg.force,
        log=log,
        ray_address=cfg.ray_address,
        num_cpus=cfg.num_cpus,
    ) as s:
        inp = check_inputs(cfg, s)
        ids = [f"task-{i:06d}" for i in range(len(inp.task))]
        stages = {"transfer": transfer_stage(s.run, (inp.task.images, ids))}
        cost = None
        if inp.teacher is not None:
            stages["inference"] = inference_stage(
                s.run,
                stages["transfer"],
                [inp.teacher],
                label_space([inp.teacher]),
                features=True,
                start_ray=s.start_ray,
                batch_size=cfg.inference_batch_size,
                use_gpu=cfg.use_gpu,
                concurrency=cfg.inference_concurrency,
            )
            if inp.method == "crosstask":
                stages["cost"] = cost_stage(s.run, inp, stages["inference"], cfg.normalisation)
                cost = stages["cost"].value
        data = training_data(cfg, s.run, inp, stages["transfer"].value, cost)
        stages["student"] = student_stage(cfg, s, inp, data, stages["transfer"])
        res = DistillResult(
            cfg=cfg, inp=inp, run_dir=s.run.display, stages=stages, cost=cost, tracking_uri=s.tracking_uri
        )
        res.accuracy = evaluate_model(stages["student"].path, inp.eval_set, inp.groups())
        stages["register"] = register_stage(cfg, s, inp, res)
        res.seconds = time.perf_counter() - t0
        res.publish(s.run.summary, s.client)
        log(res.summary)
        return res


def cost_stage(run: RunDir, inp: DistillInputs, inference: StageResult, normalisation: str) -> StageResult:
    """Stage: `<run>/cost.json`, M [m, n] (Eq. 7) between the teacher's classes (its head's normalised rows,
    Eq. 8) and the task's (the class centres of the teacher's features of the task's images, Eq. 6)."""
    teacher, labels = inp.teacher, inp.task.labels

    def compute(path: Any, fp: str) -> None:
        feats = read_features(run.features)
        if teacher.name not in feats.features:
            raise JobError(f"teacher {teacher.name} gave no features: {feats.missing.get(teacher.name)}")
        f = feats.features[teacher.name].double()
        model, _ = load_model(teacher.model_dir)
        centres = class_centres(f, torch.as_tensor(labels), len(inp.classes))
        m = cost_matrix(split_head(model)[1], centres, normalisation)
        write_json_atomic(
            {
                "fingerprint": fp,
                "teacher": teacher.lineage(),
                "teacher_classes": list(teacher.spec.classes),
                "student_classes": inp.classes,
                "normalisation": normalisation,
                "cost": m.tolist(),
            },
            path,
        )

    labels_fp = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    out = run.stage(
        "cost", "cost.json", COST_VERSION, [inference.fingerprint, labels_fp, normalisation], compute
    )
    return replace(out, value=json.loads(read_text(out.path))["cost"])


def training_data(
    cfg: DistillConfig, run: RunDir, inp: DistillInputs, task_fp: str, cost: list | None
) -> CrossTaskData:
    """The student's `CrossTaskData`: paths made absolute (workers may run elsewhere)."""
    absolute = lambda p: str(p) if run.is_remote else os.path.abspath(p)  # noqa: E731
    data = CrossTaskData(
        absolute(run.transfer), tuple(int(v) for v in inp.task.labels), inp.method, task_fingerprint=task_fp
    )
    if inp.teacher is None:
        return data
    t = inp.teacher
    union = label_space([t]).index[0]  # logits.parquet column of each teacher output
    columns = union if inp.method == "crosstask" else [union[k] for k in inp.teacher_order]
    return replace(
        data,
        logits_path=absolute(run.logits),
        teacher_columns=tuple(columns),
        lam=inp.lam,
        tau=cfg.tau,
        eps=cfg.eps,
        n_iter=cfg.n_iter,
        teacher=f"{t.name}:{t.version}",
        cost=tuple(tuple(r) for r in cost) if cost is not None else (),
        normalisation=cfg.normalisation if inp.method == "crosstask" else None,
    )


def student_stage(
    cfg: DistillConfig, s: Session, inp: DistillInputs, data: CrossTaskData, transfer: StageResult
) -> StageResult:
    """Stage: the student on Ray Train in `<run>/train/student-<fp>/student`, with the job's MLflow run
    (per-epoch curves on the val set, else the eval set). Its sidecar keeps the metrics and the run id."""
    curve = inp.val_set if inp.val_set is not None else inp.eval_set
    net = replace(inp.spec, metadata={})
    inputs = [
        net.to_dict(),
        inp.schedule,
        data.describe(),
        transfer.value,
        curve.fingerprint(),
        cfg.augment,
        cfg.num_workers,
        cfg.use_gpu,
    ]
    run_name = f"student-{fingerprint('student', STUDENT_VERSION, *inputs)[:12]}"
    made = {"role": "student", "method": inp.method, "teacher": data.teacher or "none"}

    def train(path: Any, _fp: str) -> dict[str, Any]:
        s.start_ray()
        run_id = s.open_mlflow_run(
            cfg.experiment,
            f"{cfg.name}-{inp.method}",
            tags={"zoo.job": "distill", "zoo.run_dir": s.run.display, "teacher": data.teacher or "none"},
            params={f"job.{k}": v for k, v in cfg.to_dict().items() if v is not None and k != "force"},
        )
        result = train_network(
            replace(inp.spec, metadata={**inp.spec.metadata, **made}),
            inp.schedule,
            data,
            storage_path=s.run.train_storage,
            run_name=run_name,
            eval_set=curve,
            augment=cfg.augment,
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            mlflow_tracking_uri=s.tracking_uri,
            mlflow_run_id=run_id,
            output_name="student",
        )
        return {**json.loads(json.dumps(result.metrics, default=str)), "mlflow_run_id": run_id}

    out = s.run.stage(
        "student",
        join(s.run.train_storage, run_name, "student"),
        STUDENT_VERSION,
        inputs,
        train,
        sidecar=True,
    )
    if not (out.value or {}).get("mlflow_run_id"):
        raise JobError(f"{out.path}.json has no MLflow run id: rerun with --force")
    return out


def register_stage(cfg: DistillConfig, s: Session, inp: DistillInputs, res: DistillResult) -> StageResult:
    """Stage: the student registered as a version of ``cfg.name`` with its lineage (teacher, method,
    lambda, tau, eps, normalisation); `champion` moves only when it beats the champion on the same eval
    set. A rerun that changes nothing registers nothing (`registration.json`)."""
    student = res.stages["student"]
    lineage = res.lineage()

    return registration_stage(
        s, cfg.name, student, lineage, metric="eval_accuracy", eval_fingerprint=inp.eval_set.fingerprint()
    )


# ------------------------------------------------------------------------------------------ report
RULE, THIN = "=" * 78, "-" * 78


@dataclass
class DistillResult:
    """What the job did: its inputs, stages, the cost matrix, the student's accuracy on the eval set (all
    classes and per group), the registration, where everything is, and the printed summary."""

    cfg: DistillConfig
    inp: DistillInputs
    run_dir: str
    stages: dict[str, StageResult]
    cost: list[list[float]] | None = None
    tracking_uri: str | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    summary: str = ""

    @property
    def registered(self) -> dict[str, Any]:
        return self.stages["register"].value if "register" in self.stages else {}

    @property
    def mlflow_run_id(self) -> str:
        return self.stages["student"].value["mlflow_run_id"]

    def hyper(self) -> dict[str, Any]:
        """The method's settings (what the lineage and the summary record)."""
        c, m = self.cfg, self.inp.method
        out: dict[str, Any] = {"lambda": self.inp.lam} if m != "none" else {}
        out.update({"tau": c.tau} if m != "none" else {})
        out.update(
            {"eps": c.eps, "n_iter": c.n_iter, "normalisation": c.normalisation} if m == "crosstask" else {}
        )
        return out

    def lineage(self) -> dict[str, Any]:
        """What `register_student` records with the weights and as registry tags."""
        t, inp = self.inp.teacher, self.inp
        student = self.stages["student"]
        return {
            "teachers": [t.lineage()] if t is not None else [],
            "teacher": f"{t.name}:{t.version}" if t is not None else "none",
            "method": inp.method,
            "mode": self.cfg.normalisation if inp.method == "crosstask" else inp.method,
            "temperature": self.cfg.tau,
            **self.hyper(),
            "transfer_fingerprint": self.stages["transfer"].value,  # the task's images
            "task_source": inp.task.source,
            "classes": inp.classes,
            "shared_classes": [inp.classes[j] for j in inp.shared],
            "schedule": inp.schedule.to_dict(),
            "student_fingerprint": student.fingerprint,
            "metrics": {
                "eval_accuracy": self.accuracy["all"],
                **{f"eval_accuracy[{k}]": v for k, v in self.accuracy.items()},
                **{k: v for k, v in (student.value or {}).items() if isinstance(v, (int, float))},
            },
            "mlflow_run_id": self.mlflow_run_id,
            "eval_source": inp.eval_set.source,
        }

    def to_dict(self) -> dict[str, Any]:
        """`summary.json`."""
        t = self.inp.teacher
        return {
            "teacher": None if t is None else {**t.lineage(), "arch": t.spec.arch, "classes": t.spec.classes},
            "classes": self.inp.classes,
            "shared_classes": [self.inp.classes[j] for j in self.inp.shared],
            "method": self.inp.method,
            **self.hyper(),
            "cost": self.cost,
            "schedule": self.inp.schedule.to_dict(),
            "arch": self.cfg.arch,
            "task_source": self.inp.task.source,
            "eval_source": self.inp.eval_set.source,
            "student_accuracy": self.accuracy,
            "registered": self.registered,
            "mlflow_run_id": self.mlflow_run_id,
            "tracking_uri": self.tracking_uri,
            "seconds": round(self.seconds, 1),
            "stages": {
                k: {"skipped": v.skipped, "seconds": round(v.seconds, 2)} for k, v in self.stages.items()
            },
        }

    def format(self) -> str:
        """The table printed at the end: teacher, task classes, method, accuracies, where to look."""
        inp, t = self.inp, self.inp.teacher
        shared = [inp.classes[j] for j in inp.shared]
        head = f"teacher {t.name} v{t.version} ({t.spec.arch})" if t is not None else "no teacher"
        lines = ["", RULE, f"Student {self.cfg.name!r}: {len(inp.classes)} classes, {head}", THIN]
        if t is not None:
            lines.append(f"{'teacher classes':<18}{', '.join(t.spec.classes)}")
        known = f"  ({len(shared)} shared with the teacher)" if t is not None else ""
        lines.append(f"{'task classes':<18}{', '.join(inp.classes)}{known}")
        settings = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.hyper().items()
        )
        lines.append(f"{'method':<18}{inp.method}: {METHOD_TEXT[inp.method]}")
        lines.append(
            f"{'':<18}{settings + '; ' if settings else ''}student {self.cfg.arch}, "
            f"{inp.schedule.epochs} epochs, {len(inp.task)} labelled images"
        )
        lines += self._cost_lines() + ["", self._accuracy_table(), THIN]
        reg = self.registered
        stages = ", ".join(
            f"{k} {'skipped' if v.skipped else f'{v.seconds:.0f}s'}" for k, v in self.stages.items()
        )
        lines += [
            f"stages: {stages}; total {self.seconds:.0f}s",
            "where to look:",
            f"  run directory     {self.run_dir}  (summary.json{', cost.json' if self.cost else ''})",
            f"  MLflow            {self.tracking_uri}  run {self.mlflow_run_id}",
            f"  registered model  {reg.get('uri')}  champion: {'yes' if reg.get('champion') else 'no'} "
            f"({reg.get('decision', '')})",
        ]
        if t is not None:
            sets = "".join(f" --{k} {v}" for k, v in (("val", self.cfg.val), ("eval", self.cfg.eval)) if v)
            base = f"--teacher none --task {self.cfg.task}{sets} --name {self.cfg.name}-none"
            lines.append(f"  baseline          python jobs/distill.py {base}")
        return "\n".join([*lines, RULE])

    def _cost_lines(self) -> list[str]:
        """For each task class, the teacher class the cost matrix finds nearest (Eq. 7)."""
        if not self.cost:
            return []
        m = np.asarray(self.cost)
        near = [
            f"{c} -> {self.inp.teacher.spec.classes[int(m[:, j].argmin())]} ({m[:, j].min():.2f})"
            for j, c in enumerate(self.inp.classes)
        ]
        return [f"{'nearest (cost)':<18}{'; '.join(near)}"]

    def _accuracy_table(self) -> str:
        cols = list(self.accuracy)
        sizes = {"all": len(self.inp.classes), **{k: len(v) for k, v in self.inp.groups().items()}}
        rows = [
            f"{'accuracy on eval':<20}" + "".join(f"{c:>22}" for c in cols),
            f"{'student':<20}" + "".join(f"{self.accuracy[c]:>22.4f}" for c in cols),
            f"{'(classes)':<20}" + "".join(f"{sizes.get(c, ''):>22}" for c in cols),
        ]
        return "\n".join(rows)

    def publish(self, summary_path: Any, client: MlflowClient) -> None:
        """summary.json, the final accuracies, the registered version and the summary (and cost.json) to
        the job's MLflow run, which is then closed."""
        self.summary = self.format()
        write_json_atomic(self.to_dict(), summary_path)
        run_id, now = self.mlflow_run_id, int(time.time() * 1000)
        for k, v in self.accuracy.items():
            client.log_metric(run_id, f"student.eval_accuracy.{k.replace(' ', '_')}", v, timestamp=now)
        reg = self.registered
        client.set_tag(run_id, "registered_model", f"{reg.get('name')}:{reg.get('version')}")
        with local_copy(summary_path) as f:
            client.log_artifact(run_id, str(f))
        if "cost" in self.stages:
            with local_copy(self.stages["cost"].path) as f:
                client.log_artifact(run_id, str(f))
        client.set_terminated(run_id)
