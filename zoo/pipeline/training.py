"""Stage 4 of the main job: train the student C_U with Ray Train (paper 001, Secs. 3.3-3.5).

`train_student` runs a `TorchTrainer` (DDP on gloo, or NCCL on GPUs) whose workers each read the
transfer set and its targets from Parquet once, decode and preprocess the images to the student's
`InputSpec` once (cached in memory, on the device), and then train for `epochs` epochs:

- modes ``e`` and ``bs``: cross-entropy against the estimated soft labels q (soft_labels.parquet),
  with BS's class weights (inverse mean of q, Sec. 3.5.2) for ``bs``;
- mode ``bp``: the method's loss backpropagated directly from the teachers' logits through the
  student's output (logits.parquet, Sec. 3.5.1).

Every epoch rank 0 reports the metrics and a checkpoint (weights in safetensors, optimiser state,
epoch and the metrics history) to the run's storage; after a worker failure Ray Train restarts the
workers, which resume from the last checkpoint (`FailureConfig`), and calling `train_student` again
with the same `storage_path` and `run_name` resumes too. The batch order of an epoch depends only
on (seed, epoch), and the student's initial weights only on the seed, so the students of different
methods within one trial start from the same weights and see the same batches (paper 001, Sec.
4.1.1), and a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from zoo.artifacts import InputSpec, ModelSpec, preprocess, save_model

__all__ = [
    "EvalSet",
    "StudentConfig",
    "TrainResult",
    "StudentDiverged",
    "TargetError",
    "load_targets",
    "read_table",
    "train_student",
]

log = logging.getLogger(__name__)

MODES = ("e", "bp", "bs")
OPTIMIZERS = ("sgd", "adam")
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = "state.json"
CONFIG_FILE = "student_config.json"
WORKERS_DIR = "workers"  # one JSON per rank per attempt start: pid, host, start epoch (ops, tests)


class TargetError(ValueError):
    """The transfer set and the targets file do not fit together (ids, classes, mode, method)."""


class StudentDiverged(FloatingPointError):
    """The student's training loss became NaN or infinite (the weights are lost): lower the lr."""


@dataclass
class StudentConfig:
    """What the student is and how it is trained. The schedule follows paper 001, Sec. 4.1.1: SGD with
    momentum 0.9, step size ``lr`` for the first ``lr_step_at`` fraction of the epochs, then ``lr / 10``."""

    arch: str
    arch_kwargs: dict[str, Any]
    input: InputSpec
    epochs: int = 20
    lr: float = 0.1
    batch_size: int = 64
    method: str = "sd"
    mode: str = "e"
    temperature: float = 3.0
    seed: int = 0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step_at: float = 0.5
    # Levers beyond paper 001 (docs/unify.md, "Beyond the paper: levers"; zoo/unify/<lever>.py):
    teacher_temperatures: list[float] | None = None  # per-teacher calibration before estimation
    sample_weighting: str = (
        "none"  # "confidence": down-weight samples no teacher claims (E/BS; BP ignores it)
    )
    augment: bool = False  # random per-sample translations of the transfer images while training
    self_train_rounds: int = 0  # retrain with the student added as a teacher over all classes

    def __post_init__(self) -> None:
        if isinstance(self.input, dict):
            self.input = InputSpec.from_dict(self.input)
        check_levers(asdict(self))
        if self.mode not in MODES:
            raise ValueError(f"StudentConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"StudentConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"StudentConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError(
                f"StudentConfig needs lr > 0 and temperature > 0, got {self.lr}, {self.temperature}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input"] = self.input.to_dict()
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]


@dataclass
class EvalSet:
    """A labelled evaluation set: images uint8 [B, H, W(, C)] (or a list of such arrays) and labels
    int64 [B], indices into the student's classes (L_U)."""

    images: Any
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"EvalSet has {len(self.images)} images but {len(self.labels)} labels")

    def fingerprint(self) -> str:
        """sha256 of the pixels and labels: two students are comparable only on the same fingerprint."""
        h = hashlib.sha256()
        for img in self.images:
            a = np.ascontiguousarray(img)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict[str, Any]
    checkpoint_path: str
    history: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- storage
