"""The assess job (`jobs/assess.py`, `zoo assess`): rank the zoo's teachers for a new labelled task
(paper 002, Sec. 5) without training a student per teacher.

    result = run_assess(AssessConfig(task="runs/fmnist-task", zoo="fmnist-demo"))
    result.top(3)                                   # the three best teachers' names, for jobs/unify.py

Stages, each skipped on a rerun when its inputs are unchanged (`zoo.pipeline.cache`):

0. inputs, all checked before Ray starts: the metrics, the task (a labelled ImageFolder, or a Parquet
   file with an image and a label column; at least 2 classes, no missing label), the teachers (named,
   or every teacher of a zoo; each loaded once, its last linear layer kept, or why it has none);
1. transfer.parquet: the task's images (`zoo.pipeline.transfer`), labels kept by image id;
2. per teacher, `teachers/<name>-v<version>/logits.parquet` and `features.parquet`: its logits and
   penultimate features on the task's images, with Ray Data (`zoo.pipeline.inference`), one pass and
   one cache entry per teacher, so a teacher added later does not recompute the others;
3. the scores of `zoo.assess.score_teacher` (Approximation II's Sinkhorn score, LogME, LEEP, NCE; a
   teacher without features is scored by LEEP and NCE and marked), the ranking (first metric ranks);
4. summary.json, ranking.png and the table in the run directory and in an MLflow run (every score,
   rank and second), and the table on the console.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from mlflow.entities import Metric

from zoo.architectures import split_head
from zoo.artifacts import load_model
from zoo.assess import (
    METRICS,
    NORMALISATIONS,
    TeacherScores,
    parse_metrics,
    rank_teachers,
    ranks,
    score_teacher,
)
from zoo.data import FASHION_MNIST_CLASSES, encode_png, list_images, load_fashion_mnist, read_image_folder
from zoo.pipeline import JobError
from zoo.pipeline.cache import StageResult
from zoo.pipeline.inference import inference_stage, read_features, read_logits
from zoo.pipeline.make_zoo import DEMO_ZOO
from zoo.pipeline.session import Session
from zoo.pipeline.storage import PathLike, atomic_path, is_uri, local_copy, write_json_atomic, write_text
from zoo.pipeline.teachers import Teacher, label_space, resolve_teachers
from zoo.pipeline.transfer import read_transfer_ids, transfer_stage

__all__ = [
    "AssessConfig",
    "AssessResult",
    "AssessTask",
    "AssessTeacher",
    "DEMO_TASK_CLASSES",
    "check_inputs",
    "format_ranking",
    "plot_ranking",
    "read_task",
    "run_assess",
    "write_demo_task",
]

DEMO_TASK_CLASSES = ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class AssessConfig:
    """What `run_assess` is asked: the task, the teachers (``teachers`` names, else every teacher of
    ``zoo``), the metrics (the first ranks), where to work, and the options of the Sinkhorn score
    (paper 002's distillation settings) and of Ray Data inference."""

    task: str | Path
    zoo: str = DEMO_ZOO
    teachers: tuple[str, ...] = ()
    metrics: tuple[str, ...] = METRICS
    top: int | None = None  # how many teachers `AssessResult.top` gives (None: all)
    run_dir: str | Path | None = None  # default runs/assess-<task name>
    tracking_uri: str | None = None
    experiment: str = "assess"
    force: bool = False
    label_column: str = "label"  # a Parquet task's columns
    image_column: str | None = None
    id_column: str | None = None
    tau: float = 3.0
    eps: float = 0.1
    n_iter: int = 100
    normalisation: str = "l2"
    l2: float = 1e-3
    batch_size: int = 256
    use_gpu: bool | None = None
    concurrency: int | None = None
    threads: int | None = None
    ray_address: str | None = None
    num_cpus: int | None = None
    plot: bool = True

    @property
    def task_name(self) -> str:
        path = Path(self.task)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem if path.is_file() else path.name) or "task"

    @property
    def run_path(self) -> str | Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / f"assess-{self.task_name}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AssessConfig:
        """From the options of `zoo.cli.add_assess_arguments` (jobs/assess.py and `zoo assess`)."""
        if not args.task:
            raise JobError("--task is required: a labelled ImageFolder DIR/<class>/<image> or a Parquet file")
        return cls(
            task=args.task,
            zoo=args.zoo,
            teachers=tuple(t.strip() for t in (args.teachers or "").split(",") if t.strip()),
            metrics=tuple(args.metrics.split(",")) if args.metrics else METRICS,
            top=args.top,
            run_dir=args.run_dir,
            tracking_uri=getattr(args, "tracking_uri", None),
            force=args.force,
            label_column=args.label_column,
            image_column=args.image_column,
            tau=args.tau,
            eps=args.eps,
            plot=not args.no_plot,
        )

    def sinkhorn_options(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "eps": self.eps,
            "n_iter": self.n_iter,
            "normalisation": self.normalisation,
            "l2": self.l2,
        }


