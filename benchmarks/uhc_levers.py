"""Levers beyond paper 001 (issue 7, "Beyond the paper"): each lever with and without, on the same trials.

On the random-classes protocol of `benchmarks/reproduce_uhc.py` (same trials, same student, same code
path: `zoo.pipeline.sweep.train_trial` with the lever as an option of the trial dict), for each method
(default CE-BS and MF-LF-BS) and each trial (seeds listed), this trains one student per config:

- ``base``: the paper's method;
- ``calib``: per-teacher temperature scaling before estimation (`zoo.unify.calibration`), each
  teacher's temperature fitted on its owner's held-out labelled images (`Trial.teacher_holdout`);
- ``conf``: per-sample loss weights from the teachers' confidence (`zoo.unify.confidence`);
- ``aug``: random per-sample translations of the transfer images (`zoo.unify.augment`);
- ``self``: one round of self-training with the student as an extra teacher (`zoo.unify.self_training`);
- ``more``: a transfer set of 40k images instead of 20k (same teachers, same test set);
- ``combo``: the levers named by ``--combo`` together;

plus SPV (`run_spv`) and the soft labels' top-1 accuracy on the in-union transfer images (with and
without calibration). Paired differences to ``base`` and the Wilcoxon signed-rank p-value
(scipy.stats.wilcoxon, two-sided) per lever and method; results to
``benchmarks/results/uhc-levers.md`` (+ ``uhc-levers.png``). Every (trial, method, config) result is
appended to ``benchmarks/results/uhc-levers.jsonl`` as it comes: a rerun skips what is there.

    nice -n 5 python benchmarks/uhc_levers.py --seeds 0 1 2 3 4
    python benchmarks/uhc_levers.py --report-only
"""

from __future__ import annotations

import argparse
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
    STUDENT,
    Trial,
    make_trial,
    method_name,
    run_spv,
    run_student,
)

RESULTS = ROOT / "benchmarks" / "results"
JSONL = RESULTS / "uhc-levers.jsonl"
MD = RESULTS / "uhc-levers.md"
PNG = RESULTS / "uhc-levers.png"
LEVERS = ("calib", "conf", "aug", "self", "more")
MORE_TRANSFER = 40000  # lever "more": the transfer set drawn twice as large (same teachers, same test set)


def teacher_temperatures(trial: Trial) -> list[float]:
    """Each teacher's temperature, fitted by its owner on its own held-out labelled images."""
    from zoo.unify.calibration import fit_temperature

    return [fit_temperature(z, y) for z, y in trial.teacher_holdout]


def lever_options(trial: Trial, levers: list[str]) -> dict[str, Any]:
    """The train_trial options that switch ``levers`` on (product options, zoo.pipeline.training)."""
    opts: dict[str, Any] = {}
    for lever in levers:
        if lever == "calib":
            opts["teacher_temperatures"] = teacher_temperatures(trial)
        elif lever == "conf":
            opts["sample_weighting"] = "confidence"
        elif lever == "aug":
            opts["augment"] = True
        elif lever == "self":
            opts["self_train_rounds"] = 1
        elif lever == "more":
            pass  # a larger transfer set: another trial (run() picks it), no option
        else:
            raise ValueError(f"unknown lever {lever!r}; choose from {LEVERS}")
    return opts


def oracle_trial(trial: Trial) -> Trial:
    """Diagnostic, not a lever: the trial with perfect labels, i.e. only the in-union transfer images,
    each with one "teacher" over all of L_U whose logits are 30 x one-hot(true label), so that every
    method's q is (within 1e-4) the one-hot label. What the student reaches there bounds what better
    label estimation alone can give."""
    import dataclasses

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


def soft_label_accuracies(trial: Trial, method: str, temps: list[float]) -> dict[str, float]:
    """Top-1 accuracy of q on the in-union transfer images, without and with calibration."""
    from zoo.unify import estimate_soft_labels
    from zoo.unify.calibration import apply_teacher_temperatures

    inside = trial.transfer_labels >= 0
    out = {}
    for name, z in (
        ("base", trial.data.train_logits),
        ("calib", apply_teacher_temperatures(trial.data.train_logits, temps)),
    ):
        q = estimate_soft_labels(z, trial.data.mask, method, 3.0)
        out[name] = float((q[inside].argmax(-1) == trial.transfer_labels[inside]).float().mean())
    return out


def _load() -> list[dict[str, Any]]:
    """The results recorded so far for the current student (STUDENT; other students' are ignored)."""
    if not JSONL.is_file():
        return []
    rows = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("student") == STUDENT]


