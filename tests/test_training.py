"""Stage 4: the student trained with Ray Train (real Ray, real MLflow sqlite, real Parquet).

A synthetic task: 4 classes of `zoo.data.synthetic_images`, two simulated teachers over overlapping
class subsets whose logits favour the true class; their logits go to logits.parquet (mode bp) and
their SD soft labels to soft_labels.parquet (modes e, bs), in the documented schemas.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zoo.artifacts import InputSpec, ModelSpec, load_model, preprocess
from zoo.data import synthetic_images
from zoo.pipeline.datasets import LabelledSet
from zoo.pipeline.soft_labels import TargetError, load_targets
from zoo.pipeline.training import Checkpointing, train_student
from zoo.pipeline.transfer import materialize_transfer_set
from zoo.train import Schedule, epoch_order
from zoo.unify import balance_weights, estimate_soft_labels
from zoo.unify.recipe import Recipe

CLASSES = ["class0", "class1", "class2", "class3"]
# Teacher 0 knows classes 0-2, teacher 1 knows classes 1-3.
MASK = torch.tensor([[True, True, True, False], [False, True, True, True]])
SPEC = InputSpec(channels=1, height=16, width=16, mean=(0.5,), std=(0.5,))


def _teacher_logits(labels: np.ndarray, seed: int) -> torch.Tensor:
    """[B, N, L] logits: +3 on the true class where the teacher knows it, Gaussian noise, masked -> 0."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(labels), *MASK.shape, generator=g)
    z[torch.arange(len(labels)), :, torch.as_tensor(labels)] += 3.0
    return z * MASK


def make_run(tmp_path: Path, n: int = 320, seed: int = 0, method: str = "sd") -> dict:
    images, labels = synthetic_images(n, len(CLASSES), size=16, seed=seed)
    ids = [f"img{i:05d}" for i in range(n)]
    transfer = materialize_transfer_set((images, ids), tmp_path / "transfer.parquet")
    z = _teacher_logits(labels, seed)
    L = len(CLASSES)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1).numpy(), pa.float32()), MASK.numel())
    logits_path = tmp_path / "logits.parquet"
    meta = {
        "zoo.mask": json.dumps(MASK.tolist()),
        "zoo.label_space": json.dumps({"classes": CLASSES}),
        "zoo.teachers": json.dumps([{"name": "t0", "version": 1}, {"name": "t1", "version": 2}]),
    }
    pq.write_table(pa.table({"id": ids, "logits": flat}).replace_schema_metadata(meta), logits_path)
    q = estimate_soft_labels(z, MASK, method, temperature=3.0)
    # Rows in another order than the transfer set: train_student must align them by id.
    rev = np.arange(n)[::-1].copy()
    qcol = pa.FixedSizeListArray.from_arrays(pa.array(q[rev].reshape(-1).numpy(), pa.float32()), L)
    soft_path = tmp_path / "soft_labels.parquet"
    smeta = {
        "zoo.method": method,
        "zoo.mode": "bs",
        "zoo.temperature": "3.0",
        "zoo.classes": json.dumps(CLASSES),
        "zoo.weights": json.dumps(balance_weights(q).tolist()),
    }
    table = pa.table({"id": [ids[i] for i in rev], "q": qcol}).replace_schema_metadata(smeta)
    pq.write_table(table, soft_path)
    ev_images, ev_labels = synthetic_images(200, L, size=16, seed=seed + 100)
    return {
        "transfer": transfer,
        "logits": logits_path,
        "soft": soft_path,
        "eval": LabelledSet(ev_images, ev_labels),
        "q": q,
    }


STUDENT = ModelSpec("cnn", CLASSES, SPEC, {"width": 8, "depth": 2}, {"role": "student"})
EVERY_EPOCH = Checkpointing(every_epochs=1)  # the tests count checkpoints: one per epoch


def _cfg(mode: str = "bs", epochs: int = 3, **kw) -> tuple[ModelSpec, Schedule, Recipe]:
    """The student's network, schedule and recipe (SD, T = 3)."""
    return (
        STUDENT,
        Schedule(epochs=epochs, lr=0.05, batch_size=32, seed=0),
        Recipe(method="sd", mode=mode, **kw),
    )


