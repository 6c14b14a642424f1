"""The allow-list of model architectures a zoo model (teacher or student) may have.

Loading a model never unpickles code: `zoo.artifacts` rebuilds the module with a builder from this
allow-list and loads only tensors into it. Every builder takes (num_classes, in_channels, image_size)
plus its own keyword arguments and returns a randomly initialised module (no pretrained weights, no
downloads) mapping float images [B, in_channels, H, W] to logits [B, num_classes].

torchvision models are adapted to small images (28x28 grey Fashion-MNIST, 32x32 colour): the first
convolution takes `in_channels` and, below `SMALL_INPUT` pixels, keeps the full resolution (stride 1,
no stem max-pool); later max-pools that would shrink the feature map below 2 pixels are dropped;
classifier heads use adaptive pooling and are sized for the feature map actually reached. At ImageNet
sizes the torchvision layouts are kept (only the first conv's channels change, and SqueezeNet loses
the ReLU after its last conv so that its logits can be negative).

`split_head` splits any model these builders return into its penultimate features and its last
linear layer (teacher features for papers 002 and 003).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torchvision
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "SMALL_INPUT",
    "MIN_IMAGE_SIZE",
    "Builder",
    "build_model",
    "arch_kwargs_of",
    "split_head",
    "feature_dim",
]

Builder = Callable[..., nn.Module]

# Below this many pixels (shorter side) an input counts as small: stems keep full resolution.
SMALL_INPUT = 112
# The smallest side any builder accepts (every allow-listed architecture runs at 8x8).
MIN_IMAGE_SIZE = 8


# ----------------------------------------------------------------------------------------------------
# helpers


def _conv_like(old: nn.Conv2d, in_channels: int, stride: int | None = None) -> nn.Conv2d:
    """A fresh Conv2d like `old` with another number of input channels (and optionally stride)."""
    return nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=stride if stride is not None else old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )


def _out_size(module: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after a Conv2d or MaxPool2d (other modules keep the size)."""
    if not isinstance(module, nn.Conv2d | nn.MaxPool2d):
        return size
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    k, s, p, d = pair(module.kernel_size), pair(module.stride), pair(module.padding), pair(module.dilation)
    ceil = isinstance(module, nn.MaxPool2d) and module.ceil_mode
    out = []
    for i in range(2):
        v = (size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) / s[i] + 1
        out.append(math.ceil(v) if ceil else math.floor(v))
    return out[0], out[1]


def _trim_pools(features: nn.Sequential, size: tuple[int, int], min_size: int = 2) -> tuple[int, int]:
    """Replace, in place, the max-pools of `features` that would shrink the map below `min_size`
    pixels by Identity; return the spatial size at the end of `features`."""
    for i, module in enumerate(features):
        nxt = _out_size(module, size)
        if isinstance(module, nn.MaxPool2d) and min(nxt) < min_size:
            features[i] = nn.Identity()
            continue
        size = nxt
    return size


def _is_small(image_size: tuple[int, int]) -> bool:
    return min(image_size) < SMALL_INPUT


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _dropout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------------
# torchvision models


def _resnet(factory: Callable[..., nn.Module]) -> Builder:
    def build(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
        model = factory(weights=None, num_classes=num_classes)
        if _is_small(image_size):
            # CIFAR-style stem: 3x3 stride 1, no max-pool, so layer4 still sees >= 2x2 at 16 px.
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        else:
            model.conv1 = _conv_like(model.conv1, in_channels)
        return model

    build.__doc__ = f"torchvision {factory.__name__}, adapted to the input (CIFAR stem when small)."
    return build


class _PooledNet(nn.Module):
    """features -> avgpool -> flatten -> classifier: the layout (and state_dict names) of torchvision's
    VGG and AlexNet, built without their 224-px heads (constructing and initialising those 100M-weight
    layers only to replace them costs seconds)."""

    def __init__(self, features: nn.Sequential, avgpool: nn.Module, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg(name: str, cfg: str) -> Builder:
    factory = getattr(torchvision.models, name)

    def build(
        num_classes: int, in_channels: int, image_size: tuple[int, int], *, dropout: float = 0.5
    ) -> nn.Module:
        dropout = _dropout(dropout)
        if not _is_small(image_size):
            model = factory(weights=None, num_classes=num_classes, dropout=dropout)
            model.features[0] = _conv_like(model.features[0], in_channels)
            return model
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[cfg], batch_norm=True)
        features[0] = _conv_like(features[0], in_channels)
        _trim_pools(features, image_size)
        # The 512x7x7 -> 4096 -> 4096 head is for 224 px; a small map gets the global-pool head of
        # the CIFAR VGGs.
        classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(512, num_classes)
        )
        model = _PooledNet(features, nn.AdaptiveAvgPool2d(1), classifier)
        for m in model.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        return model

    build.__doc__ = f"torchvision {name}; when small, pools trimmed and a global-pool 512-512 head."
    return build


