"""Benchmark of the inference service (issues 6 and 17): requests/s served, p50/p99 latency and refusals
by status at several client concurrencies, for the same registered model served several ways, in one
run, over loopback:

- ``plain``: one FastAPI + uvicorn process (a subprocess) with the same API code (serving/api.py) and the
  same classifier, each request's forward pass in a worker thread, no batching, no queue bound;
- ``serve``: the application **as the docs launch it** (serving/config.yaml): its ``args`` (batching,
  ``max_ongoing_requests``, ``max_queued_requests``, 503 + Retry-After) on a Ray cluster with its
  ``controller_options`` environment, the fast path (serving.config.FAST_PATH_ENV): the client talks to
  Serve's HAProxy ingress on the HTTP port, which forwards to the replica's own HTTP server;
- ``serve-direct``: the same without HAProxy (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` only): the client
  talks to the replica's HTTP server itself (port 30000 up), which is what HAProxy adds to;
- ``serve-proxy``: the same application on Serve's own defaults (client -> Python HTTP proxy actor ->
  Ray call to the replica), the launch path before issue 17, with the same queue bound;
- ``in-process``: threads calling the classifier directly (decode -> preprocess -> forward -> top-k).

Each Serve flavour needs its own Ray cluster (Serve reads the flags when its processes start), so the
run is made of blocks, one per flavour, each in a child process: in each block the plain server (and
in-process calls) and that flavour are measured interleaved, and each ratio is taken against the plain
server of the same block. Serve runs one replica unless ``--autoscale`` (then config.yaml's
autoscaling; the ``replicas`` column says how many ran at the end of each cell).

Clients: one keep-alive connection each, as many as the concurrency, each sending its next request when
the last one is answered. A refusal (503/429) is counted by status and its latency kept apart; the
client then waits the Retry-After the server sent, as a well-behaved client does (``--ignore-retry-after``
retries at once instead). Every loop is bounded: at most ``--requests`` attempts per cell (at least
``--per-client`` per client), no new request after ``--max-seconds``.

Two models: the demo-like ``cnn`` at 28x28 grey (Fashion-MNIST PNGs) and ``resnet18`` at 224x224 RGB
(random weights, JPEG images).

    .venv/bin/python benchmarks/serve.py        # the issue's run; writes benchmarks/results/serve.md
    .venv/bin/python benchmarks/serve.py --models small --concurrency 1,32,256 --requests 200 \\
        --max-seconds 3 --rounds 1 --out /tmp/serve-smoke.md   # a smoke run
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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
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
import yaml  # noqa: E402

CONFIG_YAML = ROOT / "serving" / "config.yaml"
MODELS = {
    # name: (arch, channels, size, arch_kwargs, image format)
    "small": ("cnn", 1, 28, {}, "PNG"),
    "resnet18": ("resnet18", 3, 224, {}, "JPEG"),
}
# A short drain, so that each block's cluster stops quickly (Serve's default is 30 s in direct ingress).
_QUICK_DRAIN = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


def docs_env() -> dict[str, str]:
    """The Serve environment serving/config.yaml gives the cluster (its controller_options)."""
    return dict(yaml.safe_load(CONFIG_YAML.read_text())["controller_options"]["runtime_env"]["env_vars"])


# Serve flavours: mode name -> environment of the Ray cluster that serves it.
SERVE_FLAVOURS: dict[str, dict[str, str]] = {
    "serve": {**docs_env(), **_QUICK_DRAIN},
    "serve-direct": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "0", **_QUICK_DRAIN},
    "serve-proxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
}
MODE_ORDER = ["in-process", "plain", *SERVE_FLAVOURS]
REFUSALS = (503, 429)
FAST_REFUSAL_MS = 100.0  # "a fast 503/429": p99 of the refusals' latency under this


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


def app_args(args: argparse.Namespace, name: str, uri: str, cache_dir: str) -> dict:
    """serving/config.yaml's app args (what the docs deploy) for the benchmark's model and registry;
    one fixed replica unless --autoscale; command-line batching overrides when given."""
    (app,) = yaml.safe_load(CONFIG_YAML.read_text())["applications"]
    cfg = {**app["args"], "name": name, "tracking_uri": uri, "cache_dir": cache_dir, "poll_interval_s": 0}
    cfg["torch_threads"] = args.torch_threads
    if not args.autoscale:
        cfg.update(max_replicas=0, num_replicas=1)
    for key in ("max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests", "max_queued_requests"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


# ----------------------------------------------------------------------------------------- load
@dataclass
class Result:
    mode: str
    concurrency: int
    ok: int
    seconds: float
    latencies_ms: list[float]  # answered 200
    refused_ms: list[float] = field(default_factory=list)  # answered 503/429
    statuses: dict[str, int] = field(
        default_factory=dict
    )  # every answer but 200, by status ("conn": no answer)
    replicas: int | None = None

    @property
    def rps(self) -> float:
        """Requests served (200) per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float, refused: bool = False) -> float:
        xs = sorted(self.refused_ms if refused else self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    @property
    def errors(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items())) or "-"


