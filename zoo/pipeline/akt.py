"""The AKT job (`jobs/akt.py`): improve a target classifier with unlabelled images of other classes
(paper 003, Gupta et al.), and register it in the zoo as a teacher that `jobs/unify.py` can take.

    result = run_akt(cfg)      # cfg: zoo.config.AKTJobConfig

A sequence of stages under the run directory, each skipped on a rerun when its inputs are unchanged:

0. inputs, all checked before anything runs: the target ImageFolder (>= 2 classes, images of one
   shape), the source (it exists and holds images), the evaluation set, M's network, the method;
1. `target/transfer.parquet` and `source/transfer.parquet` (`zoo.pipeline.transfer.transfer_stage`, one
   sub-run-directory each); the source's images must have the target's shape;
2. M, G, D_I and D_G on Ray Train (`zoo.pipeline.training.train_network` with `AKTData`, an
   `EpochTraining`: `zoo.akt.akt_epoch` per epoch, `zoo.akt.check_divergence` after each), with
   checkpoints, resume, progress per epoch and MLflow curves; a diverged game raises `AKTDiverged`;
3. M evaluated on --eval (else on its own labelled target images, said so);
4. M registered as a teacher with its lineage (method, lambdas, target and source fingerprints); a
   rerun that changes nothing registers nothing; then the summary table.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.akt import AKTConfig, AKTOptimisers, akt_epoch, akt_nets_for, check_divergence, make_optimisers
from zoo.artifacts import ModelSpec, check_artifact
from zoo.config import AKTJobConfig
from zoo.data import ImageDecodeError, decode_image, list_images, read_image, read_image_folder
from zoo.labels import build_label_space
from zoo.pipeline import JobError
from zoo.pipeline.cache import RunDir, StageResult, fingerprint
from zoo.pipeline.datasets import LabelledSet, input_spec_for, read_labelled_folder
from zoo.pipeline.evaluation import evaluate_model
from zoo.pipeline.session import Session
from zoo.pipeline.storage import PathLike, is_uri, join, local_copy, read_text, write_json_atomic
from zoo.pipeline.training import StudentDiverged, train_network
from zoo.pipeline.transfer import (
    TransferSetError,
    load_transfer_images,
    read_transfer_ids,
    read_transfer_images,
    transfer_stage,
)
from zoo.registry import ModelNotFound, ModelRecord, Registry
from zoo.train import Schedule

__all__ = ["AKTData", "AKTDiverged", "AKTInputs", "AKTResult", "check_inputs", "run_akt"]

TRAIN_VERSION = 1
REGISTER_VERSION = 1
RULE, THIN = "=" * 78, "-" * 78


class AKTDiverged(RuntimeError):
    """The game diverged (`zoo.akt.check_divergence`: a NaN, or D_I winning for epochs); nothing was
    registered. The message says what happened and what to try."""


@dataclass(frozen=True)
class AKTData:
    """What every Ray Train worker trains on (a `zoo.pipeline.training.EpochTraining`): the target's
    images (target/transfer.parquet, ``labels`` in its row order) and the source's, M, G, D_I and D_G
    in one module (`zoo.akt.AKTNets`), their optimisers, and one epoch of `zoo.akt.akt_epoch`."""

    target_path: str
    labels: tuple[int, ...]
    source_path: str | None
    akt: AKTConfig
    schedule: Schedule
    target_fingerprint: str
    source_fingerprint: str | None
    progress: tuple[str, ...] = ("loss_m_target", "d_acc", "agreement", "eval_accuracy")

    def check(self) -> None:
        n = len(read_transfer_ids(self.target_path))
        if n != len(self.labels):
            raise JobError(
                f"{self.target_path} holds {n} images but {len(self.labels)} labels: rerun with --force"
            )
        if self.akt.uses_source and (self.source_path is None or not read_transfer_ids(self.source_path)):
            raise JobError(f"method {self.akt.method!r} needs source images; none found")

    def describe(self) -> dict[str, Any]:
        return {**asdict(self.akt), "target": self.target_fingerprint, "source": self.source_fingerprint}

    def build(self, spec: ModelSpec) -> tuple[torch.nn.Module, dict[str, torch.optim.Optimizer]]:
        nets = akt_nets_for(spec, self.akt.d_hidden)
        opt = make_optimisers(nets, self.akt)
        return nets, {k: o for k, o in (("m", opt.m), ("g", opt.g), ("d", opt.d)) if o is not None}

    def load(self, spec: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x_t = load_transfer_images(self.target_path, spec)[1].to(device)
        y_t = torch.tensor(self.labels, dtype=torch.int64, device=device)
        use = self.source_path is not None and self.akt.uses_source
        x_s = load_transfer_images(self.source_path, spec)[1].to(device) if use else None
        return x_t, y_t, x_s

    def train_epoch(self, module, optimisers, data, epoch: int, rank: int, world: int) -> dict[str, float]:
        opt = AKTOptimisers(optimisers["m"], optimisers.get("g"), optimisers.get("d"))
        return akt_epoch(module, opt, *data, self.akt, self.schedule, epoch=epoch, world=world, rank=rank)

    def stop(self, history: list[dict[str, Any]]) -> str | None:
        return check_divergence(history, self.akt)

    def network(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.m


@dataclass
class AKTInputs:
    """Everything the job needs, checked before any compute."""

    target: LabelledSet
    ids: list[str]  # the target images' ids: their paths relative to --target
    classes: list[str]
    shape: tuple[int, ...]  # one image's array shape: (H, W) or (H, W, C)
    eval_set: LabelledSet | None
    spec: ModelSpec
    akt: AKTConfig
    schedule: Schedule


@dataclass
class AKTResult:
    """What the job did: its data, the training's per-epoch history, M's accuracy, the registration."""

    name: str
    method: str
    classes: list[str]
    n_target: int
    n_source: int
    accuracy: float
    metric: str  # eval_accuracy (on --eval) or target_accuracy (on the labelled target images)
    warmup_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    registered: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    mlflow_run_id: str | None = None
    tracking_uri: str = ""
    seconds: float = 0.0
    summary: str = ""


def run_akt(cfg: AKTJobConfig, log: Callable[[str], None] = print) -> AKTResult:
    """Run the whole job for ``cfg``; prints progress and the summary table, returns the result.
    JobError for bad input (before any compute), AKTDiverged when the game diverges."""
    t0 = time.perf_counter()
    with Session(
        cfg.run_path, tracking_uri=cfg.tracking_uri, force=cfg.force, log=log,
        ray_address=cfg.ray_address, num_cpus=cfg.num_cpus,
    ) as s:  # fmt: skip
        inp = check_inputs(cfg, s.log)
        target, source = data_stages(cfg, s, inp)
        trained = train_stage(cfg, s, inp, target, source)
        value = trained.value or {}
        if inp.eval_set is not None:
            metric, accuracy = "eval_accuracy", evaluate_model(trained.path, inp.eval_set, {})["all"]
        else:
            metric, accuracy = "target_accuracy", evaluate_model(trained.path, inp.target, {})["all"]
            s.log("[eval] no --eval: the accuracy is M's on its own labelled target images (training data)")
        res = AKTResult(
            name=cfg.name, method=cfg.method, classes=inp.classes, n_target=len(inp.target),
            n_source=value.get("n_source", 0), accuracy=accuracy, metric=metric,
            warmup_epochs=inp.akt.warmup_epochs, history=value.get("history", []), run_dir=str(s.run.display),
            mlflow_run_id=value.get("mlflow_run_id"), tracking_uri=s.tracking_uri,
        )  # fmt: skip
        eval_fp = (inp.eval_set or inp.target).fingerprint()
        res.registered = register_stage(cfg, s, inp, res, trained, (target, source), eval_fp).value
        res.seconds = time.perf_counter() - t0
        _publish(res, s)
        log(res.summary)
        return res


# ------------------------------------------------------------------------------------------ inputs
def check_inputs(cfg: AKTJobConfig, log: Callable[[str], None] = print) -> AKTInputs:
    """The target ImageFolder, the source, the evaluation set, M's network and the method: every input,
    checked before any compute (JobError naming the fix otherwise)."""
    target, ids, classes = _read_target(cfg.target)
    shapes = sorted({np.asarray(im).shape for im in target.images})
    if len(shapes) > 1:
        raise JobError(
            f"--target {cfg.target}: images of {len(shapes)} shapes ({shapes[:4]}...): M needs one input "
            "size; resize them to one size (and one colour mode) first"
        )
    counts = np.bincount(target.labels, minlength=len(classes))
    log(f"[target] {len(target)} labelled images, classes {classes}, per class {counts.tolist()}")
    if cfg.source is not None:
        _check_source(cfg.source)
    eval_set = None
    if cfg.eval is not None:
        eval_set = read_labelled_folder(cfg.eval, build_label_space([classes]), flag="--eval", log=log)
        log(f"[eval] {len(eval_set)} labelled images from {eval_set.source}")
    spec = cfg.classifier_spec(classes, input_spec_for(np.stack(target.images)))
    return AKTInputs(target, ids, classes, shapes[0], eval_set, spec, cfg.akt(), cfg.schedule())


def _read_target(path: str) -> tuple[LabelledSet, list[str], list[str]]:
    """The labelled target ImageFolder decoded: (images and labels, ids = relative paths, classes)."""
    try:
        paths, labels, classes = read_image_folder(path)
    except (NotADirectoryError, ValueError) as e:
        raise JobError(f"--target {path}: {e}") from None
    if len(classes) < 2:
        raise JobError(
            f"--target {path} has one class ({classes[0]!r}): a classifier needs at least 2 class "
            "directories, target/<class>/<image>"
        )
    images, bad = [], []
    for p in paths:
        try:
            images.append(read_image(p))
        except (ImageDecodeError, OSError) as e:
            bad.append(f"{p}: {e}")
    if bad:
        raise JobError(
            f"--target {path}: {len(bad)} images cannot be decoded, first: {bad[:3]}; fix or remove them"
        )
    ids = [Path(p).relative_to(path).as_posix() for p in paths]
    return LabelledSet(images, labels, f"ImageFolder {path}"), ids, classes


def _check_source(source: str) -> None:
    """The source exists and, for a directory, holds images (Parquet is checked when materialised)."""
    path = Path(source)
    if not path.exists():
        raise JobError(f"--source {source} does not exist; pass a directory of images or a Parquet file")
    if path.is_dir() and not list_images(path) and not any(path.rglob("*.parquet")):
        raise JobError(
            f"--source {source} holds no images (png, jpg, jpeg, webp, bmp) or Parquet files; point it at "
            "unlabelled images of other classes"
        )


# ------------------------------------------------------------------------------------------ stages
def data_stages(cfg: AKTJobConfig, s: Session, inp: AKTInputs) -> tuple[StageResult, StageResult | None]:
    """Stage 1: the target's and the source's images as Parquet (`transfer_stage`, in <run>/target/ and
    <run>/source/, skipped when up to date); then the source's images must have the target's shape."""
    sub = lambda name: RunDir(s.run.path(name), force=cfg.force, log=s.log).ensure()  # noqa: E731
    target = transfer_stage(sub("target"), (inp.target.images, inp.ids))
    if cfg.source is None:
        return target, None
    try:
        source = transfer_stage(
            sub("source"), cfg.source, image_column=cfg.image_column, id_column=cfg.id_column,
            limit=cfg.source_limit,
        )  # fmt: skip
    except TransferSetError as e:  # its messages name the unify job's flag
        raise JobError(str(e).replace("--transfer", "--source")) from None
    ids, blobs = read_transfer_images(source.path)
    shapes: dict[tuple[int, ...], str] = {}
    for sid, blob in zip(ids, blobs):
        shapes.setdefault(decode_image(blob).shape, str(sid))
    other = {k: v for k, v in shapes.items() if k != inp.shape}
    if other:
        shape, sid = next(iter(other.items()))
        raise JobError(
            f"--source {cfg.source}: image {sid!r} has shape {shape}, the target's are {inp.shape} "
            f"({len(other)} other shape(s)); M and G read both: resize the source to the target's size "
            "and colour mode"
        )
    s.log(f"[source] {len(ids)} unlabelled images")
    return target, source


def train_stage(
    cfg: AKTJobConfig, s: Session, inp: AKTInputs, target: StageResult, source: StageResult | None
) -> StageResult:
    """Stage 2: M, G, D_I, D_G on Ray Train, the classifier M in `<run>/train/akt-<fp>/classifier`, with
    the job's MLflow run; its sidecar keeps the metrics, the per-epoch history and the run id."""
    absolute = lambda p: str(p) if is_uri(p) else str(Path(p).resolve())  # noqa: E731 - workers run elsewhere
    data = AKTData(
        absolute(target.path), tuple(int(v) for v in inp.target.labels),
        None if source is None else absolute(source.path), inp.akt, inp.schedule, target.value,
        None if source is None else source.value,
    )  # fmt: skip
    net = replace(inp.spec, metadata={})
    eval_fp = None if inp.eval_set is None else inp.eval_set.fingerprint()
    inputs = [net.to_dict(), inp.schedule, inp.akt, target.value, data.source_fingerprint, eval_fp,
              cfg.num_workers, cfg.use_gpu]  # fmt: skip
    run_name = f"akt-{fingerprint('akt', TRAIN_VERSION, *inputs)[:12]}"

    def train(path: Any, _fp: str) -> dict[str, Any]:
        s.start_ray()
        run_id = s.open_mlflow_run(
            cfg.experiment, f"{cfg.name}-{cfg.method}",
            tags={"zoo.job": "akt", "zoo.run_dir": s.run.display, "method": cfg.method},
            params={f"job.{k}": v for k, v in cfg.to_dict().items() if v is not None and k != "force"},
        )  # fmt: skip
        try:
            result = train_network(
                inp.spec, inp.schedule, data, storage_path=s.run.train_storage, run_name=run_name,
                eval_set=inp.eval_set, num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                mlflow_tracking_uri=s.tracking_uri, mlflow_run_id=run_id, output_name="classifier",
                mlflow_prefix="akt",
            )  # fmt: skip
        except StudentDiverged as e:
            s.client.set_tag(run_id, "diverged", str(e)[:5000])
            s.client.set_terminated(run_id, "FAILED")
            raise AKTDiverged(str(e)) from None
        n_source = 0 if source is None else len(read_transfer_ids(source.path))
        metrics = json.loads(json.dumps(result.metrics, default=str))
        return {**metrics, "history": result.history, "n_source": n_source, "mlflow_run_id": run_id}

    return s.run.stage(
        "akt", join(s.run.train_storage, run_name, "classifier"), TRAIN_VERSION, inputs, train, sidecar=True
    )


