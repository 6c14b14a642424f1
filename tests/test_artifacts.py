"""The model format: exact round trips, every refusal, and the input contract (preprocess)."""

from __future__ import annotations

import copy
import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import zoo.artifacts as artifacts
from zoo.architectures import build_model
from zoo.artifacts import (
    SPEC_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    InputSpec,
    ModelSpec,
    check_artifact,
    load_model,
    preprocess,
    read_spec,
    save_model,
)

GRAY = InputSpec(channels=1, height=28, width=28, mean=(0.5,), std=(0.25,))
RGB = InputSpec(channels=3, height=16, width=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def _spec(arch: str = "cnn", classes=("Cat", "dog", "bird"), inp: InputSpec = GRAY, **kw) -> ModelSpec:
    return ModelSpec(arch=arch, classes=list(classes), input=inp, **kw)


def _model(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        spec.arch,
        len(spec.classes),
        spec.input.channels,
        (spec.input.height, spec.input.width),
        **spec.arch_kwargs,
    )


def _train_a_little(model: torch.nn.Module, spec: ModelSpec) -> None:
    """Move weights and BatchNorm statistics away from their initial values."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(4, spec.input.channels, spec.input.height, spec.input.width)
    loss = model(x).square().mean()
    loss.backward()
    opt.step()


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module, ModelSpec]:
    spec = _spec(arch_kwargs={"width": 4, "depth": 2}, metadata={"source": "test", "metrics": {"acc": 0.5}})
    model = _model(spec)
    _train_a_little(model, spec)
    return save_model(model, spec, tmp_path / "model"), model, spec


# ---------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize(
    "arch, inp, kwargs",
    [
        ("cnn", GRAY, {"width": 8, "depth": 3}),
        ("mlp", RGB, {"hidden": 32, "layers": 1}),
        ("squeezenet", RGB, {}),
        ("mobilenet_v3_small", GRAY, {}),
    ],
)
def test_round_trip_preserves_outputs_exactly(
    tmp_path: Path, arch: str, inp: InputSpec, kwargs: dict
) -> None:
    spec = _spec(arch, inp=inp, arch_kwargs=kwargs, metadata={"source": "unit", "created": "2026-01-01"})
    model = _model(spec)
    _train_a_little(model, spec)
    directory = save_model(model, spec, tmp_path / "m")
    assert directory == tmp_path / "m"
    assert sorted(p.name for p in directory.iterdir()) == [SPEC_FILE, WEIGHTS_FILE]

    loaded, loaded_spec = load_model(directory)
    assert loaded_spec == spec
    assert not loaded.training
    x = torch.randn(3, inp.channels, inp.height, inp.width)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_spec_json_is_the_documented_format(saved) -> None:
    directory, _, spec = saved
    d = json.loads((directory / SPEC_FILE).read_text())
    assert d["arch"] == "cnn"
    assert d["arch_kwargs"] == {"width": 4, "depth": 2}
    assert d["input"] == {"channels": 1, "height": 28, "width": 28, "mean": [0.5], "std": [0.25]}
    assert d["classes"] == ["Cat", "dog", "bird"]
    assert d["metadata"] == {"source": "test", "metrics": {"acc": 0.5}}
    assert ModelSpec.from_dict(d) == spec == read_spec(directory)


def test_check_artifact_returns_the_spec(saved) -> None:
    directory, _, spec = saved
    assert check_artifact(directory) == spec
    assert check_artifact(str(directory)) == spec


def test_load_on_auto_device(saved) -> None:
    directory, _, _ = saved
    model, _ = load_model(directory, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(model.parameters()).device.type == expected


def test_save_overwrites_and_keeps_other_files(saved) -> None:
    directory, _, spec = saved
    (directory / "README.txt").write_text("keep me")
    other = _model(spec, seed=1)
    save_model(other, spec, directory)
    loaded, _ = load_model(directory)
    other.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), other(x))
    assert (directory / "README.txt").read_text() == "keep me"
    # no temporary directories left next to it
    assert sorted(p.name for p in directory.parent.iterdir()) == ["model"]


def test_save_refuses_a_model_that_does_not_match_its_spec(tmp_path: Path) -> None:
    spec = _spec(arch_kwargs={"width": 4, "depth": 2})
    wrong = build_model("cnn", 3, 1, 28, width=8, depth=2)
    with pytest.raises(ArtifactError, match="shape mismatches"):
        save_model(wrong, spec, tmp_path / "m")
    with pytest.raises(ArtifactError, match="missing weights"):
        save_model(build_model("mlp", 3, 1, 28), spec, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []


def test_spec_refuses_non_json_metadata_and_kwargs() -> None:
    with pytest.raises(ArtifactError, match="metadata must be JSON"):
        _spec(metadata={"when": object()})
    with pytest.raises(ArtifactError, match="arch_kwargs must be JSON"):
        _spec(arch_kwargs={"width": np.int64(4)})


def test_nan_metrics_round_trip(tmp_path: Path) -> None:
    """A NaN metric must not make the model unsaveable."""
    spec = _spec("mlp", arch_kwargs={"hidden": 4, "layers": 1}, metadata={"metrics": {"loss": float("nan")}})
    save_model(_model(spec), spec, tmp_path / "m")
    assert math.isnan(read_spec(tmp_path / "m").metadata["metrics"]["loss"])


def test_numpy_numbers_are_accepted_in_input_spec() -> None:
    inp = InputSpec(np.int64(1), np.int64(28), 28, (np.float32(0.5),), [np.float64(0.25)])
    assert inp == GRAY
    assert type(inp.channels) is int and type(inp.height) is int
    assert json.dumps(inp.to_dict())


# ---------------------------------------------------------------------------------------------------
# refusals


def _edit_spec(directory: Path, edit) -> None:
    d = json.loads((directory / SPEC_FILE).read_text())
    edit(d)
    (directory / SPEC_FILE).write_text(json.dumps(d))


def test_invalid_json_is_refused(saved) -> None:
    directory, _, _ = saved
    (directory / SPEC_FILE).write_text('{"arch": "cnn", ')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        check_artifact(directory)
    (directory / SPEC_FILE).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        check_artifact(directory)


GOOD = {
    "arch": "cnn",
    "arch_kwargs": {},
    "input": {"channels": 3, "height": 32, "width": 32, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
    "classes": ["a", "b"],
    "metadata": {},
}


def _without(key: str):
    return lambda d: d.pop(key)


def _set(path: str, value):
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        (_without("arch"), r"required field\(s\) \['arch'\]"),
        (_without("classes"), "classes"),
        (_without("input"), "input"),
        (_set("extra", 1), r"unknown field\(s\) \['extra'\].*metadata"),
        (_set("format_version", 99), "format_version 99"),
        (_set("arch", 3), "arch must be a non-empty string"),
        (_set("arch", ""), "arch must be a non-empty string"),
        (_set("classes", []), "classes must be a non-empty list"),
        (_set("classes", "ab"), "classes must be a non-empty list"),
        (_set("classes", ["a", 1]), "class 1 is not a string"),
        (_set("classes", ["a", "  "]), "normalises to an empty name"),
        (_set("classes", ["Ankle_boot", "ankle boot"]), "'Ankle_boot' and 'ankle boot' are the same"),
        (_set("input", [3, 32, 32]), "input must be an object"),
        (_set("input.channels", 2), "channels must be 1 or 3"),
        (_set("input.channels", "3"), "channels must be 1 or 3"),
        (_set("input.channels", True), "channels must be 1 or 3"),
        (_set("input.height", 0), "height must be a positive integer"),
        (_set("input.width", 32.0), "width must be a positive integer"),
        (_set("input.mean", [0.5]), "mean has 1 values for 3 channel"),
        (_set("input.std", [0.2, 0.2]), "std has 2 values for 3 channel"),
        (_set("input.std", [0.2, 0.0, 0.2]), "std must be > 0"),
        (_set("input.std", [0.2, -1, 0.2]), "std must be > 0"),
        (_set("input.mean", ["a", 0, 0]), "mean must be a list of finite numbers"),
        (_set("input.extra", 1), r"unknown keys \['extra'\]"),
        (_set("arch_kwargs", [1]), "arch_kwargs must be an object"),
        (_set("metadata", "x"), "metadata must be an object"),
    ],
)
def test_bad_spec_fields_are_refused(edit, match: str) -> None:
    d = copy.deepcopy(GOOD)
    ModelSpec.from_dict(d)  # the unedited spec is valid
    edit(d)
    with pytest.raises(ArtifactError, match=match):
        ModelSpec.from_dict(d)


def test_bad_spec_in_a_directory_names_the_file(saved) -> None:
    directory, _, _ = saved
    _edit_spec(directory, _set("input.channels", 2))
    with pytest.raises(ArtifactError, match=rf"{SPEC_FILE}.*channels must be 1 or 3"):
        load_model(directory)


def test_unknown_arch_is_refused(saved) -> None:
    directory, _, _ = saved
    _edit_spec(directory, _set("arch", "os.system"))
    with pytest.raises(ArtifactError, match="'os.system' is not allow-listed.*resnet18"):
        check_artifact(directory)


def test_bad_arch_kwargs_are_refused(saved) -> None:
    directory, _, _ = saved
    _edit_spec(directory, _set("arch_kwargs", {"width": 4, "depth": 2, "evil": 1}))
    with pytest.raises(ArtifactError, match="cannot build 'cnn'.*evil"):
        check_artifact(directory)


def test_wrong_weight_names_are_refused(saved) -> None:
    directory, _, _ = saved
    tensors = load_file(directory / WEIGHTS_FILE)
    tensors["fc.kernel"] = tensors.pop("fc.weight")
    tensors["extra.bias"] = torch.zeros(3)
    save_file(tensors, directory / WEIGHTS_FILE)
    with pytest.raises(ArtifactError) as err:
        check_artifact(directory)
    msg = str(err.value)
    assert "missing weights: fc.weight" in msg
    assert "unexpected weights: extra.bias, fc.kernel" in msg


def test_wrong_shapes_are_refused(saved) -> None:
    directory, _, _ = saved
    tensors = load_file(directory / WEIGHTS_FILE)
    tensors["fc.bias"] = torch.zeros(5)
    save_file(tensors, directory / WEIGHTS_FILE)
    with pytest.raises(ArtifactError, match=r"shape mismatches.*fc.bias: \(5,\) vs \(3,\)"):
        check_artifact(directory)


def test_spec_edited_to_other_arch_kwargs_is_refused(saved) -> None:
    directory, _, _ = saved
    _edit_spec(directory, _set("arch_kwargs", {"width": 8, "depth": 2}))
    with pytest.raises(ArtifactError, match="shape mismatches"):
        check_artifact(directory)


def test_classes_not_matching_the_output_size_are_refused(saved) -> None:
    directory, _, _ = saved
    _edit_spec(directory, _set("classes", ["Cat", "dog", "bird", "fish"]))
    with pytest.raises(ArtifactError, match=r"fc.weight: \(3, 8\) vs \(4, 8\)"):
        check_artifact(directory)


def test_output_size_is_checked_by_a_forward_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder that ignored num_classes would give weights that match but the wrong output size:
    the dry forward pass catches it."""
    real = artifacts.build_model
    monkeypatch.setattr(artifacts, "build_model", lambda arch, n, *a, **k: real(arch, 2, *a, **k))
    spec = _spec("mlp", arch_kwargs={"hidden": 8, "layers": 1})
    model = real("mlp", 2, 1, 28, hidden=8, layers=1)
    with pytest.raises(ArtifactError, match=r"outputs \(1, 2\).*3 classes"):
        save_model(model, spec, tmp_path / "m")
    # the same check on load, for a directory written by something else
    monkeypatch.setattr(artifacts, "_check_output", lambda *a: None)
    save_model(model, spec, tmp_path / "m")
    monkeypatch.undo()
    monkeypatch.setattr(artifacts, "build_model", lambda arch, n, *a, **k: real(arch, 2, *a, **k))
    with pytest.raises(ArtifactError, match=r"outputs \(1, 2\).*3 classes"):
        load_model(tmp_path / "m")


def test_non_finite_weights_are_refused(saved) -> None:
    directory, _, _ = saved
    tensors = load_file(directory / WEIGHTS_FILE)
    tensors["fc.weight"][0, 0] = float("nan")
    save_file(tensors, directory / WEIGHTS_FILE)
    with pytest.raises(ArtifactError, match=r"non-finite.*fc.weight"):
        check_artifact(directory)


class _Boom:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


def test_torch_save_pickle_is_refused_without_unpickling(saved, tmp_path: Path) -> None:
    directory, model, _ = saved
    marker = tmp_path / "marker"
    torch.save({"state": model.state_dict(), "boom": _Boom(marker)}, directory / WEIGHTS_FILE)
    with pytest.raises(ArtifactError, match="pickle / torch.save file, not safetensors"):
        load_model(directory)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_pickle_is_refused_without_unpickling(saved, tmp_path: Path, protocol: int) -> None:
    directory, _, _ = saved
    marker = tmp_path / "marker"
    (directory / WEIGHTS_FILE).write_bytes(pickle.dumps(_Boom(marker), protocol=protocol))
    with pytest.raises(ArtifactError, match="not safetensors|not a valid safetensors"):
        check_artifact(directory)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 7, 100, -10])