@dataclass(frozen=True)
class AssessTask:
    """The labelled task: where its images are (an ImageFolder, or a Parquet file and its image and id
    columns), each image's label by id (an index into ``classes``)."""

    source: Path
    labels_by_id: Mapping[str, int]
    classes: tuple[str, ...]
    image_column: str | None = None
    id_column: str | None = None

    def counts(self) -> dict[str, int]:
        c = np.bincount(np.fromiter(self.labels_by_id.values(), np.int64), minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, c)}


@dataclass(frozen=True)
class AssessTeacher:
    """A teacher to score: as resolved in the zoo, its name as the ranking prints it (``label``), and
    the weight of its last linear layer [m, d] (None when its architecture cannot be split: why)."""

    teacher: Teacher
    label: str
    head: torch.Tensor | None
    no_features: str = ""


@dataclass
class AssessResult:
    """What the job did: the ranking (best first), each teacher's facts, where everything is."""

    task: AssessTask
    metrics: tuple[str, ...]
    ranking: list[TeacherScores]
    teachers: dict[str, AssessTeacher]
    inference: dict[str, StageResult]
    options: dict[str, Any]
    run_dir: str = ""
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    plot: str | None = None
    top_k: int | None = None
    seconds: float = 0.0
    table: str = ""

    def top(self, k: int | None = None) -> list[str]:
        """The names of the k best teachers (all when k is None), as `jobs/unify.py --teachers` takes them."""
        k = self.top_k if k is None else k
        return [self.teachers[r.name].label for r in self.ranking[:k]]

    def to_dict(self) -> dict[str, Any]:
        """`summary.json` (and what `zoo assess --json` prints)."""
        per_metric = {m: ranks(self.ranking, m) for m in self.metrics}
        rows = []
        for r in self.ranking:
            t = self.teachers[r.name]
            st = self.inference[r.name]
            rows.append(
                {
                    "name": r.name,
                    "version": t.teacher.version,
                    "label": t.label,
                    "arch": t.teacher.spec.arch,
                    "classes": list(t.teacher.spec.classes),
                    "scores": r.scores,
                    "ranks": {m: per_metric[m][r.name] for m in self.metrics},
                    "seconds": {
                        **{m: round(s, 4) for m, s in r.seconds.items()},
                        "inference": round(st.seconds, 2),
                    },
                    "inference_cached": st.skipped,
                    "note": r.note,
                }
            )
        return {
            "task": {
                "source": str(self.task.source),
                "images": len(self.task.labels_by_id),
                "classes": list(self.task.classes),
                "images_per_class": self.task.counts(),
            },
            "metrics": list(self.metrics),
            "ranked_by": self.metrics[0],
            "options": self.options,
            "ranking": rows,
            "top": self.top(),
            "run_dir": self.run_dir,
            "plot": self.plot,
            "mlflow_run_id": self.mlflow_run_id,
            "tracking_uri": self.tracking_uri,
            "seconds": round(self.seconds, 1),
        }


