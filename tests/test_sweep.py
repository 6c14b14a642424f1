"""The sweep (zoo/pipeline/sweep.py) with real Ray Tune, real MLflow (sqlite) and real Parquet.

A run directory as the main job leaves it after teacher inference: transfer.parquet (synthetic
images) and logits.parquet (two simulated teachers over overlapping class subsets whose logits favour
the true class), in the documented schemas. A tiny grid (4 trials, 1 epoch) is swept; the test checks
the best config, the trials in MLflow nested under the parent run, TensorBoard event files, the plot,
the results file and that a rerun is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zoo.artifacts import InputSpec, ModelSpec
from zoo.data import synthetic_images
from zoo.labels import build_label_space
from zoo.pipeline.datasets import LabelledSet
from zoo.pipeline.sweep import SweepConfig, grid, load_sweep_config, run_sweep
from zoo.pipeline.transfer import materialize_transfer_set
from zoo.train import Schedule

CLASSES = ["class0", "class1", "class2", "class3"]
TEACHER_CLASSES = [CLASSES[:3], CLASSES[1:]]
SPEC = InputSpec(channels=1, height=16, width=16, mean=(0.5,), std=(0.5,))
ROOT = Path(__file__).resolve().parent.parent


def make_run_dir(run_dir: Path, n: int = 400, seed: int = 0) -> LabelledSet:
    """transfer.parquet + logits.parquet of a simulated 2-teacher zoo; returns a labelled eval set."""
    space = build_label_space(TEACHER_CLASSES, ["t0", "t1"])
    mask = space.mask
    images, labels = synthetic_images(n, len(CLASSES), size=16, seed=seed)
    ids = [f"img{i:05d}" for i in range(n)]
    materialize_transfer_set((images, ids), run_dir / "transfer.parquet")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *mask.shape, generator=g)
    z[torch.arange(n), :, torch.as_tensor(labels)] += 3.0
    z = z * mask
    flat = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1).numpy(), pa.float32()), mask.numel())
    meta = {
        "zoo.mask": json.dumps(mask.tolist()),
        "zoo.label_space": json.dumps(space.to_dict()),
        "zoo.teachers": json.dumps([{"name": "t0", "version": 1}, {"name": "t1", "version": 1}]),
        "zoo.fingerprint": f"logits-{seed}",
    }
    table = pa.table({"id": ids, "logits": flat}).take(np.arange(n)[::-1].copy())  # another row order
    pq.write_table(table.replace_schema_metadata(meta), run_dir / "logits.parquet")
    ev_images, ev_labels = synthetic_images(200, len(CLASSES), size=16, seed=seed + 100)
    return LabelledSet(ev_images, ev_labels)


def _student() -> dict:
    """The job's student (network and schedule): a small MLP, which learns the synthetic task within a
    1-epoch trial (the demo uses the CNN)."""
    return {
        "spec": ModelSpec("mlp", CLASSES, SPEC, {"hidden": 64, "layers": 1}),
        "schedule": Schedule(epochs=20, lr=0.1, batch_size=32, seed=0),
    }


def test_config_grid_and_full_config():
    cfg = SweepConfig(methods=["SD", "mf_lf"], modes=["e"], temperatures=[1, 3], lrs=[0.1])
    assert grid(cfg) == [
        {"method": m, "mode": "e", "temperature": t, "lr": 0.1} for m in ("sd", "mf-lf") for t in (1.0, 3.0)
    ]
    full = load_sweep_config(ROOT / "configs" / "sweep-full.yaml")
    # Paper 001's full grid: 5 methods x {E, BP, BS} x T in {1, 3, 6, 10}, and a learning-rate axis.
    assert sorted(full.methods) == sorted(["sd", "ce", "mf-p", "mf-lu", "mf-lf"])
    assert sorted(full.modes) == ["bp", "bs", "e"] and full.temperatures == [1.0, 3.0, 6.0, 10.0]
    assert len(grid(full)) == 5 * 3 * 4 * len(full.lrs) and len(full.lrs) > 1
    with pytest.raises(ValueError, match="unknown"):
        SweepConfig(methods=["kd"])
    with pytest.raises(ValueError, match="unknown sweep config key"):
        load_sweep_config(overrides={"temperature": 3})


def test_sweep_tune_mlflow_tensorboard(ray_session, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    ev = make_run_dir(run_dir)
    client = MlflowClient(mlflow_uri)
    exp_id = client.create_experiment("unify")
    parent = client.create_run(exp_id, run_name="job").info.run_id
    cfg = SweepConfig(
        methods=["sd", "mf-lf"],
        modes=["e", "bp"],
        temperatures=[3.0],
        lrs=[0.1],
        epochs=2,
        transfer_limit=None,
        proxy_holdout=80,
        scheduler="asha",
        verbose=0,
    )
    res = run_sweep(
        cfg,
        run_dir,
        **_student(),
        val_set=ev,
        tracking_uri=mlflow_uri,
        parent_run_id=parent,
        log=print,
    )
    assert res.metric == "val_accuracy" and not res.skipped
    assert res.best_config in grid(cfg)
    finished = [t for t in res.trials if t["error"] is None]
    assert len(finished) == 4
    # ASHA may stop trials after the first epoch; the best is among those that ran both.
    full = [t for t in finished if t["metrics"]["epoch"] == 2]
    assert full and res.best_score == max(t["metrics"]["val_accuracy"] for t in full)
    assert res.best_score > 0.4  # 4 classes: chance is 0.25
    assert res.plot_path is not None and res.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Every trial is an MLflow run nested under the parent, with its params and per-epoch metrics.
    runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == 4
    for r in runs:
        assert r.data.tags["zoo.parent_run_id"] == parent
        assert r.data.params["method"] in ("sd", "mf-lf")
        assert {"val_accuracy", "proxy_agreement", "train_loss", "score"} <= set(r.data.metrics)
        assert r.data.params["epochs"] == "2" and r.info.status == "FINISHED"
        history = MlflowClient(mlflow_uri).get_metric_history(r.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, len(history) + 1))  # one point per epoch
    got = {(r.data.params["method"], r.data.params["mode"]) for r in runs}
    assert got == {(m, mode) for m in ("sd", "mf-lf") for mode in ("e", "bp")}
    # The parent has the best config, the plot and the results table.
    prun = client.get_run(parent)
    assert json.loads(prun.data.tags["sweep.best_config"]) == res.best_config
    assert prun.data.params["sweep.best.method"] == res.best_config["method"]
    arts = {a.path for a in client.list_artifacts(parent, "sweep")}
    assert arts == {"sweep/sweep.png", "sweep/results.json"}

    # TensorBoard event files in every trial directory (Tune's TBX logger).
    events = list(Path(res.tune_path).glob("*/events.out.tfevents.*"))
    assert len(events) == 4, sorted(p.name for p in Path(res.tune_path).iterdir())

    # A rerun with the same inputs returns the recorded result without training.
    again = run_sweep(
        cfg,
        run_dir,
        **_student(),
        val_set=ev,
        tracking_uri=mlflow_uri,
        parent_run_id=parent,
        log=print,
    )
    assert again.skipped and again.best_config == res.best_config


def test_sweep_refuses_a_run_without_cached_logits(ray_session, tmp_path):
    with pytest.raises(FileNotFoundError, match="is missing"):
        run_sweep(SweepConfig(), tmp_path, **_student())


def test_accuracy_metric_needs_labels(ray_session, mlflow_uri, tmp_path):
    make_run_dir(tmp_path, n=100)
    cfg = SweepConfig(methods=["sd"], modes=["e"], temperatures=[3.0], metric="accuracy", proxy_holdout=20)
    with pytest.raises(ValueError, match="labelled validation set"):
        run_sweep(cfg, tmp_path, **_student(), tracking_uri=mlflow_uri)


def test_proxy_metric_without_labels(ray_session, mlflow_uri, tmp_path):
    """No labelled set: trials are ranked by the label-free proxy; a 'sweep' parent run is created."""
    from mlflow.tracking import MlflowClient

    make_run_dir(tmp_path, n=200, seed=1)
    cfg = SweepConfig(
        methods=["sd"], modes=["e"], temperatures=[1.0, 3.0], epochs=1, proxy_holdout=40, verbose=0
    )
    res = run_sweep(cfg, tmp_path, **_student(), tracking_uri=mlflow_uri, experiment="sweeps")
    assert res.metric == "proxy_agreement" and res.spearman_proxy_accuracy is None
    assert 0.0 <= res.best_score <= 1.0
    assert all("val_accuracy" not in t["metrics"] for t in res.trials)
    parent = MlflowClient(mlflow_uri).get_run(res.mlflow_run_id)
    assert parent.data.tags["zoo.job"] == "sweep" and parent.info.status == "FINISHED"
    assert np.isfinite(parent.data.metrics["sweep.best_score"])
