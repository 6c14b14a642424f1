"""The quiet console's settings: what is set, what a user's own setting keeps, what verbose restores."""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import types

import pytest

from zoo.pipeline import console

ENV_KEYS = (
    "RAY_DEDUP_LOGS_SKIP_REGEX",
    "RAY_DATA_LOG_LEVEL",
    "MLFLOW_LOGGING_LEVEL",
    "RAY_AUTH_MODE",
    console.VERBOSE_ENV,
)


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, {}, False),
        (None, {"ZOO_VERBOSE": "1"}, True),
        (None, {"ZOO_VERBOSE": " Yes "}, True),
        (None, {"ZOO_VERBOSE": "0"}, False),
        (None, {"ZOO_VERBOSE": ""}, False),
        (False, {"ZOO_VERBOSE": "1"}, False),
        (True, {}, True),
    ],
)
def test_is_verbose_flag_wins_over_env(flag, env, expected):
    assert console.is_verbose(flag, environ=env) is expected


def test_skip_regex_matches_the_noise_lines_only():
    skip = re.compile(console.QUIET_ENV["RAY_DEDUP_LOGS_SKIP_REGEX"])
    noise = [
        "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
        "Continuing to monitor.",
        "[2026-12-02 02:16:44,542 E 5632 5677] core_worker.cc:2465: Actor with class name: "
        "'PreemptionWatcher' and ID: 'd9db' has constructor arguments in the object store and "
        "max_restarts > 0. If the arguments in the object store go out of scope or are lost, ...",
        "Reporting training result 3: TrainingReport(checkpoint=None, metrics={'epoch': 2}) from rank 1",
    ]
    kept = [
        "Traceback (most recent call last):",
        "RuntimeError: injected failure in the student's training loop",
        "Detected that the Ray Train controller actor (abc) is dead. Cleaning up placement group",
        "train student:  20%|██        | 1/5 [00:07<00:30,  7.58s/epoch, train_loss=10.3]",
        "UserWarning: The given NumPy array is not writable",
        # a progress bar written without a newline, then the Train line on the same stream: kept whole
        "train student:  20%|██        | 1/5 [00:26<01:47]Reporting training result 1: TrainingReport(",
    ]
    assert all(skip.search(line) for line in noise)
    assert not any(skip.search(line) for line in kept)


def test_quiet_ray_env_sets_env_and_returns_the_workers_share(clean_env):
    worker_env = console.quiet_ray_env(False, local_cluster=True)
    for key, value in {**console.QUIET_ENV, **console.LOCAL_CLUSTER_ENV}.items():
        assert os.environ[key] == value
    assert worker_env == {k: console.QUIET_ENV[k] for k in console.WORKER_ENV_KEYS}
    assert "RAY_DEDUP_LOGS_SKIP_REGEX" not in worker_env  # read by the driver only


def test_quiet_ray_env_keeps_the_users_own_settings(clean_env):
    clean_env.setenv("RAY_DATA_LOG_LEVEL", "DEBUG")
    clean_env.setenv("RAY_AUTH_MODE", "disabled")
    worker_env = console.quiet_ray_env(False, local_cluster=True)
    assert os.environ["RAY_DATA_LOG_LEVEL"] == "DEBUG"
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert worker_env["RAY_DATA_LOG_LEVEL"] == "DEBUG"


def test_joining_a_cluster_leaves_its_auth_mode_alone(clean_env):
    console.quiet_ray_env(False, local_cluster=False)
    assert "RAY_AUTH_MODE" not in os.environ


def test_verbose_sets_nothing(clean_env):
    clean_env.setenv(console.VERBOSE_ENV, "1")
    assert console.quiet_ray_env() == {}
    assert not any(k in os.environ for k in ENV_KEYS[:-1])
    assert console.ray_init_kwargs() == {}
    assert console.train_log_level() == "INFO"


def test_quiet_init_and_train_levels(clean_env):
    assert console.ray_init_kwargs(False) == {"logging_level": logging.WARNING}
    assert console.train_log_level(False) == "WARNING"


def test_late_call_after_import_ray_warns(clean_env):
    clean_env.setitem(sys.modules, "ray", sys.modules.get("ray", object()))
    with pytest.warns(RuntimeWarning, match="before importing ray"):
        console.quiet_ray_env(False)


def test_configure_logging_quiets_and_verbose_leaves_alone(monkeypatch):
    for name in console.QUIET_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    console.configure_logging(True)
    assert all(logging.getLogger(n).level == logging.INFO for n in console.QUIET_LOGGERS)
    console.configure_logging(False)
    assert all(logging.getLogger(n).level == logging.WARNING for n in console.QUIET_LOGGERS)


def test_worker_runtime_env_names_an_importable_hook():
    env = console.worker_runtime_env({"RAY_DATA_LOG_LEVEL": "WARNING"})
    assert env["env_vars"] == {"RAY_DATA_LOG_LEVEL": "WARNING"}
    module, _, name = env["worker_process_setup_hook"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is console.pin_ray_address


def test_pin_ray_address_sets_the_workers_own_cluster_unless_set(monkeypatch):
    fake_ray = types.SimpleNamespace(
        get_runtime_context=lambda: types.SimpleNamespace(gcs_address="10.0.0.7:6379")
    )
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    console.pin_ray_address()
    assert os.environ["RAY_ADDRESS"] == "10.0.0.7:6379"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    console.pin_ray_address()
    assert os.environ["RAY_ADDRESS"] == "head:6379"
