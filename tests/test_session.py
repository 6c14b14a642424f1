"""A job's session: where its store and runs live, and how it gets Ray (zoo.pipeline.session)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from zoo.pipeline.session import job_home, tracking_uri_for

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_under(tmp: str) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose command line names ``tmp``: Ray's daemons (GCS,
    raylet, log monitors) name their session directory there."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                if tmp in cmdline:
                    found.append((int(proc.name), cmdline))
        except OSError:
            pass
    return found


def _raylet_running(tmp: str) -> bool:
    return any("raylet" in cmd and "--gcs-address" in cmd for _, cmd in _processes_under(tmp))


def _kill_processes_under(tmp: str) -> None:
    """Some of the head's daemons leave its process group, so killing the group is not enough."""
    for pid, _ in _processes_under(tmp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_job_joins_the_ray_start_cluster_running_on_the_machine() -> None:
    """Issue 16: `python jobs/unify.py` right after the README's `ray start --head` crashed (ray.init
    refuses num_cpus when it joins). init_ray now joins that cluster and says which; it neither starts
    nor stops one of its own. The cluster lives in its own temp dir, on loopback and a free port, so
    that nothing else on the machine sees it or collides with it, and is stopped by killing its
    processes (`ray stop` stops every cluster); the job starts only once `ray status` answers."""
    with tempfile.TemporaryDirectory(prefix="zt-", dir="/tmp") as tmp:  # short: Ray's socket paths
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        address = f"127.0.0.1:{_free_port()}"
        head = subprocess.Popen(
            [str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", address.split(":")[1],
             "--temp-dir", f"{tmp}/ray", "--num-cpus", "3", "--include-dashboard=false", "--block"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            # Up: the GCS answers and the head's raylet runs (a job finds a cluster by its raylet).
            while (
                not _raylet_running(tmp)
                or subprocess.run(
                    [str(RAY), "status", "--address", address], env=env, capture_output=True, timeout=120
                ).returncode
            ):
                assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
                time.sleep(1)
            code = (
                "import ray; from zoo.pipeline.session import init_ray; started = init_ray(num_cpus=2); "
                "print('started', started, 'cpus', ray.cluster_resources().get('CPU'))"
            )
            done = subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
            )
        finally:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
            _kill_processes_under(tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[ray] joined the cluster at " in done.stdout and address.split(":")[1] in done.stdout
    assert "started False cpus 3.0" in done.stdout  # the running cluster's 3 CPUs, not a new 2-CPU Ray


def test_the_store_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule for every job (and jobs/sweep.py, which ignored it under ZOO_HOME): an explicit URI,
    else $MLFLOW_TRACKING_URI, else $ZOO_HOME/zoo.db, else ./zoo.db."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    assert job_home() == tmp_path / "home"
    assert tracking_uri_for() == f"sqlite:///{tmp_path / 'home' / 'zoo.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/zoo.db")
    assert tracking_uri_for() == "sqlite:////elsewhere/zoo.db"
    assert tracking_uri_for("sqlite:////given.db") == "sqlite:////given.db"
