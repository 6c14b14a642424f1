"""Seconds the propagation lever (`zoo.unify.propagate`) adds to the soft-labels stage, at the default
job's size (20k transfer images) and at 100k: join the 5 demo teachers' penultimate features (widths
128 + 64 + 256 + 32 + 96, as the demo zoo's), project to 64 principal components, the blocked kNN
graph (k = 10), and label spreading (alpha = 0.8, the default number of steps). Random features and
soft labels of the demo's shape (the cost depends on the sizes only); one process, the torch threads
given (default 1), CPU or CUDA. Take the figures on an idle machine.

    python benchmarks/propagate_cost.py [--sizes 20000 100000] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from zoo.unify.propagate import join_features, knn_graph, label_spreading  # noqa: E402

WIDTHS = (128, 64, 256, 32, 96)  # the demo zoo's teachers' feature sizes (split_head)
CLASSES = 8


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cost(n: int, device: str, k: int = 10, dim: int = 64, alpha: float = 0.8) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, d, generator=g).to(device) for d in WIDTHS]
    q = torch.softmax(3 * torch.randn(n, CLASSES, generator=g), -1).to(device)
    out: dict[str, float] = {}
    _sync(device)
    t0 = time.perf_counter()
    x = join_features(feats, dim)
    _sync(device)
    t1 = time.perf_counter()
    idx, sim = knn_graph(x, k)
    _sync(device)
    t2 = time.perf_counter()
    label_spreading(q, idx, sim, alpha)
    _sync(device)
    t3 = time.perf_counter()
    out.update(join_pca=t1 - t0, knn=t2 - t1, spreading=t3 - t2, total=t3 - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
    print("| images | join + PCA (s) | kNN (s) | spreading (s) | total (s) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in args.sizes:
        c = cost(n, args.device)
        print(
            f"| {n} | {c['join_pca']:.2f} | {c['knn']:.2f} | {c['spreading']:.2f} | {c['total']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
