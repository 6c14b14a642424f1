"""Build the demo teacher zoo (paper 001, Sec. 4.1.1) on Ray and record it in MLflow.

    build = build_zoo("fmnist-demo", DemoConfig(seed=0))          # or ensure_demo_zoo(...)
    split = load_split("fmnist-demo")                               # the latest build's split

Steps: load the data set, draw the split (`zoo.demo.make_split`), open an MLflow run in the
experiment named after the zoo (tags ``zoo=<name>``, ``kind=split``) and log ``split.json`` there,
train each teacher as a Ray task (one CPU each, one torch thread, a GPU share when the cluster has
GPUs), register each as ``<zoo>-t<i>`` (tags ``zoo``, ``role=teacher``, ``split_run``) and end the
run FINISHED. A rebuild of the same zoo makes new versions of every teacher and a new split run;
``load_split`` reads the latest FINISHED one, so a crashed build is never taken for a zoo.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data import FASHION_MNIST_CLASSES, load_fashion_mnist, synthetic_class_names, synthetic_images
from zoo.demo import DemoConfig, DemoSplit, make_split, save_split, with_zoo

DEMO_ZOO = "fmnist-demo"  # the zoo the main job builds when it finds none
SPLIT_FILE = "split.json"
TEACHERS_FILE = "teachers.json"
# Sizes of the synthetic stand-in for Fashion-MNIST (--synthetic): 10 classes of 16x16 patterns.
SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_SIZE = 12000, 2000, 16


@dataclass(frozen=True)
class Dataset:
    """A labelled data set with a train and a test split (uint8 images, int64 labels)."""

    name: str
    images_train: np.ndarray
    labels_train: np.ndarray
    images_test: np.ndarray
    labels_test: np.ndarray
    class_names: tuple[str, ...]


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
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


def teacher_name(zoo: str, i: int) -> str:
    return f"{zoo}-t{i}"


def load_dataset(data: str | Path | None = None, synthetic: bool = False, download: bool = False) -> Dataset:
    """Fashion-MNIST (from ``data``, or where `zoo.data.find_fashion_mnist` looks), or with
    ``synthetic=True`` the synthetic stand-in (10 classes, 16x16; for tests and machines without it)."""
    if synthetic:
        xtr, ytr = synthetic_images(SYNTHETIC_TRAIN, 10, size=SYNTHETIC_SIZE, seed=0)
        xte, yte = synthetic_images(SYNTHETIC_TEST, 10, size=SYNTHETIC_SIZE, seed=1)
        return Dataset("synthetic", xtr, ytr, xte, yte, synthetic_class_names(10))
    xtr, ytr = load_fashion_mnist("train", data, download=download)
    xte, yte = load_fashion_mnist("test", data, download=download)
    return Dataset("fashion-mnist", xtr, ytr, xte, yte, FASHION_MNIST_CLASSES)


def dataset_for_split(split: DemoSplit, data: str | Path | None = None, download: bool = False) -> Dataset:
    """The data set a split was drawn from (Fashion-MNIST or the synthetic one), checked against the
    split's label fingerprint: with it, the split's views (teacher data, SPV, transfer and evaluation
    sets) are exactly those of the build."""
    ds = load_dataset(data, synthetic=split.dataset == "synthetic", download=download)
    split.check_labels(ds.labels_train, ds.labels_test)
    return ds


def transfer_arrays(split: DemoSplit, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """The transfer set of a demo split as (images uint8 [B, H, W], ids ``train-<index>``), the form
    `zoo.pipeline.transfer.materialize_transfer_set` takes."""
    return split.transfer_images(ds.images_train), [f"train-{i}" for i in split.transfer_indices]


def input_spec_for(images: np.ndarray):
    """The input contract of the zoo's teachers: the data set's size and channels, normalised with
    the training split's mean and standard deviation."""
    from zoo.artifacts import InputSpec

    x = images.astype(np.float32) / 255.0
    if images.ndim == 3:
        return InputSpec(1, images.shape[1], images.shape[2], (float(x.mean()),), (float(x.std()),))
    axes = (0, 1, 2)
    return InputSpec(
        images.shape[3],
        images.shape[1],
        images.shape[2],
        tuple(map(float, x.mean(axes))),
        tuple(map(float, x.std(axes))),
    )


