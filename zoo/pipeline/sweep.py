"""The sweep: Ray Tune over method x mode x temperature (x student learning rate) on the cached logits.

Paper 001 compares five methods (SD, CE, MF-P, MF-LU, MF-LF), each as E, BP or BS (Sec. 3.5), and
studies the temperature T in {1, 3, 6, 10} (Sec. 4.2, Fig. 3b). `run_sweep` picks them for a given
zoo and transfer set by training short students, one per grid point, in a Ray Tune function
trainable with a plain single-process torch loop (RAY-NOTES: `Tuner(TorchTrainer)` does not work
under Train V2, and short trials do not pay Ray Train's start-up):

- the transfer images (decoded and preprocessed once, on the driver) and the teachers' logits
  (`logits.parquet`, never recomputed) go to the object store once (`tune.with_parameters`); each
  trial builds its targets: q = estimate_soft_labels (E), plus balance_weights (BS), or the BP loss
  on the logits (`zoo.unify.unify_loss`), and trains with the same loss, batch order and schedule as
  the final Ray Train student (`zoo.pipeline.training`);
- every epoch a trial reports `val_accuracy` (labelled validation set, when given: a split apart from
  the test set, which must not choose the config it then reports on), the label-free proxies of
  `zoo.proxy` on transfer images held out of training, and `score`, the metric the sweep maximises:
  the validation accuracy when there are labels, else the proxy agreement;
- ASHA stops poor trials early; at most `max_concurrent_trials` run at once (sized to the CPUs);
- every trial is an MLflow run (params, per-epoch metrics, tag `mlflow.parentRunId` nesting it under
  the job's run) and writes TensorBoard events in its Tune trial directory; the parent run gets the
  results table, the best config and a PNG of the score by method x temperature (one panel per mode).

Files under `<run_dir>/sweep/`: `tune/` (Tune's experiment: trial dirs, TensorBoard events),
`results.json` (every trial, the best config, fingerprint: a rerun with the same inputs returns it
without training), `sweep.png`. The run directory may be a URI (`s3://`, `file://`; Tune writes its
experiment there with pyarrow.fs too).
"""

from __future__ import annotations

import json
import math
import os
import time
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.artifacts import InputSpec
from zoo.proxy import PROXIES

__all__ = [
    "SweepConfig",
    "SweepData",
    "SweepResult",
    "grid",
    "load_sweep_config",
    "plot_sweep",
    "prepare_data",
    "run_sweep",
    "train_trial",
]

STAGE_VERSION = 1
SCORE = "score"


