"""Reproduce paper 002's cross-task distillation results (Lu, Ye, Zhan, Sec. 6.1) on Fashion-MNIST.

The sliding-window protocol of Sec. 6.1.1, every step through the product's own code paths:

- per seed, the 10 classes in a random order; the teacher's classes are the first window of 5, the
  students' windows start 0..5 classes later, so they share g = 100, 80, 60, 40, 20, 0 % of the
  teacher's classes;
- the teacher: a small CNN (`zoo.artifacts.build_net` of a `ModelSpec`) trained once per seed by
  `zoo.train.fit_classifier` on TEACHER_PER_CLASS images of each of its classes;
- each student: PER_CLASS labelled training images per class (the paper's regime is a student that
  needs help: few labels), none of them seen by the teacher; a smaller CNN trained by `zoo.train.fit`
  with the loss of the job (`zoo.crosstask.crosstask_loss_fn`, the wrapper the Ray Train student uses),
  the same initial weights and batch order for every method of a (seed, g); tested on all Fashion-MNIST
  test images of its 5 classes;
- the cost matrix as the job makes it: the teacher split by `zoo.architectures.split_head`, its features
  of the student's labelled images, `zoo.assess.class_centres` (Eq. 6) and `cost_matrix` (Eq. 7-8).

Methods: "none" (cross-entropy only), "rkd" (RKD, Park et al.: the label-free baseline of Sec. 6.1.3),
"ours-l2" / "ours-scale" / "ours-none" (Eq. 11 with the cost matrix's three normalisations),
"ours-random" (Eq. 11 with the cost of a randomly initialised network of the teacher's architecture,
Sec. 6.1.6 II) and, at g = 100 % only, "kd" (standard KD, Sec. 6.1.4). lambda, tau and eps are the
paper's CIFAR-100 values (10, 3, 0.1; Sec. 6.1.2).

Every result is appended to ``benchmarks/results/reproduce-crosstask.jsonl`` as it comes, so an
interrupted run continues where it stopped; teachers are cached under ``benchmarks/.cache/crosstask/``.
``--report-only`` rebuilds the markdown, JSON and PNG from the JSONL without training.

    nice -n 15 python benchmarks/reproduce_crosstask.py                 # the committed run
    python benchmarks/reproduce_crosstask.py --report-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from zoo.architectures import split_head  # noqa: E402
from zoo.artifacts import ModelSpec, build_net, load_model, preprocess, save_model  # noqa: E402
from zoo.assess import class_centres, cost_matrix  # noqa: E402
from zoo.crosstask import crosstask_loss_fn, kd_loss_fn, rkd_loss_fn  # noqa: E402
from zoo.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from zoo.pipeline.datasets import input_spec_for  # noqa: E402
from zoo.train import LossFn, Schedule, classification_loss, evaluate, fit, fit_classifier  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
JSONL = RESULTS / "reproduce-crosstask.jsonl"
CACHE = ROOT / "benchmarks" / ".cache" / "crosstask"
WINDOW = 5
OVERLAPS = (100, 80, 60, 40, 20, 0)  # g, % of the student's classes the teacher knows
METHODS = ("none", "rkd", "ours-l2", "ours-scale", "ours-none", "ours-random", "kd")
NORMS = ("l2", "scale", "none")  # zoo.assess.NORMALISATIONS
SEEDS = (0, 1, 2, 3, 4, 5, 6, 7)


@dataclass(frozen=True)
class Setting:
    """What defines a result row besides (seed, g, method): a change starts a new set of rows."""

    per_class: int = 100  # the student's labelled images per class
    teacher_per_class: int = 1000
    teacher_arch: tuple[str, dict] = ("cnn", {"width": 16, "depth": 3})
    teacher_epochs: int = 8
    student_arch: tuple[str, dict] = ("cnn", {"width": 8, "depth": 3})
    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    lam: float = 10.0
    tau: float = 3.0
    eps: float = 0.1
    n_iter: int = 100

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ------------------------------------------------------------------------------------------ data
@dataclass
class Trial:
    """One seed: the class order, the teacher's images, the students' labelled pool and the test set."""

    seed: int
    order: list[int]  # Fashion-MNIST labels in the window order
    teacher_idx: np.ndarray  # training-split indices of the teacher's images
    pool: dict[int, np.ndarray]  # label -> PER_CLASS training-split indices for students


def make_trial(seed: int, labels: np.ndarray, s: Setting) -> Trial:
    rng = np.random.default_rng(seed)
    order = [int(c) for c in rng.permutation(10)]
    teacher_idx, pool = [], {}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        pool[c] = idx[: s.per_class]  # the student's images: never the teacher's
        if c in order[:WINDOW]:
            teacher_idx.append(idx[s.per_class : s.per_class + s.teacher_per_class])
    return Trial(seed, order, np.sort(np.concatenate(teacher_idx)), pool)


def student_classes(trial: Trial, g: int) -> list[int]:
    start = WINDOW - g * WINDOW // 100
    return trial.order[start : start + WINDOW]


# --------------------------------------------------------------------------------------- teacher
def teacher(trial: Trial, s: Setting, x_train: np.ndarray, y_train: np.ndarray, spec_in) -> tuple:
    """The seed's teacher (model, spec), trained once (cached under CACHE) on its window's classes."""
    classes = trial.order[:WINDOW]
    arch, kw = s.teacher_arch
    spec = ModelSpec(arch, [FASHION_MNIST_CLASSES[c] for c in classes], spec_in, dict(kw))
    d = CACHE / f"teacher-seed{trial.seed}-{hashlib.sha256(s.key().encode()).hexdigest()[:10]}"
    if (d / "spec.json").is_file():
        return load_model(d)[0].eval(), spec
    torch.manual_seed(trial.seed)
    model = build_net(spec)
    y = torch.as_tensor(np.array([classes.index(int(v)) for v in y_train[trial.teacher_idx]]))
    fit_classifier(
        model,
        preprocess(x_train[trial.teacher_idx], spec_in),
        y,
        epochs=s.teacher_epochs,
        lr=3e-3,
        batch_size=64,
        seed=trial.seed,
        optimizer="adam",
        progress=False,
    )
    save_model(model, spec, d)
    return model.eval(), spec


@torch.no_grad()
def outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, d], logits [N, m]) of a network split into embedding and head."""
    embed, head = split_head(model.eval())
    f = torch.cat([embed(x[i : i + 1024]) for i in range(0, len(x), 1024)])
    return f, head(f)