def test_truncated_weights_are_refused(saved, keep: int) -> None:
    directory, _, _ = saved
    data = (directory / WEIGHTS_FILE).read_bytes()
    (directory / WEIGHTS_FILE).write_bytes(data[:keep])
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        check_artifact(directory)


def test_random_bytes_are_refused(saved) -> None:
    directory, _, _ = saved
    (directory / WEIGHTS_FILE).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ArtifactError, match="safetensors"):
        check_artifact(directory)


def test_missing_files_are_refused(saved, tmp_path: Path) -> None:
    directory, _, _ = saved
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (directory / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"{WEIGHTS_FILE} not found"):
        check_artifact(directory)
    (directory / SPEC_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"{SPEC_FILE} not found"):
        check_artifact(directory)


def test_artifact_error_is_a_value_error() -> None:
    assert issubclass(ArtifactError, ValueError)


# ---------------------------------------------------------------------------------------------------
# preprocess


def _identity_spec(channels: int, h: int, w: int) -> InputSpec:
    return InputSpec(channels, h, w, (0.0,) * channels, (1.0,) * channels)


@pytest.mark.parametrize(
    "shape",
    [(4, 28, 28), (4, 28, 28, 1), (3, 30, 30, 2), (4, 32, 32, 3), (4, 20, 36, 4), (1, 8, 8)],
)
@pytest.mark.parametrize("spec", [GRAY, RGB])
def test_preprocess_shapes(shape: tuple, spec: InputSpec) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    x = preprocess(images, spec)
    assert x.shape == (shape[0], spec.channels, spec.height, spec.width)
    assert x.dtype == torch.float32


