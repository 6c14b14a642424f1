"""split_head: every allow-listed architecture splits into penultimate features and its last Linear,
head(embed(x)) == model(x), sharing the model's parameters."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from zoo.architectures import ARCHITECTURES, SmallCNN, build_model, feature_dim, split_head
from zoo.artifacts import InputSpec, ModelSpec, load_model, save_model

NUM_CLASSES = 5
# The width of the layer before the last Linear, read off each builder at small sizes (not a result:
# a split that ends one layer early or late gets another width).
SMALL_DIM = {
    "resnet18": 512,
    "resnet34": 512,
    "vgg11_bn": 512,  # the global-pool 512-512 head
    "vgg16_bn": 512,
    "alexnet": 1024,  # the width-1024 MLP head
    "mobilenet_v3_small": 1024,
    "mobilenet_v3_large": 1280,
    "shufflenet_v2": 1024,
    "efficientnet_b0": 1280,
    "squeezenet": 512,
    "cnn": 64,  # width 16, depth 3: 16 * 2**2 channels
    "mlp": 256,
}
# torchvision layouts at large sizes that build and run in well under a second each
CHEAP_LARGE = [
    ("resnet18", 112, 512),
    ("alexnet", 112, 4096),
    ("mobilenet_v3_small", 112, 1024),
    ("efficientnet_b0", 112, 1280),
    ("shufflenet_v2", 224, 1024),
    ("squeezenet", 224, 512),
    ("cnn", 224, 64),
]


def _build(arch: str, channels: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, NUM_CLASSES, channels, size).eval()


def _assert_split_is_exact(model: nn.Module, x: torch.Tensor, dim: int) -> None:
    embed, head = split_head(model)
    with torch.no_grad():
        logits = model(x)
        features = embed(x)
        again = head(features)
    assert features.shape == (x.shape[0], dim)
    assert feature_dim(model) == head.in_features == dim
    assert isinstance(head, nn.Linear) and head.weight.shape == (NUM_CLASSES, dim)
    # torchvision's MobileNetV3 and EfficientNet give ~1e-10 logits before training: compare relative
    # to the logits' own scale, which must not be zero
    scale = logits.abs().max()
    assert scale > 0
    torch.testing.assert_close(again, logits, rtol=1e-4, atol=1e-5 * scale.item())


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_head_of_features_is_the_model_at_small_sizes(arch: str, channels: int, size: int) -> None:
    model = _build(arch, channels, size)
    _assert_split_is_exact(model, torch.randn(2, channels, size, size), SMALL_DIM[arch])


@pytest.mark.parametrize("arch, size, dim", CHEAP_LARGE)
def test_head_of_features_is_the_model_at_large_sizes(arch: str, size: int, dim: int) -> None:
    model = _build(arch, 3, size)
    _assert_split_is_exact(model, torch.randn(1, 3, size, size), dim)


@pytest.mark.parametrize("arch, dim", [("vgg11_bn", 4096), ("vgg16_bn", 4096), ("resnet34", 512)])
def test_heavy_large_layouts_split_where_the_last_linear_begins(arch: str, dim: int) -> None:
    # torchvision's 224-px VGG allocates ~130M weights: build on the meta device (no memory, no
    # forward) and check the structure; the same splitter runs AlexNet's forward at large sizes above.
    with torch.device("meta"):
        model = build_model(arch, NUM_CLASSES, 3, 224)
    embed, head = split_head(model)
    last = model.fc if arch == "resnet34" else model.classifier[-1]
    assert head is last and feature_dim(model) == dim
    assert not any(p is head.weight for p in embed.parameters())


def _ids(tensors: object) -> list[int]:
    return [id(t) for t in tensors]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_split_shares_the_models_parameters(arch: str) -> None:
    model = _build(arch, 1, 8)  # the smallest size every builder accepts: backward is cheap
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    embed, head = split_head(model)

    # embed and head partition the model's parameters and buffers: the same tensors, no copies
    own, theirs = _ids(model.parameters()), _ids(embed.parameters()) + _ids(head.parameters())
    assert sorted(own) == sorted(theirs)
    assert sorted(_ids(model.buffers())) == sorted(_ids(embed.buffers()) + _ids(head.buffers()))
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before

    # so a gradient step on embed and head trains the model
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, NUM_CLASSES - 1])
    with torch.no_grad():
        old = model(x)
    optimizer = torch.optim.SGD([*embed.parameters(), *head.parameters()], lr=0.1)
    nn.functional.cross_entropy(head(embed(x)), y).backward()
    assert all(p.grad is not None for p in head.parameters())
    optimizer.step()
    with torch.no_grad():
        assert not torch.equal(model(x), old)


def test_squeezenet_head_is_a_view_of_the_final_conv() -> None:
    model = _build("squeezenet", 3, 32)
    _, head = split_head(model)
    conv = model.classifier[1]
    assert head.weight.data_ptr() == conv.weight.data_ptr()
    assert head.bias is conv.bias
    with torch.no_grad():
        conv.weight.add_(1.0)
    torch.testing.assert_close(head.weight, conv.weight.flatten(1))


def test_training_mode_matches_with_the_same_random_state() -> None:
    # dropout sits at the end of embed: the same modules draw the same masks in the same order
    model = _build("alexnet", 3, 32).train()
    x = torch.randn(4, 3, 32, 32)
    embed, head = split_head(model)
    torch.manual_seed(1)
    logits = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(head(embed(x)), logits)


@pytest.mark.parametrize("arch", ["squeezenet", "cnn"])
def test_split_of_a_loaded_model(arch: str, tmp_path) -> None:
    spec = ModelSpec(
        arch=arch,
        classes=[f"c{i}" for i in range(NUM_CLASSES)],
        input=InputSpec(channels=1, height=28, width=28, mean=(0.5,), std=(0.25,)),
    )
    loaded, _ = load_model(save_model(_build(arch, 1, 28), spec, tmp_path / "m"))
    _assert_split_is_exact(loaded, torch.randn(2, 1, 28, 28), SMALL_DIM[arch])


class _Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = build_model("cnn", NUM_CLASSES, 1, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _SubclassedCNN(SmallCNN):  # a subclass may override forward: not known to split exactly
    pass


@pytest.mark.parametrize(
    "module",
    [
        nn.Sequential(nn.Flatten(), nn.Linear(784, NUM_CLASSES)),
        _Wrapped(),
        _SubclassedCNN(NUM_CLASSES, 1, (28, 28), 8, 2),
    ],
    ids=["sequential", "wrapper", "subclass"],
)
def test_an_unknown_module_is_refused(module: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"expects a model built by zoo\.architectures.*resnet18.*mlp.*got"):
        split_head(module)
    with pytest.raises(ValueError, match="expects a model built by"):
        feature_dim(module)


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    setattr(model, name, module)
    return model


@pytest.mark.parametrize(
    "make",
    [
        # torchvision's own SqueezeNet has a ReLU between the conv and the pool: not linear
        lambda: torchvision.models.squeezenet1_1(weights=None, num_classes=NUM_CLASSES),
        lambda: _replace(_build("resnet18", 1, 28), "fc", nn.Identity()),
        lambda: _replace(
            _build("cnn", 1, 28), "fc", nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
        ),
    ],
    ids=["squeezenet-relu", "resnet-identity-fc", "cnn-mlp-fc"],
)
def test_a_changed_last_layer_cannot_be_split(make) -> None:
    with pytest.raises(ValueError, match="cannot be split into features \\+ head"):
        split_head(make())