def costs(model, spec: ModelSpec, x, y, n: int, seed: int) -> dict[str, torch.Tensor]:
    """The cost matrices of the variants: the teacher's (three normalisations) and that of a randomly
    initialised network of the teacher's architecture (its head and its features' class centres)."""
    f, _ = outputs(model, x)
    out = {f"ours-{k}": cost_matrix(split_head(model)[1], class_centres(f, y, n), k) for k in NORMS}
    torch.manual_seed(10_000 + seed)
    rand = build_net(spec)
    f_r, _ = outputs(rand, x)
    out["ours-random"] = cost_matrix(split_head(rand)[1], class_centres(f_r, y, n), "l2")
    return out


# -------------------------------------------------------------------------------------- students
def loss_for(method, student, t_feat, t_logits, y, cost, s: Setting) -> LossFn:
    """The training loss of ``method`` over the student's labelled set: the product's wrappers."""
    if method == "none":
        return classification_loss(y)
    if method == "rkd":
        return rkd_loss_fn(student, t_feat, y)
    if method == "kd":
        return kd_loss_fn(t_logits, y, lam=1.0, tau=s.tau)
    return crosstask_loss_fn(t_logits, y, cost[method], s.lam, s.tau, s.eps, s.n_iter)


def run_student(method, spec, x, y, xt, yt, t_feat, t_logits, cost, s: Setting, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)  # the same initial weights for every method of a (seed, g)
    student = build_net(spec)
    loss = loss_for(method, student, t_feat, t_logits, y, cost, s)
    sched = Schedule(
        epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, weight_decay=s.weight_decay, seed=seed
    )
    history = fit(student, x, loss, sched)
    return {"accuracy": evaluate(student, xt, yt), "train_loss": history[-1]["train_loss"]}