def merge(rounds: list[Result]) -> Result:
    """Rounds of one cell pooled: total served over total time, all latencies, all statuses."""
    statuses: Counter[str] = Counter()
    for r in rounds:
        statuses.update(r.statuses)
    return Result(
        rounds[0].mode,
        rounds[0].concurrency,
        sum(r.ok for r in rounds),
        sum(r.seconds for r in rounds),
        [x for r in rounds for x in r.latencies_ms],
        [x for r in rounds for x in r.refused_ms],
        dict(statuses),
        rounds[-1].replicas,
    )


def load_in_process(
    classifier, bodies: list[bytes], concurrency: int, n: int, cap_s: float, max_pixels: int
) -> Result:
    """``concurrency`` threads calling the classifier on one decoded image each time."""
    from serving.inference import decode_image

    lock, counter, lat, errors = threading.Lock(), [0], [], Counter()
    deadline = time.perf_counter() + cap_s

    def worker() -> None:
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
            except Exception as exc:
                with lock:
                    errors[type(exc).__name__] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result("in-process", concurrency, len(lat), time.perf_counter() - t0, lat, [], dict(errors))


async def _load_http(
    url: str, bodies: list[bytes], ctype: str, concurrency: int, n: int, cap_s: float, honour_retry: bool
) -> Result:
    import aiohttp

    headers = {"Content-Type": ctype}
    state = {"sent": 0}
    lat: list[float] = []
    refused: list[float] = []
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=max(cap_s, 120))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: bytes) -> tuple[int | None, float, str | None]:
            t0 = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/classify", data=body, headers=headers) as r:
                    await r.read()
                    return r.status, (time.perf_counter() - t0) * 1000, r.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return None, (time.perf_counter() - t0) * 1000, None

        async def worker() -> None:
            while state["sent"] < n and time.perf_counter() < deadline:
                state["sent"] += 1
                status, ms, retry_after = await post(bodies[state["sent"] % len(bodies)])
                if status == 200:
                    lat.append(ms)
                    continue
                statuses["conn" if status is None else str(status)] += 1
                if status in REFUSALS:
                    refused.append(ms)
                    if honour_retry and retry_after:
                        await asyncio.sleep(min(float(retry_after), max(0.0, deadline - time.perf_counter())))

        # warm-up, not counted: connections and the first batches (at most 32 at once: a warm-up over the
        # service's capacity would only be refused)
        warm = asyncio.Semaphore(32)

        async def warm_up() -> None:
            async with warm:
                await post(bodies[0])

        await asyncio.gather(*(warm_up() for _ in range(concurrency)))
        deadline = time.perf_counter() + cap_s  # the cap counts from the end of the warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return Result("", concurrency, len(lat), seconds, lat, refused, dict(statuses))


def load_http(
    mode: str,
    url: str,
    bodies: list[bytes],
    ctype: str,
    concurrency: int,
    n: int,
    cap_s: float,
    honour_retry: bool,
) -> Result:
    result = asyncio.run(_load_http(url, bodies, ctype, concurrency, n, cap_s, honour_retry))
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
    # keep-alive as long as Serve's (90 s): with uvicorn's 5 s default, a client reusing a connection
    # while the server is busy can race the keep-alive timer and see a disconnect
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, timeout_keep_alive=90
    )


