"""Backend choice, in one place.

Backends: ``torch`` (plain PyTorch, pai_fast.reference: runs everywhere), ``triton`` (pai_fast.kernels) and
``cuda`` (csrc/ through pai_fast._C). Precedence: the ``backend=`` argument of a functional op, then
``pai_fast.set_backend(...)``, then the environment variable ``PAI_FAST_BACKEND``, then ``auto``.

``auto`` picks the fastest fused backend that can run the inputs (order per device and shape class from the measured
table in ``AUTO_TABLE``; see benchmarks/results/) and otherwise falls back to ``torch``, warning once per reason
when the inputs are on a GPU (on a CPU, torch is simply the right choice). An explicitly requested
backend that cannot run raises ``BackendUnavailableError`` listing every reason.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings

import torch

from .activations import FUSED_CODES

BACKENDS = ("torch", "triton", "cuda")
CHOICES = ("auto",) + BACKENDS
# `auto`'s order of fused backends per device class (CUDA compute capability major) and shape class, read off the
# measured tables in benchmarks/results/README.md. Hopper (9), H200, bf16, wall clock, three runs (df22e16, c2a333a
# and session 18's): Triton is ahead of the cuda backend in every Linear row, the small layers included (host-bound:
# forward+backward 0.21-0.64 ms against 0.40-0.97 ms) and 8192x4096->4096 (forward 1.04-1.05x of the limit against
# 1.08-1.16x). The cuda backend comes second for Linear layers, for inputs Triton cannot take (it is ahead of the
# eager torch backend there: 1.7-4.1x on the small layers' forward+backward, 1.16x / 1.25x of the limit at 8192
# D = 1); its convs are its generic kernels, several times slower and not measured against torch, so none. (An older
# H100 table, "Small layers, bf16" there, had the cuda backend ahead on small Linear layers, before Triton's launch
# path shed ~200 us of host time per call; these runs supersede it.) At 133010e (session 22) the cuda forward at
# 8192x4096->4096 moved level with Triton's (D = 3: 1.02x of the limit against 1.07x; D = 1: 1.07x against 1.04x),
# while Triton stays ahead in forward+backward (1.07x / 1.09x against 1.10x / 1.10x), so the order stands; an inference
# column would need its own measured rows. A device class without a measured row takes DEFAULT_DEVICE_CLASS's.
SHAPE_CLASSES = ("small_linear", "linear", "conv")
AUTO_TABLE: dict[int, dict[str, tuple[str, ...]]] = {
    9: {"small_linear": ("triton", "cuda"), "linear": ("triton", "cuda"), "conv": ("triton",)},
}
DEFAULT_DEVICE_CLASS = 9
SMALL_LINEAR_WORK = 1 << 31  # rows * K * N * (1 + D) multiply-adds; measured small cases <= 1.1e9, large 1.4e11
# Few rows with a long K (batch-1 inference of a wide layer): the fused kernels have no split-K, so a handful of
# programs each walk all of K; cuBLAS's GEMV-style kernels over the stacked weight (the torch backend) win there
# (MNIST CNN fc 9216->128, D=3, batch 1 with CUDA graphs: 0.81 -> 0.21 ms for the whole net on the H100).
FEW_ROWS, LONG_K = 64, 2048


def device_class(device: torch.device) -> int:
    """The row of AUTO_TABLE for a device: its compute capability major where measured, else the default."""
    if device.type == "cuda":
        major = device_capability(device)[0]
        if major in AUTO_TABLE:
            return major
    return DEFAULT_DEVICE_CLASS


def shape_class(kind: str, x: torch.Tensor, weight: torch.Tensor, d: int) -> str | None:
    """The call's shape class (a column of AUTO_TABLE), or None where the torch backend is the faster choice."""
    if kind == "linear" and x.dim() >= 1 and weight.dim() == 2:
        k = x.shape[-1]
        rows = x.numel() // k if k else 0
        if rows < FEW_ROWS and k >= LONG_K:
            return None
        return "small_linear" if rows * k * weight.shape[0] * (1 + d) <= SMALL_LINEAR_WORK else "linear"
    return "conv" if kind == "conv" else "linear"


def auto_order(kind: str, x: torch.Tensor, weight: torch.Tensor, d: int) -> tuple[str, ...]:
    """The fused backends ``auto`` tries, in order, for this call's device and shape class (empty: the torch backend
    is the faster choice, taken without a fallback warning)."""
    cls = shape_class(kind, x, weight, d)
    return () if cls is None else AUTO_TABLE[device_class(x.device)][cls]


_selected: str | None = None
_warned: set[str] = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs; the message lists why."""


def _check_name(name: str, what: str = "backend") -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"{what}: expected one of {list(CHOICES)}, got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Set the process-wide backend ("auto", "torch", "triton", "cuda"); None restores the default."""
    global _selected
    _selected = None if name is None else _check_name(name)


# What a fused backend module (pai_fast.kernels, pai_fast.cuda_backend) provides to pai_fast.ops.
FUSED_BACKEND_API = (
    "linear_fwd",
    "linear_bwd",
    "linear_bwd_packed",
    "conv_fwd",
    "conv_bwd",
    "conv_bwd_packed",
    "supports",
)


