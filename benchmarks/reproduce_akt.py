"""EXPLORATORY seed of paper 003's reproduction (AKT, issue 14): NOT the committed reproduction and
its numbers are not results. It runs the library (`zoo.akt`) in-process with a minimal loop of its
own, which the later phase replaces by the pipeline's training core (`zoo/train.py`, `train_epoch`)
and extends to the issue's protocol (two label regimes, >= 5 seeds, the Finetuning topline, paired
tests, a plot).

Protocol (Fashion-MNIST, after paper 003's Table 1): a seeded split of the 10 classes into 5 target
and 5 source classes; target = `--labels` labelled training images per target class; source =
`--source` unlabelled training images of the source classes; test = every test image of the target
classes. M (and G) = the zoo's small CNN. Methods: scratch, pseudo-label (warm-up = half the epochs),
akt-di, akt. An epoch is one pass over the source in batches of `--batch` (paired with as many
target images drawn afresh from the labelled set each iteration); scratch gets as many iterations.
The learning rates of M and G drop by 10 after 3/4 of the epochs (paper: after 75 epochs).

    nice -n 15 python benchmarks/reproduce_akt.py --seeds 0 1 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zoo.akt import METHODS, AKTConfig, akt_step, build_akt_nets, check_divergence, make_optimisers
from zoo.data import load_fashion_mnist

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training pixel statistics


@dataclass(frozen=True)
class Split:
    target_classes: tuple[int, ...]
    x_t: torch.Tensor
    y_t: torch.Tensor
    x_s: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _images(a: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(a).float() / 255 - MEAN) / STD).unsqueeze(1)


def make_split(seed: int, labels_per_class: int, n_source: int) -> Split:
    """The seeded target/source class split and the three image sets (labels remapped to 0..4)."""
    rng = np.random.default_rng(seed)
    x, y = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    classes = rng.permutation(10)
    target, source = sorted(classes[:5].tolist()), sorted(classes[5:].tolist())
    remap = {c: i for i, c in enumerate(target)}
    t_idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), labels_per_class, replace=False) for c in target]
    )
    s_idx = rng.choice(np.flatnonzero(np.isin(y, source)), n_source, replace=False)
    test = np.isin(y_test, target)
    to_t = lambda labels: torch.tensor([remap[int(c)] for c in labels])
    return Split(
        tuple(target),
        _images(x[t_idx]),
        to_t(y[t_idx]),
        _images(x[s_idx]),
        _images(x_test[test]),
        to_t(y_test[test]),
    )


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def train(split: Split, cfg: AKTConfig, *, epochs: int, batch: int, seed: int, eval_every: int) -> dict:
    """The minimal loop (to be replaced by the training core): per-epoch mean metrics, test accuracy."""
    torch.manual_seed(seed)
    nets = build_akt_nets("cnn", 5, 1, 28, d_hidden=cfg.d_hidden)
    opt = make_optimisers(nets, cfg)
    gen = torch.Generator().manual_seed(seed)
    n_s, n_t = len(split.x_s), len(split.x_t)
    iters = math.ceil(n_s / batch)
    history, curve, stopped, it = [], [], None, 0
    for epoch in range(epochs):
        if epoch == (3 * epochs) // 4:
            for o in (opt.m, opt.g):
                for group in o.param_groups if o is not None else ():
                    group["lr"] *= 0.1
        order = torch.randperm(n_s, generator=gen)
        sums: dict[str, float] = {}
        for i in range(iters):
            x_s = split.x_s[order[i * batch : (i + 1) * batch]]
            t = torch.randperm(n_t, generator=gen)[: min(batch, n_t)]
            m = akt_step(nets, opt, split.x_t[t], split.y_t[t], x_s, cfg, epoch=epoch, iteration=it)
            it += 1
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v / iters
        history.append(sums)
        if (epoch + 1) % eval_every == 0 or epoch == epochs - 1:
            curve.append((epoch + 1, accuracy(nets.m, split.x_test, split.y_test)))
        stopped = check_divergence(history, cfg)
        if stopped:
            break
    return {
        "accuracy": accuracy(nets.m, split.x_test, split.y_test),
        "curve": curve,
        "history": history,
        "stopped": stopped,
    }


def _override(text: str) -> tuple[str, object]:
    """FIELD=VALUE with a JSON value (lists become tuples), else the string."""
    field, _, value = text.partition("=")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return field, tuple(parsed) if isinstance(parsed, list) else parsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--labels", type=int, default=20, help="labelled images per target class")
    p.add_argument("--source", type=int, default=2000, help="unlabelled source images")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="AKTConfig overrides (JSON values)"
    )
    p.add_argument("--out", type=Path, help="write every run's record as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = dict(_override(s) for s in args.set)
    records = []
    for seed in args.seeds:
        split = make_split(seed, args.labels, args.source)
        for method in args.methods:
            # pseudo-label's first stage (train on the target, then label the source): half the epochs
            warmup = {"warmup_epochs": args.epochs // 2} if method == "pseudo-label" else {}
            cfg = AKTConfig(**{"method": method, **warmup, **overrides})
            start = time.process_time()
            rec = train(
                split, cfg, epochs=args.epochs, batch=args.batch, seed=seed, eval_every=args.eval_every
            )
            last = rec["history"][-1]
            extra = " ".join(
                f"{k}={last[k]:.3f}" for k in ("d_acc", "dg_acc", "agreement", "loss_m_target") if k in last
            )
            print(
                f"seed {seed} classes {split.target_classes} {method:12s} acc {rec['accuracy']:.4f} "
                f"curve {[round(a, 3) for _, a in rec['curve']]} {extra} "
                f"cpu {time.process_time() - start:.0f}s"
                + (f" STOPPED: {rec['stopped']}" if rec["stopped"] else ""),
                flush=True,
            )
            records.append({"seed": seed, "method": method, "config": {**cfg.__dict__}, **rec})
    print("\nmean test accuracy over seeds")
    for method in args.methods:
        accs = [r["accuracy"] for r in records if r["method"] == method]
        print(f"  {method:12s} {np.mean(accs):.4f}  ({', '.join(f'{a:.4f}' for a in accs)})")
    if args.out:
        args.out.write_text(json.dumps(records, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
