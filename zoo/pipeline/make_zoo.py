"""Build the demo teacher zoo (paper 001, Sec. 4.1.1) on Ray and record it in MLflow.

    build = build_zoo("fmnist-demo", DemoConfig(seed=0))          # or ensure_demo_zoo(...)
    split = load_split("fmnist-demo")                               # the latest build's split

Steps: load the data set, draw the split (`zoo.demo.make_split`), open an MLflow run in the
experiment named after the zoo (tags ``zoo=<name>``, ``kind=split``) and log ``split.json`` there,
train each teacher as a Ray task (one CPU each, one torch thread, a GPU share when the cluster has
GPUs), calibrate it as its owner would (`fit_calibration` on its held-out slice of the split, kept in
the spec's ``metadata["calibration"]``), register each as ``<zoo>-t<i>`` (tags ``zoo``,
``role=teacher``, ``split_run``) and end the run FINISHED. A rebuild of the same zoo makes new
versions of every teacher and a new split run; ``load_split`` reads the latest FINISHED one, so a
crashed build is never taken for a zoo. The data a split indexes (`load_dataset`,
`dataset_for_split`, `transfer_arrays`) is `zoo.pipeline.datasets`'.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from zoo.artifacts import InputSpec, ModelSpec, build_net, preprocess, save_model
from zoo.demo import DemoConfig, DemoSplit, make_split, save_split, with_zoo
from zoo.pipeline.datasets import Dataset, input_spec_for, load_dataset
from zoo.pipeline.session import init_ray
from zoo.registry import ModelNotFound, Registry, default_tracking_uri, experiment_id, validate_name
from zoo.train import evaluate, fit_classifier, pick_device, predict_logits
from zoo.unify.calibration import CALIBRATION_KEY, TeacherCalibration, fit_calibration

__all__ = [
    "DEMO_ZOO",
    "ZooBuild",
    "build_zoo",
    "ensure_demo_zoo",
    "find_split_run",
    "format_table",
    "latest_teachers",
    "load_split",
    "owner_calibration",
    "teacher_name",
    "train_teacher",
]

DEMO_ZOO = "fmnist-demo"  # the zoo the main job builds when it finds none
SPLIT_FILE = "split.json"
TEACHERS_FILE = "teachers.json"


@dataclass
class ZooBuild:
    """What build_zoo made (or ensure_demo_zoo found): the split, the registered teachers (ModelRecord),
    the MLflow run holding split.json, and the table of teachers."""

    name: str
    split: DemoSplit
    records: list[Any]
    run_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    built: bool = True


def teacher_name(zoo: str, i: int) -> str:
    return f"{zoo}-t{i}"


# ----------------------------------------------------------------------------------------- teachers
def owner_calibration(
    model: torch.nn.Module, spec: ModelSpec, images: np.ndarray, labels: np.ndarray
) -> TeacherCalibration:
    """What a teacher's owner ships: `fit_calibration` (temperature with prior_count 1, confidence
    quantiles) of the model's logits on its own labelled held-out images (labels: indices into its
    classes)."""
    with torch.inference_mode():
        logits = predict_logits(model, preprocess(images, spec.input))
    return fit_calibration(logits, torch.as_tensor(np.array(labels, dtype=np.int64)), prior_count=1.0)


def train_teacher(
    arch: str,
    arch_kwargs: Mapping[str, Any],
    classes: Sequence[str],
    input_spec: Mapping[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    eval_images: np.ndarray,
    eval_labels: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    augment: bool,
    seed: int,
    threads: int | None = 1,
    holdout_images: np.ndarray | None = None,
    holdout_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train one teacher from scratch on its own data and measure its accuracy on the test images of
    its own classes. Pure PyTorch (runs inside a Ray task or anywhere); returns the weights (CPU
    tensors), the accuracy, the seconds it took, the device, and the owner's calibration (a dict,
    `owner_calibration` on ``holdout_images``/``holdout_labels``; None without them)."""
    start = time.perf_counter()
    if threads is not None:
        # Several teachers share the machine: one thread each beats oversubscribed thread pools.
        torch.set_num_threads(threads)
    spec = ModelSpec(arch, list(classes), InputSpec.from_dict(dict(input_spec)), dict(arch_kwargs))
    device = pick_device()
    torch.manual_seed(seed)
    model = build_net(spec)
    x = preprocess(images, spec.input)
    y = torch.as_tensor(np.array(labels, dtype=np.int64))  # a copy: Ray hands tasks read-only arrays
    fit_classifier(
        model,
        x,
        y,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        optimizer=optimizer,
        augment=augment,
        progress=False,
    )
    accuracy = evaluate(
        model, preprocess(eval_images, spec.input), torch.tensor(eval_labels)
    )  # a copy: Ray hands tasks read-only arrays
    calibration = None
    if holdout_images is not None and len(holdout_images):
        calibration = owner_calibration(model, spec, holdout_images, holdout_labels).to_dict()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "state": state,
        "accuracy": accuracy,
        "calibration": calibration,
        "seconds": time.perf_counter() - start,
        "device": str(device),
    }