def start_plain(cfg_args: dict, port: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--plain-server", json.dumps(cfg_args), "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg_args.get("torch_threads") or 1)}
    # its own process group (to stop it cleanly) but the same session as the benchmark and the Ray cluster
    # it is compared with: with sched_autogroup_enabled=1 a new session would be scheduled as a group of
    # its own, which on a busy machine gives it a different share of the CPU than Serve gets
    return subprocess.Popen(cmd, cwd=ROOT, env=env, process_group=0)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


# ----------------------------------------------------------------------------------------- Serve
@contextmanager
def serve_cluster(http_options: dict) -> Iterator[str]:
    """A private local Ray cluster (its environment is this process's: run_block_subprocess sets the
    flavour's) with Serve's HTTP ingress on a free loopback port; yields its URL."""
    import ray
    from ray import serve

    # address="local": always a private cluster, never one that someone started with `ray start` here
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={**http_options, "host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def direct_ingress_url(app_name: str, timeout: float) -> str:
    """The URL of the replica's own HTTP server (direct ingress), from the controller's target groups
    (the port is allocated at replica start, from RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT = 30000 up)."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for group in ray.get(controller.get_target_groups.remote(app_name), timeout=30):
            if str(group.protocol.value) == "HTTP" and group.app_name == app_name and group.targets:
                # the node's address is in the target, but the server binds to http_options' host (loopback)
                url = f"http://127.0.0.1:{group.targets[0].port}"
                wait_healthy(url, max(1.0, deadline - time.monotonic()))
                return url
        time.sleep(0.5)
    raise TimeoutError(f"no direct-ingress target for {app_name!r} after {timeout} s")


def running_replicas(app_name: str) -> int | None:
    from ray import serve

    try:
        deployment = serve.status().applications[app_name].deployments["ZooClassifier"]
        return int(deployment.replica_states.get("RUNNING", 0))
    except Exception:  # the count is informative only
        return None


# ----------------------------------------------------------------------------------------- report
def table(model: str, block: str, results: list[Result]) -> list[str]:
    plain = {r.concurrency: r.rps for r in results if r.mode == "plain"}
    lines = [
        f"### {model}: {block} block",
        "",
        "| mode | concurrency | served | req/s | p50 ms | p99 ms | refused p99 ms | not 200, by status | "
        "replicas | req/s vs plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in sorted(results, key=lambda r: (r.concurrency, MODE_ORDER.index(r.mode))):
        ratio = r.rps / plain[r.concurrency] if plain.get(r.concurrency) else float("nan")
        refused = f"{r.pct(0.99, refused=True):.1f}" if r.refused_ms else "-"
        replicas = "" if r.replicas is None else str(r.replicas)
        lines.append(
            f"| {r.mode} | {r.concurrency} | {r.ok} | {r.rps:.1f} | {r.pct(0.5):.1f} | {r.pct(0.99):.1f} | "
            f"{refused} | {r.errors} | {replicas} | {ratio:.2f}x |"
        )
    return lines + [""]


def goals(key: str, flavour: str, results: list[Result]) -> list[str]:
    """Issue 17's goals for one model and Serve flavour: rows of model | flavour | goal | measured | met?"""
    by = {(r.mode, r.concurrency): r for r in results}
    rows: list[tuple[str, str, bool]] = []

    def ratio(c: int) -> float | None:
        s, p = by.get((flavour, c)), by.get(("plain", c))
        return s.rps / p.rps if s and p and p.rps else None

    if key == "small":
        for c, want in ((1, 0.9), (32, 2.5)):
            if (x := ratio(c)) is not None:
                rows.append((f"c={c}: Serve / plain >= {want}x", f"{x:.2f}x", x >= want))
        peak = by.get((flavour, 32))
        for c in (128, 256):
            s = by.get((flavour, c))
            if s is None:
                continue
            if peak is not None and peak.rps:
                share = s.rps / peak.rps
                rows.append((f"c={c}: req/s >= 0.8 x the c=32 peak", f"{share:.2f} x the peak", share >= 0.8))
            other = {k: v for k, v in s.statuses.items() if k not in map(str, REFUSALS)}
            fast = not s.refused_ms or s.pct(0.99, refused=True) < FAST_REFUSAL_MS
            shown = f"{len(s.refused_ms)} refused"
            if s.refused_ms:
                shown += f", p99 {s.pct(0.99, refused=True):.0f} ms"
            shown += f"; other: {other or '-'}"
            rows.append(
                (f"c={c}: every refusal a 503/429 in < {FAST_REFUSAL_MS:.0f} ms", shown, fast and not other)
            )
            rows.append((f"c={c}: p99 of the served < 1 s", f"{s.pct(0.99):.0f} ms", s.pct(0.99) < 1000))
    else:
        for c in sorted({c for _, c in by}):
            if (x := ratio(c)) is not None:
                rows.append((f"c={c}: Serve / plain >= 1x", f"{x:.2f}x", x >= 1.0))
    return [f"| {key} | {flavour} | {g} | {m} | {'yes' if ok else 'no'} |" for g, m, ok in rows]


def machine() -> str:
    import ray
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
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, Ray {ray.__version__}"
    )


