"""Train a network on Ray Train: the training core (`zoo.train`) on DDP workers, with checkpoints.

    result = train_network(spec, schedule, data, storage_path=..., run_name=..., eval_set=...)
    result = train_student(spec, schedule, recipe, transfer_path, targets_path, ...)   # the unified student

`train_network` runs a `TorchTrainer` (DDP on gloo, or NCCL on GPUs) whose workers each build the
network from its spec (`zoo.artifacts.build_net`, seeded: the same initial weights for every recipe of
a trial, paper 001 Sec. 4.1.1), load what they train on once (``data.load``: images on the device and
the loss of a batch, `zoo.train.LossFn`), and run `zoo.train.train_epoch` on their rank's share of
`zoo.train.epoch_order(seed, epoch)`. Any job's trainer is a `TrainingData` (the unified student's is
`StudentData`; cross-task distillation and multi-label distillation bring their own). A trainer with
several networks and its own step (AKT: M, G and two discriminators) is an `EpochTraining`: it builds
its module and optimisers and trains an epoch itself; the runner does the rest the same way (checkpoints
of the module and every optimiser, resume, data-parallel workers, reports, MLflow curves).

Checkpoints (weights in safetensors, optimiser state, epoch and the metrics history) go to
``<storage>/<run_name>/checkpoint_*`` when ``checkpointing`` says (every k epochs, or once some
seconds have passed since the last: on small data a checkpoint per epoch costs more than the epoch),
and always after the last epoch. After a worker failure Ray Train restarts the workers, which resume
from the last checkpoint (`FailureConfig`); calling `train_network` again with the same storage and
name resumes too. The metrics say how the time went: ``compute_s`` (epochs), ``overhead_s``
(checkpoints and reports) and ``fit_seconds`` (all of `fit()`, start-up included).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from zoo.artifacts import InputSpec, ModelSpec, build_net, preprocess, save_model
from zoo.pipeline.cache import fingerprint
from zoo.pipeline.console import train_log_level
from zoo.pipeline.datasets import LabelledSet
from zoo.pipeline.soft_labels import load_targets
from zoo.pipeline.storage import (
    PathLike,
    fs_path,
    is_uri,
    join,
    read_parquet,
    read_text,
    upload_dir,
    write_text,
)
from zoo.pipeline.transfer import load_transfer_images
from zoo.train import LossFn, Schedule, augment_generator, epoch_order, evaluate, train_epoch
from zoo.unify.recipe import Recipe, make_loss

__all__ = [
    "Checkpointing",
    "EpochTraining",
    "StudentData",
    "StudentDiverged",
    "TrainResult",
    "TrainingData",
    "train_network",
    "train_student",
]

log = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = "state.json"
CONFIG_FILE = "train_config.json"
WORKERS_DIR = "workers"  # one JSON per rank per attempt start: pid, host, start epoch (ops, tests)


class StudentDiverged(FloatingPointError):
    """The training loss became NaN or infinite (the weights are lost): lower the lr."""


class TrainingData(Protocol):
    """What a network trains on, shipped to every worker (picklable)."""

    def check(self) -> None:
        """On the driver, before workers start (~20 s): raise if the inputs do not fit together."""

    def load(self, spec: InputSpec, device: torch.device) -> tuple[torch.Tensor, LossFn]:
        """On a worker: the images float32 [B, C, H, W] on ``device`` and loss(outputs, idx). A loss
        with a ``bind(model)`` method is given the network before training (a loss that runs it)."""

    def describe(self) -> dict[str, Any]:
        """What defines the training beyond the spec and schedule (logged as params, fingerprinted)."""


class EpochTraining(TrainingData, Protocol):
    """A TrainingData with its own module, optimisers and epoch (e.g. `zoo.pipeline.akt.AKTData`);
    `train_network` takes this path when the data has ``train_epoch``. The runner checkpoints the
    module's one state_dict and every optimiser, averages gradients over data-parallel workers (a hook
    before each optimiser step), agrees the metrics over ranks, reports, and logs every metric."""

    progress: tuple[str, ...]  # the metrics the progress bar shows after each epoch

    def build(self, spec: ModelSpec) -> tuple[torch.nn.Module, dict[str, torch.optim.Optimizer]]:
        """The module to train (one state_dict) and its optimisers by name; no data (the driver calls
        it too, to rebuild the trained network from the last checkpoint)."""

    def load(self, spec: InputSpec, device: torch.device) -> Any:  # type: ignore[override]
        """On a worker, once: what ``train_epoch`` trains on, on ``device``."""

    def train_epoch(
        self, module: torch.nn.Module, optimisers: dict, data: Any, epoch: int, rank: int, world: int
    ) -> dict[str, float]:
        """One epoch on this rank's share; the metrics hold ``train_loss`` and ``samples`` (images)."""

    def stop(self, history: list[dict[str, Any]]) -> str | None:
        """After each epoch (the same history on every rank): why to stop now (the run then ends as
        diverged, `StudentDiverged`), or None."""

    def network(self, module: torch.nn.Module) -> torch.nn.Module:
        """The network of the spec inside ``module``: evaluated after each epoch, saved at the end."""


