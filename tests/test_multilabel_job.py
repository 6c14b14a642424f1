"""The multi-label jobs (docs/multilabel.md "The jobs"): the distillation job and the main job on a zoo of
multi-label teachers, end to end on tiny mosaics (real Ray, MLflow sqlite, Parquet); the unification
rule, the recipes and the losses as the training core takes them, and bad input, on tiny tensors."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from serving.api import make_api, response_body
from serving.config import ServeConfig
from serving.inference import Classifier
from zoo.artifacts import InputSpec, ModelSpec, build_net, preprocess
from zoo.config import ConfigError, load_multilabel_config, multilabel_config_from_args
from zoo.data import FASHION_MNIST_CLASSES, find_fashion_mnist
from zoo.multilabel import (
    mld_loss,
    multilabel_bce,
    ps_loss,
    read_multilabel,
    three_d_loss,
    union_targets,
    union_thresholds,
    write_fashion_mosaics,
)
from zoo.multilabel.fit import fit_multilabel, fit_union, predict_multilabel
from zoo.multilabel.loss_fn import ALPHA, BETA, DistillRecipe, distill_loss_fn, second_view, union_loss_fn
from zoo.pipeline import JobError, session
from zoo.pipeline.make_multilabel_zoo import subset_labels
from zoo.pipeline.report import JobResult, format_summary
from zoo.pipeline.unify_multilabel import teachers_task
from zoo.registry import Registry
from zoo.train import Schedule

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["a", "b", "c", "d"]


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


# ------------------------------------------------------------------------------------ the union rule
def test_union_thresholds_mean_of_the_knowing_teachers() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    th = torch.tensor([[0.4, 0.2, 0.9, 0.9], [0.7, 0.6, 0.3, 0.1]])  # masked entries ignored
    got = union_thresholds(th, mask, default=0.5)
    assert torch.allclose(got, torch.tensor([0.4, 0.4, 0.3, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        union_thresholds(torch.tensor([[1.0, 0.5, 0.5, 0.5]]), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        union_thresholds(th, mask[:, :3])


def test_union_loss_is_masked_bce_against_the_mean_of_the_knowing_teachers() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 2, 4, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)  # label d: nobody knows it
    z[:, 0, 2:] = float("nan")  # what a masked entry holds must not matter
    out = torch.randn(6, 4, generator=g, requires_grad=True)
    idx = torch.tensor([4, 0, 2])
    loss = union_loss_fn(z, mask)(out[idx], idx)
    q = torch.stack(
        [z[:, 0, 0].sigmoid(), (z[:, 0, 1].sigmoid() + z[:, 1, 1].sigmoid()) / 2, z[:, 1, 2].sigmoid()], 1
    )
    expected = F.binary_cross_entropy_with_logits(out[idx][:, :3], q[idx], reduction="sum") / 3
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    loss.backward()
    assert float(out.grad[:, 3].abs().max()) == 0.0  # no target, no gradient, for the unknown label
    assert torch.allclose(union_targets(z, mask)[0][:, :3], q)


# ------------------------------------------------------------------------------------ recipes, losses
def test_recipe_defaults_and_refusals() -> None:
    assert DistillRecipe("3d").to_dict() == {
        "loss": "3d", "tau": 4.0, "weight": 0.0, "alpha": ALPHA, "beta": BETA, "pairing": "batch",
    }  # fmt: skip
    assert (DistillRecipe("mld").tau, DistillRecipe("mld").weight) == (1.0, 10 / 64)
    assert DistillRecipe("3d", pairing="views").method == "3d-views" and DistillRecipe("ps").method == "ps"
    assert DistillRecipe("3d", tau=2.0).replace(loss="mld").tau == 1.0  # defaults follow the loss
    for kwargs, match in (
        ({"loss": "kd"}, "unknown"),
        ({"loss": "mld", "pairing": "views"}, "3d loss only"),
        ({"loss": "ps", "alpha": 1.0}, "3d loss's weights"),
        ({"loss": "3d", "weight": 1.0}, "not weight"),
        ({"loss": "mld", "tau": 0.0}, "tau"),
        ({"loss": "3d", "beta": -1.0}, "beta"),
        ({"loss": "3d", "pairing": "pairs"}, "pairing"),
    ):
        with pytest.raises(ValueError, match=match):
            DistillRecipe(**kwargs)


def test_distill_losses_are_bce_plus_the_methods_term() -> None:
    g = torch.Generator().manual_seed(1)
    n, c = 8, 5
    y = (torch.rand(n, c, generator=g) < 0.4).float()
    t, out = torch.randn(n, c, generator=g) * 3, torch.randn(4, c, generator=g)  # out: the batch's
    idx = torch.tensor([1, 5, 6, 2])
    yb, tb = y[idx], t[idx]
    got = {
        loss: float(distill_loss_fn(DistillRecipe(loss), y, t)(out, idx))
        for loss in ("none", "mld", "ps", "3d")
    }
    assert got["none"] == pytest.approx(float(multilabel_bce(out, yb)))
    assert got["mld"] == pytest.approx(float(multilabel_bce(out, yb) + 10 / 64 * mld_loss(out, tb, 1.0)))
    assert got["ps"] == pytest.approx(float(multilabel_bce(out, yb) + ps_loss(out, tb, yb, 1.0)))
    assert got["3d"] == pytest.approx(float(multilabel_bce(out, yb) + three_d_loss(out, tb, yb)))
    with pytest.raises(ValueError, match="needs teacher"):
        distill_loss_fn(DistillRecipe("mld"), y)
    with pytest.raises(ValueError, match="must match the targets"):
        distill_loss_fn(DistillRecipe("3d"), y, t[:, :3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        distill_loss_fn(DistillRecipe("none"), y * 0.5)


def test_views_pairing_runs_the_bound_network_on_the_flips() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.randn(6, 1, 4, 4, generator=g)
    y = (torch.rand(6, 3, generator=g) < 0.5).float()
    t, t2 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    loss = distill_loss_fn(DistillRecipe("3d", pairing="views"), y, t, images=images, teacher_view2=t2)
    idx = torch.tensor([0, 3, 5])
    out = net(images[idx])
    with pytest.raises(RuntimeError, match="bind"):
        loss(out, idx)
    loss.bind(net)
    s2 = net(second_view(images[idx]))
    expected = multilabel_bce(out, y[idx]) + three_d_loss(
        out, t[idx], y[idx], pairing="views", student_view2=s2, teacher_view2=t2[idx]
    )
    assert float(loss(out, idx).detach()) == pytest.approx(float(expected.detach()))
    assert torch.equal(second_view(images)[..., 0], images[..., -1])
    with pytest.raises(ValueError, match="needs teacher_view2"):
        distill_loss_fn(DistillRecipe("3d", pairing="views"), y, t, images=images)


def test_fit_multilabel_is_seeded_and_learns_on_tiny_data() -> None:
    g = np.random.default_rng(0)
    y = (g.random((64, 2)) < 0.5).astype(np.uint8)
    images = (np.repeat(y[:, :1, None] * 200, 8, axis=1) * np.ones((1, 1, 8))).astype(
        np.uint8
    )  # label 0 visible
    images[:, :, :4] = (y[:, 1:2, None] * 200).astype(np.uint8)  # label 1 in the left half
    spec = ModelSpec(
        "mlp", ["x", "y"], InputSpec(1, 8, 8, (0.3,), (0.4,)), {"hidden": 16, "layers": 1}, task="multilabel"
    )
    schedule = Schedule(epochs=20, lr=1e-2, batch_size=16, optimizer="adam", seed=3)
    a = fit_multilabel(spec, images, y, schedule)
    b = fit_multilabel(spec, images, y, schedule)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    pred = predict_multilabel(a, spec, images).sigmoid().numpy() >= 0.5
    assert (pred == y.astype(bool)).mean() > 0.9
    # the unified student on the same images: a teacher that knows only label 0, one that knows both
    logits = torch.zeros(64, 2, 2)
    logits[:, 0, 0] = torch.tensor(y[:, 0] * 8.0 - 4.0)
    logits[:, 1] = torch.tensor(y * 8.0 - 4.0)
    mask = torch.tensor([[True, False], [True, True]])
    u = fit_union(spec, images, logits, mask, schedule)
    assert ((predict_multilabel(u, spec, images).sigmoid().numpy() >= 0.5) == y.astype(bool)).mean() > 0.9


def test_subset_labels_overlap_and_cover() -> None:
    subsets = subset_labels(10, 3, 5)
    assert subsets == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [0, 1, 2, 8, 9]]
    assert set().union(*map(set, subsets)) == set(range(10))
    assert subset_labels(4, 2, 4) == [[0, 1, 2, 3], [0, 1, 2, 3]]


# ------------------------------------------------------------------------------------ config, report
def test_distill_config_checks_its_values() -> None:
    cfg = multilabel_config_from_args(
        ["--teacher", "t", "--data", "d", "--loss", "mld", "--threshold", "0.3"]
    )
    assert cfg.recipe() == DistillRecipe("mld") and cfg.schedule().optimizer == "adam"
    spec = cfg.student_spec(CLASSES, InputSpec(1, 8, 8, (0.5,), (0.5,)))
    assert spec.task == "multilabel" and spec.thresholds == [0.3] * 4
    for argv, match in (
        (["--data", "d"], "teacher is required"),
        (["--teacher", "t"], "data is required"),
        (["--teacher", "t", "--data", "d", "--threshold", "1.0"], "threshold"),
        (["--teacher", "t", "--data", "d", "--loss", "ps", "--pairing", "views"], "3d loss only"),
        (["--teacher", "t", "--data", "d", "--alpha", "-1"], "alpha"),
        (["--teacher", "t", "--data", "d", "--epochs", "0"], "epochs"),
    ):
        with pytest.raises(ConfigError, match=match):
            multilabel_config_from_args(argv)
    with pytest.raises(ConfigError, match="unknown config key"):
        load_multilabel_config(None, {"teacher": "t", "data": "d", "method": "ce"})


def test_summary_shows_a_metric_table() -> None:
    res = JobResult(
        name="s", run_dir="runs/s", teachers=[{"name": "t", "version": 1, "arch": "cnn", "classes": CLASSES}],
        classes=CLASSES, groups={}, recipe=DistillRecipe("3d"), schedule=Schedule(1, 0.1, 8), arch="cnn",
        selected_by="the config", eval_source="data (test)", kind="Multi-label student",
        table={"student (3d-batch)": {"mAP": 0.5, "CF1": 0.25, "OF1": 0.125}, "teacher t": {"mAP": 0.75}},
    )  # fmt: skip
    text = format_summary(res)
    assert "Multi-label student 's': 1 teacher -> 4 classes" in text
    assert "method 3d-batch, mode distill, T=4" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("student (3d", "teacher t "))]
    assert rows[0][-3:] == ["0.5000", "0.2500", "0.1250"] and rows[1][-3:] == ["0.7500", "nan", "nan"]
    assert res.to_dict()["table"]["teacher t"] == {"mAP": 0.75}


# ------------------------------------------------------------------------------------ end to end
def _mosaics(root: Path) -> dict[str, Path]:
    try:
        find_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh installs it)")
    return write_fashion_mosaics(root, {"train": 240, "val": 40, "test": 80}, seed=0)


def _teacher(registry, name: str, classes: list[int], data, tags: dict, thresholds=None, seed: int = 0):
    """A tiny multi-label teacher over ``classes`` (indices into the mosaics' labels), registered."""
    names = [data.classes[c] for c in classes]
    spec = ModelSpec("cnn", names, InputSpec(1, 56, 56, (0.18,), (0.31,)), {"width": 4, "depth": 2},
                     task="multilabel", thresholds=thresholds)  # fmt: skip
    model = fit_multilabel(
        spec, data.images, data.targets[:, classes], Schedule(1, 3e-3, 32, "adam", seed=seed)
    )
    return registry.register_model(name, model, spec, tags={**tags, "role": "teacher"})


@pytest.fixture(scope="module")
def tiny_multilabel_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny mosaics (240 train, 40 val, 80 test) and tiny teachers: one over all labels (the distillation
    job's), three over overlapping subsets (zoo tinyml), one multi-class model (for the mix refusal)."""

    tmp = tmp_path_factory.mktemp("multilabel-job")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mp.setenv("ZOO_CACHE_DIR", str(tmp / "cache"))
        paths = _mosaics(tmp / "mosaics")
        train = read_multilabel(paths["train"])
        registry = Registry(uri)
        _teacher(registry, "ml-all", list(range(10)), train, {"zoo": "ml-single"})
        for i, labels in enumerate(subset_labels(10, 3, 5)):
            th = [0.4 if i == 0 else 0.6] * 5
            _teacher(registry, f"ml-t{i}", labels, train, {"zoo": "tinyml"}, thresholds=th, seed=i)
        spec = ModelSpec("cnn", ["x", "y"], InputSpec(1, 56, 56, (0.2,), (0.3,)), {"width": 4, "depth": 2})
        registry.register_model("mc", build_net(spec), spec, tags={"role": "teacher"})
        yield {"tmp": tmp, "uri": uri, "registry": registry, "data": tmp / "mosaics", **paths}


@pytest.mark.slow
@pytest.mark.timeout(900)  # one job and its rerun; under a minute on an idle 2-core machine
def test_distill_job_views_then_rerun_skips(ray_session, tiny_multilabel_zoo, capsys) -> None:
    z = tiny_multilabel_zoo
    main = _job("distill_multilabel")
    argv = ["--teacher", "ml-all", "--data", str(z["data"]), "--name", "ml-student", "--pairing", "views",
            "--epochs", "1", "--min-steps", "1", "--batch-size", "32",
            "--run-dir", str(z["tmp"] / "run-distill"),
            "--tracking-uri", z["uri"]]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = z["tmp"] / "run-distill"
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["table"]) == {"student (3d-views)", "teacher ml-all", "student (3d-views), val split"}
    assert summary["champion_chosen_on"] == f"val_mAP of {z['data']} (val)"
    assert all(0 <= v <= 1 for row in summary["table"].values() for v in row.values())
    assert (run / "view2" / "logits.parquet").is_file() and (run / "labels.parquet").is_file()
    assert pq.read_table(run / "logits.parquet").num_rows == 240
    rec = z["registry"].get("ml-student", version=1)
    assert (
        rec.tags["task"] == "multilabel"
        and rec.tags["metric"] == "val_mAP"
        and rec.tags["method"] == "3d-views"
    )
    assert rec.spec.task == "multilabel" and rec.spec.thresholds == [0.5] * 10
    lineage = rec.spec.metadata["lineage"]
    assert lineage["teachers"][0]["name"] == "ml-all" and lineage["recipe"]["pairing"] == "views"
    assert lineage["metrics"]["mAP"] == pytest.approx(summary["table"]["student (3d-views)"]["mAP"])
    assert "Multi-label student 'ml-student'" in out and "models:/ml-student/1" in out
    # rerun: every stage is up to date (the view2 ones too), nothing registered again
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (up to date)") == 7, out
    assert len(z["registry"].versions("ml-student")) == 1


@pytest.mark.slow
@pytest.mark.timeout(900)  # one job; under a minute on an idle 2-core machine
def test_unify_job_on_multilabel_teachers(ray_session, tiny_multilabel_zoo, capsys) -> None:
    z = tiny_multilabel_zoo
    main = _job("unify")
    argv = ["--zoo", "tinyml", "--transfer", str(z["train"]), "--eval", str(z["test"]),
            "--name", "ml-unified", "--epochs", "1", "--min-steps", "1", "--batch-size", "32",
            "--val", str(z["val"]),
            "--run-dir", str(z["tmp"] / "run-unify"), "--tracking-uri", z["uri"]]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((z["tmp"] / "run-unify" / "summary.json").read_text())
    assert [t["name"] for t in summary["teachers"]] == ["ml-t0", "ml-t1", "ml-t2"]
    assert set(summary["table"]) == {
        "student",
        "student, labels of 1 teacher",
        "student, labels of 2+ teachers",
        "student, validation set",
    }
    assert summary["champion_chosen_on"] == f"val_mAP of {z['val']}"
    assert summary["method"] == "union-mean" and summary["temperature"] == 1.0
    rec = z["registry"].get("ml-unified", version=1)
    assert rec.tags["task"] == "multilabel" and rec.spec.classes == sorted(rec.spec.classes, key=str.casefold)
    # thresholds: the mean of the knowing teachers' (t0: 0.4, t1 and t2: 0.6)
    known_by = {c: [i for i, s in enumerate(subset_labels(10, 3, 5)) if c in s] for c in range(10)}
    expected = {
        FASHION_MNIST_CLASSES[c]: np.mean([0.4 if i == 0 else 0.6 for i in ts]) for c, ts in known_by.items()
    }
    got = dict(zip(rec.spec.classes, rec.spec.thresholds))
    assert got == pytest.approx(expected)
    assert "Unified multi-label model 'ml-unified': 3 teachers -> 10 classes" in out


def _expect_error(capsys, main, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_multilabel_inputs_stop_before_compute(
    tiny_multilabel_zoo, capsys, monkeypatch, tmp_path
) -> None:
    def no_ray(*a, **k):
        raise AssertionError("compute started on bad input")

    monkeypatch.setattr(session, "init_ray", no_ray)
    z = tiny_multilabel_zoo
    unify, distill = _job("unify"), _job("distill_multilabel")
    common = ["--tracking-uri", z["uri"], "--run-dir", str(tmp_path / "run")]
    # a mix of multi-class and multi-label teachers
    err = _expect_error(capsys, unify, ["--teachers", "ml-t0,mc", "--transfer", str(z["train"]), *common])
    assert "mix multi-class ['mc'] and multi-label ['ml-t0']" in err
    # labels outside the union: a test set holding a label no teacher knows
    bad = tmp_path / "bad.parquet"
    t = pq.read_table(z["test"])
    labels = [row + ["Zebra"] if i == 0 else row for i, row in enumerate(t.column("labels").to_pylist())]
    pq.write_table(t.set_column(2, "labels", pa.array(labels, pa.list_(pa.string()))), bad)
    err = _expect_error(
        capsys, unify, ["--zoo", "tinyml", "--transfer", str(z["train"]), "--eval", str(bad), *common]
    )
    assert "--eval" in err and "Zebra" in err
    err = _expect_error(capsys, unify, ["--zoo", "tinyml", "--transfer", str(z["train"]), *common])
    assert "pass --eval PATH" in err
    err = _expect_error(
        capsys,
        unify,
        ["--zoo", "tinyml", "--sweep", "--transfer", str(z["train"]), "--eval", str(z["test"]), *common],
    )
    assert "['--sweep'] apply to multi-class teachers" in err
    # the distillation job: a multi-class teacher, a missing split, labels outside the teacher's
    err = _expect_error(capsys, distill, ["--teacher", "mc", "--data", str(z["data"]), *common])
    assert "multi-class model" in err
    err = _expect_error(capsys, distill, ["--teacher", "ml-all", "--data", str(tmp_path), *common])
    assert "no train split" in err
    err = _expect_error(capsys, distill, ["--teacher", "ml-t0", "--data", str(z["data"]), *common])
    assert "are not among the classes" in err


class _Teacher:
    def __init__(self, name: str, task: str):
        self.name = name
        self.spec = ModelSpec("mlp", ["x", "y"], InputSpec(1, 2, 2, (0.0,), (1.0,)), task=task)


def test_teachers_task_refuses_a_mix() -> None:
    assert teachers_task([_Teacher("a", "multilabel"), _Teacher("b", "multilabel")]) == "multilabel"
    assert teachers_task([_Teacher("a", "multiclass")]) == "multiclass"
    with pytest.raises(JobError, match=r"mix multi-class \['b'\] and multi-label \['a'\]"):
        teachers_task([_Teacher("a", "multilabel"), _Teacher("b", "multiclass")])


# ------------------------------------------------------------------------------------ serving
def _multilabel_classifier(thresholds: list[float]):
    spec = ModelSpec("mlp", CLASSES, InputSpec(1, 8, 8, (0.5,), (0.25,)), {"hidden": 8, "layers": 1},
                     task="multilabel", thresholds=thresholds)  # fmt: skip
    torch.manual_seed(0)
    model = build_net(spec).eval()
    record = SimpleNamespace(name="ml", version=3, aliases=["champion"], run_id=None, source="", created_at=0,
                             description="", tags={"task": "multilabel"})  # fmt: skip
    return Classifier(model=model, spec=spec, record=record, device=torch.device("cpu"))


def test_a_multilabel_model_answers_every_label_and_its_decision() -> None:
    images = [np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8) for i in range(3)]
    clf = _multilabel_classifier([0.5, 0.5, 0.5, 0.5])
    with torch.no_grad():
        p = clf.model(preprocess(images, clf.spec.input)).sigmoid()
    # thresholds between the scores, so that some labels are predicted and others not
    th = [float(v) for v in p.mean(0).clamp(0.01, 0.99)]
    clf = _multilabel_classifier(th)
    preds = clf.predict(images, top_k=2)
    body = response_body(preds, batch=True)
    for row, probs in zip(body["results"], p.tolist()):
        assert row["task"] == "multilabel" and [d["class"] for d in row["labels"]] == CLASSES
        assert [d["probability"] for d in row["labels"]] == pytest.approx(probs, abs=1e-6)
        assert [d["threshold"] for d in row["labels"]] == th
        assert [d["predicted"] for d in row["labels"]] == [x >= t for x, t in zip(probs, th)]
        on = sorted(
            (c for c, x, t in zip(CLASSES, probs, th) if x >= t), key=lambda c: -probs[CLASSES.index(c)]
        )
        assert row["predicted"] == on
        top = sorted(range(4), key=lambda i: -probs[i])[:2]  # top-k: the labels by their own probability
        assert [d["class"] for d in row["predictions"]] == [CLASSES[i] for i in top]
    assert any(d["predicted"] for r in body["results"] for d in r["labels"])
    assert not all(d["predicted"] for r in body["results"] for d in r["labels"])
    info = clf.info()
    assert info["task"] == "multilabel" and info["thresholds"] == th
    # a multi-class model's answer is unchanged: no task, no labels
    mc = replace(clf, spec=ModelSpec("mlp", CLASSES, clf.spec.input, clf.spec.arch_kwargs))
    single = response_body(mc.predict(images[:1], top_k=4), batch=False)
    assert set(single) == {"predictions", "model"} and sum(
        d["probability"] for d in single["predictions"]
    ) == pytest.approx(1, abs=1e-5)


class _Backend:
    """serving.api's Backend over one in-process classifier (no Ray)."""

    def __init__(self, clf):
        self.clf = clf

    def classifier(self):
        return self.clf

    async def classify(self, images, top_k):
        return self.clf.predict(images, top_k)

    async def reload(self):
        return {"switched": False}

    def model_status(self):
        return {"serving": {}}


@pytest.mark.browser
def test_page_shows_the_labels_above_their_threshold(tmp_path) -> None:
    """The page at / with a multi-label model, in headless Chromium: every label with its probability
    and threshold, the predicted ones marked, as the API answers (FastAPI + uvicorn, no Ray)."""
    try:  # the browser test's own dependencies: skipped, with the reason, where they are missing
        import requests
        import uvicorn
        from PIL import Image
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError as e:
        pytest.skip(f"needs uvicorn and selenium: {e}")
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("Chromium and chromedriver are not installed")
    clf = _multilabel_classifier([0.3, 0.5, 0.6, 0.9])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(make_api(_Backend(clf), ServeConfig(name="ml")), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = None
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        path = tmp_path / "sample.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
        api = requests.post(
            f"{url}/v1/classify", data=path.read_bytes(), headers={"Content-Type": "image/png"}, timeout=30
        ).json()
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.get(url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "multi-label" in d.find_element(By.ID, "model-name").text)
        driver.find_element(By.ID, "file").send_keys(str(path))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#labels li.label")) == len(CLASSES))
        rows = driver.find_elements(By.CSS_SELECTOR, "#labels li.label")
        shown = {r.get_attribute("data-class"): r for r in rows}
        for label in api["labels"]:
            row = shown[label["class"]]
            assert float(row.get_attribute("data-probability")) == pytest.approx(
                label["probability"], abs=1e-6
            )
            assert float(row.get_attribute("data-threshold")) == label["threshold"]
            assert ("on" in row.get_attribute("class").split()) == label["predicted"]
        text = driver.find_element(By.ID, "predicted").text
        assert text == "Labels: " + (", ".join(api["predicted"]) or "none above its threshold")
        assert not driver.find_elements(By.CSS_SELECTOR, "#predictions li.prediction")  # no top-k list
    finally:
        if driver is not None:
            driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
