"""zoo.data and zoo.train: idx parsing, Fashion-MNIST lookup (tiny files made here, never a download),
synthetic data learnability, image folders, image bytes, seeded training."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo.data as data
from zoo.architectures import build_model
from zoo.data import (
    DatasetNotFoundError,
    ImageDecodeError,
    decode_image,
    encode_png,
    find_fashion_mnist,
    list_images,
    load_fashion_mnist,
    read_idx,
    read_image_folder,
    synthetic_images,
    write_idx,
)
from zoo.train import evaluate, fit_classifier


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An idx file written by hand (independently of zoo.data.write_idx)."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _tiny_fashion_mnist(directory: Path, n_train: int = 30, n_test: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) % 10)[::-1].astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        with gzip.open(directory / name, "wb") as f:
            f.write(_idx_bytes(a))
    return arrays


@pytest.fixture()
def no_system_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any installed copy so that the lookup falls through."""
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "no-cache"))


# ------------------------------------------------------------------------------------------ idx
def test_read_idx_parses_hand_written_files(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(a))
    with gzip.open(tmp_path / "a.idx.gz", "wb") as f:
        f.write(_idx_bytes(a))
    ints = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    (tmp_path / "i.idx").write_bytes(_idx_bytes(ints, code=0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz"), a)
    got = read_idx(tmp_path / "i.idx")
    assert got.dtype == np.int32 and got.dtype.byteorder in ("=", "<", "|")
    np.testing.assert_array_equal(got, ints)


def test_write_idx_round_trips(tmp_path: Path) -> None:
    a = np.random.default_rng(1).random((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f.idx.gz", a)), a)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "bytes"),
    ],
)
def test_read_idx_refuses_broken_files(tmp_path: Path, payload: bytes, match: str) -> None:
    (tmp_path / "bad.idx").write_bytes(payload)
    with pytest.raises(ValueError, match=match):
        read_idx(tmp_path / "bad.idx")


# -------------------------------------------------------------------------------- Fashion-MNIST
def test_load_fashion_mnist_from_explicit_path(tmp_path: Path) -> None:
    arrays = _tiny_fashion_mnist(tmp_path / "fm")
    x, y = load_fashion_mnist("train", tmp_path / "fm")
    assert x.shape == (30, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, arrays["train-images-idx3-ubyte.gz"])
    xt, yt = load_fashion_mnist("test", tmp_path / "fm")
    assert xt.shape == (12, 28, 28)
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte.gz"])
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", tmp_path / "fm")


def test_find_fashion_mnist_order_and_uncompressed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_system_data: None
) -> None:
    _tiny_fashion_mnist(tmp_path / "env")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "env"))
    assert find_fashion_mnist() == tmp_path / "env"
    # Uncompressed files are accepted too.
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in (tmp_path / "env").iterdir():
        (plain / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    assert find_fashion_mnist(plain) == plain
    assert load_fashion_mnist("test", plain)[0].shape == (12, 28, 28)


def test_missing_fashion_mnist_says_how_to_fix(tmp_path: Path, no_system_data: None) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        load_fashion_mnist("train")
    msg = str(e.value)
    assert "apt-get install" in msg and "dataset-fashion-mnist" in msg and "--download" in msg
    # An explicit path that lacks the files is an error, not a fallback elsewhere.
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "empty")):
        find_fashion_mnist(tmp_path / "empty")


# ------------------------------------------------------------------------------------ synthetic
def test_synthetic_images_are_seeded_and_balanced() -> None:
    x1, y1 = synthetic_images(200, 5, size=16, seed=3)
    x2, y2 = synthetic_images(200, 5, size=16, seed=3)
    x3, _ = synthetic_images(200, 5, size=16, seed=4)
    assert x1.shape == (200, 16, 16) and x1.dtype == np.uint8 and y1.dtype == np.int64
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert np.bincount(y1).tolist() == [40] * 5
    with pytest.raises(ValueError):
        synthetic_images(10, 0)


@pytest.mark.parametrize(
    "arch, kwargs", [("cnn", {"width": 8, "depth": 2}), ("mlp", {"hidden": 64, "layers": 1})]
)
def test_synthetic_images_are_learnable_across_seeds(arch: str, kwargs: dict) -> None:
    """Trained on one seed, tested on another: the class patterns are the same, only noise differs."""
    num_classes = 10
    x, y = synthetic_images(1000, num_classes, size=16, seed=0)
    xt, yt = synthetic_images(500, num_classes, size=16, seed=1)
    to_t = lambda a: (torch.from_numpy(a).float() / 255.0 - 0.1)[:, None] / 0.2
    torch.manual_seed(0)
    model = build_model(arch, num_classes, 1, 16, **kwargs)
    fit_classifier(model, to_t(x), torch.from_numpy(y), epochs=6, lr=3e-3, batch_size=64, seed=0)
    assert evaluate(model, to_t(xt), torch.from_numpy(yt)) > 0.9