def register_stage(
    cfg: AKTJobConfig,
    s: Session,
    inp: AKTInputs,
    res: AKTResult,
    trained: StageResult,
    data: tuple[StageResult, StageResult | None],
    eval_fp: str,
) -> StageResult:
    """Stage 4: M registered as a version of ``cfg.name`` with role=teacher, the tags `jobs/unify.py`
    and `zoo list` read, and its lineage in the spec (`registration.json` records it)."""
    target, source = data
    lineage = {
        "job": "akt",
        "method": cfg.method,
        "akt": json.loads(json.dumps(asdict(inp.akt))),
        "schedule": inp.schedule.to_dict(),
        "target_fingerprint": target.value,
        "source_fingerprint": None if source is None else source.value,
        "target_source": inp.target.source,
        "source_source": cfg.source,
        "akt_fingerprint": trained.fingerprint,
        "metrics": {res.metric: res.accuracy},
        "eval_source": inp.eval_set.source if inp.eval_set is not None else inp.target.source,
        "eval_fingerprint": eval_fp,
        "mlflow_run_id": res.mlflow_run_id,
    }
    tags = {
        "role": "teacher", "job": "akt", "method": cfg.method, "lambda_di": str(inp.akt.lambda_di),
        "lambda_dg": str(inp.akt.group_weight), "lambda_s": str(inp.akt.lambda_s),
        "warmup_epochs": str(inp.akt.warmup_epochs), "target_fingerprint": str(target.value),
        "source_fingerprint": str(lineage["source_fingerprint"]), "akt_fingerprint": trained.fingerprint,
        "metric": res.metric, "metric_value": repr(res.accuracy), "eval_fingerprint": eval_fp,
        **({"zoo": cfg.zoo} if cfg.zoo else {}),
    }  # fmt: skip

    def register(path: Any, fp: str) -> dict[str, Any]:
        record = _registered(s.registry, cfg.name, trained.fingerprint)
        if record is not None:
            s.log(
                f"[register] {cfg.name} v{record.version} already holds this classifier: nothing registered"
            )
        else:
            with local_copy(trained.path) as d:
                record = register_classifier(s.registry, cfg.name, d, lineage, tags)
            s.log(f"[register] {record.name} v{record.version} (role=teacher)")
        reg = {
            "name": record.name,
            "version": record.version,
            "uri": f"models:/{record.name}/{record.version}",
        }
        write_json_atomic({"fingerprint": fp, **reg}, path)
        return reg

    inputs = [trained.fingerprint, cfg.name, s.tracking_uri, tags]
    out = s.run.stage("register", s.run.registration, REGISTER_VERSION, inputs, register)
    if out.skipped:
        out = replace(
            out, value={k: v for k, v in json.loads(read_text(out.path)).items() if k != "fingerprint"}
        )
    return out