def run_assess(cfg: AssessConfig, log: Callable[[str], None] = print) -> AssessResult:
    """Run the whole job for ``cfg`` (module docstring); returns the result and logs the table.
    Ray starts only when a teacher's outputs are not cached yet."""
    t0 = time.perf_counter()
    with Session(
        cfg.run_path,
        tracking_uri=cfg.tracking_uri,
        force=cfg.force,
        log=log,
        ray_address=cfg.ray_address,
        num_cpus=cfg.num_cpus,
    ) as s:
        metrics, task, teachers = check_inputs(cfg, s)
        images = transfer_stage(s.run, task.source, image_column=task.image_column, id_column=task.id_column)
        labels = _labels_of(images, task)
        res = AssessResult(
            task,
            metrics,
            [],
            {t.teacher.name: t for t in teachers},
            {},
            cfg.sinkhorn_options(),
            run_dir=s.run.display,
            top_k=cfg.top,
        )
        results = []
        for k, t in enumerate(teachers):
            log(f"[assess] teacher {k + 1}/{len(teachers)}: {t.label} ({t.teacher.spec.arch})")
            res.inference[t.teacher.name], scores = _score(cfg, s, images, labels, t, metrics)
            results.append(scores)
        res.ranking = rank_teachers(results, metrics)
        res.seconds = time.perf_counter() - t0
        _publish(cfg, res, s)
        log(res.table)
        return res


# ------------------------------------------------------------------------------------------ inputs
def check_inputs(cfg: AssessConfig, s: Session) -> tuple[tuple[str, ...], AssessTask, list[AssessTeacher]]:
    """The metrics, the task and the teachers, checked before any compute (JobError otherwise)."""
    try:
        metrics = parse_metrics(cfg.metrics)
    except ValueError as e:
        raise JobError(f"--metrics: {e}") from None
    if cfg.top is not None and (isinstance(cfg.top, bool) or cfg.top < 1):
        raise JobError(f"--top must be a positive number of teachers; got {cfg.top}")
    _check_options(cfg)
    task = read_task(
        cfg.task, label_column=cfg.label_column, image_column=cfg.image_column, id_column=cfg.id_column
    )
    s.log(
        f"[task] {len(task.labels_by_id)} labelled images of {len(task.classes)} classes from {task.source}"
    )
    resolved = resolve_teachers(s.registry, names=cfg.teachers or None, zoo=cfg.zoo, log=s.log)
    labels = list(cfg.teachers) if cfg.teachers else [t.name for t in resolved]
    teachers = [_with_head(t, label) for t, label in zip(resolved, labels)]
    for t in teachers:
        if t.head is None:
            s.log(f"[teachers] {t.label}: no features ({t.no_features}); scored by leep, nce only")
    s.log(f"[teachers] {len(teachers)} teachers: {', '.join(t.label for t in teachers)}")
    return metrics, task, teachers


def _check_options(cfg: AssessConfig) -> None:
    for name in ("tau", "eps", "l2"):
        value = getattr(cfg, name)
        if not (isinstance(value, int | float) and 0 < value < float("inf")):
            raise JobError(f"--{name} must be a positive number; got {value!r}")
    if isinstance(cfg.n_iter, bool) or not isinstance(cfg.n_iter, int) or cfg.n_iter < 1:
        raise JobError(f"--n-iter must be a positive integer; got {cfg.n_iter!r}")
    if cfg.normalisation not in NORMALISATIONS:
        raise JobError(
            f"--normalisation must be one of {', '.join(NORMALISATIONS)}; got {cfg.normalisation!r}"
        )


def _with_head(t: Teacher, label: str) -> AssessTeacher:
    """The teacher with its last linear layer's weight (Eq. 8's centres), or why it has none."""
    model, _ = load_model(t.model_dir)
    try:
        _, head = split_head(model)
    except ValueError as e:
        return AssessTeacher(t, label.strip(), None, str(e))
    return AssessTeacher(t, label.strip(), head.weight.detach().to(torch.float64).clone())