def _append(row: dict[str, Any]) -> None:
    JSONL.parent.mkdir(parents=True, exist_ok=True)
    with JSONL.open("a") as f:  # one line per result: a crash loses at most the run in progress
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(
    seeds: list[int], methods: list[tuple[str, str]], configs: dict[str, list[str]], oracle: bool = False
) -> None:
    done = {(r["seed"], r["method"], r["config"]) for r in _load()}
    print(f"student {STUDENT}; {len(done)} results already in {JSONL}", flush=True)
    for seed in seeds:
        trials: dict[int, Trial] = {}
        todo = [(m, mode, c) for m, mode in methods for c in configs if (seed, f"{m}-{mode}", c) not in done]
        # The oracle first: run after the other configs of its seed in the same process it came out at
        # chance level on 3 seeds (cause not found; fresh processes give sane values, see the report).
        if oracle and (seed, "ce-bs", "oracle") not in done:
            todo.insert(0, ("ce", "bs", "oracle"))
        if (seed, "spv", "spv") not in done:
            todo.insert(0, ("spv", "spv", "spv"))
        for method, mode, config in todo:
            size = MORE_TRANSFER if "more" in configs.get(config, ()) else 20000
            if size not in trials:
                trials[size] = make_trial("random", seed, transfer_size=size)
            trial = trials[size]
            t0 = time.perf_counter()
            row: dict[str, Any] = {
                "seed": seed,
                "method": f"{method}-{mode}",
                "config": config,
                "student": STUDENT,
            }
            if method == "spv":
                row["accuracy"] = run_spv(trial)
                row["config"] = "spv"
                row["method"] = "spv"
            elif config == "oracle":
                row["accuracy"] = run_student(oracle_trial(trial), method, mode)
            else:
                opts = lever_options(trial, configs[config])
                row["options"] = opts
                row["accuracy"] = run_student(trial, method, mode, **opts)
                if config == "base":
                    temps = opts.get("teacher_temperatures") or teacher_temperatures(trial)
                    row["q_accuracy"] = soft_label_accuracies(trial, method, temps)
                    row["teacher_temperatures"] = temps
            row["seconds"] = round(time.perf_counter() - t0, 1)
            _append(row)
            print(
                f"seed {seed} {row['method']:<9} {config:<12} acc {row['accuracy']:.4f}  ({row['seconds']}s)",
                flush=True,
            )