def test_preprocess_same_size_is_exact_scaling_and_normalisation() -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    x = preprocess(images, RGB)
    expected = (
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(RGB.mean).view(1, 3, 1, 1)
    ) / (torch.tensor(RGB.std).view(1, 3, 1, 1))
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_preprocess_gray_to_rgb_repeats() -> None:
    images = np.random.default_rng(2).integers(0, 256, size=(2, 16, 16), dtype=np.uint8)
    x = preprocess(images, _identity_spec(3, 16, 16))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images).float() / 255)


def test_preprocess_rgb_to_gray_uses_luma() -> None:
    pixel = np.array([200, 100, 50], dtype=np.uint8)
    images = np.broadcast_to(pixel, (2, 5, 5, 3)).copy()
    x = preprocess(images, _identity_spec(1, 5, 5))
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    torch.testing.assert_close(x, torch.full((2, 1, 5, 5), expected), rtol=0, atol=1e-6)
    # and the same as PIL's convert("L") up to its integer rounding
    pil = np.asarray(Image.fromarray(images[0]).convert("L"), dtype=np.float32) / 255
    assert np.abs(x[0, 0].numpy() - pil).max() <= 1 / 255


def test_preprocess_rgba_drops_alpha() -> None:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, size=(2, 16, 16, 4), dtype=np.uint8)
    assert torch.equal(preprocess(rgba, RGB), preprocess(np.ascontiguousarray(rgba[..., :3]), RGB))
    assert torch.equal(preprocess(rgba, GRAY), preprocess(np.ascontiguousarray(rgba[..., :3]), GRAY))


