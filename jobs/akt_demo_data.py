"""Fashion-MNIST demo data for the AKT job (`jobs/akt.py`): a target ImageFolder of 5 classes with few
labels, a source directory of unlabelled images of the 5 other classes, and an evaluation ImageFolder.

    python jobs/akt_demo_data.py --out data/akt-demo [--labels 20] [--source 2000]
    python jobs/akt.py --target data/akt-demo/target --source data/akt-demo/source \\
        --eval data/akt-demo/eval --name akt-fmnist

Target classes (default): Trouser, Pullover, Dress, Coat, Shirt; the source holds T-shirt/top, Sandal,
Sneaker, Bag and Ankle boot images, their labels dropped. Evaluation: every test image of the target
classes. A class name's "/" becomes " or " in a directory name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from zoo.data import FASHION_MNIST_CLASSES, encode_png, load_fashion_mnist  # noqa: E402

TARGET = ("Trouser", "Pullover", "Dress", "Coat", "Shirt")


def write_demo(out: Path, labels: int, source: int, target: Sequence[str] = TARGET, seed: int = 0) -> None:
    """out/target/<class>/*.png (``labels`` per class), out/source/*.png (``source`` images of the
    other classes), out/eval/<class>/*.png (the target classes' test images)."""
    unknown = sorted(set(target) - set(FASHION_MNIST_CLASSES))
    if unknown or len(set(target)) < 2:
        raise SystemExit(
            f"error: --target-classes must be >= 2 of {FASHION_MNIST_CLASSES}, got {list(target)}"
        )
    rng = np.random.default_rng(seed)
    x, y = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    ids = [FASHION_MNIST_CLASSES.index(c) for c in target]
    for c in ids:
        for split, xs, picked in (
            ("target", x, rng.choice(np.flatnonzero(y == c), labels, replace=False)),
            ("eval", x_test, np.flatnonzero(y_test == c)),
        ):
            d = out / split / FASHION_MNIST_CLASSES[c].replace("/", " or ")
            d.mkdir(parents=True, exist_ok=True)
            for i in picked:
                (d / f"{i}.png").write_bytes(encode_png(xs[i]))
    pool = np.flatnonzero(~np.isin(y, ids))
    (out / "source").mkdir(parents=True, exist_ok=True)
    for i in rng.choice(pool, min(source, len(pool)), replace=False):
        (out / "source" / f"{i}.png").write_bytes(encode_png(x[i]))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="directory to write target/, source/, eval/ into")
    p.add_argument("--labels", type=int, default=20, help="labelled images per target class (default 20)")
    p.add_argument("--source", type=int, default=2000, help="unlabelled source images (default 2000)")
    p.add_argument("--target-classes", nargs="+", default=list(TARGET), metavar="CLASS")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if any((args.out / d).exists() for d in ("target", "source", "eval")):
        print(
            f"error: {args.out} already holds target/, source/ or eval/: pick another --out", file=sys.stderr
        )
        return 2
    write_demo(args.out, args.labels, args.source, args.target_classes, args.seed)
    print(f"wrote {args.out}/target ({args.labels} per class), {args.out}/source, {args.out}/eval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
