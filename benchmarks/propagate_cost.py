"""Seconds the propagation lever adds to the soft-labels stage, at the default job's size (20k transfer
images) and at 100k.

The stage itself (`zoo.pipeline.soft_labels.write_soft_labels`: read logits.parquet, estimate q, write
soft_labels.parquet) is timed with the default job's recipe without propagation and with it (then it
also reads features.parquet, joins the teachers' features, projects them to 64 principal components,
builds the blocked kNN graph, k = 10, and spreads q, alpha = 0.8); the difference is the lever's cost.
The breakdown of the lever (join + PCA, kNN, spreading) is timed apart on the same features. Inputs
are synthetic, of the demo zoo's shape (5 teachers over 8 classes, masks of the demo split, feature
widths 128 + 64 + 256 + 32 + 96 as the demo's teachers give, stored as the inference stage stores
them): the cost depends on the sizes only. One process, the torch threads given (default 1), CPU or
CUDA. Take the figures on an idle machine.

    python benchmarks/propagate_cost.py [--sizes 20000 100000] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from zoo.config import load_config  # noqa: E402
from zoo.labels import build_label_space  # noqa: E402
from zoo.pipeline.soft_labels import write_soft_labels  # noqa: E402
from zoo.pipeline.storage import vector_column, write_parquet_atomic  # noqa: E402
from zoo.unify.propagate import join_features, knn_graph, label_spreading  # noqa: E402

WIDTHS = (128, 64, 256, 32, 96)  # the demo zoo's teachers' feature sizes (split_head)
# The demo zoo's teachers' classes (seed 0): 5 teachers over 8 union classes.
CLASSES = [["t", "sa", "sn", "ab"], ["t", "d", "sa", "sn", "ba"], ["t", "p", "sa", "ba"], ["t", "tr", "p"],
           ["sn", "ba", "ab"]]  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_inputs(n: int, root: Path) -> tuple[Path, Path]:
    """Synthetic logits.parquet and features.parquet of n images, as the inference stage writes them."""
    space = build_label_space(CLASSES, [f"t{i}" for i in range(len(CLASSES))])
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(n, space.num_teachers, space.num_classes, generator=g) * space.mask
    ids = pa.array([f"s{i}" for i in range(n)], pa.string())
    teachers = json.dumps([{"name": t, "version": 1, "run_id": None} for t in space.teachers])
    meta = {
        "zoo.label_space": json.dumps(space.to_dict()),
        "zoo.mask": json.dumps(space.mask.tolist()),
        "zoo.teachers": teachers,
    }
    logits = write_parquet_atomic(
        pa.table({"id": ids, "logits": vector_column(z.reshape(n, -1).numpy())}),
        root / "logits.parquet",
        meta,
    )
    feats = [
        {"name": t, "version": 1, "column": f"f{i}", "dim": d}
        for i, (t, d) in enumerate(zip(space.teachers, WIDTHS))
    ]
    cols = {f["column"]: vector_column(torch.randn(n, f["dim"], generator=g).half().numpy()) for f in feats}
    meta = {"zoo.features": json.dumps(feats), "zoo.teachers": teachers}
    features = write_parquet_atomic(pa.table({"id": ids, **cols}), root / "features.parquet", meta)
    return logits, features


def stage_seconds(n: int, root: Path) -> dict[str, float]:
    """The soft-labels stage (the default job's recipe) without and with propagation, in seconds."""
    logits, features = write_inputs(n, root)
    names = [f"t{i}" for i in range(len(CLASSES))]
    out = {}
    for name, on in (("without", False), ("with", True)):
        recipe = load_config(overrides={"propagate": on}).recipe(names)
        t0 = time.perf_counter()
        write_soft_labels(logits, root / f"q-{name}.parquet", recipe, features_path=features)
        out[name] = time.perf_counter() - t0
    out["added"] = out["with"] - out["without"]
    return out


def lever_seconds(n: int, device: str, k: int = 10, dim: int = 64, alpha: float = 0.8) -> dict[str, float]:
    """The lever's parts on random features of the demo's widths, on ``device``."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, d, generator=g).to(device) for d in WIDTHS]
    q = torch.softmax(3 * torch.randn(n, 8, generator=g), -1).to(device)
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
    return {"join_pca": t1 - t0, "knn": t2 - t1, "spreading": t3 - t2, "total": t3 - t0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--device", default="cpu", help="for the lever's breakdown (the stage runs on the CPU)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
    print(
        "| images | stage without (s) | stage with (s) | added (s) | join + PCA (s) | kNN (s) "
        "| spreading (s) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="propagate-cost-") as tmp:
            s = stage_seconds(n, Path(tmp))
        c = lever_seconds(n, args.device)
        print(
            f"| {n} | {s['without']:.2f} | {s['with']:.2f} | {s['added']:.2f} | {c['join_pca']:.2f} | "
            f"{c['knn']:.2f} | {c['spreading']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
