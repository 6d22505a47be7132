"""Packed layouts of a dendritic layer's weights and gradients.

Weights: ``weight`` [N, *rest] and ``dendrite_weight`` [D, N, *rest] back to back in one storage are Wcat
[1 + D, N, *rest] for free (stacked_view); DendriticLinear/Conv keep them so (DendriteMixin._pack_weights).

Gradients: the fused backward ops hand back the parameter gradients as two packed tensors:

    dwcat   [(1 + D) * N, *rest]   dweight, then ddendrite_weight (row blocks in branch order), weight dtype
    dsmall  [1 + 2D + D*D, N]      dbias, ddendrite_bias [D], dgate [D], dcascade [D * D], gate dtype

Two outputs instead of six: one allocation, one reduction and one cast each, and no copies to keep the op's
outputs from aliasing one another (the views are taken after the op, in the autograd backward). The bias rows are
not meaningful for a layer without bias (the autograd backward returns None for it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def small_rows(d: int) -> int:
    """Rows of dsmall for D dendrites."""
    return 1 + 2 * d + d * d


def split_small(dsmall: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dbias [N], ddendrite_bias [D, N], dgate [D, N], dcascade [D, D, N]) as views of dsmall."""
    n = dsmall.shape[1]
    db, ddb, dg, dc = dsmall.split_with_sizes((1, d, d, d * d))  # one op for four views (small layers: host time)
    return db.view(n), ddb, dg, dc.view(d, d, n)


def split_weights(dwcat: torch.Tensor, weight_shape, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dweight, ddendrite_weight) as views of dwcat."""
    n = weight_shape[0]
    dw, ddw = dwcat.split_with_sizes((n, d * n))
    return dw, ddw.view(d, *weight_shape)


def unpack_grads(
    dx: torch.Tensor, dwcat: torch.Tensor, dsmall: torch.Tensor, weight: torch.Tensor, d: int
) -> tuple[torch.Tensor, ...]:
    """The seven gradients (dx, dweight, dbias, ddendrite_weight, ddendrite_bias, dgate, dcascade) as views."""
    dw, ddw = split_weights(dwcat, weight.shape, d)
    db, ddb, dg, dc = split_small(dsmall, d)
    return dx, dw, db, ddw, ddb, dg, dc


def seven_grads(packed_backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Callable:
    """The seven-gradient form of a packed backward launcher (arguments: grad_y, x, weight, dendrite_weight, ...):
    (dx, dweight, dbias, ddendrite_weight, ddendrite_bias, dgate, dcascade) as views of its packed gradients."""

    @functools.wraps(packed_backward)
    def backward(grad_y, x, weight, dendrite_weight, *rest):
        packed = packed_backward(grad_y, x, weight, dendrite_weight, *rest)
        return unpack_grads(*packed, weight, 0 if dendrite_weight is None else dendrite_weight.shape[0])

    backward.__name__ = backward.__qualname__ = packed_backward.__name__.removesuffix("_packed")
    backward.__doc__ = (
        "(dx, dweight, dbias, ddendrite_weight, ddendrite_bias, dgate, dcascade) as views of the packed gradients of "
        f"{packed_backward.__name__}, which takes the same arguments."
    )
    return backward


def _named_format(t: torch.Tensor) -> torch.memory_format | None:
    """The memory format t is dense in (contiguous, channels_last for 4-D, channels_last_3d for 5-D), else None.
    In each, dim 0 is outermost: [1 + D, *t.shape] stacks with strides (t.numel(), *t.stride())."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def stacked_strides(weight: torch.Tensor) -> tuple[int, ...] | None:
    """Strides of a stacked Wcat [1 + D, *weight.shape] that keeps weight's memory format, or None when weight is
    in none of the named formats (DendriteMixin._pack_weights then stacks contiguously)."""
    return None if _named_format(weight) is None else (weight.numel(), *weight.stride())


def stacked_view(weight: torch.Tensor, dendrite_weight: torch.Tensor, flat: bool = False) -> torch.Tensor | None:
    """Wcat [1 + D, N, *rest] (flat: [(1 + D) * N, *rest]) as a zero-copy view when both sit back to back in
    memory in one named memory format (contiguous, or channels_last after module.to(memory_format=...)), else
    None."""
    if dendrite_weight.data_ptr() != weight.data_ptr() + weight.numel() * weight.element_size():
        return None
    strides = stacked_strides(weight)
    d = dendrite_weight.shape[0]
    if strides is None or dendrite_weight.stride()[1:] != weight.stride():
        return None
    if d > 1 and dendrite_weight.stride(0) != strides[0]:
        return None
    n = weight.shape[0]
    shape = (1 + d, *weight.shape)
    if flat:
        shape, strides = ((1 + d) * n, *weight.shape[1:]), weight.stride()
    try:  # as_strided checks the view against weight's storage: adjacent memory of another storage fails here
        return weight.as_strided(shape, strides)
    except RuntimeError:
        return None


def weight_rows_like(dwcat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dwcat [(1 + D) N, *rest] in weight's memory format (a no-op when it already is), so that the dweight /
    ddendrite_weight views have their parameters' strides and autograd accumulates them without a copy. The fused
    backends and the ops' fake kernels all pass their dwcat through here, so their strides agree."""
    return dwcat.contiguous(memory_format=_named_format(weight) or torch.contiguous_format)


def conv_channels_last(x: torch.Tensor) -> bool:
    """Whether a conv of x writes channels-innermost outputs (as cuDNN's convs keep the input's memory format): x is
    a dense channels_last (4-D) / channels_last_3d (5-D) tensor and not also a contiguous one (C = 1 or 1x1 maps)."""
    nd = x.dim()
    if nd == 4:
        return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if nd == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    return False


def conv_empty(x: torch.Tensor, lead: tuple[int, ...], out_sp: tuple[int, ...] | list[int]) -> torch.Tensor:
    """An uninitialised conv output [*lead, *out_sp] (lead = (B, C) or (B, D, C)) in x's dtype and device, laid out
    as conv_channels_last(x) says: the lead dims past the batch innermost (channels last), else contiguous. The
    fused backends and the ops' fake kernels all allocate through here, so their strides agree."""
    out_sp = tuple(out_sp)
    if not conv_channels_last(x):
        return x.new_empty((*lead, *out_sp))
    t = x.new_empty((lead[0], *out_sp, *lead[1:]))
    return t.permute(0, *range(1 + len(out_sp), t.dim()), *range(1, 1 + len(out_sp)))