def report(methods: list[tuple[str, str]], combo: list[str], command: str) -> str:
    from scipy.stats import wilcoxon

    rows = _load()
    all_configs: dict[str, list[str]] = {"base": [], **{lever: [lever] for lever in LEVERS}, "combo": combo}
    acc: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        acc.setdefault((r["method"], r["config"]), {})[r["seed"]] = r["accuracy"]
    spv = acc.get(("spv", "spv"), {})
    lines = [
        "# Levers beyond paper 001: with and without, on the same trials",
        "",
        "Random-classes protocol of `benchmarks/reproduce_uhc.py` (Fashion-MNIST, L_U = 8 of 10 classes, "
        "5 teachers of 3-5 classes, 100 images per class per teacher, 20k transfer images from all 10 "
        f"classes); student {STUDENT['arch']} {STUDENT['arch_kwargs']}, {STUDENT['epochs']} epochs, "
        "T = 3, trained through `zoo.pipeline.sweep.train_trial` with the lever as a product option. "
        "Accuracy on the Fashion-MNIST test images of L_U.",
        "",
        f"Command: `{command}` (resumable: it skips the (seed, method, config) results already in "
        "`uhc-levers.jsonl`; the committed JSONL was filled by subsets of it run side by side). "
        "Per-trial wall time of each student is in the JSONL (`seconds`).",
        "",
        "`oracle` is a diagnostic, not a lever: the same student on the in-union transfer images with "
        "their true labels (what perfect label estimation would give). Three oracle runs that came "
        "after the combo config of their seed in the same process gave chance-level accuracy "
        "(0.15-0.21; cause not found); they were discarded and rerun in a fresh process (the script "
        "now runs the oracle first).",
        "",
        "Configs: " + "; ".join(f"`{c}` = {'+'.join(v) or 'paper'}" for c, v in all_configs.items()),
        "",
    ]
    png_data = []
    order = ["base", *LEVERS, "combo", "oracle"]
    for method, mode in methods:
        key = f"{method}-{mode}"
        # Every config measured for this method (a method may have been run with fewer levers).
        configs = {c: all_configs.get(c, []) for c in order if (key, c) in acc}
        base = acc.get((key, "base"), {})
        seeds = sorted(set(base) & set(spv))
        if not seeds:
            continue
        name = method_name(method, mode)
        lines += [
            f"## {name}",
            "",
            f"Seeds: {seeds}. SPV mean {np.mean([spv[s] for s in seeds]):.4f}.",
            "",
            "| config | n | mean acc | gap to SPV | mean diff vs base | wins/losses | Wilcoxon p |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for config in configs:
            got = acc.get((key, config), {})
            common = [s for s in seeds if s in got]
            if not common:
                continue
            a = np.array([got[s] for s in common])
            gap = a.mean() - np.mean([spv[s] for s in common])
            if config == "base":
                lines.append(f"| base | {len(common)} | {a.mean():.4f} | {gap:+.4f} | | | |")
                png_data.append((name, config, common, a - np.array([spv[s] for s in common])))
                continue
            d = a - np.array([base[s] for s in common])
            wins, losses = int((d > 0).sum()), int((d < 0).sum())
            p = float(wilcoxon(d).pvalue) if np.any(d != 0) and len(d) >= 2 else float("nan")
            lines.append(
                f"| {config} | {len(common)} | {a.mean():.4f} | {gap:+.4f} | {d.mean():+.4f} | "
                f"{wins}/{losses} | {p:.3g} |"
            )
            png_data.append((name, config, common, a - np.array([spv[s] for s in common])))
        # Gap to SPV per config, on the seeds that config has (paired with SPV on the same trials).
        gaps = {
            c: np.mean([acc[(key, c)][s] - spv[s] for s in seeds if s in acc[(key, c)]])
            for c in configs
            if c != "oracle" and any(s in acc[(key, c)] for s in seeds)
        }
        best = max(gaps, key=gaps.get)
        lines += [
            "",
            f"Best config for {name}: `{best}`, gap to SPV {gaps[best]:+.4f} (base {gaps['base']:+.4f}); "
            "the goal was a gap within -0.01.",
        ]
        lines += ["", "Per seed (accuracy):", "", "| seed | SPV | " + " | ".join(configs) + " |"]
        lines.append("| --- " * (len(configs) + 2) + "|")
        for s in seeds:
            cells = [f"{acc.get((key, c), {}).get(s, float('nan')):.4f}" for c in configs]
            lines.append(f"| {s} | {spv[s]:.4f} | " + " | ".join(cells) + " |")
        # one per seed (a rerun of a seed may have recorded base twice; the results are the same)
        base_rows = [r for r in rows if r["method"] == key and r["config"] == "base"]
        qrows = list({r["seed"]: r for r in base_rows if "q_accuracy" in r}.values())
        if qrows:
            qb = np.mean([r["q_accuracy"]["base"] for r in qrows])
            qc = np.mean([r["q_accuracy"]["calib"] for r in qrows])
            lines += [
                "",
                "Soft labels' top-1 accuracy on the in-union transfer images "
                f"(mean over {len(qrows)} trials): {qb:.4f} without calibration, {qc:.4f} with (per-trial: "
                + ", ".join(
                    f"s{r['seed']} {r['q_accuracy']['base']:.3f}->{r['q_accuracy']['calib']:.3f}"
                    for r in sorted(qrows, key=lambda r: r["seed"])
                )
                + ").",
            ]
        lines.append("")
    text = "\n".join(lines)
    MD.write_text(text)
    _plot(png_data)
    return text


def _plot(data: list[tuple[str, str, list[int], np.ndarray]]) -> None:
    if not data:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({d[0] for d in data})
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.5), squeeze=False)
    for ax, m in zip(axes[0], methods):
        rows = [d for d in data if d[0] == m]
        for k, (*_, gap) in enumerate(rows):
            ax.scatter([k] * len(gap), 100 * gap, s=14, alpha=0.6)
            ax.plot([k - 0.25, k + 0.25], [100 * gap.mean()] * 2, color="k")
        ax.axhline(0, color="gray", lw=0.8)
        ax.axhline(-1, color="gray", lw=0.8, ls=":")
        ax.set_xticks(range(len(rows)), [r[1] for r in rows])
        ax.set_title(f"{m}: accuracy - SPV (points), per trial")
        ax.set_ylabel("points (dotted: the goal, -1)")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=["ce-bs", "mf-lf-bs"], help="method-mode pairs")
    p.add_argument("--levers", nargs="+", default=list(LEVERS), help=f"levers to try one by one {LEVERS}")
    p.add_argument("--combo", nargs="*", default=[], help="levers to try together (config 'combo')")
    p.add_argument("--oracle", action="store_true", help="also the perfect-label diagnostic (oracle_trial)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    methods = [tuple(m.rsplit("-", 1)) for m in args.methods]
    configs: dict[str, list[str]] = {"base": []}
    configs.update({lever: [lever] for lever in args.levers})
    if args.combo:
        configs["combo"] = list(args.combo)
    command = "python benchmarks/uhc_levers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if not args.report_only:
        run(args.seeds, methods, configs, args.oracle)
    print(report(methods, args.combo, command.replace(" --report-only", "")))


if __name__ == "__main__":
    main()