def _alexnet(
    num_classes: int, in_channels: int, image_size: tuple[int, int], *, dropout: float = 0.5
) -> nn.Module:
    """AlexNet: torchvision's at large sizes; at small sizes an AlexNet-style net (torchvision's five
    convs with a 5x5 stride-1 stem, 3 max-pools where they fit, a 3-layer MLP head of width 1024 on
    a 2x2 adaptive pool)."""
    dropout = _dropout(dropout)
    if not _is_small(image_size):
        model = torchvision.models.alexnet(weights=None, num_classes=num_classes, dropout=dropout)
        model.features[0] = _conv_like(model.features[0], in_channels)
        return model
    features = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=5, stride=1, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    _trim_pools(features, image_size)
    classifier = nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(256 * 2 * 2, 1024),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1024, 1024),
        nn.ReLU(inplace=True),
        nn.Linear(1024, num_classes),
    )
    return _PooledNet(features, nn.AdaptiveAvgPool2d((2, 2)), classifier)


def _mobilenet_v3(factory: Callable[..., nn.Module]) -> Builder:
    def build(
        num_classes: int, in_channels: int, image_size: tuple[int, int], *, dropout: float = 0.2
    ) -> nn.Module:
        model = factory(weights=None, num_classes=num_classes, dropout=_dropout(dropout))
        stem = model.features[0][0]
        model.features[0][0] = _conv_like(stem, in_channels, stride=1 if _is_small(image_size) else None)
        return model

    build.__doc__ = f"torchvision {factory.__name__}, stride-1 stem when small."
    return build


_SHUFFLENET = {
    0.5: torchvision.models.shufflenet_v2_x0_5,
    1.0: torchvision.models.shufflenet_v2_x1_0,
    1.5: torchvision.models.shufflenet_v2_x1_5,
    2.0: torchvision.models.shufflenet_v2_x2_0,
}


def _shufflenet_v2(
    num_classes: int, in_channels: int, image_size: tuple[int, int], *, width_mult: float = 1.0
) -> nn.Module:
    """torchvision ShuffleNet V2 (width_mult in 0.5, 1.0, 1.5, 2.0); stride-1 stem, no max-pool when small."""
    if width_mult not in _SHUFFLENET or isinstance(width_mult, bool):
        raise ValueError(f"width_mult must be one of {sorted(_SHUFFLENET)}, got {width_mult!r}")
    model = _SHUFFLENET[float(width_mult)](weights=None, num_classes=num_classes)
    small = _is_small(image_size)
    model.conv1[0] = _conv_like(model.conv1[0], in_channels, stride=1 if small else None)
    if small:
        model.maxpool = nn.Identity()
    return model


def _efficientnet_b0(
    num_classes: int, in_channels: int, image_size: tuple[int, int], *, dropout: float = 0.2
) -> nn.Module:
    """torchvision EfficientNet-B0, stride-1 stem when small."""
    model = torchvision.models.efficientnet_b0(
        weights=None, num_classes=num_classes, dropout=_dropout(dropout)
    )
    stem = model.features[0][0]
    model.features[0][0] = _conv_like(stem, in_channels, stride=1 if _is_small(image_size) else None)
    return model


def _squeezenet(
    num_classes: int, in_channels: int, image_size: tuple[int, int], *, dropout: float = 0.5
) -> nn.Module:
    """torchvision SqueezeNet 1.1; stride-1 3x3 stem and trimmed pools when small. The ReLU after the
    final 1x1 conv is removed so that logits can be negative (distillation reads logits, Eq. 1)."""
    model = torchvision.models.squeezenet1_1(weights=None, num_classes=num_classes, dropout=_dropout(dropout))
    if _is_small(image_size):
        model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1)
        _trim_pools(model.features, image_size)
    else:
        model.features[0] = _conv_like(model.features[0], in_channels)
    final_conv = model.classifier[1]
    model.classifier = nn.Sequential(nn.Dropout(dropout), final_conv, nn.AdaptiveAvgPool2d((1, 1)))
    return model


# ----------------------------------------------------------------------------------------------------
# small CPU-friendly nets


