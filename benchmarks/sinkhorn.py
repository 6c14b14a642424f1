"""Our batched log-domain Sinkhorn (`zoo.assess.sinkhorn`) against POT, for value agreement and speed.

For each B (samples) and m x n (teacher x student classes): B random problems (teacher and student
probabilities at tau = 3 from Gaussian logits of scale 3, a cost matrix with entries in [0, 2] as
cost_matrix(normalisation="l2") gives), eps = 0.1, a fixed number of iterations (no early stop, so every
solver does the same work). Solvers, all in one process:

- ours: zoo.assess.sinkhorn in float32 and float64 (torch, batched);
- POT ot.sinkhorn2, looped over samples (numpy float64, exp kernel; it returns <T, M> only);
- POT ot.bregman.sinkhorn_log, looped over samples (numpy float64, log domain);
- POT ot.batch.solve_batch (POT >= 0.9.6), batched, torch backend, method "log_sinkhorn" and "sinkhorn"
  (exp kernel: underflows in float32 once M / eps > ~87; fine on these [0, 2] costs).

POT's other multi-problem entry point, ot.sinkhorn2 with b of shape [n, K], shares one source histogram
across the K problems, which is not our setting (p_t differs per sample), so it is not measured.
Looped solvers run on the first --loop-samples samples only; their samples/s is extrapolated. "speed-up"
is the solver's time per sample over ours (same dtype, float64 for the numpy loops) per sample: > 1 means
ours is faster. "max |dvalue|" compares the entropic value <T, M> + eps sum T log T (<T, M> for
ot.sinkhorn2) with ours in float64 on the same samples.

    nice -n 5 .venv/bin/python benchmarks/sinkhorn.py [--batches 256,4096] [--shapes 5x5,10x50] [--write]

Prints a markdown table; --write also writes benchmarks/results/sinkhorn.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ot
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.assess import sinkhorn  # noqa: E402

SOLVER = importlib.import_module("zoo.assess.sinkhorn")  # the module (the package exports the function)

EPS = 0.1
TAU = 3.0
OURS = "ours zoo.assess.sinkhorn"
OURS_LSE = "ours, forced to the logsumexp path"
RESULTS = ROOT / "benchmarks" / "results" / "sinkhorn.md"


def make_problem(b: int, m: int, n: int, seed: int, device: torch.device):
    g = torch.Generator().manual_seed(seed)
    p_t = torch.softmax(3 * torch.randn(b, m, generator=g, dtype=torch.float64) / TAU, 1)
    p_s = torch.softmax(3 * torch.randn(b, n, generator=g, dtype=torch.float64) / TAU, 1)
    cost = 2 * torch.rand(m, n, generator=g, dtype=torch.float64)
    return p_t.to(device), p_s.to(device), cost.to(device)


@contextlib.contextmanager
def lse_path_only():
    """Make zoo.assess.sinkhorn take its torch.logsumexp path whatever the cost's spread."""
    saved = dict(SOLVER.KERNEL_SPREAD)
    SOLVER.KERNEL_SPREAD.update({dtype: 0.0 for dtype in saved})
    try:
        yield
    finally:
        SOLVER.KERNEL_SPREAD.update(saved)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, object]:
    out = fn()  # warm-up (allocations, kernels)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), out


def entropic_value(plan: np.ndarray, cost: np.ndarray) -> float:
    nz = plan > 0
    return float((plan * cost).sum() + EPS * (plan[nz] * np.log(plan[nz])).sum())


