"""Throughput and peak memory of the batched soft-label estimators (`zoo.unify.estimate_soft_labels`)
next to a per-sample scipy / numpy reference run on a subset, side by side in one process.

For each (N, L) and method: samples/s on B samples, peak memory above the baseline (CPU: resident set
sampled every 2 ms; CUDA: torch.cuda.max_memory_allocated), the per-sample reference's samples/s on a
subset, the ratio, and the largest |q - q_ref| on that subset. References: SD a numpy loop, CE scipy
BFGS on Eq. 9 with the analytic gradient, MF-LF scipy.linalg.lstsq, MF-P / MF-LU the same ALS
(Algorithms 1-2, same tolerances) one sample at a time in numpy. "x floor" is the method's time over
the time of one copy of the input tensor (a memory-bandwidth floor).
Targets (issue 2): CE >= 100x the per-sample scipy loop; MF-LF and SD bound by memory bandwidth.

    nice -n 5 .venv/bin/python benchmarks/estimators.py [--batch 100000] [--configs 5x10,10x50,20x100]

Writes benchmarks/results/estimators.md (and prints it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
import torch
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.unify import METHODS, ConvergenceWarning, estimate_soft_labels  # noqa: E402
from zoo.unify._common import components  # noqa: E402

T = 3.0


# ------------------------------------------------------------------------------------------ data


def make_problem(
    b: int, n: int, l_: int, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A connected random mask (each teacher sees L/5..L/2 classes, at least 2) and noisy teacher logits
    around one true logit vector per sample (per-teacher scale 0.7-1.3, noise sd 0.5, shift sd 5)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        sizes = torch.randint(max(2, l_ // 5), max(2, l_ // 2) + 1, (n,), generator=g)
        mask = torch.zeros(n, l_, dtype=torch.bool)
        for i in range(n):
            mask[i, torch.randperm(l_, generator=g)[: int(sizes[i])]] = True
        if bool(mask.any(0).all()) and components(mask)[2] == 1:
            break
    u = torch.randn(b, 1, l_, generator=g) * 2.0
    scale = torch.rand(1, n, 1, generator=g) * 0.6 + 0.7
    logits = T * (
        u * scale + 0.5 * torch.randn(b, n, l_, generator=g) + 5 * torch.randn(b, n, 1, generator=g)
    )
    logits = torch.where(mask, logits, torch.zeros(()))
    return logits.to(device), mask.to(device)


# ------------------------------------------------------------------------------ references (numpy)


def _groups(z: np.ndarray, mask: np.ndarray):
    out = []
    for i in range(mask.shape[0]):
        idx = np.flatnonzero(mask[i])
        zi = z[i, idx]
        e = np.exp(zi - zi.max())
        out.append((idx, e / e.sum()))
    return out


def ref_sd(z, mask):
    q = np.zeros(mask.shape[1])
    for idx, p in _groups(z, mask):
        q[idx] += p / mask.shape[0]
    return q


def _ce_fun(u, groups):
    total, grad = 0.0, np.zeros_like(u)
    for idx, p in groups:
        uu = u[idx]
        m = uu.max()
        e = np.exp(uu - m)
        total -= float(p @ (uu - m - np.log(e.sum())))
        grad[idx] += e / e.sum() - p
    return total, grad


def ref_ce(z, mask):
    res = minimize(
        _ce_fun,
        np.zeros(mask.shape[1]),
        args=(_groups(z, mask),),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-8},
    )
    q = np.exp(res.x - res.x.max())
    return q / q.sum()


def ref_mf_lf(z, mask):
    n, l_ = mask.shape
    rows = np.argwhere(mask)
    a = np.zeros((len(rows), l_ + n))
    a[np.arange(len(rows)), rows[:, 1]] = 1
    a[np.arange(len(rows)), l_ + rows[:, 0]] = 1
    sol = scipy.linalg.lstsq(a, z[rows[:, 0], rows[:, 1]])[0][:l_]
    q = np.exp(sol - sol.max())
    return q / q.sum()


def ref_mf_p(z, mask, tol=1e-3, max_iter=3000):
    m = mask.astype(float)
    p = np.zeros(mask.shape)
    for i, (idx, pi) in enumerate(_groups(z, mask)):
        p[i, idx] = pi
    v = np.ones(mask.shape[0])
    u = np.zeros(mask.shape[1])
    for _ in range(max_iter):
        u_new = np.maximum((p * v[:, None]).sum(0) / np.maximum((m * v[:, None] ** 2).sum(0), 1e-300), 0)
        u_new /= u_new.sum()
        v_new = np.maximum((p * u_new).sum(1) / np.maximum((m * u_new**2).sum(1), 1e-300), 0)
        rmse = np.sqrt(np.mean(np.concatenate([u_new - u, v_new - v]) ** 2))
        u, v = u_new, v_new
        if rmse < tol:
            break
    return u


def ref_mf_lu(z, mask, lam=0.01, tol=1e-3, max_iter=3000):
    m = mask.astype(float)
    zz = z * m
    c = zz.sum(1) / m.sum(1)
    v = np.ones(mask.shape[0])
    u = np.zeros(mask.shape[1])
    for _ in range(max_iter):
        r = (zz - c[:, None]) * m
        u_new = (r * v[:, None]).sum(0) / (lam + (m * v[:, None] ** 2).sum(0))
        v_new = np.maximum((r * u_new).sum(1) / (lam + (m * u_new**2).sum(1)), 0)
        c = ((zz - np.outer(v_new, u_new)) * m).sum(1) / m.sum(1)
        rmse = np.sqrt(np.mean(np.concatenate([u_new - u, v_new - v]) ** 2))
        u, v = u_new, v_new
        if rmse < tol:
            break
    q = np.exp(u - u.max())
    return q / q.sum()


REFERENCES = {
    "sd": ("numpy loop", ref_sd),
    "ce": ("scipy BFGS", ref_ce),
    "mf-p": ("numpy ALS loop", ref_mf_p),
    "mf-lu": ("numpy ALS loop", ref_mf_lu),
    "mf-lf": ("scipy lstsq", ref_mf_lf),
}


# ---------------------------------------------------------------------------------------- measure


class PeakRSS:
    """Peak resident set size above the level at entry, sampled every 2 ms in a thread."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, self._rss())

    @property
    def delta(self) -> int:
        return self.peak - self.base


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_method(logits, mask, method, device) -> tuple[torch.Tensor, float, int, int]:
    """(q, seconds, peak bytes, #unconverged-warnings) for one full-batch call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            sync(device)
            t0 = time.perf_counter()
            q = estimate_soft_labels(logits, mask, method)
            sync(device)
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() - base
        else:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                q = estimate_soft_labels(logits, mask, method)
                seconds = time.perf_counter() - t0
            peak = mem.delta
    return q, seconds, peak, len([w for w in caught if issubclass(w.category, ConvergenceWarning)])


def floor_seconds(logits: torch.Tensor, device: torch.device) -> float:
    best = float("inf")
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        copy = logits.clone()
        sync(device)
        best = min(best, time.perf_counter() - t0)
        del copy
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--configs", default="5x10,10x50,20x100", help="comma-separated NxL")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--als-batch", type=int, default=0, help="B for mf-p / mf-lu (default: --batch)")
    ap.add_argument("--ref-samples", type=int, default=200, help="subset size of the per-sample reference")
    ap.add_argument("--ref-seconds", type=float, default=30.0, help="time budget of each reference run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "estimators.md"))
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    methods = [m for m in args.methods.split(",") if m]
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]

    rows = []
    # The closed-form / Newton methods first on every (N, L), then the ALS ones (slow by design) on
    # --als-batch samples, so that a run cut short still has the targets' rows. The markdown is
    # rewritten after every (N, L).
    passes = [
        ([m for m in methods if m in ("sd", "mf-lf", "ce")], args.batch),
        ([m for m in methods if m in ("mf-p", "mf-lu")], args.als_batch or args.batch),
    ]
    for pass_methods, batch in passes:
        for n, l_ in configs:
            if pass_methods:
                rows += measure_config(n, l_, batch, pass_methods, args, device)
                write_markdown(rows, args, device)


def measure_config(n: int, l_: int, batch: int, methods, args, device) -> list[dict]:
    rows = []
    logits, mask = make_problem(batch, n, l_, args.seed, device)
    floor = floor_seconds(logits, device)
    estimate_soft_labels(logits[:64], mask, "ce")  # warm-up (first-call overheads)
    z_all = logits[: args.ref_samples].double().cpu().numpy() / T
    m_np = mask.cpu().numpy()
    for method in methods:
        q, seconds, peak, warned = run_method(logits, mask, method, device)
        name, ref = REFERENCES[method]
        q_ref = []
        t0 = time.perf_counter()
        # Reference on the first samples, within a time budget (at least 3 samples).
        while len(q_ref) < len(z_all) and (len(q_ref) < 3 or time.perf_counter() - t0 < args.ref_seconds):
            q_ref.append(ref(z_all[len(q_ref)], m_np))
        ref_seconds = time.perf_counter() - t0
        sub = len(q_ref)
        err = float(np.abs(q[:sub].double().cpu().numpy() - np.stack(q_ref)).max())
        row = {
            "N x L": f"{n} x {l_}",
            "B": batch,
            "method": method,
            "samples/s": batch / seconds,
            "seconds": seconds,
            "x floor": seconds / floor,
            "peak MiB": peak / 2**20,
            "reference": f"{name} ({sub})",
            "ref samples/s": sub / ref_seconds,
            "speed-up": (batch / seconds) / (sub / ref_seconds),
            "max |q - q_ref|": err,
            "note": "ConvergenceWarning (max_iter hit on some samples)" if warned else "",
        }
        rows.append(row)
        print(
            " | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
            flush=True,
        )
    return rows


def write_markdown(rows, args, device) -> None:
    lines = [
        "# Soft-label estimators: batched throughput vs a per-sample reference",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `nice -n 5 .venv/bin/python benchmarks/estimators.py --batch {args.batch} "
        f"--als-batch {args.als_batch} --configs {args.configs} --ref-samples {args.ref_samples} "
        f"--ref-seconds {args.ref_seconds} --device {args.device} --threads {args.threads}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, torch threads "
        f"{torch.get_num_threads()}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"; Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}",
        f"- load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared; timings are noisy)",
        f"- data: B samples per (N, L) (column B), float32 logits, T = {T}, seed {args.seed}: noisy "
        "teachers around one true logit vector per sample (see make_problem)",
        "- x floor: the method's time over the time of one copy of the input tensor.",
        "",
        "| N x L | B | method | samples/s | seconds | x floor | peak MiB | reference (subset) "
        "| ref samples/s | speed-up | max abs(q - q_ref) | note |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['N x L']} | {r['B']} | {r['method']} | {r['samples/s']:,.0f} | {r['seconds']:.2f} "
            f"| {r['x floor']:.1f} "
            f"| {r['peak MiB']:.0f} | {r['reference']} | {r['ref samples/s']:,.0f} | {r['speed-up']:,.0f}x "
            f"| {r['max |q - q_ref|']:.1e} | {r['note']} |"
        )
    lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