@dataclass(frozen=True)
class _PlainEpochs:
    """A TrainingData of images and a batch loss as an EpochTraining: one network, one optimiser, the
    schedule's lr and `zoo.train.train_epoch` on this rank's `epoch_order`."""

    data: TrainingData
    schedule: Schedule
    augment: bool
    progress: tuple[str, ...] = ("train_loss", "val_accuracy", "eval_accuracy")

    def check(self) -> None:
        self.data.check()

    def describe(self) -> dict[str, Any]:
        return self.data.describe()

    def build(self, spec: ModelSpec) -> tuple[torch.nn.Module, dict[str, torch.optim.Optimizer]]:
        net = build_net(spec)
        return net, {"model": self.schedule.make_optimizer(net.parameters())}

    def load(self, spec: InputSpec, device: torch.device) -> tuple[torch.Tensor, LossFn]:
        return self.data.load(spec, device)

    def train_epoch(self, module, optimisers, data, epoch: int, rank: int, world: int) -> dict[str, float]:
        (images, loss_fn), opt, seed = data, optimisers["model"], self.schedule.seed
        lr = self.schedule.set_lr(opt, epoch)
        order = epoch_order(len(images), seed, epoch, world, rank)
        gen = augment_generator(seed, epoch, rank) if self.augment else None
        loss = train_epoch(
            module, opt, images, loss_fn, order, math.ceil(self.schedule.batch_size / world), gen
        )
        return {"train_loss": loss, "lr": lr, "samples": len(images)}

    def stop(self, history: list[dict[str, Any]]) -> None:
        return None

    def network(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


def _epochs(data: TrainingData, schedule: Schedule, augment: bool) -> EpochTraining:
    return data if hasattr(data, "train_epoch") else _PlainEpochs(data, schedule, augment)


@dataclass(frozen=True)
class StudentData:
    """The unified student's: the transfer set and its targets by a recipe (paper 001, Sec. 3.5):
    soft labels (soft_labels.parquet, modes E and BS) or the teachers' logits (logits.parquet, BP)."""

    transfer_path: str
    targets_path: str
    classes: tuple[str, ...]
    recipe: Recipe

    def check(self) -> None:
        ids = [str(i) for i in read_parquet(self.transfer_path, columns=["id"]).column("id").to_pylist()]
        load_targets(self.targets_path, ids, self.classes, self.recipe)

    def load(self, spec: InputSpec, device: torch.device) -> tuple[torch.Tensor, LossFn]:
        ids, images = load_transfer_images(self.transfer_path, spec)
        targets = load_targets(self.targets_path, ids, self.classes, self.recipe)
        return images.to(device), make_loss(self.recipe, targets, device)

    def describe(self) -> dict[str, Any]:
        return self.recipe.to_dict()


@dataclass(frozen=True)
class Checkpointing:
    """When workers checkpoint: every ``every_epochs`` epochs when set, else once ``every_s``
    seconds have passed since the last checkpoint; always after the last epoch. ``keep``: how many
    checkpoints the run directory keeps."""

    every_epochs: int | None = None
    every_s: float = 30.0
    keep: int = 2


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict[str, Any]
    checkpoint_path: str
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- worker
def _save_checkpoint(
    directory: Path, model: torch.nn.Module, optimizers: dict, state: dict[str, Any]
) -> None:
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        directory / CHECKPOINT_WEIGHTS,
    )
    torch.save({k: o.state_dict() for k, o in optimizers.items()}, directory / CHECKPOINT_OPTIMIZER)
    (directory / CHECKPOINT_STATE).write_text(json.dumps(state))


