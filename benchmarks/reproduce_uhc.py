"""Reproduce paper 001's Table 2 and Fig. 3 (Vongkulbhisal et al., CVPR 2019) through the product.

A Fashion-MNIST analogue of the paper's protocol (Sec. 4.1.1), every step through the product's own
code paths:

- the trial: `zoo.demo.make_split` (L_U = 8 of the 10 classes; 5 teachers of 3-5 classes, "random",
  or of all 8, "overlap" = the split's "complete" mode; 100 images per class per teacher, no image
  shared; a transfer set of 20k training images from all 10 classes, so ~20% lie outside L_U);
- the teachers: `zoo.pipeline.make_zoo.train_teacher` (what the demo zoo runs), on the heterogeneous
  architecture pool `zoo.demo.DEFAULT_ARCHS`, with the demo's recipe (`DemoConfig`);
- the soft labels and losses: `zoo.unify.estimate_soft_labels` / `unify_loss` / `balance_weights`,
  through `zoo.pipeline.sweep.train_trial`, which trains a student with the main job's loss, batch
  order and lr schedule; the same initial weights and batch order for every method of a trial
  (the student's seed is the trial's seed, Sec. 4.1.1);
- SPV: `zoo.pipeline.spv.train_spv`, the job's own SPV (the student's architecture trained
  supervised on the union of the teachers' training data, with the teachers' recipe);
- the test set: the Fashion-MNIST test images of L_U (as in the paper, the evaluation set).

Teacher accuracy (Sec. 4.2): Gaussian noise injected into each teacher's last linear layer, either a
fixed relative std (``teacher_noise``: sigma = teacher_noise x std of that layer's weights) or, as in
the paper, increased until the teacher's accuracy on its adjustment set (its held-out images, below)
drops to ``teacher_accuracy`` (left as is when already below).

Each teacher's held-out set: 20 labelled training images per class of its classes, used by no other
teacher and outside the transfer set (its owner's own validation data; also the adjustment set above).

Teachers' weights and outputs are cached under ``benchmarks/.cache/uhc/`` (per protocol and seed; the
transfer logits per transfer size and noise), and every student's result is appended to
``results.jsonl`` there, so an interrupted run continues where it stopped and the tables and plots
are rebuilt from it without training (``--report-only``).

    python benchmarks/reproduce_uhc.py                      # the committed run (see --help)
    python benchmarks/reproduce_uhc.py --report-only        # tables + plots from the JSONL

Library use (no work at import time)::

    from benchmarks.reproduce_uhc import make_trial, run_student, run_spv
    trial = make_trial("random", seed=0)
    acc = run_student(trial, "mf-lf", "bs")
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from zoo.pipeline.sweep import SweepData  # noqa: E402

DEFAULT_CACHE = ROOT / "benchmarks" / ".cache" / "uhc"
RESULTS_MD = ROOT / "benchmarks" / "results" / "reproduce-uhc.md"
PROTOCOLS = {"random": "random", "overlap": "complete"}  # ours -> zoo.demo.OVERLAP_MODES
HOLDOUT_PER_CLASS = 20  # each teacher's own labelled validation images per class
PROXY_HOLDOUT = 200  # transfer images held out of student training (SweepData.holdout_*)
CACHE_VERSION = 1

# The student: sized so one trains in a few seconds on one core (measured: see docs/reproduce.md).
# SGD with momentum 0.9, lr for the first half of the epochs then lr / 10 (Sec. 4.1.1, the main
# job's schedule, `zoo.train.Schedule`).
STUDENT: dict[str, Any] = {
    "arch": "mlp",
    "arch_kwargs": {"hidden": 128, "layers": 1},
    "epochs": 2,
    "lr": 0.05,
    "batch_size": 128,
    "optimizer": "sgd",
}
# Per-method step-size factors, as the paper's footnote 6 does for MF-P-BP (150x there: "its loss has
# a smaller scale"). Here, on trial random-s0 at 2 epochs: MF-LF-BP's squared-logit loss (summed
# over teachers) diverges at lr 0.05 and 0.02 (accuracy 0.125) and trains at 0.01 (0.816) and 0.005
# (0.811); MF-P-BP gains at 10x (0.775 -> 0.799) and diverges at 150x (0.234).
# MF-LU-BP (the same logit-space loss, with v) trains at the base rate on most trials but its loss
# went to NaN on one of the first three (random seed 8: accuracy 0.125 at 0.05, 0.780 at 0.01), so it
# takes MF-LF-BP's factor.
LR_SCALE: dict[tuple[str, str], float] = {("mf-lf", "bp"): 0.2, ("mf-lu", "bp"): 0.2, ("mf-p", "bp"): 10.0}
# Table 2's methods: SD, SD-BS, and CE / MF-P / MF-LU / MF-LF x {E, BP, BS} (+ SPV).
TABLE_METHODS: tuple[tuple[str, str], ...] = (
    ("sd", "e"),
    ("sd", "bs"),
    *((m, mode) for mode in ("e", "bp", "bs") for m in ("ce", "mf-p", "mf-lu", "mf-lf")),
)
# Fig. 3's representative methods (Sec. 4.2).
SENS_METHODS: tuple[tuple[str, str], ...] = (
    ("sd", "e"),
    ("sd", "bp"),
    ("mf-p", "bp"),
    ("mf-lf", "bp"),
    ("ce", "bp"),
)


def method_name(method: str, mode: str) -> str:
    """Table 2's name: "SD" (= SD-E), "SD-BS", "CE-E", "MF-LU-BP" (the paper's MF-LV), ..."""
    if method == "spv":
        return "SPV"
    if method == "sd" and mode == "e":
        return "SD"
    return f"{method.upper()}-{mode.upper()}"


# ------------------------------------------------------------------------------------------- trial
@dataclass
class Trial:
    """One trial of the protocol: teachers trained and run on the transfer set."""

    protocol: str  # "random" | "overlap"
    seed: int
    data: SweepData  # transfer set (train_*), a small held-out part of it (holdout_*), test set (val_*)
    teacher_holdout: list[tuple[torch.Tensor, torch.Tensor]]  # per teacher: logits [m, L_i], labels [m]
    transfer_labels: torch.Tensor  # true label of each training transfer image in L_U (-1 = outside)
    spv_accuracy: float | None = None  # filled by run_spv
    transfer_size: int = 20000
    teacher_noise: float = 0.0
    teacher_accuracy: float | None = None
    teachers: list[dict[str, Any]] = field(default_factory=list)  # arch, classes, accuracies, sigma
    split: Any = None  # the zoo.demo.DemoSplit
    _targets: dict[tuple[str, float, str], Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return trial_key(
            self.protocol, self.seed, self.transfer_size, self.teacher_noise, self.teacher_accuracy
        )


def trial_key(
    protocol: str, seed: int, transfer_size: int, teacher_noise: float, teacher_accuracy: float | None
) -> str:
    key = f"{protocol}-s{seed}-n{transfer_size}"
    if teacher_noise:
        key += f"-noise{teacher_noise:g}"
    if teacher_accuracy is not None:
        key += f"-acc{teacher_accuracy:g}"
    return key


_DATASET: Any = None


def dataset() -> Any:
    """Fashion-MNIST (`zoo.pipeline.datasets.load_dataset`), loaded once per process."""
    global _DATASET
    if _DATASET is None:
        from zoo.pipeline.datasets import load_dataset

        _DATASET = load_dataset()
    return _DATASET


def _spec() -> Any:
    from zoo.pipeline.datasets import input_spec_for

    return input_spec_for(dataset().images_train)


def make_config(protocol: str, seed: int, transfer_size: int = 20000) -> Any:
    """The trial's `zoo.demo.DemoConfig` (the demo zoo's defaults: 8 union classes, 5 teachers of 3-5
    classes, 100 images per class, heterogeneous archs, the demo's teacher recipe)."""
    from zoo.demo import DemoConfig

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    return DemoConfig(seed=int(seed), overlap=PROTOCOLS[protocol], transfer_size=int(transfer_size))


