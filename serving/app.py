"""The Ray Serve application: ``models:/<name>@champion`` of the zoo behind an HTTP API.

Run it with::

    serve run serving.app:build_app name=<model>          # args as key=value, see ServeConfig
    ZOO_MODEL_NAME=<model> serve run serving.app:app       # everything from the environment
    serve deploy serving/config.yaml                       # a deploy config (running cluster)

Each of them takes the fast path (serving.config.FAST_PATH_ENV): the replicas serve HTTP themselves
behind Serve's HAProxy ingress on the HTTP port, without the Python proxy hop that costs a small model
several times its forward pass (docs/serving.md, "How a request travels"; benchmarks/serve.py). A
replica holds at most ``max_ongoing_requests`` requests and queues at most ``max_queued_requests`` more;
past that it answers 503 (or 429) with Retry-After at once, so overload sheds the excess instead of
slowing every request down.

Each replica loads the champion through the zoo's safe loader (on GPU when the replica has one), batches
images across requests with ``@serve.batch``, and follows the alias: a background poll (and the
authenticated ``POST /v1/reload``) loads a new champion first and then swaps it in, so requests in
flight finish on the old version and none fails. The HTTP API itself is serving/api.py.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from ray.serve import Application

from serving.api import make_api
from serving.config import FAST_PATH_ENV, ConfigError, ServeConfig, export_fast_path
from serving.inference import ChampionTracker, Classifier, Prediction, set_pixel_limit

__all__ = ["ZooClassifier", "build_app", "app"]


@serve.deployment(name="ZooClassifier", health_check_period_s=10)
@serve.ingress()  # late-bound: each replica builds the FastAPI app in __serve_build_asgi_app__
class ZooClassifier:
    """One replica: the champion's classifier, a batch queue in front of it and the alias poll."""

    def __init__(self, config: dict[str, Any]):
        self.cfg = ServeConfig.from_dict(config)
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        set_pixel_limit(self.cfg.max_pixels)
        self.tracker = ChampionTracker(self.cfg)
        # @serve.batch takes its numbers at class definition; the config's numbers are set here.
        self._classify_batch.set_max_batch_size(self.cfg.max_batch_size)
        self._classify_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self.tracker.start_polling(self.cfg.poll_interval_s)
        self.batch_stats = {"batches": 0, "images": 0, "largest_batch": 0}

    def __serve_build_asgi_app__(self) -> Any:
        return make_api(self, self.cfg, title=f"zoo inference: {self.cfg.model_ref}")

    # ---------------------------------------------------------------- the Backend of serving.api
    def classifier(self) -> Classifier:
        return self.tracker.current

    async def classify(self, images: list[np.ndarray], top_k: int) -> list[Prediction]:
        # one queue entry per image, so the images of a JSON batch join other requests' batches too
        return list(await asyncio.gather(*(self._classify_batch((image, top_k)) for image in images)))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _classify_batch(self, items: list[tuple[np.ndarray, int]]) -> list[Prediction]:
        classifier = self.tracker.current  # this batch keeps this version even if the alias moves now
        images, ks = [image for image, _ in items], [k for _, k in items]
        stats = self.batch_stats
        stats["batches"] += 1
        stats["images"] += len(items)
        stats["largest_batch"] = max(stats["largest_batch"], len(items))
        # The forward pass runs in a thread so the event loop keeps parsing and decoding the next requests.
        return await asyncio.to_thread(classifier.predict, images, ks)

    async def reload(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.tracker.refresh)

    def model_status(self) -> dict[str, Any]:
        # fast_path: whether Serve in this replica runs the flags of FAST_PATH_ENV (it reads them at start)
        fast = all(os.environ.get(key) == value for key, value in FAST_PATH_ENV.items())
        return {"serving": {**self.tracker.status(), **self.batch_stats, "fast_path": fast}}

    # ---------------------------------------------------------------- Serve hooks
    def check_health(self) -> None:
        if self.tracker.current is None:
            raise RuntimeError("no model loaded")

    def __del__(self) -> None:
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            tracker.stop()


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The bound application. ``args``: ServeConfig fields (``name``, ``alias``, ``tracking_uri``,
    ``token``, ``top_k``, ``max_batch_size``, ...) over the ZOO_* / MLFLOW_TRACKING_URI environment.
    Used by ``serve run serving.app:build_app name=...`` and by the ``import_path`` of a deploy config."""
    cfg = ServeConfig.from_args(args)
    if not ray.is_initialized():
        # `serve run serving.app:...` builds the app before it starts Ray: Ray's processes inherit this
        # process's environment, so the fast path holds for them all. In a running cluster (a deploy
        # config, tests, benchmarks) the cluster's own environment decides; nothing is changed here.
        export_fast_path(os.environ)
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "backpressure_config": cfg.backpressure,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    }
    if cfg.autoscaling is not None:
        options["autoscaling_config"] = cfg.autoscaling
    else:
        options["num_replicas"] = cfg.num_replicas
    return ZooClassifier.options(**options).bind(cfg.to_dict())


def _app_from_env() -> Application | Any:
    """``serving.app:app``: the application built from the environment (ZOO_MODEL_NAME, ...). Without a
    usable environment it is the builder itself, so that importing this module never fails and
    ``serve run serving.app:app`` reports what is missing (Serve calls a builder with the CLI args)."""
    if not os.environ.get("ZOO_MODEL_NAME", "").strip():
        return build_app
    try:
        return build_app({})
    except ConfigError:
        return build_app


app = _app_from_env()
