"""A job's session: where its zoo and runs live, its MLflow run, and Ray, started only when a stage needs it.

    with Session("unify", run_dir, tracking_uri=cfg.tracking_uri, force=cfg.force) as s:
        teachers = resolve_teachers(s.registry, ...)            # checked before any compute
        out = inference_stage(s.run, ..., start_ray=s.start_ray)  # Ray starts here, if at all
        run_id = s.open_mlflow_run("unify", "my-model", tags={...})

Every job resolves its MLflow store and run directory the same way (`tracking_uri_for`, `job_home`),
gets its MLflow experiment the same way (`zoo.registry.experiment_id`), and joins Ray the same way
(`init_ray`): the job's cluster (`ray job submit` sets RAY_ADDRESS), an address given, a cluster
already running on this machine (`ray start --head`), else a local Ray it starts and stops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

# Private, and on purpose: Ray has no public way to ask "is a `ray start` cluster running on this
# machine?". `ray.init()` alone joins one but then refuses num_cpus, and a stale bootstrap file (a
# cluster that was stopped) sends it to a dead address: the file `ray start` writes, checked against the
# live GCS processes, is what tells. Other processes' private `ray.init()` clusters are never joined.
from ray._private.services import find_bootstrap_address, find_gcs_addresses

from zoo.pipeline.cache import RunDir
from zoo.pipeline.console import (
    ray_init_kwargs,
    worker_env,
    worker_runtime_env,
)
from zoo.registry import Registry, default_tracking_uri, experiment_id

__all__ = ["Session", "init_ray", "job_home", "tracking_uri_for"]


def job_home() -> Path | None:
    """Where jobs keep the zoo (sqlite) and their runs when not in the current directory: $ZOO_HOME,
    or ~/.zoo when the job runs in the temporary copy that `ray job submit --working-dir` unpacks
    (each submission gets a fresh copy: a zoo.db there would be lost). None: the current directory."""
    if os.environ.get("ZOO_HOME"):
        return Path(os.environ["ZOO_HOME"]).expanduser()
    cwd = Path.cwd().parts
    if "runtime_resources" in cwd and any("working_dir" in p for p in cwd):
        return Path.home() / ".zoo"
    return None


def tracking_uri_for(explicit: str | None = None) -> str:
    """The MLflow store of a job: ``explicit``, else $MLFLOW_TRACKING_URI, else ``zoo.db`` in the job's
    home (`job_home`), else ``zoo.db`` in the current directory."""
    if explicit:
        return explicit
    home = job_home()
    if os.environ.get("MLFLOW_TRACKING_URI") or home is None:
        return default_tracking_uri()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'zoo.db'}"


def init_ray(
    address: str | None = None, num_cpus: int | None = None, log: Callable[[str], None] = print
) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS, set by `ray job submit`), or a cluster running
    on this machine (`ray start --head`), saying which; else start a local Ray with enough logical
    CPUs that Data read tasks and Train workers are never starved by actors (RAY-NOTES), quiet
    (`zoo.pipeline.console`). Returns True when this call started Ray (the caller stops it)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or _running_ray_start_cluster()
    if address:
        ray.init(address=address, runtime_env=worker_runtime_env(worker_env()), **ray_init_kwargs())
        log(f"[ray] joined the cluster at {ray.get_runtime_context().gcs_address}")
        return False
    num_cpus = num_cpus or max(4, 2 * (os.cpu_count() or 1))
    log(f"[ray] starting a local Ray ({num_cpus} logical CPUs, no dashboard)")
    # "local": a new instance even where a stopped cluster left its bootstrap file behind.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env=worker_runtime_env(worker_env()),
        **ray_init_kwargs(),
    )
    return True


def _running_ray_start_cluster() -> str | None:
    """The address of the cluster `ray start --head` runs on this machine, when it is alive."""
    bootstrap = find_bootstrap_address(None)
    return bootstrap if bootstrap and bootstrap in find_gcs_addresses() else None


class Session:
    """One job's context: the MLflow store and registry, the run directory (with ``force`` and the
    log), Ray on demand (`start_ray`, stopped at the end if this session started it), and the job's
    MLflow run. Use it as a context manager."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tracking_uri: str | None = None,
        force: bool = False,
        log: Callable[[str], None] = print,
        ray_address: str | None = None,
        num_cpus: int | None = None,
    ):
        home = job_home()
        if home is not None and "://" not in str(run_dir) and not Path(run_dir).is_absolute():
            # A `ray job submit --working-dir` copy (or ZOO_HOME): keep runs where the next job finds them.
            run_dir = home / run_dir
            log(
                f"[job] running in a Ray job's working-dir copy: zoo and runs under {home} "
                "(set ZOO_HOME to change)"
            )
        self.tracking_uri = tracking_uri_for(tracking_uri)
        self.registry = Registry(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run = RunDir(run_dir, force=force, log=log).ensure()
        self.log = log
        self._ray = (ray_address, num_cpus)
        self._started_ray: bool | None = None
        log(f"[job] run directory {self.run.display}; MLflow {self.tracking_uri}")

    def start_ray(self) -> None:
        """Ray, now (once): joined or started by `init_ray`."""
        if self._started_ray is None:
            self._started_ray = init_ray(*self._ray, log=self.log)

    def open_mlflow_run(
        self, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any] = {}
    ) -> str:
        """A new MLflow run of the job in ``experiment`` (created when missing); returns its id."""
        run = self.client.create_run(
            experiment_id(self.client, self.tracking_uri, experiment), run_name=run_name, tags=dict(tags)
        )
        if params:
            self.client.log_batch(
                run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
            )
        return run.info.run_id

    def close(self) -> None:
        if self._started_ray:
            ray.shutdown()
            self._started_ray = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
