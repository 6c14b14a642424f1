"""Typed configuration of the inference service, from a serve deploy config's ``args``, the command
line of ``serve run serving.app:build_app key=value ...`` and environment variables.

Precedence: explicit args > environment variables > defaults. Every value is checked here, so a bad
setting fails when the application is built, with a message that names the setting, not at the first
request.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any

# Environment variables read by ServeConfig.from_args (name -> field).
ENV_VARS: dict[str, str] = {
    "ZOO_MODEL_NAME": "name",
    "ZOO_MODEL_ALIAS": "alias",
    "MLFLOW_TRACKING_URI": "tracking_uri",
    "ZOO_CACHE_DIR": "cache_dir",
    "ZOO_SERVE_TOKEN": "token",
    "ZOO_SERVE_TOP_K": "top_k",
    "ZOO_SERVE_MAX_BATCH_SIZE": "max_batch_size",
    "ZOO_SERVE_BATCH_WAIT_S": "batch_wait_timeout_s",
    "ZOO_SERVE_MAX_ONGOING_REQUESTS": "max_ongoing_requests",
    "ZOO_SERVE_MAX_QUEUED_REQUESTS": "max_queued_requests",
    "ZOO_SERVE_OVERLOAD_STATUS": "overload_status",
    "ZOO_SERVE_RETRY_AFTER_S": "retry_after_s",
    "ZOO_SERVE_MAX_REQUEST_LINE_BYTES": "max_request_line_bytes",
    "ZOO_SERVE_MAX_BODY_BYTES": "max_body_bytes",
    "ZOO_SERVE_MAX_PIXELS": "max_pixels",
    "ZOO_SERVE_MAX_BATCH_ITEMS": "max_batch_items",
    "ZOO_SERVE_POLL_S": "poll_interval_s",
    "ZOO_SERVE_NUM_REPLICAS": "num_replicas",
    "ZOO_SERVE_MIN_REPLICAS": "min_replicas",
    "ZOO_SERVE_MAX_REPLICAS": "max_replicas",
    "ZOO_SERVE_TARGET_ONGOING": "target_ongoing_requests",
    "ZOO_SERVE_NUM_CPUS": "num_cpus",
    "ZOO_SERVE_NUM_GPUS": "num_gpus",
    "ZOO_SERVE_TORCH_THREADS": "torch_threads",
}

# The fast path (docs/serving.md, "How a request travels"): Serve's throughput-optimized mode (each
# replica serves HTTP itself, no Python proxy hop) behind its HAProxy ingress on the HTTP port. Serve
# reads these where Ray starts, in every Serve process: serving/config.yaml passes them to the controller
# (which hands them to HAProxy and the replicas), build_app exports them before `serve run` starts Ray,
# and cluster.yaml / cluster-onprem.yaml export them before `ray start`. Export one as "0" to opt out.
FAST_PATH_ENV: dict[str, str] = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}
# 97-byte socket path - "/" - 56-hex node id - "/metrics.sock"
HAPROXY_DIR_MAX_CHARS = 97 - 1 - 56 - len("/metrics.sock")


def export_fast_path(environ: MutableMapping[str, str]) -> None:
    """Put FAST_PATH_ENV into ``environ`` where it is not set (an explicit "0" stays)."""
    for key, value in FAST_PATH_ENV.items():
        environ.setdefault(key, value)


def isolated_haproxy_env(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Environment that keeps one Serve cluster's HAProxy apart from another's on the same machine
    (tests, benchmarks, two users): its files under ``directory`` (default /tmp/haproxy-serve) and
    free ports for its stats page and metrics (default 8404 and 9101, on every interface) and for the
    Python fallback proxy that Serve keeps beside HAProxy (default 8500 and 9500).

    HAProxy puts its sockets at ``<directory>/<56-hex node id>/metrics.sock``, and a socket path has at
    most 97 bytes, so ``directory`` must be short: e.g. ``tempfile.mkdtemp(prefix="hap-", dir="/tmp")``.
    """
    d = os.path.abspath(os.fspath(directory))
    if len(d) > HAPROXY_DIR_MAX_CHARS:
        raise ValueError(
            f"HAProxy directory {d!r} has {len(d)} characters; its socket paths would pass the 97-byte limit "
            f"of Unix sockets: use one of at most {HAPROXY_DIR_MAX_CHARS} characters, e.g. under /tmp"
        )
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(d, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(d, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": d,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(d, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(d, "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(_free_port()),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Short names accepted in args (``serve run serving.app:build_app model=models:/x@champion``).
ALIASES = {
    "model": "model_uri",
    "uri": "model_uri",
    "batch_wait_s": "batch_wait_timeout_s",
    "poll_s": "poll_interval_s",
}


class ConfigError(ValueError):
    """A setting of the inference service is missing or out of range."""


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one inference application.

    The served model is ``models:/<name>@<alias>`` of the zoo's registry at ``tracking_uri``; it is
    only ever looked up by registry name, never by a path a client sends.
    """

    name: str = ""  # registered model name (or set model_uri)
    alias: str = "champion"
    model_uri: str = ""  # models:/name@alias (overrides name/alias when given)
    tracking_uri: str = ""  # MLflow tracking/registry URI; empty: the registry's default
    cache_dir: str = ""  # where the registry keeps downloaded versions; empty: its default
    token: str = field(default="", repr=False)  # bearer token; empty: no authentication
    top_k: int = 5
    # dynamic batching (@serve.batch); max_ongoing_requests must be >= max_batch_size or batches
    # never fill (Serve's default of 5 caps them at 5, see RAY-NOTES)
    max_batch_size: int = 32
    # 0: no waiting; the forward pass runs off the event loop, so requests arriving meanwhile form the
    # next batch (measured in benchmarks/serve.py)
    batch_wait_timeout_s: float = 0.0
    max_ongoing_requests: int = 64
    # overload (per replica): requests past max_ongoing_requests wait in a queue of at most
    # max_queued_requests (-1: unbounded); past that Serve answers at once with overload_status (503 or
    # 429) and a Retry-After header of retry_after_s (rounded up to whole seconds)
    max_queued_requests: int = 64
    overload_status: int = 503
    retry_after_s: float = 1.0
    # bad-input limits
    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_batch_items: int = 32
    max_request_line_bytes: int = 8192  # path + query of a request; over it: JSON 414
    # model updates: seconds between re-resolutions of the alias; 0 disables the poll (use /v1/reload)
    poll_interval_s: float = 10.0
    # replicas: autoscaling between min_replicas and max_replicas (Serve adds one when the replicas hold
    # more than target_ongoing_requests each; it starts where the cluster has room, or the cluster
    # autoscaler adds a node), or a fixed num_replicas when max_replicas is 0
    num_replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 32.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    torch_threads: int = 0  # 0: leave torch's default (Ray sets OMP_NUM_THREADS to num_cpus)

    def __post_init__(self) -> None:
        if self.model_uri:
            # Here, not at the top: zoo.registry imports torch, and the config is parsed where no model
            # is loaded (the CLI, Serve's controller); only a model URI needs it.
            from zoo.registry import parse_model_uri

            try:
                name, version, alias = parse_model_uri(self.model_uri)
            except ValueError as exc:
                raise ConfigError(f"model_uri: {exc}") from None
            if version is not None:
                raise ConfigError(
                    f"model_uri {self.model_uri!r} pins version {version}: the service follows an alias; "
                    "use models:/NAME@ALIAS"
                )
            object.__setattr__(self, "name", name)
            object.__setattr__(self, "alias", alias or "champion")
        if not self.name:
            raise ConfigError(
                "no model to serve: set name=<registered model> (or model=models:/NAME@ALIAS) in the app "
                "args, or ZOO_MODEL_NAME in the environment"
            )
        positive = ("top_k", "max_batch_size", "max_ongoing_requests", "max_body_bytes", "max_pixels")
        for key in (*positive, "max_batch_items", "num_replicas", "max_request_line_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        nonnegative = ("batch_wait_timeout_s", "poll_interval_s", "num_cpus", "num_gpus", "torch_threads")
        for key in (*nonnegative, "retry_after_s", "min_replicas"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        if self.max_queued_requests < 1 and self.max_queued_requests != -1:
            raise ConfigError(
                f"max_queued_requests must be >= 1 (or -1 for no bound), got {self.max_queued_requests!r}"
            )
        if self.overload_status not in (503, 429):
            raise ConfigError(f"overload_status must be 503 or 429, got {self.overload_status!r}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size "
                f"({self.max_batch_size}): batches could never fill; raise max_ongoing_requests"
            )
        if self.max_replicas and self.max_replicas < max(self.min_replicas, 1):
            raise ConfigError(f"max_replicas ({self.max_replicas}) must be >= max(min_replicas, 1)")

    @property
    def model_ref(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    @property
    def backpressure(self) -> dict[str, Any]:
        """Serve's backpressure_config: the answer to a request refused past max_queued_requests."""
        return {"status_code": self.overload_status, "retry_after_s": self.retry_after_s}

    @property
    def autoscaling(self) -> dict[str, Any] | None:
        """Serve's autoscaling_config, or None for a fixed number of replicas."""
        if not self.max_replicas:
            return None
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(self.min_replicas, 1),
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }

    @classmethod
    def from_args(
        cls, args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServeConfig:
        """Build from app args (strings from the command line, or typed values from a YAML config) over
        environment variables over defaults. Unknown keys are refused (a typo must not be ignored)."""
        environ = os.environ if environ is None else environ
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for var, key in ENV_VARS.items():
            if environ.get(var, "").strip():
                values[key] = environ[var].strip()
        for raw_key, value in (args or {}).items():
            key = ALIASES.get(raw_key, raw_key)
            if key not in known:
                raise ConfigError(f"unknown setting {raw_key!r}; known: {', '.join(sorted(known))}")
            values[key] = value
        typed = {key: _coerce(key, known[key].default, value) for key, value in values.items()}
        return cls(**typed)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (what travels to the replicas); from_dict(to_dict()) round-trips."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServeConfig:
        return cls(**dict(d))


def _coerce(key: str, default: Any, value: Any) -> Any:
    kind = type(default)
    try:
        if kind is str:
            return str(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"setting {key}={value!r} is not a valid {kind.__name__}")
