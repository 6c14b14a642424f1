"""The inference service (issues 6 and 17): real Ray Serve on 127.0.0.1, a real MLflow sqlite registry and
real HTTP, on the fast path the docs launch (serving.config.FAST_PATH_ENV: HAProxy in front of replicas
that serve HTTP themselves).

Serve is started once for the module (about 10-30 s on 2 cores); the tests share it and leave the
champion where they found it, except the model-switch test, which runs last and moves it.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image

from serving.config import FAST_PATH_ENV, ConfigError, ServeConfig, export_fast_path, isolated_haproxy_env
from serving.inference import InputError, decode_image, load_classifier
from zoo.architectures import build_model
from zoo.artifacts import InputSpec, ModelSpec, preprocess
from zoo.data import decode_image as job_decode_image
from zoo.registry import Registry

ROOT = Path(__file__).resolve().parents[1]

NAME = "toy-unified"
TOKEN = "test-token-7c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLASSES_V1 = ["ankle boot", "bag", "coat", "dress", "sandal"]
CLASSES_V2 = ["bird", "cat", "dog"]
POLL_S = 1.0
LIMITS = {"max_body_bytes": 2_000_000, "max_pixels": 1_000_000, "max_batch_items": 8}
# capacity of the one replica: 16 requests in progress and 16 waiting. The batching and burst tests run
# 16 clients, and a client's next request can reach the replica before it has released the slot of the
# previous one (measured: 16 clients against 16 + 4 places got half their requests refused), so 16
# clients need up to 32 places. The overload test holds all 32 and checks that the next one is refused.
CAPACITY = {"max_ongoing_requests": 16, "max_queued_requests": 16, "retry_after_s": 1}
TIMEOUT = 30
TEST_SERVE_ENV = {
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}


# ------------------------------------------------------------------------------------------ helpers
def encode(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def sample_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Textured greyscale images of several sizes (the model needs 16x16; the service resizes)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(20 + 3 * i, 24 + 2 * i), dtype=np.uint8) for i in range(n)]


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, with a tiny (wrong) payload: a bomb in
    its header, so only a check before decoding can refuse it cheaply."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_toy(registry: Registry, classes: list[str], seed: int, aliases=()) -> int:
    torch.manual_seed(seed)
    model = build_model("cnn", len(classes), in_channels=1, image_size=16, width=8, depth=2)
    spec = ModelSpec(
        arch="cnn",
        classes=classes,
        input=InputSpec(channels=1, height=16, width=16, mean=(0.5,), std=(0.5,)),
        arch_kwargs={"width": 8, "depth": 2},
        metadata={"lineage": {"teachers": [{"name": "t0", "version": 1}], "method": "mf-lf", "seed": seed}},
    )
    return registry.register_model(NAME, model, spec, aliases=aliases).version


def wait_healthy(url: str, timeout: float = 90) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"the Serve app at {url} did not become healthy in {timeout} s ({last})")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A module-wide sqlite registry (the conftest's mlflow_uri is per test) with v1 as champion and a
    v2 with other classes and weights."""
    root = tmp_path_factory.mktemp("serving-zoo")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry = Registry(uri, cache_dir=root / "cache")
    v1 = register_toy(registry, CLASSES_V1, seed=1, aliases=("champion",))
    v2 = register_toy(registry, CLASSES_V2, seed=2)
    return {"uri": uri, "cache": str(root / "cache"), "registry": registry, "v1": v1, "v2": v2}


def start_serve_fast_path(port: int, haproxy_dir: Path) -> None:
    """serve.start as serving/config.yaml does it: FAST_PATH_ENV for the controller, which hands it to
    HAProxy and the replicas. Apart from that: this test's HAProxy files and ports kept apart from any
    other on the machine, a short drain so that shutting down does not wait 30 s, and 30 s instead of 5
    for HAProxy's manager to report ready (on a 2-core machine under a load of 30 it missed 3 x 5 s and
    Serve replaced it, failing the fixture)."""
    from ray import serve

    env = {**FAST_PATH_ENV, **isolated_haproxy_env(haproxy_dir), **TEST_SERVE_ENV}
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        controller_options={"runtime_env": {"env_vars": env}},
    )


