"""The cluster launcher configs (cluster.yaml on AWS, cluster-onprem.yaml on listed hosts) pass Ray's
own config preparation and schema validation (the checks `ray up` runs before it contacts a cloud),
carry what the product needs (CPU head, GPU workers, project installed, MLflow server with a database
backend and a shared artifact store, token auth), and every shell command and flag in them parses.
A broken copy must fail the same validation, so these tests can fail."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"aws": ROOT / "cluster.yaml", "onprem": ROOT / "cluster-onprem.yaml"}
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)

autoscaler_util = pytest.importorskip("ray.autoscaler._private.util")
pytest.importorskip("jsonschema")


def load(kind: str) -> dict[str, Any]:
    return yaml.safe_load(CONFIGS[kind].read_text())


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it talks to the provider: fill defaults, merge node types, validate
    against ray-schema.json and the cross-field rules (commands._bootstrap_config)."""
    prepared = autoscaler_util.prepare_config(copy.deepcopy(config))
    autoscaler_util.validate_config(prepared)
    return prepared


def commands(config: dict[str, Any], *lists: str) -> list[str]:
    out: list[str] = []
    for name in lists or COMMAND_LISTS:
        out.extend(config.get(name) or [])
    return out


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_config_passes_ray_validation(kind: str) -> None:
    prepared = ray_validate(load(kind))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # prepare_config must not have replaced our commands with the provider defaults.
    assert any("zoo" in cmd for cmd in prepared["setup_commands"])


def test_aws_cluster_has_cpu_head_and_gpu_workers() -> None:
    config = load("aws")
    prepared = ray_validate(config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    assert workers, "no worker node type"
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= prepared["max_workers"], name
        assert node_type["node_config"]["InstanceType"].startswith(("g", "p")), name


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_project_is_synced_installed_and_token_auth_is_on(kind: str) -> None:
    config = load(kind)
    assert config["file_mounts"].get("~/zoo") == "."
    assert "~/.ray/auth_token" in config["file_mounts"]
    setup = commands(config, "setup_commands")
    assert any(re.search(r"pip install .*-e ~/zoo", cmd) for cmd in setup)
    assert any("RAY_AUTH_MODE=token" in cmd for cmd in setup)
    # Docker-free: the launcher must not wrap the commands in a container.
    assert not ray_validate(config).get("docker")


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_head_runs_mlflow_server_with_database_and_shared_artifacts(kind: str) -> None:
    config = load(kind)
    head = " ".join(commands(config, "head_setup_commands"))
    assert "mlflow server" in head
    assert re.search(r"--backend-store-uri\b.*postgresql://", head)
    assert "--artifacts-destination" in head
    assert "--host 0.0.0.0" in head
    assert "apt-get install" in head and "postgresql" in head
    assert "mlflow-server.log" in head
    # Artifacts go to storage every node can reach: S3 on AWS, the NFS share on premises.
    destination = re.search(r"MLFLOW_ARTIFACTS_DESTINATION:-([^}]+)\}", head)
    assert destination, "no default artifacts destination"
    assert destination.group(1).startswith("s3://" if kind == "aws" else "file://$ZOO_STORAGE")
    # Run directories and checkpoints on a shared mount, the same path on every node.
    setup = " ".join(commands(config, "setup_commands"))
    assert re.search(r"ZOO_STORAGE=\"\$\{ZOO_STORAGE:-/mnt/zoo\}\"", setup)
    assert "mountpoint -q" in setup
    if kind == "aws":
        assert "mount -t nfs4" in setup and "$ZOO_EFS" in setup
    # Jobs anywhere in the cluster reach the head's server.
    assert any("MLFLOW_TRACKING_URI=http://" in cmd and ":5000" in cmd for cmd in head.split("\n"))
    workers = " ".join(commands(config, "worker_setup_commands"))
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in workers


def test_onprem_lists_hosts_and_keeps_them_all() -> None:
    config = load("onprem")
    prepared = ray_validate(config)
    assert prepared["provider"]["type"] == "local"
    ips = prepared["provider"]["worker_ips"]
    assert prepared["provider"]["head_ip"] and ips
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(ips)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_command_is_valid_bash(kind: str) -> None:
    for cmd in commands(load(kind)):
        done = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{cmd!r}: {done.stderr}"


def _flags_after(cmds: list[str], program: str) -> set[str]:
    flags: set[str] = set()
    for cmd in cmds:
        for part in re.split(r"[;&|]+", cmd):
            words = shlex.split(part, comments=False, posix=True)
            joined = " ".join(words)
            if program in joined:
                tail = joined.split(program, 1)[1]
                flags |= {w.split("=", 1)[0] for w in tail.split() if w.startswith("--")}
    return flags


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_ray_start_and_mlflow_server_flags_exist(kind: str) -> None:
    """Ray's schema treats commands as opaque strings: check the flags against the installed CLIs."""
    from mlflow.cli import server
    from ray.scripts.scripts import start

    config = load(kind)
    start_flags = _flags_after(
        commands(config, "head_start_ray_commands", "worker_start_ray_commands"), "ray start"
    )
    assert "--head" in start_flags and "--address" in start_flags
    known = {opt for param in start.params for opt in param.opts}
    assert start_flags <= known, start_flags - known

    # The server command is wrapped in `bash -c '... exec mlflow server ...'`: read the inner script.
    inner = " ".join(re.findall(r"'([^']*exec mlflow server[^']*)'", " ".join(commands(config))))
    server_flags = {w for w in inner.split() if w.startswith("--")}
    assert {"--backend-store-uri", "--artifacts-destination", "--host", "--port"} <= server_flags
    known = {opt for param in server.params for opt in param.opts}
    assert server_flags <= known, server_flags - known


def _unknown_top_level_key(c: dict[str, Any]) -> None:
    c["head_node"] = {"InstanceType": "m6i.xlarge"}  # legacy key, not in ray-schema.json


def _missing_head_type(c: dict[str, Any]) -> None:
    c["head_node_type"] = "no-such-type"


def _min_above_global_max(c: dict[str, Any]) -> None:
    c["available_node_types"]["gpu_worker"]["min_workers"] = c["max_workers"] + 1


def _gpu_count_as_text(c: dict[str, Any]) -> None:
    c["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"


def _command_not_a_string(c: dict[str, Any]) -> None:
    c["worker_start_ray_commands"].append({"run": "ray start"})


def _no_provider(c: dict[str, Any]) -> None:
    del c["provider"]


@pytest.mark.parametrize(
    "breakage",
    [
        _unknown_top_level_key,
        _missing_head_type,
        _min_above_global_max,
        _gpu_count_as_text,
        _command_not_a_string,
        _no_provider,
    ],
)
def test_broken_aws_copy_fails_validation(breakage) -> None:
    import jsonschema

    config = load("aws")
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError)):
        ray_validate(config)


