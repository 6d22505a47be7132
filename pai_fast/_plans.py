"""Per-signature caches of the host-side work that depends only on a call's shapes, dtypes and devices.

Small layers are host-bound: validating seven tensors and resolving the backend cost more host time than the GPU
spends on the layer. A call signature (each tensor's shape, dtype and device, or None, plus the call's plain
arguments) determines that work's outcome, so it runs once per signature and later calls look it up. Not while
torch.compile traces (the checks then run every time, as plain code) nor for signatures that are not hashable
(symbolic shapes): those calls take the full path.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

_MAX_PLANS = 512


_serials = itertools.count(1)


def serial() -> int:
    """A number no other plan of this process has: launch caches key on it (kernels._launch.Launcher) without
    holding the plan, and a number is never reused after its plan is dropped."""
    return next(_serials)


def aligned16(tensors: Sequence[torch.Tensor | None]) -> bool | tuple[bool, ...]:
    """The pointer-alignment part of a launch or plan key: True when every tensor's data is 16-byte aligned (the
    usual case, one OR), else each tensor's own flag (Triton specializes each pointer on it; csrc picks vector paths
    by it). None counts as aligned."""
    acc = 0
    for t in tensors:
        if t is not None:
            acc |= t.data_ptr()
    if acc & 15 == 0:
        return True
    return tuple(t is None or t.data_ptr() & 15 == 0 for t in tensors)


class PlanCache:
    """``cache.get(tensors, extra, make)``: ``make()``'s result for this signature, computed once. A ``make()``
    that raises is not cached (bad input raises on every call). With ``strides=True`` the signature holds each
    tensor's strides too (plans that carry a kernel's stride arguments)."""

    def __init__(self, strides: bool = False) -> None:
        self._plans: dict = {}
        self._strides = strides

    def get(self, tensors: Sequence[torch.Tensor | None], extra: tuple, make: Callable[[], Any]) -> Any:
        if torch.compiler.is_compiling():
            return make()
        try:
            if self._strides:
                key = (*[None if t is None else (t.shape, t.stride(), t.dtype, t.device) for t in tensors], *extra)
            else:
                key = (*[None if t is None else (t.shape, t.dtype, t.device) for t in tensors], *extra)
            hit = self._plans.get(key)
        except (AttributeError, TypeError):  # not tensors (make() names the argument), or unhashable (symbolic)
            return make()
        if hit is None:
            hit = make()
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = hit
        return hit

    def clear(self) -> None:
        self._plans.clear()
