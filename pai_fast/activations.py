"""Dendrite activations: names, callables, and which ones the fused kernels implement.

The fused kernels save only the activated outputs a = act(s) for the backward pass, so they support
the activations whose derivative is a function of a:
sigmoid a(1-a), tanh 1-a^2, relu [a > 0], identity 1. Any other elementwise torch function (a callable)
runs on the ``torch`` backend.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ActivationLike = str | Callable[[torch.Tensor], torch.Tensor]

_NAMED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "identity": lambda t: t,
}
# Fused-kernel activation codes (shared by the Triton and CUDA backends).
FUSED_CODES: dict[str, int] = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3}
_BY_FUNCTION = {torch.sigmoid: "sigmoid", torch.tanh: "tanh", torch.relu: "relu", torch.nn.functional.relu: "relu"}


def activation_name(activation: ActivationLike) -> str | None:
    """Canonical name of a named activation (also for torch.sigmoid & co.), None for other callables."""
    if isinstance(activation, str):
        if activation not in _NAMED:
            raise ValueError(f"activation: expected one of {sorted(_NAMED)} or a callable, got {activation!r}")
        return activation
    if isinstance(activation, torch.nn.Sigmoid):
        return "sigmoid"
    if isinstance(activation, torch.nn.Tanh):
        return "tanh"
    if isinstance(activation, torch.nn.ReLU):
        return "relu"
    if not callable(activation):
        raise TypeError(f"activation: expected a name or a callable, got {type(activation).__name__}")
    return _BY_FUNCTION.get(activation)


def resolve_activation(activation: ActivationLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable for ``activation`` (a name from FUSED_CODES or any elementwise callable)."""
    name = activation_name(activation)
    return _NAMED[name] if name is not None else activation  # type: ignore[return-value]