def _load_checkpoint(directory: Path, model: torch.nn.Module, optimizers: dict) -> dict[str, Any]:
    """Weights and optimisers (by name) from ``directory`` into ``model`` and ``optimizers``; the state."""
    model.load_state_dict(load_file(str(directory / CHECKPOINT_WEIGHTS)))
    saved = torch.load(directory / CHECKPOINT_OPTIMIZER, weights_only=True)
    if "param_groups" in saved:  # a checkpoint of one optimiser, written before they were named
        saved = {"model": saved}
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(saved[name])
    return json.loads((directory / CHECKPOINT_STATE).read_text())


def _restore(model: torch.nn.Module, optimizers: dict, config: dict[str, Any]) -> dict[str, Any]:
    """Resume from the run's last checkpoint (weights, optimisers, state) when there is one; record
    this attempt's start epoch."""
    state: dict[str, Any] = {"epoch": -1, "history": [], "attempt_start_epochs": []}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = _load_checkpoint(Path(d), model, optimizers)
        if state.get("config_fingerprint") != config["config_fingerprint"]:
            raise ValueError(
                f"the checkpoint in {config['run_dir']} was made with another student config: "
                "use another run_name, or delete that run directory to start afresh"
            )
    state["config_fingerprint"] = config["config_fingerprint"]
    state["attempt_start_epochs"] = [*state.get("attempt_start_epochs", []), state["epoch"] + 1]
    return state


def _report(state: dict[str, Any], model: torch.nn.Module, optimizers: dict, rank: int) -> float:
    """Checkpoint (rank 0 writes it) and report the last epoch's metrics; returns the seconds spent."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            _save_checkpoint(Path(tmp), model, optimizers, state)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(state["history"][-1] if state["history"] else {}, checkpoint=checkpoint)
    return time.perf_counter() - t0


def _agree(values: list[float], device: torch.device, world: int) -> list[float]:
    """Sum ``values`` over the ranks (every rank then takes the same decisions)."""
    if world == 1:
        return values
    t = torch.tensor(values, device=device, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _average_gradients(world: int):
    """An optimiser step pre-hook that averages the gradients of its parameters over the ranks: data
    parallelism for a step of one's own (DDP averages only through its wrapper's forward)."""

    def hook(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= world
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))

    return hook


def _broadcast_floats(module: torch.nn.Module, tensors: str) -> None:
    """Rank 0's floating parameters or buffers (BatchNorm statistics) on every rank."""
    for t in getattr(module, tensors)():
        if t.is_floating_point():
            torch.distributed.broadcast(t.data, 0)


