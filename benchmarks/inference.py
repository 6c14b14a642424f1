"""Inference throughput of the Ray Data stage (`zoo.pipeline.inference.run_teacher_inference`) against a
plain in-process PyTorch loop over the same teachers and the same images, in the same run.

    python benchmarks/inference.py                       # 20k and 100k images, writes results/inference.md
    python benchmarks/inference.py --sizes 20000 --configs 1x2x512,2x1x512

Teachers: the demo zoo's architecture pool (zoo.demo.DEFAULT_ARCHS), freshly built with random weights
(throughput does not depend on the weights), each over 4 classes of Fashion-MNIST at 1x28x28. Images:
Fashion-MNIST training images (tiled past 60k), PNG-encoded in a transfer.parquet as the job writes it.

Both sides do the same work per batch: decode the PNGs, preprocess to each teacher's input contract,
run every teacher, lay out the logits on the union label space. The plain loop reads the Parquet file
in-process with all the machine's torch threads; Ray Data streams it through an actor pool.

Reported: end-to-end seconds (Ray: run_teacher_inference from the call to the file written, Ray
start-up excluded and given apart; plain: model loading and file reading included), and steady-state
throughput: images after the first output batch divided by the time after it (separates actor start-up
and model loading from the streaming rate). Ratio = Ray / plain. Every configuration is run `--repeats`
times, interleaved with the plain loop; the best of each is kept (the machine is shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "inference.md"


def build_teachers(root: Path, seed: int = 0):
    from zoo.architectures import build_model
    from zoo.artifacts import InputSpec, ModelSpec, save_model
    from zoo.data import FASHION_MNIST_CLASSES
    from zoo.demo import DEFAULT_ARCHS, parse_arch
    from zoo.labels import build_label_space
    from zoo.pipeline.teachers import Teacher

    rng = np.random.default_rng(seed)
    refs, classes = [], []
    spec_in = InputSpec(1, 28, 28, (0.286,), (0.353,))
    for i, arch_spec in enumerate(DEFAULT_ARCHS):
        arch, kw = parse_arch(arch_spec)
        cls = [FASHION_MNIST_CLASSES[c] for c in rng.choice(8, size=4, replace=False)]
        torch.manual_seed(seed + i)
        model = build_model(arch, len(cls), in_channels=1, image_size=28, **kw)
        spec = ModelSpec(arch=arch, classes=cls, input=spec_in, arch_kwargs=kw)
        d = save_model(model, spec, root / f"t{i}")
        refs.append(Teacher(f"t{i}-{arch_spec}", 1, Path(d), None, spec))
        classes.append(cls)
    return refs, build_label_space(classes, [r.name for r in refs])


def make_transfer(root: Path, n: int) -> Path:
    from zoo.data import load_fashion_mnist
    from zoo.pipeline.transfer import materialize_transfer_set

    images, _ = load_fashion_mnist("train")
    idx = np.arange(n) % len(images)
    return materialize_transfer_set(
        (images[idx], [f"img-{i}" for i in range(n)]), root / f"transfer-{n}.parquet"
    )


def plain_loop(transfer: Path, teachers, space, batch_size: int) -> dict:
    """The baseline: one process, all torch threads, the same per-batch work as the actors."""
    from zoo.pipeline.inference import TeacherPredictor, _artifact_blob

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    pred = TeacherPredictor(
        [{"name": t.name, "files": _artifact_blob(t.model_dir)} for t in teachers],
        space.to_dict(),
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    pf = pq.ParquetFile(transfer)
    rows, first, first_rows = 0, None, 0
    outs = []
    for batch in pf.iter_batches(batch_size=batch_size, columns=["id", "image"]):
        out = pred(
            {
                "id": batch.column(0).to_numpy(zero_copy_only=False),
                "image": batch.column(1).to_numpy(zero_copy_only=False),
            }
        )
        outs.append(out["logits"])
        rows += len(out["id"])
        if first is None:
            first, first_rows = time.perf_counter(), rows
    end = time.perf_counter()
    return {"start": t0, "first_batch": first, "first_rows": first_rows, "end": end, "rows": rows}


def ray_stage(transfer: Path, teachers, space, out: Path, actors: int, threads: int, batch_size: int) -> dict:
    """The product's stage, timed from its `progress` callback (rows written by the driver)."""
    from zoo.pipeline.inference import run_teacher_inference

    stats: dict = {"start": time.perf_counter()}

    def progress(rows: int) -> None:
        if "first_batch" not in stats:
            stats.update(first_batch=time.perf_counter(), first_rows=rows)

    run_teacher_inference(
        transfer, teachers, space, out, batch_size=batch_size, concurrency=actors, num_threads=threads,
        progress=progress,
    )  # fmt: skip
    stats.update(end=time.perf_counter(), rows=pq.ParquetFile(out).metadata.num_rows)
    return stats