def test_preprocess_gray_alpha_drops_alpha() -> None:
    la = np.random.default_rng(8).integers(0, 256, size=(2, 16, 16, 2), dtype=np.uint8)
    assert torch.equal(preprocess(la, RGB), preprocess(np.ascontiguousarray(la[..., 0]), RGB))


def test_preprocess_read_only_arrays_do_not_warn() -> None:
    images = np.zeros((2, 28, 28), np.uint8)
    images.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert preprocess(images, GRAY).shape == (2, 1, 28, 28)


def test_preprocess_normalises_constant_images() -> None:
    images = np.full((2, 40, 30), 153, dtype=np.uint8)  # resized: a constant stays constant
    x = preprocess(images, GRAY)
    torch.testing.assert_close(x, torch.full((2, 1, 28, 28), (153 / 255 - 0.5) / 0.25), rtol=0, atol=1e-5)


def test_preprocess_downscaling_is_antialiased_and_close_to_pil() -> None:
    checker = (np.indices((36, 36)).sum(axis=0) % 2 * 255).astype(np.uint8)
    x = preprocess(checker[None], _identity_spec(1, 12, 12))
    # a 1-pixel checkerboard shrunk 3x must average to grey; plain bilinear sampling gives 0s and 1s
    torch.testing.assert_close(x, torch.full_like(x, 0.5), rtol=0, atol=0.01)
    image = np.random.default_rng(4).integers(0, 256, size=(37, 45), dtype=np.uint8)
    ours = preprocess([image], _identity_spec(1, 20, 24))[0, 0].numpy() * 255
    pil = np.asarray(Image.fromarray(image).resize((24, 20), Image.BILINEAR), dtype=np.float32)
    assert np.abs(ours - pil).mean() < 1.0  # PIL rounds to uint8; the kernels agree otherwise