def _parallel(data: EpochTraining, module: torch.nn.Module, optimizers: dict, world: int) -> torch.nn.Module:
    """The module the epochs train: DDP for one network trained by a batch loss; for an EpochTraining,
    the module itself, started from rank 0's weights, with gradients averaged before every step."""
    if isinstance(data, _PlainEpochs):
        return ray.train.torch.prepare_model(module)
    if world > 1:
        _broadcast_floats(module, "parameters")
        _broadcast_floats(module, "buffers")
        for optimizer in optimizers.values():
            optimizer.register_step_pre_hook(_average_gradients(world))
    return module


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (one per rank): build, resume, load data once, train, report."""
    spec: ModelSpec = config["spec"]
    schedule: Schedule = config["schedule"]
    every: Checkpointing = config["checkpointing"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # As many threads as whole CPUs granted, never more than this node's cores per local worker
    # (Ray may count more logical CPUs than there are cores; oversubscribed DDP ranks stall each other).
    cores = (os.cpu_count() or 1) // max(1, ctx.get_local_world_size())
    torch.set_num_threads(max(1, min(config["threads"], cores)))
    device = ray.train.torch.get_device()
    data = _epochs(config["data"], schedule, config["augment"])
    torch.manual_seed(schedule.seed)  # the same initial weights for a given seed, whatever the recipe
    bare, optimizers = data.build(spec)
    bare.to(device)  # before the optimisers' state is restored: it follows its parameters' device
    state = _restore(bare, optimizers, config)
    first = state["epoch"] + 1
    info = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "start_epoch": first}
    write_text(join(config["run_dir"], WORKERS_DIR, f"rank-{rank}.json"), json.dumps(info))
    model = _parallel(data, bare, optimizers, world)
    if first >= schedule.epochs or state.get("stopped"):  # a finished run called again: report its last state
        _report(state, bare, optimizers, rank)
        return
    loaded = data.load(spec.input, device)
    if isinstance(data, _PlainEpochs) and hasattr(loaded[1], "bind"):
        # A loss that runs the network itself (multi-label 3D's second views) gets the bare module:
        # one backward through both forwards, one DDP reduction.
        loaded[1].bind(bare)
    evals = _eval_tensors(config["eval_set"], spec.input, device) if rank == 0 else None
    vals = _eval_tensors(config["val_set"], spec.input, device) if rank == 0 else None
    last_ckpt = time.perf_counter()
    # stdout: a bar on stderr has no newline and gets glued to Ray's own lines (zoo.pipeline.console).
    bar = tqdm(
        total=schedule.epochs, initial=first, desc="train", unit="epoch", disable=rank != 0, file=sys.stdout
    )
    for epoch in range(first, schedule.epochs):
        t0 = time.perf_counter()
        metrics = data.train_epoch(model, optimizers, loaded, epoch, rank, world)
        if world > 1 and not isinstance(data, _PlainEpochs):
            _broadcast_floats(bare, "buffers")
        seconds = time.perf_counter() - t0
        scores = {}
        if _evaluates(epoch, schedule.epochs):
            whole = epoch + 1 == schedule.epochs
            if evals is not None:
                scores["eval_accuracy"] = _accuracy(data.network(bare), evals, whole)
            if vals is not None:
                scores["val_accuracy"] = _accuracy(data.network(bare), vals, whole)
        stop = rank == 0 and _plateaued(state, scores, epoch, config["patience"])
        if every.every_epochs:
            periodic = (epoch + 1) % every.every_epochs == 0
        else:
            periodic = time.perf_counter() - last_ckpt >= every.every_s
        due = periodic or stop or epoch + 1 == schedule.epochs or not math.isfinite(metrics["train_loss"])
        *sums, due_votes, stop_votes = _agree([*metrics.values(), float(due), float(stop)], device, world)
        metrics = {k: v / world for k, v in zip(metrics, sums)}  # every rank: the same means
        samples = metrics.pop("samples")
        metrics = {
            "epoch": epoch,
            **metrics,
            "epoch_time_s": seconds,
            "samples_per_s": samples * world / seconds,
            **scores,
        }
        state["history"].append(metrics)
        state["epoch"] = epoch
        state["compute_s"] = state.get("compute_s", 0.0) + seconds
        stopped = data.stop(state["history"])  # a reason: the run ends as diverged
        if stopped:
            state["stopped"] = stopped
        shown = {k: round(v, 4) for k, v in metrics.items() if k in data.progress}
        bar.set_postfix(shown, refresh=False)  # one line per epoch in a log: update() draws it
        bar.update(1)
        if due_votes > 0 or stopped:  # every rank reports together (a report is a collective)
            state["overhead_s"] = state.get("overhead_s", 0.0) + _report(state, bare, optimizers, rank)
            last_ckpt = time.perf_counter()
        if stopped or not math.isfinite(metrics["train_loss"]):
            break  # every rank sees the same history; the driver raises StudentDiverged
        if stop_votes > 0:
            break  # the stop rule (rank 0 decides, every rank follows)
    bar.close()


EVALUATIONS = 25  # per-epoch curves: at most this many points a run
EVAL_SAMPLE = 2000  # images of an evaluation set scored between the first and the last epoch


def _evaluates(epoch: int, epochs: int) -> bool:
    """Whether the workers score the evaluation sets after ``epoch``: every epoch of a short run, about
    `EVALUATIONS` times in a long one (400 transfer images get ~190 epochs of a few steps each: scoring
    thousands of images after every one of them would cost more than the training), always the last."""
    return (epoch + 1) % max(1, math.ceil(epochs / EVALUATIONS)) == 0 or epoch + 1 == epochs


def _accuracy(model: torch.nn.Module, labelled: tuple[torch.Tensor, torch.Tensor], whole: bool) -> float:
    """Top-1 accuracy on the set, or on its first `EVAL_SAMPLE` images (a seeded shuffle, made once)
    for an intermediate point of the curve; the last epoch is scored on the whole set."""
    images, labels = labelled
    return (
        evaluate(model, images, labels)
        if whole
        else evaluate(model, images[:EVAL_SAMPLE], labels[:EVAL_SAMPLE])
    )


def _plateaued(state: dict[str, Any], metrics: dict[str, Any], epoch: int, patience: int | None) -> bool:
    """The stop rule: the validation accuracy has not improved for ``patience`` epochs (never without
    a validation set or a patience). Its record lives in the checkpointed state, so a resumed run
    keeps counting."""
    if patience is None or "val_accuracy" not in metrics:
        return False
    if metrics["val_accuracy"] > state.get("best_val_accuracy", -1.0):
        state.update(best_val_accuracy=metrics["val_accuracy"], best_epoch=epoch)
        return False
    if epoch - state["best_epoch"] >= patience:
        state["stopped_early_at"] = epoch
        return True
    return False


def _eval_tensors(
    ref: Any, spec: InputSpec, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if ref is None:
        return None
    images, labels = ray.get(ref)
    # Shuffled once (seeded), so the first EVAL_SAMPLE images are a fair sample of every class.
    order = np.random.default_rng(0).permutation(len(labels))
    images = images[order] if isinstance(images, np.ndarray) else [images[i] for i in order]
    labels = np.asarray(labels)[order]
    # A copy: arrays from the object store are read-only, and torch warns on those.
    return preprocess(images, spec).to(device), torch.tensor(
        np.array(labels), dtype=torch.int64, device=device
    )


# ---------------------------------------------------------------------------------------- driver
def _scaling(num_workers: int | None, use_gpu: bool | None) -> tuple[int, bool, float, int]:
    """(workers, use_gpu, CPUs per worker, torch threads per worker) sized from the cluster, so that
    fit() never waits for resources the cluster does not have (Train V2 would retry forever)."""
    total = ray.cluster_resources()
    avail = ray.available_resources()
    gpus = int(total.get("GPU", 0))
    if use_gpu is None:
        use_gpu = gpus > 0
    if use_gpu and gpus == 0:
        raise ValueError("use_gpu=True but the Ray cluster has no GPU: pass use_gpu=None or False")
    cpus = float(avail.get("CPU", 0.0)) or float(total.get("CPU", 1.0))
    if num_workers is None:
        num_workers = gpus if use_gpu else max(1, min(2, int(cpus)))
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if use_gpu and num_workers > gpus:
        raise ValueError(f"num_workers={num_workers} GPU workers but the cluster has {gpus} GPUs")
    # Leave the CPUs to the workers (fractional when there are fewer CPUs than workers), never ask
    # for more than exists: each worker runs as many torch threads as whole CPUs it holds.
    cpu_per_worker = max(0.25, min(cpus / num_workers, 8.0))
    if cpu_per_worker >= 1:
        cpu_per_worker = float(int(cpu_per_worker))
    return num_workers, bool(use_gpu), cpu_per_worker, max(1, int(cpu_per_worker))


def _claim_run_dir(run_dir: str, fp: str, described: dict[str, Any]) -> None:
    """Record what a run directory trains; refuse to resume a run of another config (its checkpoints
    hold another model), before any worker starts."""
    path = join(run_dir, CONFIG_FILE)
    fs, p = fs_path(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        recorded = json.loads(read_text(path))
        if recorded.get("fingerprint") != fp:
            raise ValueError(
                f"the training run {run_dir} was made with another student config (network, schedule or "
                f"data: {recorded.get('config')}): use another run_name, or delete that run directory"
            )
        return
    write_text(path, json.dumps({"fingerprint": fp, "config": described}, indent=2, default=str))


def _prune_orphan_checkpoints(result: Any) -> list[str]:
    """Delete checkpoint directories Ray Train never registered.

    A worker (or its node) lost while its checkpoint was being persisted leaves that directory in the
    run's storage, but the controller never tracked it, so ``num_to_keep`` never prunes it and a later
    reader could mistake it for a kept checkpoint. Only done when Ray reports the kept set."""
    kept = [c for c, _ in (getattr(result, "best_checkpoints", None) or [])]
    if not kept:
        return []
    fs = result.checkpoint.filesystem
    keep = {c.path.rstrip("/") for c in kept} | {result.checkpoint.path.rstrip("/")}
    parent = result.checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(parent)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("checkpoint_") and info.path not in keep:
            fs.delete_dir(info.path)
            removed.append(info.path)
    if removed:
        log.info("removed %d unregistered checkpoint(s) of a failed attempt: %s", len(removed), removed)
    return removed


def train_network(
    spec: ModelSpec,
    schedule: Schedule,
    data: TrainingData,
    *,
    storage_path: PathLike,
    run_name: str,
    eval_set: LabelledSet | None = None,
    val_set: LabelledSet | None = None,
    patience: int | None = None,
    augment: bool = False,
    checkpointing: Checkpointing = Checkpointing(),
    num_workers: int | None = None,
    use_gpu: bool | None = None,
    mlflow_tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
    output_name: str = "model",
    mlflow_prefix: str = "student",
) -> TrainResult:
    """Train ``spec``'s network on ``data`` with ``schedule`` on Ray Train and save it in the zoo's
    format under ``<storage_path>/<run_name>/<output_name>/`` (with ``spec``'s metadata and the metrics);
    needs a running Ray. Per-epoch metrics (train loss, accuracy on ``eval_set`` and on ``val_set`` when
    given; every metric of an `EpochTraining`) go to the MLflow run ``mlflow_run_id`` when given, as
    ``<mlflow_prefix>.<metric>``. The stop rule: with ``val_set`` and ``patience``, training stops once
    the validation accuracy has not improved for ``patience`` epochs (the last epoch's weights are
    kept). See the module docstring for checkpoints and resuming."""
    if not ray.is_initialized():
        raise RuntimeError(
            "train_network needs a running Ray: call ray.init() (or ray.init(address=...)) first"
        )
    if len(spec.classes) < 2:
        raise ValueError(f"a network needs at least 2 classes, got {spec.classes}")
    for name, labelled in (("eval_set", eval_set), ("val_set", val_set)):
        if labelled is not None and len(labelled):
            if labelled.labels.min() < 0 or labelled.labels.max() >= len(spec.classes):
                raise ValueError(f"{name} labels must be indices into the {len(spec.classes)} classes")
    if augment and hasattr(data, "train_epoch"):
        raise ValueError("augment applies to a TrainingData of images and a batch loss, not an EpochTraining")
    data.check()  # fail fast on the driver: the workers would fail the same way, after ~20 s
    workers, gpu, cpu_per_worker, threads = _scaling(num_workers, use_gpu)
    storage = str(storage_path) if is_uri(storage_path) else os.path.abspath(storage_path)
    run_dir = str(join(storage, run_name))
    bare_spec = replace(spec, metadata={})
    described = {
        "spec": bare_spec.to_dict(),
        "schedule": schedule.to_dict(),
        "data": data.describe(),
        "augment": augment,
    }
    fp = fingerprint(described)
    _claim_run_dir(run_dir, fp, described)
    log.info("training on %d worker(s), %s CPU(s) each, %d thread(s)", workers, cpu_per_worker, threads)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": bare_spec,
            "schedule": schedule,
            "data": data,
            "augment": augment,
            "checkpointing": checkpointing,
            "config_fingerprint": fp,
            # Through the object store: shipped once per node, not pickled into the run's config.
            "eval_set": None if eval_set is None else ray.put((eval_set.images, eval_set.labels)),
            "val_set": None if val_set is None else ray.put((val_set.images, val_set.labels)),
            "patience": patience,
            "run_dir": run_dir,
            "threads": threads,
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": cpu_per_worker, **({"GPU": 1} if gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            # Worker failures: restart and resume from the last checkpoint. Controller failures
            # (workers that cannot be scheduled within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s
            # by default) are retried once, then raised: Train V2's default is to retry forever.
            failure_config=FailureConfig(max_failures=2, controller_failure_limit=1),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpointing.keep),
            logging_config=ray.train.LoggingConfig(log_level=train_log_level()),
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    fit_seconds = time.perf_counter() - t0
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_dir} finished without a checkpoint")
    _prune_orphan_checkpoints(result)
    run = {"workers": workers, "use_gpu": gpu, "fit_seconds": fit_seconds, "run_dir": run_dir}
    mlflow = (mlflow_tracking_uri, mlflow_run_id, mlflow_prefix)
    return _finish(result, spec, schedule, _epochs(data, schedule, augment), run, output_name, mlflow)


def _finish(result, spec, schedule, data: EpochTraining, run, output_name, mlflow) -> TrainResult:
    """The trained network from the last checkpoint, saved as a zoo model with its metrics."""
    tracking_uri, run_id, prefix = mlflow
    module, optimizers = data.build(spec)
    with result.checkpoint.as_directory() as d:
        state = _load_checkpoint(Path(d), module, optimizers)
    history = state["history"]
    extra = {"num_workers": run["workers"], "use_gpu": run["use_gpu"], "fit_seconds": run["fit_seconds"]}
    if state.get("stopped"):
        if run_id is not None:  # the curves say what went wrong
            _log_to_mlflow(tracking_uri, run_id, prefix, spec, schedule, data, history, extra)
        raise StudentDiverged(f"{state['stopped']}; nothing was registered")
    if history and not math.isfinite(history[-1]["train_loss"]):
        raise StudentDiverged(
            f"the loss is {history[-1]['train_loss']} at epoch {history[-1]['epoch'] + 1} "
            f"({data.describe()}, lr={schedule.lr}): training diverged. Lower the lr (the logit-space BP "
            "losses of MF-LF and MF-LU need about 5x less than the E/BS modes) or raise the temperature; "
            "nothing was registered"
        )
    model = data.network(module)
    model.eval()
    last = history[-1] if history else {}
    steady = [h["samples_per_s"] for h in history[1:]] or [h["samples_per_s"] for h in history]
    metrics: dict[str, Any] = {
        "train_loss": last.get("train_loss"),
        "epochs": schedule.epochs,
        "num_workers": run["workers"],
        "use_gpu": run["use_gpu"],
        "fit_seconds": run["fit_seconds"],
        "compute_s": state.get("compute_s", 0.0),
        "overhead_s": state.get("overhead_s", 0.0),
        "samples_per_s": float(np.median(steady)) if steady else None,
        "attempt_start_epochs": state.get("attempt_start_epochs", []),
    }
    for key in ("eval_accuracy", "val_accuracy"):
        if key in last:
            metrics[key] = last[key]
    if "stopped_early_at" in state:
        metrics["stopped_early_at"] = state["stopped_early_at"]
    kept = {
        k: v for k, v in metrics.items() if k in ("train_loss", "eval_accuracy", "val_accuracy", "epochs")
    }
    # `accuracy` is what the registry shows for every zoo model.
    kept.update({"accuracy": metrics["eval_accuracy"]} if "eval_accuracy" in metrics else {})
    spec = replace(spec, metadata={**spec.metadata, "metrics": {**spec.metadata.get("metrics", {}), **kept}})
    model_dir = _save(model, spec, run["run_dir"], output_name)
    if run_id is not None:
        _log_to_mlflow(tracking_uri, run_id, prefix, spec, schedule, data, history, extra)
    return TrainResult(
        model_dir=model_dir, metrics=metrics, checkpoint_path=result.checkpoint.path, history=history
    )


def _save(model: torch.nn.Module, spec: ModelSpec, run_dir: str, name: str) -> Path:
    """Save under ``<run_dir>/<name>``; with remote storage save a local copy (registration needs a
    local directory) and upload it."""
    if not is_uri(run_dir):
        return save_model(model, spec, Path(run_dir) / name)
    model_dir = Path(tempfile.mkdtemp(prefix="zoo-model-")) / name
    save_model(model, spec, model_dir)
    upload_dir(model_dir, join(run_dir, name))
    return model_dir


def _log_to_mlflow(tracking_uri, run_id, prefix, spec, schedule, data, history, extra) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    params = {
        f"{prefix}.arch": spec.arch,
        f"{prefix}.arch_kwargs": json.dumps(spec.arch_kwargs, sort_keys=True),
        **{f"{prefix}.{k}": v for k, v in schedule.to_dict().items()},
        **{f"{prefix}.{k}": v for k, v in data.describe().items()},
        **{f"{prefix}.{k}": v for k, v in extra.items()},
    }
    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    now = int(time.time() * 1000)
    curves = ("train_loss", "eval_accuracy", "val_accuracy", "samples_per_s", "epoch_time_s")
    if not isinstance(data, _PlainEpochs):  # an EpochTraining's own metrics: every one is a curve
        curves = sorted({k for h in history for k in h} - {"epoch"})
    metrics = [
        Metric(f"{prefix}.{k}", float(h[k]), now, int(h["epoch"])) for h in history for k in curves if k in h
    ]
    metrics.append(Metric(f"{prefix}.fit_seconds", float(extra["fit_seconds"]), now, 0))
    for s in range(0, max(len(metrics), 1), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[s : s + 900], params=new if s == 0 else [])


def train_student(
    spec: ModelSpec,
    schedule: Schedule,
    recipe: Recipe,
    transfer_path: PathLike,
    targets_path: PathLike,
    **kwargs: Any,
) -> TrainResult:
    """The unified student (paper 001): `train_network` on `StudentData` (the transfer set and
    soft_labels.parquet for modes E and BS, logits.parquet for BP), with the recipe's augmentation;
    the saved spec's metadata says how it was made. ``kwargs`` go to `train_network`."""
    if recipe.self_train_rounds:
        raise ValueError(
            "self_train_rounds > 0 is a lever of the sweep's trials only; the Ray Train student trains "
            "one round: set self_train_rounds to 0"
        )
    absolute = lambda p: str(p) if is_uri(p) else os.path.abspath(p)  # noqa: E731 - workers run elsewhere
    data = StudentData(absolute(transfer_path), absolute(targets_path), tuple(spec.classes), recipe)
    made = {
        "role": "student",
        "method": recipe.method,
        "mode": recipe.mode,
        "temperature": recipe.temperature,
    }
    spec = replace(spec, metadata={**spec.metadata, **made, "recipe": recipe.to_dict()})
    return train_network(spec, schedule, data, augment=recipe.augment, output_name="student", **kwargs)
