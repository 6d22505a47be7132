"""Input checks for the functional ops: one place, messages that name the argument, the expectation and
what came. Never ``assert``: user input is validated with exceptions that survive ``python -O``."""

from __future__ import annotations

import torch

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _tensor(name: str, t, optional: bool = False) -> None:
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {list(expected)}, got {list(t.shape)}")


def _same(x: torch.Tensor, named: dict[str, torch.Tensor | None]) -> None:
    for name, t in named.items():
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")


def _dendrites(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
) -> int:
    if dendrite_weight.dim() != weight.dim() + 1:
        raise ValueError(
            f"dendrite_weight: expected shape [D, {', '.join(map(str, weight.shape))}], "
            f"got {list(dendrite_weight.shape)}"
        )
    d = dendrite_weight.shape[0]
    n = weight.shape[0]
    _shape("dendrite_weight", dendrite_weight, (d, *weight.shape))
    if (bias is None) != (dendrite_bias is None):
        raise ValueError(
            "dendrite_bias: expected a tensor exactly when bias is given (dendrites are copies of the layer), "
            f"got bias={'None' if bias is None else 'tensor'} and "
            f"dendrite_bias={'None' if dendrite_bias is None else 'tensor'}"
        )
    if bias is not None:
        _shape("bias", bias, (n,))
        _shape("dendrite_bias", dendrite_bias, (d, n))
    _shape("dendrite_gate", gate, (d, n))
    _shape("dendrite_cascade", cascade, (d, d, n))
    return d


def check_linear(x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade) -> int:
    """Validate dendritic_linear inputs; returns D."""
    for name, t, opt in (
        ("x", x, False),
        ("weight", weight, False),
        ("bias", bias, True),
        ("dendrite_weight", dendrite_weight, False),
        ("dendrite_bias", dendrite_bias, True),
        ("dendrite_gate", gate, False),
        ("dendrite_cascade", cascade, False),
    ):
        _tensor(name, t, opt)
    if x.dtype not in _FLOAT:
        raise TypeError(f"x: expected a floating-point tensor (float16, bfloat16, float32, float64), got {x.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected shape [out_features, in_features], got {list(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x: expected shape [..., {weight.shape[1]}] (last dim = in_features of weight), got {list(x.shape)}"
        )
    _same(
        x,
        {
            "weight": weight,
            "bias": bias,
            "dendrite_weight": dendrite_weight,
            "dendrite_bias": dendrite_bias,
            "dendrite_gate": gate,
            "dendrite_cascade": cascade,
        },
    )
    return _dendrites(weight, bias, dendrite_weight, dendrite_bias, gate, cascade)


def check_conv(nd, x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, groups) -> int:
    """Validate dendritic_conv{nd}d inputs; returns D."""
    for name, t, opt in (
        ("x", x, False),
        ("weight", weight, False),
        ("bias", bias, True),
        ("dendrite_weight", dendrite_weight, False),
        ("dendrite_bias", dendrite_bias, True),
        ("dendrite_gate", gate, False),
        ("dendrite_cascade", cascade, False),
    ):
        _tensor(name, t, opt)
    if x.dtype not in _FLOAT:
        raise TypeError(f"x: expected a floating-point tensor (float16, bfloat16, float32, float64), got {x.dtype}")
    if weight.dim() != nd + 2:
        raise ValueError(
            f"weight: expected {nd + 2} dims [out_channels, in_channels/groups, *kernel_size], "
            f"got shape {list(weight.shape)}"
        )
    if x.dim() not in (nd + 1, nd + 2):
        raise ValueError(
            f"x: expected {nd + 2} dims [batch, channels, *spatial] (or {nd + 1} unbatched) for conv{nd}d, "
            f"got shape {list(x.shape)}"
        )
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    c_out, c_in_g = weight.shape[:2]
    if c_out % groups:
        raise ValueError(f"groups: expected a divisor of out_channels={c_out}, got {groups}")
    c_in = x.shape[-nd - 1]
    if c_in != c_in_g * groups:
        raise ValueError(
            f"x: expected {c_in_g * groups} input channels (weight.shape[1] * groups), got {c_in} "
            f"(x shape {list(x.shape)})"
        )
    _same(
        x,
        {
            "weight": weight,
            "bias": bias,
            "dendrite_weight": dendrite_weight,
            "dendrite_bias": dendrite_bias,
            "dendrite_gate": gate,
            "dendrite_cascade": cascade,
        },
    )
    return _dendrites(weight, bias, dendrite_weight, dendrite_bias, gate, cascade)
