"""Plain-PyTorch dendritic layers: the ``torch`` backend, the float64 oracle and the benchmark baseline.

For input x, main layer f (weight W, bias b) and D dendrites h_i (weights V_i, biases c_i), i = 0..D-1
(perforatedai spec §2.3):

    z_0 = f(x)                    u_i = h_i(x)
    s_i = u_i + sum_{j<i} B[i, j] * a_j           a_i = act(s_i)
    y   = z_0 + sum_i G[i] * a_i

G[i] (``gate``) and B[i, j] (``cascade``) are vectors over output channels, broadcast over batch and
spatial/time dims; only the entries j < i of the cascade are read. All 1 + D branches come from ONE
GEMM (Linear) or ONE convolution over stacked weights; the cascade is a short per-channel loop.
Gradients come from autograd, which keeps this file simple and obviously right.

``dendritic_linear_loop`` is an independent implementation (one ``F.linear`` per dendrite, the way
perforatedai runs them) used only to cross-check the stacked version in tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .activations import resolve_activation

__all__ = [
    "dendritic_combine",
    "dendritic_linear_ref",
    "dendritic_linear_loop",
    "dendritic_conv_ref",
    "dendritic_conv_loop",
]


def dendritic_combine(
    z0: torch.Tensor,
    branches: Sequence[torch.Tensor],
    gate: torch.Tensor,
    cascade: torch.Tensor,
    activation="sigmoid",
    channel_dim: int = -1,
) -> torch.Tensor:
    """Cascade, activation and gated sum over pre-activation dendrite outputs ``branches``."""
    act = resolve_activation(activation)
    view = [1] * z0.dim()
    view[channel_dim] = -1
    y = z0
    acts: list[torch.Tensor] = []
    for i, u in enumerate(branches):
        s = u
        for j in range(i):
            s = torch.addcmul(s, cascade[i, j].view(view), acts[j])
        a = act(s)
        acts.append(a)
        y = torch.addcmul(y, gate[i].view(view), a)
    return y


def _anchor(y: torch.Tensor, *unused: torch.Tensor | None) -> torch.Tensor:
    """Tie parameters the math does not read (all dendrite tensors at D=0, the cascade at D=1) into the graph
    with a zero, so they get (zero) gradients: DistributedDataParallel requires every parameter to take part."""
    live = [t for t in unused if t is not None and t.requires_grad]
    if not live or not torch.is_grad_enabled():
        return y
    return y + sum(t.sum() for t in live) * 0


def _stack(main: torch.Tensor, dendrites: torch.Tensor) -> torch.Tensor:
    return torch.cat([main.unsqueeze(0), dendrites], 0)


def dendritic_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    activation="sigmoid",
) -> torch.Tensor:
    """Dendritic Linear as one GEMM of width (1+D)*N over stacked weights."""
    d = dendrite_weight.shape[0]
    if d == 0:
        return _anchor(F.linear(x, weight, bias), dendrite_weight, dendrite_bias, gate, cascade)
    n, k = weight.shape
    w = _stack(weight, dendrite_weight).reshape((1 + d) * n, k)
    b = None if bias is None else _stack(bias, dendrite_bias).reshape(-1)
    z = F.linear(x, w, b).unflatten(-1, (1 + d, n))
    branches = z.unbind(-2)
    y = dendritic_combine(branches[0], branches[1:], gate, cascade, activation, channel_dim=-1)
    return _anchor(y, cascade) if d == 1 else y


def dendritic_linear_loop(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    activation="sigmoid",
) -> torch.Tensor:
    """Independent check: one layer call per dendrite, explicit loops, no stacking."""
    act = resolve_activation(activation)
    y = F.linear(x, weight, bias)
    acts = []
    for i in range(dendrite_weight.shape[0]):
        s = F.linear(x, dendrite_weight[i], None if dendrite_bias is None else dendrite_bias[i])
        for j in range(i):
            s = s + cascade[i, j] * acts[j]
        acts.append(act(s))
        y = y + gate[i] * acts[i]
    return y


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def dendritic_conv_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation="sigmoid",
) -> torch.Tensor:
    """Dendritic Conv{1,2,3}d as one convolution of width (1+D)*C_out over stacked weights.

    With groups > 1 the stacked output channels are ordered group-major ([g, 1+D, C_out/g]) so that
    every group of the big convolution still sees only its own input channels.
    """
    nd = weight.dim() - 2
    conv = _CONV[nd]
    d = dendrite_weight.shape[0]
    if d == 0:
        return _anchor(
            conv(x, weight, bias, stride, padding, dilation, groups), dendrite_weight, dendrite_bias, gate, cascade
        )
    unbatched = x.dim() == nd + 1
    if unbatched:
        x = x.unsqueeze(0)
    c_out = weight.shape[0]
    w = _stack(weight, dendrite_weight)  # [1+D, C_out, C_in/g, *k]
    b = None if bias is None else _stack(bias, dendrite_bias)  # [1+D, C_out]
    if groups > 1:
        w = w.unflatten(1, (groups, c_out // groups)).transpose(0, 1)
        b = None if b is None else b.unflatten(1, (groups, c_out // groups)).transpose(0, 1)
    w = w.reshape((1 + d) * c_out, *weight.shape[1:])
    b = None if b is None else b.reshape(-1)
    z = conv(x, w, b, stride, padding, dilation, groups)
    if groups > 1:
        z = z.unflatten(1, (groups, 1 + d, c_out // groups)).transpose(1, 2).flatten(2, 3)
    else:
        z = z.unflatten(1, (1 + d, c_out))
    branches = z.unbind(1)
    y = dendritic_combine(branches[0], branches[1:], gate, cascade, activation, channel_dim=1)
    if d == 1:
        y = _anchor(y, cascade)
    return y.squeeze(0) if unbatched else y


def dendritic_conv_loop(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation="sigmoid",
) -> torch.Tensor:
    """Independent check for the conv: one convolution per dendrite."""
    act = resolve_activation(activation)
    conv = _CONV[weight.dim() - 2]
    view = (-1,) + (1,) * (weight.dim() - 2)
    y = conv(x, weight, bias, stride, padding, dilation, groups)
    acts = []
    for i in range(dendrite_weight.shape[0]):
        c = None if dendrite_bias is None else dendrite_bias[i]
        s = conv(x, dendrite_weight[i], c, stride, padding, dilation, groups)
        for j in range(i):
            s = s + cascade[i, j].view(view) * acts[j]
        acts.append(act(s))
        y = y + gate[i].view(view) * acts[i]
    return y
