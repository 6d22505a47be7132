"""DendriticLinear: ``nn.Linear`` plus dendrites (math in pai_fast.reference)."""

from __future__ import annotations

import torch
from torch import nn

from ..activations import ActivationLike
from ..functional import dendritic_linear
from ._dendrites import DendriteMixin


class DendriticLinear(DendriteMixin, nn.Linear):
    """A Linear layer with D dendrites: y = x W^T + b + sum_i G[i] * act(x V_i^T + c_i + sum_{j<i} B[i,j] * a_j).

    Takes every argument of ``nn.Linear`` (same names, defaults and initialisation of ``weight``/``bias``)
    plus ``dendrites`` and ``activation``. With ``dendrites=0`` it computes exactly ``nn.Linear``.
    Every leading dim of the input is batch (a ``[B, T, F]`` input needs no node-dimension setting).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        dendrites: int = 0,
        activation: ActivationLike = "sigmoid",
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_dendrites(dendrites, activation)

    @classmethod
    def from_module(
        cls, layer: nn.Linear, *, dendrites: int = 0, activation: ActivationLike | None = None
    ) -> DendriticLinear:
        """A DendriticLinear holding ``layer``'s weights (copied; dendrites of a DendriticLinear are kept)."""
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer: expected an nn.Linear, got {type(layer).__name__}")
        act = activation if activation is not None else getattr(layer, "activation", "sigmoid")
        w = layer.weight
        with torch.device("meta"):
            new = cls(layer.in_features, layer.out_features, layer.bias is not None, dtype=w.dtype, activation=act)
        new = new.to_empty(device=w.device)
        if isinstance(layer, DendriteMixin):
            new._set_num_dendrites(layer.num_dendrites)
        new.load_state_dict(layer.state_dict(), strict=isinstance(layer, DendriteMixin))
        if dendrites:
            new.add_dendrite(dendrites)
        new.train(layer.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dendritic_linear(input, self.weight, self.bias, *self.dendrite_args(), activation=self.activation)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._dendrite_repr()
