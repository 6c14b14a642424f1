"""Levers beyond paper 001 (issues 7 and 18): each lever with and without, on the same trials.

On the trials of `benchmarks/reproduce_uhc.py` (the demo zoo's split and teacher training,
`zoo.demo.make_split` + `zoo.pipeline.make_zoo.train_teacher`, cached), for each method (default CE-BS)
and each trial (seeds listed), this trains one student per config through the product's code paths:
the targets by `zoo.unify.recipe.build_targets` with the config's `Recipe`, the student by
`zoo.pipeline.sweep.train_trial` (the main job's loss, batch order and lr schedule). A config is
``base`` (the paper's method) or levers joined by ``+``:

- ``owner``: each teacher's owner calibration, as the demo zoo ships it
  (`zoo.pipeline.make_zoo.owner_calibration` on the teacher's held-out slice of the split:
  `fit_calibration`, prior_count 1), its temperature in ``Recipe.teacher_temperatures``;
- ``hard``: hard targets, ``Recipe.sharpen = 0`` (`zoo.unify.sharpen`);
- ``t1``: q estimated at T = 1, the student at T = 3 (``Recipe.estimation_temperature = 1``);
- ``prop``: q propagated over the kNN graph of the teachers' penultimate features
  (``Recipe.propagation = Propagation()``: k 10, alpha 0.8, 64 principal components;
  `zoo.unify.propagate`), the features computed as the inference stage does (`split_head`, float16);
- issue 7's: ``calib`` (temperatures by `fit_temperature` with prior_count 0 on the same slices),
  ``conf`` (confidence sample weights), ``aug`` (random translations), ``self`` (one self-training
  round), ``more`` (a 40k transfer set); and ``oracle``, a diagnostic: the in-union transfer images
  with their true labels.

Protocols: ``random`` (5 teachers of 3-5 of the 8 union classes) and ``overlap`` (every teacher all 8).
Students: ``mlp``, the reproduction's (`reproduce_uhc.STUDENT`: MLP, 2 epochs), and ``job``, the
default job's (configs/default.yaml: CNN, 5 epochs, SGD 0.05, batch 128). Per trial also SPV (the
student's network supervised on the teachers' pooled data, `zoo.pipeline.spv.train_spv`) and the top-1
accuracy of each config's q on the in-union transfer images. Paired differences and the Wilcoxon
signed-rank p-value (two-sided; significant at alpha = 0.01) against ``base`` and for each lever
against the same config without it. Every result is appended to ``benchmarks/results/uhc-levers.jsonl``
as it comes (a rerun skips what is there); the report is ``uhc-levers.md`` + ``uhc-levers.png``.

    nice -n 15 python benchmarks/uhc_levers.py --protocol random --student mlp --seeds 0 1 2 \\
        --configs base owner hard owner+hard owner+hard+prop
    python benchmarks/uhc_levers.py --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.reproduce_uhc import (  # noqa: E402
    DEFAULT_CACHE,
    STUDENT,
    Trial,
    _build_teacher,
    _holdout_indices,
    _spec,
    _teachers,
    dataset,
    make_trial,
)
from zoo.architectures import split_head  # noqa: E402
from zoo.artifacts import ModelSpec  # noqa: E402
from zoo.config import load_config  # noqa: E402
from zoo.pipeline.make_zoo import owner_calibration  # noqa: E402
from zoo.pipeline.spv import demo_spv_data, train_spv  # noqa: E402
from zoo.pipeline.sweep import train_trial  # noqa: E402
from zoo.train import Schedule, evaluate, predict_logits  # noqa: E402
from zoo.unify.calibration import fit_temperature  # noqa: E402
from zoo.unify.propagate import Propagation  # noqa: E402
from zoo.unify.recipe import Recipe, build_targets  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
JSONL = RESULTS / "uhc-levers.jsonl"
MD = RESULTS / "uhc-levers.md"
PNG = RESULTS / "uhc-levers.png"
SUITE = "issue18"  # rows of this measurement; rows without a suite are issue 7's (other teachers' cache)
LEVERS = ("owner", "hard", "t1", "prop", "calib", "conf", "aug", "self", "more")
MORE_TRANSFER = 40000  # lever "more": the transfer set drawn twice as large (same teachers, same test set)
ALPHA = 0.01


def job_student() -> dict[str, Any]:
    """The default job's student (configs/default.yaml): network and schedule, as the JSONL records it."""
    cfg = load_config()
    keys = ("arch", "arch_kwargs", "epochs", "lr", "batch_size", "optimizer")
    return {k: getattr(cfg, k) for k in keys}