# ----------------------------------------------------------------------------------------- teachers
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
) -> dict[str, Any]:
    """Train one teacher from scratch on its own data and measure its accuracy on the test images of
    its own classes. Pure PyTorch (runs inside a Ray task or anywhere); returns the weights (CPU
    tensors), the accuracy, the seconds it took and the device."""
    import torch

    from zoo.architectures import build_model
    from zoo.artifacts import InputSpec, preprocess
    from zoo.train import evaluate, fit_classifier, pick_device

    start = time.perf_counter()
    if threads is not None:
        # Several teachers share the machine: one thread each beats oversubscribed thread pools.
        torch.set_num_threads(threads)
    spec = InputSpec.from_dict(dict(input_spec))
    device = pick_device()
    torch.manual_seed(seed)
    model = build_model(arch, len(classes), spec.channels, (spec.height, spec.width), **dict(arch_kwargs))
    x = preprocess(images, spec)
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
    accuracy = evaluate(model, preprocess(eval_images, spec), torch.as_tensor(eval_labels))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "state": state,
        "accuracy": accuracy,
        "seconds": time.perf_counter() - start,
        "device": str(device),
    }


def _teacher_task_options(n_teachers: int) -> dict[str, Any]:
    """Ray resources of one teacher task: one CPU; a share of a GPU when the cluster has GPUs (small
    teachers do not fill one)."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 1}
    if gpus > 0:
        opts["num_gpus"] = min(1.0, gpus / max(1, n_teachers)) if gpus < n_teachers else 1.0
    return opts


# ------------------------------------------------------------------------------------------- MLflow
def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    from zoo.registry import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _experiment_id(client: Any, uri: str, name: str, create: bool) -> str | None:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            if not create:
                return None
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    if not create:
        return None
    location = None
    if uri.startswith("sqlite:///"):
        # Artifacts beside the database (as the registry does), not in the working directory.
        db = Path(uri[len("sqlite:///") :].split("?", 1)[0]).expanduser().resolve()
        location = (db.parent / "zoo-artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags={"zoo": name})
    except Exception as exc:  # created concurrently
        if "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
        return client.get_experiment_by_name(name).experiment_id


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
    client, uri = _client(_registry_uri(tracking_uri))
    exp_id = _experiment_id(client, uri, zoo_name, create=False)
    if exp_id is None:
        return None
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
    import ray
    from tqdm.auto import tqdm

    from zoo.architectures import build_model
    from zoo.artifacts import ModelSpec, save_model
    from zoo.registry import Registry, validate_name

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    lap = [t0]

    def mark(phase: str) -> None:
        now = time.perf_counter()
        timings[phase] = timings.get(phase, 0.0) + now - lap[0]
        lap[0] = now

    cfg = cfg or DemoConfig()
    tracking_uri = _registry_uri(tracking_uri)
    validate_name(teacher_name(name, cfg.n_teachers - 1))
    ds = dataset or load_dataset(data, synthetic=synthetic, download=download)
    split = with_zoo(make_split(cfg, ds.labels_train, ds.labels_test, ds.class_names, dataset=ds.name), name)
    spec_in = input_spec_for(ds.images_train)
    # Every architecture of the pool is built once here, so that a bad name or keyword fails now,
    # with the allow-list in the message, rather than inside a Ray task after the run is opened.
    for arch, kwargs in {(t.arch, json.dumps(dict(t.arch_kwargs), sort_keys=True)) for t in split.teachers}:
        build_model(arch, 2, spec_in.channels, (spec_in.height, spec_in.width), **json.loads(kwargs))
    mark("data_and_split")

    registry = Registry(tracking_uri)
    client, uri = _client(registry.tracking_uri)
    exp_id = _experiment_id(client, uri, name, create=True)
    run = client.create_run(
        exp_id,
        run_name=f"build-{name}",
        tags={"zoo": name, "kind": "split", "dataset": ds.name, "overlap": cfg.overlap},
    )
    run_id = run.info.run_id
    started_ray = False
    pending: list[Any] = []
    try:
        with tempfile.TemporaryDirectory(prefix="zoo-build-") as tmp:
            save_split(split, Path(tmp) / SPLIT_FILE)
            client.log_artifact(run_id, str(Path(tmp) / SPLIT_FILE))
        _log_params(client, run_id, cfg, ds, split)
        mark("mlflow_split")

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
            started_ray = True
        mark("ray_init")
        remote = ray.remote(train_teacher).options(**_teacher_task_options(cfg.n_teachers))
        refs: dict[Any, int] = {}
        for i, t in enumerate(split.teachers):
            x, y = split.teacher_data(i, ds.images_train, ds.labels_train)
            xe, ye = split.teacher_eval(i, ds.images_test, ds.labels_test)
            ref = remote.remote(
                t.arch,
                dict(t.arch_kwargs),
                list(t.classes),
                spec_in.to_dict(),
                x,
                y,
                xe,
                ye,
                epochs=cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                optimizer=cfg.optimizer,
                augment=cfg.augment,
                seed=cfg.seed * 1000 + i,
            )
            refs[ref] = i
        pending = list(refs)
        records: list[Any] = [None] * len(split.teachers)
        rows: list[dict[str, Any]] = [{}] * len(split.teachers)
        deadline = time.monotonic() + timeout_s
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
                mark("train_wait")
                t = split.teachers[i]
                tname = teacher_name(name, i)
                model = build_model(
                    t.arch,
                    len(t.classes),
                    spec_in.channels,
                    (spec_in.height, spec_in.width),
                    **dict(t.arch_kwargs),
                )
                model.load_state_dict(out["state"])
                spec = ModelSpec(
                    arch=t.arch,
                    classes=list(t.classes),
                    input=spec_in,
                    arch_kwargs=dict(t.arch_kwargs),
                    metadata={
                        "source": f"demo:{name}",
                        "metrics": {"accuracy": out["accuracy"]},
                        "created": created,
                        "zoo": name,
                        "teacher_index": i,
                        "split_run": run_id,
                        "dataset": ds.name,
                        "train_images": len(t.train_indices),
                    },
                )
                with tempfile.TemporaryDirectory(prefix="zoo-teacher-") as tmp:
                    model_dir = save_model(model, spec, Path(tmp) / tname)
                    records[i] = registry.register(
                        tname,
                        model_dir,
                        tags={"zoo": name, "role": "teacher", "split_run": run_id, "teacher_index": str(i)},
                        description=f"teacher {i} of the demo zoo {name} (paper 001 protocol, {cfg.overlap})",
                    )
                rows[i] = {
                    "name": tname,
                    "version": records[i].version,
                    "arch": _arch_label(t.arch, t.arch_kwargs),
                    "classes": ", ".join(t.classes),
                    "images": len(t.train_indices),
                    "accuracy": out["accuracy"],
                    "seconds": out["seconds"],
                    "device": out["device"],
                }
                client.log_metric(run_id, f"t{i}_accuracy", out["accuracy"])
                mark("register")
                bar.update(1)
                bar.set_postfix_str(f"{tname} {out['accuracy']:.3f}")
        seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="zoo-build-") as tmp:
            (Path(tmp) / TEACHERS_FILE).write_text(json.dumps(rows, indent=2))
            client.log_artifact(run_id, str(Path(tmp) / TEACHERS_FILE))
        client.log_metric(run_id, "mean_teacher_accuracy", float(np.mean([r["accuracy"] for r in rows])))
        client.log_metric(run_id, "build_seconds", seconds)
        client.set_terminated(run_id, "FINISHED")
        mark("finish")
        return ZooBuild(name, split, records, run_id, rows, seconds, built=True, timings=timings)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        client.set_terminated(run_id, "FAILED")
        raise
    finally:
        if started_ray:
            ray.shutdown()


def _log_params(client: Any, run_id: str, cfg: DemoConfig, ds: Dataset, split: DemoSplit) -> None:
    from mlflow.entities import Param

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
    import sys

    return not sys.stderr.isatty() or os.environ.get("TQDM_DISABLE", "") not in ("", "0")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table of teachers: name, arch, classes, images, accuracy (own classes), seconds."""
    head = ("name", "ver", "arch", "classes", "images", "accuracy", "seconds")
    body = [
        (
            f"{r['name']}",
            f"{r.get('version', '')}",
            r["arch"],
            r["classes"],
            str(r["images"]),
            f"{r['accuracy']:.4f}",
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
    from zoo.registry import Registry

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
    from zoo.registry import ModelNotFound, Registry

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
                    "seconds": float("nan"),
                }
                for r, t in zip(records, split.teachers)
            ]
            return ZooBuild(name, split, records, run_id, rows, 0.0, built=False)
    return build_zoo(name, cfg, tracking_uri=tracking_uri, **build_kwargs)


__all__ = [
    "Dataset",
    "ZooBuild",
    "DEMO_ZOO",
    "build_zoo",
    "dataset_for_split",
    "ensure_demo_zoo",
    "find_split_run",
    "format_table",
    "input_spec_for",
    "latest_teachers",
    "load_dataset",
    "load_split",
    "teacher_name",
    "train_teacher",
    "transfer_arrays",
]