class SmallCNN(nn.Module):
    """`depth` blocks of 3x3 conv-BN-ReLU (channels width, 2*width, 4*width, 8*width, 8*width...), each
    followed by a 2x2 max-pool while the map is >= 4 px, then global average pooling and a linear layer."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: tuple[int, int], width: int, depth: int
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, min(image_size)
        for i in range(depth):
            out = width * 2 ** min(i, 3)
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _cnn(
    num_classes: int, in_channels: int, image_size: tuple[int, int], *, width: int = 16, depth: int = 3
) -> nn.Module:
    """A configurable-width CNN (see SmallCNN); width 16, depth 3 has ~25k weights."""
    return SmallCNN(
        num_classes, in_channels, image_size, _positive_int("width", width), _positive_int("depth", depth)
    )


class MLP(nn.Module):
    """Flatten, then `layers` hidden Linear-ReLU layers of size `hidden`, then a linear classifier."""

    def __init__(self, num_classes: int, in_features: int, hidden: int, layers: int):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.hidden = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(torch.flatten(x, 1)))


def _mlp(
    num_classes: int, in_channels: int, image_size: tuple[int, int], *, hidden: int = 256, layers: int = 2
) -> nn.Module:
    """A multi-layer perceptron on the flattened image (layers = 0 is a linear classifier)."""
    in_features = in_channels * image_size[0] * image_size[1]
    return MLP(num_classes, in_features, _positive_int("hidden", hidden), _positive_int("layers", layers, 0))


ARCHITECTURES: Mapping[str, Builder] = MappingProxyType(
    {
        "resnet18": _resnet(torchvision.models.resnet18),
        "resnet34": _resnet(torchvision.models.resnet34),
        "vgg11_bn": _vgg("vgg11_bn", "A"),
        "vgg16_bn": _vgg("vgg16_bn", "D"),
        "alexnet": _alexnet,
        "mobilenet_v3_small": _mobilenet_v3(torchvision.models.mobilenet_v3_small),
        "mobilenet_v3_large": _mobilenet_v3(torchvision.models.mobilenet_v3_large),
        "shufflenet_v2": _shufflenet_v2,
        "efficientnet_b0": _efficientnet_b0,
        "squeezenet": _squeezenet,
        "cnn": _cnn,
        "mlp": _mlp,
    }
)


def arch_kwargs_of(arch: str) -> dict[str, object]:
    """The keyword arguments an architecture accepts, with their defaults."""
    _check_arch(arch)
    params = inspect.signature(ARCHITECTURES[arch]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_arch(arch: object) -> None:
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")


def _image_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, tuple | list) and len(image_size) == 2:
        size = tuple(image_size)
    else:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    for v in size:
        if isinstance(v, bool) or not isinstance(v, int) or v < MIN_IMAGE_SIZE:
            raise ValueError(f"image sides must be integers >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    return size  # type: ignore[return-value]


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    **arch_kwargs: object,
) -> nn.Module:
    """Build a randomly initialised allow-listed model mapping [B, in_channels, H, W] to [B, num_classes].

    Raises ValueError for an unknown arch (listing the allowed ones), an unknown keyword argument
    (listing the accepted ones) or an invalid size.
    """
    _check_arch(arch)
    num_classes = _positive_int("num_classes", num_classes)
    in_channels = _positive_int("in_channels", in_channels)
    size = _image_size(image_size)
    accepted = arch_kwargs_of(arch)
    unknown = sorted(set(arch_kwargs) - set(accepted))
    if unknown:
        hint = f"it accepts {sorted(accepted)}" if accepted else "it accepts none"
        raise ValueError(f"architecture {arch!r} got unknown keyword arguments {unknown}; {hint}")
    return ARCHITECTURES[arch](num_classes, in_channels, size, **arch_kwargs)


# ----------------------------------------------------------------------------------------------------
# features + head: the penultimate layer ("the last layer before softmax", papers 002 and 003)


class _SpatialMean(nn.Module):
    """[B, C, H, W] -> [B, C], the global average ShuffleNet V2's forward takes (`x.mean([2, 3])`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean([2, 3])


class _Conv1x1AsLinear(nn.Linear):
    """A 1x1 convolution read as the Linear it is on pooled features, sharing its parameters.

    SqueezeNet ends in a 1x1 conv (stride 1, no padding) and a global average pool. Both are linear and
    the conv acts on each pixel alike, so pool(conv(x)) = W pool(x) + b with W the conv's weight as
    [out, in]. `weight` is a view of the conv's [out, in, 1, 1] weight and `bias` is the conv's: no
    copy, gradients reach the conv, the model's state_dict is untouched (this head's own state_dict
    holds the conv's tensors under `conv.`)."""

    def __init__(self, conv: nn.Conv2d):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a weight of its own
        self.conv = conv
        self.in_features = conv.in_channels
        self.out_features = conv.out_channels

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.conv.weight.flatten(1)

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return self.conv.bias


def _cannot_split(model: nn.Module, why: str) -> ValueError:
    return ValueError(f"architecture {type(model).__name__} cannot be split into features + head: {why}")


def _linear_head(model: nn.Module, head: object, where: str) -> nn.Linear:
    if not isinstance(head, nn.Linear):
        raise _cannot_split(model, f"{where} is {type(head).__name__}, expected nn.Linear")
    return head


