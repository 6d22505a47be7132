"""Model factories for the export tests and the ``pai-fast export --model tests.fixtures_export:...`` CLI tests."""

from __future__ import annotations

import torch
from torch import nn

from pai_fast import DendriticConv1d, DendriticConv2d, DendriticLinear


@torch.no_grad()
def randomise_dendrites(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random gates, cascades and dendrite weights of O(1) effect (a fresh dendrite's gate is zero, which would
    hide every mistake in the dendrite terms)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.numel() == 0:
            continue
        if name.endswith(("dendrite_gate", "dendrite_cascade")):
            p.copy_(torch.randn(p.shape, generator=g).to(p))
        elif name.endswith("dendrite_weight"):
            fan_in = p[0, 0].numel()
            p.copy_((torch.randn(p.shape, generator=g) / fan_in**0.5).to(p))
        elif name.endswith("dendrite_bias"):
            p.copy_((torch.randn(p.shape, generator=g) * 0.5).to(p))
    return model


def mlp(d: int = 2, activation="sigmoid", in_features: int = 64, hidden: int = 16, out: int = 10) -> nn.Module:
    """The digits demo shape: 64 -> 16 -> 10 with dendritic Linear layers (second without bias)."""
    return nn.Sequential(
        DendriticLinear(in_features, hidden, dendrites=d, activation=activation),
        nn.ReLU(),
        DendriticLinear(hidden, out, bias=False, dendrites=d, activation=activation),
    )


def dendritic_mlp() -> nn.Module:
    """CLI factory: a seeded 64-16-10 MLP with 2 and 3 dendrites and random dendrite parameters."""
    torch.manual_seed(1)
    m = nn.Sequential(
        DendriticLinear(64, 16, dendrites=2), nn.Tanh(), DendriticLinear(16, 10, dendrites=3, activation="tanh")
    )
    return randomise_dendrites(m, seed=1)


def plain_mlp() -> nn.Module:
    """CLI factory: the same architecture with plain nn.Linear layers (a checkpoint supplies the dendrites)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))


def not_a_model():
    """CLI factory that returns something else."""
    return {"weight": torch.zeros(2)}


class ConvNet(nn.Module):
    """Conv1d and Conv2d (grouped, strided, reflect-padded) plus a Linear head, all dendritic."""

    def __init__(self, d: int = 2, activation="sigmoid") -> None:
        super().__init__()
        self.c1 = DendriticConv1d(3, 4, 3, padding=1, dendrites=d, activation=activation)
        self.c2 = DendriticConv2d(
            4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect", dendrites=d, activation=activation
        )
        self.head = DendriticLinear(6 * 3 * 4, 5, dendrites=d, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 3, 6, 8]
        b, c, h, w = x.shape
        y = torch.relu(self.c1(x.reshape(b, c, h * w)))  # [B, 4, 48]
        y = torch.relu(self.c2(y.reshape(b, 4, h, w)))  # [B, 6, 3, 4]
        return self.head(y.flatten(1))
