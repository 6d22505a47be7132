"""Stateless dendritic layers: validate, pick a backend, run.

    y = f(x) + sum_i G[i] * act(h_i(x) + sum_{j<i} B[i, j] * a_j)        (see pai_fast.reference)

The ``torch`` backend is pai_fast.reference (autograd does the backward); ``triton`` and ``cuda`` run
fused kernels through the ``pai_fast::*`` operators (pai_fast.ops).
"""

from __future__ import annotations

import torch
from torch.nn.modules.utils import _ntuple

from . import reference
from ._plans import PlanCache
from ._validation import check_conv, check_linear
from .activations import ActivationLike, activation_name
from .backends import choose, get_backend

__all__ = ["dendritic_linear", "dendritic_conv1d", "dendritic_conv2d", "dendritic_conv3d"]

# Validation and backend choice, once per call signature (pai_fast._plans): small layers are host-bound.
_linear_plans = PlanCache()
_conv_plans = PlanCache()


def dendritic_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    dendrite_gate: torch.Tensor,
    dendrite_cascade: torch.Tensor,
    activation: ActivationLike = "sigmoid",
    backend: str | None = None,
) -> torch.Tensor:
    """Dendritic Linear over x [..., in_features] (every leading dim is batch) -> [..., out_features]."""
    tensors = (x, weight, bias, dendrite_weight, dendrite_bias, dendrite_gate, dendrite_cascade)

    def plan():
        d = check_linear(*tensors)
        name = activation_name(activation)
        return d, name, choose("linear", x, weight, d, name, backend)

    if isinstance(activation, str):
        _, name, which = _linear_plans.get(tensors, (activation, backend, get_backend()), plan)
    else:
        _, name, which = plan()
    if which == "torch":
        return reference.dendritic_linear_ref(
            x, weight, bias, dendrite_weight, dendrite_bias, dendrite_gate, dendrite_cascade, activation
        )
    from .ops import linear_fused

    return linear_fused(x, weight, bias, dendrite_weight, dendrite_bias, dendrite_gate, dendrite_cascade, name, which)


def _fused_conv_args(nd: int, x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation):
    """Explicit int tuples for the fused kernels, or None when the call needs the torch backend's generality."""
    if x.dim() != nd + 2 or isinstance(padding, str):
        return None
    tup = _ntuple(nd)
    return list(tup(stride)), list(tup(padding)), list(tup(dilation))


def _dendritic_conv(
    nd,
    x,
    weight,
    bias,
    dendrite_weight,
    dendrite_bias,
    dendrite_gate,
    dendrite_cascade,
    stride,
    padding,
    dilation,
    groups,
    activation,
    backend,
):
    tensors = (x, weight, bias, dendrite_weight, dendrite_bias, dendrite_gate, dendrite_cascade)

    def plan():
        d = check_conv(nd, *tensors, groups)
        name = activation_name(activation)
        args = _fused_conv_args(nd, x, weight, stride, padding, dilation)
        # Unbatched input and string padding are rare: they go to the torch backend unless one is forced.
        which = choose("conv", x, weight, d, name, backend if args is not None or backend else "torch", groups)
        if which != "torch" and args is None:
            raise ValueError(
                f"backend: {which!r} needs batched input and numeric padding; got x shape {list(x.shape)}, "
                f"padding={padding!r} (use backend='torch')"
            )
        return d, name, args, which

    if isinstance(activation, str):
        extra = (nd, stride, padding, dilation, groups, activation, backend, get_backend())
        _, name, args, which = _conv_plans.get(tensors, extra, plan)
    else:
        _, name, args, which = plan()
    if which == "torch":
        return reference.dendritic_conv_ref(
            x,
            weight,
            bias,
            dendrite_weight,
            dendrite_bias,
            dendrite_gate,
            dendrite_cascade,
            stride,
            padding,
            dilation,
            groups,
            activation,
        )
    from .ops import conv_fused

    return conv_fused(
        x, weight, bias, dendrite_weight, dendrite_bias, dendrite_gate, dendrite_cascade, *args, name, which
    )


def dendritic_conv1d(
    x,
    weight,
    bias,
    dendrite_weight,
    dendrite_bias,
    dendrite_gate,
    dendrite_cascade,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: ActivationLike = "sigmoid",
    backend: str | None = None,
) -> torch.Tensor:
    """Dendritic Conv1d over x [B, C_in, L] (or unbatched [C_in, L])."""
    return _dendritic_conv(
        1,
        x,
        weight,
        bias,
        dendrite_weight,
        dendrite_bias,
        dendrite_gate,
        dendrite_cascade,
        stride,
        padding,
        dilation,
        groups,
        activation,
        backend,
    )


def dendritic_conv2d(
    x,
    weight,
    bias,
    dendrite_weight,
    dendrite_bias,
    dendrite_gate,
    dendrite_cascade,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: ActivationLike = "sigmoid",
    backend: str | None = None,
) -> torch.Tensor:
    """Dendritic Conv2d over x [B, C_in, H, W] (or unbatched [C_in, H, W]); NCHW or channels_last."""
    return _dendritic_conv(
        2,
        x,
        weight,
        bias,
        dendrite_weight,
        dendrite_bias,
        dendrite_gate,
        dendrite_cascade,
        stride,
        padding,
        dilation,
        groups,
        activation,
        backend,
    )


def dendritic_conv3d(
    x,
    weight,
    bias,
    dendrite_weight,
    dendrite_bias,
    dendrite_gate,
    dendrite_cascade,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: ActivationLike = "sigmoid",
    backend: str | None = None,
) -> torch.Tensor:
    """Dendritic Conv3d over x [B, C_in, D, H, W] (or unbatched)."""
    return _dendritic_conv(
        3,
        x,
        weight,
        bias,
        dendrite_weight,
        dendrite_bias,
        dendrite_gate,
        dendrite_cascade,
        stride,
        padding,
        dilation,
        groups,
        activation,
        backend,
    )