def _holdout_indices(split: Any, labels_train: np.ndarray, seed: int) -> list[np.ndarray]:
    """Each teacher's own held-out images: HOLDOUT_PER_CLASS training images per class of its classes,
    used by no teacher, outside the transfer set (and the split's validation set), none shared between
    teachers."""
    taken_by = [np.asarray(t.train_indices) for t in split.teachers] + [np.asarray(split.transfer_indices)]
    # and the split's own labelled validation set, where the split has one
    taken_by.append(np.asarray(getattr(split, "val_indices", ()), dtype=np.int64))
    used = np.concatenate(taken_by)
    free = np.setdiff1d(np.arange(len(labels_train)), used)
    rng = np.random.default_rng([int(seed), 7])
    pools = {int(c): rng.permutation(free[labels_train[free] == c]) for c in split.union_labels}
    taken = dict.fromkeys(pools, 0)
    out = []
    for t in split.teachers:
        parts = []
        for c in t.labels:
            if taken[c] + HOLDOUT_PER_CLASS > len(pools[c]):
                raise ValueError(
                    f"not enough free images of class {c} for the held-out sets: lower transfer_size"
                )
            parts.append(pools[c][taken[c] : taken[c] + HOLDOUT_PER_CLASS])
            taken[c] += HOLDOUT_PER_CLASS
        out.append(np.sort(np.concatenate(parts)))
    return out


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _teachers(protocol: str, seed: int, split: Any, cache_dir: Path | None) -> list[dict[str, Any]]:
    """Train (or load) the trial's teachers with the demo zoo's `train_teacher`; the teachers do not
    depend on the transfer size (zoo.demo draws the transfer set from its own random stream)."""
    from zoo.pipeline.make_zoo import train_teacher

    path = None if cache_dir is None else Path(cache_dir) / "teachers" / f"{protocol}-s{seed}.pt"
    if path is not None and path.is_file():
        cached = torch.load(path, weights_only=False)
        if cached.get("version") == CACHE_VERSION:
            return cached["teachers"]
    ds, cfg = dataset(), split.config
    spec = _spec()
    out = []
    for i, t in enumerate(split.teachers):
        x, y = split.teacher_data(i, ds.images_train, ds.labels_train)
        xe, ye = split.teacher_eval(i, ds.images_test, ds.labels_test)
        r = train_teacher(
            t.arch,
            dict(t.arch_kwargs),
            list(t.classes),
            spec.to_dict(),
            x,
            y,
            xe,
            ye,
            epochs=int(cfg["epochs"]),
            lr=float(cfg["lr"]),
            batch_size=int(cfg["batch_size"]),
            optimizer=str(cfg["optimizer"]),
            augment=bool(cfg["augment"]),
            seed=int(cfg["seed"]) * 1000 + i,  # as make_zoo.build_zoo seeds them
            threads=None,  # keep the process's setting
        )
        out.append(
            {
                "arch": t.arch,
                "arch_kwargs": dict(t.arch_kwargs),
                "classes": list(t.classes),
                "state": r["state"],
                "test_accuracy": float(r["accuracy"]),
            }
        )
    if path is not None:
        _atomic_save({"version": CACHE_VERSION, "teachers": out}, path)
    return out


def _build_teacher(t: Mapping[str, Any]) -> torch.nn.Module:
    from zoo.architectures import build_model

    spec = _spec()
    model = build_model(
        t["arch"], len(t["classes"]), spec.channels, (spec.height, spec.width), **dict(t["arch_kwargs"])
    )
    model.load_state_dict(t["state"])
    return model.eval()


def _last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear layer to inject noise into")
    return last