STUDENTS = {"mlp": STUDENT, "job": job_student()}


def levers_of(config: str) -> list[str]:
    if config in ("base", "oracle", "spv"):
        return []
    levers = config.split("+")
    bad = [lever for lever in levers if lever not in LEVERS]
    if bad:
        raise ValueError(f"config {config!r}: unknown lever(s) {bad}; choose from {LEVERS} (joined by +)")
    return levers


# ----------------------------------------------------------------------------------- what owners ship
def owner_calibrations(trial: Trial) -> list[Any]:
    """Each teacher's calibration as the demo zoo makes it: `owner_calibration` on the teacher's
    held-out slice of the split (the images `Trial.teacher_holdout` holds: checked)."""
    ds, split = dataset(), trial.split
    assert [list(h) for h in _holdout_indices(split, ds.labels_train, trial.seed)] == [
        list(t.holdout_indices) for t in split.teachers
    ], "the split's held-out slices are the reproduction's"
    cals = []
    for i, t in enumerate(_teachers(trial.protocol, trial.seed, split, DEFAULT_CACHE)):
        spec = ModelSpec(t["arch"], list(t["classes"]), _spec(), dict(t["arch_kwargs"]))
        x, y = split.teacher_holdout(i, ds.images_train, ds.labels_train)
        cals.append(owner_calibration(_build_teacher(t), spec, x, y))
    return cals


def teacher_features(trial: Trial) -> list[torch.Tensor]:
    """Each teacher's penultimate features [B, D_i] of the trial's training transfer images, as the
    inference stage writes them (`split_head`'s embed, stored as float16)."""
    feats = []
    for t in _teachers(trial.protocol, trial.seed, trial.split, DEFAULT_CACHE):
        embed, _ = split_head(_build_teacher(t))
        with torch.inference_mode():
            feats.append(predict_logits(embed, trial.data.train_images).half().float())
    return feats


def recipe_for(method: str, mode: str, levers: list[str], trial: Trial, cache: dict[str, Any]) -> Recipe:
    """The config's Recipe (the levers as product options); ``cache`` holds a trial's calibrations."""
    opts: dict[str, Any] = {}
    for lever in levers:
        if lever == "owner":
            if "owner" not in cache:
                cache["owner"] = owner_calibrations(trial)
            opts["teacher_temperatures"] = [c.temperature for c in cache["owner"]]
        elif lever == "calib":
            opts["teacher_temperatures"] = [fit_temperature(z, y) for z, y in trial.teacher_holdout]
        elif lever == "hard":
            opts["sharpen"] = 0.0
        elif lever == "t1":
            opts["estimation_temperature"] = 1.0
        elif lever == "prop":
            opts["propagation"] = Propagation()
        elif lever == "conf":
            opts["sample_weighting"] = "confidence"
        elif lever == "aug":
            opts["augment"] = True
        elif lever == "self":
            opts["self_train_rounds"] = 1
    return Recipe(method=method, mode=mode, temperature=3.0, **opts)


def oracle_trial(trial: Trial) -> Trial:
    """Diagnostic, not a lever: the trial with perfect labels, i.e. only the in-union transfer images,
    each with one "teacher" over all of L_U whose logits are 30 x one-hot(true label), so that every
    method's q is (within 1e-4) the one-hot label. What the student reaches there bounds what better
    label estimation alone can give."""
    inside = trial.transfer_labels >= 0
    labels = trial.transfer_labels[inside]
    z = 30.0 * torch.nn.functional.one_hot(labels, len(trial.data.classes)).float().unsqueeze(1)
    data = dataclasses.replace(
        trial.data,
        train_images=trial.data.train_images[inside],
        train_logits=z,
        mask=torch.ones(1, len(trial.data.classes), dtype=torch.bool),
        holdout_logits=torch.zeros(len(trial.data.holdout_images), 1, len(trial.data.classes)),
    )
    return dataclasses.replace(trial, data=data, transfer_labels=labels)


# -------------------------------------------------------------------------------------------- runs
def student_setup(trial: Trial, student: dict[str, Any]) -> tuple[ModelSpec, Schedule]:
    """The student's network over the trial's classes and its schedule, seeded by the trial (the same
    initial weights and batch order for every config of a trial, paper 001 Sec. 4.1.1)."""
    spec = ModelSpec(student["arch"], list(trial.data.classes), _spec(), dict(student["arch_kwargs"]))
    keys = ("epochs", "lr", "batch_size", "optimizer")
    return spec, Schedule(**{k: student[k] for k in keys}, seed=int(trial.seed))