@pytest.fixture(scope="module")
def server(ray_session, zoo):
    from ray import serve

    from serving.app import build_app

    port = free_port()
    haproxy_dir = tempfile.TemporaryDirectory(prefix="hap-", dir="/tmp")  # short: socket paths <= 97 bytes
    args = {
        "name": NAME,
        "tracking_uri": zoo["uri"],
        "cache_dir": zoo["cache"],
        "token": TOKEN,
        "top_k": 3,
        "poll_interval_s": POLL_S,
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.01,
        "num_cpus": 0.5,
        "torch_threads": 1,
        "max_replicas": 0,  # one replica: the overload test counts its capacity
        **CAPACITY,
        **LIMITS,
    }
    url = f"http://127.0.0.1:{port}"
    try:
        start_serve_fast_path(port, Path(haproxy_dir.name))
        serve.run(build_app(args), name="zoo-serving-test", route_prefix="/", blocking=False)
        wait_healthy(url)
        yield url
    finally:
        serve.shutdown()
        haproxy_dir.cleanup()


@pytest.fixture(scope="module")
def local_v1(zoo):
    """The champion loaded in this process: what the service must answer, computed without it."""
    return load_classifier(
        Registry(zoo["uri"], cache_dir=zoo["cache"]), NAME, alias="champion", device=torch.device("cpu")
    )


def classify(
    url: str, data: bytes, content_type: str, timeout: float = TIMEOUT, **params
) -> requests.Response:
    return requests.post(
        f"{url}/v1/classify",
        data=data,
        headers={**AUTH, "Content-Type": content_type},
        params=params,
        timeout=timeout,
    )


# ------------------------------------------------------------------------------------------ no Serve
def test_config_from_args_and_env():
    cfg = ServeConfig.from_args(
        {"top_k": "2", "max_batch_size": "4"}, environ={"ZOO_MODEL_NAME": "m", "ZOO_SERVE_TOKEN": "s3cr3t"}
    )
    assert (cfg.name, cfg.alias, cfg.top_k, cfg.max_batch_size, cfg.token) == (
        "m",
        "champion",
        2,
        4,
        "s3cr3t",
    )
    assert "s3cr3t" not in repr(cfg)  # the token never reaches logs
    cfg = ServeConfig.from_args({"model": "models:/other@staging"}, environ={})
    assert (cfg.name, cfg.alias, cfg.model_ref) == ("other", "staging", "models:/other@staging")
    with pytest.raises(ConfigError, match="no model to serve"):
        ServeConfig.from_args({}, environ={})
    with pytest.raises(ConfigError, match="unknown setting 'top_kk'"):
        ServeConfig.from_args({"name": "m", "top_kk": 3}, environ={})
    with pytest.raises(ConfigError, match="max_batch_size"):
        ServeConfig.from_args({"name": "m", "max_batch_size": "many"}, environ={})
    with pytest.raises(ConfigError, match="pins version"):
        ServeConfig.from_args({"model": "models:/m/3"}, environ={})
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        ServeConfig(name="m", max_batch_size=32, max_ongoing_requests=8)
    assert ServeConfig(name="m", max_replicas=3).autoscaling["max_replicas"] == 3
    assert ServeConfig(name="m", max_replicas=0).autoscaling is None
    with pytest.raises(ConfigError, match="overload_status"):
        ServeConfig(name="m", overload_status=500)
    with pytest.raises(ConfigError, match="max_queued_requests"):
        ServeConfig(name="m", max_queued_requests=0)
    assert ServeConfig(name="m", overload_status=429, retry_after_s=2).backpressure == {
        "status_code": 429,
        "retry_after_s": 2,
    }


def test_the_documented_launches_take_the_fast_path(monkeypatch):
    """serving/config.yaml hands FAST_PATH_ENV to Serve's controller (serve run / serve deploy of it),
    the cluster configs export it before `ray start`, every arg of config.yaml is a ServeConfig field,
    and build_app exports it only where no Ray runs yet (`serve run serving.app:...`)."""
    doc = yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())
    assert doc["controller_options"]["runtime_env"]["env_vars"] == FAST_PATH_ENV
    (app,) = doc["applications"]
    ServeConfig.from_args(app["args"], environ={})
    for name in ("cluster.yaml", "cluster-onprem.yaml"):
        setup = " ".join(yaml.safe_load((ROOT / name).read_text())["setup_commands"])
        for key, value in FAST_PATH_ENV.items():
            assert f"{key}={value}" in setup, (name, key)

    environ = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    export_fast_path(environ)
    assert environ == {**FAST_PATH_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "0"}  # an explicit opt-out stays

    import serving.app  # Ray Serve: imported here, not when the tests are collected

    exported = []
    monkeypatch.setattr(serving.app, "export_fast_path", exported.append)
    for initialized in (True, False):
        monkeypatch.setattr(serving.app.ray, "is_initialized", lambda value=initialized: value)
        serving.app.build_app({"name": "m"})
    assert len(exported) == 1


