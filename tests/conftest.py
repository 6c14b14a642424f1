"""Shared fixtures. Ray is started once per test session (each start costs 5-9 s on 2 cores);
MLflow gets a fresh sqlite file per test so tests never see each other's models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from zoo.pipeline.console import quiet_ray_env

# The jobs' quiet console (zoo.pipeline.console), set before anything imports Ray or MLflow: the tests
# run the jobs in this process, and a failure's output is easier to read without Ray's chatter.
quiet_ray_env(local_cluster=False)

# Property tests draw the same examples on every run: CI must not fail on a rare unlucky draw that
# nobody can reproduce. Deadlines are off because a shared 2-core machine makes timings meaningless.
settings.register_profile(
    "zoo", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("zoo")

# Token auth is on by default in Ray 2.60; tests talk to their own local cluster only.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray gives a raylet 30 s to start; on a loaded 2-core machine that was measured to be too short.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# One torch thread per process: on 2 cores shared with Ray workers, more threads only contend (a tiny
# CNN fit measured 63 s with 2 threads against 4 s with 1 under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray runtime shared by the whole session (4 logical CPUs on 2 cores, so Data read
    tasks are never starved by actors; see RAY-NOTES)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",  # a new instance, whatever cluster or stale bootstrap file the machine has
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture()
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite MLflow store for one test, exported as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    return uri