def add_last_layer_noise(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    noise: float = 0.0,
    target_accuracy: float | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Sec. 4.2: Gaussian noise in the last fc layer (weights and bias), in place.

    ``noise``: a fixed sigma relative to the std of the layer's weights. ``target_accuracy``: the
    smallest relative sigma (bisection over one fixed noise draw, so accuracy is a function of sigma)
    at which the accuracy on the adjustment set ``images``/``labels`` drops to the target; left clean
    when it is already at or below it. Returns (relative sigma, adjustment-set accuracy after).
    """
    from zoo.train import evaluate

    fc = _last_linear(model)
    w0, b0 = fc.weight.detach().clone(), fc.bias.detach().clone()
    g = torch.Generator().manual_seed(int(seed))
    ew, eb = torch.randn(w0.shape, generator=g), torch.randn(b0.shape, generator=g)
    scale = float(w0.std())

    def apply(rel: float) -> float:
        with torch.no_grad():
            fc.weight.copy_(w0 + rel * scale * ew)
            fc.bias.copy_(b0 + rel * scale * eb)
        return evaluate(model, images, labels)

    if target_accuracy is None:
        return float(noise), apply(float(noise))
    acc0 = apply(0.0)
    if acc0 <= target_accuracy:
        return 0.0, acc0
    hi = 0.5
    while apply(hi) > target_accuracy and hi < 1e4:
        hi *= 2
    lo = 0.0
    for _ in range(20):  # bisection: the smallest sigma reaching the target (to 1e-6 relative)
        mid = (lo + hi) / 2
        if apply(mid) > target_accuracy:
            lo = mid
        else:
            hi = mid
    return hi, apply(hi)


def make_trial(
    protocol: str,
    seed: int,
    transfer_size: int = 20000,
    teacher_noise: float = 0.0,
    cache_dir: Path | None = DEFAULT_CACHE,
    *,
    teacher_accuracy: float | None = None,
) -> Trial:
    """One trial: the split (zoo.demo.make_split), the teachers (trained once, cached), their logits on
    the transfer set, their own held-out sets, and the test set of L_U. See the module docstring."""
    from zoo.artifacts import preprocess
    from zoo.demo import make_split
    from zoo.labels import build_label_space
    from zoo.train import evaluate, predict_logits

    if teacher_noise < 0 or (teacher_accuracy is not None and not 0 < teacher_accuracy < 1):
        raise ValueError("teacher_noise must be >= 0 and teacher_accuracy in (0, 1) or None")
    ds = dataset()
    cfg = make_config(protocol, seed, transfer_size)
    split = make_split(cfg, ds.labels_train, ds.labels_test, ds.class_names, dataset=ds.name)
    key = trial_key(protocol, seed, transfer_size, teacher_noise, teacher_accuracy)
    teachers = _teachers(protocol, seed, split, cache_dir)
    space = build_label_space([t["classes"] for t in teachers], [f"t{i}" for i in range(len(teachers))])
    classes = list(space.classes)
    if classes != list(split.union_classes):
        raise RuntimeError(f"label space {classes} differs from the split's union {split.union_classes}")
    spec = _spec()
    transfer_idx = np.asarray(split.transfer_indices, dtype=np.int64)
    holdout_idx = _holdout_indices(split, ds.labels_train, seed)

    path = None if cache_dir is None else Path(cache_dir) / "trials" / f"{key}.pt"
    cached = torch.load(path, weights_only=False) if path is not None and path.is_file() else None
    if cached is not None and cached.get("version") != CACHE_VERSION:
        cached = None
    x_transfer = preprocess(ds.images_train[transfer_idx], spec)
    if cached is None:
        logits, hold, infos = [], [], []
        for i, t in enumerate(teachers):
            model = _build_teacher(t)
            xh = preprocess(ds.images_train[holdout_idx[i]], spec)
            # labels as indices into the teacher's own classes
            lut = {lab: k for k, lab in enumerate(split.teachers[i].labels)}
            yh = torch.tensor([lut[int(v)] for v in ds.labels_train[holdout_idx[i]]], dtype=torch.int64)
            sigma, adj_acc = 0.0, None
            if teacher_noise or teacher_accuracy is not None:
                sigma, adj_acc = add_last_layer_noise(
                    model, xh, yh, noise=teacher_noise, target_accuracy=teacher_accuracy, seed=seed * 1000 + i
                )
            xe, ye = split.teacher_eval(i, ds.images_test, ds.labels_test)
            infos.append(
                {
                    "arch": t["arch"] + "".join(f":{k}={v}" for k, v in t["arch_kwargs"].items()),
                    "classes": t["classes"],
                    "clean_test_accuracy": t["test_accuracy"],
                    "test_accuracy": evaluate(model, preprocess(xe, spec), torch.as_tensor(ye)),
                    "noise_sigma": sigma,
                    "adjust_accuracy": adj_acc,
                }
            )
            logits.append(predict_logits(model, x_transfer))
            hold.append((predict_logits(model, xh), yh))
        cached = {
            "version": CACHE_VERSION,
            "logits": space.to_union(logits).float(),
            "teacher_holdout": hold,
            "teachers": infos,
            "transfer_indices": transfer_idx,
        }
        if path is not None:
            _atomic_save(cached, path)
    z = cached["logits"]
    # Student training set and the small proxy hold-out (seeded, disjoint).
    perm = np.random.default_rng([int(seed), 11]).permutation(len(transfer_idx))
    n_hold = min(PROXY_HOLDOUT, len(perm) // 5)
    hold_pos, train_pos = torch.from_numpy(np.sort(perm[:n_hold])), torch.from_numpy(np.sort(perm[n_hold:]))
    name_to_idx = {name: k for k, name in enumerate(classes)}
    to_union = np.full(len(ds.class_names), -1, dtype=np.int64)
    for lab in split.union_labels:
        to_union[lab] = name_to_idx[ds.class_names[lab]]
    true = torch.from_numpy(to_union[ds.labels_train[transfer_idx]])
    x_test, y_test = split.eval_set(ds.images_test, ds.labels_test, classes=classes)
    data = SweepData(
        train_images=x_transfer[train_pos].contiguous(),
        train_logits=z[train_pos].contiguous(),
        holdout_images=x_transfer[hold_pos].contiguous(),
        holdout_logits=z[hold_pos].contiguous(),
        mask=space.mask,
        classes=classes,
        val_images=preprocess(x_test, spec),
        val_labels=torch.as_tensor(y_test, dtype=torch.int64),
    )
    return Trial(
        protocol=protocol,
        seed=int(seed),
        data=data,
        teacher_holdout=cached["teacher_holdout"],
        transfer_labels=true[train_pos].contiguous(),
        transfer_size=int(transfer_size),
        teacher_noise=float(teacher_noise),
        teacher_accuracy=teacher_accuracy,
        teachers=cached["teachers"],
        split=split,
    )


# ---------------------------------------------------------------------------------------- students
def student(trial: Trial, epochs: int, lr: float) -> tuple[Any, Any]:
    """The student's network (STUDENT over the trial's classes) and `zoo.train.Schedule`, seeded by
    the trial: the same initial weights and batch order for every method of a trial."""
    from zoo.artifacts import ModelSpec
    from zoo.train import Schedule

    spec = ModelSpec(STUDENT["arch"], list(trial.data.classes), _spec(), dict(STUDENT["arch_kwargs"]))
    schedule = Schedule(
        epochs=epochs,
        lr=lr,
        batch_size=STUDENT["batch_size"],
        optimizer=STUDENT["optimizer"],
        seed=int(trial.seed),
    )
    return spec, schedule


def shared_targets(trial: Trial, recipe: Any) -> Any:
    """The recipe's targets on this trial's transfer logits, computed once per (method, T, sample
    weighting) and shared: E and BS train on the same q (BS only adds class weights, Sec. 3.5.2), and
    MF-P's and MF-LU's ALS take minutes on 20k images here. None (train_trial builds them) for BP and
    for the levers that change the logits first (calibration, self-training)."""
    from dataclasses import replace as _replace

    from zoo.unify.recipe import Q_LEVERS_OFF, build_targets

    if recipe.mode == "bp" or recipe.teacher_temperatures is not None or recipe.self_train_rounds:
        return None
    if recipe.replace(**Q_LEVERS_OFF) != recipe:  # the levers on q (issue 18): not this memo's q
        return None
    key = (recipe.method, recipe.temperature, recipe.sample_weighting)
    if key not in trial._targets:
        trial._targets[key] = build_targets(
            trial.data.train_logits, trial.data.mask, recipe.replace(mode="bs")
        )
    targets = trial._targets[key]
    return targets if recipe.mode == "bs" else _replace(targets, class_weights=None)


def run_student(trial: Trial, method: str, mode: str, temperature: float = 3.0, **options: Any) -> float:
    """Train one student with ``method`` (sd, ce, mf-p, mf-lu, mf-lf) in ``mode`` (e, bp, bs) through
    `zoo.pipeline.sweep.train_trial` and return its accuracy on the test images of L_U. ``options``:
    ``epochs`` and ``lr`` (default STUDENT's, the lr times LR_SCALE's factor for the method), and the
    Recipe's levers (teacher_temperatures, sample_weighting, augment, self_train_rounds)."""
    from zoo.pipeline.sweep import train_trial
    from zoo.unify.recipe import Recipe

    epochs = int(options.pop("epochs", STUDENT["epochs"]))
    lr = float(options.pop("lr", STUDENT["lr"] * LR_SCALE.get((method, mode), 1.0)))
    spec, schedule = student(trial, epochs, lr)
    recipe = Recipe(method=method, mode=mode, temperature=float(temperature), **options)
    history = train_trial(trial.data, spec, schedule, recipe, targets=shared_targets(trial, recipe))
    return float(history[-1]["val_accuracy"])