def _accuracy(model_dir: Path, ev: LabelledSet) -> float:
    model, spec = load_model(model_dir)
    with torch.no_grad():
        pred = model(preprocess(ev.images, spec.input)).argmax(1).numpy()
    return float((pred == ev.labels).mean())


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


# ------------------------------------------------------------------------------- pure parts
def test_epoch_order_partitions_and_is_seeded():
    for world in (1, 2, 3):
        shards = [epoch_order(10, seed=1, epoch=4, world_size=world, rank=r) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
        assert set(torch.cat(shards).tolist()) == set(range(10))
    assert torch.equal(epoch_order(10, 1, 4, 1, 0), epoch_order(10, 1, 4, 1, 0))
    assert not torch.equal(epoch_order(10, 1, 4, 1, 0), epoch_order(10, 1, 5, 1, 0))
    assert not torch.equal(epoch_order(10, 1, 4, 1, 0), epoch_order(10, 2, 4, 1, 0))


def test_load_targets_aligns_ids_and_refuses_mismatches(tmp_path):
    run = make_run(tmp_path, n=40)
    ids = [f"img{i:05d}" for i in range(40)]
    sd = lambda mode: Recipe(method="sd", mode=mode)  # noqa: E731
    t = load_targets(run["soft"], ids, CLASSES, sd("bs"))
    assert torch.allclose(t.q, run["q"], atol=1e-6)  # reordered to the transfer set's order
    assert t.class_weights.shape == (4,)
    bp = load_targets(run["logits"], ids, CLASSES, sd("bp"))
    assert bp.logits.shape == (40, 2, 4) and torch.equal(bp.mask, MASK)
    with pytest.raises(TargetError, match="do not match the transfer set"):
        load_targets(run["soft"], ids[:-1] + ["other"], CLASSES, sd("bs"))
    with pytest.raises(TargetError, match="no 'q' column"):
        load_targets(run["logits"], ids, CLASSES, sd("e"))
    with pytest.raises(TargetError, match="no 'logits' column"):
        load_targets(run["soft"], ids, CLASSES, sd("bp"))
    with pytest.raises(TargetError, match="method"):
        load_targets(run["soft"], ids, CLASSES, Recipe(method="ce", mode="bs"))
    with pytest.raises(TargetError, match="classes"):
        load_targets(run["soft"], ids, ["a", "b", "c", "d"], sd("bs"))


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="mode"):
        _cfg(mode="xx")
    with pytest.raises(ValueError, match="epochs"):
        _cfg(epochs=0)


# ------------------------------------------------------------------------------- Ray Train
def test_train_bs_beats_chance_checkpoints_and_mlflow(ray_session, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    run = make_run(tmp_path)
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("students")).info.run_id
    result = train_student(
        *_cfg(mode="bs", epochs=4),
        run["transfer"],
        run["soft"],
        storage_path=tmp_path / "train",
        run_name="bs-run",
        eval_set=run["eval"],
        checkpointing=EVERY_EPOCH,
        mlflow_tracking_uri=mlflow_uri,
        mlflow_run_id=run_id,
    )
    # One report (and checkpoint) per epoch; the last two checkpoints kept (CheckpointConfig).
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    run_dir = tmp_path / "train" / "bs-run"
    ckpts = _checkpoints(run_dir)
    assert len(ckpts) == 2
    state = json.loads((Path(result.checkpoint_path) / "state.json").read_text())
    assert state["epoch"] == 3
    assert result.metrics["attempt_start_epochs"] == [0]
    # Beats chance (0.25) by far on held-out data, and the saved artifact gives the same accuracy.
    assert result.metrics["eval_accuracy"] > 0.6
    assert result.model_dir == run_dir / "student"
    assert _accuracy(result.model_dir, run["eval"]) == pytest.approx(
        result.metrics["eval_accuracy"], abs=1e-6
    )
    _, spec = load_model(result.model_dir)
    assert spec.classes == CLASSES and spec.metadata["mode"] == "bs" and spec.metadata["method"] == "sd"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # Per-epoch metrics and the params in the given MLflow run.
    losses = client.get_metric_history(run_id, "student.train_loss")
    assert sorted(m.step for m in losses) == [0, 1, 2, 3]
    assert len(client.get_metric_history(run_id, "student.eval_accuracy")) == 4
    params = client.get_run(run_id).data.params
    assert params["student.method"] == "sd" and params["student.mode"] == "bs"
    assert params["student.arch"] == "cnn"


