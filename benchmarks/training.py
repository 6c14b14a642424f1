"""Training throughput of the Ray Train stage (`zoo.pipeline.training.train_student`) against a plain
PyTorch loop: same model, initial weights, data, batch size, batch order, epochs and torch threads,
measured side by side in one run.

Reported: end-to-end wall time (Ray: the whole `train_student` call, fit() start-up and saving
included; plain: decode + preprocess + training), and the steady-state per-epoch throughput (median
over epochs 2..E of samples/s; Ray's start-up is excluded there, see RAY-NOTES: ~18 s per fit()).
Target: Ray steady-state >= 0.8x the plain loop.

    .venv/bin/python benchmarks/training.py [--n 10000] [--epochs 5] [--batch-size 128]

Writes benchmarks/results/training.md (and prints the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.artifacts import InputSpec, ModelSpec, build_net  # noqa: E402
from zoo.data import FASHION_MNIST_CLASSES, load_fashion_mnist, synthetic_images  # noqa: E402
from zoo.pipeline.soft_labels import load_targets  # noqa: E402
from zoo.pipeline.training import train_student  # noqa: E402
from zoo.pipeline.transfer import load_transfer_images, materialize_transfer_set  # noqa: E402
from zoo.train import Schedule, epoch_order, train_epoch  # noqa: E402
from zoo.unify.recipe import Recipe, make_loss  # noqa: E402


def make_data(tmp: Path, n: int, seed: int) -> tuple[Path, Path, list[str], int]:
    """transfer.parquet (Fashion-MNIST train images, synthetic if absent) and soft_labels.parquet
    (smoothed one-hot labels: the benchmark measures throughput, not accuracy)."""
    try:
        images, labels = load_fashion_mnist("train")
        classes = list(FASHION_MNIST_CLASSES)
        images, labels = images[:n], labels[:n]
    except Exception:  # no data set on this machine: same sizes, synthetic pixels
        images, labels = synthetic_images(n, 10, size=28, seed=seed)
        classes = [f"class{i}" for i in range(10)]
    ids = [f"{i:06d}" for i in range(len(images))]
    transfer = materialize_transfer_set((images, ids), tmp / "transfer.parquet")
    q = np.full((len(ids), len(classes)), 0.1 / (len(classes) - 1), np.float32)
    q[np.arange(len(ids)), labels] = 0.9
    col = pa.FixedSizeListArray.from_arrays(pa.array(q.reshape(-1)), len(classes))
    meta = {"zoo.method": "sd", "zoo.mode": "e", "zoo.classes": json.dumps(classes)}
    soft = tmp / "soft_labels.parquet"
    pq.write_table(pa.table({"id": ids, "q": col}).replace_schema_metadata(meta), soft)
    return transfer, soft, classes, len(ids)


def plain_loop(cfg: tuple, transfer: Path, soft: Path, threads: int, device: str) -> dict:
    """The baseline: one process, the same data, model, optimiser, schedule, batch order and epoch
    (`zoo.train.train_epoch`)."""
    spec, schedule, recipe = cfg
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ids, images = load_transfer_images(transfer, spec.input)
    loss = make_loss(recipe, load_targets(soft, ids, spec.classes, recipe), device)
    images = images.to(device)
    torch.manual_seed(schedule.seed)
    model = build_net(spec).to(device)
    opt = schedule.make_optimizer(model.parameters())
    epoch_times = []
    for epoch in range(schedule.epochs):
        e0 = time.perf_counter()
        schedule.set_lr(opt, epoch)
        train_epoch(
            model, opt, images, loss, epoch_order(len(ids), schedule.seed, epoch), schedule.batch_size
        )
        if device == "cuda":
            torch.cuda.synchronize()
        epoch_times.append(time.perf_counter() - e0)
    return {"total_s": time.perf_counter() - t0, "epoch_s": epoch_times, "n": len(ids)}


def ray_run(cfg: tuple, transfer, soft, n: int, storage: Path, name: str, workers: int) -> dict:
    t0 = time.perf_counter()
    res = train_student(*cfg, transfer, soft, storage_path=storage, run_name=name, num_workers=workers)
    return {
        "total_s": time.perf_counter() - t0,
        "fit_s": res.metrics["fit_seconds"],
        # Per-epoch compute inside the workers; checkpoints and reports are counted apart.
        "epoch_s": [h["epoch_time_s"] for h in res.history],
        "overhead_s": res.metrics["overhead_s"],
        "n": n,
        "workers": res.metrics["num_workers"],
    }


def steady(run: dict) -> float:
    """Median samples/s over epochs 2..E (epoch 1 warms up allocators and caches)."""
    times = run["epoch_s"][1:] or run["epoch_s"]
    return run["n"] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="transfer-set size")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ddp", action=argparse.BooleanOptionalAction, default=True, help="also 2 CPU workers")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.md"))
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import ray

    cpus = os.cpu_count() or 1
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1"}},
    )
    spec_in = InputSpec(channels=1, height=28, width=28, mean=(0.2860,), std=(0.3530,))
    kwargs = {"width": args.width} if args.arch == "cnn" else {}
    schedule = Schedule(epochs=args.epochs, lr=0.05, batch_size=args.batch_size, seed=args.seed)
    recipe = Recipe(method="sd", mode="e", temperature=3.0)
    rows = []
    load_before = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            transfer, soft, classes, n = make_data(tmp, args.n, args.seed)
            cfg = (ModelSpec(args.arch, classes, spec_in, kwargs), schedule, recipe)
            # Side by side, interleaved: plain, Ray (1 worker, all threads), Ray (2 workers DDP,
            # CPU only), plain again; the plain runs bracket the Ray runs on a shared machine.
            threads = cpus
            plain_a = plain_loop(cfg, transfer, soft, threads, device)
            ray1 = ray_run(cfg, transfer, soft, n, tmp / "train", "w1", 1)
            ray2 = None
            if args.ddp and not gpu and cpus >= 2:
                ray2 = ray_run(cfg, transfer, soft, n, tmp / "train", "w2", 2)
            plain_b = plain_loop(cfg, transfer, soft, threads, device)
    finally:
        ray.shutdown()
    load_after = os.getloadavg()[0]
    base = statistics.mean([steady(plain_a), steady(plain_b)])
    base_total = statistics.mean([plain_a["total_s"], plain_b["total_s"]])

    def row(label, r, threads_desc):
        ratio = steady(r) / base
        epoch_s = statistics.median(r["epoch_s"][1:] or r["epoch_s"])
        return (
            f"| {label} | {threads_desc} | {r['total_s']:.1f} | {epoch_s:.2f} "
            f"| {steady(r):.0f} | {ratio:.2f}x | {base_total / r['total_s']:.2f}x |"
        )

    rows.append(row("plain PyTorch loop (run 1)", plain_a, f"1 process x {threads} threads"))
    rows.append(row("plain PyTorch loop (run 2)", plain_b, f"1 process x {threads} threads"))
    rows.append(row("Ray Train, 1 worker", ray1, f"1 worker x {threads} threads"))
    if ray2 is not None:
        rows.append(row("Ray Train, 2 workers (DDP, gloo)", ray2, "2 workers x 1 thread"))
    header = (
        "| run | parallelism | end-to-end s | median epoch s (epochs 2..E) | steady samples/s "
        "| steady ratio vs plain | end-to-end ratio vs plain |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    fit_note = (
        f"Ray 1 worker: fit() {ray1['fit_s']:.1f} s of {ray1['total_s']:.1f} s end-to-end, of which "
        f"checkpoints and reports {ray1['overhead_s']:.1f} s"
    )
    if ray2 is not None:
        fit_note += (
            f"; 2 workers: fit() {ray2['fit_s']:.1f} s of {ray2['total_s']:.1f} s "
            f"({ray2['overhead_s']:.1f} s)"
        )
    ok = steady(ray1) / base >= 0.8
    text = f"""# Training throughput: Ray Train stage vs a plain PyTorch loop

