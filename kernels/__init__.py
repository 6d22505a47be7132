"""pai_fast.kernels: the ``triton`` backend (fused Triton kernels for dendritic Linear and Conv layers).

Launcher contract (CONTRACT.md): linear_fwd, linear_bwd, conv_fwd, conv_bwd, supports; the ops call the
*_bwd_packed forms, which return the parameter gradients packed (pai_fast._layout). One file per op:
dendritic_linear.py, dendritic_conv.py; _common.py holds the shared epilogue and the backward dZ kernel.

Importing this package never fails for want of Triton: without it, ``supports`` returns the reason and every
launcher raises ImportError naming it. Set TRITON_INTERPRET=1 BEFORE the first import to run the kernels on CPU
tensors in Triton's interpreter (CI; fp32/fp64, small shapes).

On the GPU the forward kernels autotune on the first call of each shape bucket (a few candidates, see
_common.CONFIG_POOLS). PAI_FAST_TRITON_AUTOTUNE=0 or set_autotune(False) switches to a fixed heuristic config (no
benchmarking, so even the first call can be captured in a CUDA graph); use_config(cfg) forces one config (tests).
The Linear backward of a small layer (M (1 + D) N K up to dendritic_linear.onepass_max_macs(dtype), 1 <= D <= 3) is
one launch that recomputes dZ inside both GEMMs; larger layers run the dZ kernel, then cuBLAS. backward_path(path)
forces one (tests); the split backward sums the dZ kernel's partial reductions inside the dZ launch (three
launches in all: dZ, dX, dW), or with torch.sum after it under dz_finish("torch"). After the first call of a shape,
launches skip Triton's per-call argument binding (_launch.py); PAI_FAST_TRITON_FAST_LAUNCH=0 or
set_fast_launch(False) turns that off.
"""

from __future__ import annotations

import os

import torch

from ..backends import FUSED_BACKEND_API, device_capability

__all__ = [*FUSED_BACKEND_API, "set_autotune", "use_config", "backward_path", "dz_finish", "set_fast_launch",
           "IMPORT_ERROR"]  # fmt: skip

try:
    import triton  # noqa: F401
except Exception as _e:  # ImportError, or a broken install (e.g. missing driver libraries)
    IMPORT_ERROR: str | None = f"triton is not importable ({type(_e).__name__}: {_e})"
else:
    IMPORT_ERROR = None

if IMPORT_ERROR is None:
    from ._common import (
        ACT_CODES,
        ALL_CONFIGS,
        INTERPRET,
        MAX_D,
        SUPPORTED_DTYPES,
        backward_path,
        dz_finish,
        set_autotune,
        use_config,
    )
    from ._launch import set_fast_launch
    from .dendritic_conv import conv_bwd, conv_bwd_packed, conv_fwd
    from .dendritic_linear import linear_bwd, linear_bwd_packed, linear_fwd
else:
    ACT_CODES = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3}
    MAX_D = 31
    SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

    def _missing(*args, **kwargs):
        raise ImportError(f"pai_fast.kernels (the triton backend) cannot run: {IMPORT_ERROR}; pip install triton")

    linear_fwd = linear_bwd = linear_bwd_packed = conv_fwd = conv_bwd = conv_bwd_packed = _missing
    set_autotune = use_config = backward_path = dz_finish = set_fast_launch = _missing
    ALL_CONFIGS = []


def supports(kind: str, x: torch.Tensor, weight: torch.Tensor, D: int, activation: str) -> list[str]:
    """Reasons why the triton backend can NOT run op ``kind`` ("linear" / "conv") on these inputs; [] = it can."""
    if IMPORT_ERROR is not None:
        return [IMPORT_ERROR]
    reasons = []
    if kind not in ("linear", "conv"):
        reasons.append(f"kind must be 'linear' or 'conv', got {kind!r}")
    if activation not in ACT_CODES:
        reasons.append(f"activation must be one of {sorted(ACT_CODES)}, got {activation!r}")
    if x.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"x dtype must be one of {[str(t) for t in SUPPORTED_DTYPES]}, got {x.dtype}")
    if weight.dtype != x.dtype:
        reasons.append(f"weight dtype must equal x dtype ({x.dtype}), got {weight.dtype}")
    if weight.device != x.device:
        reasons.append(f"weight must be on x's device {x.device}, got {weight.device}")
    if x.device.type == "cuda":
        major, minor = device_capability(x.device)
        if (major, minor) < (8, 0):
            reasons.append(f"needs compute capability >= 8.0, got {major}.{minor}")
    elif INTERPRET:
        if x.device.type != "cpu":
            reasons.append(f"under TRITON_INTERPRET=1 x must be on the CPU, got {x.device}")
        if x.dtype == torch.bfloat16:
            reasons.append("bfloat16 arithmetic is wrong in the Triton interpreter (use fp32/fp64 there)")
    else:
        reasons.append(
            f"needs CUDA tensors, got a tensor on {x.device} (CPU runs only in Triton's interpreter: set "
            "TRITON_INTERPRET=1 before pai_fast.kernels is first imported)"
        )
    if not isinstance(D, int) or D < 0:
        reasons.append(f"D must be a non-negative int, got {D!r}")
    elif D > MAX_D:
        reasons.append(f"D={D} dendrites: the fused triton kernels unroll the cascade and support D <= {MAX_D}")
    if kind == "linear":
        if x.dim() != 2 or weight.dim() != 2:
            reasons.append(f"linear wants x [M, K] and weight [N, K], got {x.dim()}-D x and {weight.dim()}-D weight")
    elif kind == "conv":
        nd = weight.dim() - 2
        if nd not in (1, 2, 3):
            reasons.append(f"conv weight must be 3-, 4- or 5-D (Conv1d/2d/3d), got {weight.dim()}-D")
        elif x.dim() != nd + 2:
            reasons.append(f"conv wants batched x of {nd + 2} dims [B, C, *spatial], got {x.dim()}-D")
        elif x.shape[1] != weight.shape[1]:
            reasons.append(
                f"conv supports groups=1 only: x has {x.shape[1]} channels, weight expects {weight.shape[1]} per group"
            )
    return reasons
