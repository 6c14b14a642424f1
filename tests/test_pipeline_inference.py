"""Stages 2-3 of the main job: transfer-set materialisation, Ray Data teacher inference, soft labels,
stage fingerprints/skipping, and the job's typed config. Real Ray (the session fixture), real Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zoo.artifacts import InputSpec, ModelSpec, save_model
from zoo.data import encode_png, synthetic_images
from zoo.labels import build_label_space
from zoo.pipeline.cache import fingerprint, read_fingerprint, run_stage
from zoo.pipeline.inference import (
    read_features,
    read_logits,
    run_teacher_inference,
    teacher_logits_local,
    teacher_outputs_local,
)
from zoo.pipeline.soft_labels import read_soft_labels, write_soft_labels
from zoo.pipeline.storage import write_parquet_atomic
from zoo.pipeline.teachers import Teacher
from zoo.pipeline.transfer import (
    TransferSetError,
    materialize_transfer_set,
    read_transfer_ids,
    read_transfer_images,
    transfer_content_fingerprint,
)
from zoo.unify.recipe import Recipe


def make_teacher(
    root: Path, name: str, classes: list[str], *, size: int, channels: int, seed: int
) -> Teacher:
    """A randomly initialised allow-listed CNN saved in the zoo's artifact format."""
    from zoo.architectures import build_model

    torch.manual_seed(seed)
    model = build_model("cnn", len(classes), in_channels=channels, image_size=size, width=8, depth=2)
    spec = ModelSpec(
        arch="cnn",
        classes=classes,
        input=InputSpec(channels, size, size, (0.5,) * channels, (0.25,) * channels),
        arch_kwargs={"width": 8, "depth": 2},
    )
    d = save_model(model, spec, root / name)
    return Teacher(name, 1, Path(d), run_id=f"run-{name}", spec=spec)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    x, _ = synthetic_images(300, 6, size=16, seed=3)
    return x


# ------------------------------------------------------------------------------------ transfer set
def test_transfer_from_directory_any_depth(tmp_path: Path, images: np.ndarray) -> None:
    root = tmp_path / "imgs"
    for i, im in enumerate(images[:12]):
        d = root / ("a" if i % 2 else "b/c")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.png").write_bytes(encode_png(im))
    (root / "notes.txt").write_text("not an image, ignored")
    out = materialize_transfer_set(root, tmp_path / "t.parquet", fingerprint="fp1")
    ids = read_transfer_ids(out)
    assert len(ids) == 12 and ids == sorted(ids) and "b/c/000.png" in ids and "a/001.png" in ids
    assert read_fingerprint(out) == "fp1"
    got_ids, blobs = read_transfer_images(out)
    k = got_ids.index("a/003.png")
    assert blobs[k] == (root / "a/003.png").read_bytes()  # bytes kept as they are, not re-encoded
    assert len(transfer_content_fingerprint(out)) == 64


def test_transfer_from_parquet_and_arrays(tmp_path: Path, images: np.ndarray) -> None:
    blobs = [encode_png(im) for im in images[:10]]
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(10)], "img": blobs}), src)
    out = materialize_transfer_set(src, tmp_path / "a.parquet")
    assert read_transfer_ids(out) == [str(i) for i in range(10)]  # no id column: row numbers
    out = materialize_transfer_set(src, tmp_path / "b.parquet", id_column="key")
    assert read_transfer_ids(out) == [f"k{i}" for i in range(10)]
    # HF-datasets style struct column {bytes, path}
    struct = pa.array([{"bytes": b, "path": f"p{i}"} for i, b in enumerate(blobs)])
    pq.write_table(pa.table({"id": [f"s{i}" for i in range(10)], "image": struct}), tmp_path / "hf.parquet")
    out = materialize_transfer_set(tmp_path / "hf.parquet", tmp_path / "c.parquet")
    assert read_transfer_images(out)[1] == blobs
    # arrays with ids: PNG-encoded, lossless
    out = materialize_transfer_set((images[:5], [f"x{i}" for i in range(5)]), tmp_path / "d.parquet")
    from zoo.data import decode_image

    ids, enc = read_transfer_images(out)
    assert ids == [f"x{i}" for i in range(5)]
    assert all(np.array_equal(decode_image(b), im) for b, im in zip(enc, images[:5]))
    # same images and ids -> same content fingerprint, whatever the source
    a = materialize_transfer_set((images[:10], [str(i) for i in range(10)]), tmp_path / "e.parquet")
    assert transfer_content_fingerprint(a) == transfer_content_fingerprint(tmp_path / "a.parquet")
    assert transfer_content_fingerprint(a) != transfer_content_fingerprint(tmp_path / "b.parquet")