def run_spv(trial: Trial) -> float:
    """SPV (Table 2's benchmark) through the main job's SPV (`zoo.pipeline.spv`): the student's
    network trained supervised on the union of the teachers' training data (the teachers' recipe),
    evaluated on the same test set. Stores it in ``trial.spv_accuracy`` and returns it."""
    from zoo.pipeline.spv import demo_spv_data, train_spv
    from zoo.train import evaluate

    split = trial.split
    spec, _ = student(trial, 1, 1.0)
    tc = dict(split.config)
    model = train_spv(
        spec,
        demo_spv_data(split, list(trial.data.classes)),
        epochs=int(tc["epochs"]),
        lr=float(tc["lr"]),
        batch_size=int(tc["batch_size"]),
        seed=trial.seed,
        optimizer=str(tc["optimizer"]),
    )
    trial.spv_accuracy = evaluate(model, trial.data.val_images, trial.data.val_labels)
    return trial.spv_accuracy


def soft_label_accuracy(trial: Trial, method: str, temperature: float = 3.0) -> float:
    """Top-1 accuracy of ``method``'s estimated soft labels q on the in-union transfer images (the
    issue's observation: the student tracks it). BP has no q; E and BS share it."""
    from zoo.unify.recipe import Recipe

    q = shared_targets(trial, Recipe(method=method, mode="bs", temperature=temperature)).q
    inside = trial.transfer_labels >= 0
    return float((q[inside].argmax(-1) == trial.transfer_labels[inside]).float().mean())


# ------------------------------------------------------------------------------------------ runner
def _student_tag() -> str:
    """A short hash of the student's recipe: results of different recipes never mix in the JSONL."""
    return hashlib.sha256(json.dumps(STUDENT, sort_keys=True).encode()).hexdigest()[:8]


def lr_scale(method: str, mode: str) -> float:
    return LR_SCALE.get((method, mode), 1.0)


def row_key(tkey: str, method: str, mode: str, temperature: float) -> str:
    """A result's identity: trial, method, mode, T, the method's lr factor and the student recipe."""
    return f"{tkey}|{method}|{mode}|T{temperature:g}|lr{lr_scale(method, mode):g}|{_student_tag()}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSONL's rows (a torn last line, from a killed run, is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _append(path: Path, row: Mapping[str, Any]) -> None:
    # One write of one line in append mode: lines from the two workers do not interleave.
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()


