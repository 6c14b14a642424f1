"""The four networks of AKT (paper 003, Sec. 3.2) in one module, so one state_dict checkpoints a run.

M (the target classifier, the method's output) and G (the pseudo-label generator) share one allow-listed
architecture. Both are split by `zoo.architectures.split_head` into embed (image -> features, the
penultimate layer: the paper's "last layer before softmax") and head (the softmax layer, an nn.Linear);
D_I and D_G read those features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from zoo.architectures import build_model, split_head
from zoo.artifacts import ModelSpec, build_net

from .discriminators import GroupDiscriminator, InstanceDiscriminator

__all__ = ["AKTNets", "akt_nets_for", "build_akt_nets", "copy_head"]


def _check_same_architecture(m: nn.Module, g: nn.Module) -> None:
    shapes_m = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    shapes_g = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    if type(m) is not type(g) or shapes_m != shapes_g:
        diff = sorted(set(shapes_m.items()) ^ set(shapes_g.items()))[:3]
        raise ValueError(
            f"M and G must have the same architecture (paper 003, Sec. 3.2): got {type(m).__name__} and "
            f"{type(g).__name__}, first differing tensors {diff}; "
            "build both with the same build_model arguments"
        )


class AKTNets(nn.Module):
    """M, G, D_I, D_G and the flag `generator_ready` (False until G has been made a copy of M).

    input_shape: (channels, height, width) of the images every step must get. M and G must have the
    same architecture (same class and state_dict shapes) else ValueError. The discriminators take the
    features' width from M's head.
    """

    def __init__(
        self,
        m: nn.Module,
        g: nn.Module,
        input_shape: Sequence[int],
        d_hidden: Sequence[int] = (512, 256, 128),
    ):
        super().__init__()
        _check_same_architecture(m, g)
        if len(input_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in input_shape):
            raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}")
        self.m, self.g = m, g
        # Plain tuples, not submodules: split_head returns views of m and g, which hold the parameters.
        self._m_split = split_head(m)
        self._g_split = split_head(g)
        self.input_shape = tuple(input_shape)
        width = self.m_head.in_features
        self.d_i = InstanceDiscriminator(width, d_hidden)
        self.d_g = GroupDiscriminator(width, d_hidden)
        self.register_buffer("generator_ready", torch.zeros((), dtype=torch.bool))

    @property
    def m_embed(self) -> nn.Module:
        return self._m_split[0]

    @property
    def m_head(self) -> nn.Linear:
        return self._m_split[1]

    @property
    def g_embed(self) -> nn.Module:
        return self._g_split[0]

    @property
    def g_head(self) -> nn.Linear:
        return self._g_split[1]

    @property
    def num_classes(self) -> int:
        return self.m_head.out_features

    @torch.no_grad()
    def init_generator(self) -> None:
        """G := a full copy of M (weights and BatchNorm statistics); marks G ready."""
        self.g.load_state_dict(self.m.state_dict())
        self.generator_ready.fill_(True)


@torch.no_grad()
def copy_head(source: nn.Linear, destination: nn.Linear) -> None:
    """Copy the softmax layer (weight and bias) of M into G in place (Alg. 1 / Fig. 2c); nothing else."""
    if source.weight.shape != destination.weight.shape:
        raise ValueError(
            f"heads differ in shape: {tuple(source.weight.shape)} vs {tuple(destination.weight.shape)}"
        )
    destination.weight.copy_(source.weight)
    if (source.bias is None) != (destination.bias is None):
        raise ValueError("one head has a bias and the other not")
    if source.bias is not None:
        destination.bias.copy_(source.bias)


def build_akt_nets(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    *,
    d_hidden: Sequence[int] = (512, 256, 128),
    **arch_kwargs: object,
) -> AKTNets:
    """M and G from `zoo.architectures.build_model` with the same arguments (independent random
    initialisations; G becomes a copy of M at the first step that uses the source), and D_I, D_G."""
    m = build_model(arch, num_classes, in_channels, image_size, **arch_kwargs)
    g = build_model(arch, num_classes, in_channels, image_size, **arch_kwargs)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return AKTNets(m, g, (in_channels, *size), d_hidden)


def akt_nets_for(spec: ModelSpec, d_hidden: Sequence[int] = (512, 256, 128)) -> AKTNets:
    """M and G as the network of ``spec`` (`zoo.artifacts.build_net`, the one way the product builds a
    network; M is what gets saved under that spec), D_I and D_G; the images are the spec's input."""
    shape = (spec.input.channels, spec.input.height, spec.input.width)
    return AKTNets(build_net(spec), build_net(spec), shape, d_hidden)