def test_decode_image_refusals():
    img = sample_images(1)[0]
    assert decode_image(encode(img), max_pixels=10_000).shape == img.shape
    assert decode_image(encode(np.stack([img] * 4, -1)), max_pixels=10_000).shape == (
        *img.shape,
        3,
    )  # RGBA -> RGB
    jpeg = encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "JPEG")
    cases = {
        b"": "empty_image",
        b"hello, not an image": "not_an_image",
        encode(img)[:-30]: "corrupt_image",
        jpeg[: len(jpeg) // 2]: "corrupt_image",
        png_with_header(200, 200): "image_too_large",
        png_with_header(50_000, 50_000): "image_too_large",
        encode(img, "GIF"): "unsupported_image_format",
    }
    for data, code in cases.items():
        with pytest.raises(InputError) as info:
            decode_image(data, max_pixels=10_000)
        assert info.value.code == code, (code, info.value.message)
        assert 400 <= info.value.status < 500


# ------------------------------------------------------------------------------------------ with Serve
def test_health_docs_and_auth(server):
    assert requests.get(f"{server}/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    for method, path in [
        ("get", "/v1/model"),
        ("post", "/v1/classify"),
        ("post", "/v1/reload"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
    ]:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            r = requests.request(method, server + path, headers=headers, timeout=TIMEOUT)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"] == "unauthorized"
    # the scheme is case-insensitive (RFC 7235)
    for scheme in ("bearer", "BEARER", "Bearer "):
        r = requests.get(
            f"{server}/v1/model", headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=TIMEOUT
        )
        assert r.status_code == 200, (scheme, r.text)
    schema = requests.get(f"{server}/openapi.json", headers=AUTH, timeout=TIMEOUT).json()
    assert {"/v1/classify", "/v1/model", "/v1/reload", "/healthz"} <= set(schema["paths"])
    assert "image/png" in schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert "swagger" in requests.get(f"{server}/docs", headers=AUTH, timeout=TIMEOUT).text.lower()


def test_model_info(server, zoo):
    info = requests.get(f"{server}/v1/model", headers=AUTH, timeout=TIMEOUT).json()
    assert (info["name"], info["version"], info["classes"]) == (NAME, zoo["v1"], CLASSES_V1)
    assert info["input"] == {"channels": 1, "height": 16, "width": 16, "mean": [0.5], "std": [0.5]}
    assert info["lineage"]["method"] == "mf-lf" and info["lineage"]["run_id"]
    assert info["serving"]["alias"] == "champion" and info["serving"]["last_error"] is None
    assert info["serving"]["fast_path"] is True


@pytest.mark.parametrize("fmt,ctype", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_classify_raw_body_matches_in_process_model(server, local_v1, fmt, ctype):
    for img in sample_images(3, seed=len(fmt)):
        data = encode(img, fmt, **({"quality": 95} if fmt != "PNG" else {}))
        r = classify(server, data, ctype)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == {"name": NAME, "version": local_v1.version}
        want = local_v1.predict([decode_image(data, max_pixels=10**6)], 3)[0]
        got = body["predictions"]
        assert [p["class"] for p in got] == want.classes
        assert [p["probability"] for p in got] == pytest.approx(want.probabilities, abs=1e-5)
        probs = [p["probability"] for p in got]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6


def test_classify_colour_image_is_converted_to_the_input_contract(server, local_v1):
    rgb = np.random.default_rng(5).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    data = encode(rgb)
    got = classify(server, data, "image/png", top_k=5).json()["predictions"]
    want = local_v1.predict([decode_image(data, max_pixels=10**6)], 5)[0]
    assert [p["class"] for p in got] == want.classes and len(got) == 5
    assert sum(p["probability"] for p in got) == pytest.approx(1.0, abs=1e-4)  # all 5 classes


def test_multipart_and_json_batch(server):
    imgs = [encode(i) for i in sample_images(4, seed=9)]
    singles = [classify(server, d, "image/png", top_k=2).json()["predictions"] for d in imgs]

    r = requests.post(
        f"{server}/v1/classify",
        files={"file": ("x.png", imgs[0], "image/png")},
        headers=AUTH,
        timeout=TIMEOUT,
    )
    assert (
        r.status_code == 200
        and r.json()["predictions"][0] == classify(server, imgs[0], "image/png").json()["predictions"][0]
    )

    files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(imgs)]
    r = requests.post(
        f"{server}/v1/classify", files=files, params={"top_k": 2}, headers=AUTH, timeout=TIMEOUT
    )
    assert [x["predictions"] for x in r.json()["results"]] == singles

    payload = {"images": [base64.b64encode(d).decode() for d in imgs], "top_k": 2}
    payload["images"][1] = "data:image/png;base64," + payload["images"][1]
    r = requests.post(f"{server}/v1/classify", json=payload, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["predictions"] for x in results] == singles
    assert all(len(x["predictions"]) == 2 for x in results)


def test_concurrent_requests_are_batched(server, local_v1):
    """16 clients at once: the replica forms batches larger than one image, and every answer is still
    the one the model gives for that image alone."""
    imgs = [encode(i) for i in sample_images(16, seed=21)]
    before = requests.get(f"{server}/v1/model", headers=AUTH, timeout=TIMEOUT).json()["serving"]
    for _ in range(3):  # a few rounds: on a loaded machine one round may arrive spread out
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda d: classify(server, d, "image/png").json()["predictions"], imgs))
        for data, got in zip(imgs, answers):
            want = local_v1.predict([decode_image(data, max_pixels=10**6)], 3)[0]
            assert [p["class"] for p in got] == want.classes
            assert [p["probability"] for p in got] == pytest.approx(want.probabilities, abs=1e-5)
        after = requests.get(f"{server}/v1/model", headers=AUTH, timeout=TIMEOUT).json()["serving"]
        if after["largest_batch"] > 1:
            break
    assert after["images"] - before["images"] >= 16
    assert 1 < after["largest_batch"] <= 8, after  # max_batch_size is 8 in this app