@dataclass
class Unit:
    """The work of one trial: its students (method, mode, T), and whether to add SPV and the soft
    labels' own accuracy."""

    protocol: str
    seed: int
    transfer_size: int = 20000
    teacher_accuracy: float | None = None
    tasks: list[tuple[str, str, float]] = field(default_factory=list)
    spv: bool = False
    qacc: list[str] = field(default_factory=list)

    @property
    def tkey(self) -> str:
        return trial_key(self.protocol, self.seed, self.transfer_size, 0.0, self.teacher_accuracy)


def plan(
    protocols: Sequence[str],
    trials: int,
    sens_trials: int,
    sensitivity: Sequence[str],
    sizes: Sequence[int],
    temperatures: Sequence[float],
    accuracies: Sequence[float],
) -> list[Unit]:
    """Every unit of work of a run, main table first. Sensitivity runs on the random protocol's first
    ``sens_trials`` seeds with the Fig. 3 methods at T = 3 unless varied; a setting equal to the main
    table's (20k, T = 3, clean teachers) shares its rows."""
    units = []
    # Protocols interleaved; random-classes seeds 0 (it carries the T sweep), then descending: a
    # parallel run that builds the random trials ascending (benchmarks/uhc_levers.py) shares the
    # teachers' cache instead of racing it.
    rand = [0, *range(trials - 1, 0, -1)][:trials]
    order = [(p, rand[i] if p == "random" else i) for i in range(trials) for p in protocols]
    for p, seed in order:
        units.append(
            Unit(
                p,
                seed,
                tasks=[(m, mode, 3.0) for m, mode in TABLE_METHODS],
                spv=True,
                qacc=["sd", "ce", "mf-p", "mf-lu", "mf-lf"],
            )
        )
    sens = [(m, mode) for m, mode in SENS_METHODS]
    for seed in range(sens_trials):
        if "temperature" in sensitivity:
            units.append(
                Unit("random", seed, tasks=[(m, mode, float(t)) for t in temperatures for m, mode in sens])
            )
        if "size" in sensitivity:
            for n in sizes:
                units.append(
                    Unit("random", seed, int(n), tasks=[(m, mode, 3.0) for m, mode in sens], qacc=["ce"])
                )
        if "accuracy" in sensitivity:
            for a in accuracies:
                units.append(
                    Unit(
                        "random",
                        seed,
                        teacher_accuracy=float(a),
                        tasks=[(m, mode, 3.0) for m, mode in sens],
                        qacc=["ce"],
                    )
                )
    # Cheap sensitivity trials first (the largest transfer sets last); then merge the units of one
    # trial (e.g. the T sweep and size 20k join the main table's) and drop repeated tasks.
    n_main = len(order)
    units = units[:n_main] + sorted(units[n_main:], key=lambda u: u.transfer_size)
    merged: dict[str, Unit] = {}
    for u in units:
        if u.tkey in merged:
            m = merged[u.tkey]
            m.tasks += [t for t in u.tasks if t not in m.tasks]
            m.spv |= u.spv
            m.qacc += [q for q in u.qacc if q not in m.qacc]
        else:
            merged[u.tkey] = Unit(
                u.protocol, u.seed, u.transfer_size, u.teacher_accuracy, list(u.tasks), u.spv, list(u.qacc)
            )
    return list(merged.values())


def pending(unit: Unit, done: set[str]) -> Unit | None:
    """The unit less what the JSONL already holds (None when nothing is left)."""
    tasks = [t for t in unit.tasks if row_key(unit.tkey, *t) not in done]
    spv = unit.spv and row_key(unit.tkey, "spv", "-", 0.0) not in done
    qacc = [m for m in unit.qacc if row_key(unit.tkey, f"q:{m}", "-", 3.0) not in done]
    if not tasks and not spv and not qacc:
        return None
    return Unit(unit.protocol, unit.seed, unit.transfer_size, unit.teacher_accuracy, tasks, spv, qacc)