Command: `.venv/bin/python benchmarks/training.py --n {args.n} --epochs {args.epochs} \
--batch-size {args.batch_size}`
(written by `benchmarks/training.py`; {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}).

Config: student `{args.arch}` {kwargs}, 28x28x1 inputs (Fashion-MNIST train images, decoded
from PNG in transfer.parquet), {args.n} samples, batch {args.batch_size}, {args.epochs} epochs, SGD momentum
0.9, soft-label cross-entropy (mode e), seed {args.seed}; same initial weights and batch order in every
run. Device: {device}; {cpus} CPUs ({platform.processor() or platform.machine()}); torch {torch.__version__},
Ray {ray.__version__}; 1-min load average {load_before:.1f} before, {load_after:.1f} after (a shared
machine: the two plain runs bracket the Ray runs to show the drift). Steady state = median
samples/s over epochs 2..{args.epochs}; baseline = mean of the two plain runs ({base:.0f} samples/s,
{base_total:.1f} s end-to-end).

{header}
{chr(10).join(rows)}

{fit_note}. End-to-end includes Ray Train's fixed start-up (worker group, process group, per-worker
decode of the transfer set) and saving the student; it is amortised over longer runs.

Target (steady state, Ray Train 1 worker, same threads): >= 0.8x -> **{"met" if ok else "NOT met"}**
({steady(ray1) / base:.2f}x).
"""
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