def run_config(b: int, m: int, n: int, args, device: torch.device) -> list[dict]:
    p_t, p_s, cost = make_problem(b, m, n, seed=0, device=device)
    k = min(args.loop_samples, b)
    it = args.n_iter
    rows = []

    # ours, both dtypes; float64 is the reference for value agreement
    ours, values = {}, {}
    for dtype in (torch.float64, torch.float32):
        a, s, c = p_t.to(dtype), p_s.to(dtype), cost.to(dtype)
        seconds, (value, alpha, beta) = best_time(
            lambda a=a, s=s, c=c: sinkhorn(a, s, c, EPS, it), args.repeats, device
        )
        ours[dtype], values[dtype] = seconds, value.double().cpu().numpy()
        if dtype == torch.float64:
            plan = torch.exp((alpha[:, :, None] + beta[:, None, :] - cost) / EPS)
            ref_linear = (plan * cost).sum((1, 2)).cpu().numpy()
    ref_value = values[torch.float64]
    for dtype in (torch.float32, torch.float64):
        diff = float(np.abs(values[dtype] - ref_value).max())
        rows.append(
            dict(solver=OURS, dtype=str(dtype)[6:], seconds=ours[dtype], n=b, speedup=None, diff=diff)
        )
    # our other path, the one costs with a large spread (M / eps > 60 apart) take: torch.logsumexp
    for dtype in (torch.float32, torch.float64):
        a, s, c = p_t.to(dtype), p_s.to(dtype), cost.to(dtype)
        with lse_path_only():
            seconds, (value, _, _) = best_time(
                lambda a=a, s=s, c=c: sinkhorn(a, s, c, EPS, it), args.repeats, device
            )
        diff = float(np.abs(value.double().cpu().numpy() - ref_value).max())
        rows.append(
            dict(
                solver=OURS_LSE,
                dtype=str(dtype)[6:],
                seconds=seconds,
                n=b,
                diff=diff,
                speedup=seconds / ours[dtype],
            )
        )

    a_np, s_np, c_np = p_t.cpu().numpy(), p_s.cpu().numpy(), cost.cpu().numpy()
    loops = {
        "POT ot.sinkhorn2 (loop)": lambda i: ot.sinkhorn2(
            a_np[i], s_np[i], c_np, EPS, numItermax=it, stopThr=0.0
        ),
        "POT ot.bregman.sinkhorn_log (loop)": lambda i: ot.bregman.sinkhorn_log(
            a_np[i], s_np[i], c_np, EPS, numItermax=it, stopThr=0.0
        ),
    }
    for name, solve in loops.items():
        seconds, outs = best_time(
            lambda solve=solve: [solve(i) for i in range(k)], args.repeats, torch.device("cpu")
        )
        if "sinkhorn2" in name:
            diff = max(abs(float(outs[i]) - ref_linear[i]) for i in range(k))
        else:
            diff = max(abs(entropic_value(outs[i], c_np) - ref_value[i]) for i in range(k))
        rows.append(
            dict(
                solver=name,
                dtype="float64",
                seconds=seconds * b / k,
                n=k,
                diff=diff,
                speedup=seconds / k / (ours[torch.float64] / b),
            )
        )

    for method in ("log_sinkhorn", "sinkhorn"):
        for dtype in (torch.float32, torch.float64):
            batch_cost = cost.to(dtype).expand(b, m, n).contiguous()
            a, s = p_t.to(dtype), p_s.to(dtype)

            def solve(batch_cost=batch_cost, a=a, s=s, method=method):
                return ot.batch.solve_batch(
                    batch_cost, EPS, a, s, max_iter=it, tol=0.0, method=method, grad="detach"
                )

            seconds, res = best_time(solve, args.repeats, device)
            diff = float(np.abs(res.value.double().cpu().numpy() - ref_value).max())
            rows.append(
                dict(
                    solver=f"POT ot.batch.solve_batch {method}",
                    dtype=str(dtype)[6:],
                    seconds=seconds,
                    n=b,
                    diff=diff,
                    speedup=seconds / ours[dtype],
                )
            )
    for row in rows:
        row.update(B=b, shape=f"{m} x {n}")
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| B | m x n | solver | dtype | seconds (for B) | samples/s | speed-up of ours | max abs(dvalue) |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speed = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        timed = "" if r["n"] == r["B"] else f" (timed on {r['n']})"
        lines.append(
            f"| {r['B']} | {r['shape']} | {r['solver']} | {r['dtype']} | {r['seconds']:.4f}{timed} | "
            f"{r['B'] / r['seconds']:,.0f} | {speed} | {r['diff']:.1e} |"
        )
    return "\n".join(lines)


def describe(command: str, args, device: torch.device) -> str:
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    versions = f"Python {platform.python_version()}, torch {torch.__version__}, POT {ot.__version__}"
    lines = [
        "# Sinkhorn: zoo.assess.sinkhorn (batched, log domain) against POT",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, torch threads {args.threads}, "
        f"device {device}{gpu}; {versions}, numpy {np.__version__}",
        f"- load average at the end: {os.getloadavg()[0]:.1f}",
        f"- problems: eps = {EPS}, {args.n_iter} iterations for every solver (no early stop), tau = {TAU}, "
        f"cost entries in [0, 2], seed 0; best of {args.repeats} repeats after a warm-up",
        "- speed-up of ours: the solver's seconds per sample over ours (same dtype; float64 for the numpy "
        "loops); > 1 means ours is faster. max abs(dvalue): against ours in float64 (ot.sinkhorn2: <T, M>)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="256,4096", help="comma-separated B values")
    parser.add_argument("--shapes", default="5x5,10x50", help="comma-separated m x n shapes")
    parser.add_argument("--n-iter", type=int, default=100, help="Sinkhorn iterations (fixed, no early stop)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept")
    parser.add_argument("--loop-samples", type=int, default=256, help="samples timed for the looped solvers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        for shape in args.shapes.split(","):
            m, n = (int(x) for x in shape.lower().split("x"))
            rows.extend(run_config(b, m, n, args, device))
            print(f"done B={b} {m}x{n}", file=sys.stderr, flush=True)
    command = "python benchmarks/sinkhorn.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = describe(command.strip(), args, device)
    text = header + table(rows) + "\n"
    print(text)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
