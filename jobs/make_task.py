"""Write a labelled task for `jobs/distill.py`: Fashion-MNIST images of a few classes as ImageFolders.

    python jobs/make_task.py                           # tasks/fmnist: Coat, Dress, Sandal, Shirt, Sneaker
    python jobs/make_task.py --classes Trouser,Bag --per-class 50 --out tasks/two
    python jobs/make_task.py --synthetic --out tasks/syn  # no Fashion-MNIST needed (16x16 patterns)

Writes ``OUT/train/<class>/<i>.png`` (``--per-class`` training images per class: the student's labelled
set), ``OUT/val/...`` (other training images) and ``OUT/eval/...`` (test images); "/" in a class name is
written "_" (T-shirt_top). The default classes share 3 of 5 with the demo teacher fmnist-demo-t1 (T-shirt/top,
Dress, Sandal, Sneaker, Bag): the cross-task case of paper 002 (overlap g = 60 %). The images are drawn at
random from the whole training split, so a few may be among the ~100 per class a demo teacher was
trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the project
    sys.path.insert(0, str(ROOT))

from zoo.data import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    encode_png,
    load_fashion_mnist,
    synthetic_class_names,
    synthetic_images,
)

DEFAULT_CLASSES = ("Coat", "Dress", "Sandal", "Shirt", "Sneaker")


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> int:
    for i, (im, y) in enumerate(zip(images, labels)):
        d = root / names[y].replace("/", "_")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.png").write_bytes(encode_png(im))
    return len(labels)


def make_task(
    out: Path, classes: list[str], per_class: int, val_per_class: int, eval_per_class: int, seed: int,
    synthetic: bool = False,
) -> dict[str, int]:  # fmt: skip
    """Write the task's train, val and eval ImageFolders under ``out``; returns the image counts."""
    if synthetic:
        names = list(synthetic_class_names(10))
        (xtr, ytr), (xte, yte) = synthetic_images(12000, 10, seed=0), synthetic_images(2000, 10, seed=1)
    else:
        names = list(FASHION_MNIST_CLASSES)
        (xtr, ytr), (xte, yte) = load_fashion_mnist("train"), load_fashion_mnist("test")
    unknown = [c for c in classes if c not in names and c.replace("_", "/") not in names]
    if unknown or len(classes) < 2:
        raise SystemExit(f"error: classes {unknown or classes}: give at least 2 of {names}")
    wanted = [names.index(c if c in names else c.replace("_", "/")) for c in classes]
    rng = np.random.default_rng(seed)
    train, val, ev = [], [], []
    for c in wanted:
        idx = rng.permutation(np.flatnonzero(ytr == c))
        if len(idx) < per_class + val_per_class:
            raise SystemExit(f"error: class {names[c]} has {len(idx)} training images; ask for fewer")
        train.append(idx[:per_class])
        val.append(idx[per_class : per_class + val_per_class])
        ev.append(rng.permutation(np.flatnonzero(yte == c))[:eval_per_class])
    counts = {}
    for split, parts, (x, y) in (
        ("train", train, (xtr, ytr)),
        ("val", val, (xtr, ytr)),
        ("eval", ev, (xte, yte)),
    ):
        idx = np.concatenate(parts)
        counts[split] = write_folder(out / split, x[idx], y[idx], names)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="tasks/fmnist", help="output directory (train/, val/, eval/ under it)")
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES), help="comma-separated class names")
    p.add_argument("--per-class", type=int, default=200, help="labelled training images per class")
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--eval-per-class", type=int, default=500, help="test images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic", action="store_true", help="synthetic 16x16 patterns (class00..class09)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty; pass another --out or remove it")
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    if a.synthetic and a.classes == ",".join(DEFAULT_CLASSES):
        classes = ["class00", "class01", "class02", "class03", "class04"]
    counts = make_task(out, classes, a.per_class, a.val_per_class, a.eval_per_class, a.seed, a.synthetic)
    print(f"task {out}: classes {classes}; " + ", ".join(f"{k} {v} images" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