def _registered(registry: Registry, name: str, akt_fingerprint: str) -> ModelRecord | None:
    """The version of ``name`` registered from this training, if any (a rerun registers nothing)."""
    try:
        versions = registry.versions(name)
    except ModelNotFound:
        return None
    return next((r for r in versions if r.tags.get("akt_fingerprint") == akt_fingerprint), None)


def register_classifier(
    registry: Registry, name: str, model_dir: PathLike, lineage: dict[str, Any], tags: dict[str, str]
) -> ModelRecord:
    """Register ``model_dir`` (zoo artifact) as a new version of ``name`` with ``tags``; the lineage
    travels with the weights, in the spec's metadata (a staged copy; ``model_dir`` is left alone)."""
    spec = check_artifact(Path(model_dir))
    with tempfile.TemporaryDirectory(prefix="zoo-akt-") as tmp:
        staged = Path(tmp) / "model"
        shutil.copytree(model_dir, staged)
        d = spec.to_dict()
        d["metadata"] = {**(d.get("metadata") or {}), "lineage": json.loads(json.dumps(lineage, default=str))}
        (staged / "spec.json").write_text(json.dumps(d, indent=2, sort_keys=True))
        check_artifact(staged)
        description = f"{lineage['method']} (paper 003) on {lineage['target_source']}"
        return registry.register(name, staged, tags=tags, description=description)


