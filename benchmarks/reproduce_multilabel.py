"""Reproduce paper 004's multi-label distillation results (Tables B.1-B.2: 3D against the student alone,
MLD and PS) on Fashion-MNIST mosaics, and measure the multi-label unification against a true-label
topline, through the product's code paths.

- Data: `zoo.multilabel.fashion_mosaics` (56 x 56, 1-4 of the 10 classes per image). The training pool
  is the mosaics' "train" split; the test set its "test" split (Fashion-MNIST's test images).
- Part 1, distillation (B.1-B.2 analogue): a bigger teacher (cnn width 32, depth 4) trained with BCE on
  the first TRAIN images; a smaller student (cnn width 8, depth 3) trained on the same images with BCE
  plus each method's term: the student alone, MLD, PS, 3D with both pairings of L_NDD (two images of a
  batch; an image and its horizontal flip), and 3D without L_NDD (beta = 0: its positive-divide part).
  The losses are `zoo.multilabel.loss_fn.distill_loss_fn` with the job's defaults (`DistillRecipe`),
  trained by `zoo.multilabel.fit.fit_multilabel` on the training core (`zoo.train.fit`): what the job's
  Ray Train workers run (`zoo.pipeline.multilabel.MultilabelDistillData`), in-process for the many runs.
- Part 2, unification: three teachers (cnn width 16, depth 4) over overlapping label subsets
  (`zoo.pipeline.make_multilabel_zoo.subset_labels`: 5 labels each, 5 labels known by two teachers and 5
  by one), each trained on its own share of further training images with its own labels only; the
  student (as part 1's) trained on the TRAIN transfer images with `union_loss_fn` (the mean of the
  knowing teachers' probabilities, masked BCE), against the topline: the same student on the true labels
  of the same images (part 1's student alone, same seeds).
- Seeds: every student is trained with seeds SEEDS (initial weights and batch order); the teachers once.
  Metrics (`multilabel_metrics`): mAP, CF1, OF1 at threshold 0.5 on the test set. Paired tests over seeds.

Teachers, their logits and every student's metrics are cached under ``benchmarks/.cache/multilabel/``
(results.jsonl: one row per student), so an interrupted run continues where it stopped, and the report
is rebuilt from it without training (``--report-only``).

    nice -n 15 python benchmarks/reproduce_multilabel.py            # the committed run
    python benchmarks/reproduce_multilabel.py --report-only          # the report from the cache
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from zoo.artifacts import InputSpec, ModelSpec, load_model, save_model  # noqa: E402
from zoo.multilabel import fashion_mosaics, multilabel_metrics, union_targets  # noqa: E402
from zoo.multilabel.fit import fit_multilabel, fit_union, predict_multilabel  # noqa: E402
from zoo.multilabel.loss_fn import DistillRecipe  # noqa: E402
from zoo.pipeline.make_multilabel_zoo import subset_labels  # noqa: E402
from zoo.train import Schedule  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "multilabel"
RESULTS = ROOT / "benchmarks" / "results" / "reproduce-multilabel"
CACHE_VERSION = 1
SEEDS = (0, 1, 2, 3, 4)
DATA_SEED = 0
TRAIN, TEACHER_SHARE, TEST = 6000, 2000, 3000  # student/transfer images, per union teacher, test
INPUT = InputSpec(1, 56, 56, (0.18,), (0.31,))
BIG = {"arch": "cnn", "arch_kwargs": {"width": 32, "depth": 4}}
SMALL_TEACHER = {"arch": "cnn", "arch_kwargs": {"width": 16, "depth": 4}}
STUDENT = {"arch": "cnn", "arch_kwargs": {"width": 8, "depth": 3}}
TEACHER_SCHEDULE = {"epochs": 6, "lr": 2e-3, "batch_size": 64, "optimizer": "adam"}
STUDENT_SCHEDULE = {"epochs": 8, "lr": 3e-3, "batch_size": 64, "optimizer": "adam"}
METHODS: dict[str, DistillRecipe] = {
    "student alone": DistillRecipe("none"),
    "MLD": DistillRecipe("mld"),
    "PS": DistillRecipe("ps"),
    "3D (batch)": DistillRecipe("3d", pairing="batch"),
    "3D (views)": DistillRecipe("3d", pairing="views"),
    "3D, beta = 0 (PD only)": DistillRecipe("3d", beta=0.0),
}
UNION = "unified (union-mean)"
SHOWN = ("mAP", "CF1", "OF1")
# Paper 004's mAP (Tables B.1, B.2), quoted for the comparison of gains: student alone, PS, MLD, 3D.
PAPER = {
    "VGG13->MBV2 (COCO)": (71.85, 71.43, 74.92, 74.34),
    "ResNet32x4->SHNV2 (COCO)": (72.58, 72.45, 72.79, 74.98),
    "WRN40-2->WRN16-2 (COCO)": (73.19, 73.04, 73.32, 76.12),
    "ResNet56->ResNet20 (COCO)": (69.25, 69.77, 70.28, 74.37),
    "ResNet50->RepVGGa0 (VOC)": (83.79, 84.80, 85.07, 87.27),
    "SwinT->ResNet18 (VOC)": (84.01, 83.97, 84.61, 86.53),
    "ResNet50->MBV2 (VOC)": (86.12, 86.26, 86.38, 87.92),
    "SwinT->MBV2 (VOC)": (86.12, 86.07, 86.11, 87.78),
}


# ------------------------------------------------------------------------------------------ data
def data() -> dict[str, Any]:
    """The training pool (TRAIN images for part 1 / the transfer set, then the union teachers' shares)
    and the test set."""
    n_pool = TRAIN + 3 * TEACHER_SHARE
    x, y, classes = fashion_mosaics("train", n_pool, seed=DATA_SEED)
    xt, yt, _ = fashion_mosaics("test", TEST, seed=DATA_SEED)
    return {"x": x, "y": y, "classes": classes, "x_test": xt, "y_test": yt}


def _spec(net: Mapping[str, Any], classes: Sequence[str]) -> ModelSpec:
    return ModelSpec(net["arch"], list(classes), INPUT, dict(net["arch_kwargs"]), task="multilabel")


def _cached_teacher(name: str, spec: ModelSpec, images, targets, seed: int, cache: Path):
    """Train a teacher once (BCE on its labels), kept under the cache."""
    d = cache / f"teacher-{name}-v{CACHE_VERSION}"
    if (d / "spec.json").is_file():
        return load_model(d)[0]
    print(f"[teacher] {name}: {len(images)} images, {len(spec.classes)} labels", flush=True)
    model = fit_multilabel(spec, images, targets, Schedule(**TEACHER_SCHEDULE, seed=seed))
    save_model(model, spec, d)
    return model


def _cached(path: Path, compute):
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value


def teachers(d: dict[str, Any], cache: Path) -> dict[str, Any]:
    """Part 1's teacher and part 2's three teachers, with their logits on the TRAIN images (and on their
    flips) and their test metrics."""
    cache.mkdir(parents=True, exist_ok=True)
    classes, x, y = d["classes"], d["x"][:TRAIN], d["y"][:TRAIN]
    big_spec = _spec(BIG, classes)
    big = _cached_teacher("big", big_spec, x, y, 0, cache)
    predict = lambda path, images, flip=False: _cached(  # noqa: E731
        cache / path, lambda: predict_multilabel(big, big_spec, images, flip)
    )
    out = {
        "logits": predict("big-train.pt", x),
        "logits_view2": predict("big-train-flip.pt", x, True),
        "big_test": _metrics(predict("big-test.pt", d["x_test"]), d["y_test"]),
    }
    subsets = subset_labels(len(classes), 3, 5)
    union = torch.zeros(TRAIN, len(subsets), len(classes))
    out["union_teachers"] = []
    for i, labels in enumerate(subsets):
        share = slice(TRAIN + i * TEACHER_SHARE, TRAIN + (i + 1) * TEACHER_SHARE)
        spec = _spec(SMALL_TEACHER, [classes[c] for c in labels])
        model = _cached_teacher(f"t{i}", spec, d["x"][share], d["y"][share][:, labels], 1 + i, cache)
        union[:, i, labels] = _cached(
            cache / f"t{i}-train.pt", lambda m=model, s=spec: predict_multilabel(m, s, x)
        )
        test = _cached(cache / f"t{i}-test.pt", lambda m=model, s=spec: predict_multilabel(m, s, d["x_test"]))
        out["union_teachers"].append(
            {"labels": [classes[c] for c in labels], **_metrics(test, d["y_test"][:, labels])}
        )
    mask = torch.zeros(len(subsets), len(classes), dtype=torch.bool)
    for i, labels in enumerate(subsets):
        mask[i, labels] = True
    out["union_logits"], out["union_mask"] = union, mask
    q, _ = union_targets(union, mask)
    out["q_train"] = _metrics(torch.logit(q.clamp(1e-6, 1 - 1e-6)), y)  # the targets' own quality
    return out


def _metrics(
    logits: torch.Tensor, targets: np.ndarray, cols: Sequence[int] | None = None
) -> dict[str, float]:
    p, y = logits.sigmoid().numpy(), np.asarray(targets)
    if cols is not None:
        p, y = p[:, list(cols)], y[:, list(cols)]
    m = multilabel_metrics(p, y, threshold=0.5)
    return {k: m[k] for k in (*SHOWN, "CP", "CR")}


# ------------------------------------------------------------------------------------------ students
def run_student(method: str, seed: int, d: dict[str, Any], t: dict[str, Any]) -> dict[str, Any]:
    """One student of ``method`` (a METHODS key, or UNION) with ``seed``: its test metrics (all labels,
    and per group of the union's labels known by 1 / 2+ teachers)."""
    spec = _spec(STUDENT, d["classes"])
    schedule = Schedule(**STUDENT_SCHEDULE, seed=seed)
    x, y = d["x"][:TRAIN], d["y"][:TRAIN]
    if method == UNION:
        model = fit_union(spec, x, t["union_logits"], t["union_mask"], schedule)
    else:
        model = fit_multilabel(
            spec, x, y, schedule, METHODS[method], teacher=t["logits"], teacher_view2=t["logits_view2"]
        )
    logits = predict_multilabel(model, spec, d["x_test"])
    votes = t["union_mask"].sum(0)
    groups = {
        "1 teacher": torch.nonzero(votes == 1).flatten(),
        "2+ teachers": torch.nonzero(votes >= 2).flatten(),
    }
    row = {"all": _metrics(logits, d["y_test"])}
    row.update({g: _metrics(logits, d["y_test"], cols.tolist()) for g, cols in groups.items()})
    return row


# ------------------------------------------------------------------------------------------ the run
def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(seeds: Sequence[int], methods: Sequence[str], cache: Path) -> None:
    """Every (method, seed) student not yet in the cache's results.jsonl, appended as it finishes."""
    results = cache / "results.jsonl"
    done = {(r["method"], r["seed"]) for r in read_rows(results)}
    todo = [(m, s) for s in seeds for m in methods if (m, s) not in done]
    if not todo:
        return
    d = data()
    t = teachers(d, cache)
    for k, (method, seed) in enumerate(todo, 1):
        t0 = time.process_time()
        row = run_student(method, seed, d, t)
        print(f"[{k}/{len(todo)}] {method}, seed {seed}: mAP {row['all']['mAP']:.4f}", flush=True)
        with open(results, "a") as f:
            f.write(json.dumps({"method": method, "seed": seed, "metrics": row,
                                "cpu_s": round(time.process_time() - t0, 1)}) + "\n")  # fmt: skip


# ------------------------------------------------------------------------------------------ report
def by_method(
    rows: Sequence[Mapping[str, Any]], group: str = "all"
) -> dict[str, dict[int, dict[str, float]]]:
    out: dict[str, dict[int, dict[str, float]]] = {}
    for r in rows:
        out.setdefault(r["method"], {})[int(r["seed"])] = r["metrics"][group]
    return out


def paired(a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]], key: str = "mAP"):
    """a - b over the seeds both have: (mean, std, wins of a, n, two-sided paired t-test p)."""
    from scipy.stats import ttest_rel  # noqa: PLC0415 - the report only

    seeds = sorted(set(a) & set(b))
    x, y = np.array([a[s][key] for s in seeds]), np.array([b[s][key] for s in seeds])
    d = x - y
    p = float(ttest_rel(x, y).pvalue) if len(seeds) > 1 and d.std() > 0 else float("nan")
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0, int((d > 0).sum()), len(d), p