def read_task(
    path: str | Path,
    *,
    label_column: str = "label",
    image_column: str | None = None,
    id_column: str | None = None,
) -> AssessTask:
    """The task's labels by image id, its classes and where its images are: a labelled ImageFolder
    (`path/<class>/**/<image>`, ids the relative paths) or a Parquet file with an image column and a
    ``label_column`` (class names, or integers; ids from ``id_column``/`id`, else the row numbers).
    JobError, naming the fix, for a missing path, stray images, fewer than 2 classes, missing labels."""
    path = Path(path).resolve()
    if not path.exists():
        raise JobError(f"--task {path} does not exist: pass a labelled ImageFolder (DIR/<class>/<image>)")
    if path.is_file():
        if path.suffix.lower() not in (".parquet", ".pq"):
            raise JobError(f"--task {path}: a file must be Parquet (.parquet) with image and label columns")
        labels_by_id, classes, id_column = _parquet_labels(path, label_column, id_column)
    else:
        labels_by_id, classes = _folder_labels(path)
    if len(classes) < 2:
        raise JobError(
            f"--task {path} has one class only ({classes[0]!r}): assessing teachers needs a task of at "
            "least 2 classes"
        )
    return AssessTask(path, labels_by_id, tuple(classes), image_column, id_column)


def _folder_labels(root: Path) -> tuple[dict[str, int], list[str]]:
    try:
        paths, labels, classes = read_image_folder(root)
    except (NotADirectoryError, ValueError) as e:
        raise JobError(f"--task {root}: {e}") from None
    labelled = {p.relative_to(root).as_posix(): int(y) for p, y in zip(paths, labels)}
    strays = [p.relative_to(root).as_posix() for p in list_images(root)]
    strays = [p for p in strays if p not in labelled]
    if strays:
        raise JobError(
            f"--task {root}: {len(strays)} images are not in a class directory (first: {strays[:3]}); "
            f"move them into {root}/<class>/ or remove them"
        )
    return labelled, classes


