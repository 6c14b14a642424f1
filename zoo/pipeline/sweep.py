"""The sweep: Ray Tune over method x mode x temperature (x student learning rate) on the cached logits.

Paper 001 compares five methods (SD, CE, MF-P, MF-LU, MF-LF), each as E, BP or BS (Sec. 3.5), and
studies the temperature T in {1, 3, 6, 10} (Sec. 4.2, Fig. 3b). `run_sweep` picks them for a given
zoo and transfer set by training short students, one per grid point, in a Ray Tune function
trainable with the training core in one process (`zoo.train.fit`; RAY-NOTES: `Tuner(TorchTrainer)`
does not work under Train V2, and short trials do not pay Ray Train's start-up):

- the transfer images (decoded and preprocessed once, on the driver) and the teachers' logits
  (`logits.parquet`, never recomputed) go to the object store once (`tune.with_parameters`); each
  trial is a `Recipe` (the job's levers with the grid point's method, mode and T) and a `Schedule`
  (the job's, with the grid point's lr and the sweep's epochs): the same targets, loss, batch order
  and schedule as the final Ray Train student, so a trial is a short run of the final job;
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
experiment there with pyarrow.fs too). The sweep returns a result; it changes nothing of the job's:
`SweepResult.chosen(recipe, schedule)` makes the final student's recipe and schedule.
"""

from __future__ import annotations

import json
import math
import os
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import ray
import torch
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.logger import LoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from zoo.artifacts import ModelSpec, build_net, preprocess
from zoo.config import coerce
from zoo.pipeline.cache import fingerprint, read_fingerprint
from zoo.pipeline.datasets import LabelledSet
from zoo.pipeline.inference import read_features, read_logits
from zoo.pipeline.soft_labels import load_targets
from zoo.pipeline.storage import (
    atomic_path,
    is_uri,
    join,
    local_copy,
    path_exists,
    read_text,
    write_json_atomic,
)
from zoo.pipeline.transfer import load_transfer_images
from zoo.proxy import PROXIES, proxy_scores, spearman
from zoo.registry import experiment_id
from zoo.train import Schedule, evaluate, fit, pick_device, predict_logits
from zoo.unify import METHODS, MODES
from zoo.unify.recipe import Q_LEVERS_OFF, Recipe, Targets, build_targets, make_loss

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend: no display here)

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

VERSION = 2  # 2: trials are (Recipe, Schedule)
SCORE = "score"


# ---------------------------------------------------------------------------------------- config
@dataclass
class SweepConfig:
    """The grid and the budget of a sweep. The default grid fits a 10-minute budget on 2 cores; the
    paper's full grid (5 methods x {e, bp, bs} x T in {1, 3, 6, 10}) is configs/sweep-full.yaml."""

    # MF-P is in: the best method on a user's own data (issue 16: 0.939 against 0.923 for CE-BS, 2 seeds)
    methods: list[str] = field(default_factory=lambda: ["sd", "ce", "mf-p", "mf-lf"])
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
    """Every trial's grid point: {method, mode, temperature, lr}, in a stable order."""
    return [
        {"method": m, "mode": mode, "temperature": float(t), "lr": float(lr)}
        for m in cfg.methods
        for mode in cfg.modes
        for t in cfg.temperatures
        for lr in cfg.lrs
    ]


def trial_config(point: Mapping[str, Any], recipe: Recipe, schedule: Schedule) -> tuple[Recipe, Schedule]:
    """A grid point as the trial's recipe (the job's levers, the point's method, mode and T) and
    schedule (the job's, with the point's lr); a sweep pairs lever sets with every mode, and BP has no
    soft labels q, so sample weighting and the levers on q are off for BP."""
    bp = point["mode"] == "bp"
    trial = recipe.replace(
        method=point["method"], mode=point["mode"], temperature=float(point["temperature"]),
        sample_weighting="none" if bp else recipe.sample_weighting, **(Q_LEVERS_OFF if bp else {}),
    )  # fmt: skip
    return trial, replace(schedule, lr=float(point["lr"]))


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
    train_features: list[torch.Tensor] | None = None  # per teacher [B, D_i]: lever propagation only

    @property
    def has_labels(self) -> bool:
        return self.val_labels is not None and len(self.val_labels) > 0


