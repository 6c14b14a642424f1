"""The demo zoo builder end to end on synthetic data, with real Ray (`ray_session`) and real MLflow
(`mlflow_uri`): 3 tiny teachers trained as Ray tasks, registered with their tags, the split logged
as a versioned artifact and read back identical, every teacher's accuracy recomputable from it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.artifacts import preprocess
from zoo.demo import DemoConfig
from zoo.train import evaluate

ROOT = Path(__file__).resolve().parent.parent

CFG = DemoConfig(
    seed=0,
    n_teachers=3,
    n_union_classes=4,
    classes_per_teacher=(2, 3),
    images_per_class=(50, 60),
    transfer_size=500,
    archs=("cnn:width=8:depth=2", "mlp:hidden=32:layers=1"),
    epochs=6,
    lr=3e-3,
    batch_size=16,
)


def test_build_register_reload(ray_session, mlflow_uri: str) -> None:
    from zoo.pipeline.datasets import dataset_for_split, load_dataset, transfer_arrays
    from zoo.pipeline.make_zoo import (
        build_zoo,
        ensure_demo_zoo,
        format_table,
        latest_teachers,
        load_split,
        owner_calibration,
    )
    from zoo.registry import Registry
    from zoo.unify.calibration import calibration_from_metadata

    ds = load_dataset(synthetic=True)
    build = build_zoo("syn", CFG, dataset=ds, tracking_uri=mlflow_uri, timeout_s=240)
    split = build.split
    assert build.built and split.zoo == "syn" and split.dataset == "synthetic"

    registry = Registry(mlflow_uri)
    records = registry.list(tags={"zoo": "syn", "role": "teacher"})
    assert sorted(r.name for r in records) == ["syn-t0", "syn-t1", "syn-t2"]
    for i, t in enumerate(split.teachers):
        rec = registry.get(f"syn-t{i}")
        assert rec.version == 1
        assert rec.tags["zoo"] == "syn" and rec.tags["role"] == "teacher"
        assert rec.tags["split_run"] == build.run_id
        assert rec.tags["arch"] == t.arch and rec.tags["classes"] == str(len(t.classes))
        assert rec.tags["source"] == "demo:syn"
        assert rec.spec.classes == list(t.classes)
        acc = rec.spec.metadata["metrics"]["accuracy"]
        assert float(rec.tags["accuracy"]) == pytest.approx(acc, abs=1e-4)
        assert acc > 0.7, f"teacher {i} ({t.arch}) did not learn its synthetic classes: {acc}"
        # The recorded accuracy is recomputable from the registry's weights and the split alone.
        model, spec, _ = registry.load(f"syn-t{i}")
        xe, ye = split.teacher_eval(i, ds.images_test, ds.labels_test)
        assert evaluate(model, preprocess(xe, spec.input), torch.as_tensor(ye)) == pytest.approx(
            acc, abs=1e-6
        )
        # The owner's calibration, fitted on the teacher's held-out slice of the split, ships in the spec.
        cal = calibration_from_metadata(rec.spec.metadata)
        assert cal is not None and cal.n == len(t.holdout_indices) == 20 * len(t.classes)
        xh, yh = split.teacher_holdout(i, ds.images_train, ds.labels_train)
        # Recomputed here from the registry's weights: the same up to float rounding (the build ran in
        # a Ray worker with its own thread count, and the temperature is a numerical fit).
        again = owner_calibration(model, spec, xh, yh)
        assert (again.n, again.accuracy, again.score) == (cal.n, cal.accuracy, cal.score)
        assert again.temperature == pytest.approx(cal.temperature, rel=1e-3)
        assert again.quantiles == pytest.approx(cal.quantiles, abs=1e-3)

    # The split is a versioned MLflow artifact, read back identical.
    back = load_split("syn", mlflow_uri)
    assert back.to_json() == split.to_json()
    assert load_split("syn", registry) == split  # the contract's load_split(zoo_name, registry)
    ds2 = dataset_for_split(back)  # the same data again, checked against the split's fingerprint
    images, ids = transfer_arrays(back, ds2)
    assert len(images) == len(ids) == CFG.transfer_size and ids[0] == f"train-{back.transfer_indices[0]}"

    table = format_table(build.rows)
    assert all(f"syn-t{i}" in table for i in range(3)) and "accuracy" in table and "temp" in table

    # Present: ensure_demo_zoo does not rebuild.
    again = ensure_demo_zoo("syn", CFG, mlflow_uri, dataset=ds, timeout_s=240)
    assert not again.built and again.run_id == build.run_id
    assert [r.version for r in again.records] == [1, 1, 1]
    assert [(r.name, r.version) for r in latest_teachers("syn", registry)] == [
        (f"syn-t{i}", 1) for i in range(3)
    ]

    # A rebuild (here in the completely overlapping configuration, one teacher) makes a new version
    # and a new split; load_split follows the latest build, older builds stay readable by run id.
    cfg2 = DemoConfig(**{**CFG.to_dict(), "seed": 1, "n_teachers": 1, "overlap": "complete", "epochs": 1})
    build2 = build_zoo("syn", cfg2, dataset=ds, tracking_uri=mlflow_uri, timeout_s=240)
    assert [r.version for r in build2.records] == [2]
    assert set(build2.split.teachers[0].labels) == set(build2.split.union_labels)
    assert load_split("syn", mlflow_uri) == build2.split != split
    assert load_split("syn", mlflow_uri, run_id=build.run_id) == split
    assert registry.get("syn-t0").tags["split_run"] == build2.run_id
    assert registry.get("syn-t1").tags["split_run"] == build.run_id
    # The latest build's teachers only: syn-t1 and syn-t2 are left over from the first build.
    assert [(r.name, r.version) for r in latest_teachers("syn", mlflow_uri)] == [("syn-t0", 2)]


def test_failed_build_is_never_taken_for_a_zoo(ray_session, mlflow_uri: str) -> None:
    from zoo.pipeline.make_zoo import build_zoo, find_split_run, load_split

    with pytest.raises(LookupError, match="make_zoo.py --name nothing"):
        load_split("nothing", mlflow_uri)
    with pytest.raises(ValueError, match="name"):
        build_zoo("bad name!", CFG, synthetic=True, tracking_uri=mlflow_uri)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_zoo("syn", DemoConfig(**{**CFG.to_dict(), "archs": ["cnn", "nonet"]}), synthetic=True)
    # A build that does not finish (here: a timeout far too short) leaves a FAILED run, which
    # find_split_run (hence load_split and ensure_demo_zoo) ignores.
    with pytest.raises(TimeoutError, match="free CPUs"):
        build_zoo("syn", CFG, synthetic=True, tracking_uri=mlflow_uri, timeout_s=0.01)
    assert find_split_run("syn", mlflow_uri) is None
    with pytest.raises(LookupError):
        load_split("syn", mlflow_uri)


def test_cli_refuses_bad_flags_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        import make_zoo as job
    finally:
        sys.path.remove(str(ROOT / "jobs"))
    assert job.main(["--synthetic", "--images-per-class", "10"]) == 2
    assert "50-200" in capsys.readouterr().err
    assert job.main(["--teachers", "1", "--union", "8", "--classes-per-teacher", "2-3"]) == 2
    assert "cannot cover" in capsys.readouterr().err


def test_train_teacher_ships_its_owners_calibration_when_given_a_held_out_slice() -> None:
    """No Ray: train_teacher fits `fit_calibration` (prior_count 1) on the held-out images it is
    given, as the demo zoo's builder passes each teacher's slice of the split; none without them."""
    from zoo.artifacts import InputSpec, ModelSpec, build_net
    from zoo.pipeline.make_zoo import owner_calibration, train_teacher
    from zoo.unify.calibration import TeacherCalibration, fit_calibration

    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    images = (rng.integers(0, 60, (90, 8, 8)) + 60 * labels[:, None, None]).astype(np.uint8)
    spec_in = InputSpec(1, 8, 8, (0.3,), (0.3,))
    kwargs = dict(epochs=3, lr=3e-3, batch_size=16, optimizer="adam", augment=False, seed=0, threads=None)
    args = ("mlp", {"hidden": 16, "layers": 1}, ["a", "b", "c"], spec_in.to_dict())
    out = train_teacher(*args, images[:60], labels[:60], images[60:], labels[60:], **kwargs)
    assert out["calibration"] is None
    out = train_teacher(
        *args, images[:60], labels[:60], images[60:], labels[60:], holdout_images=images[60:],
        holdout_labels=labels[60:], **kwargs,
    )  # fmt: skip
    cal = TeacherCalibration.from_dict(out["calibration"])
    spec = ModelSpec("mlp", ["a", "b", "c"], spec_in, {"hidden": 16, "layers": 1})
    model = build_net(spec)
    model.load_state_dict(out["state"])
    assert owner_calibration(model, spec, images[60:], labels[60:]) == cal and cal.n == 30
    with torch.inference_mode():
        z = model(preprocess(images[60:], spec_in))
    assert cal == fit_calibration(z, torch.as_tensor(labels[60:]), prior_count=1.0)