def _split_resnet(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """torchvision ResNet: everything up to the flattened global pool; head `fc`."""
    m = model
    embed = nn.Sequential(
        m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4, m.avgpool, nn.Flatten(1)
    )
    return embed, _linear_head(model, m.fc, "fc")


def _split_pooled(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """features -> avgpool -> flatten -> classifier (VGG, AlexNet, _PooledNet, MobileNetV3,
    EfficientNet): embed runs the classifier up to its last layer, which is the head."""
    classifier = model.classifier
    if not isinstance(classifier, nn.Sequential) or len(classifier) == 0:
        raise _cannot_split(model, f"its classifier is {type(classifier).__name__}, expected nn.Sequential")
    head = _linear_head(model, classifier[-1], "the classifier's last layer")
    return nn.Sequential(model.features, model.avgpool, nn.Flatten(1), *classifier[:-1]), head


def _split_shufflenet(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """torchvision ShuffleNet V2: up to conv5 and the spatial mean; head `fc`."""
    m = model
    embed = nn.Sequential(m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5, _SpatialMean())
    return embed, _linear_head(model, m.fc, "fc")


def _split_squeezenet(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """The builder's SqueezeNet (classifier = Dropout, 1x1 conv, global average pool): embed is
    features -> dropout -> pool -> flatten, the head the conv read as a Linear (_Conv1x1AsLinear).
    torchvision's own layout (a ReLU between conv and pool) is not linear after the pool: refused."""
    layers = list(model.classifier)
    kinds = [type(layer) for layer in layers]
    if kinds != [nn.Dropout, nn.Conv2d, nn.AdaptiveAvgPool2d]:
        names = [k.__name__ for k in kinds]
        raise _cannot_split(
            model,
            f"classifier is {names}, expected [Dropout, Conv2d, AdaptiveAvgPool2d] (no ReLU after the conv)",
        )
    dropout, conv, pool = layers
    pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in (0, (0, 0))
    if not pointwise or conv.groups != 1 or pool.output_size not in (1, (1, 1)):
        raise _cannot_split(
            model, "the final conv must be 1x1, stride 1, unpadded, ungrouped, then a 1x1 pool"
        )
    return nn.Sequential(model.features, dropout, pool, nn.Flatten(1)), _Conv1x1AsLinear(conv)


def _split_small_cnn(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    return nn.Sequential(model.features, model.pool, nn.Flatten(1)), _linear_head(model, model.fc, "fc")


def _split_mlp(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """The last hidden layer's activations (the flattened image itself when layers = 0)."""
    return nn.Sequential(nn.Flatten(1), model.hidden), _linear_head(model, model.fc, "fc")


# Keyed by exact class: a subclass may override forward, so its split would not be known to be exact.
_SPLITTERS: Mapping[type, Callable[[nn.Module], tuple[nn.Module, nn.Linear]]] = MappingProxyType(
    {
        torchvision.models.ResNet: _split_resnet,
        torchvision.models.VGG: _split_pooled,
        torchvision.models.AlexNet: _split_pooled,
        _PooledNet: _split_pooled,
        torchvision.models.MobileNetV3: _split_pooled,
        torchvision.models.EfficientNet: _split_pooled,
        torchvision.models.ShuffleNetV2: _split_shufflenet,
        torchvision.models.SqueezeNet: _split_squeezenet,
        SmallCNN: _split_small_cnn,
        MLP: _split_mlp,
    }
)


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """Split an allow-listed model into (embed, head) with head(embed(x)) == model(x).

    `embed` maps images [B, C, H, W] to the penultimate features [B, D] ("the last layer before
    softmax", papers 002 and 003); `head` is the final nn.Linear, weight [num_classes, D]. Both hold
    the model's own modules (no copies, the model is not modified): training them trains the model,
    and moving or putting them in eval/train mode does so to those modules.

    Dropout before the last Linear (VGG, AlexNet, MobileNetV3, EfficientNet, SqueezeNet) sits at the
    end of `embed`, so the equality holds in eval mode (in train mode only for the same random state).
    SqueezeNet ends in a 1x1 conv and a global average pool; its head is an exact equivalent, an
    nn.Linear subclass whose weight is a view of the conv's (see _Conv1x1AsLinear).

    The architecture is recognised by the module's class as the builders of this file return it (any
    input size); raises ValueError for another module, or for one whose last layer was replaced by
    something that is not linear.
    """
    splitter = _SPLITTERS.get(type(model))
    if splitter is None:
        classes = ", ".join(sorted(cls.__name__ for cls in _SPLITTERS))
        raise ValueError(
            f"split_head expects a model built by zoo.architectures.build_model (one of "
            f"{', '.join(ARCHITECTURES)}; module classes {classes}), got {type(model).__qualname__}"
        )
    return splitter(model)


def feature_dim(model: nn.Module) -> int:
    """D, the size of the penultimate features `split_head(model)[0]` returns."""
    return split_head(model)[1].in_features
