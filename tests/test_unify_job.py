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


def _train_elsewhere(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    """A teacher's owner trains it with a plain PyTorch loop of their own (not the project's core)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(4):
        for idx in torch.randperm(len(x), generator=g).split(32):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def _make_tiny_zoo(tmp_path: Path, mlflow_uri: str) -> dict:
    from zoo.architectures import build_model
    from zoo.artifacts import InputSpec, ModelSpec, preprocess
    from zoo.registry import Registry

    images, labels = synthetic_images(1500, 5, size=16, seed=0)
    spec_in = InputSpec(1, 16, 16, (0.3,), (0.3,))
    registry = Registry(mlflow_uri)
    for k, (name, cls) in enumerate(TEACHER_CLASSES.items()):
        sel = np.flatnonzero(np.isin(labels[:900], cls))[:150]
        y = torch.as_tensor(np.array([cls.index(v) for v in labels[sel]]))
        arch, kw = ("mlp", {"hidden": 32, "layers": 1}) if k == 1 else ("cnn", {"width": 8, "depth": 2})
        torch.manual_seed(k)
        model = build_model(arch, len(cls), in_channels=1, image_size=16, **kw)
        _train_elsewhere(model, preprocess(images[sel], spec_in), y, seed=k)
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
    # min_steps: 1 keeps these runs short: they test the stages; the budget has its own test below.
    config.write_text(
        "zoo: tiny\nname: tiny-unified\nmethod: mf-lf\nmode: bs\ntemperature: 3\narch: cnn\n"
        "arch_kwargs: {width: 8, depth: 2}\nepochs: 10\nmin_steps: 1\nbatch_size: 64\nlr: 0.05\n"
        "num_workers: 1\n"
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


@pytest.mark.slow
@pytest.mark.timeout(1500)  # one job with a 2-trial sweep, then a rerun; ~2-4 min on 2 cores
def test_uri_run_dir_and_validation_set(
    ray_session, tiny_zoo, tmp_path, capsys: pytest.CaptureFixture
) -> None:
    """The run directory as a `file://` URI (every stage output read and written through pyarrow.fs,
    as on s3://), and a sweep that selects on a labelled validation set apart from the test set."""
    vald = tmp_path / "val"
    images, labels = synthetic_images(150, 5, size=16, seed=7)  # not the eval (test) images
    for i, (im, lab) in enumerate(zip(images, labels)):
        d = vald / CLASSES[lab]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"v{i}.png").write_bytes(encode_png(im))
    sweep_cfg = tmp_path / "sweep.yaml"
    sweep_cfg.write_text("methods: [sd, mf-lf]\nmodes: [e]\ntemperatures: [3]\nepochs: 1\nscheduler: fifo\n")
    run_path = tmp_path / "uri-run"
    argv = ["--config", str(tiny_zoo["config"]), "--run-dir", run_path.as_uri(), "--name", "tiny-uri"]
    argv += ["--val", str(vald), "--sweep", "--sweep-config", str(sweep_cfg), "--epochs", "2"]
    main = _job_main()
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((run_path / "summary.json").read_text())
    assert summary["selected_by"] == f"the sweep, on val_accuracy of ImageFolder {vald}", summary
    assert f"config selected by the sweep, on val_accuracy of ImageFolder {vald}" in out
    sweep = json.loads((run_path / "sweep" / "results.json").read_text())
    assert sweep["metric"] == "val_accuracy" and len(sweep["trials"]) == 2
    assert (summary["method"], summary["mode"]) == (sweep["best_config"]["method"], "e")
    for name in ("transfer.parquet", "logits.parquet", "soft_labels.parquet", "registration.json"):
        assert (run_path / name).is_file(), name
    students = list((run_path / "train").glob("student-*/student"))
    assert len(students) == 1 and (students[0] / "spec.json").is_file()
    assert json.loads(students[0].with_name("student.json").read_text())["fingerprint"]
    assert pq.read_table(run_path / "logits.parquet").num_rows == 400
    assert not [p.name for p in run_path.iterdir() if p.name.startswith(".")], "temporary files left"
    assert tiny_zoo["registry"].get("tiny-uri", version=1).spec.metadata["lineage"]["selected_by"]
    # rerun on the URI: the fingerprints read back through pyarrow.fs, every stage and the sweep skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (up to date)") == 5 and "[sweep] up to date" in out, out
    # a --sweep rerun that changes nothing registers nothing; the champion was chosen on --val, not --eval
    assert len(tiny_zoo["registry"].versions("tiny-uri")) == 1
    assert summary["champion_chosen_on"] == f"val_accuracy of ImageFolder {vald}"


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two students on 400 images; ~1-2 min on an idle 2-core machine
def test_the_default_budget_follows_a_small_transfer_set(ray_session, tiny_zoo, tmp_path, capsys) -> None:
    """400 transfer images: the default settings (5 epochs of batch 128 were 20 optimiser steps) now
    train for at least min_steps steps and give a student within a few points of one trained for many
    epochs at a small batch, as a user would tune it by hand."""
    config = tmp_path / "defaults.yaml"  # only the inputs: every training setting is the default
    config.write_text(
        f"zoo: tiny\nname: tiny-defaults\nnum_workers: 1\ninference_concurrency: 1\n"
        f"transfer: {tiny_zoo['transfer']}\neval: {tiny_zoo['eval']}\nrun_dir: {tmp_path / 'run'}\n"
        f"tracking_uri: {tiny_zoo['uri']}\nexperiment: unify-test\n"
    )
    main = _job_main()
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "400 transfer images: 188 epochs instead of 5" in out, out
    default = json.loads((tmp_path / "run" / "summary.json").read_text())
    argv = ["--config", str(config), "--name", "tiny-tuned", "--epochs", "60", "--batch-size", "32"]
    assert main([*argv, "--min-steps", "1"]) == 0
    tuned = json.loads((tmp_path / "run" / "summary.json").read_text())
    acc, ref = default["student_accuracy"]["all"], tuned["student_accuracy"]["all"]
    assert ref > 0.5 and acc >= ref - 0.05, (acc, ref)
    assert default["agreement"] > 0.6 and default["schedule"]["epochs"] == 188


def test_an_eval_folder_of_more_classes_is_evaluated_on_the_union(tiny_zoo) -> None:
    """Unifying a subset of a user's teachers takes the same --eval folder: its classes outside the
    union (syn-a and syn-b know class00..class03) are left out and listed, and the job goes on. A
    --val folder must still hold union classes only (the bad-input test above)."""
    from zoo.config import config_from_args
    from zoo.pipeline.session import Session
    from zoo.pipeline.unify import check_inputs

    cfg = config_from_args(["--config", str(tiny_zoo["config"]), "--teachers", "syn-a,syn-b"])
    logs: list[str] = []
    with Session(cfg.run_path, tracking_uri=cfg.tracking_uri, log=logs.append) as s:
        inp = check_inputs(cfg, s)
    assert list(inp.space.classes) == ["class00", "class01", "class02", "class03"]
    in_folder = {p.parent.name for p in tiny_zoo["eval"].rglob("*.png")}
    kept = sum(1 for p in tiny_zoo["eval"].rglob("*.png") if p.parent.name != "class04")
    assert "class04" in in_folder and len(inp.eval_set) == kept
    assert set(inp.eval_set.labels.tolist()) == {0, 1, 2, 3}
    assert any("['class04']" in m and "left out" in m for m in logs), logs


def _run_expect_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    main = _job_main()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_stop_before_compute(tiny_zoo, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    # Compute must not even start: the job's Ray start-up fails this test if it is reached.
    import zoo.pipeline.session as session

    def no_ray(*a, **k):
        raise AssertionError("the job reached Ray although its input is bad")

    monkeypatch.setattr(session, "init_ray", no_ray)
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
    err = _run_expect_error(capsys, [*cfg, "--tag", "zoo=nothing-here"])
    assert "no teachers match" in err
    # a validation set with a class outside the union: named, with the flag
    zebra = tiny_zoo["tmp"] / "badval" / "zebra"
    zebra.mkdir(parents=True)
    shutil.copy(next(tiny_zoo["eval"].rglob("*.png")), zebra / "z.png")
    err = _run_expect_error(capsys, [*cfg, "--val", str(zebra.parent)])
    assert "--val" in err and "zebra" in err and "not in the teachers' union" in err
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


def test_demo_split_validation_set_for_the_sweep() -> None:
    """The job's validation set from a demo split: labelled training images of the union classes,
    in the label space's order; None for a split saved before it had one (the proxy then ranks)."""
    from dataclasses import replace

    from zoo.demo import DemoConfig, make_split
    from zoo.labels import build_label_space
    from zoo.pipeline.datasets import demo_set, load_dataset

    ds = load_dataset(synthetic=True)
    cfg = DemoConfig(
        n_teachers=3, n_union_classes=4, classes_per_teacher=(2, 3), transfer_size=500, val_size=300
    )
    split = make_split(cfg, ds.labels_train, ds.labels_test, ds.class_names, dataset="synthetic")
    space = build_label_space([t.classes for t in split.teachers])
    val, test = demo_set(split, space, "val"), demo_set(split, space, "eval")
    assert len(val.labels) == 300 and "validation images" in val.source and "test images" in test.source
    idx = np.asarray(split.val_indices)
    assert np.array_equal(val.images, ds.images_train[idx])  # training images, not the test split's
    assert [space.classes[k] for k in val.labels] == [ds.class_names[c] for c in ds.labels_train[idx]]
    assert demo_set(replace(split, val_indices=()), space, "val") is None