def rates(s: dict) -> tuple[float, float]:
    """(end-to-end seconds, steady-state images/s). Steady state: images written after the first
    written batch / time from it to the last one (the driver receives rows in bursts, so this is a
    lower bound of the actors' own rate; plain loop: the same, batch by batch)."""
    total = s["end"] - s["start"]
    steady_t = s["end"] - s["first_batch"]
    steady = (s["rows"] - s["first_rows"]) / steady_t if steady_t > 0 else float("nan")
    return total, steady


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20000,100000")
    p.add_argument(
        "--configs",
        default="1x2x512,2x1x512,2x1x1024",
        help="Ray configurations ACTORSxTHREADSxBATCH, comma-separated",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=None, help="Ray logical CPUs (default max(4, 2 x cores))")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    sizes = [int(s) for s in args.sizes.split(",")]
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    load0 = os.getloadavg()
    t_ray = time.perf_counter()
    ray.init(
        num_cpus=args.num_cpus or max(4, 2 * (os.cpu_count() or 1)),
        include_dashboard=False,
        log_to_driver=False,
    )
    ray_startup = time.perf_counter() - t_ray
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        root = Path(tmp)
        teachers, space = build_teachers(root)
        for n in sizes:
            transfer = make_transfer(root, n)
            best_plain = None
            best = {}
            for rep in range(args.repeats):
                plain = rates(plain_loop(transfer, teachers, space, configs[0][2]))
                best_plain = plain if best_plain is None or plain[1] > best_plain[1] else best_plain
                print(f"n={n} rep={rep} plain: {plain[0]:.1f}s, {plain[1]:.0f} img/s", flush=True)
                for cfg in configs:
                    r = rates(ray_stage(transfer, teachers, space, root / "logits.parquet", *cfg))
                    if cfg not in best or r[1] > best[cfg][1]:
                        best[cfg] = r
                    print(f"n={n} rep={rep} ray {cfg}: {r[0]:.1f}s, {r[1]:.0f} img/s", flush=True)
            for cfg, r in best.items():
                rows.append({"n": n, "cfg": cfg, "ray": r, "plain": best_plain})
    ray.shutdown()
    load1 = os.getloadavg()
    write_markdown(Path(args.out), rows, ray_startup, load0, load1, args)
    print(Path(args.out).read_text())
    return 0


def write_markdown(path: Path, rows, ray_startup: float, load0, load1, args) -> None:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    lines = [
        "# Inference: Ray Data stage vs a plain PyTorch loop",
        "",
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `python benchmarks/inference.py "
        f"--sizes {args.sizes} --configs {args.configs} --repeats {args.repeats}` on {platform.node()}: "
        f"{os.cpu_count()} cores, {dev}, torch {torch.__version__}. Load average before/after: "
        f"{load0[0]:.1f} / {load1[0]:.1f} (the machine is shared; best of {args.repeats} interleaved runs).",
        "",
        "Teachers: the demo zoo's 5 architectures (`zoo.demo.DEFAULT_ARCHS`), random weights, "
        "4 classes each, 1x28x28. Images: Fashion-MNIST PNGs from a transfer.parquet. Per batch both "
        "sides decode, preprocess per teacher, run all teachers and lay out [B, N, L].",
        "",
        f"Ray start-up (`ray.init`, not included below): {ray_startup:.1f} s.",
        "",
        "| images | Ray config (actors x threads x batch) | plain e2e s | Ray e2e s | e2e ratio "
        "| plain steady img/s | Ray steady img/s | steady ratio |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        (pe, ps), (re_, rs) = r["plain"], r["ray"]
        a, t, b = r["cfg"]
        lines.append(
            f"| {r['n']} | {a} x {t} x {b} | {pe:.1f} | {re_:.1f} | {pe / re_:.2f} | {ps:.0f} "
            f"| {rs:.0f} | {rs / ps:.2f} |"
        )
    lines += [
        "",
        "e2e ratio = plain seconds / Ray seconds; steady ratio = Ray img/s / plain img/s (target >= 0.8).",
        "Steady state: images after the first output batch / time after it.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