def _fs_path(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI (s3://, gs://, file://...)."""
    s = str(path)
    if "://" in s:
        return pafs.FileSystem.from_uri(s)
    return pafs.LocalFileSystem(), os.path.abspath(s)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet file from a local path or a URI."""
    fs, p = _fs_path(path)
    return pq.read_table(p, filesystem=fs)


def _write_text(path: str, text: str) -> None:
    fs, p = _fs_path(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    tmp = f"{p}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, p)


def _fixed_list(table: pa.Table, column: str) -> np.ndarray:
    """A fixed_size_list<float32>[W] column as float32 [rows, W]."""
    col = table.column(column).combine_chunks()
    if not pa.types.is_fixed_size_list(col.type):
        raise TargetError(f"column {column!r} must be fixed_size_list<float32>, got {col.type}")
    width = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), width)


def _metadata(table: pa.Table) -> dict[str, str]:
    meta = table.schema.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


# ---------------------------------------------------------------------------------------- data
def load_transfer_images(transfer_path: str | os.PathLike, spec: InputSpec) -> tuple[list[str], torch.Tensor]:
    """ids and the images of transfer.parquet decoded and preprocessed to ``spec``: float32 [B, C, H, W]."""
    from zoo.data import decode_image

    table = read_table(transfer_path)
    for col in ("id", "image"):
        if col not in table.column_names:
            raise TargetError(f"{transfer_path} has no column {col!r}: is it a transfer.parquet?")
    ids = [str(i) for i in table.column("id").to_pylist()]
    images = [decode_image(b) for b in table.column("image").to_pylist()]
    return ids, preprocess(images, spec)


def load_targets(
    targets_path: str | os.PathLike,
    ids: Sequence[str],
    classes: Sequence[str],
    mode: str,
    method: str,
) -> dict[str, Any]:
    """The training targets aligned to ``ids`` (the transfer set's order).

    Modes ``e``/``bs``: {"q": [B, L], "weights": [L] or None} from soft_labels.parquet (BS weights from
    its ``zoo.weights`` metadata). Mode ``bp``: {"logits": [B, N, L], "mask": bool [N, L]} from
    logits.parquet. Raises TargetError when the file does not match the transfer set, the classes, the
    mode or the method.
    """
    from zoo.unify import balance_weights

    table = read_table(targets_path)
    meta = _metadata(table)
    L = len(classes)
    if "id" not in table.column_names:
        raise TargetError(f"{targets_path} has no 'id' column")
    target_ids = [str(i) for i in table.column("id").to_pylist()]
    if len(set(target_ids)) != len(target_ids):
        raise TargetError(f"{targets_path} has duplicate ids")
    pos = {i: k for k, i in enumerate(target_ids)}
    missing = [i for i in ids if i not in pos]
    if missing or len(target_ids) != len(ids):
        raise TargetError(
            f"ids of {targets_path} ({len(target_ids)} rows) do not match the transfer set ({len(ids)} rows; "
            f"{len(missing)} transfer ids missing, e.g. {missing[:3]}): recompute the targets from this "
            "transfer set"
        )
    order = np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))

    if mode in ("e", "bs"):
        if "q" not in table.column_names:
            raise TargetError(
                f"mode {mode!r} trains on soft labels: {targets_path} has no 'q' column "
                "(pass soft_labels.parquet; logits.parquet is for mode 'bp')"
            )
        file_classes = json.loads(meta["zoo.classes"]) if "zoo.classes" in meta else None
        if file_classes is not None and list(file_classes) != list(classes):
            raise TargetError(
                f"{targets_path} is over classes {file_classes}, the student over {list(classes)}"
            )
        got = meta.get("zoo.method")
        if got is not None and got.lower() != method.lower():
            raise TargetError(
                f"{targets_path} holds soft labels of method {got!r}, the student asks for {method!r}"
            )
        # The same q serves E and BS (BS only adds class weights), so only a BP file is refused.
        if meta.get("zoo.mode", "e").lower() not in ("e", "bs"):
            raise TargetError(f"{targets_path} was written for mode {meta['zoo.mode']!r}, not e/bs")
        q = _fixed_list(table, "q")
        if q.shape[1] != L:
            raise TargetError(f"{targets_path}: q has {q.shape[1]} classes, the student has {L}")
        q = torch.from_numpy(q[order])
        weights = None
        if mode == "bs":
            raw = meta.get("zoo.weights")
            if raw not in (None, "", "null"):
                weights = torch.tensor(json.loads(raw), dtype=torch.float32)
            else:
                # Sec. 3.5.2: w_l = 1 / mean_x q(l | x) over the whole transfer set.
                weights = balance_weights(q).to(torch.float32)
            if weights.shape != (L,):
                raise TargetError(
                    f"{targets_path}: BS weights have shape {tuple(weights.shape)}, expected ({L},)"
                )
        # Lever sample_weighting: per-sample loss weights written by write_soft_labels.
        sample_weights = None
        if "sample_weight" in table.column_names:
            col = table.column("sample_weight").to_numpy().astype(np.float32)
            sample_weights = torch.from_numpy(col[order])
        return {"q": q, "weights": weights, "sample_weights": sample_weights}

    if "logits" not in table.column_names:
        raise TargetError(
            f"mode 'bp' backpropagates from the teachers' logits: {targets_path} has no 'logits' column "
            "(pass logits.parquet)"
        )
    if "zoo.mask" not in meta:
        raise TargetError(
            f"{targets_path} has no 'zoo.mask' schema metadata: write it with run_teacher_inference"
        )
    mask = torch.tensor(json.loads(meta["zoo.mask"]), dtype=torch.bool)
    if mask.ndim != 2 or mask.shape[1] != L:
        raise TargetError(f"{targets_path}: mask has shape {tuple(mask.shape)}, expected [N, {L}]")
    if "zoo.label_space" in meta:
        space_classes = json.loads(meta["zoo.label_space"]).get("classes")
        if space_classes is not None and list(space_classes) != list(classes):
            raise TargetError(
                f"{targets_path} is over classes {space_classes}, the student over {list(classes)}"
            )
    flat = _fixed_list(table, "logits")
    N = mask.shape[0]
    if flat.shape[1] != N * L:
        raise TargetError(f"{targets_path}: logits have width {flat.shape[1]}, expected N*L = {N}*{L}")
    logits = torch.from_numpy(flat[order].reshape(len(ids), N, L))
    return {"logits": logits, "mask": mask}


def check_levers(cfg: dict[str, Any]) -> None:
    """Validate the lever options of a student config (StudentConfig's fields, or a sweep trial's
    dict): ValueError naming the option and the fix."""
    from zoo.unify.confidence import SAMPLE_WEIGHTINGS

    temps = cfg.get("teacher_temperatures")
    if temps is not None and (
        not isinstance(temps, (list, tuple)) or not temps or not all(float(t) > 0 for t in temps)
    ):
        raise ValueError(
            f"teacher_temperatures must be null or a list of numbers > 0 (one per teacher); got {temps!r}"
        )
    weighting = cfg.get("sample_weighting", "none")
    if weighting not in SAMPLE_WEIGHTINGS:
        raise ValueError(f"sample_weighting must be one of {SAMPLE_WEIGHTINGS}; got {weighting!r}")
    rounds = cfg.get("self_train_rounds", 0)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"self_train_rounds must be an int >= 0; got {rounds!r}")
    if not isinstance(cfg.get("augment", False), bool):
        raise ValueError(f"augment must be true or false; got {cfg.get('augment')!r}")


def build_targets(
    logits: torch.Tensor,
    mask: torch.Tensor,
    cfg: dict[str, Any],
    student_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The loss targets of a student config from the teachers' logits [B, N, L] and mask [N, L]:
    {"q", "weights", "sample_weights"} (E, BS) or {"logits", "mask"} (BP), with the config's levers:
    ``teacher_temperatures`` (zoo.unify.calibration) applied first, ``student_logits`` [B, L] (a
    previous round's student, zoo.unify.self_training) added as a teacher over all classes, and
    ``sample_weighting`` (zoo.unify.confidence) from the (calibrated) teachers alone (E and BS only: a
    sweep may pair a lever set with every mode, and BP has no per-sample soft-label term to weigh)."""
    from zoo.unify import balance_weights, estimate_soft_labels
    from zoo.unify.calibration import apply_teacher_temperatures
    from zoo.unify.confidence import sample_weights
    from zoo.unify.self_training import add_student_teacher

    check_levers(cfg)
    if cfg.get("teacher_temperatures") is not None:
        logits = apply_teacher_temperatures(logits, cfg["teacher_temperatures"])
    teachers, teacher_mask = logits, mask
    if student_logits is not None:
        logits, mask = add_student_teacher(logits, mask, student_logits)
    if cfg["mode"] == "bp":
        return {"logits": logits, "mask": mask}
    q = estimate_soft_labels(logits, mask, cfg["method"], cfg["temperature"]).float()
    return {
        "q": q,
        "weights": balance_weights(q).float() if cfg["mode"] == "bs" else None,
        "sample_weights": sample_weights(teachers, teacher_mask, cfg.get("sample_weighting", "none")),
    }


def make_loss(cfg: dict[str, Any], targets: dict[str, Any], device: torch.device):
    """loss(student_logits, idx) for a batch of transfer-set indices (the targets live on ``device``).
    ``targets["sample_weights"]`` [B] (lever `sample_weighting`, E/BS only) weighs each sample."""
    from zoo.unify import soft_cross_entropy, unify_loss

    if cfg["mode"] == "bp":
        logits, mask = targets["logits"].to(device), targets["mask"].to(device)
        method, T = cfg["method"], cfg["temperature"]
        return lambda out, idx: unify_loss(out, logits[idx], mask, method, temperature=T)
    q = targets["q"].to(device)
    w = targets["weights"].to(device) if targets["weights"] is not None else None
    T = cfg["temperature"]
    s = targets.get("sample_weights")
    s = s.to(device) if s is not None else None
    return lambda out, idx: soft_cross_entropy(
        out, q[idx], temperature=T, weights=w, sample_weights=None if s is None else s[idx]
    )


def augment_generator(cfg: dict[str, Any], epoch: int, rank: int = 0) -> torch.Generator | None:
    """The CPU generator of an epoch's augmentation (lever ``augment``), seeded by (seed, epoch, rank)
    like the batch order; None when augment is off."""
    if not cfg.get("augment", False):
        return None
    return torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + epoch + 7_919 * (rank + 1))


def epoch_order(n: int, seed: int, epoch: int, world_size: int, rank: int) -> torch.Tensor:
    """This rank's sample indices for ``epoch``: a permutation that depends only on (seed, epoch),
    padded by wrapping to a multiple of ``world_size`` (every rank takes the same number of steps,
    or DDP would wait forever), then strided by rank. With one worker: the plain permutation."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    pad = (-n) % world_size
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm[rank::world_size]


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


def lr_at(cfg: dict[str, Any], epoch: int) -> float:
    """The paper's schedule (Sec. 4.1.1): lr for the first part, lr/10 from epoch epochs * lr_step_at on.
    A run too short to have a first part (e.g. 1 epoch) keeps lr throughout."""
    step = int(cfg["epochs"] * cfg["lr_step_at"])
    return cfg["lr"] * (0.1 if 0 < step <= epoch else 1.0)


# ---------------------------------------------------------------------------------------- worker
def _evaluate(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512
) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            correct += int((model(images[s : s + batch_size]).argmax(1) == labels[s : s + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(images))


def _save_checkpoint(directory: Path, model: torch.nn.Module, optimizer, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        directory / CHECKPOINT_WEIGHTS,
    )
    torch.save(optimizer.state_dict(), directory / CHECKPOINT_OPTIMIZER)
    (directory / CHECKPOINT_STATE).write_text(json.dumps(state))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (one per rank): load data once, resume, train, report."""
    import ray
    import ray.train
    import ray.train.torch
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from zoo.architectures import build_model

    cfg = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # As many threads as whole CPUs granted, never more than this node's cores per local worker
    # (Ray may count more logical CPUs than there are cores; oversubscribed DDP ranks stall each other).
    local = max(1, ctx.get_local_world_size())
    torch.set_num_threads(max(1, min(config["threads"], (os.cpu_count() or 1) // local)))
    device = ray.train.torch.get_device()

    ckpt = ray.train.get_checkpoint()
    state: dict[str, Any] = {"epoch": -1, "history": [], "attempt_start_epochs": []}
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / CHECKPOINT_STATE).read_text())
            weights = load_file(str(Path(d) / CHECKPOINT_WEIGHTS))
            opt_state = torch.load(Path(d) / CHECKPOINT_OPTIMIZER, weights_only=True, map_location="cpu")
        if state.get("config_fingerprint") != config["config_fingerprint"]:
            raise ValueError(
                f"the checkpoint in {config['run_dir']} was made with another student config: "
                "use another run_name, or delete that run directory to start afresh"
            )
    start_epoch = state["epoch"] + 1
    state["attempt_start_epochs"] = [*state.get("attempt_start_epochs", []), start_epoch]
    # Ops (and the worker-kill test) find each worker's process here.
    info = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "start_epoch": start_epoch}
    _write_text(_join(config["run_dir"], WORKERS_DIR, f"rank-{rank}.json"), json.dumps(info))

    # Same initial weights for a given seed, whatever the method (paper 001, Sec. 4.1.1).
    spec = InputSpec.from_dict(cfg["input"])
    torch.manual_seed(cfg["seed"])
    model = build_model(
        cfg["arch"],
        len(config["classes"]),
        in_channels=spec.channels,
        image_size=(spec.height, spec.width),
        **cfg["arch_kwargs"],
    )
    if ckpt is not None:
        model.load_state_dict(weights)
    model = ray.train.torch.prepare_model(model)
    bare = model.module if hasattr(model, "module") else model
    if cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if ckpt is not None:
        opt.load_state_dict(opt_state)

    epochs = cfg["epochs"]
    if start_epoch >= epochs:
        # A finished run called again: nothing to train; report its last state (with this attempt
        # recorded) so that fit() has a result.
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                _save_checkpoint(Path(tmp), bare, opt, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(state["history"][-1] if state["history"] else {}, checkpoint=checkpoint)
        return

    # Decode + preprocess once per worker; the tensors stay on the device for every epoch.
    ids, images = load_transfer_images(config["transfer_path"], spec)
    targets = load_targets(config["targets_path"], ids, config["classes"], cfg["mode"], cfg["method"])
    images = images.to(device)
    loss_fn = make_loss(cfg, targets, device)
    eval_images = eval_labels = None
    if rank == 0 and config["eval_set"] is not None:
        ev_images, ev_labels = ray.get(config["eval_set"])
        eval_images = preprocess(ev_images, spec).to(device)
        eval_labels = torch.as_tensor(ev_labels, dtype=torch.int64).to(device)

    from zoo.unify.augment import random_translate

    n = len(ids)
    per_rank_batch = math.ceil(cfg["batch_size"] / world)
    bar = tqdm(total=epochs, initial=start_epoch, desc="train student", unit="epoch", disable=rank != 0)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        model.train()
        order = epoch_order(n, cfg["seed"], epoch, world, rank).to(device)
        gen = augment_generator(cfg, epoch, rank)
        total, count = torch.zeros((), device=device), 0
        for s in range(0, len(order), per_rank_batch):
            idx = order[s : s + per_rank_batch]
            x = images[idx] if gen is None else random_translate(images[idx], gen)
            loss = loss_fn(model(x), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            count += len(idx)
        train_loss = float(total) / max(1, count)
        if world > 1:
            t = torch.tensor([train_loss], device=device)
            torch.distributed.all_reduce(t)
            train_loss = float(t) / world
        seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": lr_at(cfg, epoch),
            "epoch_time_s": seconds,
            "samples_per_s": n / seconds,
            "start_epoch": start_epoch,
        }
        if eval_images is not None:
            metrics["eval_accuracy"] = _evaluate(bare, eval_images, eval_labels)
        # Wall clock at the end of the epoch: differences between epochs include the checkpoint
        # and report of the previous one (what a benchmark of the stage must count).
        metrics["time"] = time.time()
        state["history"].append(metrics)
        state["epoch"] = epoch
        bar.set_postfix({k: round(v, 4) for k, v in metrics.items() if k in ("train_loss", "eval_accuracy")})
        bar.update(1)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                state["config_fingerprint"] = config["config_fingerprint"]
                _save_checkpoint(Path(tmp), bare, opt, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if not math.isfinite(train_loss):
            break  # diverged: every rank sees the same all-reduced loss; the driver raises StudentDiverged
    bar.close()


# ---------------------------------------------------------------------------------------- driver
def _scaling(num_workers: int | None, use_gpu: bool | None) -> tuple[int, bool, float, int]:
    """(workers, use_gpu, CPUs per worker, torch threads per worker) sized from the cluster, so that
    fit() never waits for resources the cluster does not have (Train V2 would retry forever)."""
    import ray

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
    threads = max(1, int(cpu_per_worker))
    return num_workers, bool(use_gpu), cpu_per_worker, threads


def _log_to_mlflow(
    tracking_uri: str | None,
    run_id: str,
    cfg: StudentConfig,
    history: list[dict[str, Any]],
    extra: dict[str, Any],
) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    params = {
        "student.method": cfg.method,
        "student.mode": cfg.mode,
        "student.temperature": cfg.temperature,
        "student.lr": cfg.lr,
        "student.epochs": cfg.epochs,
        "student.batch_size": cfg.batch_size,
        "student.arch": cfg.arch,
        "student.arch_kwargs": json.dumps(cfg.arch_kwargs, sort_keys=True),
        "student.optimizer": cfg.optimizer,
        "student.seed": cfg.seed,
        **extra,
    }
    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"student.{k}", float(h[k]), now, int(h["epoch"]))
        for h in history
        for k in ("train_loss", "eval_accuracy", "samples_per_s", "epoch_time_s")
        if k in h
    ]
    for s in range(0, max(len(metrics), 1), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[s : s + 900], params=new if s == 0 else [])


def _claim_run_dir(run_dir: str, cfg: StudentConfig) -> None:
    """Record the config a run directory trains; refuse to resume a run of another config (its
    checkpoints hold another model), before any worker starts."""
    path = _join(run_dir, CONFIG_FILE)
    fs, p = _fs_path(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        with fs.open_input_stream(p) as f:
            recorded = json.loads(f.read().decode())
        if recorded.get("fingerprint") != cfg.fingerprint():
            raise ValueError(
                f"the training run {run_dir} was made with another student config "
                f"({recorded.get('config')}): "
                "use another run_name, or delete that run directory to start afresh"
            )
        return
    _write_text(path, json.dumps({"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}, indent=2))


def train_student(
    cfg: StudentConfig,
    transfer_path: str | os.PathLike,
    targets_path: str | os.PathLike,
    *,
    classes: Sequence[str],
    storage_path: str | os.PathLike,
    run_name: str,
    eval_set: EvalSet | None,
    num_workers: int | None = None,
    use_gpu: bool | None = None,
    mlflow_tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
) -> TrainResult:
    """Train the student with Ray Train and save it in the zoo's format under
    ``<storage_path>/<run_name>/student/``; needs a running Ray (``ray.init()``).

    ``targets_path`` is soft_labels.parquet (modes ``e``, ``bs``) or logits.parquet (mode ``bp``).
    Checkpoints go to ``<storage_path>/<run_name>/checkpoint_*`` every epoch (the last two kept);
    a rerun with the same storage and name resumes from the last one. Per-epoch train loss and eval
    accuracy go to the MLflow run ``mlflow_run_id`` when given.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not isinstance(cfg, StudentConfig):
        raise TypeError(f"cfg must be a StudentConfig, got {type(cfg).__name__}")
    if cfg.self_train_rounds:
        raise ValueError(
            "self_train_rounds > 0 is a lever of the sweep's train_trial only; the Ray Train student "
            "trains one round: set self_train_rounds to 0"
        )
    if not ray.is_initialized():
        raise RuntimeError(
            "train_student needs a running Ray: call ray.init() (or ray.init(address=...)) first"
        )
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise ValueError(f"the student needs at least 2 classes, got {classes}")
    if (
        eval_set is not None
        and len(eval_set.labels)
        and (eval_set.labels.min() < 0 or eval_set.labels.max() >= len(classes))
    ):
        raise ValueError(f"eval_set labels must be indices into the {len(classes)} classes")
    # Fail fast, on the driver, on inputs that do not fit together (the workers would fail the same
    # way, several times over, after ~20 s of start-up).
    ids = [str(i) for i in read_table(transfer_path).select(["id"]).column("id").to_pylist()]
    load_targets(targets_path, ids, classes, cfg.mode, cfg.method)

    workers, gpu, cpu_per_worker, threads = _scaling(num_workers, use_gpu)
    storage = str(storage_path) if "://" in str(storage_path) else os.path.abspath(storage_path)
    run_dir = _join(storage, run_name)
    _claim_run_dir(run_dir, cfg)
    resources = {"CPU": cpu_per_worker, **({"GPU": 1} if gpu else {})}
    log.info("training the student on %d worker(s), %s per worker, %d thread(s)", workers, resources, threads)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "config_fingerprint": cfg.fingerprint(),
            "transfer_path": str(transfer_path)
            if "://" in str(transfer_path)
            else os.path.abspath(transfer_path),
            "targets_path": str(targets_path)
            if "://" in str(targets_path)
            else os.path.abspath(targets_path),
            "classes": classes,
            # Through the object store: shipped once per node, not pickled into the run's config.
            "eval_set": None if eval_set is None else ray.put((eval_set.images, eval_set.labels)),
            "run_dir": run_dir,
            "threads": threads,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            # Worker failures: restart and resume from the last checkpoint. Controller failures
            # (workers that cannot be scheduled within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s
            # by default) are retried once, then raised: Train V2's default is to retry forever.
            failure_config=FailureConfig(max_failures=2, controller_failure_limit=1),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
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

    from safetensors.torch import load_file

    from zoo.architectures import build_model

    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / CHECKPOINT_STATE).read_text())
        weights = load_file(str(Path(d) / CHECKPOINT_WEIGHTS))
    history = state["history"]
    if history and not math.isfinite(history[-1]["train_loss"]):
        raise StudentDiverged(
            f"the student's loss is {history[-1]['train_loss']} at epoch {history[-1]['epoch'] + 1} "
            f"({cfg.method}-{cfg.mode}, T={cfg.temperature}, lr={cfg.lr}): training diverged. Lower the lr "
            "(the logit-space BP losses of MF-LF and MF-LU need about 5x less than the E/BS modes) or "
            "raise the temperature; nothing was registered"
        )
    spec_in = cfg.input
    model = build_model(
        cfg.arch,
        len(classes),
        in_channels=spec_in.channels,
        image_size=(spec_in.height, spec_in.width),
        **cfg.arch_kwargs,
    )
    model.load_state_dict(weights)
    model.eval()
    last = history[-1] if history else {}
    steady = [h["samples_per_s"] for h in history[1:]] or [h["samples_per_s"] for h in history]
    metrics: dict[str, Any] = {
        "train_loss": last.get("train_loss"),
        "epochs": cfg.epochs,
        "num_workers": workers,
        "use_gpu": gpu,
        "fit_seconds": fit_seconds,
        "samples_per_s": float(np.median(steady)) if steady else None,
        "attempt_start_epochs": state.get("attempt_start_epochs", []),
    }
    if "eval_accuracy" in last:
        metrics["eval_accuracy"] = last["eval_accuracy"]
    spec = ModelSpec(
        arch=cfg.arch,
        classes=classes,
        input=cfg.input,
        arch_kwargs=dict(cfg.arch_kwargs),
        metadata={
            "role": "student",
            "method": cfg.method,
            "mode": cfg.mode,
            "temperature": cfg.temperature,
            "student_config": cfg.to_dict(),
            "metrics": {
                **{k: v for k, v in metrics.items() if k in ("train_loss", "eval_accuracy", "epochs")},
                # `accuracy` is what the registry shows for every zoo model.
                **({"accuracy": metrics["eval_accuracy"]} if "eval_accuracy" in metrics else {}),
            },
        },
    )
    if "://" in run_dir:
        # Remote storage: save locally (registration needs a local directory), then upload a copy.
        model_dir = Path(tempfile.mkdtemp(prefix="student-")) / "student"
        save_model(model, spec, model_dir)
        fs, p = _fs_path(_join(run_dir, "student"))
        fs.create_dir(p, recursive=True)  # needed where directories are real (file://, HDFS)
        pafs.copy_files(str(model_dir), p, destination_filesystem=fs)
    else:
        model_dir = Path(run_dir) / "student"
        save_model(model, spec, model_dir)
    if mlflow_run_id is not None:
        _log_to_mlflow(
            mlflow_tracking_uri,
            mlflow_run_id,
            cfg,
            history,
            {"student.num_workers": workers, "student.use_gpu": gpu},
        )
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_tracking_uri)
        client.log_metric(mlflow_run_id, "student.fit_seconds", fit_seconds)
    return TrainResult(
        model_dir=model_dir, metrics=metrics, checkpoint_path=result.checkpoint.path, history=history
    )