def test_preprocess_upscales() -> None:
    image = np.random.default_rng(5).integers(0, 256, size=(1, 8, 8), dtype=np.uint8)
    x = preprocess(image, _identity_spec(1, 28, 28))
    assert x.shape == (1, 1, 28, 28)
    assert x.min() >= 0 and x.max() <= 1


def test_preprocess_list_of_mixed_sizes_keeps_order() -> None:
    rng = np.random.default_rng(6)
    images = [
        rng.integers(0, 256, size=(28, 28), dtype=np.uint8),
        rng.integers(0, 256, size=(40, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(28, 28, 1), dtype=np.uint8),
        rng.integers(0, 256, size=(10, 12, 4), dtype=np.uint8),
    ]
    x = preprocess(images, RGB)
    assert x.shape == (4, 3, 16, 16)
    for i, image in enumerate(images):
        torch.testing.assert_close(x[i : i + 1], preprocess(image[None], RGB), rtol=0, atol=1e-6)


def test_preprocess_accepts_model_spec_and_tensors() -> None:
    images = np.random.default_rng(7).integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    spec = _spec()
    assert torch.equal(preprocess(images, spec), preprocess(images, spec.input))
    assert torch.equal(preprocess(torch.from_numpy(images), GRAY), preprocess(images, GRAY))


def test_preprocess_empty_batches() -> None:
    assert preprocess([], RGB).shape == (0, 3, 16, 16)
    assert preprocess(np.zeros((0, 28, 28), np.uint8), GRAY).shape == (0, 1, 28, 28)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((2, 28, 28), np.float32), "uint8"),
        (np.zeros((28, 28), np.uint8), "one image"),
        (np.zeros((2, 28, 28, 5), np.uint8), r"\[B, H, W, C\]"),
        (np.zeros((2, 1, 28, 28, 1), np.uint8), r"\[B, H, W, C\]"),
        ([np.zeros((28, 28, 5), np.uint8)], "image 0"),
        ([np.zeros(28, np.uint8)], "image 0"),
        ([[1, 2, 3]], "uint8 numpy arrays"),
        ("image.png", "list of uint8 arrays"),
    ],
)
def test_preprocess_refuses_bad_input(images, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        preprocess(images, GRAY)


# ---------------------------------------------------------------------------------------------------
# task: multiclass (default) or multilabel, with per-class thresholds

# spec.json exactly as save_model wrote it before `task` existed (main at 44baf95): it must keep loading
# and re-save byte for byte.
OLD_SPEC_JSON = (
    '{\n  "format_version": 1,\n  "arch": "cnn",\n  "arch_kwargs": {\n    "width": 4,\n    "depth": 2\n  },\n'
    '  "input": {\n    "channels": 1,\n    "height": 28,\n    "width": 28,\n    "mean": [\n      0.2860406\n'
    '    ],\n    "std": [\n      0.3530242\n    ]\n  },\n  "classes": [\n    "T-shirt/top",\n    "Trouser",\n'
    '    "Bag"\n  ],\n  "metadata": {\n    "source": "demo:fmnist-demo",\n    "metrics": {\n'
    '      "accuracy": 0.9549999833106995,\n      "nan": NaN\n    },\n    "created": "2026-12-02T02:15:31Z"\n'
    "  }\n}\n"
)


def test_old_spec_json_loads_as_multiclass_and_resaves_byte_identically(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / SPEC_FILE).write_text(OLD_SPEC_JSON, encoding="utf-8")
    spec = read_spec(old)
    assert spec.task == "multiclass" and spec.thresholds is None and not spec.multilabel
    torch.manual_seed(0)
    model = _model(spec)
    save_file(dict(model.state_dict()), str(old / WEIGHTS_FILE))
    loaded, loaded_spec = load_model(old)
    assert loaded_spec == spec
    new = save_model(loaded, loaded_spec, tmp_path / "new")
    assert (new / SPEC_FILE).read_text(encoding="utf-8") == OLD_SPEC_JSON


def test_multilabel_spec_round_trip(tmp_path: Path) -> None:
    spec = _spec(arch_kwargs={"width": 4, "depth": 2}, task="multilabel")
    assert spec.multilabel and spec.thresholds == [0.5, 0.5, 0.5]
    assert spec.to_dict()["task"] == "multilabel" and "thresholds" not in spec.to_dict()  # defaults left out
    model = _model(spec)
    _train_a_little(model, spec)
    loaded, loaded_spec = load_model(save_model(model, spec, tmp_path / "ml"))
    assert loaded_spec == spec
    custom = _spec(arch_kwargs={"width": 4, "depth": 2}, task="multilabel", thresholds=[0.3, 0.5, 0.9])
    d = json.loads((save_model(model, custom, tmp_path / "ml2") / SPEC_FILE).read_text())
    assert d["task"] == "multilabel" and d["thresholds"] == [0.3, 0.5, 0.9]
    assert list(d)[-1] == "metadata"
    assert read_spec(tmp_path / "ml2") == custom and ModelSpec.from_dict(d).thresholds == [0.3, 0.5, 0.9]
    # a multi-class spec writes neither field
    assert not {"task", "thresholds"} & set(_spec().to_dict())


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("task", "regression"), "task must be one of"),
        (_set("task", None), "task must be one of"),
        (_set("thresholds", [0.5, 0.5]), "thresholds apply to multi-label models only"),
        (lambda d: d.update(task="multilabel", thresholds=[0.5]), "1 values for 2 classes"),
        (lambda d: d.update(task="multilabel", thresholds=[0.5, 1.0]), r"strictly between 0 and 1"),
        (lambda d: d.update(task="multilabel", thresholds=[0.0, 0.5]), r"strictly between 0 and 1"),
        (lambda d: d.update(task="multilabel", thresholds=[0.5, float("nan")]), r"strictly between 0 and 1"),
        (lambda d: d.update(task="multilabel", thresholds=[0.5, True]), r"strictly between 0 and 1"),
        (lambda d: d.update(task="multilabel", thresholds="0.5"), "one per class"),
    ],
)
def test_bad_task_or_thresholds_are_refused(edit, match: str) -> None:
    d = copy.deepcopy(GOOD)
    edit(d)
    with pytest.raises(ArtifactError, match=match):
        ModelSpec.from_dict(d)