# ---------------------------------------------------------------------------------------- config
@dataclass
class SweepConfig:
    """The grid and the budget of a sweep. The default grid fits a 10-minute budget on 2 cores; the
    paper's full grid (5 methods x {e, bp, bs} x T in {1, 3, 6, 10}) is configs/sweep-full.yaml."""

    methods: list[str] = field(default_factory=lambda: ["sd", "ce", "mf-lf"])
    modes: list[str] = field(default_factory=lambda: ["e", "bs"])
    temperatures: list[float] = field(default_factory=lambda: [1.0, 3.0])
    lrs: list[float] = field(default_factory=lambda: [0.05])
    epochs: int = 2  # per trial (the final student trains for the job's epochs)
    transfer_limit: int | None = 6000  # transfer images used by the sweep (a seeded random subset)
    proxy_holdout: int = 1000  # of those, held out of training to compute the label-free proxy on
    eval_limit: int | None = 2000  # labelled validation images scored per epoch (seeded subset)
    metric: str = "auto"  # "auto": val_accuracy when a labelled set is given, else the proxy
    proxy: str = "agreement"  # the label-free proxy (zoo.proxy): "agreement" or "neg_xent"
    scheduler: str = "asha"  # "asha" or "fifo"
    grace_period: int = 1  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: int = 2  # ASHA
    cpus_per_trial: float = 1.0  # also the torch threads of a trial (at least 1)
    gpus_per_trial: float = 0.25  # used only when the cluster has GPUs (and use_gpu is not False)
    use_gpu: bool | None = None
    max_concurrent_trials: int | None = (
        None  # default: the CPUs (of the one node, when local) / cpus_per_trial
    )
    time_budget_s: float | None = None  # Tune stops starting/continuing trials after this
    seed: int = 0  # subsets; the student's seed is the job's
    verbose: int = 1  # Tune's console progress (0 silent, 1 status table, 2 every result)

    def __post_init__(self) -> None:
        from zoo.config import coerce  # the job config's typed checks, reused
        from zoo.unify import METHODS, MODES

        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.methods = [m.strip().lower().replace("_", "-") for m in self.methods]
        self.modes = [m.strip().lower() for m in self.modes]
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"sweep methods {bad} are unknown; choose from {list(METHODS)}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"sweep modes {bad} are unknown; choose from {list(MODES)}")
        for name in ("methods", "modes", "temperatures", "lrs"):
            if not getattr(self, name):
                raise ValueError(f"sweep {name} is empty: give at least one value")
        if any(not t > 0 for t in self.temperatures) or any(not lr > 0 for lr in self.lrs):
            raise ValueError("sweep temperatures and lrs must all be > 0")
        if self.epochs < 1 or self.grace_period < 1 or self.reduction_factor < 2:
            raise ValueError("sweep needs epochs >= 1, grace_period >= 1, reduction_factor >= 2")
        if self.metric not in ("auto", "accuracy", "proxy"):
            raise ValueError(f"sweep metric must be auto, accuracy or proxy; got {self.metric!r}")
        if self.proxy not in ("agreement", "neg_xent"):
            raise ValueError(f"sweep proxy must be agreement or neg_xent; got {self.proxy!r}")
        if self.scheduler not in ("asha", "fifo"):
            raise ValueError(f"sweep scheduler must be asha or fifo; got {self.scheduler!r}")
        if self.proxy_holdout < 1:
            raise ValueError("proxy_holdout must be >= 1 (transfer images held out for the proxy)")
        if not self.cpus_per_trial > 0:
            raise ValueError(f"cpus_per_trial must be > 0; got {self.cpus_per_trial}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_sweep_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> SweepConfig:
    """SweepConfig from a YAML file (keys: the fields; '-' or '_'), with non-None ``overrides`` on top.
    A file may nest its keys under ``sweep:`` so one YAML can hold a job config too."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"sweep config {path} does not exist; pass the path of a YAML file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if isinstance(loaded, Mapping) and isinstance(loaded.get("sweep"), Mapping):
            loaded = loaded["sweep"]
        if not isinstance(loaded, Mapping):
            raise ValueError(f"sweep config {path} must be a mapping of keys to values")
        data.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(SweepConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown sweep config key(s) {unknown}; valid keys: {sorted(known)}")
    return SweepConfig(**data)


def grid(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every trial's config: {method, mode, temperature, lr}, in a stable order."""
    return [
        {"method": m, "mode": mode, "temperature": float(t), "lr": float(lr)}
        for m in cfg.methods
        for mode in cfg.modes
        for t in cfg.temperatures
        for lr in cfg.lrs
    ]


# ------------------------------------------------------------------------------------------ data
@dataclass
class SweepData:
    """What every trial shares (put in the object store once): preprocessed transfer images and the
    teachers' logits, split into the part trials train on and the part held out for the proxy, and
    the labelled validation set (optional)."""

    train_images: torch.Tensor  # float32 [B, C, H, W]
    train_logits: torch.Tensor  # float32 [B, N, L]
    holdout_images: torch.Tensor
    holdout_logits: torch.Tensor
    mask: torch.Tensor  # bool [N, L]
    classes: list[str]
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None  # int64 indices into classes

    @property
    def has_labels(self) -> bool:
        return self.val_labels is not None and len(self.val_labels) > 0


def prepare_data(
    transfer_path: str | Path,
    logits_path: str | Path,
    spec: InputSpec,
    cfg: SweepConfig,
    eval_set: Any | None = None,
) -> SweepData:
    """Read transfer.parquet and logits.parquet of a run once, take a seeded subset of
    ``cfg.transfer_limit`` images, hold ``cfg.proxy_holdout`` of them out, and preprocess the images
    (and ``eval_set``, the labelled validation set: an EvalSet or (images, labels), subset to
    ``cfg.eval_limit``) to ``spec``. Paths may be URIs."""
    from zoo.artifacts import preprocess
    from zoo.pipeline.inference import read_logits
    from zoo.pipeline.training import load_targets, load_transfer_images

    lf = read_logits(logits_path)
    classes = list(lf.label_space.classes)
    ids, images = load_transfer_images(transfer_path, spec)
    # Aligned to the transfer set's order; raises TargetError when the two files do not match.
    z = load_targets(logits_path, ids, classes, "bp", "sd")["logits"]
    n = len(ids)
    rng = np.random.default_rng(cfg.seed)
    take = rng.permutation(n)[: min(n, cfg.transfer_limit or n)]
    hold = min(cfg.proxy_holdout, len(take) // 5)
    if hold < 1 or len(take) - hold < 2:
        raise ValueError(
            f"the transfer set has {n} images: too few for a sweep that holds {cfg.proxy_holdout} out "
            "for the proxy; lower proxy_holdout or give a larger transfer set"
        )
    hold_idx, train_idx = torch.from_numpy(take[:hold]), torch.from_numpy(take[hold:])
    val_images = val_labels = None
    if eval_set is not None:
        ev_images, ev_labels = (
            (eval_set.images, eval_set.labels) if hasattr(eval_set, "labels") else tuple(eval_set)
        )
        labels = np.asarray(ev_labels, dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"validation labels must be indices into the {len(classes)} union classes")
        sel = np.arange(len(labels))
        if cfg.eval_limit and len(labels) > cfg.eval_limit:
            sel = np.sort(rng.permutation(len(labels))[: cfg.eval_limit])
        picked = ev_images[sel] if isinstance(ev_images, np.ndarray) else [ev_images[i] for i in sel]
        val_images, val_labels = preprocess(picked, spec), torch.from_numpy(labels[sel])
    return SweepData(
        train_images=images[train_idx].contiguous(),
        train_logits=z[train_idx].contiguous(),
        holdout_images=images[hold_idx].contiguous(),
        holdout_logits=z[hold_idx].contiguous(),
        mask=lf.mask,
        classes=classes,
        val_images=val_images,
        val_labels=val_labels,
    )


# ----------------------------------------------------------------------------------------- trial
def trial_targets(
    data: SweepData,
    method: str,
    mode: str,
    temperature: float,
    levers: Mapping[str, Any] | None = None,
    student_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The targets `zoo.pipeline.training`'s loss takes: q (+ BS weights, Sec. 3.5.2) for E and BS,
    the logits and mask for BP (Sec. 3.5.1), with the lever options in ``levers``
    (`zoo.pipeline.training.build_targets`; ``student_logits``: a previous self-training round's)."""
    from zoo.pipeline.training import build_targets

    cfg = {**dict(levers or {}), "method": method, "mode": mode, "temperature": temperature}
    return build_targets(data.train_logits, data.mask, cfg, student_logits)


def train_trial(
    data: SweepData,
    trial: Mapping[str, Any],
    student: Any,
    epochs: int,
    report: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """Train one student for ``epochs`` epochs with ``trial``'s method, mode, temperature and lr
    (plain torch, one process) and return the per-epoch metrics, also passed to ``report`` as they come.

    ``student`` is a `zoo.pipeline.training.StudentConfig` (arch, input, batch size, optimiser,
    seed, schedule); the loss, the batch order (seed, epoch) and the lr schedule are the final
    student's (`zoo.pipeline.training`), so a trial is a short run of the final job.
    """
    from zoo.train import pick_device, predict_logits

    dev = pick_device(device)
    cfg = {**student.to_dict(), **dict(trial), "epochs": int(epochs)}
    history: list[dict[str, Any]] = []
    student_logits = None
    # Lever self_train_rounds (zoo.unify.self_training): each round retrains from the same initial
    # weights on q re-estimated with the previous round's student as one more teacher.
    rounds = int(cfg.get("self_train_rounds", 0))
    for r in range(rounds + 1):
        targets = trial_targets(data, cfg["method"], cfg["mode"], cfg["temperature"], cfg, student_logits)
        model, history = _fit_trial(data, cfg, targets, student, epochs, report if r == rounds else None, dev)
        if r < rounds:
            student_logits = predict_logits(model, data.train_images)
    return history


def _fit_trial(
    data: SweepData,
    cfg: dict[str, Any],
    targets: dict[str, Any],
    student: Any,
    epochs: int,
    report: Callable[[dict[str, Any]], None] | None,
    dev: torch.device,
) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """One student trained on ``targets`` (train_trial's loop): the model and its per-epoch metrics."""
    from zoo.architectures import build_model
    from zoo.pipeline.training import augment_generator, epoch_order, lr_at, make_loss
    from zoo.proxy import proxy_scores
    from zoo.train import evaluate, predict_logits
    from zoo.unify.augment import random_translate

    loss_fn = make_loss(cfg, targets, dev)
    spec = student.input
    # Same initial weights and batches for every trial (paper 001, Sec. 4.1.1).
    torch.manual_seed(cfg["seed"])
    model = build_model(
        cfg["arch"],
        len(data.classes),
        in_channels=spec.channels,
        image_size=(spec.height, spec.width),
        **cfg["arch_kwargs"],
    ).to(dev)
    if cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    images = data.train_images.to(dev)
    n, bs = len(images), int(cfg["batch_size"])
    history = []
    for epoch in range(int(epochs)):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        model.train()
        order = epoch_order(n, cfg["seed"], epoch, 1, 0).to(dev)
        gen = augment_generator(cfg, epoch)
        total, count = 0.0, 0
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            if len(idx) < 2 and count:  # BatchNorm cannot train on a batch of one
                continue
            x = images[idx] if gen is None else random_translate(images[idx], gen)
            loss = loss_fn(model(x), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        train_loss = total / max(1, count)
        student_logits = predict_logits(model, data.holdout_images)
        proxy = proxy_scores(student_logits, data.holdout_logits, data.mask, temperature=1.0)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train_loss if math.isfinite(train_loss) else float("nan"),
            "proxy_agreement": float(proxy["agreement"].mean()),
            "proxy_neg_xent": float(proxy["neg_xent"].mean()),
            "epoch_time_s": time.perf_counter() - t0,
        }
        if data.has_labels:
            metrics["val_accuracy"] = evaluate(model, data.val_images, data.val_labels)
        history.append(metrics)
        if report is not None:
            report(dict(metrics))
        if not math.isfinite(train_loss):
            # Diverged (logit-space BP losses at a high lr or T = 1, noisy teachers): the weights are
            # NaN from here on, so further epochs only cost time; the trial's score says it failed.
            warnings.warn(
                f"trial {cfg['method']}-{cfg['mode']} T={cfg['temperature']} lr={cfg['lr']}: the student's "
                f"loss is not finite at epoch {epoch + 1}; stopped (lower the lr)",
                RuntimeWarning,
                stacklevel=2,
            )
            break
    return model, history


def _score_key(cfg: SweepConfig, has_labels: bool) -> str:
    if cfg.metric == "accuracy" or (cfg.metric == "auto" and has_labels):
        if not has_labels:
            raise ValueError("sweep metric 'accuracy' needs a labelled validation set (eval_set)")
        return "val_accuracy"
    return f"proxy_{cfg.proxy}"


def _trainable(
    config: dict[str, Any], data: SweepData, student: Any, epochs: int, score_key: str, threads: int
) -> None:
    """The Tune function trainable: one trial, metrics reported every epoch (ASHA may stop it)."""
    from ray import tune

    torch.set_num_threads(max(1, threads))

    def report(m: dict[str, Any]) -> None:
        tune.report({**m, SCORE: m[score_key]})

    train_trial(data, config["trial"], student, epochs, report=report)


# ------------------------------------------------------------------------------------- results
@dataclass
class SweepResult:
    best_config: dict[str, Any]  # {method, mode, temperature, lr}: feed it to the final student
    best_score: float
    metric: str  # "val_accuracy" or "proxy_agreement"
    trials: list[dict[str, Any]]  # config, last metrics, epochs run, per-epoch history, error
    # Spearman rank correlation of each proxy with val accuracy over the trials (labels given only).
    spearman_proxy_accuracy: dict[str, float] | None
    plot_path: Path | str | None  # a local path, or a URI under a URI run directory
    results_path: Path | str
    mlflow_run_id: str | None
    tune_path: str
    seconds: float
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plot_path"] = str(self.plot_path) if self.plot_path else None
        d["results_path"] = str(self.results_path)
        return d


def plot_sweep(trials: Sequence[Mapping[str, Any]], metric: str, path: str | Path) -> Path:
    """PNG of ``metric`` by temperature, one line per method, one panel per mode (best over lr when the
    grid has several); written through a temporary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.pipeline.stages import atomic_path
    from zoo.unify import METHODS

    ok = [t for t in trials if t.get("metrics", {}).get(metric) is not None]
    modes = sorted({t["config"]["mode"] for t in ok}, key=["e", "bp", "bs"].index) or ["e"]
    temps = sorted({t["config"]["temperature"] for t in ok})
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.6), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        methods = sorted({t["config"]["method"] for t in ok if t["config"]["mode"] == mode})
        for method in methods:
            xs, ys = [], []
            for temp in temps:
                vals = [
                    t["metrics"][metric]
                    for t in ok
                    if t["config"]["mode"] == mode
                    and t["config"]["method"] == method
                    and t["config"]["temperature"] == temp
                ]
                if vals:
                    xs.append(temp)
                    ys.append(max(vals))
            # One colour per method across panels (and across sweeps).
            color = f"C{METHODS.index(method)}" if method in METHODS else None
            ax.plot(xs, ys, marker="o", label=method.upper(), color=color)
        ax.set_title(f"mode {mode.upper()}")
        ax.set_xlabel("temperature T")
        ax.set_xticks(temps)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(
        f"sweep: {metric.replace('_', ' ')} by method and temperature (ASHA-stopped trials: last epoch)",
        fontsize=9,
    )
    fig.tight_layout()
    from zoo.pipeline.stages import is_uri

    path = str(path) if is_uri(path) else Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _format_table(trials: Sequence[Mapping[str, Any]], metric: str) -> str:
    rows = sorted(trials, key=lambda t: -(t["metrics"].get(metric) or -1e9))
    lines = [f"{'method':<7}{'mode':<5}{'T':>5}{'lr':>8}{'epochs':>7}{metric:>18}{'proxy':>8}"]
    for t in rows:
        c, m = t["config"], t["metrics"]
        val = m.get(metric)
        shown = f"{val:.4f}" if val is not None else "failed"
        lines.append(
            f"{c['method']:<7}{c['mode']:<5}{c['temperature']:>5g}{c['lr']:>8g}{m.get('epoch', 0):>7}"
            f"{shown:>18}{m.get('proxy_agreement', float('nan')):>8.4f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ run
def _max_concurrent(cfg: SweepConfig) -> int:
    import ray

    if cfg.max_concurrent_trials:
        return int(cfg.max_concurrent_trials)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if len([n for n in ray.nodes() if n.get("Alive")]) <= 1:
        # One machine: Ray may count more logical CPUs than cores; trials are compute-bound.
        cpus = min(cpus, float(os.cpu_count() or 1))
    return max(1, int(cpus // cfg.cpus_per_trial))


def _parent_run(
    tracking_uri: str | None, experiment: str, parent_run_id: str | None
) -> tuple[str, str, bool]:
    """(parent run id, its experiment name, created here)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if parent_run_id is not None:
        run = client.get_run(parent_run_id)
        return parent_run_id, client.get_experiment(run.info.experiment_id).name, False
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name="sweep", tags={"zoo.job": "sweep"})
    return run.info.run_id, experiment, True


def run_sweep(
    cfg: SweepConfig,
    run_dir: str | Path,
    *,
    student: Any,
    eval_set: Any | None = None,
    tracking_uri: str | None = None,
    experiment: str = "unify",
    parent_run_id: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Sweep ``cfg``'s grid on the run directory's cached ``transfer.parquet`` and ``logits.parquet``
    (teacher inference is never re-run) and return the best config (`SweepResult.best_config`:
    method, mode, temperature, lr) for the final student. Needs a running Ray.

    ``student``: the job's `StudentConfig` (arch, input contract, batch size, optimiser, seed);
    ``eval_set``: an `EvalSet` (or (images, labels)) of labelled *validation* images over the union
    classes (not the test set the final student is reported on: choosing on it would make that report
    optimistic), else the sweep ranks trials by the label-free proxy (`zoo.proxy`). ``run_dir`` may
    be a URI. Trials are MLflow runs
    in the parent's experiment, nested under ``parent_run_id`` (a "sweep" run is created when None).
    A rerun with the same inputs and config returns the recorded result without training (``force``
    reruns).
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from zoo.pipeline.stages import (
        fingerprint,
        is_uri,
        join,
        path_exists,
        read_fingerprint,
        read_text,
        write_json_atomic,
    )

    if not ray.is_initialized():
        raise RuntimeError("run_sweep needs a running Ray: call ray.init() (or ray.init(address=...)) first")
    t_start = time.perf_counter()
    run_dir = str(run_dir).rstrip("/") if is_uri(run_dir) else Path(run_dir).resolve()
    transfer_path, logits_path = join(run_dir, "transfer.parquet"), join(run_dir, "logits.parquet")
    for p, stage in ((transfer_path, "transfer set"), (logits_path, "teacher inference")):
        if not path_exists(p):
            raise FileNotFoundError(
                f"{p} is missing: the sweep reuses the run's cached {stage}; run the main job's stages first "
                "(python jobs/unify.py --run-dir ...)"
            )
    sweep_dir = join(run_dir, "sweep")
    results_path = join(sweep_dir, "results.json")
    eval_fp = None
    if eval_set is not None:
        from zoo.pipeline.training import EvalSet

        ev = eval_set if isinstance(eval_set, EvalSet) else EvalSet(*eval_set)
        eval_fp = ev.fingerprint()
    fp = fingerprint(
        "sweep",
        STAGE_VERSION,
        read_fingerprint(transfer_path),
        read_fingerprint(logits_path),
        cfg.to_dict(),
        student.to_dict(),
        eval_fp,
    )
    if not force and path_exists(results_path):
        prior = json.loads(read_text(results_path))
        if prior.get("fingerprint") == fp:
            log(f"[sweep] up to date ({results_path}): best {prior['best_config']}")
            plot = prior.get("plot_path") or None
            plot = Path(plot) if plot and not is_uri(plot) else plot
            return SweepResult(
                best_config=prior["best_config"],
                best_score=prior["best_score"],
                metric=prior["metric"],
                trials=prior["trials"],
                spearman_proxy_accuracy=prior.get("spearman_proxy_accuracy"),
                plot_path=plot,
                results_path=results_path,
                mlflow_run_id=prior.get("mlflow_run_id"),
                tune_path=prior["tune_path"],
                seconds=0.0,
                skipped=True,
            )

    data = prepare_data(transfer_path, logits_path, student.input, cfg, eval_set)
    score_key = _score_key(cfg, data.has_labels)
    trials_cfg = grid(cfg)
    concurrent = _max_concurrent(cfg)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus > 0
    if use_gpu and gpus == 0:
        raise ValueError("sweep use_gpu=true but the Ray cluster has no GPU: set use_gpu to null or false")
    resources = {"cpu": cfg.cpus_per_trial, **({"gpu": cfg.gpus_per_trial} if use_gpu else {})}
    log(
        f"[sweep] {len(trials_cfg)} trials ({len(cfg.methods)} methods x {len(cfg.modes)} modes x "
        f"{len(cfg.temperatures)} T x {len(cfg.lrs)} lr), {cfg.epochs} epochs each on "
        f"{len(data.train_images)} transfer images ({len(data.holdout_images)} held out for the proxy), "
        f"metric {score_key}, scheduler {cfg.scheduler}, {concurrent} at a time, {resources} per trial"
    )
    parent_id, exp_name, created = _parent_run(tracking_uri, experiment, parent_run_id)

    trainable = tune.with_resources(
        # with_parameters puts the tensors in the object store once; every trial gets them by reference.
        tune.with_parameters(
            _trainable,
            data=data,
            student=student,
            epochs=cfg.epochs,
            score_key=score_key,
            threads=max(1, int(cfg.cpus_per_trial)),
        ),
        resources,
    )
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=cfg.epochs,
            grace_period=min(cfg.grace_period, cfg.epochs),
            reduction_factor=cfg.reduction_factor,
        )
        if cfg.scheduler == "asha"
        else FIFOScheduler()
    )
    tune_name = f"tune-{fp[:12]}"
    storage = str(sweep_dir)
    callback = _mlflow_callback(tracking_uri, exp_name, parent_id, cfg.epochs)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trials_cfg)},
        tune_config=tune.TuneConfig(
            metric=SCORE,
            mode="max",
            scheduler=scheduler,
            max_concurrent_trials=concurrent,
            # A new trial runs in a finished trial's actor: no process start-up (tens of seconds on a
            # loaded 2-core machine) between trials.
            reuse_actors=True,
            time_budget_s=cfg.time_budget_s,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=tune_name, storage_path=storage, callbacks=[callback], verbose=cfg.verbose
        ),
    )
    grid_result = tuner.fit()

    trials: list[dict[str, Any]] = []
    for res in grid_result:
        conf = dict(res.config["trial"]) if res.config else {}
        hist = []
        if res.metrics_dataframe is not None and len(res.metrics_dataframe):
            keep = [
                k
                for k in ("epoch", "train_loss", "val_accuracy", "proxy_agreement", "proxy_neg_xent")
                if k in res.metrics_dataframe.columns
            ]
            hist = res.metrics_dataframe[keep].to_dict("records")
        metrics = {
            k: v
            for k, v in (res.metrics or {}).items()
            if k in ("epoch", "train_loss", "val_accuracy", "proxy_agreement", "proxy_neg_xent", SCORE)
        }
        trials.append(
            {
                "config": conf,
                "metrics": metrics,
                "history": hist,
                "trial_dir": str(res.path),
                "error": None if res.error is None else repr(res.error)[:500],
            }
        )
    done = [t for t in trials if t["metrics"].get(SCORE) is not None and t["error"] is None]
    if not done:
        errors = [t["error"] for t in trials if t["error"]]
        raise RuntimeError(f"every sweep trial failed; first errors: {errors[:2]}")
    # The best is among the trials that ran every epoch (ASHA's survivors); compare like with like.
    full = [t for t in done if t["metrics"]["epoch"] == cfg.epochs] or done
    best = max(full, key=lambda t: t["metrics"][SCORE])
    rho: dict[str, float] | None = None
    ranked = full if len(full) >= 3 else done
    if data.has_labels and len(ranked) >= 3:
        # How well each label-free proxy would have ranked these trials: over the trials that ran every
        # epoch (ASHA-stopped ones are worse on both counts, which would flatter the proxy).
        from zoo.proxy import spearman

        acc = [t["metrics"]["val_accuracy"] for t in ranked]
        rho = {name: spearman([t["metrics"][f"proxy_{name}"] for t in ranked], acc) for name in PROXIES}
        rho = {k: v for k, v in rho.items() if not math.isnan(v)} or None
    plot_path = plot_sweep(trials, score_key, join(sweep_dir, "sweep.png"))
    seconds = time.perf_counter() - t_start
    result = SweepResult(
        best_config=dict(best["config"]),
        best_score=float(best["metrics"][SCORE]),
        metric=score_key,
        trials=trials,
        spearman_proxy_accuracy=rho,
        plot_path=plot_path,
        results_path=results_path,
        mlflow_run_id=parent_id,
        tune_path=str(join(sweep_dir, tune_name)),
        seconds=seconds,
    )
    write_json_atomic({"fingerprint": fp, **result.to_dict()}, results_path)
    _log_parent(tracking_uri, parent_id, cfg, result, created)
    log(
        f"[sweep] {len(done)}/{len(trials)} trials finished in {seconds:.0f}s\n"
        + _format_table(trials, score_key)
    )
    log(
        f"[sweep] best {result.best_config} ({score_key} {result.best_score:.4f})"
        + (f"; Spearman(proxy, accuracy) {json.dumps(rho)}" if rho else "")
    )
    return result