def test_transfer_bad_inputs_name_the_problem(tmp_path: Path, images: np.ndarray) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(TransferSetError, match="empty"):
        materialize_transfer_set(empty, tmp_path / "o.parquet")
    with pytest.raises(TransferSetError, match="does not exist"):
        materialize_transfer_set(tmp_path / "nope", tmp_path / "o.parquet")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"ok{i}.png").write_bytes(encode_png(images[i]))
    for i in range(7):
        (bad / f"broken{i}.png").write_bytes(b"not a png at all")
    with pytest.raises(TransferSetError) as e:
        materialize_transfer_set(bad, tmp_path / "o.parquet")
    msg = str(e.value)
    assert "7 of 10 images cannot be decoded" in msg and "broken0.png" in msg and "and 2 more" in msg
    assert not (tmp_path / "o.parquet").exists()  # nothing half-written
    pq.write_table(pa.table({"pixels": [b"x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(TransferSetError, match="--image-column"):
        materialize_transfer_set(tmp_path / "nocol.parquet", tmp_path / "o.parquet")
    blobs = [encode_png(im) for im in images[:3]]
    pq.write_table(pa.table({"id": ["a", "b", "a"], "image": blobs}), tmp_path / "dup.parquet")
    with pytest.raises(TransferSetError, match="duplicate ids"):
        materialize_transfer_set(tmp_path / "dup.parquet", tmp_path / "o.parquet")
    with pytest.raises(TransferSetError, match="uint8"):
        materialize_transfer_set((images[:2].astype(np.float32), ["a", "b"]), tmp_path / "o.parquet")


# ---------------------------------------------------------------------------------------- inference
@pytest.fixture(scope="module")
def zoo_setup(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray):
    root = tmp_path_factory.mktemp("inference")
    # Heterogeneous teachers: different class sets (overlapping), different input contracts
    # (16x16 grey vs 12x12 RGB): the images are converted to each teacher's contract.
    teachers = [
        make_teacher(root, "t-a", ["cat", "dog", "bird"], size=16, channels=1, seed=0),
        make_teacher(root, "t-b", ["Dog", "fish"], size=12, channels=3, seed=1),
        make_teacher(root, "t-c", ["bird", "fish", "horse", "cat"], size=16, channels=1, seed=2),
    ]
    space = build_label_space(
        [["cat", "dog", "bird"], ["Dog", "fish"], ["bird", "fish", "horse", "cat"]],
        [t.name for t in teachers],
    )
    ids = [f"img-{i:04d}" for i in range(len(images))]
    transfer = materialize_transfer_set((images, ids), root / "transfer.parquet", row_group_size=64)
    return root, teachers, space, transfer


def test_ray_inference_matches_plain_loop(ray_session, zoo_setup) -> None:
    root, teachers, space, transfer = zoo_setup
    out = run_teacher_inference(
        transfer,
        teachers,
        space,
        root / "logits.parquet",
        batch_size=50,
        concurrency=2,
        fingerprint="fp-logits",
    )
    lf = read_logits(out)
    ids, blobs = read_transfer_images(transfer)
    assert lf.ids == ids  # aligned with the transfer set, in its order
    ref = teacher_logits_local(blobs, teachers, space, batch_size=50)
    assert lf.logits.shape == (len(ids), 3, space.num_classes) == ref.shape
    torch.testing.assert_close(lf.logits, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(lf.mask, space.mask)
    assert (lf.logits[:, ~space.mask] == 0).all()  # masked entries are 0
    assert lf.label_space.classes == space.classes and lf.fingerprint == "fp-logits"
    assert lf.teachers == [{"name": t.name, "version": 1, "run_id": t.run_id} for t in teachers]
    schema = pq.read_schema(out)
    assert schema.field("logits").type == pa.list_(pa.float32(), 3 * space.num_classes)
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert json.loads(meta["zoo.mask"]) == space.mask.tolist()
    assert json.loads(meta["zoo.label_space"])["classes"] == list(space.classes)


def test_ray_inference_writes_teacher_features(ray_session, zoo_setup) -> None:
    """With features_path, one pass also writes each teacher's penultimate features (the embed of
    `split_head`), float16, in the transfer set's order; the logits are the same as without."""
    root, teachers, space, transfer = zoo_setup
    out = run_teacher_inference(
        transfer, teachers, space, root / "logits-f.parquet", features_path=root / "features.parquet",
        batch_size=64, concurrency=1,
    )  # fmt: skip
    ids, blobs = read_transfer_images(transfer)
    ref = teacher_outputs_local(blobs, teachers, space, batch_size=64, features=True)
    ff = read_features(root / "features.parquet")
    assert ff.ids == ids and sorted(ff.features) == sorted(t.name for t in teachers) and not ff.missing
    for i, t in enumerate(teachers):
        assert ff.features[t.name].shape == (len(ids), 16)  # the cnn (width 8, depth 2): its last block
        torch.testing.assert_close(ff.features[t.name], torch.from_numpy(ref[f"f{i}"]).float())
    schema = pq.read_schema(root / "features.parquet")
    assert schema.field("f0").type == pa.list_(pa.float16(), 16)
    meta = json.loads(schema.metadata[b"zoo.features"])
    assert [(f["name"], f["dim"], f["dtype"]) for f in meta] == [(t.name, 16, "float16") for t in teachers]
    torch.testing.assert_close(
        read_logits(out).logits, teacher_logits_local(blobs, teachers, space), rtol=1e-5, atol=1e-5
    )


def test_inference_rejects_teacher_mismatch(ray_session, zoo_setup) -> None:
    root, teachers, space, transfer = zoo_setup
    with pytest.raises(ValueError, match="not the label space's teachers"):
        run_teacher_inference(transfer, teachers[:2], space, root / "x.parquet")


# -------------------------------------------------------------------------------------- soft labels
@pytest.mark.parametrize("method,mode", [("mf-lf", "bs"), ("sd", "e"), ("ce", "e")])
def test_soft_labels_round_trip(tmp_path: Path, method: str, mode: str) -> None:
    from zoo.unify import balance_weights, estimate_soft_labels

    space = build_label_space([["a", "b", "c"], ["b", "d"], ["c", "d", "e"]], ["t0", "t1", "t2"])
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(50, 3, space.num_classes, generator=gen) * space.mask
    ids = [f"s{i}" for i in range(50)]
    col = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1).numpy()), 3 * space.num_classes)
    meta = {
        "zoo.label_space": json.dumps(space.to_dict()),
        "zoo.mask": json.dumps(space.mask.tolist()),
        "zoo.teachers": json.dumps([{"name": n, "version": 1, "run_id": None} for n in space.teachers]),
    }
    logits = write_parquet_atomic(pa.table({"id": ids, "logits": col}), tmp_path / "logits.parquet", meta)
    out = write_soft_labels(
        logits, tmp_path / "q.parquet", Recipe(method, mode, 3.0), fingerprint="fq", chunk_size=16
    )
    sl = read_soft_labels(out)
    expected = estimate_soft_labels(z, space.mask, method, 3.0)
    assert sl.ids == ids and sl.classes == list(space.classes)
    torch.testing.assert_close(sl.q, expected.float(), rtol=1e-5, atol=1e-6)
    assert sl.meta["zoo.method"] == method and sl.meta["zoo.mode"] == mode
    assert json.loads(sl.meta["zoo.temperature"]) == 3.0 and read_fingerprint(out) == "fq"
    if mode == "bs":
        torch.testing.assert_close(sl.weights, balance_weights(expected).float(), rtol=1e-5, atol=1e-5)
    else:
        assert sl.weights is None
    with pytest.raises(ValueError, match="bp"):
        write_soft_labels(logits, tmp_path / "x.parquet", Recipe(method, "bp", 3.0))


# ------------------------------------------------------------------------------------------- stages
def test_run_stage_skips_when_inputs_unchanged_and_never_leaves_partial_files(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    calls = []

    def compute(fp: str):
        def go():
            calls.append(fp)
            write_parquet_atomic(pa.table({"x": [1, 2]}), out, {"zoo.fingerprint": fp})

        return go

    fp1 = fingerprint("stage", {"a": 1, "b": [1, 2]}, 3.0)
    assert fp1 == fingerprint("stage", {"b": [1, 2], "a": 1}, 3)  # key order and 3 vs 3.0 do not matter
    logs: list[str] = []
    assert not run_stage("s", out, fp1, compute(fp1), log=logs.append).skipped
    assert run_stage("s", out, fp1, compute(fp1), log=logs.append).skipped
    assert any("skipped (up to date)" in m for m in logs)
    assert run_stage("s", out, fp1, compute(fp1), force=True, log=logs.append).skipped is False
    fp2 = fingerprint("stage", {"a": 2})
    assert not run_stage("s", out, fp2, compute(fp2), log=logs.append).skipped
    assert calls == [fp1, fp1, fp2]

    def crash():
        write_parquet_atomic(pa.table({"x": [9]}), tmp_path / "ok.parquet", {"zoo.fingerprint": "z"})
        from zoo.pipeline.storage import atomic_path

        with atomic_path(tmp_path / "half.parquet") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-stage")

    with pytest.raises(RuntimeError, match="crash"):
        run_stage("c", tmp_path / "half.parquet", "f", crash, log=logs.append)
    assert not (tmp_path / "half.parquet").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    # a sidecar stage: the sidecar is the commit marker
    d = tmp_path / "model"
    res = run_stage("m", d, "fm", lambda: d.mkdir(), sidecar=True, log=logs.append)
    assert not res.skipped and read_fingerprint(d) == "fm"
    assert run_stage("m", d, "fm", lambda: None, sidecar=True, log=logs.append).skipped


def test_stages_on_a_uri_run_dir(tmp_path: Path) -> None:
    """The same stage helpers on a `file://` URI go through pyarrow.fs (the code path of s3://)."""
    from zoo.pipeline.cache import RunDir
    from zoo.pipeline.storage import atomic_dir, atomic_path, local_copy, read_text, write_json_atomic

    run = RunDir((tmp_path / "r").as_uri() + "/").ensure()
    assert run.is_remote and isinstance(run.logits, str) and run.logits.startswith("file:///")
    assert run.logits == (tmp_path / "r" / "logits.parquet").as_uri()
    fp = fingerprint("s", 1)
    calls = []

    def go():
        calls.append(1)
        write_parquet_atomic(pa.table({"x": [1]}), run.transfer, {"zoo.fingerprint": fp})

    assert not run_stage("t", run.transfer, fp, go, log=lambda m: None).skipped
    assert run_stage("t", run.transfer, fp, go, log=lambda m: None).skipped and calls == [1]
    assert read_fingerprint(run.transfer) == fp and read_fingerprint(run.logits) is None
    with pytest.raises(RuntimeError, match="crash"), atomic_path(run.logits, ".parquet") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["transfer.parquet"]  # nothing partial
    write_json_atomic({"fingerprint": "j", "k": [1, 2]}, run.registration)
    assert (
        json.loads(read_text(run.registration))["k"] == [1, 2] and read_fingerprint(run.registration) == "j"
    )
    for version in ("a", "b"):  # a directory output, replaced whole, committed by its sidecar
        res = run_stage(
            "d",
            run.spv,
            f"fd-{version}",
            lambda v=version: _fill(atomic_dir(run.spv), v),
            sidecar=True,
            log=lambda m: None,
        )
        assert not res.skipped and read_fingerprint(run.spv) == f"fd-{version}"
        with local_copy(run.spv) as d:
            assert sorted(p.name for p in d.iterdir()) == [version]
    # soft labels read and written on the URI
    ids, width = ["a", "b"], 2 * 3
    col = pa.FixedSizeListArray.from_arrays(
        pa.array(np.random.default_rng(0).normal(size=2 * width), pa.float32()), width
    )
    meta = {
        "zoo.label_space": json.dumps(build_label_space([["x", "y"], ["y", "z"]], ["t0", "t1"]).to_dict()),
        "zoo.teachers": json.dumps([{"name": "t0"}, {"name": "t1"}]),
        "zoo.mask": json.dumps([[True, True, False], [False, True, True]]),
    }
    write_parquet_atomic(pa.table({"id": ids, "logits": col}), run.logits, meta)
    write_soft_labels(run.logits, run.soft_labels, Recipe("sd", "bs", 3.0), fingerprint="q")
    sl = read_soft_labels(run.soft_labels)
    assert sl.ids == ids and sl.q.shape == (2, 3) and read_fingerprint(run.soft_labels) == "q"


def _fill(ctx, name: str) -> None:
    with ctx as d:
        (d / name).write_text(name)


def test_inference_reads_enough_pieces_for_every_actor(tmp_path: Path) -> None:
    from zoo.pipeline.inference import _read_pieces, _read_row_groups

    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"id": [str(i) for i in range(10)], "image": [b"x"] * 10}), path, row_group_size=4
    )
    pf = pq.ParquetFile(path)  # row groups of 4, 4, 2 rows
    assert len(_read_pieces(pf, 1)) == 3
    pieces = _read_pieces(pf, 6)  # 2 slices per row group
    assert len(pieces) == 6
    batch = {k: np.array([p[k] for p in pieces]) for k in ("rg", "start", "stop")}
    ids = _read_row_groups(path.as_uri())(batch).column("id").to_pylist()
    assert ids == [str(i) for i in range(10)]  # every row once, in order, read through a URI


# ------------------------------------------------------------------------------------------- config
def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    from zoo.config import ConfigError, config_from_args, load_config

    cfg = load_config()  # configs/default.yaml
    assert cfg.zoo == "fmnist-demo" and cfg.method == "ce" and cfg.mode == "bs" and cfg.temperature == 3.0
    y = tmp_path / "c.yaml"
    y.write_text("method: sd\nmode: e\nepochs: 7\ntemperature: 2\nteachers: [a, b]\ntags: {zoo: x}\n")
    cfg = config_from_args(["--config", str(y), "--epochs", "3", "--tag", "k=v", "--teachers", "c,d:2"])
    assert (cfg.method, cfg.mode, cfg.epochs, cfg.temperature) == ("sd", "e", 3, 2.0)
    assert cfg.teachers == ["c", "d:2"] and cfg.tags == {"k": "v"}
    assert isinstance(cfg.temperature, float)
    y.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(y)
    y.write_text("epochs: three\n")
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        load_config(y)
    with pytest.raises(ConfigError, match="method 'xx' is unknown"):
        load_config(None, {"method": "xx"})