def trial_rows(trial: Trial, g: int, s: Setting, data, done: set, emit: Callable[[dict], None]) -> None:
    """Every missing method of (seed, g): the student's data, the teacher's outputs and costs, then the
    students, each row emitted as it is done."""
    x_train, y_train, x_test, y_test, spec_in = data
    classes = student_classes(trial, g)
    methods = [m for m in METHODS if (m != "kd" or g == 100) and (trial.seed, g, m) not in done]
    if not methods:
        return
    model, t_spec = teacher(trial, s, x_train, y_train, spec_in)
    idx = np.concatenate([trial.pool[c] for c in classes])
    x = preprocess(x_train[idx], spec_in)
    y = torch.as_tensor(np.array([classes.index(int(v)) for v in y_train[idx]]))
    sel = np.isin(y_test, classes)
    xt = preprocess(x_test[sel], spec_in)
    yt = torch.as_tensor(np.array([classes.index(int(v)) for v in y_test[sel]]))
    t_feat, t_logits = outputs(model, x)
    if g == 100:  # KD needs the teacher's outputs in the student's class order
        t_order = trial.order[:WINDOW]
        t_logits_kd = t_logits[:, [t_order.index(c) for c in classes]]
    cost = costs(model, t_spec, x, y, WINDOW, trial.seed)
    arch, kw = s.student_arch
    spec = ModelSpec(arch, [FASHION_MNIST_CLASSES[c] for c in classes], spec_in, dict(kw))
    facts = cost_facts(trial, classes, cost["ours-l2"])
    sel_t = np.isin(y_test, trial.order[:WINDOW])
    y_t = torch.as_tensor(np.array([trial.order.index(int(v)) for v in y_test[sel_t]]))
    facts["teacher_accuracy"] = evaluate(model, preprocess(x_test[sel_t], spec_in), y_t)
    for m in methods:
        logits = t_logits_kd if m == "kd" else t_logits
        r = run_student(m, spec, x, y, xt, yt, t_feat, logits, cost, s, seed=1000 * trial.seed + g)
        emit({"seed": trial.seed, "g": g, "method": m, **r, **facts, "setting": s.key()})


def cost_facts(trial: Trial, classes: list[int], cost: torch.Tensor) -> dict[str, Any]:
    """How well the teacher's cost (l2) recognises the shared classes: for each student class the
    teacher knows, is that teacher class its cheapest?"""
    t_order = trial.order[:WINDOW]
    shared = [(t_order.index(c), j) for j, c in enumerate(classes) if c in t_order]
    hits = [int(cost[:, j].argmin()) == i for i, j in shared]
    return {"shared": len(shared), "cost_hits": int(sum(hits))}


# ------------------------------------------------------------------------------------------ run
def load_rows(path: Path | None = None) -> list[dict[str, Any]]:
    """The JSONL's rows; a line torn by a crash mid-write is skipped (its student reruns)."""
    path = path or JSONL
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def run(seeds: Sequence[int], s: Setting) -> None:
    torch.set_num_threads(1)
    rows = [r for r in load_rows() if r["setting"] == s.key()]
    done = {(r["seed"], r["g"], r["method"]) for r in rows}
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    spec_in = input_spec_for(x_train)
    data = (x_train, y_train, x_test, y_test, spec_in)
    JSONL.parent.mkdir(parents=True, exist_ok=True)

    def emit(row: dict[str, Any]) -> None:
        with JSONL.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"seed {row['seed']} g {row['g']:>3} {row['method']:<12} {row['accuracy']:.4f}", flush=True)

    for seed in seeds:
        trial = make_trial(seed, y_train, s)
        for g in OVERLAPS:
            trial_rows(trial, g, s, data, done, emit)