# ------------------------------------------------------------------------------------------ report
def format_summary(res: AKTResult, rows: int = 25) -> str:
    """The table printed at the end: the data, the per-epoch game, M's accuracy, where to look."""
    keys = [k for k in ("loss_m_target", "d_acc", "dg_acc", "agreement", "eval_accuracy")
            if any(k in h for h in res.history)]  # fmt: skip
    step = max(1, -(-len(res.history) // rows))
    shown = [h for i, h in enumerate(res.history) if i % step == 0 or i == len(res.history) - 1]
    warmup = f"; warm-up {res.warmup_epochs} epochs (M on the target alone)" if res.warmup_epochs else ""
    lines = [
        "", RULE,
        f"AKT classifier {res.name!r} ({res.method}): {len(res.classes)} classes {res.classes}",
        f"target {res.n_target} labelled images, source {res.n_source} unlabelled images{warmup}", THIN,
        f"{'epoch':>5} " + "".join(f"{k:>15}" for k in keys),
    ]  # fmt: skip
    for h in shown:  # "-": no game in that epoch (the warm-up, or a method without one)
        cells = "".join(f"{h[k]:>15.4f}" if k in h else f"{'-':>15}" for k in keys)
        lines.append(f"{int(h['epoch']) + 1:>5} {cells}")
    reg = res.registered or {}
    what = "on --eval" if res.metric == "eval_accuracy" else "on its own labelled target images (no --eval)"
    lines += [
        THIN,
        f"M's accuracy {what}: {res.accuracy:.4f}",
        f"registered   {reg.get('uri')} (role=teacher); unify it with others:",
        f"             python jobs/unify.py --teachers {reg.get('name')},<others> --transfer DIR --eval DIR",
        f"run          {res.run_dir}; {res.seconds:.0f}s",
        f"MLflow       {res.tracking_uri}  run {res.mlflow_run_id}  (curves akt.*)",
        RULE,
    ]
    return "\n".join(lines)


def _publish(res: AKTResult, s: Session) -> None:
    """summary.json, the final accuracy and the registered version in the job's MLflow run."""
    res.summary = format_summary(res)
    write_json_atomic({k: v for k, v in asdict(res).items() if k != "summary"}, s.run.summary)
    if res.mlflow_run_id is None:
        return
    s.client.log_metric(res.mlflow_run_id, f"akt.final.{res.metric}", res.accuracy)
    s.client.set_tag(
        res.mlflow_run_id, "registered_model", f"{res.registered.get('name')}:{res.registered.get('version')}"
    )
    with local_copy(s.run.summary) as f:
        s.client.log_artifact(res.mlflow_run_id, str(f))
    s.client.set_terminated(res.mlflow_run_id)