def bad_requests(url: str) -> list[tuple[str, dict, int, str]]:
    """(description, requests kwargs, expected status, expected error code) for each kind of bad input."""
    img = sample_images(1)[0]
    png = encode(img)
    jpeg = encode(np.random.default_rng(1).integers(0, 255, (80, 80, 3), dtype=np.uint8), "JPEG")
    big_png = encode(np.zeros((1200, 1200), np.uint8))  # 1.44 Mpx > 1 Mpx, small file
    b64 = base64.b64encode(png).decode()
    raw = lambda data, ctype="image/png": {"data": data, "headers": {**AUTH, "Content-Type": ctype}}
    return [
        ("not an image", raw(b"GET / HTTP/1.1 hello"), 400, "not_an_image"),
        ("truncated PNG", raw(png[: len(png) - 40]), 400, "corrupt_image"),
        ("truncated JPEG", raw(jpeg[: len(jpeg) // 2], "image/jpeg"), 400, "corrupt_image"),
        ("empty body", raw(b""), 400, "empty_body"),
        (
            "body over the size limit",
            raw(b"\x89PNG" + b"\0" * (LIMITS["max_body_bytes"] + 10)),
            413,
            "body_too_large",
        ),
        ("huge dimensions (decoded size)", raw(big_png), 413, "image_too_large"),
        ("decompression bomb header", raw(png_with_header(60_000, 60_000)), 413, "image_too_large"),
        ("GIF", raw(encode(img, "GIF"), "image/gif"), 415, "unsupported_media_type"),
        ("GIF labelled PNG", raw(encode(img, "GIF")), 415, "unsupported_image_format"),
        ("wrong content type", raw(png, "text/plain"), 415, "unsupported_media_type"),
        (
            "no content type",
            {"data": png, "headers": {**AUTH, "Content-Type": ""}},
            415,
            "unsupported_media_type",
        ),
        ("batch over the limit", {"json": {"images": [b64] * 9}, "headers": AUTH}, 413, "batch_too_large"),
        ("empty batch", {"json": {"images": []}, "headers": AUTH}, 400, "empty_batch"),
        ("bad base64", {"json": {"images": [b64, "%%%"]}, "headers": AUTH}, 400, "bad_base64"),
        (
            "bad image in batch",
            {"json": {"images": [b64, base64.b64encode(b"nope").decode()]}, "headers": AUTH},
            400,
            "not_an_image",
        ),
        ("bad JSON", raw(b"{images:", "application/json"), 400, "bad_json"),
        ("multipart without file", {"files": {"note": (None, "hi")}, "headers": AUTH}, 400, "no_image"),
        ("top_k of 0", {**raw(png), "params": {"top_k": 0}}, 422, "invalid_parameter"),
    ]


@pytest.mark.parametrize("case", range(len(bad_requests("x"))), ids=[c[0] for c in bad_requests("x")])
def test_bad_input_gets_a_4xx_json_error(server, case):
    what, kwargs, status, code = bad_requests(server)[case]
    r = requests.post(f"{server}/v1/classify", timeout=TIMEOUT, **kwargs)
    assert r.status_code == status, (what, r.status_code, r.text)
    body = r.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"], (what, body)


def test_keeps_serving_after_a_burst_of_bad_requests(server):
    """Throughput of good requests before and after 200 concurrent bad ones (a ratio, not a speed)."""
    good = encode(sample_images(1, seed=3)[0])
    session = requests.Session()

    def rate(n: int = 20) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            r = session.post(
                f"{server}/v1/classify",
                data=good,
                headers={**AUTH, "Content-Type": "image/png"},
                timeout=TIMEOUT,
            )
            assert r.status_code == 200, r.text
        return n / (time.perf_counter() - t0)

    rate(5)  # warm-up
    # best of three short rounds on each side: the machine is shared, a load spike must not decide
    before = max(rate() for _ in range(3))
    cases = bad_requests(server)
    with ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(
                lambda i: (
                    requests.post(
                        f"{server}/v1/classify", timeout=TIMEOUT, **cases[i % len(cases)][1]
                    ).status_code
                ),
                range(200),
            )
        )
    assert all(400 <= s < 500 for s in statuses), Counter(statuses)
    after = max(rate() for _ in range(3))
    assert requests.get(f"{server}/healthz", timeout=TIMEOUT).status_code == 200
    assert after >= 0.3 * before, (
        f"good-request throughput fell from {before:.1f}/s to {after:.1f}/s after the burst"
    )


def encodings(grey: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """One grey image as the files users send: 8-bit, 16-bit, palette and RGBA PNGs, and a JPEG."""
    rgba = np.concatenate([np.repeat(grey[..., None], 3, axis=2), np.full_like(grey, 255)[..., None]], axis=2)
    palette = io.BytesIO()
    Image.fromarray(grey).convert("P").save(palette, format="PNG")
    return {
        "png8": (encode(grey), "image/png"),
        "png16": (encode(grey.astype(np.uint16) * 257), "image/png"),
        "palette": (palette.getvalue(), "image/png"),
        "rgba": (encode(rgba), "image/png"),
        "jpeg": (encode(grey, "JPEG", quality=95), "image/jpeg"),
    }


def test_every_encoding_gets_the_class_of_the_jobs_reader(server, local_v1):
    """The same images as 8-bit, 16-bit, palette and RGBA PNGs and as JPEG: over HTTP each gets the class
    that the job's reader (zoo.data.decode_image -> zoo.artifacts.preprocess -> the model) gives it, and
    the lossless encodings all get the class of the 8-bit PNG. (Serving used to clip 16-bit PNGs.)"""
    for i, grey in enumerate(sample_images(8, seed=31)):
        grey = (grey // 4 + 100).astype(np.uint8)  # mid-grey textures: clipping a 16-bit copy would show
        lossless = set()
        for name, (data, ctype) in encodings(grey).items():
            x = preprocess([job_decode_image(data)], local_v1.spec.input)
            with torch.inference_mode():
                job_class = local_v1.spec.classes[int(local_v1.model(x).argmax(1))]
            r = classify(server, data, ctype, top_k=1)
            assert r.status_code == 200, (name, r.text)
            assert r.json()["predictions"][0]["class"] == job_class, (i, name)
            if name != "jpeg":
                lossless.add(job_class)
        assert len(lossless) == 1, (i, lossless)


def test_a_long_request_target_gets_the_json_error(server):
    long_query = {
        "top_k": "1",
        "pad": "x" * 9000,
    }  # over max_request_line_bytes (8192), under HAProxy's buffer
    r = requests.get(f"{server}/v1/model", params=long_query, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 414, r.text
    assert r.json()["error"] == "uri_too_long" and "8192" in r.json()["detail"]


def hold_request(url: str) -> socket.socket:
    """A classify request whose body never finishes: it holds its slot in the replica until closed."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\x89PNG")
    return sock


def test_overload_is_refused_at_once_with_retry_after(server):
    """Past max_ongoing_requests + max_queued_requests the replica answers 503 with Retry-After at once,
    instead of queueing without bound; once the load is gone, requests succeed again."""
    held = [
        hold_request(server)
        for _ in range(CAPACITY["max_ongoing_requests"] + CAPACITY["max_queued_requests"])
    ]
    png = encode(sample_images(1, seed=41)[0])
    try:
        deadline, r = time.monotonic() + 60, None
        while time.monotonic() < deadline:  # the held requests reach the replica over a few ms to seconds
            t0 = time.perf_counter()
            try:
                r = classify(server, png, "image/png", timeout=5)
            except requests.Timeout:  # this probe found a free place in the queue and waits there
                continue
            if r.status_code == 503:
                break
        assert r is not None and r.status_code == 503, r.text if r is not None else None
        assert r.headers["Retry-After"] == "1"
        assert time.perf_counter() - t0 < 2.0  # refused at once, not after waiting for a slot
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the replica notices the closed connections and frees the slots
        if classify(server, png, "image/png").status_code == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("requests still refused a minute after the overload ended")


def test_reload_takes_no_model_from_the_client(server, zoo):
    r = requests.post(
        f"{server}/v1/reload",
        headers=AUTH,
        json={"name": "/etc/passwd", "path": "/tmp/x"},
        params={"model": "models:/evil@x"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"previous": zoo["v1"], "version": zoo["v1"], "switched": False}


def test_champion_switch_without_failed_requests(server, zoo):
    """Move the champion to v2 while clients keep sending; every request succeeds, /v1/model reports v2
    within the poll interval (plus the load), and the answers switch to v2's classes. Then move it back
    and switch at once with the authenticated POST /v1/reload."""
    registry: Registry = zoo["registry"]
    data = encode(sample_images(1, seed=11)[0])
    stop, failures, versions = threading.Event(), [], Counter()

    def client() -> None:
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(
                    f"{server}/v1/classify",
                    data=data,
                    headers={**AUTH, "Content-Type": "image/png"},
                    timeout=TIMEOUT,
                )
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                body = r.json()
                classes = CLASSES_V1 if body["model"]["version"] == zoo["v1"] else CLASSES_V2
                if not {p["class"] for p in body["predictions"]} <= set(classes):
                    failures.append(f"classes of another version: {body}")
                versions[body["model"]["version"]] += 1
            except Exception as exc:  # a reset connection counts as a failed request
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        registry.set_alias(NAME, "champion", zoo["v2"])
        moved = time.monotonic()
        deadline = moved + 10 * POLL_S + 20  # poll interval + loading the new version on a busy machine
        info = None
        while time.monotonic() < deadline:
            info = requests.get(f"{server}/v1/model", headers=AUTH, timeout=TIMEOUT).json()
            if info["version"] == zoo["v2"]:
                break
            time.sleep(0.1)
        assert info["version"] == zoo["v2"] and info["classes"] == CLASSES_V2, info
        time.sleep(1.0)  # keep the clients going on the new version
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=TIMEOUT)
    assert not failures, failures[:5]
    assert versions[zoo["v1"]] > 0 and versions[zoo["v2"]] > 0, versions

    # back to v1 at once through the reload call (token required)
    registry.set_alias(NAME, "champion", zoo["v1"])
    assert requests.post(f"{server}/v1/reload", timeout=TIMEOUT).status_code == 401
    r = requests.post(f"{server}/v1/reload", headers=AUTH, timeout=TIMEOUT)
    if r.json().get("switched") is False:  # the poll got there first
        assert r.json()["version"] == zoo["v1"]
    else:
        assert r.json() == {"previous": zoo["v2"], "version": zoo["v1"], "switched": True}
    assert requests.get(f"{server}/v1/model", headers=AUTH, timeout=TIMEOUT).json()["version"] == zoo["v1"]
