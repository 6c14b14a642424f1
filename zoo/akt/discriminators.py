"""The two discriminators of AKT (paper 003, Sec. 3.2-3.3): small MLPs on feature vectors that output
one logit, "real" (positive) for the classifier M's features of target images and "fake" (negative)
for the generator G's features of source images.

Neither has BatchNorm: D_G sees one vector per batch (batch statistics of a single vector are
undefined), and in D_I batch statistics computed over an all-real or all-fake batch would hand it the
domain for free. LeakyReLU as in the usual GAN discriminators.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["InstanceDiscriminator", "GroupDiscriminator"]


def _mlp(features: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _check_features(features: Tensor, width: int, who: str) -> None:
    if features.ndim != 2 or features.shape[1] != width or features.shape[0] == 0:
        raise ValueError(f"{who} takes features [B >= 1, {width}], got shape {tuple(features.shape)}")


class InstanceDiscriminator(nn.Module):
    """D_I: one logit per feature vector, [B, F] -> [B] (Eq. 2)."""

    def __init__(self, features: int, hidden: Sequence[int] = (512, 256, 128)):
        super().__init__()
        self.features = features
        self.net = _mlp(features, hidden)

    def forward(self, features: Tensor) -> Tensor:
        _check_features(features, self.features, "InstanceDiscriminator")
        return self.net(features).squeeze(1)


class GroupDiscriminator(nn.Module):
    """D_G: one logit for the mean feature vector of a batch, [B, F] -> [1] (Eq. 3)."""

    def __init__(self, features: int, hidden: Sequence[int] = (512, 256, 128)):
        super().__init__()
        self.features = features
        self.net = _mlp(features, hidden)

    def forward(self, features: Tensor) -> Tensor:
        _check_features(features, self.features, "GroupDiscriminator")
        return self.net(features.mean(dim=0, keepdim=True)).squeeze(1)
