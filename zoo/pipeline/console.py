"""A quiet console for the jobs: the stage lines, the progress bars and the summary, not Ray's chatter.

Each setting below silences one kind of line that the default job printed (issue 11) and names what
a user gives up with it. None of them hides an error, a traceback or a warning of our own code: our
own warnings are fixed where they are raised, not filtered. ``ZOO_VERBOSE=1`` (or ``verbose=True``)
sets nothing, so Ray, Ray Data, Ray Train and MLflow print everything they print by default.

Order matters: Ray reads ``RAY_DEDUP_LOGS_SKIP_REGEX`` when ``ray`` is imported, Ray Data reads
``RAY_DATA_LOG_LEVEL`` when ``ray.data`` is imported and MLflow reads ``MLFLOW_LOGGING_LEVEL`` when
``mlflow`` is imported. So a job's entry point calls `quiet_console` first, before it imports anything
that imports them (``zoo.pipeline.unify`` and the other pieces); this module imports none of them.
`zoo.pipeline.session.init_ray` then starts or joins Ray with `ray_init_kwargs` and
`worker_runtime_env(worker_env())`, and `zoo.pipeline.training` gives Ray Train `train_log_level()`::

    quiet_console()                                   # jobs/<job>.py, first
    from zoo.pipeline.unify import run_unify          # imports ray, ray.data, mlflow

Left as Ray's defaults on purpose: ``log_to_driver=True`` (the student's progress bar is printed by
the Ray Train rank-0 worker; a worker's warnings and each failed attempt's traceback reach the user
as they happen; with it off, only the final exception arrives, after the retries) and Ray's log
deduplication (``RAY_DEDUP_LOGS``), which the skip list below rides on.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping

VERBOSE_ENV = "ZOO_VERBOSE"

# Lines of Ray's own processes that the driver drops from the worker output it forwards (Ray's
# `RAY_DEDUP_LOGS_SKIP_REGEX`: a line that matches is never printed). Each is matched by its text,
# so a line that Ray rewords comes back rather than a different line being hidden.
RAY_NOISE = (
    # ray/train/v2/_internal/execution/controller/placement_group_cleaner.py: Train V2's detached
    # PlacementGroupCleaner asks the State API every second whether the controller is alive. With
    # `include_dashboard=False` (the job's private Ray, to save memory and start-up) the dashboard
    # process loads no State API module, so every check fails and logs this WARNING, for the whole
    # run. The cleaner only matters when the Train controller dies ungracefully on a long-lived
    # cluster; a private Ray is shut down with the job. On a cluster with a dashboard it never fires.
    # (With other Ray instances on the machine the cleaner fails differently, with a traceback:
    # `pin_ray_address` below.)
    r"Failed to query Ray Train Controller actor state",
    # core_worker.cc (C++, stderr of the TrainController actor): Ray Train's own PreemptionWatcher
    # actor has max_restarts > 0 and constructor arguments in the object store (ray-project/ray
    # #53727). Only this forwarded copy is dropped. The same line written by the driver's own C++
    # logger, for each Ray Data actor pool (Ray Data always passes its map transformer to the actors
    # as an object-store argument, with max_restarts=-1: ray-project/ray#57733), goes straight to
    # the driver's stderr and still shows: one line per pool.
    r"has constructor arguments in the object store and max_restarts > 0",
    # ray/train/v2/_internal/execution/context.py: every Train worker logs "Reporting training result
    # N: TrainingReport(...)" (metrics and checkpoint path) at INFO on each `ray.train.report`. Its
    # logger is `logging.getLogger(__file__)`, not under `ray.train`, so `ray.train.LoggingConfig`
    # does not reach it. Anchored: a worker's line that only ends with it (glued to a progress bar
    # written without a newline to the same stream) is kept whole rather than lost.
    r"^Reporting training result \d+: TrainingReport\(",
)

# Environment of the quiet console, set before Ray, Ray Data and MLflow are imported.
QUIET_ENV = {
    "RAY_DEDUP_LOGS_SKIP_REGEX": "|".join(RAY_NOISE),
    # Ray Data's `ray.data` logger: its INFO lines are the execution plan, "Progress will be logged
    # because stdout is a non-interactive terminal", and, in a log file, ~8 lines of operator
    # progress every 10 s. WARNING keeps Data's warnings and errors; its tqdm bars on a terminal do
    # not go through logging and stay. Lost: the INFO and DEBUG lines of
    # /tmp/ray/session_*/logs/ray-data/ray-data.log, whose handler hangs off the same logger.
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # MLflow's INFO lines ("Creating initial MLflow database tables...") on a new tracking database.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}

# What the Ray workers need too (through runtime_env, for a cluster that was not started by this
# process and so did not inherit its environment): Data actors import ray.data, the Train worker
# logs to MLflow. The skip list is read by the driver only.
WORKER_ENV_KEYS = ("RAY_DATA_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL")

# Starting a new local Ray with RAY_AUTH_MODE unset turns token authentication on and logs a WARNING
# saying so ("Set RAY_AUTH_MODE=disabled to opt out"). Setting the same mode explicitly is what that
# warning asks for; Ray then says nothing (authentication_token_setup.enable_token_auth_by_default).
# Only for a cluster this process starts: joining a cluster keeps whatever mode the user chose.
LOCAL_CLUSTER_ENV = {"RAY_AUTH_MODE": "token"}

# Python loggers set to WARNING on the driver, in case the library was imported (and configured its
# logger) before `quiet_ray_env` ran: the env vars above then came too late for it.
QUIET_LOGGERS = ("mlflow", "alembic", "ray.data")


def is_verbose(flag: bool | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """The ``--verbose`` flag when given, else ``ZOO_VERBOSE`` (1/true/yes/on, any case)."""
    if flag is not None:
        return bool(flag)
    value = (os.environ if environ is None else environ).get(VERBOSE_ENV, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def quiet_env(verbose: bool, local_cluster: bool) -> dict[str, str]:
    """The environment of a quiet console (empty when verbose): `QUIET_ENV`, plus `LOCAL_CLUSTER_ENV`
    when this process starts its own Ray."""
    if verbose:
        return {}
    return {**QUIET_ENV, **(LOCAL_CLUSTER_ENV if local_cluster else {})}


def quiet_ray_env(verbose: bool | None = None, *, local_cluster: bool = True) -> dict[str, str]:
    """Set the quiet console's environment variables in ``os.environ`` and return those the Ray
    workers need (pass them as ``runtime_env={"env_vars": ...}``). A variable the user already set
    wins. Call it before anything imports ray, ray.data or mlflow; when ray was imported first, the
    skip list cannot take effect and a RuntimeWarning says so."""
    env = quiet_env(is_verbose(verbose), local_cluster)
    if (
        "RAY_DEDUP_LOGS_SKIP_REGEX" in env
        and "ray" in sys.modules
        and not os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
    ):
        warnings.warn(
            "zoo.pipeline.console.quiet_ray_env() ran after `import ray`: Ray's internal log lines "
            "(RAY_DEDUP_LOGS_SKIP_REGEX) will not be filtered; call it before importing ray",
            RuntimeWarning,
            stacklevel=2,
        )
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in WORKER_ENV_KEYS if k in env}


def ray_init_kwargs(verbose: bool | None = None) -> dict[str, object]:
    """Keyword arguments for ``ray.init``: the driver's ``ray`` logger at WARNING, which drops
    "Started a local Ray instance." and "Generated new authentication token" (INFO) and keeps Ray's
    warnings and errors. It does not touch the workers: their lines are forwarded by
    ``log_to_driver``, which stays on (see the module docstring)."""
    if is_verbose(verbose):
        return {}
    return {"logging_level": logging.WARNING}


def train_log_level(verbose: bool | None = None) -> str:
    """The level for ``ray.train.LoggingConfig(log_level=...)`` in the trainer's ``RunConfig``.

    WARNING drops Ray Train's INFO lines on the console, from the controller ("Requesting resources",
    "Started training worker group of size 2: ...") and from every worker ("Setting up process group",
    "Moving model to device", "Checkpoint successfully created"; not "Reporting training result",
    see `RAY_NOISE`). Ray Train's system log files under /tmp/ray/session_*/logs/train/ keep all
    levels; the root logger of the workers (our own loggers) is unaffected."""
    return "INFO" if is_verbose(verbose) else "WARNING"


def pin_ray_address() -> None:
    """A ``worker_process_setup_hook``: set ``RAY_ADDRESS`` in each worker of the job to the cluster it
    belongs to (``ray.get_runtime_context().gcs_address``), unless it is set already.

    Why: Ray Train V2's PlacementGroupCleaner (a detached actor) asks the State API whether the Train
    controller is alive, and the State API client finds its cluster from ``RAY_ADDRESS``, else by
    auto-detection on the machine. A private ``ray.init()`` cluster is not recorded for
    auto-detection, so with other Ray instances on the same machine (other jobs, test sessions) the
    lookup raises ``ConnectionError: Found multiple active Ray instances`` and the cleaner's thread
    dies with a 27-line traceback in the job's output; with a ``ray start`` cluster on the machine it
    would pick that cluster instead. Pinned, the cleaner always asks its own cluster (which, without
    a dashboard, answers with the WARNING dropped by `RAY_NOISE`). Set in every mode, verbose too:
    this is about which cluster is asked, not about what is printed."""
    import ray  # a Ray worker has imported ray already; this module must not (see the docstring)

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def worker_runtime_env(worker_env: Mapping[str, str]) -> dict[str, object]:
    """The job's ``runtime_env`` for ``ray.init``: `quiet_ray_env`'s variables (plus any the caller
    adds, e.g. RAY_AUTH_MODE) and `pin_ray_address` as the workers' setup hook. The hook is named
    by its import path, so the workers need ``zoo`` importable, as they do to run the stages."""
    return {
        "env_vars": dict(worker_env),
        "worker_process_setup_hook": f"{pin_ray_address.__module__}.{pin_ray_address.__name__}",
    }


def worker_env() -> dict[str, str]:
    """The variables of this process the Ray workers need (`WORKER_ENV_KEYS` and RAY_AUTH_MODE)."""
    return {k: os.environ[k] for k in ("RAY_AUTH_MODE", *WORKER_ENV_KEYS) if k in os.environ}


def quiet_console(verbose: bool | None = None) -> None:
    """What a job's entry point calls first: the quiet environment (`quiet_ray_env`; the token mode
    of a local cluster unless the job is told to join one with RAY_ADDRESS: Ray reads it at import),
    and MLflow's own progress bars and usage reporting off."""
    quiet_ray_env(verbose, local_cluster=not os.environ.get("RAY_ADDRESS"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per teacher download
    configure_logging(verbose)


def configure_logging(verbose: bool | None = None) -> None:
    """Set the `QUIET_LOGGERS` to WARNING on the driver (nothing when verbose). Call it after the
    imports; it covers a library imported before `quiet_ray_env` ran."""
    if is_verbose(verbose):
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