def _run_unit(args: tuple[Unit, str, str]) -> int:
    """Worker: build the trial (teachers from the cache when there) and run its missing students."""
    unit, cache, results = args
    torch.set_num_threads(1)
    out = Path(results)
    t0 = time.perf_counter()
    trial = make_trial(
        unit.protocol,
        unit.seed,
        unit.transfer_size,
        cache_dir=Path(cache),
        teacher_accuracy=unit.teacher_accuracy,
    )
    base = {
        "trial": unit.tkey,
        "protocol": unit.protocol,
        "seed": unit.seed,
        "transfer_size": unit.transfer_size,
        "teacher_accuracy": unit.teacher_accuracy,
        "teacher_test_accuracy": float(np.mean([t["test_accuracy"] for t in trial.teachers])),
        "student": _student_tag(),
        "pid": os.getpid(),
    }
    print(f"[{unit.tkey}] trial ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    n = 0

    def record(method: str, mode: str, temperature: float, acc: float, seconds: float, kind: str) -> None:
        nonlocal n
        row = {
            **base,
            "key": row_key(unit.tkey, method, mode, temperature),
            "lr_scale": lr_scale(method, mode),
            "kind": kind,
            "method": method,
            "mode": mode,
            "temperature": temperature,
            "accuracy": acc,
            "seconds": round(seconds, 2),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _append(out, row)
        n += 1
        name = method if kind == "qacc" else method_name(method, mode)
        print(
            f"[{unit.tkey}] {kind} {name} T={temperature:g}: {acc:.4f} ({seconds:.1f}s)",
            file=sys.stderr,
            flush=True,
        )

    if unit.spv:
        t = time.perf_counter()
        record("spv", "-", 0.0, run_spv(trial), time.perf_counter() - t, "spv")
    for m in unit.qacc:
        t = time.perf_counter()
        record(f"q:{m}", "-", 3.0, soft_label_accuracy(trial, m), time.perf_counter() - t, "qacc")
    for method, mode, temp in unit.tasks:
        t = time.perf_counter()
        acc = run_student(trial, method, mode, temp)
        record(method, mode, temp, acc, time.perf_counter() - t, "student")
    return n


def run(units: Sequence[Unit], cache_dir: Path, workers: int) -> None:
    """Run the units' missing work in ``workers`` processes (spawned, one torch thread each),
    appending each result to ``cache_dir/results.jsonl`` as it comes."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    results = cache_dir / "results.jsonl"
    done = {r["key"] for r in read_rows(results)}
    todo = [u for u in (pending(u, done) for u in units) if u is not None]
    total = sum(len(u.tasks) + u.spv + len(u.qacc) for u in todo)
    print(f"{len(todo)} trials, {total} results to compute ({len(done)} already in {results})", flush=True)
    if not todo:
        return
    args = [(u, str(cache_dir), str(results)) for u in todo]
    bar = tqdm(total=total, desc="results", unit="res")
    if workers <= 1:
        for a in args:
            bar.update(_run_unit(a))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for n in pool.imap_unordered(_run_unit, args):
                bar.update(n)
    bar.close()


# ------------------------------------------------------------------------------------------ report
def paired_table(
    rows: Iterable[Mapping[str, Any]], names: Sequence[str] | None = None
) -> tuple[list[str], list[int], np.ndarray]:
    """(method names, seeds, accuracies [seeds, methods]) over the seeds that have every method.
    ``rows``: dicts with "name", "seed", "accuracy"."""
    by: dict[int, dict[str, float]] = {}
    for r in rows:
        by.setdefault(int(r["seed"]), {})[r["name"]] = float(r["accuracy"])
    if names is None:
        names = sorted({n for d in by.values() for n in d})
    seeds = sorted(s for s, d in by.items() if all(n in d for n in names))
    acc = np.array([[by[s][n] for n in names] for s in seeds], dtype=np.float64).reshape(
        len(seeds), len(names)
    )
    return list(names), seeds, acc


def significance(
    acc: np.ndarray, names: Sequence[str], alpha: float = 0.01, exclude: Sequence[str] = ("SPV",)
):
    """Table 2's marks: the best method by mean accuracy (``exclude``d rows, e.g. the SPV benchmark,
    are not candidates) and, for every method, the two-sided Wilcoxon signed-rank p-value of its
    paired accuracies against the best's (1.0 when all differences are zero). Returns (best index,
    p-values [methods], tied [methods]: not significantly different from the best at ``alpha``)."""
    from scipy.stats import wilcoxon

    means = acc.mean(axis=0)
    cand = [i for i, n in enumerate(names) if n not in exclude]
    best = max(cand, key=lambda i: means[i])
    p = np.ones(len(names))
    for i in range(len(names)):
        d = acc[:, i] - acc[:, best]
        if i != best and np.any(d != 0):
            p[i] = float(wilcoxon(acc[:, i], acc[:, best]).pvalue)
    return best, p, p >= alpha


def _fmt(v: float) -> str:
    return f"{v:.4f}".lstrip("0") if 0 <= v < 1 else f"{v:.4f}"


def main_table_md(rows: Sequence[Mapping[str, Any]], protocols: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Markdown of Table 2 (methods x protocols) from the JSONL rows; plus a summary dict."""
    names = ["SPV"] + [method_name(m, mode) for m, mode in TABLE_METHODS]
    cols: dict[str, dict[str, str]] = {}
    summary: dict[str, Any] = {}
    for p in protocols:
        sel = [
            {"name": "SPV" if r["kind"] == "spv" else method_name(r["method"], r["mode"]), **r}
            for r in rows
            if r["protocol"] == p
            and r["transfer_size"] == 20000
            and r["teacher_accuracy"] is None
            and r["kind"] in ("student", "spv")
            and (r["kind"] == "spv" or r["temperature"] == 3.0)
        ]
        present = [n for n in names if any(r["name"] == n for r in sel)]
        if not present:
            continue
        _, seeds, acc = paired_table(sel, present)
        if not seeds:
            continue
        best, pv, tied = significance(acc, present)
        means = acc.mean(0)
        col = {}
        for i, n in enumerate(present):
            s = f"{_fmt(means[i])} ± {acc[:, i].std(ddof=1) if len(seeds) > 1 else 0:.3f}"
            if i == best:
                s = f"<ins>**{s}**</ins>"
            elif tied[i] and n != "SPV":
                s = f"**{s}** (p={pv[i]:.2g})"
            elif n != "SPV":
                s = f"{s} (p={pv[i]:.2g})"
            col[n] = s
        cols[p] = col
        spv = present.index("SPV") if "SPV" in present else None
        summary[p] = {
            "seeds": seeds,
            "best": present[best],
            "best_mean": float(means[best]),
            "means": dict(zip(present, map(float, means))),
            "tied": [n for i, n in enumerate(present) if tied[i] and n != "SPV"],
            "spv_mean": float(means[spv]) if spv is not None else None,
            "gap_to_spv": float(means[spv] - means[best]) if spv is not None else None,
            "gap_ci": _paired_range(acc[:, spv] - acc[:, best]) if spv is not None else None,
        }
    lines = ["| method | " + " | ".join(f"{p} ({len(summary[p]['seeds'])} trials)" for p in cols) + " |"]
    lines.append("|---|" + "---|" * len(cols))
    for n in names:
        if any(n in c for c in cols.values()):
            lines.append(f"| {n} | " + " | ".join(cols[p].get(n, "") for p in cols) + " |")
    return "\n".join(lines), summary


def _paired_range(d: np.ndarray) -> list[float]:
    return [float(d.min()), float(d.max())] if len(d) else []