# --------------------------------------------------------------------------------------- report
def report(s: Setting, command: str) -> str:
    """reproduce-crosstask.md / .json / .png from the JSONL rows of setting ``s``."""
    rows = [r for r in load_rows() if r["setting"] == s.key()]
    acc: dict[tuple[int, str], dict[int, float]] = {}
    for r in rows:
        acc.setdefault((r["g"], r["method"]), {})[r["seed"]] = r["accuracy"]
    table = []
    for g in OVERLAPS:
        base = acc.get((g, "none"), {})
        for m in METHODS:
            got = acc.get((g, m), {})
            if not got:
                continue
            seeds = sorted(set(got) & set(base))
            a = np.array([got[k] for k in sorted(got)])
            std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
            entry = {
                "g": g,
                "method": m,
                "n": len(a),
                "mean": float(a.mean()),
                "std": std,
                "seeds": sorted(got),
            }
            if m != "none" and len(seeds) >= 2:
                entry.update(_paired([got[k] for k in seeds], [base[k] for k in seeds]))
            table.append(entry)
    facts = _cost_summary(rows)
    (RESULTS / "reproduce-crosstask.json").write_text(
        json.dumps(
            {"setting": json.loads(s.key()), "command": command, "table": table, "cost": facts}, indent=1
        )
        + "\n"
    )
    _plot(table)
    md = _markdown(table, facts, s, command)
    (RESULTS / "reproduce-crosstask.md").write_text(md)
    return md


def _paired(ours: list[float], base: list[float]) -> dict[str, Any]:
    """Mean and std of the paired differences, two-sided paired t-test and Wilcoxon signed-rank p."""
    from scipy import stats

    d = np.array(ours) - np.array(base)
    return {
        "gain": float(d.mean()),
        "gain_std": float(d.std(ddof=1)),
        "paired": len(d),
        "t_p": float(stats.ttest_rel(ours, base).pvalue) if np.any(d != d[0]) else float("nan"),
        "w_p": float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0,
        "wins": int((d > 0).sum()),
    }


def _cost_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per g: how many shared student classes the teacher's cost matched to their own teacher class."""
    seen, out = set(), {}
    for r in rows:
        if (r["seed"], r["g"]) in seen:
            continue
        seen.add((r["seed"], r["g"]))
        o = out.setdefault(str(r["g"]), {"shared": 0, "cost_hits": 0, "teachers": []})
        o["shared"] += r["shared"]
        o["cost_hits"] += r["cost_hits"]
        o["teachers"].append(r["teacher_accuracy"])
    for o in out.values():
        o["teacher"] = float(np.mean(o.pop("teachers")))
    return out


