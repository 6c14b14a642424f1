"""Typed configuration of the inference service, from a serve deploy config's ``args``, the command
line of ``serve run serving.app:build_app key=value ...`` and environment variables.

Precedence: explicit args > environment variables > defaults. Every value is checked here, so a bad
setting fails when the application is built, with a message that names the setting, not at the first
request.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
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
    # bad-input limits
    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_batch_items: int = 32
    # model updates: seconds between re-resolutions of the alias; 0 disables the poll (use /v1/reload)
    poll_interval_s: float = 10.0
    # replicas: a fixed number, or autoscaling between min_replicas and max_replicas when max > min
    num_replicas: int = 1
    min_replicas: int = 0
    max_replicas: int = 0
    target_ongoing_requests: float = 16.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    torch_threads: int = 0  # 0: leave torch's default (Ray sets OMP_NUM_THREADS to num_cpus)

    def __post_init__(self) -> None:
        if self.model_uri:
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
        for key in (*positive, "max_batch_items", "num_replicas"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("batch_wait_timeout_s", "poll_interval_s", "num_cpus", "num_gpus", "torch_threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)!r}")
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
