"""Stage 5: registering the student with its lineage and the champion rule (real MLflow sqlite)."""

from __future__ import annotations

import pytest
import torch

from zoo.architectures import build_model
from zoo.artifacts import InputSpec, ModelSpec, save_model
from zoo.pipeline.registration import champion_decision, register_student, teachers_tag
from zoo.registry import Registry

CLASSES = ["a", "b", "c"]
SPEC_IN = InputSpec(channels=1, height=8, width=8, mean=(0.5,), std=(0.5,))
TEACHERS = [{"name": "t0", "version": 1, "run_id": "r0"}, {"name": "t1", "version": 3, "run_id": "r1"}]


def _student(tmp_path, tag: str, accuracy: float | None = None):
    torch.manual_seed(0)
    model = build_model("mlp", len(CLASSES), in_channels=1, image_size=8)
    metadata = {"role": "student", "metrics": {"eval_accuracy": accuracy} if accuracy is not None else {}}
    spec = ModelSpec(arch="mlp", classes=CLASSES, input=SPEC_IN, arch_kwargs={}, metadata=metadata)
    return save_model(model, spec, tmp_path / f"student-{tag}")


def _lineage(acc: float) -> dict:
    return {
        "teachers": TEACHERS,
        "method": "mf-lf",
        "mode": "bs",
        "temperature": 3.0,
        "transfer_fingerprint": "tf123",
        "metrics": {"eval_accuracy": acc},
    }


def _register(reg, tmp_path, tag, acc, fp="eval-A"):
    return register_student(
        reg,
        "unified",
        _student(tmp_path, tag),
        lineage=_lineage(acc),
        metric="eval_accuracy",
        eval_fingerprint=fp,
    )


def test_champion_rules(mlflow_uri, tmp_path):
    reg = Registry(mlflow_uri)
    first, moved = _register(reg, tmp_path, "1", 0.70)
    assert moved and first.version == 1 and "champion" in first.aliases
    assert reg.get("unified", alias="champion").version == 1

    worse, moved = _register(reg, tmp_path, "2", 0.65)
    assert not moved and reg.get("unified", alias="champion").version == 1
    assert "champion kept" in worse.tags["champion_decision"]

    tie, moved = _register(reg, tmp_path, "3", 0.70)
    assert not moved and reg.get("unified", alias="champion").version == 1

    better, moved = _register(reg, tmp_path, "4", 0.80)
    assert moved and reg.get("unified", alias="champion").version == better.version == 4

    # Far better, but on another evaluation set: not comparable, the champion stays.
    other, moved = _register(reg, tmp_path, "5", 0.99, fp="eval-B")
    assert not moved and reg.get("unified", alias="champion").version == 4
    assert "another evaluation set" in other.tags["champion_decision"]
    assert [r.version for r in reg.versions("unified")] == [1, 2, 3, 4, 5]


def test_lineage_in_tags_and_spec(mlflow_uri, tmp_path):
    reg = Registry(mlflow_uri)
    record, _ = _register(reg, tmp_path, "1", 0.5)
    assert record.tags["role"] == "student"
    assert record.tags["teachers"] == "t0:1,t1:3"
    assert record.tags["method"] == "mf-lf" and record.tags["mode"] == "bs"
    assert record.tags["temperature"] == "3.0"
    assert record.tags["transfer_fingerprint"] == "tf123" and record.tags["eval_fingerprint"] == "eval-A"
    assert record.tags["metric"] == "eval_accuracy" and float(record.tags["metric_value"]) == 0.5
    _, spec, loaded = reg.load("unified", alias="champion")
    lineage = spec.metadata["lineage"]
    assert lineage["teachers"] == TEACHERS and lineage["temperature"] == 3.0
    assert lineage["eval_fingerprint"] == "eval-A" and lineage["metrics"] == {"eval_accuracy": 0.5}
    assert spec.metadata["role"] == "student"  # the student's own metadata is kept


def test_metric_from_spec_and_refusals(mlflow_uri, tmp_path):
    reg = Registry(mlflow_uri)
    lineage = _lineage(0.0)
    del lineage["metrics"]
    record, moved = register_student(
        reg,
        "s2",
        _student(tmp_path, "m", accuracy=0.42),
        lineage=lineage,
        metric="eval_accuracy",
        eval_fingerprint="e",
    )
    assert moved and float(record.tags["metric_value"]) == 0.42
    with pytest.raises(ValueError, match="no finite value of metric"):
        register_student(
            reg, "s2", _student(tmp_path, "n"), lineage=lineage, metric="eval_accuracy", eval_fingerprint="e"
        )
    with pytest.raises(ValueError, match="lineage is missing"):
        register_student(
            reg, "s2", _student(tmp_path, "o"), lineage={"method": "sd"}, metric="x", eval_fingerprint="e"
        )
    assert [r.version for r in reg.versions("s2")] == [1]  # refusals wrote nothing


def test_champion_decision_and_teachers_tag():
    assert champion_decision(None, "acc", 0.1, "f") == (True, "no champion yet")
    assert teachers_tag(["a:1", {"name": "b", "version": 2}]) == "a:1,b:2"
    with pytest.raises(ValueError):
        teachers_tag([{"name": "b"}])
