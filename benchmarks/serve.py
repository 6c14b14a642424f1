"""Benchmark of the inference service (issue 6): requests/s and p50/p99 latency at several client
concurrencies for three ways of serving the same registered model, in one run, over loopback:

- ``in-process``: threads calling the classifier directly (decode -> preprocess -> forward -> top-k);
- ``plain``: one FastAPI + uvicorn process (a subprocess) with the same API code and the same classifier,
  one request at a time through the model (no batching);
- ``serve``: the Ray Serve application of serving/app.py, 1 replica, dynamic batching.

Two models: the demo-like ``cnn`` at 28x28 grey (Fashion-MNIST PNGs) and ``resnet18`` at 224x224 RGB
(random weights, JPEG images). Every loop is bounded: a fixed number of requests and a time cap.

    .venv/bin/python benchmarks/serve.py                    # writes benchmarks/results/serve.md
    .venv/bin/python benchmarks/serve.py --models small --concurrency 1,8 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project's packages come first
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster, loopback only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# Before torch is imported: OpenMP reads this for every thread (torch.set_num_threads only sets the
# calling thread's), so in-process worker threads, the plain server and the Serve replica (whose
# workers inherit the environment) all run the model on the same number of threads.
if "--torch-threads" in sys.argv:
    os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--torch-threads") + 1]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

MODELS = {
    # name: (arch, channels, size, arch_kwargs, image format)
    "small": ("cnn", 1, 28, {}, "PNG"),
    "resnet18": ("resnet18", 3, 224, {}, "JPEG"),
}


# ----------------------------------------------------------------------------------------- set-up
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(registry, key: str, size: int, seed: int = 0) -> str:
    import torch

    from zoo.architectures import build_model
    from zoo.artifacts import InputSpec, ModelSpec
    from zoo.data import FASHION_MNIST_CLASSES

    arch, channels, _, kwargs, _ = MODELS[key]
    classes = list(FASHION_MNIST_CLASSES)
    torch.manual_seed(seed)
    model = build_model(arch, len(classes), in_channels=channels, image_size=size, **kwargs)
    mean, std = ((0.5,), (0.5,)) if channels == 1 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    spec = ModelSpec(
        arch=arch, classes=classes, input=InputSpec(channels, size, size, mean, std), arch_kwargs=kwargs
    )
    name = f"bench-{key}"
    registry.register_model(name, model, spec, aliases=("champion",))
    return name


def make_images(key: str, size: int, n: int = 32) -> list[bytes]:
    """Encoded request bodies: Fashion-MNIST test images for the small model (synthetic if the dataset
    is missing), smooth random colour pictures as JPEG for resnet18."""
    from PIL import Image

    rng = np.random.default_rng(0)
    _, channels, _, _, fmt = MODELS[key]
    if channels == 1:
        try:
            from zoo.data import load_fashion_mnist

            arrays = list(load_fashion_mnist("test")[0][:n])
        except Exception:
            arrays = list(rng.integers(0, 256, (n, size, size), dtype=np.uint8))
    else:
        arrays = []
        for _ in range(n):
            low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.int16)
            arrays.append(np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8))
    out = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


# ----------------------------------------------------------------------------------------- load
@dataclass
class Result:
    mode: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def merge(rounds: list[Result]) -> Result:
    """Rounds of one cell pooled: total requests over total time, all latencies."""
    return Result(
        rounds[0].mode,
        rounds[0].concurrency,
        sum(r.requests for r in rounds),
        sum(r.errors for r in rounds),
        sum(r.seconds for r in rounds),
        [x for r in rounds for x in r.latencies_ms],
    )


def load_in_process(
    classifier, bodies: list[bytes], concurrency: int, n: int, cap_s: float, max_pixels: int
) -> Result:
    """``concurrency`` threads calling the classifier on one decoded image each time."""
    from serving.inference import decode_image

    lock, counter, lat, errors = threading.Lock(), [0], [], [0]
    deadline = time.perf_counter() + cap_s

    def worker(i: int) -> None:
        while True:
            with lock:
                if counter[0] >= n or time.perf_counter() > deadline:
                    return
                counter[0] += 1
                k = counter[0]
            t0 = time.perf_counter()
            try:
                classifier.predict([decode_image(bodies[k % len(bodies)], max_pixels=max_pixels)], 5)
                with lock:
                    lat.append((time.perf_counter() - t0) * 1000)
            except Exception:
                with lock:
                    errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result("in-process", concurrency, len(lat), errors[0], time.perf_counter() - t0, lat)


async def _load_http(
    url: str, bodies: list[bytes], ctype: str, concurrency: int, n: int, cap_s: float, token: str
) -> Result:
    import aiohttp

    headers = {"Content-Type": ctype}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    state = {"sent": 0, "errors": 0}
    lat: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=max(cap_s, 60))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while state["sent"] < n and time.perf_counter() < deadline:
                state["sent"] += 1
                body = bodies[state["sent"] % len(bodies)]
                t0 = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/classify", data=body, headers=headers) as r:
                        await r.read()
                        if r.status == 200:
                            lat.append((time.perf_counter() - t0) * 1000)
                        else:
                            state["errors"] += 1
                except Exception:
                    state["errors"] += 1

        async def warm_up() -> None:
            try:
                async with session.post(f"{url}/v1/classify", data=bodies[0], headers=headers) as r:
                    await r.read()
            except aiohttp.ClientError:
                state["errors"] += 1

        # warm-up: one request per worker, not counted (connections, first batches)
        await asyncio.gather(*(warm_up() for _ in range(concurrency)))
        deadline = time.perf_counter() + cap_s  # the cap counts from the end of the warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return Result("", concurrency, len(lat), state["errors"], seconds, lat)


def load_http(
    mode: str, url: str, bodies: list[bytes], ctype: str, concurrency: int, n: int, cap_s: float, token: str
) -> Result:
    result = asyncio.run(_load_http(url, bodies, ctype, concurrency, n, cap_s, token))
    result.mode = mode
    return result


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the plain server exited with code {proc.returncode}")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


# ----------------------------------------------------------------------------------------- plain baseline
class PlainBackend:
    """The baseline's model side: the same classifier, each request on its own in a worker thread (what a
    plain FastAPI service with a blocking model does); no batching, no Ray."""

    def __init__(self, cfg):
        from serving.inference import ChampionTracker

        self.tracker = ChampionTracker(cfg)

    def classifier(self):
        return self.tracker.current

    async def classify(self, images, top_k):
        # FastAPI's own idiom for blocking work (what a sync endpoint does): a worker thread, so the
        # event loop keeps reading requests; no batching.
        return await asyncio.to_thread(self.tracker.current.predict, images, top_k)

    async def reload(self):
        return self.tracker.refresh()

    def model_status(self):
        return {"serving": self.tracker.status()}


def run_plain_server(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from serving.api import make_api
    from serving.config import ServeConfig
    from serving.inference import set_pixel_limit

    cfg = ServeConfig.from_args(json.loads(args.plain_server))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    set_pixel_limit(cfg.max_pixels)
    app = make_api(PlainBackend(cfg), cfg, title="plain baseline")
    # keep-alive as long as Serve's proxy (90 s): with uvicorn's 5 s default, a client reusing a connection
    # while the server is busy can race the keep-alive timer and see a disconnect
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, timeout_keep_alive=90
    )


def start_plain(cfg_args: dict, port: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--plain-server", json.dumps(cfg_args), "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg_args.get("torch_threads") or 1)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


# ----------------------------------------------------------------------------------------- report
def table(model: str, results: list[Result]) -> list[str]:
    plain = {r.concurrency: r.rps for r in results if r.mode == "plain"}
    lines = [
        f"### {model}",
        "",
        "| mode | concurrency | requests | errors | req/s | p50 ms | p99 ms | req/s vs plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(results, key=lambda r: (r.concurrency, ["in-process", "plain", "serve"].index(r.mode))):
        ratio = r.rps / plain[r.concurrency] if plain.get(r.concurrency) else float("nan")
        lines.append(
            f"| {r.mode} | {r.concurrency} | {r.requests} | {r.errors} | {r.rps:.1f} | {r.pct(0.5):.1f} | "
            f"{r.pct(0.99):.1f} | {ratio:.2f}x |"
        )
    return lines + [""]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}; load average at start {load[0]:.1f}"
    )


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small,resnet18", help=f"comma-separated among {', '.join(MODELS)}")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=600, help="requests per cell (mode x concurrency)")
    p.add_argument("--max-seconds", type=float, default=15.0, help="time cap per cell")
    p.add_argument("--resnet-size", type=int, default=224)
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads of every mode's model")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-s", type=float, default=0.0)
    p.add_argument("--modes", default="in-process,plain,serve")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all cells, mode order rotated")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"))
    p.add_argument("--plain-server", help=argparse.SUPPRESS)  # internal: run the baseline server
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plain_server:
        return run_plain_server(args)

    import torch

    from serving.inference import load_classifier
    from zoo.registry import Registry

    torch.set_num_threads(args.torch_threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = args.modes.split(",")
    keys = args.models.split(",")
    started = datetime.now(timezone.utc)
    header = machine()
    print(header, flush=True)
    sections: list[str] = []
    summary: list[str] = []

    with tempfile.TemporaryDirectory(prefix="zoo-bench-serve-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        registry = Registry(uri, cache_dir=Path(tmp) / "cache")
        serve_url = None
        if "serve" in modes:
            import ray
            from ray import serve

            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
            serve_port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
            serve_url = f"http://127.0.0.1:{serve_port}"
        try:
            for key in keys:
                size = args.resnet_size if key == "resnet18" else MODELS[key][2]
                name = register(registry, key, size)
                bodies = make_images(key, size)
                ctype = "image/png" if MODELS[key][4] == "PNG" else "image/jpeg"
                cfg_args = {
                    "name": name,
                    "tracking_uri": uri,
                    "cache_dir": str(Path(tmp) / "cache"),
                    "torch_threads": args.torch_threads,
                    "poll_interval_s": 0,
                    "max_batch_size": args.max_batch_size,
                    "batch_wait_timeout_s": args.batch_wait_s,
                    "max_ongoing_requests": max(64, 2 * args.max_batch_size),
                }
                # All servers up at once, modes interleaved per concurrency level and their order rotated
                # each round: on a shared machine the load drifts, and it must not favour one mode.
                clf = load_classifier(registry, name, alias="champion", device=torch.device("cpu"))
                proc, plain_url, app_name = None, None, f"bench-{key}"
                try:
                    if "plain" in modes:
                        port = free_port()
                        proc = start_plain(cfg_args, port)
                        plain_url = f"http://127.0.0.1:{port}"
                        wait_healthy(plain_url, 180, proc)
                    if serve_url is not None:
                        from ray import serve

                        from serving.app import build_app

                        serve.run(build_app(cfg_args), name=app_name, route_prefix="/", blocking=False)
                        wait_healthy(serve_url, 180)
                    runs: dict[tuple[str, int], list[Result]] = {}
                    for rnd in range(args.rounds):
                        for c in levels:
                            order = modes[rnd % len(modes) :] + modes[: rnd % len(modes)]
                            for mode in order:
                                if mode == "in-process":
                                    r = load_in_process(
                                        clf, bodies, c, args.requests, args.max_seconds, 4096 * 4096
                                    )
                                else:
                                    url = plain_url if mode == "plain" else serve_url
                                    r = load_http(
                                        mode, url, bodies, ctype, c, args.requests, args.max_seconds, ""
                                    )
                                runs.setdefault((mode, c), []).append(r)
                                print(f"{key} round {rnd} {mode} c={c}: {r.rps:.1f} req/s", flush=True)
                finally:
                    if proc is not None:
                        stop_process(proc)
                    if serve_url is not None:
                        from ray import serve

                        serve.delete(app_name)
                    del clf
                results = [merge(rs) for rs in runs.values()]
                arch, channels, _, _, fmt = MODELS[key]
                label = f"{key}: {arch} at {size}x{size}, {channels} channel(s), {fmt} requests"
                sections += table(label, results)
                by = {(r.mode, r.concurrency): r.rps for r in results}
                for c in levels:
                    if ("serve", c) in by and by.get(("plain", c)):
                        summary.append(f"| {key} | {c} | {by[('serve', c)] / by[('plain', c)]:.2f}x |")
        finally:
            if serve_url is not None:
                import ray
                from ray import serve

                serve.shutdown()
                ray.shutdown()

    cmd = "python benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [
        "# Inference service benchmark (issue 6)",
        "",
        f"- command: `{cmd.strip()}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {header}",
        f"- per cell and round: at most {args.requests} requests or {args.max_seconds:.0f} s, {args.rounds} "
        "rounds pooled (modes interleaved, order rotated each round); loopback HTTP "
        f"(aiohttp client in the benchmark process); torch threads per model: {args.torch_threads}; "
        f"Serve: 1 replica, max_batch_size {args.max_batch_size}, batch_wait_timeout_s {args.batch_wait_s}",
        "",
        "Modes: `in-process` = threads calling the classifier (decode, preprocess, forward, top-k) directly; "
        "`plain` = one FastAPI + uvicorn process with the same API code (serving/api.py) and classifier, "
        "each request's forward pass in a worker thread, no batching; `serve` = serving/app.py on Ray Serve "
        "(HTTP proxy actor -> replica, `@serve.batch`). Latencies are per request as the client sees them.",
        "",
        "## Serve vs plain FastAPI + uvicorn (req/s ratio)",
        "",
        "| model | concurrency | serve / plain |",
        "| --- | ---: | ---: |",
        *summary,
        "",
        "## Tables",
        "",
        *sections,
    ]
    text = "\n".join(md) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".md.tmp")
    tmp_out.write_text(text)
    tmp_out.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
