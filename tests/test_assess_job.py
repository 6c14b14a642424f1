"""The assess job (`jobs/assess.py`, `zoo assess`): the pure ranking functions (`zoo.assess.ranking`) and
the task reader on tiny inputs, then one end-to-end run on a tiny synthetic zoo with real Ray (the session
fixture), MLflow (sqlite) and Parquet: a ranking, its files and MLflow run, a rerun from the cache without
Ray, and a teacher added later computed alone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zoo.assess import leep, logme, nce, sinkhorn_score
from zoo.assess.ranking import METRICS, TeacherScores, parse_metrics, rank_teachers, ranks, score_teacher
from zoo.data import encode_png, synthetic_class_names, synthetic_images
from zoo.pipeline import JobError
from zoo.pipeline.assess import read_task

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ pure functions
def _teacher_data(n: int = 60, m: int = 4, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    features = torch.randn(n, d, generator=g) + labels[:, None].float()
    head = torch.randn(m, d, generator=g)
    return features @ head.T, labels, features, head


def test_parse_metrics_keeps_order_and_refuses_unknown_repeated_or_empty() -> None:
    assert parse_metrics("logme, Sinkhorn") == ("logme", "sinkhorn")
    assert parse_metrics(METRICS) == METRICS
    for bad, says in (("sinkhorn,foo", "unknown metric"), ("leep,leep", "named twice"), (" , ", "no metric")):
        with pytest.raises(ValueError, match=says):
            parse_metrics(bad)


def test_score_teacher_equals_the_library_scores() -> None:
    z, y, f, w = _teacher_data()
    r = score_teacher("t", z, y, features=f, head=w, sinkhorn_options={"tau": 2.0})
    assert r.scores == pytest.approx(
        {
            "sinkhorn": sinkhorn_score(f, z, y, w, tau=2.0),
            "logme": logme(f, y),
            "leep": leep(torch.softmax(z.double(), 1), y),
            "nce": nce(z.argmax(1), y),
        },
        rel=1e-12,
    )
    assert set(r.seconds) == set(METRICS) and all(s >= 0 for s in r.seconds.values()) and r.note == ""
    only = score_teacher("t", z, y, features=f, head=w, metrics=("nce", "leep"))
    assert list(only.scores) == ["nce", "leep"] and only.scores["nce"] == r.scores["nce"]


def test_a_teacher_without_features_is_scored_by_its_outputs_and_marked() -> None:
    z, y, _, _ = _teacher_data()
    r = score_teacher("t", z, y, no_features="architecture X cannot be split")
    assert r.scores["sinkhorn"] is None and r.scores["logme"] is None
    assert r.scores["leep"] is not None and r.scores["nce"] is not None
    assert "no features (architecture X cannot be split)" in r.note and "leep, nce only" in r.note
    assert score_teacher("t", z, y, metrics=("leep",)).note == ""  # nothing asked for was missed
    broken = z.clone()
    broken[3, 1] = float("nan")
    r = score_teacher("t", broken, y)
    assert set(r.scores.values()) == {None} and "NaN" in r.note
    with pytest.raises(ValueError, match="one class"):
        score_teacher("t", z, torch.zeros(len(y), dtype=torch.long))


def test_rank_teachers_first_metric_ranks_missing_last_ties_by_the_next() -> None:
    rows = [
        TeacherScores("a", {"sinkhorn": -0.5, "leep": -1.0}),
        TeacherScores("b", {"sinkhorn": None, "leep": -0.1}),
        TeacherScores("c", {"sinkhorn": -0.2, "leep": -2.0}),
        TeacherScores("d", {"sinkhorn": -0.5, "leep": -0.9}),
    ]
    assert [r.name for r in rank_teachers(rows, ("sinkhorn", "leep"))] == ["c", "d", "a", "b"]
    assert [r.name for r in rank_teachers(rows, ("leep", "sinkhorn"))] == ["b", "d", "a", "c"]
    assert ranks(rows, "sinkhorn") == {"a": 2, "b": None, "c": 1, "d": 2}
    assert ranks(rows, "leep") == {"a": 3, "b": 1, "c": 4, "d": 2}


# ------------------------------------------------------------------------------------------- task
def _folder(root: Path, per_class: dict[str, int]) -> Path:
    images, _ = synthetic_images(sum(per_class.values()), 3, size=8, seed=0)
    k = 0
    for name, n in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            (root / name / f"{k}.png").write_bytes(encode_png(images[k]))
            k += 1
    return root


def test_read_task_folder_and_parquet_and_bad_tasks(tmp_path: Path) -> None:
    task = read_task(_folder(tmp_path / "ok", {"cat": 2, "dog": 3}))
    assert task.classes == ("cat", "dog") and task.counts() == {"cat": 2, "dog": 3}
    assert task.labels_by_id["dog/2.png"] == 1 and task.source.is_absolute()

    png = encode_png(np.zeros((8, 8), np.uint8))
    table = pa.table({"image": [png] * 4, "label": ["b", "a", "b", "c"], "id": ["w", "x", "y", "z"]})
    pq.write_table(table, tmp_path / "t.parquet")
    task = read_task(tmp_path / "t.parquet")
    assert task.classes == ("a", "b", "c") and dict(task.labels_by_id) == {"w": 1, "x": 0, "y": 1, "z": 2}
    pq.write_table(table.drop(["id"]).set_column(1, "label", pa.array([2, 0, 2, 1])), tmp_path / "n.parquet")
    assert dict(read_task(tmp_path / "n.parquet").labels_by_id) == {"0": 2, "1": 0, "2": 2, "3": 1}

    stray = _folder(tmp_path / "stray", {"cat": 1, "dog": 1})
    (stray / "loose.png").write_bytes(png)
    pq.write_table(
        table.set_column(1, "label", pa.array([1.0, float("nan"), 0.0, 1.0])), tmp_path / "nan.parquet"
    )
    bad = {
        tmp_path / "one": ("one class only", lambda p: _folder(p, {"cat": 3})),
        tmp_path / "missing": ("does not exist", lambda p: p),
        stray: ("not in a class directory", lambda p: p),
        tmp_path / "nan.parquet": ("no label", lambda p: p),
    }
    for path, (says, make) in bad.items():
        with pytest.raises(JobError, match=says):
            read_task(make(path))
    with pytest.raises(JobError, match="no label column 'y'"):
        read_task(tmp_path / "t.parquet", label_column="y")


# ------------------------------------------------------------------------------------- end to end
TEACHERS = {"syn-a": ([0, 1, 2], "cnn"), "syn-b": ([2, 3, 4], "mlp"), "syn-c": ([3, 4, 5], "cnn")}


def _register(registry, name: str, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
    from zoo.architectures import build_model
    from zoo.artifacts import InputSpec, ModelSpec, preprocess
    from zoo.train import fit_classifier

    classes, arch = TEACHERS[name]
    spec_in = InputSpec(1, 16, 16, (0.3,), (0.3,))
    kw = {"hidden": 32, "layers": 1} if arch == "mlp" else {"width": 8, "depth": 2}
    sel = np.flatnonzero(np.isin(labels, classes))[:120]
    torch.manual_seed(seed)
    model = build_model(arch, len(classes), in_channels=1, image_size=16, **kw)
    y = torch.as_tensor(np.array([classes.index(v) for v in labels[sel]]))
    model = fit_classifier(
        model,
        preprocess(images[sel], spec_in),
        y,
        epochs=2,
        lr=3e-3,
        batch_size=32,
        seed=seed,
        progress=False,
    )
    names = synthetic_class_names(6)
    spec = ModelSpec(arch=arch, classes=[names[c] for c in classes], input=spec_in, arch_kwargs=kw)
    registry.register_model(name, model, spec, tags={"zoo": "tiny", "role": "teacher"})


def _job_main():
    spec = importlib.util.spec_from_file_location("assess_job_script", ROOT / "jobs" / "assess.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_assess_job_then_cli_from_the_cache_then_a_new_teacher(
    ray_session,
    mlflow_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.tracking import MlflowClient

    from zoo import cli
    from zoo.registry import Registry

    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    images, labels = synthetic_images(900, 6, size=16, seed=0)
    registry = Registry(mlflow_uri)
    for k, name in enumerate(["syn-a", "syn-b"]):
        _register(registry, name, images[:600], labels[:600], k)
    task = tmp_path / "task"  # 4 classes of images no teacher saw; its class names are its own
    for i in range(600, 900):
        if labels[i] < 4:
            (task / f"k{labels[i]}").mkdir(parents=True, exist_ok=True)
            (task / f"k{labels[i]}" / f"{i}.png").write_bytes(encode_png(images[i]))
    run = tmp_path / "run"
    base = ["--task", str(task), "--zoo", "tiny", "--run-dir", str(run)]

    assert _job_main()([*base, "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["task"]["images"] == int((labels[600:] < 4).sum()) and summary["task"]["classes"][0] == "k0"
    )
    assert {r["name"] for r in summary["ranking"]} == {"syn-a", "syn-b"} and summary[
        "ranked_by"
    ] == "sinkhorn"
    for r in summary["ranking"]:
        assert (
            all(np.isfinite(r["scores"][m]) for m in METRICS)
            and not r["inference_cached"]
            and r["note"] == ""
        )
        assert (run / "teachers" / f"{r['name']}-v1" / "features.parquet").is_file()
    first = summary["ranking"][0]["name"]
    assert "Teachers for task" in out and first in out and (run / "ranking.png").stat().st_size > 1000
    mlrun = MlflowClient(mlflow_uri).get_run(summary["mlflow_run_id"])
    assert mlrun.data.metrics[f"sinkhorn.{first}"] == pytest.approx(
        summary["ranking"][0]["scores"]["sinkhorn"]
    )
    assert mlrun.data.metrics[f"rank.sinkhorn.{first}"] == 1 and mlrun.info.status == "FINISHED"

    # The CLI from the cache (no Ray pass): stdout is the answer only, the progress is on stderr.
    code = cli.main(["--tracking-uri", mlflow_uri, "assess", *base, "--top", "1", "--names"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == f"{first}\n" and "skipped (up to date)" in err and "[ray]" not in err

    # A teacher added later: only its outputs are computed; --json gives the whole summary.
    _register(registry, "syn-c", images[:600], labels[:600], 2)
    code = cli.main(["--tracking-uri", mlflow_uri, "assess", *base, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    cached = {r["name"]: r["inference_cached"] for r in summary["ranking"]}
    assert cached == {"syn-a": True, "syn-b": True, "syn-c": False}
    assert summary["top"] == [r["label"] for r in summary["ranking"]]