def get_backend() -> str:
    """The backend requested for this process (before per-input resolution)."""
    if _selected is not None:
        return _selected
    env = os.environ.get("PAI_FAST_BACKEND")
    return _check_name(env, "PAI_FAST_BACKEND") if env else "auto"


def interpreting() -> bool:
    """True when Triton runs in its CPU interpreter (TRITON_INTERPRET=1): used by CI to test kernels."""
    return os.environ.get("TRITON_INTERPRET") == "1"


_MODULE_REASONS: dict[str, tuple[str, ...]] = {}


def module_reasons(name: str) -> tuple[str, ...]:
    """Why a backend's code cannot be loaded at all in this process (empty = loadable); cached."""
    if name not in _MODULE_REASONS:
        _MODULE_REASONS[name] = _load(name)
    return _MODULE_REASONS[name]


def warm() -> None:
    """Load the fused backends up front where they can run (a GPU, or Triton's interpreter), so that
    torch.compile later finds them cached instead of tracing imports (a graph break)."""
    if torch.cuda.is_available() or interpreting():
        for name in BACKENDS:
            module_reasons(name)


def _load(name: str) -> tuple[str, ...]:
    if name == "torch":
        return ()
    if name == "triton":
        try:
            importlib.import_module("triton")
        except Exception as e:  # ImportError, or a broken triton install
            return (f"triton is not importable ({type(e).__name__}: {e})",)
        try:
            importlib.import_module("pai_fast.kernels")
        except Exception as e:
            return (f"pai_fast.kernels failed to import ({type(e).__name__}: {e})",)
        return ()
    if name == "cuda":
        try:
            importlib.import_module("pai_fast._C")
        except Exception as e:
            return (
                f"the CUDA extension pai_fast._C is not built or not loadable ({type(e).__name__}: {e}); "
                "reinstall with nvcc on PATH (PAI_FAST_BUILD_CUDA=1)",
            )
        return ()
    raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {name!r}")


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) of a CUDA device, queried once per device (the ops ask on every call)."""
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


def backend_module(name: str):
    """The launcher module of a fused backend (contract: linear_fwd/bwd, conv_fwd/bwd, supports)."""
    mod = "pai_fast.kernels" if name == "triton" else "pai_fast.cuda_backend"
    # Already imported by module_reasons(); a sys.modules lookup keeps torch.compile from tracing importlib.
    return sys.modules[mod] if mod in sys.modules else importlib.import_module(mod)


def input_reasons(
    name: str, kind: str, x: torch.Tensor, weight: torch.Tensor, d: int, activation: str | None, groups: int = 1
) -> list[str]:
    """Why backend ``name`` cannot run op ``kind`` ("linear" or "conv") on these inputs (empty = it can)."""
    if name == "torch":
        return []
    reasons = list(module_reasons(name))
    if reasons:
        return reasons
    if x.device.type == "cuda":
        cap = device_capability(x.device)
        if cap < (8, 0):
            reasons.append(f"needs an NVIDIA GPU of compute capability >= 8.0, got {cap[0]}.{cap[1]}")
    elif not (name == "triton" and interpreting()):
        reasons.append(f"needs CUDA tensors, got a tensor on {x.device}")
    if activation is None or activation not in FUSED_CODES:
        reasons.append(f"activation must be one of {sorted(FUSED_CODES)} (a custom callable runs on torch)")
    if kind == "conv" and groups != 1:
        reasons.append(f"fused conv supports groups=1, got groups={groups}")
    if not reasons:
        reasons.extend(backend_module(name).supports(kind, x, weight, d, activation))
    return reasons


def choose(
    kind: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    d: int,
    activation: str | None,
    requested: str | None = None,
    groups: int = 1,
) -> str:
    """Resolve the backend for one call."""
    req = get_backend() if requested is None else _check_name(requested)
    if req == "torch":
        return "torch"
    if req != "auto":
        reasons = input_reasons(req, kind, x, weight, d, activation, groups)
        if reasons:
            raise BackendUnavailableError(
                f"backend {req!r} cannot run dendritic_{kind} with x {list(x.shape)} {x.dtype} on {x.device}, "
                f"D={d}, activation={activation!r}: " + "; ".join(reasons)
            )
        return req
    if x.device.type != "cuda" and not interpreting():
        return "torch"
    all_reasons = []
    order = auto_order(kind, x, weight, d)
    for name in order:
        reasons = input_reasons(name, kind, x, weight, d, activation, groups)
        if not reasons:
            return name
        all_reasons.append(f"{name}: " + "; ".join(reasons))
    if order and x.device.type == "cuda":
        msg = "pai_fast: falling back to the torch backend (" + " | ".join(all_reasons) + ")"
        if msg not in _warned:
            _warned.add(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return "torch"


def report() -> dict[str, list[str]]:
    """Backend -> reasons it is unavailable in this process on the current device (empty list = available)."""
    out: dict[str, list[str]] = {}
    for name in BACKENDS:
        reasons = list(module_reasons(name))
        if (
            name != "torch"
            and not reasons
            and not torch.cuda.is_available()
            and not (name == "triton" and interpreting())
        ):
            reasons.append("no CUDA GPU visible")
        out[name] = reasons
    return out