def _teacher_task_options(n_teachers: int) -> dict[str, Any]:
    """Ray resources of one teacher task: one CPU; a share of a GPU when the cluster has GPUs (small
    teachers do not fill one)."""
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 1}
    if gpus > 0:
        opts["num_gpus"] = min(1.0, gpus / max(1, n_teachers)) if gpus < n_teachers else 1.0
    return opts


# ------------------------------------------------------------------------------------------- MLflow
def _client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    uri = tracking_uri or default_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _registry_uri(tracking_uri: Any) -> str | None:
    """Accept a tracking URI or a Registry (the contract's ``load_split(zoo_name, registry)``)."""
    if tracking_uri is None or isinstance(tracking_uri, str):
        return tracking_uri
    uri = getattr(tracking_uri, "tracking_uri", None)
    if not isinstance(uri, str):
        raise ValueError(
            f"tracking_uri must be a URI string or a Registry, got {type(tracking_uri).__name__}"
        )
    return uri


def find_split_run(zoo_name: str, tracking_uri: Any = None) -> str | None:
    """The run id of the latest FINISHED build of ``zoo_name``, or None."""
    client, _ = _client(_registry_uri(tracking_uri))
    exp = client.get_experiment_by_name(zoo_name)
    if exp is None or exp.lifecycle_stage == "deleted":
        return None
    exp_id = exp.experiment_id
    quoted = zoo_name.replace("'", "\\'")
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.kind = 'split' AND tags.zoo = '{quoted}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def load_split(zoo_name: str, tracking_uri: Any = None, run_id: str | None = None) -> DemoSplit:
    """The split of the latest successful build of ``zoo_name`` (or of the build ``run_id``), read
    back from MLflow. ``tracking_uri``: a URI, a `zoo.registry.Registry`, or None for the default."""
    uri = _registry_uri(tracking_uri)
    if run_id is None:
        run_id = find_split_run(zoo_name, uri)
        if run_id is None:
            raise LookupError(
                f"no finished build of zoo {zoo_name!r} in {uri or 'the default MLflow store'}: "
                f"build it with `python jobs/make_zoo.py --name {zoo_name}`"
            )
    client, _ = _client(uri)
    with tempfile.TemporaryDirectory(prefix="zoo-split-") as tmp:
        path = client.download_artifacts(run_id, SPLIT_FILE, tmp)
        return DemoSplit.from_json(Path(path).read_text())


# -------------------------------------------------------------------------------------------- build
def build_zoo(
    name: str,
    cfg: DemoConfig | None = None,
    *,
    data: str | Path | None = None,
    synthetic: bool = False,
    download: bool = False,
    dataset: Dataset | None = None,
    tracking_uri: Any = None,
    progress: bool | None = None,
    timeout_s: float = 3600.0,
) -> ZooBuild:
    """Build the demo zoo ``name`` from scratch (see the module docstring) and return what was made.

    Starts a local Ray runtime when none is connected (and stops it afterwards); on a cluster, call
    ``ray.init(address=...)`` first. ``timeout_s`` bounds the wait for the teachers: a stuck build
    (e.g. no free CPU for the tasks) raises TimeoutError instead of hanging.
    """
    t0 = time.perf_counter()
    cfg = cfg or DemoConfig()
    tracking_uri = _registry_uri(tracking_uri)
    validate_name(teacher_name(name, cfg.n_teachers - 1))
    ds = dataset or load_dataset(data, synthetic=synthetic, download=download)
    split = with_zoo(make_split(cfg, ds.labels_train, ds.labels_test, ds.class_names, dataset=ds.name), name)
    spec_in = input_spec_for(ds.images_train)
    # Every teacher's network is built once here, so that a bad architecture name or keyword fails
    # now, with the allow-list in the message, rather than inside a Ray task after the run is opened.
    specs = [ModelSpec(t.arch, list(t.classes), spec_in, dict(t.arch_kwargs)) for t in split.teachers]
    for spec in specs:
        build_net(spec)
    registry = Registry(tracking_uri)
    client, uri = _client(registry.tracking_uri)
    run = client.create_run(
        experiment_id(client, uri, name),
        run_name=f"build-{name}",
        tags={"zoo": name, "kind": "split", "dataset": ds.name, "overlap": cfg.overlap},
    )
    run_id = run.info.run_id
    started_ray = False
    try:
        with tempfile.TemporaryDirectory(prefix="zoo-build-") as tmp:
            save_split(split, Path(tmp) / SPLIT_FILE)
            client.log_artifact(run_id, str(Path(tmp) / SPLIT_FILE))
        _log_params(client, run_id, cfg, ds, split)
        # One logical CPU per core: a teacher task is CPU-bound (more would only contend).
        quiet = _no_bar(progress)
        say = lambda line: quiet or print(line, file=sys.stderr)  # noqa: E731
        started_ray = init_ray(num_cpus=os.cpu_count() or 1, log=say)
        rows = _train_and_register(name, cfg, split, ds, specs, registry, run_id, progress, timeout_s)
        seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="zoo-build-") as tmp:
            (Path(tmp) / TEACHERS_FILE).write_text(json.dumps(rows, indent=2))
            client.log_artifact(run_id, str(Path(tmp) / TEACHERS_FILE))
        client.log_metric(run_id, "mean_teacher_accuracy", float(np.mean([r["accuracy"] for r in rows])))
        client.log_metric(run_id, "build_seconds", seconds)
        client.set_terminated(run_id, "FINISHED")
        records = [registry.get(r["name"], version=r["version"]) for r in rows]
        return ZooBuild(name, split, records, run_id, rows, seconds, built=True)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    finally:
        if started_ray:
            ray.shutdown()