def spv_accuracy(trial: Trial, spec: ModelSpec) -> float:
    """SPV as the job trains it (`zoo.pipeline.spv.train_spv`: the student's network on the teachers'
    pooled data, the teachers' recipe), on the trial's test set."""
    tc = dict(trial.split.config)
    model = train_spv(
        spec,
        demo_spv_data(trial.split, list(trial.data.classes)),
        epochs=int(tc["epochs"]),
        lr=float(tc["lr"]),
        batch_size=int(tc["batch_size"]),
        seed=trial.seed,
        optimizer=str(tc["optimizer"]),
    )
    return evaluate(model, trial.data.val_images, trial.data.val_labels)


def run_config(
    trial: Trial, student: dict[str, Any], method: str, mode: str, config: str, cache: dict
) -> dict:
    """One student of one config: its accuracy on the test images of L_U, and q's top-1 on the
    in-union transfer images (configs whose q train_trial builds itself, self-training, have none)."""
    spec, schedule = student_setup(trial, student)
    if config == "oracle":
        hist = train_trial(oracle_trial(trial).data, spec, schedule, Recipe(method=method, mode=mode))
        return {"accuracy": float(hist[-1]["val_accuracy"])}
    recipe = recipe_for(method, mode, levers_of(config), trial, cache)
    data, targets, row = trial.data, None, {"recipe": recipe.to_dict()}
    if recipe.propagation is not None:
        if "features" not in cache:
            cache["features"] = teacher_features(trial)
        data = dataclasses.replace(data, train_features=cache["features"])
    if not recipe.self_train_rounds and recipe.mode != "bp":
        targets = build_targets(data.train_logits, data.mask, recipe, features=data.train_features)
        inside = trial.transfer_labels >= 0
        hit = targets.q[inside].argmax(-1) == trial.transfer_labels[inside]
        row["q_accuracy"] = float(hit.float().mean())
    hist = train_trial(data, spec, schedule, recipe, targets=targets)
    return {"accuracy": float(hist[-1]["val_accuracy"]), **row}


def _rows() -> list[dict[str, Any]]:
    if not JSONL.is_file():
        return []
    return [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]


def _append(row: dict[str, Any]) -> None:
    JSONL.parent.mkdir(parents=True, exist_ok=True)
    with JSONL.open("a") as f:  # one line per result: a crash loses at most the run in progress
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _key(r: dict[str, Any]) -> tuple:
    return (r.get("suite"), r.get("protocol", "random"), json.dumps(r["student"], sort_keys=True), r["seed"])


def run(
    protocol: str, student_name: str, seeds: list[int], methods: list[str], configs: list[str], command: str
) -> None:
    student = STUDENTS[student_name]
    for c in configs:
        levers_of(c)  # a bad config name stops here, before any training
    done = {(*_key(r), r["method"], r["config"]) for r in _rows()}
    base = {"suite": SUITE, "protocol": protocol, "student_name": student_name, "student": student}
    print(f"{protocol} / {student_name} {student}; {len(done)} results in {JSONL}", flush=True)
    for seed in seeds:
        key = _key({**base, "seed": seed})
        todo = [("spv", "spv")] + [(m, c) for m in methods for c in configs]
        todo = [(m, c) for m, c in todo if (*key, m, c) not in done]
        trials: dict[int, Trial] = {}
        cache: dict[int, dict] = {}
        for method, config in todo:
            size = MORE_TRANSFER if "more" in levers_of(config) else 20000
            if size not in trials:
                trials[size], cache[size] = make_trial(protocol, seed, transfer_size=size), {}
            trial, t0 = trials[size], time.perf_counter()
            if method == "spv":
                out = {"accuracy": spv_accuracy(trial, student_setup(trial, student)[0])}
            else:
                out = run_config(trial, student, *method.rsplit("-", 1), config, cache[size])
            row = {**base, "seed": seed, "method": method, "config": config, **out}
            row.update(seconds=round(time.perf_counter() - t0, 1), command=command)
            _append(row)
            q = f"  q {out['q_accuracy']:.4f}" if "q_accuracy" in out else ""
            print(
                f"seed {seed} {method:<6} {config:<18} acc {out['accuracy']:.4f}{q}  ({row['seconds']}s)",
                flush=True,
            )