def _mlflow_callback(tracking_uri: str | None, experiment: str, parent_id: str, epochs: int) -> Any:
    """A Tune logger callback that makes every trial an MLflow run nested under ``parent_id``:
    params method/mode/temperature/lr/epochs, per-epoch metrics (step = epoch), status at the end.

    Like Ray's MLflowLoggerCallback, but one `log_batch` per result instead of one request per
    metric (about 1 s per result on sqlite here, which held up Tune's event loop)."""
    from ray.tune.logger import LoggerCallback

    keys = ("train_loss", "val_accuracy", "proxy_agreement", "proxy_neg_xent", SCORE, "epoch_time_s")

    class MLflowTrials(LoggerCallback):
        def __init__(self) -> None:
            self.runs: dict[str, str] = {}
            self._client = None

        @property
        def client(self) -> Any:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=tracking_uri)
            return self._client

        def log_trial_start(self, trial: Any) -> None:
            from mlflow.entities import Param

            if trial.trial_id in self.runs:
                return
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            tags = {
                "mlflow.parentRunId": parent_id,
                "zoo.parent_run_id": parent_id,
                "zoo.job": "sweep-trial",
                "trial_name": str(trial),
                "trial_id": trial.trial_id,
            }
            run = self.client.create_run(exp_id, run_name=_trial_name(trial), tags=tags)
            self.runs[trial.trial_id] = run.info.run_id
            params = {**trial.config["trial"], "epochs": epochs}
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            from mlflow.entities import Metric

            run_id = self.runs.get(trial.trial_id)
            if run_id is None:
                return
            now = int(time.time() * 1000)
            step = int(result.get("epoch", iteration))
            metrics = [
                Metric(k, float(result[k]), now, step)
                for k in keys
                if isinstance(result.get(k), (int, float)) and math.isfinite(result[k])
            ]
            self.client.log_batch(run_id, metrics=metrics)

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            run_id = self.runs.get(trial.trial_id)
            if run_id is not None:
                self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    return MLflowTrials()