# ------------------------------------------------------------------------------------- training
def _small_task(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = synthetic_images(n, 4, size=12, seed=seed)
    return torch.from_numpy(x).float()[:, None] / 255.0, torch.from_numpy(y)


def test_fit_classifier_is_seeded() -> None:
    x, y = _small_task()
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)  # same initial weights
        m = fit_classifier(
            build_model("mlp", 4, 1, 12, hidden=16), x, y, epochs=2, lr=1e-2, batch_size=16, seed=seed
        )
        outs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_fit_classifier_soft_targets_and_class_weights() -> None:
    x, y = _small_task(300)
    xt, yt = _small_task(200, seed=5)
    soft = torch.nn.functional.one_hot(y, 4).float() * 0.9 + 0.025
    torch.manual_seed(0)
    m = fit_classifier(
        build_model("cnn", 4, 1, 12, width=8, depth=2),
        x,
        soft,
        epochs=5,
        lr=3e-3,
        batch_size=32,
        seed=0,
        weights=torch.ones(4),
    )
    assert evaluate(m, xt, yt) > 0.9
    # A zero weight on a class removes it from the loss: the model then never predicts it
    # more than it must (its accuracy on that class collapses while the others stay learnt).
    torch.manual_seed(0)
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    m0 = fit_classifier(
        build_model("mlp", 4, 1, 12, hidden=32), x, y, epochs=8, lr=1e-2, batch_size=32, seed=0, weights=w
    )
    pred = m0(xt).argmax(1)
    assert (pred[yt == 3] == 3).float().mean() < 0.5
    assert (pred[yt != 3] == yt[yt != 3]).float().mean() > 0.8


