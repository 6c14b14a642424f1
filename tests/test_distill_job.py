"""The cross-task distillation job (`jobs/distill.py`): one small end-to-end run on a synthetic task
(real Ray, MLflow, Parquet), and its input checks, which must stop before any compute."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zoo.data import encode_png, synthetic_class_names, synthetic_images

ROOT = Path(__file__).resolve().parent.parent
CLASSES = synthetic_class_names(6)
TEACHER_CLASSES = [0, 1, 2, 3]  # the teacher knows class00..class03
TASK_CLASSES = [2, 3, 4, 5]  # the task shares class02, class03 with it (g = 50 %)


def _job_main():
    spec = importlib.util.spec_from_file_location("distill_job_script", ROOT / "jobs" / "distill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[int]) -> Path:
    for i, (im, y) in enumerate(zip(images, labels)):
        if y in classes:
            d = root / CLASSES[y]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.png").write_bytes(encode_png(im))
    return root


def _teacher(registry, name: str, classes: list[int], images, labels, input_spec) -> None:
    from zoo.architectures import build_model
    from zoo.artifacts import ModelSpec, preprocess
    from zoo.train import fit_classifier

    sel = np.flatnonzero(np.isin(labels, classes))
    y = torch.as_tensor(np.array([classes.index(v) for v in labels[sel]]))
    torch.manual_seed(0)
    model = build_model("cnn", len(classes), in_channels=input_spec.channels, image_size=16, width=8, depth=2)
    x = preprocess(images[sel], input_spec)
    fit_classifier(model, x, y, epochs=3, lr=3e-3, batch_size=32, seed=0, progress=False)
    spec = ModelSpec("cnn", [CLASSES[c] for c in classes], input_spec, {"width": 8, "depth": 2})
    registry.register_model(name, model, spec, tags={"zoo": "tiny-distill", "role": "teacher"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Teachers in a sqlite zoo (syn-t: 4 classes, 2 shared with the task; syn-same: the task's classes;
    syn-rgb: RGB input) and the task's train / eval ImageFolders of synthetic 16x16 patterns."""
    from zoo.artifacts import InputSpec
    from zoo.registry import Registry

    tmp = tmp_path_factory.mktemp("distill-job")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mp.setenv("ZOO_CACHE_DIR", str(tmp / "cache"))
        images, labels = synthetic_images(1400, 6, size=16, seed=0)
        registry = Registry(uri)
        gray = InputSpec(1, 16, 16, (0.3,), (0.3,))
        _teacher(registry, "syn-t", TEACHER_CLASSES, images[:600], labels[:600], gray)
        _teacher(registry, "syn-same", TASK_CLASSES, images[:600], labels[:600], gray)
        _teacher(
            registry,
            "syn-rgb",
            TEACHER_CLASSES,
            images[:600],
            labels[:600],
            InputSpec(3, 16, 16, (0.3,) * 3, (0.3,) * 3),
        )
        task = _folder(tmp / "task", images[600:840], labels[600:840], TASK_CLASSES)
        ev = _folder(tmp / "eval", images[1000:1400], labels[1000:1400], TASK_CLASSES)
        config = tmp / "distill.yaml"
        config.write_text(
            f"task: {task}\neval: {ev}\nname: tiny-distilled\narch: cnn\n"
            "arch_kwargs: {width: 8, depth: 2}\nepochs: 4\nbatch_size: 32\nlr: 0.05\nnum_workers: 1\n"
            f"inference_batch_size: 128\ninference_concurrency: 1\nrun_dir: {tmp / 'run'}\n"
            f"tracking_uri: {uri}\nexperiment: distill-test\n"
        )
        yield {"registry": registry, "task": task, "eval": ev, "config": config, "tmp": tmp, "uri": uri}