def _parquet_labels(
    path: Path, label_column: str, id_column: str | None
) -> tuple[dict[str, int], list[str], str | None]:
    """Labels by id of a Parquet task, its classes (sorted names, or integers in order), the id column."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise JobError(f"--task {path} is not a readable Parquet file ({e})") from None
    if label_column not in schema.names:
        raise JobError(
            f"--task {path}: no label column {label_column!r} (columns: {schema.names}); "
            "name it with --label-column"
        )
    id_column = id_column or ("id" if "id" in schema.names else None)
    if id_column is not None and id_column not in schema.names:
        raise JobError(f"--task {path}: no id column {id_column!r} (columns: {schema.names})")
    table = pq.read_table(path, columns=[label_column] + ([id_column] if id_column else []))
    col = table.column(label_column)
    values = col.to_pylist()
    bad = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and not np.isfinite(v))]
    if bad:
        raise JobError(
            f"--task {path}: {len(bad)} rows have no label (null or NaN in {label_column!r}, "
            f"first rows {bad[:5]}); label or drop them"
        )
    if pa.types.is_floating(col.type):
        if any(v != round(v) for v in values):
            raise JobError(
                f"--task {path}: column {label_column!r} holds non-integer numbers; "
                "labels are class names or integers"
            )
        values = [int(v) for v in values]
    elif not (
        pa.types.is_integer(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    ):
        raise JobError(
            f"--task {path}: column {label_column!r} has type {col.type}; labels are class names or integers"
        )
    classes = sorted(set(values))
    index = {c: k for k, c in enumerate(classes)}
    ids = (
        [str(v) for v in table.column(id_column).to_pylist()]
        if id_column
        else [str(i) for i in range(len(values))]
    )
    return dict(zip(ids, (index[v] for v in values))), [str(c) for c in classes], id_column


def _labels_of(images: StageResult, task: AssessTask) -> torch.Tensor:
    """The task's labels in the row order of transfer.parquet (the order of every teacher's outputs)."""
    ids = read_transfer_ids(images.path)
    missing = [i for i in ids if i not in task.labels_by_id]
    if missing or len(ids) != len(task.labels_by_id):
        raise JobError(
            f"--task {task.source} changed while it was read (ids {missing[:3]}); run the job again"
        )
    return torch.tensor([task.labels_by_id[i] for i in ids], dtype=torch.int64)


# ------------------------------------------------------------------------------------------ scores
def _score(
    cfg: AssessConfig,
    s: Session,
    images: StageResult,
    labels: torch.Tensor,
    t: AssessTeacher,
    metrics: Sequence[str],
) -> tuple[StageResult, TeacherScores]:
    """One teacher: its logits and features on the task's images (Ray Data, cached under
    `teachers/<name>-v<version>/`), then its scores."""
    teacher = t.teacher
    space = label_space([teacher])
    out_dir = f"teachers/{teacher.name}-v{teacher.version}"
    stage = inference_stage(
        s.run,
        images,
        [teacher],
        space,
        features=True,
        start_ray=s.start_ray,
        out_dir=out_dir,
        batch_size=cfg.batch_size,
        use_gpu=cfg.use_gpu,
        concurrency=cfg.concurrency,
        num_threads=cfg.threads,
    )
    out = read_logits(stage.path)
    # The union label space of one teacher is its classes sorted by name: back to its own output order.
    logits = out.logits[:, 0, list(space.index[0])]
    feats = read_features(s.run.path(out_dir, "features.parquet"))
    if out.ids != feats.ids:
        raise RuntimeError(f"{stage.path}: logits and features rows differ (a bug)")
    features = feats.features.get(teacher.name)
    why = feats.missing.get(teacher.name, t.no_features)
    scores = score_teacher(
        teacher.name,
        logits,
        labels,
        features=features,
        head=t.head,
        metrics=metrics,
        no_features=why,
        sinkhorn_options=cfg.sinkhorn_options(),
    )
    if scores.note:
        s.log(f"[assess] {t.label}: {scores.note}")
    return stage, scores


# ------------------------------------------------------------------------------------------ report
def format_ranking(res: AssessResult) -> str:
    """The table printed at the end: each teacher's score and rank per metric, and its seconds."""
    per_metric = {m: ranks(res.ranking, m) for m in res.metrics}
    header = ["rank", "teacher", "arch", *[f"{m} (rank)" for m in res.metrics], "scoring s", "inference s"]
    rows = []
    for k, r in enumerate(res.ranking):
        t, st = res.teachers[r.name], res.inference[r.name]
        cells = [str(k + 1), t.label, t.teacher.spec.arch]
        for m in res.metrics:
            s = r.scores.get(m)
            cells.append("n/a" if s is None else f"{s:.4f} ({per_metric[m][r.name]})")
        cells += [f"{sum(r.seconds.values()):.2f}", "cached" if st.skipped else f"{st.seconds:.1f}"]
        rows.append(cells)
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    rule = "=" * max(78, len(lines[0]))
    task = res.task
    out = [
        "",
        rule,
        f"Teachers for task {task.source}: {len(task.labels_by_id)} images, {len(task.classes)} classes",
        f"ranked by {res.metrics[0]} (every score: higher is better; Sinkhorn = -M(f_T), Alg. 4)",
        "-" * len(rule),
        *lines,
    ]
    marked = [f"  {res.teachers[r.name].label}: {r.note}" for r in res.ranking if r.note]
    if marked:
        out += ["marked:", *marked]
    out += [
        "-" * len(rule),
        f"top: {','.join(res.top())}; total {res.seconds:.0f}s",
        "where to look:",
        f"  run directory  {res.run_dir}",
        f"  plot           {res.plot}",
        f"  MLflow         {res.tracking_uri}  run {res.mlflow_run_id}",
        rule,
    ]
    return "\n".join(out)