def prepare_data(
    transfer_path: str | Path,
    logits_path: str | Path,
    spec: ModelSpec,
    cfg: SweepConfig,
    val_set: LabelledSet | None = None,
    features_path: str | Path | None = None,
) -> SweepData:
    """Read transfer.parquet and logits.parquet of a run once, take a seeded subset of
    ``cfg.transfer_limit`` images, hold ``cfg.proxy_holdout`` of them out, and preprocess the images
    (and ``val_set``, the labelled validation set, subset to ``cfg.eval_limit``) to the student's
    input; with ``features_path`` (features.parquet, for the propagation lever) the teachers' features
    of the same training images too. Paths may be URIs."""
    lf = read_logits(logits_path)
    classes = list(lf.label_space.classes)
    ids, images = load_transfer_images(transfer_path, spec.input)
    # Aligned to the transfer set's order; raises TargetError when the two files do not match.
    z = load_targets(logits_path, ids, classes, Recipe(mode="bp")).logits
    rng = np.random.default_rng(cfg.seed)
    take = rng.permutation(len(ids))[: min(len(ids), cfg.transfer_limit or len(ids))]
    hold = min(cfg.proxy_holdout, len(take) // 5)
    if hold < 1 or len(take) - hold < 2:
        raise ValueError(
            f"the transfer set has {len(ids)} images: too few for a sweep that holds {cfg.proxy_holdout} "
            "out for the proxy; lower proxy_holdout or give a larger transfer set"
        )
    hold_idx, train_idx = torch.from_numpy(take[:hold]), torch.from_numpy(take[hold:])
    val_images = val_labels = None
    if val_set is not None:
        if len(val_set) and (val_set.labels.min() < 0 or val_set.labels.max() >= len(classes)):
            raise ValueError(f"validation labels must be indices into the {len(classes)} union classes")
        if cfg.eval_limit and len(val_set) > cfg.eval_limit:
            val_set = val_set.take(np.sort(rng.permutation(len(val_set))[: cfg.eval_limit]))
        val_images, val_labels = preprocess(val_set.images, spec.input), torch.from_numpy(val_set.labels)
    feats = None
    if features_path is not None:
        ff = read_features(features_path)
        if ff.ids != list(ids) or not ff.features:
            raise ValueError(f"{features_path} does not hold teacher features of this transfer set")
        feats = [f[train_idx].contiguous() for f in ff.features.values()]
    return SweepData(
        train_images=images[train_idx].contiguous(),
        train_logits=z[train_idx].contiguous(),
        holdout_images=images[hold_idx].contiguous(),
        holdout_logits=z[hold_idx].contiguous(),
        mask=lf.mask,
        classes=classes,
        val_images=val_images,
        val_labels=val_labels,
        train_features=feats,
    )


# ----------------------------------------------------------------------------------------- trial
def train_trial(
    data: SweepData,
    spec: ModelSpec,
    schedule: Schedule,
    recipe: Recipe,
    report: Callable[[dict[str, Any]], None] | None = None,
    device: str | torch.device | None = None,
    targets: Targets | None = None,
) -> list[dict[str, Any]]:
    """Train one student (``spec``, seeded by ``schedule.seed``: the same initial weights and batches
    for every recipe, paper 001 Sec. 4.1.1) on the recipe's targets with the training core in this
    process, and return the per-epoch metrics (also passed to ``report`` as they come): train loss,
    the label-free proxies on the held-out transfer images, and the validation accuracy when the data
    has labels. ``targets``: precomputed `build_targets` of the training part (a caller comparing
    modes of one estimate shares them). Lever ``self_train_rounds``: each round retrains from the same
    initial weights on q re-estimated with the previous round's student as one more teacher."""
    dev = pick_device(device)
    images = data.train_images.to(dev)
    student_logits, history = None, []
    for r in range(recipe.self_train_rounds + 1):
        if targets is None or r > 0:
            targets = build_targets(
                data.train_logits, data.mask, recipe, student_logits, features=data.train_features
            )
        torch.manual_seed(schedule.seed)
        model = build_net(spec).to(dev)
        last = r == recipe.self_train_rounds
        on_epoch = _trial_metrics(data, report) if last else None
        history = fit(
            model,
            images,
            make_loss(recipe, targets, dev),
            schedule,
            augment=recipe.augment,
            on_epoch=on_epoch,
        )
        if not last:
            student_logits = predict_logits(model, data.train_images)
    return history


def _trial_metrics(data: SweepData, report: Callable[[dict[str, Any]], None] | None):
    """The per-epoch callback of a trial: proxies on the held-out transfer images, validation
    accuracy when there are labels, then ``report``."""

    def on_epoch(epoch: int, model: torch.nn.Module, metrics: dict[str, Any]) -> None:
        proxy = proxy_scores(
            predict_logits(model, data.holdout_images), data.holdout_logits, data.mask, temperature=1.0
        )
        metrics["proxy_agreement"] = float(proxy["agreement"].mean())
        metrics["proxy_neg_xent"] = float(proxy["neg_xent"].mean())
        if data.has_labels:
            metrics["val_accuracy"] = evaluate(model, data.val_images, data.val_labels)
        if not math.isfinite(metrics["train_loss"]):
            metrics["train_loss"] = float("nan")
        if report is not None:
            report(dict(metrics))

    return on_epoch


def _score_key(cfg: SweepConfig, has_labels: bool) -> str:
    if cfg.metric == "accuracy" or (cfg.metric == "auto" and has_labels):
        if not has_labels:
            raise ValueError("sweep metric 'accuracy' needs a labelled validation set (val_set)")
        return "val_accuracy"
    return f"proxy_{cfg.proxy}"


def _trainable(
    config: dict[str, Any],
    data: SweepData,
    spec: ModelSpec,
    schedule: Schedule,
    recipe: Recipe,
    score_key: str,
    threads: int,
) -> None:
    """The Tune function trainable: one trial, metrics reported every epoch (ASHA may stop it)."""
    torch.set_num_threads(max(1, threads))
    trial_recipe, trial_schedule = trial_config(config["trial"], recipe, schedule)

    def report(m: dict[str, Any]) -> None:
        tune.report({**m, SCORE: m[score_key]})

    train_trial(data, spec, trial_schedule, trial_recipe, report=report)


@dataclass
class SweepResult:
    best_config: dict[str, Any]  # {method, mode, temperature, lr}: `chosen` makes the final student's
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

    def chosen(self, recipe: Recipe, schedule: Schedule) -> tuple[Recipe, Schedule]:
        """The final student's recipe (the job's levers, the best method, mode and T) and schedule
        (the job's, with the best lr)."""
        return trial_config(self.best_config, recipe, schedule)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], results_path: Path | str, skipped: bool = False) -> SweepResult:
        """A result read back from results.json (a rerun with the same inputs)."""
        plot = d.get("plot_path") or None
        return cls(
            best_config=d["best_config"],
            best_score=d["best_score"],
            metric=d["metric"],
            trials=d["trials"],
            spearman_proxy_accuracy=d.get("spearman_proxy_accuracy"),
            plot_path=Path(plot) if plot and not is_uri(plot) else plot,
            results_path=results_path,
            mlflow_run_id=d.get("mlflow_run_id"),
            tune_path=d["tune_path"],
            seconds=0.0,
            skipped=skipped,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plot_path"] = str(self.plot_path) if self.plot_path else None
        d["results_path"] = str(self.results_path)
        return d


def plot_sweep(trials: Sequence[Mapping[str, Any]], metric: str, path: str | Path) -> Path:
    """PNG of ``metric`` by temperature, one line per method, one panel per mode (best over lr when the
    grid has several); written through a temporary file."""
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
    client = MlflowClient(tracking_uri=tracking_uri)
    if parent_run_id is not None:
        run = client.get_run(parent_run_id)
        return parent_run_id, client.get_experiment(run.info.experiment_id).name, False
    exp_id = experiment_id(client, tracking_uri, experiment)
    run = client.create_run(exp_id, run_name="sweep", tags={"zoo.job": "sweep"})
    return run.info.run_id, experiment, True


def run_sweep(
    cfg: SweepConfig,
    run_dir: str | Path,
    *,
    spec: ModelSpec,
    schedule: Schedule,
    recipe: Recipe = Recipe(),
    val_set: LabelledSet | None = None,
    tracking_uri: str | None = None,
    experiment: str = "unify",
    parent_run_id: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Sweep ``cfg``'s grid on the run directory's cached ``transfer.parquet`` and ``logits.parquet``
    (teacher inference is never re-run) and return the result (`SweepResult.chosen` makes the final
    student's recipe and schedule). Needs a running Ray.

    ``spec``: the student's network (arch, classes, input contract); ``schedule`` and ``recipe``:
    the job's (batch size, optimiser, seed; levers), which every trial shares; ``val_set``: labelled
    *validation* images over the union classes (not the test set the final student is reported on:
    choosing on it would make that report optimistic), else the sweep ranks trials by the label-free
    proxy (`zoo.proxy`). ``run_dir`` may be a URI. Trials are MLflow runs in the parent's experiment,
    nested under ``parent_run_id`` (a "sweep" run is created when None). A rerun with the same inputs
    and config returns the recorded result without training (``force`` reruns)."""
    if not ray.is_initialized():
        raise RuntimeError("run_sweep needs a running Ray: call ray.init() (or ray.init(address=...)) first")
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
    val_fp = None if val_set is None else val_set.fingerprint()
    net = replace(spec, metadata={}).to_dict()
    fp = fingerprint(
        "sweep", VERSION, read_fingerprint(transfer_path), read_fingerprint(logits_path), cfg.to_dict(),
        net, schedule, recipe, val_fp,
    )  # fmt: skip
    inputs = {"transfer": transfer_path, "logits": logits_path, "sweep_dir": sweep_dir, "fp": fp}
    if recipe.propagation is not None:  # the lever needs the teachers' features (same inference stage)
        inputs["features"] = join(run_dir, "features.parquet")
        if not path_exists(inputs["features"]):
            raise FileNotFoundError(
                f"{inputs['features']} is missing: the recipe propagates q over the teachers' features; "
                "run the main job with propagation on first (python jobs/unify.py --propagate --run-dir ...)"
            )

    if not force and read_fingerprint(results_path) == fp:
        prior = SweepResult.from_dict(json.loads(read_text(results_path)), results_path, skipped=True)
        log(f"[sweep] up to date ({results_path}): best {prior.best_config}")
        return prior
    return _sweep(cfg, inputs, spec, schedule, recipe, val_set, tracking_uri, experiment, parent_run_id, log)


def _sweep(
    cfg, inputs, spec, schedule, recipe, val_set, tracking_uri, experiment, parent_run_id, log
) -> SweepResult:
    t_start = time.perf_counter()
    data = prepare_data(inputs["transfer"], inputs["logits"], spec, cfg, val_set, inputs.get("features"))
    score_key = _score_key(cfg, data.has_labels)
    points = grid(cfg)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus > 0
    if use_gpu and gpus == 0:
        raise ValueError("sweep use_gpu=true but the Ray cluster has no GPU: set use_gpu to null or false")
    resources = {"cpu": cfg.cpus_per_trial, **({"gpu": cfg.gpus_per_trial} if use_gpu else {})}
    concurrent = _max_concurrent(cfg)
    log(
        f"[sweep] {len(points)} trials ({len(cfg.methods)} methods x {len(cfg.modes)} modes x "
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
            spec=spec,
            schedule=replace(schedule, epochs=cfg.epochs),
            recipe=recipe,
            score_key=score_key,
            threads=max(1, int(cfg.cpus_per_trial)),
        ),  # fmt: skip
        resources,
    )
    tune_name = f"tune-{inputs['fp'][:12]}"
    grid_result = _tuner(
        cfg, trainable, points, concurrent, tune_name, inputs["sweep_dir"], tracking_uri, exp_name, parent_id
    ).fit()
    trials = _collect(grid_result)
    best, rho = _best(trials, cfg.epochs, data.has_labels)
    plot_path = plot_sweep(trials, score_key, join(inputs["sweep_dir"], "sweep.png"))
    result = SweepResult(
        best_config=dict(best["config"]),
        best_score=float(best["metrics"][SCORE]),
        metric=score_key,
        trials=trials,
        spearman_proxy_accuracy=rho,
        plot_path=plot_path,
        results_path=join(inputs["sweep_dir"], "results.json"),
        mlflow_run_id=parent_id,
        tune_path=str(join(inputs["sweep_dir"], tune_name)),
        seconds=time.perf_counter() - t_start,
    )
    write_json_atomic({"fingerprint": inputs["fp"], **result.to_dict()}, result.results_path)
    _log_parent(tracking_uri, parent_id, cfg, result, created)
    done = sum(1 for t in trials if t["error"] is None and t["metrics"].get(SCORE) is not None)
    log(
        f"[sweep] {done}/{len(trials)} trials finished in {result.seconds:.0f}s\n"
        + _format_table(trials, score_key)
    )
    log(
        f"[sweep] best {result.best_config} ({score_key} {result.best_score:.4f})"
        + (f"; Spearman(proxy, accuracy) {json.dumps(rho)}" if rho else "")
    )
    return result


def _tuner(
    cfg, trainable, points, concurrent, name, sweep_dir, tracking_uri, exp_name, parent_id
) -> tune.Tuner:
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
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(points)},
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
            name=name,
            storage_path=str(sweep_dir),
            callbacks=[_mlflow_callback(tracking_uri, exp_name, parent_id, cfg.epochs)],
            verbose=cfg.verbose,
        ),
    )


_KEPT = ("epoch", "train_loss", "val_accuracy", "proxy_agreement", "proxy_neg_xent")


def _collect(grid_result: Any) -> list[dict[str, Any]]:
    """Every trial's grid point, last metrics, per-epoch history, directory and error."""
    trials = []
    for res in grid_result:
        frame = res.metrics_dataframe
        hist = (
            []
            if frame is None or not len(frame)
            else frame[[k for k in _KEPT if k in frame.columns]].to_dict("records")
        )
        trials.append(
            {
                "config": dict(res.config["trial"]) if res.config else {},
                "metrics": {k: v for k, v in (res.metrics or {}).items() if k in (*_KEPT, SCORE)},
                "history": hist,
                "trial_dir": str(res.path),
                "error": None if res.error is None else repr(res.error)[:500],
            }
        )
    return trials


def _best(
    trials: list[dict[str, Any]], epochs: int, has_labels: bool
) -> tuple[dict[str, Any], dict[str, float] | None]:
    """The best trial among those that ran every epoch (ASHA's survivors: compare like with like),
    and how well each label-free proxy ranked them (Spearman with the validation accuracy)."""
    done = [t for t in trials if t["metrics"].get(SCORE) is not None and t["error"] is None]
    if not done:
        raise RuntimeError(
            f"every sweep trial failed; first errors: {[t['error'] for t in trials if t['error']][:2]}"
        )
    full = [t for t in done if t["metrics"]["epoch"] == epochs] or done
    best = max(full, key=lambda t: t["metrics"][SCORE])
    ranked = full if len(full) >= 3 else done
    if not has_labels or len(ranked) < 3:
        return best, None
    # Over the trials that ran every epoch: ASHA-stopped ones are worse on both counts, which would
    # flatter the proxy.
    acc = [t["metrics"]["val_accuracy"] for t in ranked]
    rho = {name: spearman([t["metrics"][f"proxy_{name}"] for t in ranked], acc) for name in PROXIES}
    return best, {k: v for k, v in rho.items() if not math.isnan(v)} or None


def _mlflow_callback(tracking_uri: str | None, experiment: str, parent_id: str, epochs: int) -> Any:
    """A Tune logger callback that makes every trial an MLflow run nested under ``parent_id``:
    params method/mode/temperature/lr/epochs, per-epoch metrics (step = epoch), status at the end.

    Like Ray's MLflowLoggerCallback, but one `log_batch` per result instead of one request per
    metric (about 1 s per result on sqlite here, which held up Tune's event loop)."""
    keys = ("train_loss", "val_accuracy", "proxy_agreement", "proxy_neg_xent", SCORE, "epoch_time_s")

    class MLflowTrials(LoggerCallback):
        def __init__(self) -> None:
            self.runs: dict[str, str] = {}
            self._client = None

        @property
        def client(self) -> Any:
            if self._client is None:
                self._client = MlflowClient(tracking_uri=tracking_uri)
            return self._client

        def log_trial_start(self, trial: Any) -> None:
            if trial.trial_id in self.runs:
                return
            exp_id = experiment_id(self.client, tracking_uri, experiment)
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
    if res.plot_path is not None:
        with local_copy(res.plot_path) as f:
            client.log_artifact(run_id, str(f), "sweep")
    with local_copy(res.results_path) as f:
        client.log_artifact(run_id, str(f), "sweep")
    if created:
        client.set_terminated(run_id)