def _train_and_register(
    name: str,
    cfg: DemoConfig,
    split: DemoSplit,
    ds: Dataset,
    specs: list[ModelSpec],
    registry: Registry,
    run_id: str,
    progress: bool | None,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Train every teacher as a Ray task and register each as it finishes; returns the teachers' table
    rows, in teacher order. Pending tasks are cancelled when anything fails."""
    remote = ray.remote(train_teacher).options(**_teacher_task_options(cfg.n_teachers))
    refs: dict[Any, int] = {}
    for i, t in enumerate(split.teachers):
        x, y = split.teacher_data(i, ds.images_train, ds.labels_train)
        xe, ye = split.teacher_eval(i, ds.images_test, ds.labels_test)
        xh, yh = split.teacher_holdout(i, ds.images_train, ds.labels_train)
        kwargs = dict(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, optimizer=cfg.optimizer)
        ref = remote.remote(
            t.arch, dict(t.arch_kwargs), list(t.classes), specs[i].input.to_dict(), x, y, xe, ye,
            augment=cfg.augment, seed=cfg.seed * 1000 + i, holdout_images=xh, holdout_labels=yh, **kwargs,
        )  # fmt: skip
        refs[ref] = i
    pending = list(refs)
    rows: list[dict[str, Any]] = [{}] * len(split.teachers)
    deadline = time.monotonic() + timeout_s
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        with tqdm(
            total=len(refs), desc=f"teachers of {name}", unit="teacher", disable=_no_bar(progress)
        ) as bar:
            while pending:
                done, pending = ray.wait(
                    pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic())
                )
                if not done:
                    raise TimeoutError(
                        f"{len(pending)} teacher(s) of {name} not trained after {timeout_s:.0f} s; "
                        "check that the Ray cluster has free CPUs (`ray status`) or raise timeout_s"
                    )
                i = refs[done[0]]
                out = ray.get(done[0])
                rows[i] = _register_teacher(name, i, cfg, split, ds, specs[i], out, registry, run_id, created)
                bar.set_postfix_str(f"{rows[i]['name']} {out['accuracy']:.3f}", refresh=False)
                bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return rows


def _register_teacher(
    name: str,
    i: int,
    cfg: DemoConfig,
    split: DemoSplit,
    ds: Dataset,
    spec: ModelSpec,
    out: dict[str, Any],
    registry: Registry,
    run_id: str,
    created: str,
) -> dict[str, Any]:
    """Register teacher i (trained: ``out``) as ``<zoo>-t<i>``; returns its row of the table."""
    t = split.teachers[i]
    tname = teacher_name(name, i)
    model = build_net(spec)
    model.load_state_dict(out["state"])
    metadata = {
        "source": f"demo:{name}",
        "metrics": {"accuracy": out["accuracy"]},
        "created": created,
        "zoo": name,
        "teacher_index": i,
        "split_run": run_id,
        "dataset": ds.name,
        "train_images": len(t.train_indices),
        **({CALIBRATION_KEY: out["calibration"]} if out.get("calibration") else {}),
    }
    with tempfile.TemporaryDirectory(prefix="zoo-teacher-") as tmp:
        model_dir = save_model(model, replace(spec, metadata=metadata), Path(tmp) / tname)
        record = registry.register(
            tname,
            model_dir,
            tags={"zoo": name, "role": "teacher", "split_run": run_id, "teacher_index": str(i)},
            description=f"teacher {i} of the demo zoo {name} (paper 001 protocol, {cfg.overlap})",
        )
    registry.client.log_metric(run_id, f"t{i}_accuracy", out["accuracy"])
    return {
        "name": tname,
        "version": record.version,
        "arch": _arch_label(t.arch, t.arch_kwargs),
        "classes": ", ".join(t.classes),
        "images": len(t.train_indices),
        "accuracy": out["accuracy"],
        "temperature": (out.get("calibration") or {}).get("temperature"),
        "seconds": out["seconds"],
        "device": out["device"],
    }


def _log_params(client: Any, run_id: str, cfg: DemoConfig, ds: Dataset, split: DemoSplit) -> None:
    params = {
        k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v) for k, v in cfg.to_dict().items()
    }
    params.update(
        dataset=ds.name,
        union_classes=json.dumps(list(split.union_classes)),
        transfer_size_actual=str(len(split.transfer_indices)),
        eval_size=str(len(split.eval_indices)),
        val_size_actual=str(len(split.val_indices)),
    )
    client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])


def _arch_label(arch: str, kwargs: Mapping[str, Any]) -> str:
    return arch + "".join(f":{k}={v}" for k, v in sorted(kwargs.items()))


def _no_bar(progress: bool | None) -> bool:
    if progress is not None:
        return not progress
    return not sys.stderr.isatty() or os.environ.get("TQDM_DISABLE", "") not in ("", "0")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table of teachers: name, arch, classes, images, accuracy (own classes), the owner's
    calibrated temperature (blank without one), seconds."""
    head = ("name", "ver", "arch", "classes", "images", "accuracy", "temp", "seconds")
    body = [
        (
            f"{r['name']}",
            f"{r.get('version', '')}",
            r["arch"],
            r["classes"],
            str(r["images"]),
            f"{r['accuracy']:.4f}",
            "" if r.get("temperature") is None else f"{r['temperature']:.3f}",
            f"{r['seconds']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[k]) for b in body)) if body else len(h) for k, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def latest_teachers(zoo_name: str, tracking_uri: Any = None) -> list[Any]:
    """The teachers (ModelRecord, exact versions) of the latest finished build of ``zoo_name``, in
    teacher order. Unlike ``Registry.list({"zoo": name})`` this leaves out ``<zoo>-t<i>`` models
    left over from an earlier build with more teachers. Raises LookupError when there is no build."""
    uri = _registry_uri(tracking_uri)
    run_id = find_split_run(zoo_name, uri)
    if run_id is None:
        raise LookupError(
            f"no finished build of zoo {zoo_name!r}: run `python jobs/make_zoo.py --name {zoo_name}`"
        )
    registry = Registry(uri)
    by_index = {}
    for name in registry.names():
        if not name.startswith(f"{zoo_name}-t"):
            continue
        for rec in registry.versions(name):
            if rec.tags.get("split_run") == run_id and rec.tags.get("teacher_index", "").isdigit():
                by_index[int(rec.tags["teacher_index"])] = rec
    return [by_index[i] for i in sorted(by_index)]


def ensure_demo_zoo(
    name: str = DEMO_ZOO,
    cfg: DemoConfig | None = None,
    tracking_uri: Any = None,
    **build_kwargs: Any,
) -> ZooBuild:
    """The demo zoo ``name``: built with ``cfg`` only if absent. Present means: a finished build
    (split run) whose teachers ``<name>-t<i>`` are all registered, the latest version of each from
    that build. A present zoo is returned as is, even if ``cfg`` differs (rebuild with build_zoo)."""
    tracking_uri = _registry_uri(tracking_uri)
    run_id = find_split_run(name, tracking_uri)
    if run_id is not None:
        split = load_split(name, tracking_uri, run_id=run_id)
        registry = Registry(tracking_uri)
        records = []
        for i in range(len(split.teachers)):
            try:
                rec = registry.get(teacher_name(name, i))
            except ModelNotFound:
                break
            if rec.tags.get("split_run") != run_id:
                break
            records.append(rec)
        else:
            rows = [
                {
                    "name": r.name,
                    "version": r.version,
                    "arch": _arch_label(t.arch, t.arch_kwargs),
                    "classes": ", ".join(t.classes),
                    "images": len(t.train_indices),
                    "accuracy": float(r.spec.metadata.get("metrics", {}).get("accuracy", float("nan"))),
                    "temperature": (r.spec.metadata.get(CALIBRATION_KEY) or {}).get("temperature"),
                    "seconds": float("nan"),
                }
                for r, t in zip(records, split.teachers)
            ]
            return ZooBuild(name, split, records, run_id, rows, 0.0, built=False)
    return build_zoo(name, cfg, tracking_uri=tracking_uri, **build_kwargs)