def _markdown(table, facts, s: Setting, command: str) -> str:
    head = [
        "g",
        "method",
        "seeds",
        "accuracy (mean +- std)",
        "gain over none",
        "paired t p",
        "Wilcoxon p",
        "wins",
    ]
    lines = [
        "# Paper 002, cross-task distillation: sliding windows on Fashion-MNIST",
        "",
        f"Made by `{command}` (`benchmarks/reproduce_crosstask.py`; protocol and reading in "
        "[docs/crosstask.md](../../docs/crosstask.md#does-it-reproduce-the-paper)).",
        "",
        f"Setting: {json.dumps(asdict(s))}",
        "",
        "Gain: mean over seeds of (method - none), same seed, same initial weights and batches; "
        "paired t-test (two-sided, scipy `ttest_rel`) and Wilcoxon signed-rank on the same pairs; "
        "wins: seeds where the method beats none.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for e in table:
        gain = f"{100 * e['gain']:+.2f} +- {100 * e['gain_std']:.2f}" if "gain" in e else ""
        tp = f"{e['t_p']:.3f}" if "t_p" in e else ""
        wp = f"{e['w_p']:.3f}" if "w_p" in e else ""
        wins = f"{e['wins']}/{e['paired']}" if "wins" in e else ""
        lines.append(
            f"| {e['g']} | {e['method']} | {e['n']} | {100 * e['mean']:.2f} +- {100 * e['std']:.2f} | "
            f"{gain} | {tp} | {wp} | {wins} |"
        )
    lines += [
        "",
        "The teacher's cost matrix (l2) on the shared classes: a shared student class is matched when",
        "its own teacher class is its cheapest. Teacher: test accuracy on its 5 classes, mean over seeds.",
        "",
        "| g | matched / shared | teacher accuracy |",
        "|---|---|---|",
    ]
    lines += [
        f"| {g} | {f['cost_hits']} / {f['shared']} | {100 * f['teacher']:.2f} |" for g, f in facts.items()
    ]
    lines += ["", "![accuracy against g](reproduce-crosstask.png)", ""]
    return "\n".join(lines)


def _plot(table: list[dict[str, Any]]) -> None:
    """Left: accuracy against g per method; right: the paired gain over no teacher (ours-none, far below,
    is left out of the right panel so that the others stay readable: see the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for m in METHODS:
        pts = [e for e in table if e["method"] == m]
        style = dict(fmt="o" if len(pts) == 1 else "-o", capsize=3, label=m, color=colours[m])
        if pts:
            axes[0].errorbar([e["g"] for e in pts], [100 * e["mean"] for e in pts],
                             [100 * e["std"] for e in pts], **style)  # fmt: skip
        gp = [e for e in pts if "gain" in e]
        if gp and m != "ours-none":
            axes[1].errorbar([e["g"] for e in gp], [100 * e["gain"] for e in gp],
                             [100 * e["gain_std"] for e in gp], **style)  # fmt: skip
    axes[1].axhline(0, color="grey", lw=0.8)
    labels = ("test accuracy (%)", "gain over no teacher (points; ours-none: see the table)")
    for ax, what in zip(axes, labels):
        ax.set_xlabel("class overlap g with the teacher (%)")
        ax.set_ylabel(what)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Cross-task distillation on Fashion-MNIST (mean +- std over seeds; gains paired by seed)")
    fig.tight_layout()
    fig.savefig(RESULTS / "reproduce-crosstask.png", dpi=110)
    plt.close(fig)


def cost_spread(seeds: Sequence[int], s: Setting) -> str:
    """A diagnostic of the cost variants (`--cost-spread`): per (seed, g), the mean over student classes of
    the range of their column of M (how much the cost tells the teacher's classes apart) and the range of
    the column means (a per-column offset, which shifts the loss's gradient, docs/assess.md)."""
    torch.set_num_threads(1)
    x_train, y_train = load_fashion_mnist("train")
    spec_in = input_spec_for(x_train)
    variants = [f"ours-{n}" for n in NORMS] + ["ours-random"]
    lines = ["| seed | g | " + " | ".join(f"{k}: range / offset" for k in variants) + " |", "|---" * 6 + "|"]
    for seed in seeds:
        trial = make_trial(seed, y_train, s)
        model, spec = teacher(trial, s, x_train, y_train, spec_in)
        for g in OVERLAPS:
            classes = student_classes(trial, g)
            idx = np.concatenate([trial.pool[c] for c in classes])
            y = torch.as_tensor(np.array([classes.index(int(v)) for v in y_train[idx]]))
            cost = costs(model, spec, preprocess(x_train[idx], spec_in), y, WINDOW, seed)
            spread = [float((m.max(0).values - m.min(0).values).mean()) for m in cost.values()]
            offset = [float(np.ptp(m.mean(0).numpy())) for m in cost.values()]
            cells = [f"{a:.3f} / {b:.3f}" for a, b in zip(spread, offset)]
            lines.append(f"| {seed} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    p.add_argument("--per-class", type=int, default=Setting.per_class, help="student images per class")
    p.add_argument("--epochs", type=int, default=Setting.epochs, help="student epochs")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the JSONL")
    p.add_argument("--cost-spread", action="store_true", help="print the cost variants' diagnostic and stop")
    args = p.parse_args(argv)
    s = Setting(per_class=args.per_class, epochs=args.epochs)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    if args.cost_spread:
        print(cost_spread(seeds, s))
        return
    if not args.report_only:
        run(seeds, s)
    command = "python benchmarks/reproduce_crosstask.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"
    )
    print(report(s, command))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