# ------------------------------------------------------------------------------------------ report
def _wilcoxon(d: np.ndarray) -> float:
    from scipy.stats import wilcoxon

    return float(wilcoxon(d).pvalue) if len(d) >= 2 and np.any(d != 0) else float("nan")


def _section(rows: list[dict[str, Any]], method: str) -> tuple[list[str], dict[str, dict[int, float]]]:
    """The markdown of one (suite, protocol, student, method): configs against base and SPV, the
    levers with and without, per-seed accuracies; and the per-seed gaps to SPV (for the plot)."""
    acc: dict[str, dict[int, float]] = {}
    qacc: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["method"] in (method, "spv"):
            acc.setdefault(r["config"], {})[r["seed"]] = r["accuracy"]
            if isinstance(r.get("q_accuracy"), float):
                qacc.setdefault(r["config"], {})[r["seed"]] = r["q_accuracy"]
    spv, base = acc.pop("spv", {}), acc.get("base", {})
    seeds = sorted(set(base) & set(spv))
    if not seeds:
        return [], {}
    configs = sorted(acc, key=lambda c: (c == "oracle", len(levers_of(c)), c))
    lines = [
        f"Seeds {seeds}; SPV mean {np.mean([spv[s] for s in seeds]):.4f}.",
        "",
        "| config | n | mean acc | gap to SPV | diff vs base | wins/losses | Wilcoxon p | q top-1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    gaps = {}
    for c in configs:
        common = [s for s in seeds if s in acc[c]]
        a = np.array([acc[c][s] for s in common])
        gap = a - np.array([spv[s] for s in common])
        gaps[c] = dict(zip(common, gap))
        qs = [qacc.get(c, {}).get(s) for s in common]
        qtxt = f"{np.mean(qs):.4f}" if qs and all(v is not None for v in qs) else ""
        if c == "base":
            lines.append(f"| base | {len(common)} | {a.mean():.4f} | {gap.mean():+.4f} | | | | {qtxt} |")
            continue
        d = a - np.array([base[s] for s in common])
        p = _wilcoxon(d)
        star = " **" if p < ALPHA else ""
        lines.append(
            f"| {c} | {len(common)} | {a.mean():.4f} | {gap.mean():+.4f} | {d.mean():+.4f} | "
            f"{int((d > 0).sum())}/{int((d < 0).sum())} | {p:.3g}{star} | {qtxt} |"
        )
    pairs = []
    for c in configs:
        for lever in levers_of(c):
            rest = [x for x in levers_of(c) if x != lever]
            without = "+".join(rest) or "base"
            if without in acc and len(levers_of(c)) > 1:
                common = [s for s in seeds if s in acc[c] and s in acc[without]]
                d = np.array([acc[c][s] - acc[without][s] for s in common])
                pairs.append((lever, without, c, d))
    if pairs:
        lines += [
            "",
            "Each lever on top of the others (same trials):",
            "",
            "| lever | without -> with | n | mean diff | wins/losses | Wilcoxon p |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for lever, without, c, d in pairs:
            p = _wilcoxon(d)
            lines.append(
                f"| {lever} | {without} -> {c} | {len(d)} | {d.mean():+.4f} | "
                f"{int((d > 0).sum())}/{int((d < 0).sum())} | {p:.3g}{' **' if p < ALPHA else ''} |"
            )
    best = max((c for c in configs if c != "oracle"), key=lambda c: np.mean(list(gaps[c].values())))
    lines += [
        "",
        f"Best config: `{best}`, gap to SPV {np.mean(list(gaps[best].values())):+.4f} "
        f"(base {np.mean(list(gaps['base'].values())):+.4f}).",
        "",
        "Per seed (student accuracy; SPV first):",
        "",
        "| seed | SPV | " + " | ".join(configs) + " |",
        "| --- " * (len(configs) + 2) + "|",
    ]
    for s in seeds:
        cells = [f"{acc[c][s]:.4f}" if s in acc[c] else "" for c in configs]
        lines.append(f"| {s} | {spv[s]:.4f} | " + " | ".join(cells) + " |")
    return lines, gaps


def report() -> str:
    rows = _rows()
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        name = r.get("student_name") or ("mlp" if r["student"] == STUDENT else "other")
        groups.setdefault((r.get("suite") or "issue7", r.get("protocol", "random"), name), []).append(r)
    lines = [
        "# Levers beyond paper 001: with and without, on the same trials",
        "",
        "Made by `benchmarks/uhc_levers.py` (the commands below; each is resumable and skips the results "
        "already in `uhc-levers.jsonl`). Protocols of `benchmarks/reproduce_uhc.py` on Fashion-MNIST "
        "(L_U = 8 of 10 classes; 5 teachers of 3-5 classes (`random`) or of all 8 (`overlap`), 100 "
        "images per class per teacher, the demo zoo's teacher training; 20k transfer images from all 10 "
        "classes, ~20% outside L_U); accuracy on the Fashion-MNIST test images of L_U. Students: `mlp` = "
        f"{STUDENT}, `job` = the default job's, {STUDENTS['job']}; T = 3; the same initial weights and "
        "batches for every config of a trial. `**`: Wilcoxon signed-rank p < 0.01 (two-sided, paired). "
        "q top-1: the targets' argmax against the true label on the in-union transfer images. Per-result "
        "seconds (shared, loaded machine: not speed figures) are in the JSONL.",
        "",
        "Configs: `base` = the paper's method (CE-BS); levers joined by `+`: `owner` = the owners' "
        "calibrations as the demo zoo ships them (temperature, prior_count 1, on each teacher's held-out "
        "slice); `hard` = `sharpen` 0 (one-hot targets); `t1` = q estimated at T = 1 "
        "(`estimation_temperature`); `prop` = label propagation over the teachers' features (k 10, "
        "alpha 0.8, 64 dims); issue 7's: `calib` (temperature, prior_count 0), `conf`, `aug`, `self`, "
        "`more` (40k transfer images); `oracle` = true labels of the in-union transfer images (a bound).",
    ]
    plot: list[tuple[str, dict[str, dict[int, float]]]] = []
    for (suite, protocol, student), grp in sorted(groups.items(), key=lambda kv: (kv[0][0] != SUITE, kv[0])):
        for method in sorted({r["method"] for r in grp} - {"spv"}):
            body, gaps = _section(grp, method)
            if not body:
                continue
            cmds = sorted({r["command"] for r in grp if r.get("command")})
            title = f"{method.upper()}, {protocol} classes, student `{student}` ({suite})"
            lines += ["", f"## {title}", ""]
            if suite != SUITE:
                lines += [
                    "Issue 7's measurement (committed earlier, teachers trained in another cache: not "
                    "paired with issue 18's rows). Command: `python benchmarks/uhc_levers.py --seeds 0 1 2 "
                    "3 4 5 6 7 8 9 --methods ce-bs mf-lf-bs --levers calib conf aug self more --combo calib "
                    "conf more --oracle` at commit fbf36ef (its `combo` is `calib+conf+more` here).",
                    "",
                ]
            lines += [f"Command: `{c}`" for c in cmds] + ([""] if cmds else []) + body
            if suite == SUITE:
                plot.append((f"{protocol} / {student}", gaps))
    text = "\n".join(lines) + "\n"
    MD.write_text(text)
    _plot(plot)
    return text


def _plot(data: list[tuple[str, dict[str, dict[int, float]]]]) -> None:
    if not data:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 3.8), squeeze=False)
    for ax, (title, gaps) in zip(axes[0], data):
        names = [c for c in gaps if c != "oracle"]
        for k, c in enumerate(names):
            g = 100 * np.array(list(gaps[c].values()))
            ax.scatter([k] * len(g), g, s=14, alpha=0.6)
            ax.plot([k - 0.3, k + 0.3], [g.mean()] * 2, color="k")
        ax.axhline(0, color="gray", lw=0.8)
        ax.axhline(-1, color="gray", lw=0.8, ls=":")
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{title}: accuracy - SPV per trial", fontsize=9)
        ax.set_ylabel("points (dotted: the goal, -1)")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=("random", "overlap"), default="random")
    p.add_argument("--student", choices=sorted(STUDENTS), default="mlp")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--methods", nargs="+", default=["ce-bs"], help="method-mode pairs")
    p.add_argument("--configs", nargs="+", default=["base", "owner", "hard", "owner+hard"])
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not args.report_only:
        command = "python benchmarks/uhc_levers.py " + " ".join(sys.argv[1:] if argv is None else argv)
        run(args.protocol, args.student, args.seeds, args.methods, args.configs, command)
    print(report())


if __name__ == "__main__":
    main()