def _ms(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def _pm(x: float) -> str:
    return f"{x * 100:+.2f}"


def methods_md(rows: Sequence[Mapping[str, Any]]) -> str:
    m = by_method(rows)
    base = m.get("student alone", {})
    lines = [
        "| method | seeds | mAP | CF1 | OF1 | ΔmAP vs alone | wins | p (paired t) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in [n for n in METHODS if n in m]:
        runs = m[name]
        cells = [_ms([r[k] for r in runs.values()]) for k in SHOWN]
        if name == "student alone" or not base:
            delta = ["-", "-", "-"]
        else:
            mean, std, wins, n, p = paired(runs, base)
            delta = [f"{_pm(mean)} ± {std * 100:.2f}", f"{wins}/{n}", f"{p:.3f}"]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells + delta) + " |")
    return "\n".join(lines)


def pairs_md(rows: Sequence[Mapping[str, Any]]) -> str:
    m = by_method(rows)
    comparisons = [
        ("3D (batch)", "MLD"), ("3D (batch)", "PS"), ("3D (views)", "MLD"), ("3D (views)", "PS"),
        ("3D (views)", "3D (batch)"), ("3D (batch)", "3D, beta = 0 (PD only)"), ("PS", "MLD"),
    ]  # fmt: skip
    lines = [
        "| a - b | ΔmAP | ΔCF1 | ΔOF1 | a wins (mAP) | p (paired t, mAP) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for a, b in comparisons:
        if a in m and b in m:
            stats = {k: paired(m[a], m[b], k) for k in SHOWN}
            mean, _, wins, n, p = stats["mAP"]
            cells = [f"{_pm(stats[k][0])} ± {stats[k][1] * 100:.2f}" for k in SHOWN]
            lines.append(f"| {a} - {b} | " + " | ".join(cells) + f" | {wins}/{n} | {p:.3f} |")
    return "\n".join(lines)


def paper_md() -> str:
    lines = ["| pair (paper 004) | 3D - student | 3D - MLD | 3D - PS |", "| --- | --- | --- | --- |"]
    for pair, (student, ps, mld, three_d) in PAPER.items():
        lines.append(f"| {pair} | {three_d - student:+.2f} | {three_d - mld:+.2f} | {three_d - ps:+.2f} |")
    return "\n".join(lines)


def union_md(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| labels | unified mAP | topline mAP | Δ mAP | unified wins | p | unified CF1 | topline CF1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group in ("all", "1 teacher", "2+ teachers"):
        m = by_method(rows, group)
        if UNION not in m or "student alone" not in m:
            continue
        u, top = m[UNION], m["student alone"]
        mean, std, wins, n, p = paired(u, top)
        lines.append(
            f"| {group} | {_ms([r['mAP'] for r in u.values()])} | {_ms([r['mAP'] for r in top.values()])} | "
            f"{_pm(mean)} ± {std * 100:.2f} | {wins}/{n} | {p:.3f} | {_ms([r['CF1'] for r in u.values()])} | "
            f"{_ms([r['CF1'] for r in top.values()])} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import matplotlib  # noqa: PLC0415 - the report only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    m = by_method(rows)
    names = [n for n in [*METHODS, UNION] if n in m]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=False)
    for ax, key in zip(axes, SHOWN):
        for i, name in enumerate(names):
            v = np.array([r[key] for r in m[name].values()]) * 100
            ax.bar(i, v.mean(), color="tab:orange" if name.startswith("3D") else "tab:gray", alpha=0.6)
            ax.scatter(np.full(len(v), i), v, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        lo = min(r[key] for n in names for r in m[n].values()) * 100
        ax.set_ylim(lo - 3, None)
        ax.set_title(f"test {key} (%), one dot per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: Sequence[Mapping[str, Any]], t: Mapping[str, Any] | None, command: str) -> None:
    """benchmarks/results/reproduce-multilabel.{md,json,png} from the cached rows (and teachers' facts)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    png = plot(rows, RESULTS.with_suffix(".png"))
    facts = {"teacher": (t or {}).get("big_test"), "union_teachers": (t or {}).get("union_teachers"),
             "q_train": (t or {}).get("q_train")}  # fmt: skip
    seeds = sorted({int(r["seed"]) for r in rows})
    teacher_rows = []
    if facts["teacher"]:
        teacher_rows.append(f"| big teacher (all 10 labels) | {_row(facts['teacher'])} |")
    for i, ut in enumerate(facts["union_teachers"] or []):
        teacher_rows.append(f"| union teacher t{i} ({', '.join(ut['labels'])}) | {_row(ut)} |")
    if facts["q_train"]:
        teacher_rows.append(
            f"| union targets q on the {TRAIN} transfer images (not test) | {_row(facts['q_train'])} |"
        )
    recipes = "; ".join(f"{n}: {r.to_dict()}" for n, r in METHODS.items())
    md = REPORT.format(
        command=command, seeds=", ".join(map(str, seeds)), train=TRAIN, share=TEACHER_SHARE, test=TEST,
        big=BIG, small=SMALL_TEACHER, student=STUDENT, ts=TEACHER_SCHEDULE, ss=STUDENT_SCHEDULE,
        recipes=recipes, teachers="\n".join(teacher_rows), methods=methods_md(rows), pairs=pairs_md(rows),
        paper=paper_md(), union=union_md(rows), png=png.name,
    )  # fmt: skip
    RESULTS.with_suffix(".md").write_text(md)
    RESULTS.with_suffix(".json").write_text(json.dumps({"rows": list(rows), **facts}, indent=1))
    print(f"wrote {RESULTS.with_suffix('.md')}")


def _row(m: Mapping[str, float]) -> str:
    return " | ".join(f"{m[k] * 100:.2f}" for k in SHOWN)


REPORT = """# Paper 004 on Fashion-MNIST mosaics: multi-label distillation and the multi-label unification

Made by `{command}` (benchmarks/reproduce_multilabel.py; protocol in its docstring and in
[docs/multilabel.md](../../docs/multilabel.md#the-reproduction)). Values are percentages on the {test} test
mosaics, mean ± std over the student seeds {seeds}; Δ are paired differences (same seed: same initial
weights and batch order), with the number of seeds where the first wins and a two-sided paired t-test.
CPU, one thread; no timings here (taken on a shared machine).

Setup: {train} training mosaics (56 x 56, 1-4 of 10 Fashion-MNIST classes each). Teacher {big}, BCE,
{ts}. Student {student}, {ss} (lr / 10 for the second half), BCE on the labels plus the method's term.
Union teachers {small}, {share} further images each with their 5 labels only, {ts}.
Recipes (`zoo.multilabel.DistillRecipe`, the job's defaults): {recipes}.

## Teachers (test mAP / CF1 / OF1 on their own labels)

| model | mAP | CF1 | OF1 |
| --- | --- | --- | --- |
{teachers}

## Distillation (paper 004, Tables B.1-B.2)

![per method]({png})

{methods}

Pairwise (paired over seeds):

{pairs}

The paper's gains (mAP points, Tables B.1-B.2, one run each):

{paper}

## Multi-label unification: 3 teachers over overlapping label subsets vs the true-label topline

The unified student learns the mean of the knowing teachers' probabilities on the {train} transfer
images (no labels); the topline is the same student on the true labels of the same images (the "student
alone" runs above, same seeds). Groups: the 5 labels known by one teacher, the 5 known by two.

{union}
"""


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--methods", nargs="+", default=[*METHODS, UNION], choices=[*METHODS, UNION])
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--report-only", action="store_true", help="the report from the cache, no training")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.report_only:
        run(args.seeds, args.methods, args.cache)
    rows = [r for r in read_rows(args.cache / "results.jsonl") if r["seed"] in args.seeds]
    if not rows:
        sys.exit(f"no results in {args.cache / 'results.jsonl'}: run without --report-only first")
    t = teachers(data(), args.cache) if (args.cache / "big-test.pt").is_file() else None
    write_report(rows, t, "nice -n 15 python benchmarks/reproduce_multilabel.py")


if __name__ == "__main__":
    main()
