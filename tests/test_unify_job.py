"""The main job (`jobs/unify.py`) end to end on a tiny synthetic zoo: real Ray (the session fixture),
real MLflow (sqlite), real Parquet. Teachers are small CNNs/MLPs trained for a few seconds on
synthetic 16x16 patterns and registered in the zoo; the transfer set is a directory of PNGs and the
evaluation set a labelled ImageFolder, as a user would bring them."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from zoo.data import encode_png, synthetic_class_names, synthetic_images

ROOT = Path(__file__).resolve().parent.parent
CLASSES = synthetic_class_names(5)
# Heterogeneous teachers: overlapping class subsets; class04 is known to one teacher only.
TEACHER_CLASSES = {"syn-a": [0, 1, 2], "syn-b": [1, 2, 3], "syn-c": [3, 4, 0]}


def _job_main():
    spec = importlib.util.spec_from_file_location("unify_job_script", ROOT / "jobs" / "unify.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three trained tiny teachers tagged zoo=tiny, a transfer dir and an eval ImageFolder, in a sqlite
    MLflow store of this module (teachers are trained once for the module's tests)."""
    tmp_path = tmp_path_factory.mktemp("unify-job")
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        mp.setenv("MLFLOW_REGISTRY_URI", mlflow_uri)
        mp.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
        yield _make_tiny_zoo(tmp_path, mlflow_uri)


