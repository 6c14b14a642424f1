"""The architecture allow-list: every builder runs on small grey and colour images, never downloads."""

from __future__ import annotations

import pytest
import torch

from zoo.architectures import ARCHITECTURES, MIN_IMAGE_SIZE, arch_kwargs_of, build_model

EXPECTED = (
    "resnet18",
    "resnet34",
    "vgg11_bn",
    "vgg16_bn",
    "alexnet",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "shufflenet_v2",
    "efficientnet_b0",
    "squeezenet",
    "cnn",
    "mlp",
)
# the heaviest builds on a loaded 2-core machine; they still run in CI
HEAVY = {"resnet34", "vgg16_bn", "efficientnet_b0", "mobilenet_v3_large"}


def _archs() -> list:
    return [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in EXPECTED]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch pretrained weights fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a builder tried to download weights: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _run(model: torch.nn.Module, channels: int, size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, channels, *size))


def test_allow_list_is_exactly_the_documented_names() -> None:
    assert tuple(ARCHITECTURES) == EXPECTED
    with pytest.raises(TypeError):
        ARCHITECTURES["evil"] = lambda *a: None  # type: ignore[index]


@pytest.mark.parametrize("arch", _archs())
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_every_arch_builds_and_outputs_num_classes(arch: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3, in_channels=channels, image_size=size)
    out = _run(model, channels, (size, size))
    assert out.shape == (2, 3)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # the two samples get different logits: the input reaches the output (torchvision's MobileNetV3
    # init gives ~1e-10 logits in eval mode before training, so compare exactly)
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("arch", _archs())
def test_every_arch_runs_at_the_smallest_non_square_size(arch: str) -> None:
    size = (MIN_IMAGE_SIZE, MIN_IMAGE_SIZE + 4)
    model = build_model(arch, num_classes=5, in_channels=1, image_size=size)
    assert _run(model, 1, size).shape == (2, 5)


@pytest.mark.parametrize("arch", ["resnet18", "squeezenet", "mobilenet_v3_small", "alexnet"])
def test_large_inputs_keep_the_torchvision_layout(arch: str) -> None:
    model = build_model(arch, num_classes=4, in_channels=1, image_size=128)
    assert _run(model, 1, (128, 128), batch=1).shape == (1, 4)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    assert first_conv.stride[0] >= 2  # ImageNet stem downsamples at large sizes


def test_small_inputs_keep_resolution_in_the_stem() -> None:
    model = build_model("resnet18", num_classes=2, in_channels=1, image_size=28)
    assert model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_same_seed_same_weights_and_names() -> None:
    torch.manual_seed(7)
    a = build_model("cnn", 3, 1, 28).state_dict()
    torch.manual_seed(7)
    b = build_model("cnn", 3, 1, 28).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cnn_kwargs_change_the_network() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())
    base = build_model("cnn", 3, 1, 28)
    wide = build_model("cnn", 3, 1, 28, width=32)
    deep = build_model("cnn", 3, 1, 28, depth=5)
    assert count(wide) > count(base) and count(deep) > count(base)
    convs = [m for m in deep.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and convs[0].out_channels == 16
    assert _run(deep, 1, (28, 28)).shape == (2, 3)


def test_mlp_kwargs_change_the_network() -> None:
    linear = build_model("mlp", 10, 1, 28, layers=0)
    layers = [m for m in linear.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(784, 10)]
    deep = build_model("mlp", 10, 3, 32, hidden=64, layers=3)
    layers = [m for m in deep.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(3072, 64), (64, 64), (64, 64), (64, 10)]


def test_cnn_trains() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 2, 1, 8, width=4, depth=2)
    x = torch.randn(8, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss0 = None
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss0 = loss.item() if loss0 is None else loss0
    assert loss.item() < loss0


def test_arch_kwargs_of_lists_defaults() -> None:
    assert arch_kwargs_of("cnn") == {"width": 16, "depth": 3}
    assert arch_kwargs_of("mlp") == {"hidden": 256, "layers": 2}
    assert arch_kwargs_of("resnet18") == {}


def test_unknown_arch_lists_the_allowed_names() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'.*resnet18.*mlp"):
        build_model("resnet50", 3)


@pytest.mark.parametrize(
    "arch, kwargs, match",
    [
        ("cnn", {"widht": 8}, r"unknown keyword arguments \['widht'\].*depth.*width"),
        ("resnet18", {"pretrained": True}, r"\['pretrained'\].*accepts none"),
        ("cnn", {"width": 0}, "width must be an integer >= 1"),
        ("cnn", {"depth": 2.5}, "depth must be an integer"),
        ("mlp", {"layers": -1}, "layers must be an integer >= 0"),
        ("vgg11_bn", {"dropout": 1.5}, "dropout"),
        ("shufflenet_v2", {"width_mult": 0.75}, "width_mult"),
    ],
)
def test_bad_kwargs_are_refused(arch: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(arch, 3, 1, 28, **kwargs)


@pytest.mark.parametrize(
    "args, match",
    [
        (("cnn", 0), "num_classes"),
        (("cnn", 3, 0), "in_channels"),
        (("cnn", 3, 1, MIN_IMAGE_SIZE - 1), "image sides"),
        (("cnn", 3, 1, (28,)), "image_size"),
        (("cnn", 3, 1, "28"), "image_size"),
    ],
)
def test_bad_sizes_are_refused(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(*args)
