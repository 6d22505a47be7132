"""Shared test helpers: random dendritic parameters, float64 comparison, per-dtype tolerances."""

from __future__ import annotations

import torch

# Fixed floors (atol, rtol) per dtype; kernels must also meet the 2x/3x-of-torch-error rule on the GPU.
TOL = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (1e-1, 5e-2),
}


def dendrite_params(weight_shape, d, bias=True, dtype=torch.float32, device="cpu", scale=0.5, generator=None):
    """Random (not zero) dendrite parameters: weight, bias, dendrite_weight, dendrite_bias, gate, cascade."""
    n = weight_shape[0]
    fan_in = 1
    for s in weight_shape[1:]:
        fan_in *= s
    g = dict(device=device, dtype=dtype)
    w = torch.randn(weight_shape, **g) / fan_in**0.5
    dw = torch.randn((d, *weight_shape), **g) / fan_in**0.5
    b = torch.randn(n, **g) * scale if bias else None
    db = torch.randn(d, n, **g) * scale if bias else None
    gate = torch.randn(d, n, **g)
    cascade = torch.randn(d, d, n, **g) * scale
    return w, b, dw, db, gate, cascade


def noncontig(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous storage (every other element of a wider buffer)."""
    if t.dim() == 0 or t.numel() == 0:
        return t
    big = torch.empty((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    out = big[..., ::2]
    assert not out.is_contiguous() or t.shape[-1] <= 1
    return out


def to64(*ts):
    return [None if t is None else t.detach().double() for t in ts]


def cuda_kernel_names(fn) -> list[str]:
    """The CUDA kernels fn() launches, in order (torch.profiler; fn runs once, after a warm-up call that plans,
    compiles and allocates what later calls reuse)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def stack_weights(weight: torch.Tensor, dendrite_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight and dendrite_weight copied back to back into one buffer, as the modules keep them."""
    buf = torch.cat([weight.reshape(-1), dendrite_weight.reshape(-1)])
    return buf[: weight.numel()].view_as(weight), buf[weight.numel() :].view_as(dendrite_weight)