@pytest.mark.slow
@pytest.mark.timeout(900)  # one job and its rerun; ~1 min on an idle 2-core machine
def test_distill_job_end_to_end_then_rerun_skips(ray_session, tiny, capsys: pytest.CaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    main = _job_main()
    assert main(["--config", str(tiny["config"]), "--teacher", "syn-t"]) == 0
    out = capsys.readouterr().out
    run = tiny["tmp"] / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "crosstask" and summary["teacher"]["name"] == "syn-t"
    assert summary["classes"] == [CLASSES[c] for c in TASK_CLASSES]
    assert summary["shared_classes"] == ["class02", "class03"]
    # the cost matrix [teacher classes, task classes] is Eq. 6-8 on the teacher's features of the task's
    # images (Ray Data, float16 on disk) as computed here in-process, l2 normalised (in [0, 2])
    cost = np.array(json.loads((run / "cost.json").read_text())["cost"])
    assert cost.shape == (4, 4) and (cost >= 0).all() and (cost <= 2 + 1e-6).all()
    assert np.allclose(cost, _local_cost(tiny), atol=2e-3)
    acc = summary["student_accuracy"]
    assert set(acc) == {"all", "shared with teacher", "new to teacher"}
    assert acc["all"] > 0.4, out  # 4 classes: chance is 0.25
    assert pq.read_table(run / "features.parquet").num_rows == len(list(tiny["task"].rglob("*.png")))
    # MLflow: the curves and the final accuracy; the registry: the lineage
    mrun = MlflowClient(tiny["uri"]).get_run(summary["mlflow_run_id"])
    assert "student.train_loss" in mrun.data.metrics and "student.eval_accuracy.all" in mrun.data.metrics
    assert mrun.data.params["student.method"] == "crosstask"
    rec = tiny["registry"].get("tiny-distilled", alias="champion")
    lineage = rec.spec.metadata["lineage"]
    assert lineage["teachers"][0]["name"] == "syn-t" and lineage["teacher"] == "syn-t:1"
    assert (lineage["lambda"], lineage["tau"], lineage["eps"], lineage["normalisation"]) == (
        10.0,
        3.0,
        0.1,
        "l2",
    )
    assert rec.tags["method"] == "crosstask" and rec.tags["teachers"] == "syn-t:1"
    assert "Student 'tiny-distilled'" in out and "nearest (cost)" in out and "models:/tiny-distilled/1" in out
    # rerun: every stage is up to date, nothing recomputed, no new version
    assert main(["--config", str(tiny["config"]), "--teacher", "syn-t"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (up to date)") == 5, out
    assert len(tiny["registry"].versions("tiny-distilled")) == 1


def _local_cost(tiny: dict) -> np.ndarray:
    from zoo.architectures import split_head
    from zoo.artifacts import preprocess
    from zoo.assess import class_centres, cost_matrix
    from zoo.config import load_distill_config
    from zoo.pipeline.distill import read_labelled

    task, _ = read_labelled(
        str(tiny["task"]), "--task", load_distill_config(tiny["config"], {"teacher": "none"})
    )
    model, spec, _ = tiny["registry"].load("syn-t")
    embed, head = split_head(model.eval())
    with torch.no_grad():
        f = embed(preprocess(task.images, spec.input)).double()
    return cost_matrix(head, class_centres(f, torch.as_tensor(task.labels), 4), "l2").numpy()


def _expect_error(capsys, argv: list[str]) -> str:
    assert _job_main()(argv) == 2
    return capsys.readouterr().err


@pytest.fixture()
def no_compute(monkeypatch):
    """Fail the test if the job reaches Ray (compute) or writes a stage output."""
    import zoo.pipeline.session as session

    def no_ray(*a, **k):
        raise AssertionError("the job reached Ray although its input is bad")

    monkeypatch.setattr(session, "init_ray", no_ray)


def test_bad_inputs_stop_before_compute(tiny, capsys, no_compute, monkeypatch) -> None:
    import zoo.pipeline.distill as distill

    cfg = ["--config", str(tiny["config"]), "--run-dir", str(tiny["tmp"] / "bad-run")]
    err = _expect_error(capsys, [*cfg, "--teacher", "nobody"])
    assert "unknown teacher 'nobody'" in err and "syn-t" in err
    one = _folder(tiny["tmp"] / "one-class", *synthetic_images(20, 6, size=16, seed=3), [2])
    err = _expect_error(capsys, [*cfg, "--teacher", "syn-t", "--task", str(one)])
    assert "has one class ('class02')" in err
    err = _expect_error(capsys, [*cfg, "--teacher", "syn-t", "--method", "kd"])
    assert "--method kd needs the teacher's classes to be the task's" in err
    err = _expect_error(capsys, [*cfg, "--teacher", "syn-t", "--normalisation", "cosine"])
    assert "normalisation 'cosine'" in err
    zebra = tiny["tmp"] / "zebra-eval" / "zebra"
    zebra.mkdir(parents=True)
    (zebra / "z.png").write_bytes(encode_png(np.zeros((16, 16), np.uint8)))
    err = _expect_error(capsys, [*cfg, "--teacher", "syn-t", "--eval", str(zebra.parent)])
    assert "--eval" in err and "zebra" in err
    # a teacher that cannot be split into features + head (no allow-listed network is: simulated)
    monkeypatch.setattr(distill, "split_head", lambda m: (_ for _ in ()).throw(ValueError("no linear head")))
    err = _expect_error(capsys, [*cfg, "--teacher", "syn-t"])
    assert "cannot be split into features and a linear head" in err and "no linear head" in err
    monkeypatch.undo()
    # images the teacher cannot take: preprocess converts channels and sizes; what it refuses is named
    from zoo.artifacts import ArtifactError

    def refuse(images, spec):
        raise ArtifactError("cannot convert")

    monkeypatch.setattr(distill, "preprocess", refuse)
    err = _expect_error(capsys, [*cfg, "--teacher", "syn-t"])
    assert "images of shape (16, 16) cannot be given to teacher syn-t" in err
    assert not (tiny["tmp"] / "bad-run" / "transfer.parquet").exists()


def test_inputs_method_and_conversion(tiny, no_compute) -> None:
    """Grey task images for an RGB teacher pass (preprocess converts); equal label sets resolve to KD
    with the teacher's outputs in the student's order; --teacher none is the baseline."""
    from zoo.config import load_distill_config
    from zoo.pipeline.distill import check_inputs
    from zoo.pipeline.session import Session

    def inputs(**kw):
        cfg = load_distill_config(tiny["config"], kw)
        with Session(tiny["tmp"] / "check-run", tracking_uri=tiny["uri"], log=lambda m: None) as s:
            return check_inputs(cfg, s)

    rgb = inputs(teacher="syn-rgb")
    assert rgb.method == "crosstask" and rgb.shared == [0, 1] and rgb.lam == 10.0
    assert rgb.spec.input.channels == 1  # the student's input comes from the task's images
    same = inputs(teacher="syn-same")
    assert same.method == "kd" and same.teacher_order == [0, 1, 2, 3] and same.lam == 1.0
    assert inputs(teacher="syn-same", method="crosstask").method == "crosstask"
    base = inputs(teacher="none")
    assert base.method == "none" and base.teacher is None and base.groups() == {}


def test_crosstask_data_loads_the_loss_of_each_method(tmp_path) -> None:
    """CrossTaskData.load (what a Ray Train worker runs) gives the wrapper's loss on the teacher's
    logits in the right columns: Eq. 11 with the cost, KD in the student's order, CE without teacher."""
    import torch.nn.functional as F

    from zoo.artifacts import InputSpec
    from zoo.crosstask import crosstask_loss, kd_loss
    from zoo.pipeline.distill import CrossTaskData
    from zoo.pipeline.transfer import materialize_transfer_set

    images, labels = synthetic_images(12, 3, size=8, seed=0)
    ids = [f"task-{i:06d}" for i in range(12)]
    materialize_transfer_set((images, ids), tmp_path / "t.parquet")
    z = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    width = pa.list_(pa.float32(), 3)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(z.ravel()), 3)
    space = {"classes": ["a", "b", "c"], "teachers": ["t"], "teacher_classes": [["c", "a", "b"]]}
    meta = {"zoo.label_space": json.dumps(space), "zoo.teachers": "[]", "zoo.mask": "[[true, true, true]]"}
    table = pa.table({"id": ids, "logits": flat}, schema=pa.schema([("id", pa.string()), ("logits", width)]))
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "l.parquet")
    spec, dev = InputSpec(1, 8, 8, (0.5,), (0.5,)), torch.device("cpu")
    y = tuple(int(v) for v in labels)
    cost = ((0.0, 1.0), (1.0, 0.0), (0.5, 0.5))
    base = CrossTaskData(str(tmp_path / "t.parquet"), y, "none")
    base.check()
    x, loss = base.load(spec, dev)
    out, idx = torch.randn(4, 3), torch.tensor([0, 5, 7, 11])
    assert x.shape == (12, 1, 8, 8)
    assert float(loss(out, idx)) == pytest.approx(float(F.cross_entropy(out, torch.tensor(y)[idx])))
    ours = CrossTaskData(str(tmp_path / "t.parquet"), tuple(v % 2 for v in y), "crosstask",
                         str(tmp_path / "l.parquet"), (2, 0, 1), cost, lam=2.0)  # fmt: skip
    ours.check()
    _, loss = ours.load(spec, dev)
    zt = torch.from_numpy(z)[:, [2, 0, 1]]
    ref = crosstask_loss(out[:, :2], zt[idx], torch.tensor(ours.labels)[idx], torch.tensor(cost), lam=2.0)
    assert float(loss(out[:, :2], idx)) == pytest.approx(float(ref), rel=1e-6)
    kd = CrossTaskData(str(tmp_path / "t.parquet"), y, "kd", str(tmp_path / "l.parquet"), (1, 2, 0), lam=0.5)
    _, loss = kd.load(spec, dev)
    ref = kd_loss(out, torch.from_numpy(z)[:, [1, 2, 0]][idx], torch.tensor(y)[idx], lam=0.5)
    assert float(loss(out, idx)) == pytest.approx(float(ref), rel=1e-6)
    assert ours.describe()["normalisation"] is None and "cost" in ours.describe()


def test_parquet_task_and_input_spec(tmp_path) -> None:
    from zoo.config import load_distill_config
    from zoo.pipeline.datasets import input_spec_for
    from zoo.pipeline.distill import read_labelled, task_input_spec

    images, labels = synthetic_images(30, 3, size=12, seed=1)
    names = [f"kind {v}" for v in labels]
    pq.write_table(
        pa.table({"image": [encode_png(im) for im in images], "label": names}), tmp_path / "t.parquet"
    )
    cfg = load_distill_config(None, {"teacher": "none", "task": str(tmp_path / "t.parquet")})
    task, space = read_labelled(cfg.task, "--task", cfg)
    assert list(space.classes) == ["kind 0", "kind 1", "kind 2"] and list(task.labels) == list(labels)
    ours, ref = task_input_spec(task.images), input_spec_for(images)
    assert (ours.channels, ours.height, ours.width) == (1, 12, 12)
    assert np.allclose(ours.mean, ref.mean, atol=1e-5) and np.allclose(ours.std, ref.std, atol=1e-4)