def test_train_bp_one_worker_then_rerun_resumes(ray_session, tmp_path):
    run = make_run(tmp_path, n=160)
    cfg = _cfg(mode="bp", epochs=3)
    kw = dict(storage_path=tmp_path / "train", run_name="bp-run", eval_set=run["eval"], num_workers=1)
    first = train_student(*cfg, run["transfer"], run["logits"], **kw)
    assert first.metrics["num_workers"] == 1
    assert all(np.isfinite(h["train_loss"]) for h in first.history)
    # BP at T = 3 learns slowly from a few steps: ask that the loss goes down, not for accuracy.
    assert first.history[-1]["train_loss"] < first.history[0]["train_loss"]
    # Same storage and name: Ray Train resumes from the last checkpoint, nothing left to train.
    again = train_student(*cfg, run["transfer"], run["logits"], **kw)
    assert again.metrics["attempt_start_epochs"] == [0, 3]
    assert len(again.history) == 3
    assert _accuracy(again.model_dir, run["eval"]) == pytest.approx(first.metrics["eval_accuracy"], abs=1e-6)
    # Another config under the same name is refused instead of resuming someone else's weights.
    with pytest.raises(ValueError, match="another student config"):
        train_student(*_cfg(mode="bp", epochs=4), run["transfer"], run["logits"], **kw)


def test_train_refuses_mismatched_targets_before_starting(ray_session, tmp_path):
    run = make_run(tmp_path, n=40)
    with pytest.raises(TargetError, match="no 'q' column"):
        train_student(
            *_cfg(mode="e"), run["transfer"], run["logits"], storage_path=tmp_path / "t", run_name="x"
        )


def _registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints the Ray Train controller has registered (its snapshot file), not just written."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snap.get("checkpoint_results", []))


@pytest.mark.slow
def test_worker_killed_mid_run_resumes_from_checkpoint(ray_session, tmp_path):
    """SIGKILL the training worker's process once a checkpoint is registered; the run restarts the
    worker (FailureConfig), resumes from that checkpoint and finishes."""
    run = make_run(tmp_path, n=400)
    cfg = _cfg(mode="bs", epochs=8)
    epochs = cfg[1].epochs
    run_dir = tmp_path / "train" / "kill-run"
    killed: dict = {}

    def killer() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            info = run_dir / "workers" / "rank-0.json"
            if info.exists() and _registered_checkpoints(run_dir) >= 1:
                pid = json.loads(info.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = train_student(
        *cfg,
        run["transfer"],
        run["soft"],
        storage_path=tmp_path / "train",
        run_name="kill-run",
        eval_set=run["eval"],
        checkpointing=EVERY_EPOCH,
        num_workers=1,
    )
    thread.join(timeout=5)
    assert killed, "the worker was never killed (training finished before a checkpoint was registered?)"
    starts = result.metrics["attempt_start_epochs"]
    assert len(starts) == 2 and starts[0] == 0 and 0 < starts[1] < epochs, starts
    # A new worker process took over, and the run reached the last epoch from the checkpoint.
    assert json.loads((run_dir / "workers" / "rank-0.json").read_text())["pid"] != killed["pid"]
    assert [h["epoch"] for h in result.history] == list(range(epochs))
    assert result.metrics["eval_accuracy"] > 0.6
    acc = _accuracy(result.model_dir, run["eval"])
    assert acc == pytest.approx(result.metrics["eval_accuracy"], abs=1e-6)