def _trial_name(trial: Any) -> str:
    c = trial.config["trial"]
    return f"{c['method']}-{c['mode']}-T{c['temperature']:g}-lr{c['lr']:g}-{trial.trial_id[-5:]}"


def _log_parent(
    tracking_uri: str | None, run_id: str, cfg: SweepConfig, res: SweepResult, created: bool
) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    existing = client.get_run(run_id).data.params
    params = {f"sweep.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in cfg.to_dict().items()}
    params.update({f"sweep.best.{k}": v for k, v in res.best_config.items()})
    params["sweep.metric"] = res.metric
    now = int(time.time() * 1000)
    metrics = [
        Metric("sweep.best_score", res.best_score, now, 0),
        Metric("sweep.seconds", res.seconds, now, 0),
    ]
    for name, rho in (res.spearman_proxy_accuracy or {}).items():
        metrics.append(Metric(f"sweep.spearman_{name}_accuracy", rho, now, 0))
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing],
    )
    client.set_tag(run_id, "sweep.best_config", json.dumps(res.best_config, sort_keys=True))
    from zoo.pipeline.stages import local_copy

    if res.plot_path is not None:
        with local_copy(res.plot_path) as f:
            client.log_artifact(run_id, str(f), "sweep")
    with local_copy(res.results_path) as f:
        client.log_artifact(run_id, str(f), "sweep")
    if created:
        client.set_terminated(run_id)