def qacc_table_md(rows: Sequence[Mapping[str, Any]], protocols: Sequence[str]) -> str:
    """The soft labels' own top-1 accuracy on the in-union transfer images, next to the E student's."""
    lines = ["| estimator | " + " | ".join(f"{p}: q top-1 / E student" for p in protocols) + " |"]
    lines.append("|---|" + "---|" * len(protocols))
    for m in ("sd", "ce", "mf-p", "mf-lu", "mf-lf"):
        cells = []
        for p in protocols:
            base = [r for r in rows if r["protocol"] == p and r["transfer_size"] == 20000]
            base = [r for r in base if r["teacher_accuracy"] is None]
            q = [r["accuracy"] for r in base if r["kind"] == "qacc" and r["method"] == f"q:{m}"]
            s = [
                r["accuracy"]
                for r in base
                if r["kind"] == "student"
                and r["method"] == m
                and r["mode"] == "e"
                and r["temperature"] == 3.0
            ]
            cells.append(f"{np.mean(q):.4f} / {np.mean(s):.4f}" if q and s else "")
        lines.append(f"| {m.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sensitivity_series(rows: Sequence[Mapping[str, Any]], axis: str) -> dict[str, dict[float, list[float]]]:
    """{method name: {x: [accuracies over seeds]}} for axis "size", "temperature" or "accuracy"
    (random protocol; the other settings at the main table's: 20k, T = 3, clean teachers)."""
    out: dict[str, dict[float, list[float]]] = {}
    sens = {method_name(m, mode) for m, mode in SENS_METHODS}
    for r in rows:
        if r["kind"] != "student" or r["protocol"] != "random":
            continue
        name = method_name(r["method"], r["mode"])
        if name not in sens:
            continue
        size, temp, acc = r["transfer_size"], r["temperature"], r["teacher_accuracy"]
        if axis == "size" and temp == 3.0 and acc is None:
            x = float(size)
        elif axis == "temperature" and size == 20000 and acc is None:
            x = float(temp)
        elif axis == "accuracy" and size == 20000 and temp == 3.0:
            x = float(r["teacher_test_accuracy"]) if acc is not None else float("nan")
            x = round(float(acc), 2) if acc is not None else 1.0  # 1.0: clean teachers
        else:
            continue
        out.setdefault(name, {}).setdefault(x, []).append(float(r["accuracy"]))
    return out


def sensitivity_md(rows: Sequence[Mapping[str, Any]], axis: str, seeds: Sequence[int] | None = None) -> str:
    series = sensitivity_series([r for r in rows if seeds is None or r["seed"] in seeds], axis)
    if not series:
        return "(no results)"
    xs = sorted({x for s in series.values() for x in s})
    head = {"size": "transfer images", "temperature": "T", "accuracy": "teacher accuracy target"}[axis]

    def label(x: float) -> str:
        if axis == "accuracy" and x == 1.0:
            return "clean"
        return f"{x:g}"

    lines = [f"| method \\ {head} | " + " | ".join(label(x) for x in xs) + " |", "|---|" + "---|" * len(xs)]
    for name in [method_name(m, mode) for m, mode in SENS_METHODS]:
        if name in series:
            cells = [
                f"{np.mean(series[name][x]):.4f} (n={len(series[name][x])})" if x in series[name] else ""
                for x in xs
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def teacher_accuracy_md(rows: Sequence[Mapping[str, Any]]) -> str:
    """Measured mean test accuracy of the teachers (on their own classes) per accuracy target."""
    by: dict[str, list[float]] = {}
    seen = set()
    for r in rows:
        if r["protocol"] == "random" and r["transfer_size"] == 20000 and r["trial"] not in seen:
            seen.add(r["trial"])
            k = "clean" if r["teacher_accuracy"] is None else f"{r['teacher_accuracy']:g}"
            by.setdefault(k, []).append(r["teacher_test_accuracy"])
    return ", ".join(f"{k}: {np.mean(v):.3f} (n={len(v)})" for k, v in sorted(by.items()))


def plot_sensitivity(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Fig. 3's three panels (transfer-set size, temperature, teacher accuracy) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = [("size", "transfer-set size", True), ("temperature", "temperature T", False)]
    axes_spec.append(("accuracy", "teacher accuracy target (1.0 = clean)", False))
    if not any(sensitivity_series(rows, a) for a, _, _ in axes_spec):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (axis, label, logx) in zip(axes, axes_spec):
        for name, pts in sensitivity_series(rows, axis).items():
            xs = sorted(pts)
            m = [np.mean(pts[x]) for x in xs]
            e = [np.std(pts[x]) for x in xs]
            ax.errorbar(xs, m, yerr=e, marker="o", capsize=3, label=name)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("student test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Paper 001 Fig. 3 analogue (Fashion-MNIST, random classes; mean ± std over trials)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_main(summary: Mapping[str, Any], path: Path) -> Path | None:
    """Table 2 as a bar chart per protocol (mean accuracy; the best and its ties marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summary:
        return None
    fig, axes = plt.subplots(1, len(summary), figsize=(7 * len(summary), 4.5), squeeze=False)
    for ax, (p, s) in zip(axes[0], summary.items()):
        names = list(s["means"])
        vals = [s["means"][n] for n in names]
        colors = [
            "tab:gray"
            if n == "SPV"
            else "tab:red"
            if n == s["best"]
            else "tab:orange"
            if n in s["tied"]
            else "tab:blue"
            for n in names
        ]
        ax.bar(range(len(names)), vals, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=70, fontsize=8)
        lo = min(vals)
        ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(vals) + 0.02))
        ax.set_title(f"{p} ({len(s['seeds'])} trials): red best, orange n.s. (Wilcoxon, 0.01)")
        ax.set_ylabel("test accuracy")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    rows: Sequence[Mapping[str, Any]], out_md: Path, protocols: Sequence[str], meta: Mapping[str, Any]
) -> str:
    """benchmarks/results/reproduce-uhc.md (+ the two PNGs next to it) from the JSONL rows."""
    rows = [
        r
        for r in rows
        if r.get("student") == _student_tag() and r.get("lr_scale", 1.0) == lr_scale(r["method"], r["mode"])
    ]
    table, summary = main_table_md(rows, protocols)
    main_png = plot_main(summary, out_md.with_name("reproduce-uhc-table2.png"))
    # The sensitivity trials: those with an SD-BP student (a Fig. 3 method outside Table 2); every
    # point of Fig. 3 is averaged over these seeds only, so the columns compare the same trials.
    sens_seeds = sorted(
        {r["seed"] for r in rows if r["protocol"] == "random" and r["method"] == "sd" and r["mode"] == "bp"}
    )
    sens_rows = [r for r in rows if r["seed"] in sens_seeds]
    sens_png = plot_sensitivity(sens_rows, out_md.with_name("reproduce-uhc-fig3.png"))
    parts = [
        "# Paper 001, Table 2 and Fig. 3, reproduced through the product (Fashion-MNIST)",
        "",
        f"Made by `{meta.get('command', 'python benchmarks/reproduce_uhc.py')}` "
        f"on {meta.get('machine', '?')}, "
        f"finished {meta.get('finished', '?')} (wall time {meta.get('wall', '?')}). "
        "Protocol and reading: [docs/reproduce.md](../../docs/reproduce.md). Regenerate the tables and plots "
        "without training: `python benchmarks/reproduce_uhc.py --report-only`.",
        "",
        f"Student: `{STUDENT['arch']}` {json.dumps(STUDENT['arch_kwargs'])}, {STUDENT['epochs']} epochs over "
        f"the transfer set, SGD lr {STUDENT['lr']} (then lr/10 for the second half), "
        f"batch {STUDENT['batch_size']}, "
        "T = 3; the same initial weights and batch order for every method of a trial. "
        "Test set: the Fashion-MNIST test images of the 8 union classes (8000).",
        "",
        "## Table 2 analogue: mean test accuracy ± std over trials",
        "",
        "<ins>**underlined bold**</ins>: best method (SPV is the benchmark, not a candidate); **bold**: not "
        "significantly different from the best (two-sided Wilcoxon signed-rank test on the paired trials, "
        "alpha = 0.01; p-values in brackets). MF-LU is the paper's MF-LV.",
        "",
        table,
        "",
    ]
    for p, s in summary.items():
        parts.append(
            f"- **{p}**: seeds {s['seeds']}; best {s['best']} {s['best_mean']:.4f}, SPV {s['spv_mean']:.4f}: "
            f"gap SPV - best = {100 * s['gap_to_spv']:.1f} points (per trial {100 * s['gap_ci'][0]:.1f} to "
            f"{100 * s['gap_ci'][1]:.1f}); SD {s['means'].get('SD', float('nan')):.4f}; "
            f"not significantly different from the best: {', '.join(s['tied']) or 'none'}."
        )
    parts += [
        "",
        f"![Table 2 analogue]({main_png.name})" if main_png else "",
        "",
        "## The soft labels' own accuracy",
        "",
        "Top-1 accuracy of the estimated q on the transfer images that lie in L_U (E and BS share q), "
        "next to the E student's test accuracy (means over the same trials):",
        "",
        qacc_table_md(rows, protocols),
        "",
        f"## Fig. 3 analogue: sensitivity (random classes, seeds {sens_seeds})",
        "",
        "Fashion-MNIST's training split caps the transfer set: 60k images less the teachers' (~2k) and "
        "their held-out sets, so the largest size is 50k (the paper goes to 100k).",
        "",
        "### (a) transfer-set size",
        "",
        sensitivity_md(sens_rows, "size"),
        "",
        "### (b) temperature",
        "",
        sensitivity_md(sens_rows, "temperature"),
        "",
        "### (c) teacher accuracy (last-layer noise until the adjustment-set accuracy drops to the target)",
        "",
        sensitivity_md(sens_rows, "accuracy"),
        "",
        f"Measured mean teacher test accuracy (own classes) per target: {teacher_accuracy_md(sens_rows)}.",
        "",
        f"![Fig. 3 analogue]({sens_png.name})" if sens_png else "",
        "",
    ]
    text = "\n".join(parts)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_md.with_name(f".{out_md.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out_md)
    (out_md.with_name("reproduce-uhc.json")).write_text(json.dumps(summary, indent=1))
    return text


# --------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=10, help="trials per protocol for Table 2 (seeds 0..n-1)")
    ap.add_argument("--protocols", nargs="+", default=["random", "overlap"], choices=list(PROTOCOLS))
    ap.add_argument(
        "--sensitivity",
        nargs="*",
        default=["size", "temperature", "accuracy"],
        choices=["size", "temperature", "accuracy"],
        help="Fig. 3 axes to run (none: pass the flag alone)",
    )
    ap.add_argument("--sens-trials", type=int, default=10, help="trials (seeds 0..n-1) per sensitivity point")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000, 50000])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 3.0, 6.0, 10.0])
    ap.add_argument("--accuracies", type=float, nargs="+", default=[0.5, 0.65, 0.8])
    ap.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=RESULTS_MD)
    ap.add_argument(
        "--report-only", action="store_true", help="only rebuild the tables and plots from the JSONL"
    )
    args = ap.parse_args(argv)
    t0 = time.time()
    if not args.report_only:
        units = plan(
            args.protocols,
            args.trials,
            args.sens_trials,
            args.sensitivity,
            args.sizes,
            args.temperatures,
            args.accuracies,
        )
        run(units, args.cache_dir, args.workers)
    rows = read_rows(args.cache_dir / "results.jsonl")
    meta_path = args.cache_dir / "run-meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if not args.report_only:
        import platform

        meta = {
            "command": "python benchmarks/reproduce_uhc.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.node()} ({os.cpu_count()} CPU cores shared with other work, no GPU; "
            f"torch {torch.__version__}, {args.workers} worker processes x 1 thread)",
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "wall": f"{(time.time() - t0) / 60:.1f} min for this invocation (cached teachers/results reused)",
        }
        meta_path.write_text(json.dumps(meta))
    text = write_report(rows, args.out, args.protocols, meta)
    print(text)


if __name__ == "__main__":
    main()