def test_onprem_without_worker_ips_fails() -> None:
    import click

    config = load("onprem")
    del config["provider"]["worker_ips"]
    with pytest.raises(click.ClickException):
        ray_validate(config)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    import os

    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_new_pid(pid_file: Path, old: int | None, timeout_s: float = 60.0) -> int:
    """The start command returns at once; the server's shell writes its pid a moment later."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid_file.exists() and pid_file.read_text().strip():
            pid = int(pid_file.read_text())
            if pid != old:
                return pid
        time.sleep(0.2)
    raise TimeoutError(f"{pid_file} not written within {timeout_s} s")


def _stop_group(pgid: int) -> None:
    import os
    import signal
    import time

    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    for _ in range(60):
        if not _group_alive(pgid):
            return
        time.sleep(1)
    os.killpg(pgid, signal.SIGKILL)


@pytest.mark.slow
def test_head_mlflow_commands_start_restart_and_answer(tmp_path: Path) -> None:
    """Run the head's own MLflow commands from cluster.yaml for real (sqlite standing in for
    PostgreSQL, a local directory for S3, a free port for 5000): the server answers /health, and
    re-running the start command (what `ray up` does on a config change) stops the old server first.
    About a minute on 2 busy cores, most of it MLflow creating its database."""
    import os
    import sys

    port = _free_port()
    head = [cmd.replace("5000", str(port)) for cmd in load("aws")["head_setup_commands"]]
    start = next(cmd for cmd in head if "exec mlflow server" in cmd)
    health = next(cmd for cmd in head if "/health" in cmd)
    env = dict(
        os.environ,
        HOME=str(tmp_path),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
    )
    logs = tmp_path / "logs"
    started: list[int] = []
    try:
        subprocess.run(["bash", "-c", start], env=env, check=True, timeout=120)
        started.append(_wait_for_new_pid(logs / "mlflow-server.pid", None))
        done = subprocess.run(["bash", "-c", health], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + (logs / "mlflow-server.log").read_text()
        # The second start must stop the first server's whole process group before it returns.
        subprocess.run(["bash", "-c", start], env=env, check=True, timeout=120)
        assert not _group_alive(started[0]), "the restart left the old server running"
        started.append(_wait_for_new_pid(logs / "mlflow-server.pid", started[0]))
    finally:
        pid_file = logs / "mlflow-server.pid"
        if pid_file.exists() and pid_file.read_text().strip():
            started.append(int(pid_file.read_text()))
        for pgid in set(started):
            _stop_group(pgid)