def plot_ranking(res: AssessResult, path: PathLike) -> None:
    """A bar plot per metric (teachers best first, top to bottom), written as PNG to ``path``."""
    import matplotlib  # here: only the report needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [res.teachers[r.name].label for r in res.ranking]
    fig, axes = plt.subplots(
        1,
        len(res.metrics),
        figsize=(3.2 * len(res.metrics) + 1.5, 0.35 * len(names) + 1.6),
        sharey=True,
        squeeze=False,
    )
    y = np.arange(len(names))
    for ax, m in zip(axes[0], res.metrics):
        values = [r.scores.get(m) for r in res.ranking]
        known = [v for v in values if v is not None] or [0.0]
        # Scores may be all negative (Sinkhorn, LEEP, NCE): bars start left of the worst, so longer = better.
        left = min(known) - 0.15 * ((max(known) - min(known)) or 1.0)
        ax.barh(y, [0.0 if v is None else v - left for v in values], left=left, color="tab:blue")
        for k, v in enumerate(values):
            text = " n/a" if v is None else f" {v:.3g}"
            ax.text(
                left if v is None else v,
                k,
                text,
                va="center",
                fontsize=7,
                color="tab:red" if v is None else "black",
            )
        ax.set_title(m + (" (ranks)" if m == res.metrics[0] else ""), fontsize=10)
        ax.set_yticks(y, names, fontsize=8)
        ax.margins(x=0.25)
    axes[0][0].invert_yaxis()  # best first, at the top (the y axis is shared)
    fig.suptitle(f"teachers for {Path(str(res.task.source)).name} (higher is better)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _publish(cfg: AssessConfig, res: AssessResult, s: Session) -> None:
    """The MLflow run (every score, rank and second; summary.json, ranking.txt and ranking.png as
    artifacts), and the same files in the run directory."""
    best = res.top(1)
    res.tracking_uri = s.tracking_uri
    res.mlflow_run_id = s.open_mlflow_run(
        cfg.experiment,
        f"assess {cfg.task_name}",
        tags={
            "job": "assess",
            "task": str(res.task.source),
            "ranked_by": res.metrics[0],
            "best_teacher": best[0] if best else "",
        },
        params={
            "task": str(res.task.source),
            "images": len(res.task.labels_by_id),
            "classes": ",".join(res.task.classes),
            "metrics": ",".join(res.metrics),
            "teachers": ",".join(t.label for t in res.teachers.values()),
            **res.options,
        },
    )
    if cfg.plot:
        plot = s.run.path("ranking.png")
        res.plot = str(plot) if is_uri(plot) else str(Path(plot).resolve())
        plot_ranking(res, plot)
    res.table = format_ranking(res)
    write_text(s.run.path("ranking.txt"), res.table + "\n")
    write_json_atomic(res.to_dict(), s.run.summary)
    now = int(time.time() * 1000)
    metrics = [Metric("job.seconds", res.seconds, now, 0)]
    per_metric = {m: ranks(res.ranking, m) for m in res.metrics}
    for r in res.ranking:
        metrics.append(Metric(f"seconds.inference.{r.name}", res.inference[r.name].seconds, now, 0))
        for m in res.metrics:
            if r.scores.get(m) is not None:
                metrics += [
                    Metric(f"{m}.{r.name}", r.scores[m], now, 0),
                    Metric(f"rank.{m}.{r.name}", per_metric[m][r.name], now, 0),
                    Metric(f"seconds.{m}.{r.name}", r.seconds[m], now, 0),
                ]
    for k in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics a batch
        s.client.log_batch(res.mlflow_run_id, metrics=metrics[k : k + 900])
    for name in ("summary.json", "ranking.txt", "ranking.png"):
        if name != "ranking.png" or cfg.plot:
            with local_copy(s.run.path(name)) as f:
                s.client.log_artifact(res.mlflow_run_id, str(f))
    s.client.set_terminated(res.mlflow_run_id)


# ------------------------------------------------------------------------------------------ demo
def write_demo_task(
    out: str | Path, classes: Sequence[str] = DEMO_TASK_CLASSES, per_class: int = 100, data: str | None = None
) -> Path:
    """A labelled ImageFolder of Fashion-MNIST test images (``per_class`` of each of ``classes``, the
    first ones of the test split): a task to assess the demo zoo's teachers on (whose images are all
    training images). Class directories are the names with "/" -> "-". Returns ``out``."""
    try:
        images, labels = load_fashion_mnist("test", data)
    except FileNotFoundError as e:
        raise JobError(f"demo task: {e}") from None
    unknown = [c for c in classes if c not in FASHION_MNIST_CLASSES]
    if unknown or per_class < 1:
        raise JobError(
            f"demo task: unknown classes {unknown} (known: {list(FASHION_MNIST_CLASSES)}) "
            f"or per_class {per_class} < 1"
        )
    out = Path(out)
    for name in classes:
        d = out / name.replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == FASHION_MNIST_CLASSES.index(name))[:per_class]:
            (d / f"test-{i:05d}.png").write_bytes(encode_png(images[i]))
    return out