def _make_tiny_zoo(tmp_path: Path, mlflow_uri: str) -> dict:
    from zoo.architectures import build_model
    from zoo.artifacts import InputSpec, ModelSpec, preprocess
    from zoo.registry import Registry
    from zoo.train import fit_classifier

    images, labels = synthetic_images(1500, 5, size=16, seed=0)
    spec_in = InputSpec(1, 16, 16, (0.3,), (0.3,))
    registry = Registry(mlflow_uri)
    for k, (name, cls) in enumerate(TEACHER_CLASSES.items()):
        sel = np.flatnonzero(np.isin(labels[:900], cls))[:150]
        y = torch.as_tensor(np.array([cls.index(v) for v in labels[sel]]))
        arch, kw = ("mlp", {"hidden": 32, "layers": 1}) if k == 1 else ("cnn", {"width": 8, "depth": 2})
        torch.manual_seed(k)
        model = build_model(arch, len(cls), in_channels=1, image_size=16, **kw)
        model = fit_classifier(
            model,
            preprocess(images[sel], spec_in),
            y,
            epochs=4,
            lr=3e-3,
            batch_size=32,
            seed=k,
            progress=False,
        )
        spec = ModelSpec(arch=arch, classes=[CLASSES[c] for c in cls], input=spec_in, arch_kwargs=kw)
        registry.register_model(name, model, spec, tags={"zoo": "tiny", "role": "teacher"})
    transfer = tmp_path / "transfer"
    for i in range(900, 1300):  # images no teacher saw, nested dirs, labels ignored
        d = transfer / f"part{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(encode_png(images[i]))
    evald = tmp_path / "eval"
    for i in range(1300, 1500):
        d = evald / CLASSES[labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(encode_png(images[i]))
    config = tmp_path / "job.yaml"
    config.write_text(
        "zoo: tiny\nname: tiny-unified\nmethod: mf-lf\nmode: bs\ntemperature: 3\narch: cnn\n"
        "arch_kwargs: {width: 8, depth: 2}\nepochs: 10\nbatch_size: 64\nlr: 0.05\nnum_workers: 1\n"
        f"inference_batch_size: 128\ninference_concurrency: 1\nexperiment: unify-test\n"
        f"transfer: {transfer}\neval: {evald}\nrun_dir: {tmp_path / 'run'}\ntracking_uri: {mlflow_uri}\n"
    )
    return {
        "registry": registry,
        "transfer": transfer,
        "eval": evald,
        "config": config,
        "tmp": tmp_path,
        "uri": mlflow_uri,
    }


@pytest.mark.slow
@pytest.mark.timeout(1500)  # three runs of the job; ~2-3 min on an idle 2-core machine, far more when shared
def test_whole_job_then_rerun_skips(ray_session, tiny_zoo, capsys: pytest.CaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    main = _job_main()
    assert main(["--config", str(tiny_zoo["config"])]) == 0
    out = capsys.readouterr().out
    run = tiny_zoo["tmp"] / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert [t["name"] for t in summary["teachers"]] == ["syn-a", "syn-b", "syn-c"]
    assert summary["registered"]["version"] == 1 and summary["registered"]["champion"] is True
    assert set(summary["student_accuracy"]) == {"all", "1 teacher", "2+ teachers"}
    # real learning: the student beats chance (0.2 over 5 classes) on the 200 held-out labelled images
    assert summary["student_accuracy"]["all"] > 0.3, out
    for stage in ("transfer", "inference", "soft_labels", "student", "register"):
        assert not summary["stages"][stage]["skipped"]
    # stage outputs: ids of the transfer dir (relative paths), logits [B, N*L]
    logits = pq.read_table(run / "logits.parquet")
    assert logits.num_rows == 400 and logits.column("id")[0].as_py().startswith("part")
    assert logits.schema.field("logits").type.list_size == 3 * 5
    # MLflow: the job's run holds the student's metrics and the summary; the model has its lineage
    client = MlflowClient(tiny_zoo["uri"])
    mrun = client.get_run(summary["mlflow_run_id"])
    assert "student.eval_accuracy.all" in mrun.data.metrics and "student.train_loss" in mrun.data.metrics
    rec = tiny_zoo["registry"].get("tiny-unified", alias="champion")
    lineage = rec.spec.metadata["lineage"]
    assert [t["name"] for t in lineage["teachers"]] == ["syn-a", "syn-b", "syn-c"]
    assert (
        lineage["method"] == "mf-lf"
        and lineage["mode"] == "bs"
        and len(lineage["transfer_fingerprint"]) == 64
    )
    assert rec.spec.classes == list(CLASSES)
    assert "where to look" in out and "models:/tiny-unified/1" in out

    # rerun: every stage is up to date, nothing recomputed, no new version
    assert main(["--config", str(tiny_zoo["config"])]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (up to date)") == 5, out
    assert len(tiny_zoo["registry"].versions("tiny-unified")) == 1

    # a changed input (method) reruns soft labels, student and registration, not inference
    assert main(["--config", str(tiny_zoo["config"]), "--method", "sd", "--mode", "e", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "[transfer] skipped" in out and "[inference] skipped" in out and "[soft_labels] running" in out
    assert len(tiny_zoo["registry"].versions("tiny-unified")) == 2


def _run_expect_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    main = _job_main()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_stop_before_compute(tiny_zoo, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    # Compute must not even start: the job's Ray start-up fails this test if it is reached.
    import zoo.pipeline.job as job

    def no_ray(*a, **k):
        raise AssertionError("the job reached Ray although its input is bad")

    monkeypatch.setattr(job, "init_ray", no_ray)
    cfg = ["--config", str(tiny_zoo["config"])]
    run_dir = tiny_zoo["tmp"] / "run"
    before = sorted(p.name for p in run_dir.glob("*.parquet"))
    err = _run_expect_error(capsys, [*cfg, "--teachers", "syn-a,nobody"])
    assert "unknown teacher 'nobody'" in err and "syn-a" in err
    empty = tiny_zoo["tmp"] / "empty"
    empty.mkdir()
    err = _run_expect_error(capsys, [*cfg, "--transfer", str(empty)])
    assert "empty" in err and "--transfer" in err
    bad = tiny_zoo["tmp"] / "badimgs"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    err = _run_expect_error(capsys, [*cfg, "--transfer", str(bad)])
    assert "cannot be decoded" in err and "x.png" in err
    # eval classes outside the union of the chosen teachers (syn-a, syn-b know class00..class03)
    err = _run_expect_error(capsys, [*cfg, "--teachers", "syn-a,syn-b"])
    assert "class04" in err and "not in the teachers' union" in err
    err = _run_expect_error(capsys, [*cfg, "--tag", "zoo=nothing-here"])
    assert "no teachers match" in err
    err = _run_expect_error(capsys, [*cfg, "--method", "nope"])
    assert "method 'nope' is unknown" in err
    # a teacher whose stored weights were damaged fails to load: named, with the fix
    damaged = list((tiny_zoo["tmp"] / "zoo-artifacts").rglob("*.safetensors"))
    assert damaged
    for f in damaged:
        f.write_bytes(b"\0" * 64)
    shutil.rmtree(tiny_zoo["tmp"] / "cache", ignore_errors=True)
    err = _run_expect_error(capsys, cfg)
    assert "fails to load" in err and "syn-" in err
    # nothing was (re)computed: outputs of an earlier run in this module, if any, are untouched
    assert sorted(p.name for p in run_dir.glob("*.parquet")) == before
