"""The main job (`jobs/unify.py`): unify teachers of the zoo into one student (paper 001).

Stages, each writing under the run directory and skipped on a rerun when its inputs are unchanged:

1. teachers: resolved in the registry (a zoo, names, or tags), downloaded and loaded once to check
   them; the union label space and mask from their class names;
2. transfer.parquet: the transfer set, validated (`zoo.pipeline.transfer`);
3. logits.parquet: every teacher on every image with Ray Data (`zoo.pipeline.inference`);
4. soft_labels.parquet (modes E and BS) (`zoo.pipeline.soft_labels`);
5. student: Ray Train (`zoo.pipeline.training`), metrics to MLflow;
6. SPV benchmark (demo zoo only): the student's architecture trained supervised on the union of the
   teachers' training data (`zoo.train.fit_classifier`);
7. registration with lineage; `champion` moves only when the student beats it on the same eval set.

All inputs are checked (stages 1-2 and the evaluation set) before Ray starts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.config import UnifyConfig
from zoo.labels import LabelSpace, build_label_space
from zoo.pipeline.inference import TeacherRef, run_teacher_inference
from zoo.pipeline.soft_labels import write_soft_labels
from zoo.pipeline.stages import (
    RunDir,
    StageResult,
    atomic_dir,
    fingerprint,
    is_uri,
    join,
    local_copy,
    read_sidecar,
    read_text,
    run_stage,
    write_json_atomic,
)
from zoo.pipeline.transfer import (
    materialize_transfer_set,
    transfer_content_fingerprint,
    transfer_source_fingerprint,
)

__all__ = ["JobError", "JobResult", "class_groups", "group_accuracy", "resolve_teachers", "run_unify"]

# Bump when a stage's output format or computation changes, so old outputs are recomputed.
STAGE_VERSION = {"transfer": 1, "inference": 1, "soft_labels": 1, "student": 1, "spv": 1, "register": 1}


class JobError(ValueError):
    """Bad input to the job; the message says what to fix. Raised before any compute starts."""


@dataclass
class Teacher:
    ref: TeacherRef
    spec: Any  # zoo.artifacts.ModelSpec
    tags: dict[str, str]


@dataclass
class EvalData:
    images: Any  # uint8 ndarray [B, H, W(, C)] or list of arrays
    labels: np.ndarray  # indices into the label space's classes
    source: str


@dataclass
class JobResult:
    run_dir: Path | str  # a local path or a URI
    teachers: list[dict[str, Any]]
    classes: list[str]
    stages: dict[str, StageResult] = field(default_factory=dict)
    student_accuracy: dict[str, float] | None = None
    spv_accuracy: dict[str, float] | None = None
    registered: dict[str, Any] | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    selected_by: str = ""  # how method/mode/T/lr were chosen (config, or the sweep on which set)
    summary: str = ""


# ---------------------------------------------------------------------------------------- teachers
def _parse_teacher(text: str) -> tuple[str, int | None, str | None]:
    """`name`, `name:3` (version) or `name@alias`."""
    text = text.strip()
    if "@" in text:
        name, alias = text.split("@", 1)
        return name, None, alias
    if ":" in text:
        name, version = text.rsplit(":", 1)
        if not version.isdigit():
            raise JobError(f"teacher {text!r}: the version after ':' must be a number (name:3)")
        return name, int(version), None
    return text, None, None


def resolve_teachers(
    cfg: UnifyConfig,
    registry: Any,
    log: Callable[[str], None] = print,
    before_build: Callable[[], None] | None = None,
) -> list[Teacher]:
    """The teachers the config names, downloaded and loaded once (a teacher that fails to load stops
    the job here): `cfg.teachers`, else the models matching `cfg.tags`, else every model tagged
    zoo=`cfg.zoo` (students excluded), the demo zoo being built first when absent."""
    from zoo.registry import ModelNotFound

    records = []
    if cfg.teachers:
        available = None
        for text in cfg.teachers:
            name, version, alias = _parse_teacher(text)
            try:
                records.append(registry.get(name, version=version, alias=alias))
            except (ModelNotFound, ValueError) as e:
                if available is None:
                    available = sorted(r.name for r in registry.list())
                raise JobError(
                    f"unknown teacher {text!r}: {e}. Teachers in the zoo: {available or 'none'}; "
                    "fix --teachers"
                ) from None
    else:
        tags = dict(cfg.tags) if cfg.tags else {"zoo": cfg.zoo}
        records = [r for r in registry.list(tags) if cfg.tags or r.tags.get("role") != "student"]
        if not records and not cfg.tags and cfg.build_demo_zoo and _is_demo_zoo(cfg.zoo):
            log(f"[teachers] zoo {cfg.zoo!r} is empty: building the demo zoo first")
            if before_build is not None:
                before_build()
            _ensure_demo_zoo(cfg.zoo, registry)
            records = [r for r in registry.list(tags) if r.tags.get("role") != "student"]
        if not records:
            what = f"tags {tags}" if cfg.tags else f"zoo {cfg.zoo!r} (models tagged zoo={cfg.zoo})"
            raise JobError(
                f"no teachers match {what} in {registry.tracking_uri}; register teachers "
                "(python -m zoo register ...), build the demo zoo (python jobs/make_zoo.py), "
                "or pick them with --teachers a,b,c"
            )
    names = [r.name for r in records]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise JobError(f"teacher(s) {dupes} named more than once; name each teacher once")
    teachers = []
    for r in sorted(records, key=lambda r: r.name) if not cfg.teachers else records:
        try:
            _model, spec, _ = registry.load(r.name, version=r.version)
            model_dir = registry.download(r.name, version=r.version)
        except Exception as e:  # any failure to fetch or rebuild the teacher stops the job here
            raise JobError(
                f"teacher {r.name} v{r.version} fails to load: {e}. Fix or delete that version "
                f"(models:/{r.name}/{r.version}), or leave it out with --teachers"
            ) from e
        teachers.append(
            Teacher(TeacherRef(r.name, int(r.version), Path(model_dir), r.run_id), spec, dict(r.tags))
        )
    return teachers


def _is_demo_zoo(zoo: str) -> bool:
    try:
        from zoo.pipeline.make_zoo import DEMO_ZOO
    except ImportError:
        DEMO_ZOO = "fmnist-demo"
    return zoo == DEMO_ZOO


def _ensure_demo_zoo(zoo: str, registry: Any) -> None:
    from zoo.pipeline.make_zoo import ensure_demo_zoo

    ensure_demo_zoo(zoo, tracking_uri=registry.tracking_uri)


_DATASETS: dict[str, Any] = {}


def _demo_dataset(split: Any) -> Any:
    """The labelled data set a demo split indexes (Fashion-MNIST, or make_zoo's synthetic stand-in)."""
    from zoo.pipeline.make_zoo import load_dataset

    key = split.dataset
    if key not in _DATASETS:
        _DATASETS.clear()
        ds = load_dataset(synthetic=key == "synthetic")
        split.check_labels(ds.labels_train, ds.labels_test)
        _DATASETS[key] = ds
    return _DATASETS[key]


def load_zoo_split(zoo: str, registry: Any):
    """The demo split of `zoo`, or None when the zoo has none (not a demo zoo)."""
    try:
        from zoo.pipeline.make_zoo import load_split
    except ImportError:
        return None
    try:
        return load_split(zoo, registry)
    except (LookupError, FileNotFoundError, ValueError, OSError):
        return None
    except Exception as e:  # an MLflow error meaning "no such run/artifact"
        if type(e).__name__ in ("MlflowException", "RestException"):
            return None
        raise


# ------------------------------------------------------------------------------------- eval set
def eval_from_folder(path: str, space: LabelSpace, flag: str = "--eval") -> EvalData:
    """A labelled ImageFolder over union classes (the evaluation set, or with flag="--val" the
    validation set); errors name `flag`."""
    from zoo.data import ImageDecodeError, read_image, read_image_folder

    try:
        paths, labels, classes = read_image_folder(path)
    except (NotADirectoryError, ValueError) as e:
        raise JobError(f"{flag} {path}: {e}") from None
    unknown, index = [], []
    for c in classes:
        try:
            index.append(space.index_of(c))
        except KeyError:
            unknown.append(c)
    if unknown:
        raise JobError(
            f"{flag} {path}: classes {unknown} are not in the teachers' union label space "
            f"{list(space.classes)}; remove those class directories, rename them, or add a synonym "
            "(config key synonyms)"
        )
    images, bad = [], []
    for p in paths:
        try:
            images.append(read_image(p))
        except (ImageDecodeError, OSError) as e:
            bad.append(f"{p}: {e}")
    if bad:
        raise JobError(
            f"{flag} {path}: {len(bad)} images cannot be decoded, first: {bad[:3]}; fix or remove them"
        )
    return EvalData(images, np.asarray(index, dtype=np.int64)[labels], f"ImageFolder {path}")


def eval_from_split(split: Any, space: LabelSpace) -> EvalData:
    """The demo split's evaluation set: test images of the union classes (the final report only)."""
    ds = _demo_dataset(split)
    images, labels = split.eval_set(ds.images_test, ds.labels_test, classes=split.union_classes)
    return _in_space(split, space, images, labels, "test images")


def val_from_split(split: Any, space: LabelSpace) -> EvalData | None:
    """The demo split's labelled validation set (training images no teacher and no transfer image
    uses), or None for a split saved before it had one."""
    if not getattr(split, "has_validation", False):
        return None
    ds = _demo_dataset(split)
    images, labels = split.val_set(ds.images_train, ds.labels_train, classes=split.union_classes)
    return _in_space(split, space, images, labels, "validation images")


def _in_space(split: Any, space: LabelSpace, images: Any, labels: np.ndarray, what: str) -> EvalData:
    # Keep the classes of the label space (all of them unless a subset of the demo teachers was picked).
    keep, remap = [], []
    for k, c in enumerate(split.union_classes):
        try:
            remap.append(space.index_of(c))
            keep.append(k)
        except KeyError:
            remap.append(-1)
    sel = np.isin(labels, keep)
    table = np.asarray(remap, dtype=np.int64)
    return EvalData(images[sel], table[labels[sel]], f"demo split of {split.zoo or 'the zoo'} ({what})")


def class_groups(mask: torch.Tensor) -> dict[str, list[int]]:
    """Union classes grouped by how many teachers predict them: {"1 teacher": [...], "2+ teachers": [...]}."""
    counts = mask.sum(0).tolist()
    groups = {
        "1 teacher": [i for i, c in enumerate(counts) if c == 1],
        "2+ teachers": [i for i, c in enumerate(counts) if c >= 2],
    }
    return {k: v for k, v in groups.items() if v}


def group_accuracy(pred: np.ndarray, labels: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
    """Top-1 accuracy overall ("all") and on the samples of each class group."""
    out = {"all": float((pred == labels).mean()) if len(labels) else float("nan")}
    for name, classes in groups.items():
        sel = np.isin(labels, classes)
        if sel.any():
            out[name] = float((pred[sel] == labels[sel]).mean())
    return out


def _predict(model_dir: Path, images: Any, batch_size: int = 1024) -> np.ndarray:
    from zoo.artifacts import load_model, preprocess

    model, spec = load_model(model_dir)
    model.eval()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            preds.append(model(preprocess(images[s : s + batch_size], spec.input)).argmax(1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def _eval_fingerprint(ev: EvalData) -> str:
    from zoo.pipeline.training import EvalSet

    return EvalSet(ev.images, ev.labels).fingerprint()


def job_home() -> Path | None:
    """Where the job keeps the zoo (sqlite) and its runs when not in the current directory: $ZOO_HOME,
    or ~/.zoo when the job runs in the temporary copy that `ray job submit --working-dir` unpacks
    (each submission gets a fresh copy: a zoo.db there would be lost). None: the current directory."""
    if os.environ.get("ZOO_HOME"):
        return Path(os.environ["ZOO_HOME"]).expanduser()
    if "runtime_resources" in Path.cwd().parts and any("working_dir" in p for p in Path.cwd().parts):
        return Path.home() / ".zoo"
    return None


# ------------------------------------------------------------------------------------------ ray
def init_ray(cfg: UnifyConfig, log: Callable[[str], None]) -> bool:
    """Join the job's cluster (`ray job submit` sets RAY_ADDRESS), the given address, or a running
    local cluster; else start a local one with enough logical CPUs that Data read tasks and Train
    workers are never starved by actors (RAY-NOTES). Returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {k: os.environ[k] for k in ("RAY_AUTH_MODE",) if k in os.environ}}
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        log(f"[ray] joining the cluster at {address}")
        ray.init(address=address)
        return False
    num_cpus = cfg.num_cpus or max(4, 2 * (os.cpu_count() or 1))
    log(f"[ray] starting a local Ray ({num_cpus} logical CPUs, no dashboard)")
    ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env)
    return True


# ------------------------------------------------------------------------------------------ job
def run_unify(cfg: UnifyConfig, log: Callable[[str], None] = print) -> JobResult:
    """Run the whole job for `cfg`; returns what it did and prints the summary table. Starts a local
    Ray when none is connected (and stops it at the end); joins the job's cluster under `ray job`."""
    ray_started: list[bool] = []

    def start_ray() -> None:
        if not ray_started:
            ray_started.append(init_ray(cfg, log))

    try:
        return _run_unify(cfg, log, start_ray)
    finally:
        if any(ray_started):
            import ray

            ray.shutdown()


def _run_unify(cfg: UnifyConfig, log: Callable[[str], None], start_ray: Callable[[], None]) -> JobResult:
    from mlflow.tracking import MlflowClient

    from zoo.registry import Registry, default_tracking_uri

    t_job = time.perf_counter()
    home = job_home()
    if home is None or is_uri(cfg.run_path):
        tracking_uri = cfg.tracking_uri or default_tracking_uri()
        run = RunDir(cfg.run_path).ensure()
    else:  # a `ray job submit --working-dir` copy: keep the zoo and runs where the next job finds them
        home.mkdir(parents=True, exist_ok=True)
        tracking_uri = (
            cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'zoo.db'}"
        )
        run = RunDir(cfg.run_path if cfg.run_dir else home / cfg.run_path).ensure()
        log(
            f"[job] running in a Ray job's working-dir copy: zoo and runs under {home} "
            "(set ZOO_HOME to change)"
        )
    registry = Registry(tracking_uri)
    log(f"[job] run directory {run.root}; MLflow {tracking_uri}")

    # ---- 1. teachers, label space (checked before any compute)
    teachers = resolve_teachers(cfg, registry, log, before_build=start_ray)
    space = build_label_space(
        [t.spec.classes for t in teachers], [t.ref.name for t in teachers], cfg.synonyms or None
    )
    mask = space.mask
    log(f"[teachers] {len(teachers)} teachers, {space.num_classes} union classes: {list(space.classes)}")
    split = (
        load_zoo_split(cfg.zoo, registry)
        if (cfg.transfer is None or cfg.eval is None or cfg.spv or (cfg.sweep and cfg.val is None))
        else None
    )
    # The demo split describes the whole demo zoo: SPV only when its teachers are exactly the ones used.
    whole_demo_zoo = split is not None and not cfg.teachers and not cfg.tags

    # ---- transfer set source and evaluation set (checked before any compute)
    if cfg.transfer is not None:
        source: Any = cfg.transfer
    elif split is not None:
        idx = np.asarray(split.transfer_indices, dtype=np.int64)
        prefix = "fmnist" if split.dataset == "fashion-mnist" else split.dataset
        source = (_demo_dataset(split).images_train[idx], [f"{prefix}-train-{i}" for i in idx])
    else:
        raise JobError(
            f"no transfer set: zoo {cfg.zoo!r} has no demo split; "
            "pass --transfer DIR (images) or a Parquet file"
        )
    if cfg.eval is not None:
        ev = eval_from_folder(cfg.eval, space)
    elif split is not None:
        ev = eval_from_split(split, space)
    else:
        raise JobError(
            "no evaluation set: pass --eval DIR, a labelled ImageFolder whose class directories are "
            f"union classes {list(space.classes)} (the champion is decided on it)"
        )
    if len(ev.labels) == 0:
        raise JobError(f"the evaluation set ({ev.source}) has no image of the union classes; pass --eval DIR")
    eval_fp = _eval_fingerprint(ev)
    groups = class_groups(mask)
    log(f"[eval] {len(ev.labels)} labelled images from {ev.source} (the final report)")
    # The validation set: what the sweep selects on, never the evaluation (test) set.
    val = None
    if cfg.val is not None:
        val = eval_from_folder(cfg.val, space, flag="--val")
    elif split is not None and cfg.sweep:
        val = val_from_split(split, space)
    if val is not None and len(val.labels) == 0:
        raise JobError(f"the validation set ({val.source}) has no image of the union classes; pass --val DIR")
    if cfg.sweep:
        log(
            f"[val] {len(val.labels)} labelled images from {val.source} (the sweep selects on them)"
            if val is not None
            else "[val] no labelled validation set (--val DIR): the sweep ranks by the label-free proxy"
        )
    selected_by = "the config (no sweep)"

    stages: dict[str, StageResult] = {}
    # ---- 2. transfer.parquet
    src_fp = fingerprint(
        "transfer",
        STAGE_VERSION["transfer"],
        transfer_source_fingerprint(source, image_column=cfg.image_column, id_column=cfg.id_column),
        cfg.transfer_limit,
    )
    stages["transfer"] = run_stage(
        "transfer",
        run.transfer,
        src_fp,
        lambda: materialize_transfer_set(
            source,
            run.transfer,
            image_column=cfg.image_column,
            id_column=cfg.id_column,
            fingerprint=src_fp,
            limit=cfg.transfer_limit,
        ),
        force=cfg.force,
        log=log,
    )
    transfer_fp = transfer_content_fingerprint(run.transfer)

    # ---- student config (checked before compute: unknown arch, bad input spec)
    from zoo.artifacts import InputSpec

    student_input = (
        InputSpec(**cfg.student_input)
        if cfg.student_input
        else common_input([t.spec.input for t in teachers], log)
    )
    try:
        from zoo.architectures import build_model

        build_model(
            cfg.arch,
            space.num_classes,
            in_channels=student_input.channels,
            image_size=(student_input.height, student_input.width),
            **cfg.arch_kwargs,
        )
        scfg = student_config(cfg, student_input)
    except (ValueError, TypeError) as e:
        raise JobError(f"student: {e}; fix --arch / arch_kwargs / student_input") from None

    mlflow_run_id = None

    # ---- 3. logits.parquet (Ray Data); Ray starts only when a Ray stage has to run
    def infer() -> None:
        start_ray()
        run_teacher_inference(
            run.transfer,
            [t.ref for t in teachers],
            space,
            run.logits,
            batch_size=cfg.inference_batch_size,
            use_gpu=cfg.use_gpu,
            concurrency=cfg.inference_concurrency,
            num_threads=cfg.inference_threads,
            strategy=cfg.inference_strategy,
            fingerprint=logits_fp,
        )

    lineage_teachers = [t.ref.lineage() for t in teachers]
    logits_fp = fingerprint(
        "inference", STAGE_VERSION["inference"], lineage_teachers, transfer_fp, space.to_dict()
    )
    stages["inference"] = run_stage("inference", run.logits, logits_fp, infer, force=cfg.force, log=log)
    if cfg.teacher_temperatures:
        # Lever: per-teacher calibration (zoo.unify.calibration), by name, in the logits' teacher order.
        import dataclasses

        names = [t["name"] for t in lineage_teachers]
        unknown = sorted(set(cfg.teacher_temperatures) - set(names))
        if unknown:
            raise JobError(f"teacher_temperatures names {unknown} are not among the teachers {names}")
        temps = [float(cfg.teacher_temperatures.get(n, 1.0)) for n in names]
        scfg = dataclasses.replace(scfg, teacher_temperatures=temps)

    # ---- 3b. optional sweep (Ray Tune on the cached logits): its best config drives the final student
    if cfg.sweep:
        import dataclasses

        from zoo.pipeline.sweep import load_sweep_config, run_sweep
        from zoo.pipeline.training import EvalSet

        start_ray()
        swept = run_sweep(
            load_sweep_config(cfg.sweep_config),
            run.root,
            student=scfg,
            eval_set=None if val is None else EvalSet(val.images, val.labels),
            tracking_uri=tracking_uri,
            experiment=cfg.experiment,
            force=cfg.force,
            log=log,
        )
        best = swept.best_config
        selected_by = (
            f"the sweep, on {swept.metric} of {val.source}"
            if val is not None
            else f"the sweep, on the label-free proxy ({swept.metric}; no validation set)"
        )
        log(f"sweep: best config {best}, selected by {selected_by}")
        cfg.method, cfg.mode = best["method"], best["mode"]
        cfg.temperature, cfg.lr = float(best["temperature"]), float(best["lr"])
        scfg = dataclasses.replace(
            scfg, method=cfg.method, mode=cfg.mode, temperature=cfg.temperature, lr=cfg.lr
        )

    # ---- 4. soft_labels.parquet (E, BS)
    if cfg.mode == "bp":
        targets, targets_fp = run.logits, logits_fp
    else:
        targets_fp = fingerprint(
            "soft_labels",
            STAGE_VERSION["soft_labels"],
            logits_fp,
            cfg.method,
            cfg.mode,
            cfg.temperature,
            # the levers that change q or its per-sample weights (absent when off: old fingerprints hold)
            *(
                [{"temperatures": scfg.teacher_temperatures, "weighting": cfg.sample_weighting}]
                if scfg.teacher_temperatures or cfg.sample_weighting != "none"
                else []
            ),
        )
        stages["soft_labels"] = run_stage(
            "soft_labels",
            run.soft_labels,
            targets_fp,
            lambda: write_soft_labels(
                run.logits,
                run.soft_labels,
                cfg.method,
                cfg.mode,
                cfg.temperature,
                fingerprint=targets_fp,
                teacher_temperatures=scfg.teacher_temperatures,
                sample_weighting=cfg.sample_weighting,
            ),
            force=cfg.force,
            log=log,
        )
        targets = run.soft_labels

    # ---- 5. student (Ray Train), metrics to MLflow
    student_fp = fingerprint(
        "student",
        STAGE_VERSION["student"],
        targets_fp,
        transfer_fp,
        scfg.to_dict(),
        list(space.classes),
        eval_fp,
        cfg.num_workers,
        cfg.use_gpu,
    )
    run_name = f"student-{student_fp[:12]}"
    student_dir = join(run.train_storage, run_name, "student")
    prior = read_sidecar(student_dir) or {}
    client = MlflowClient(tracking_uri=tracking_uri)
    if prior.get("fingerprint") == student_fp and not cfg.force and prior.get("mlflow_run_id"):
        mlflow_run_id = prior["mlflow_run_id"]
    else:
        mlrun = client.create_run(
            _experiment_id(client, tracking_uri, cfg.experiment),
            run_name=f"{cfg.name}-{cfg.method}-{cfg.mode}",
            tags={
                "zoo.job": "unify",
                "zoo.run_dir": run.display,
                "zoo.selected_by": selected_by,
                "teachers": ",".join(f"{t['name']}:{t['version']}" for t in lineage_teachers),
            },
        )
        mlflow_run_id = mlrun.info.run_id
        _log_params(client, mlflow_run_id, cfg, transfer_fp, eval_fp)
    train_metrics: dict[str, Any] = dict(prior.get("metrics") or {})

    def train() -> None:
        start_ray()
        from zoo.pipeline.training import EvalSet, train_student

        result = train_student(
            scfg,
            run.transfer,
            targets,
            classes=list(space.classes),
            storage_path=run.train_storage,
            run_name=run_name,
            eval_set=EvalSet(ev.images, ev.labels),
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            mlflow_tracking_uri=tracking_uri,
            mlflow_run_id=mlflow_run_id,
        )
        if run.is_remote:
            # The model comes back as a local temporary copy of what was uploaded to the run directory;
            # the job reads the uploaded one (local_copy below), so the temporary one goes.
            shutil.rmtree(Path(result.model_dir).parent, ignore_errors=True)
        elif Path(result.model_dir).resolve() != Path(student_dir).resolve():
            raise RuntimeError(
                f"train_student saved the student in {result.model_dir}, expected {student_dir}"
            )
        train_metrics.clear()
        train_metrics.update(_jsonable(result.metrics))

    stages["student"] = run_stage(
        "student", student_dir, student_fp, train, force=cfg.force, log=log, sidecar=True
    )
    if not stages["student"].skipped:
        from zoo.pipeline.stages import write_sidecar

        write_sidecar(
            student_dir,
            student_fp,
            metrics=train_metrics,
            mlflow_run_id=mlflow_run_id,
            seconds=round(stages["student"].seconds, 3),
        )

    # ---- evaluation per class group (the test set: reported, never used to choose)
    with local_copy(student_dir) as d:
        student_acc = group_accuracy(_predict(d, ev.images), ev.labels, groups)

    # ---- 6. SPV (demo split only)
    spv_acc = None
    if cfg.spv and whole_demo_zoo and cfg.eval is None:
        spv_fp = fingerprint(
            "spv",
            STAGE_VERSION["spv"],
            split.to_dict(),
            cfg.arch,
            cfg.arch_kwargs,
            student_input,
            cfg.seed,
            list(space.classes),
            cfg.spv_epochs,
        )
        stages["spv"] = run_stage(
            "spv",
            run.spv,
            spv_fp,
            lambda: _train_spv(split, space, cfg, student_input, run.spv),
            force=cfg.force,
            log=log,
            sidecar=True,
        )
        with local_copy(run.spv) as d:
            spv_acc = group_accuracy(_predict(d, ev.images), ev.labels, groups)

    # ---- 7. registration
    lineage = {
        "teachers": lineage_teachers,
        "method": cfg.method,
        "mode": cfg.mode,
        "temperature": cfg.temperature,
        "transfer_fingerprint": transfer_fp,
        "metrics": {
            "eval_accuracy": student_acc["all"],
            **{f"eval_accuracy[{k}]": v for k, v in student_acc.items()},
            **({"spv_accuracy": spv_acc["all"]} if spv_acc else {}),
            **{k: v for k, v in train_metrics.items() if isinstance(v, (int, float))},
        },
        "student_config": scfg.to_dict(),
        "classes": list(space.classes),
        "mlflow_run_id": mlflow_run_id,
        "eval_source": ev.source,
        "selected_by": selected_by,
    }
    reg_fp = fingerprint("register", STAGE_VERSION["register"], student_fp, cfg.name, tracking_uri)
    registered: dict[str, Any] = {}

    def register() -> None:
        from zoo.pipeline.registration import register_student

        with local_copy(student_dir) as d:
            record, champion = register_student(
                registry, cfg.name, d, lineage=lineage, metric="eval_accuracy", eval_fingerprint=eval_fp
            )
        registered.update(
            {
                "name": record.name,
                "version": record.version,
                "champion": champion,
                "uri": f"models:/{record.name}/{record.version}",
                "decision": record.tags.get("champion_decision", ""),
            }
        )
        write_json_atomic({"fingerprint": reg_fp, **registered}, run.registration)

    stages["register"] = run_stage("register", run.registration, reg_fp, register, force=cfg.force, log=log)
    if not registered:
        registered.update(
            {k: v for k, v in json.loads(read_text(run.registration)).items() if k != "fingerprint"}
        )

    # ---- MLflow: final metrics and the summary
    client = MlflowClient(tracking_uri=tracking_uri)
    for k, v in student_acc.items():
        client.log_metric(mlflow_run_id, f"student.eval_accuracy.{_metric_key(k)}", v)
    for k, v in (spv_acc or {}).items():
        client.log_metric(mlflow_run_id, f"spv.eval_accuracy.{_metric_key(k)}", v)
    client.set_tag(mlflow_run_id, "registered_model", f"{registered['name']}:{registered['version']}")
    total = time.perf_counter() - t_job
    client.log_metric(mlflow_run_id, "job.seconds", total)
    client.set_terminated(mlflow_run_id)
    result = JobResult(
        run_dir=run.root,
        teachers=[
            {**t.ref.lineage(), "arch": t.spec.arch, "classes": list(t.spec.classes)} for t in teachers
        ],
        classes=list(space.classes),
        stages=stages,
        student_accuracy=student_acc,
        spv_accuracy=spv_acc,
        registered=registered,
        mlflow_run_id=mlflow_run_id,
        tracking_uri=tracking_uri,
        selected_by=selected_by,
    )
    result.summary = format_summary(result, cfg, groups, mask, total)
    write_json_atomic(
        {
            "teachers": result.teachers,
            "classes": result.classes,
            "method": cfg.method,
            "mode": cfg.mode,
            "temperature": cfg.temperature,
            "selected_by": selected_by,
            "student_accuracy": student_acc,
            "spv_accuracy": spv_acc,
            "registered": registered,
            "mlflow_run_id": mlflow_run_id,
            "tracking_uri": tracking_uri,
            "seconds": round(total, 1),
            "stages": {k: {"skipped": s.skipped, "seconds": round(s.seconds, 2)} for k, s in stages.items()},
        },
        run.summary,
    )
    with local_copy(run.summary) as summary_file:
        client.log_artifact(mlflow_run_id, str(summary_file))
    log(result.summary)
    return result


def _experiment_id(client: Any, tracking_uri: str, name: str) -> str:
    """The MLflow experiment `name`, created when missing; with a sqlite store its artifacts go
    beside the database (not ./mlruns of whatever directory the job runs in)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0]).expanduser().resolve()
        location = (db.parent / "mlflow-artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _metric_key(group: str) -> str:
    return group.replace(" ", "_").replace("+", "plus")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _log_params(client: Any, run_id: str, cfg: UnifyConfig, transfer_fp: str, eval_fp: str) -> None:
    from mlflow.entities import Param

    params = {f"job.{k}": v for k, v in cfg.to_dict().items() if v is not None and k not in ("force",)}
    params.update({"job.transfer_fingerprint": transfer_fp, "job.eval_fingerprint": eval_fp})
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def student_config(cfg: UnifyConfig, student_input: Any) -> Any:
    """The student's StudentConfig from the job config and its input contract (an InputSpec)."""
    from zoo.pipeline.training import StudentConfig

    return StudentConfig(
        arch=cfg.arch,
        arch_kwargs=dict(cfg.arch_kwargs),
        input=student_input,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        method=cfg.method,
        mode=cfg.mode,
        temperature=cfg.temperature,
        seed=cfg.seed,
        optimizer=cfg.optimizer,
        sample_weighting=cfg.sample_weighting,
        augment=cfg.augment,
    )


def common_input(specs: Sequence[Any], log: Callable[[str], None]) -> Any:
    """The student's input contract from the teachers' InputSpecs: theirs when they all share one, else
    the most common (ties: the largest images), said in the log."""
    counts: dict[Any, int] = {}
    for s in specs:
        counts[s] = counts.get(s, 0) + 1
    best = max(counts, key=lambda s: (counts[s], s.height * s.width, s.channels))
    if len(counts) > 1:
        log(
            f"[student] teachers have {len(counts)} input contracts; the student uses {best} "
            "(set student_input in the config to choose)"
        )
    return best


def _train_spv(split: Any, space: LabelSpace, cfg: UnifyConfig, spec_in: Any, out_dir: Path) -> None:
    """SPV (paper 001, Table 2): the student's architecture trained supervised on the union of the
    teachers' training data, with the teachers' training recipe from the split's config."""
    from zoo.architectures import build_model
    from zoo.artifacts import ModelSpec, preprocess, save_model
    from zoo.train import fit_classifier

    ds = _demo_dataset(split)
    x, y = split.spv_data(ds.images_train, ds.labels_train, classes=list(space.classes))
    tc = dict(split.config)
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.arch,
        space.num_classes,
        in_channels=spec_in.channels,
        image_size=(spec_in.height, spec_in.width),
        **cfg.arch_kwargs,
    )
    model = fit_classifier(
        model,
        preprocess(x, spec_in),
        torch.as_tensor(y),
        epochs=cfg.spv_epochs or int(tc.get("epochs", cfg.epochs)),
        lr=float(tc.get("lr", 1e-3)),
        batch_size=int(tc.get("batch_size", 32)),
        seed=cfg.seed,
        optimizer=str(tc.get("optimizer", "adam")),
        device="cpu",
    )
    spec = ModelSpec(
        arch=cfg.arch,
        classes=list(space.classes),
        input=spec_in,
        arch_kwargs=dict(cfg.arch_kwargs),
        metadata={"role": "spv", "train_size": int(len(y))},
    )
    with atomic_dir(out_dir) as tmp:
        save_model(model.cpu(), spec, tmp)


def format_summary(
    res: JobResult, cfg: UnifyConfig, groups: dict[str, list[int]], mask: torch.Tensor, seconds: float
) -> str:
    """The table printed at the end: teachers, method, accuracies per class group, where to look."""
    lines = [
        "",
        "=" * 78,
        f"Unified model {cfg.name!r}: {len(res.teachers)} teachers -> {len(res.classes)} classes",
        "-" * 78,
        f"{'teacher':<28} {'version':>7}  {'arch':<10} classes",
    ]
    for t in res.teachers:
        lines.append(f"{t['name']:<28} {t['version']:>7}  {t['arch']:<10} {', '.join(t['classes'])}")
    lines += [
        "-" * 78,
        f"method {cfg.method}, mode {cfg.mode}, T={cfg.temperature:g}, student {cfg.arch}, "
        f"{cfg.epochs} epochs",
        f"config selected by {res.selected_by}",
        "",
    ]
    cols = ["all", *groups]
    header = f"{'accuracy on the eval set':<26}" + "".join(f"{c:>16}" for c in cols)
    lines.append(header)
    for label, acc in (("student", res.student_accuracy), ("SPV (supervised)", res.spv_accuracy)):
        if acc:
            lines.append(f"{label:<26}" + "".join(f"{acc.get(c, float('nan')):>16.4f}" for c in cols))
    counts = mask.sum(0).tolist()
    lines.append(
        f"{'(classes in group)':<26}"
        + "".join(f"{len(res.classes) if c == 'all' else len(groups[c]):>16}" for c in cols)
    )
    stage_txt = ", ".join(
        f"{k} {'skipped' if s.skipped else f'{s.seconds:.0f}s'}" for k, s in res.stages.items()
    )
    reg = res.registered or {}
    lines += [
        "-" * 78,
        f"stages: {stage_txt}; total {seconds:.0f}s",
        "where to look:",
        f"  run directory     {res.run_dir}",
        f"  MLflow            {res.tracking_uri}  run {res.mlflow_run_id}"
        f"  (mlflow ui --backend-store-uri {res.tracking_uri})",
        f"  registered model  {reg.get('uri')}  champion: {'yes' if reg.get('champion') else 'no'}"
        f" ({reg.get('decision', '')})",
        "=" * 78,
    ]
    del counts
    return "\n".join(lines)
