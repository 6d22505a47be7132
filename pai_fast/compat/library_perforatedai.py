"""Drop-in for ``perforatedai.library_perforatedai``: processors and ResNet replacement modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tracker import processors as _processors
from ..tracker.errors import PAIConfigurationError
from ..tracker.generic import PAISequential
from ..tracker.processors import *  # noqa: F403 (perforatedai serves every processor from this module)

__all__ = [*_processors.__all__, "ResNetPAI", "ResNetPAIPreFC"]


def _blocks(layer: nn.Module, name: str) -> nn.Sequential:
    for block in layer:
        if type(block).__name__ not in ("BasicBlock", "Bottleneck"):
            raise PAIConfigurationError(
                f"ResNetPAI: {name} holds a {type(block).__name__}; only torchvision BasicBlock/Bottleneck blocks "
                "are converted automatically"
            )
    return nn.Sequential(*layer)


class _ResNetBase(nn.Module):
    def __init__(self, other) -> None:
        super().__init__()
        for attr in ("_norm_layer", "inplanes", "dilation", "groups", "base_width"):
            if hasattr(other, attr):
                setattr(self, attr, getattr(other, attr))
        self.relu = other.relu
        self.maxpool = other.maxpool
        for i in range(1, 5):
            setattr(self, f"layer{i}", _blocks(getattr(other, f"layer{i}"), f"layer{i}"))
        self.avgpool = other.avgpool
        self.fc = other.fc

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.avgpool(x), 1)


class ResNetPAI(_ResNetBase):
    """A torchvision ResNet with its stem conv+BN grouped into one PAISequential (so the BN is accounted for)."""

    def __init__(self, other_resnet) -> None:
        super().__init__(other_resnet)
        self.b1 = PAISequential([other_resnet.conv1, other_resnet.bn1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._body(F.relu(self.b1(x))))


class ResNetPAIPreFC(_ResNetBase):
    """ResNetPAI variant that keeps conv1/bn1 and adds a Linear(in, in) + ReLU before the classifier."""

    def __init__(self, other_resnet) -> None:
        super().__init__(other_resnet)
        self.conv1 = other_resnet.conv1
        self.bn1 = other_resnet.bn1
        n = other_resnet.fc.in_features
        self.pre_fc = nn.Linear(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._body(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.relu(self.pre_fc(x)))