def test_fit_classifier_sgd_and_bad_input() -> None:
    x, y = _small_task()
    torch.manual_seed(0)
    m = fit_classifier(
        build_model("mlp", 4, 1, 12, hidden=32),
        x,
        y,
        epochs=6,
        lr=0.05,
        batch_size=16,
        seed=0,
        optimizer="sgd",
    )
    assert evaluate(m, x, y) > 0.9
    with pytest.raises(ValueError, match="optimizer"):
        fit_classifier(m, x, y, epochs=1, lr=0.1, batch_size=8, seed=0, optimizer="lbfgs")
    with pytest.raises(ValueError, match="equally many"):
        fit_classifier(m, x, y[:-1], epochs=1, lr=0.1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        fit_classifier(m, x[:, 0], y, epochs=1, lr=0.1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="equally many"):
        evaluate(m, x, y[:3])


# ---------------------------------------------------------------------------------- image files
def _png(path: Path, value: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (6, 5)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_list_images_any_depth_sorted(tmp_path: Path) -> None:
    _png(tmp_path / "b" / "deep" / "x.png", 1)
    _png(tmp_path / "a.PNG", 2)
    Image.new("RGB", (4, 4)).save(tmp_path / "c.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "d.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.PNG", "b/deep/x.png", "c.jpg", "d.bmp"]
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "missing")


def test_read_image_folder(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "1.png", 10)
    _png(tmp_path / "cat" / "sub" / "2.png", 20)
    _png(tmp_path / "dog" / "3.png", 30)
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "loose.png", 40)  # not in a class directory: ignored
    paths, labels, classes = read_image_folder(tmp_path)
    assert classes == ["cat", "dog"]
    assert [p.name for p in paths] == ["1.png", "2.png", "3.png"]
    assert labels.tolist() == [0, 0, 1] and labels.dtype == np.int64
    with pytest.raises(ValueError, match="no labelled images"):
        read_image_folder(tmp_path / "empty")


def test_decode_and_encode_images() -> None:
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    rgb = np.random.default_rng(0).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_png(gray)), gray)
    np.testing.assert_array_equal(decode_image(encode_png(gray[:, :, None])), gray)
    np.testing.assert_array_equal(decode_image(encode_png(rgb)), rgb)
    rgba = np.concatenate([rgb, np.full((4, 3, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_image(encode_png(rgba)), rgb)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    assert decode_image(buf.getvalue()).shape == (4, 3, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, format="PNG")
    assert decode_image(buf.getvalue()).shape == (4, 3, 3)


@pytest.mark.parametrize(
    "payload", [b"", b"not an image at all", encode_png(np.zeros((4, 4), np.uint8))[:30]]
)
def test_decode_image_refuses_garbage(payload: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="PNG"):
        decode_image(payload)


def _encoded(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_16_bit_grey_is_scaled_like_8_bit() -> None:
    """An 8-bit image saved as 16-bit (v * 257) decodes to v exactly; other values are scaled by
    255 / 65535 and rounded (the scaling the job's reader always used; serving used to clip)."""
    grey = np.random.default_rng(2).integers(0, 256, (7, 5), dtype=np.uint8)
    wide = Image.fromarray(grey.astype(np.uint16) * 257)
    assert Image.open(io.BytesIO(_encoded(wide))).mode.startswith("I")
    np.testing.assert_array_equal(decode_image(_encoded(wide)), grey)
    raw = np.array([[0, 128, 32768, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(decode_image(_encoded(Image.fromarray(raw))), [[0, 0, 128, 255]])


def test_palette_and_transparency_are_composited_on_black() -> None:
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (6, 4), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.ravel().tolist())
    np.testing.assert_array_equal(decode_image(_encoded(img)), palette[index])
    # a palette with a transparent entry: those pixels are black
    want = palette[index].copy()
    want[index == 5] = 0
    np.testing.assert_array_equal(decode_image(_encoded(img, transparency=5)), want)
    # RGBA and grey + alpha: round(c * alpha / 255); opaque pixels unchanged
    rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 4, 1), dtype=np.uint8)
    alpha[0, 0] = 255
    got = decode_image(encode_png(np.concatenate([rgb, alpha], axis=2)))
    np.testing.assert_array_equal(got, np.round(rgb * (alpha / 255.0)).astype(np.uint8))
    np.testing.assert_array_equal(got[0, 0], rgb[0, 0])
    grey = rgb[..., 0]
    la = Image.fromarray(np.stack([grey, alpha[..., 0]], axis=2), "LA")
    np.testing.assert_array_equal(decode_image(_encoded(la)), np.round(grey * (alpha[..., 0] / 255.0)))


def test_one_bit_cmyk_and_grey_jpeg() -> None:
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(decode_image(_encoded(Image.fromarray(bits))), bits * 255)
    red = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # cyan 0, magenta and yellow full: red
    got = decode_image(_encoded(red, "JPEG", quality=100))
    assert got.shape == (8, 8, 3)
    np.testing.assert_allclose(got.reshape(-1, 3).mean(0), [255, 0, 0], atol=3)
    grey = np.full((8, 8), 77, np.uint8)
    got = decode_image(_encoded(Image.fromarray(grey), "JPEG", quality=100))
    assert got.shape == (8, 8) and np.abs(got.astype(int) - 77).max() <= 1


@pytest.mark.parametrize(
    "orientation,upright",
    [
        (1, lambda a: a),
        (2, lambda a: a[:, ::-1]),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # "rotate 90 degrees clockwise to display"
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_exif_orientation_is_applied(orientation: int, upright) -> None:
    stored = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encoded(Image.fromarray(stored), exif=exif.tobytes())
    np.testing.assert_array_equal(decode_image(data), upright(stored))


def test_the_encodings_of_one_grey_image_decode_alike() -> None:
    """What the job's readers (read_image for folders, decode_image for Parquet cells) see for one grey
    image sent as 8-bit, 16-bit, palette and opaque RGBA PNG: the same grey values."""
    grey = np.random.default_rng(4).integers(0, 256, (9, 7), dtype=np.uint8)
    as_rgb = np.repeat(grey[..., None], 3, axis=2)
    variants = {
        "8-bit": (encode_png(grey), grey),
        "16-bit": (_encoded(Image.fromarray(grey.astype(np.uint16) * 257)), grey),
        "palette": (_encoded(Image.fromarray(grey).convert("P")), as_rgb),
        "rgba": (encode_png(np.concatenate([as_rgb, np.full_like(grey, 255)[..., None]], axis=2)), as_rgb),
    }
    for name, (payload, want) in variants.items():
        np.testing.assert_array_equal(decode_image(payload), want, err_msg=name)


@pytest.mark.parametrize(
    "payload,formats,code",
    [
        (b"", data.DECODABLE_FORMATS, "empty"),
        (b"not an image", data.DECODABLE_FORMATS, "not_an_image"),
        (_encoded(Image.new("L", (4, 4)), "GIF"), data.DECODABLE_FORMATS, "unsupported_format"),
        (_encoded(Image.new("L", (4, 4)), "BMP"), ("PNG", "JPEG"), "unsupported_format"),
        (_encoded(Image.new("L", (4, 4)), "TIFF"), data.DECODABLE_FORMATS, "unsupported_format"),
        (
            encode_png(np.arange(1600).astype(np.uint8).reshape(40, 40))[:-40],
            data.DECODABLE_FORMATS,
            "corrupt",
        ),
    ],
    ids=["empty", "text", "gif", "bmp-not-allowed", "tiff", "truncated-png"],
)
def test_decode_image_names_the_reason(payload: bytes, formats, code: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(payload, formats=formats)
    assert info.value.code == code, info.value


def test_decode_image_checks_the_size_before_decoding() -> None:
    png = encode_png(np.zeros((30, 40), np.uint8))
    assert decode_image(png, max_pixels=1200).shape == (30, 40)
    with pytest.raises(ImageDecodeError, match="1201 pixels|1200 pixels") as info:
        decode_image(png, max_pixels=1199)
    assert info.value.code == "too_large"
    assert decode_image(_encoded(Image.new("L", (3, 3)), "BMP")).shape == (3, 3)  # BMP: the job takes it


def test_encode_png_refuses_bad_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((4, 4, 2), np.uint8))