def loadavg() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small,resnet18", help=f"comma-separated among {', '.join(MODELS)}")
    p.add_argument("--concurrency", default="1,8,32,128,256")
    p.add_argument("--requests", type=int, default=3000, help="at most this many requests per cell and round")
    p.add_argument("--per-client", type=int, default=8, help="... but at least this many per client")
    p.add_argument("--max-seconds", type=float, default=8.0, help="no new request after this, per cell")
    p.add_argument("--resnet-size", type=int, default=224)
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads of every mode's model")
    p.add_argument(
        "--autoscale", action="store_true", help="keep config.yaml's autoscaling (default: 1 replica)"
    )
    p.add_argument("--ignore-retry-after", action="store_true", help="retry a refused request at once")
    for key, kind in (
        ("max_batch_size", int),
        ("batch_wait_timeout_s", float),
        ("max_ongoing_requests", int),
        ("max_queued_requests", int),
    ):
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, help="override serving/config.yaml's value")
    p.add_argument(
        "--modes",
        default="plain,serve,serve-direct",
        help=f"comma-separated among {', '.join(MODE_ORDER)}",
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds over all cells, mode order rotated")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"))
    p.add_argument("--plain-server", help=argparse.SUPPRESS)  # internal: run the baseline server
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--block", help=argparse.SUPPRESS)  # internal: run one Serve block (a child process)
    return p, p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    p, args = parse_args(argv)
    if args.plain_server:
        return run_plain_server(args)
    if args.block:
        return run_block_child(args)

    import torch

    from serving.inference import load_classifier
    from zoo.registry import Registry

    torch.set_num_threads(args.torch_threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODE_ORDER)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODE_ORDER)}")
    keys = args.models.split(",")
    started, load_start = datetime.now(timezone.utc), loadavg()
    header = machine()
    print(f"{header}; load average at start {load_start}", flush=True)
    sections: list[str] = []
    summary: list[str] = []
    goal_rows: list[str] = []
    # One block per Serve flavour (each on its own Ray cluster); without a Serve mode, one block.
    flavours = [m for m in modes if m in SERVE_FLAVOURS] or [None]
    local = [m for m in modes if m not in SERVE_FLAVOURS]
    cfg_shown = None

    with tempfile.TemporaryDirectory(prefix="zoo-bench-serve-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        registry = Registry(uri, cache_dir=Path(tmp) / "cache")
        for key in keys:
            size = args.resnet_size if key == "resnet18" else MODELS[key][2]
            name = register(registry, key, size)
            bodies = make_images(key, size)
            ctype = "image/png" if MODELS[key][4] == "PNG" else "image/jpeg"
            cfg_args = app_args(args, name, uri, str(Path(tmp) / "cache"))
            cfg_shown = cfg_args
            arch, channels, _, _, fmt = MODELS[key]
            label = f"{key}: {arch} at {size}x{size}, {channels} channel(s), {fmt} requests"
            clf = load_classifier(registry, name, alias="champion", device=torch.device("cpu"))
            proc, plain_url = None, None
            try:
                if "plain" in modes:
                    port = free_port()
                    proc = start_plain(cfg_args, port)
                    plain_url = f"http://127.0.0.1:{port}"
                    wait_healthy(plain_url, 180, proc)
                for flavour in flavours:
                    block_modes = [m for m in MODE_ORDER if m in local or m == flavour]
                    if flavour is None:
                        results = run_block(
                            args, key, None, block_modes, levels, clf, bodies, ctype, plain_url, cfg_args
                        )
                    else:
                        results = run_block_subprocess(
                            args, key, flavour, block_modes, levels, plain_url, cfg_args
                        )
                    sections += table(label, flavour or "local", results)
                    by = {(r.mode, r.concurrency): r for r in results}
                    for c in levels:
                        s, pl = by.get((flavour, c)), by.get(("plain", c))
                        if s is None or pl is None or not pl.rps:
                            continue
                        summary.append(
                            f"| {key} | {flavour} | {c} | {s.rps:.1f} | {pl.rps:.1f} | "
                            f"{s.rps / pl.rps:.2f}x | {s.pct(0.99):.0f} | {pl.pct(0.99):.0f} | {s.errors} |"
                        )
                    if flavour is not None and "plain" in modes:
                        goal_rows += goals(key, flavour, results)
            finally:
                if proc is not None:
                    stop_process(proc)
                del clf

    load_end = loadavg()
    cmd = "python benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    shown = {k: v for k, v in (cfg_shown or {}).items() if k not in ("name", "tracking_uri", "cache_dir")}
    md = [
        "# Inference service benchmark (issues 6 and 17)",
        "",
        f"- command: `{cmd.strip()}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC to {datetime.now(timezone.utc):%H:%M} UTC",
        f"- machine: {header}",
        f"- load average at start: {load_start}; at end: {load_end} (a machine shared with other jobs: "
        "compare ratios within a block, not absolute numbers across runs)",
        f"- per cell and round: at most max({args.requests}, {args.per_client} x concurrency) requests, "
        "none started after "
        f"{args.max_seconds:.0f} s; {args.rounds} round(s) pooled (modes interleaved, order rotated each "
        "round); loopback HTTP, aiohttp client in the benchmark process, one keep-alive connection per "
        "client; refused clients "
        + ("retry at once" if args.ignore_retry_after else "wait the Retry-After they were sent")
        + f"; torch threads per model: {args.torch_threads}",
        f"- Serve app args (serving/config.yaml with the benchmark's model): `{json.dumps(shown)}`",
        f"- Serve flavours' environments: `{json.dumps({m: SERVE_FLAVOURS[m] for m in flavours if m})}`",
        "",
        "Modes: `plain` = one FastAPI + uvicorn process with the same API code (serving/api.py) and "
        "classifier, each request's forward pass in a worker thread, no batching, no queue bound; `serve` = "
        "serving/app.py as the docs launch it (serving/config.yaml: throughput-optimized Serve behind its "
        "HAProxy ingress on the HTTP port, `@serve.batch`, bounded queue with 503 + Retry-After); "
        "`serve-direct` = the same without HAProxy, the client on the replica's own port; `serve-proxy` = "
        "Serve's default path (Python HTTP proxy actor -> replica); `in-process` = threads calling the "
        "classifier directly. Each Serve flavour runs in its own block (its own Ray cluster) with the plain "
        "server measured interleaved beside it; ratios are within a block. req/s counts served (200) "
        "requests; latencies are per request as the client sees them, refusals apart.",
        "",
        "## Goals of issue 17",
        "",
        "| model | Serve flavour | goal | measured | met? |",
        "| --- | --- | --- | --- | --- |",
        *goal_rows,
        "",
        "## Serve vs plain FastAPI + uvicorn (same block)",
        "",
        "| model | Serve flavour | concurrency | Serve req/s | plain req/s | Serve / plain | Serve p99 ms | "
        "plain p99 ms | Serve: not 200 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
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


def cell_requests(args: argparse.Namespace, concurrency: int) -> int:
    """The cap on requests of one cell: --requests, but at least --per-client per client, so that every
    client keeps sending for the whole cell (a cap under the concurrency would never load the server)."""
    return max(args.requests, args.per_client * concurrency)


def run_block(
    args: argparse.Namespace,
    key: str,
    flavour: str | None,
    modes: list[str],
    levels: list[int],
    clf,
    bodies: list[bytes],
    ctype: str,
    plain_url: str | None,
    cfg_args: dict,
) -> list[Result]:
    """All cells of one block: modes interleaved per concurrency level, their order rotated each round
    (on a shared machine the load drifts, and it must not favour one mode)."""
    runs: dict[tuple[str, int], list[Result]] = {}
    app_name = f"bench-{key}"
    honour = not args.ignore_retry_after

    def measure(serve_url: str | None) -> None:
        for rnd in range(args.rounds):
            for c in levels:
                order = modes[rnd % len(modes) :] + modes[: rnd % len(modes)]
                n = cell_requests(args, c)
                for mode in order:
                    if mode == "in-process":
                        r = load_in_process(clf, bodies, c, n, args.max_seconds, 4096 * 4096)
                    else:
                        url = plain_url if mode == "plain" else serve_url
                        r = load_http(mode, url, bodies, ctype, c, n, args.max_seconds, honour)
                        if mode == flavour:
                            r.replicas = running_replicas(app_name)
                    runs.setdefault((mode, c), []).append(r)
                    print(
                        f"{key} [{flavour or 'local'}] round {rnd} {mode} c={c}: {r.rps:.1f} req/s, "
                        f"p99 {r.pct(0.99):.0f} ms, not 200: {r.errors}",
                        flush=True,
                    )

    if flavour is None:
        measure(None)
    else:
        from ray import serve

        from serving.app import build_app

        with serve_cluster({}) as ingress_url:
            serve.run(build_app(cfg_args), name=app_name, route_prefix="/", blocking=False)
            wait_healthy(ingress_url, 180)
            url = direct_ingress_url(app_name, 60) if flavour == "serve-direct" else ingress_url
            print(f"{key} [{flavour}] at {url}", flush=True)
            measure(url)
            serve.delete(app_name)
    return [merge(rs) for rs in runs.values()]


def run_block_subprocess(
    args: argparse.Namespace, key: str, flavour: str, modes: list[str], levels: list[int], plain_url, cfg_args
) -> list[Result]:
    """A Serve block in a child process started with the flavour's environment: Serve reads it when
    its modules are imported, in the driver as in the cluster, so each flavour needs a fresh process.
    HAProxy's files and ports are the block's own (serving.config.isolated_haproxy_env)."""
    from serving.config import isolated_haproxy_env

    with (
        tempfile.TemporaryDirectory(prefix="zoo-bench-block-") as tmp,
        tempfile.TemporaryDirectory(prefix="hap-", dir="/tmp") as haproxy_dir,
    ):
        out = Path(tmp) / "results.json"
        spec = {
            "key": key,
            "flavour": flavour,
            "modes": modes,
            "levels": levels,
            "plain_url": plain_url,
            "cfg_args": cfg_args,
            "out": str(out),
        }
        cmd = [sys.executable, __file__, "--block", json.dumps(spec)]
        cmd += ["--requests", str(args.requests), "--max-seconds", str(args.max_seconds)]
        cmd += ["--per-client", str(args.per_client)]
        cmd += ["--rounds", str(args.rounds), "--torch-threads", str(args.torch_threads)]
        cmd += ["--resnet-size", str(args.resnet_size)]
        if args.ignore_retry_after:
            cmd.append("--ignore-retry-after")
        env = {**os.environ, **isolated_haproxy_env(haproxy_dir), **SERVE_FLAVOURS[flavour]}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=3600)
        return [Result(**r) for r in json.loads(out.read_text())]


def run_block_child(args: argparse.Namespace) -> None:
    """The child side of run_block_subprocess: load the model, run the block, write the results."""
    import torch

    from serving.inference import load_classifier
    from zoo.registry import Registry

    spec = json.loads(args.block)
    cfg = spec["cfg_args"]
    torch.set_num_threads(args.torch_threads)
    registry = Registry(cfg["tracking_uri"], cache_dir=cfg["cache_dir"])
    clf = load_classifier(registry, cfg["name"], alias="champion", device=torch.device("cpu"))
    key = spec["key"]
    size = args.resnet_size if key == "resnet18" else MODELS[key][2]
    bodies = make_images(key, size)
    ctype = "image/png" if MODELS[key][4] == "PNG" else "image/jpeg"
    results = run_block(
        args, key, spec["flavour"], spec["modes"], spec["levels"], clf, bodies, ctype, spec["plain_url"], cfg
    )
    Path(spec["out"]).write_text(json.dumps([asdict(r) for r in results]))


if __name__ == "__main__":
    main()
