"""The page at / of the inference service, driven in headless Chromium: type the token, choose an image
in the file input, read the predictions the page shows, and compare them with the API's answer.

Real Ray Serve on 127.0.0.1 on the fast path the docs launch (HAProxy in front of the replica's own HTTP
server), a real MLflow sqlite registry; skipped (with the reason) when Chromium, chromedriver or selenium
is missing.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from serving.config import FAST_PATH_ENV, isolated_haproxy_env
from zoo.architectures import build_model
from zoo.artifacts import InputSpec, ModelSpec
from zoo.registry import Registry

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
NAME = "toy-browser"
TOKEN = "page-token-91"
CLASSES = ["ankle boot", "bag", "coat", "dress"]
TIMEOUT = 30


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (Debian package chromium)"
    if not Path(CHROMEDRIVER).exists():
        return f"chromedriver not found at {CHROMEDRIVER} (Debian package chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from ray import serve

    from serving.app import build_app

    root = tmp_path_factory.mktemp("serving-browser")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(3)
    spec = ModelSpec(
        arch="cnn",
        classes=CLASSES,
        input=InputSpec(channels=3, height=16, width=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        arch_kwargs={"width": 8, "depth": 2},
    )
    model = build_model("cnn", len(CLASSES), in_channels=3, image_size=16, width=8, depth=2)
    Registry(uri, cache_dir=root / "cache").register_model(NAME, model, spec, aliases=("champion",))

    port = _free_port()
    # as serving/config.yaml starts Serve (tests/test_serving.py, start_serve_fast_path)
    haproxy_dir = tempfile.TemporaryDirectory(prefix="hap-", dir="/tmp")  # short: socket paths <= 97 bytes
    env = {
        **FAST_PATH_ENV,
        **isolated_haproxy_env(haproxy_dir.name),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    }
    url = f"http://127.0.0.1:{port}"
    args = {
        "name": NAME,
        "tracking_uri": uri,
        "cache_dir": str(root / "cache"),
        "token": TOKEN,
        "poll_interval_s": 0,
        "num_cpus": 0.5,
        "torch_threads": 1,
    }
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            controller_options={"runtime_env": {"env_vars": env}},
        )
        serve.run(build_app(args), name="zoo-serving-browser", route_prefix="/", blocking=False)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        else:
            raise TimeoutError(f"the Serve app at {url} did not become healthy")
        yield url
    finally:
        serve.shutdown()
        haproxy_dir.cleanup()


@pytest.fixture()
def browser(tmp_path):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_classifies_a_dropped_image(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    rgb = np.random.default_rng(7).integers(0, 256, (40, 32, 3), dtype=np.uint8)
    path = tmp_path / "sample.png"
    Image.fromarray(rgb).save(path)
    api = requests.post(
        f"{server}/v1/classify",
        data=path.read_bytes(),
        params={"top_k": 3},
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/png"},
        timeout=TIMEOUT,
    ).json()["predictions"]

    browser.get(server + "/")
    wait = WebDriverWait(browser, TIMEOUT)
    # without the token the page says the server refused it
    wait.until(lambda d: "token" in d.find_element(By.ID, "model-name").text.lower())
    token = browser.find_element(By.ID, "token")
    token.send_keys(TOKEN)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", token)
    wait.until(lambda d: NAME in d.find_element(By.ID, "model-name").text)
    topk = browser.find_element(By.ID, "topk")
    topk.clear()
    topk.send_keys("3")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait.until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, "#predictions li.prediction")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#predictions li.prediction")
    shown = [(r.get_attribute("data-class"), float(r.get_attribute("data-probability"))) for r in rows]
    assert [c for c, _ in shown] == [p["class"] for p in api]
    assert [p for _, p in shown] == pytest.approx([p["probability"] for p in api], abs=1e-6)
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")
    assert f"{NAME} v1" in browser.find_element(By.ID, "status").text

    # a file that is not an image: the page shows the server's error instead of predictions
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "error 400" in d.find_element(By.ID, "status").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "#predictions li.prediction")
