"""The ``cuda`` backend: torch-side adapter over the torch-free CUDA kernels in csrc/ (module pai_fast._C).

Math (spec §2.3), for D dendrites and act in {identity, sigmoid, tanh, relu}:

    z_0 = x W^T + b ; u_i = x V_i^T + c_i ; s_i = u_i + sum_{j<i} B[i,j] a_j ; a_i = act(s_i)
    y = z_0 + sum_i G[i] a_i
    backward: dz_0 = dy ; da_i = G[i] dy + sum_{k>i} B[k,i] ds_k ; ds_i = da_i act'(a_i) ;
              dG[i] = sum dy a_i ; dB[k,i] = sum ds_k a_i (i<k) ; db = sum dy ; dc_i = sum ds_i ;
              dX = dZcat Wcat ; dWcat = dZcat^T X

Forward is one kernel. The backward of a small Linear layer (1 <= D <= 3, up to 2^24 multiply-adds per GEMM) is one
launch, csrc/onepass.cu, which recomputes dZcat inside both GEMMs and sums the reductions in a fixed
order; otherwise it is a dZ kernel (deterministic partial sums), a fixed-order reduction and two GEMMs (csrc/*.cu).
PAI_FAST_CUDA_BACKWARD=onepass|split forces either (read by _C at each call). On sm_90 with a build that has CUTLASS
(PAI_FAST_CUTLASS), 16-bit Linear layers with D <= 7 and in_features % 8 == 0 run the forward on a CUTLASS TMA + wgmma
mainloop over neuron-interleaved packed weights (packed once per weight version, see _packed) with the same epilogue,
and the backward's two GEMMs on CUTLASS when the weights are stacked in one storage (DendriticLinear's layout);
PAI_FAST_CUDA_SM90=0 turns both off.
This module allocates outputs with torch, then passes data pointers, sizes, strides and
the current stream to pai_fast._C, which contains no torch code (one build serves any torch version).
Reference: pai_fast.reference.dendritic_linear_ref / dendritic_conv_ref.

The module imports without a GPU and without _C; ``supports`` then lists why it cannot run.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch

from ._layout import conv_empty, seven_grads, small_rows, split_small, split_weights, weight_rows_like
from ._plans import PlanCache, aligned16
from .backends import FUSED_BACKEND_API, device_capability

try:  # the extension is optional: pure-Python installs and CPU-only machines lack it
    from . import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR: str | None = None
except ImportError as e:  # pragma: no cover - depends on the build
    _C = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

__all__ = [*FUSED_BACKEND_API, "available", "build_info", "clear_packed_weights", "sm90_enabled"]

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
# Same codes as pai_fast.activations.FUSED_CODES and csrc/include/pai_fast/dendritic.h.
_ACTS = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3}
MAX_DENDRITES = 127


def available() -> bool:
    """True when the compiled extension pai_fast._C imported."""
    return _C is not None


def build_info() -> dict:
    """Build facts of pai_fast._C (archs, nvcc version, CUDA runtime/driver); raises if it is not built."""
    return _lib().build_info()


def _emulated() -> bool:
    return bool(getattr(_C, "EMULATED", False))


def _lib():
    if _C is None:
        raise RuntimeError(
            f"pai_fast._C (the CUDA extension) is not available ({_IMPORT_ERROR}); "
            "reinstall with nvcc on PATH and PAI_FAST_BUILD_CUDA=1, or use backend='torch'/'triton'"
        )
    return _C


def _t(t: torch.Tensor | None):
    """(data_ptr, sizes, strides) for _C, or None."""
    return None if t is None else (t.data_ptr(), t.shape, t.stride())


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # CUDA builds of torch only


def _stream(t: torch.Tensor) -> int:
    """The current stream of t's device as an int (0 for CPU tensors, the emulated extension's case). The raw getter
    skips the Stream object that torch.cuda.current_stream builds: small layers are host-bound."""
    return _raw_stream(t.get_device()) if t.is_cuda else 0


class _DeviceGuard:
    """Make t's device current for the runtime calls of _C (cheap no-op when it already is)."""

    __slots__ = ("_prev", "_idx")

    def __init__(self, t: torch.Tensor):
        self._idx = t.device.index if t.is_cuda else None
        self._prev = None

    def __enter__(self):
        if self._idx is not None:
            cur = torch.cuda.current_device()
            if cur != self._idx:
                self._prev = cur
                torch.cuda.set_device(self._idx)
        return self

    def __exit__(self, *exc):
        if self._prev is not None:
            torch.cuda.set_device(self._prev)
        return False


def _dtype_code(x: torch.Tensor) -> int:
    code = _DTYPES.get(x.dtype)
    if code is None:
        raise ValueError(f"x: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    return code


def _act_code(activation: str) -> int:
    code = _ACTS.get(activation) if isinstance(activation, str) else None
    if code is None:
        raise ValueError(f"activation: expected one of {sorted(_ACTS)}, got {activation!r}")
    return code


def _check_same(x: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise ValueError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (the device of x), got {t.device}")


def _allow_tf32(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and bool(torch.backends.cuda.matmul.allow_tf32)


def _flat_spatial(t: torch.Tensor, first: int) -> torch.Tensor:
    """t unchanged if dims first.. can be viewed as one (NCHW / channels_last / broadcast), else a copy."""
    expect = None
    for d in range(t.dim() - 1, first - 1, -1):
        size = t.shape[d]
        if size == 0:
            return t
        if size == 1:
            continue
        if expect is not None and t.stride(d) != expect:
            return t.contiguous()
        expect = t.stride(d) * size
    return t


def _flat_weight(w: torch.Tensor, lead: int) -> torch.Tensor:
    """Conv weights must be viewable as [(D,) Cout, Cin*prod(k)]; parameters always are."""
    return _flat_spatial(w, lead + 1)


def _d_of(dendrite_weight: torch.Tensor | None) -> int:
    return 0 if dendrite_weight is None else int(dendrite_weight.shape[0])


def _dendrite_args(d: int, dendrite_weight, dendrite_bias, gate, cascade):
    """D = 0 means no dendrite tensors at all for _C (their shapes may be [0, ...])."""
    if d == 0:
        return None, None, None, None
    return dendrite_weight, dendrite_bias, gate, cascade


def _grad_like(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(result shaped like t with t's layout as torch.empty_like gives it, contiguous buffer for _C)."""
    out = torch.empty_like(t)
    return out, (out if out.is_contiguous() else torch.empty(t.shape, dtype=t.dtype, device=t.device))


def _grad_bases(x, weight, gate, d: int, has_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient outputs of a backward: (dx, dwcat, dsmall) packed as pai_fast._layout says. The bias rows are zeros
    without a bias."""
    n = weight.shape[0]
    dwcat = torch.empty(((1 + d) * n, *weight.shape[1:]), dtype=x.dtype, device=x.device)
    dsmall = (torch.empty if has_bias else torch.zeros)((small_rows(d), n), dtype=gate.dtype, device=x.device)
    return torch.empty_like(x), dwcat, dsmall


def _grad_buffers(x, weight, gate, d: int, has_bias: bool):
    """_grad_bases, and the views the kernels write: (dw, ddw, dbias, ddb, dg, dc)."""
    dx, dwcat, dsmall = _grad_bases(x, weight, gate, d, has_bias)
    dw, ddw = split_weights(dwcat, weight.shape, d)
    return (dx, dwcat, dsmall), (dw, ddw, *split_small(dsmall, d))


# ---------------------------------------------------------------------------------------------- Hopper packing
# The Hopper forward (csrc/sm90_linear.cu) reads the weights packed neuron-interleaved into one buffer. Packs are kept
# per (device, weight storage) and redone when either weight's version counter moves (an optimizer step, load, or any
# in-place write), so inference packs once and training once per step. Inside CUDA-graph capture the pack is always
# redone, so it is part of the graph and replays see the weights of that replay.
_PACKS: OrderedDict[tuple, tuple[int, int, torch.Tensor]] = OrderedDict()
_PACK_BYTES: dict[tuple, int] = {}
_MAX_PACKS = 64


def sm90_enabled() -> bool:
    """Whether the Hopper path may be used: built with CUTLASS and not switched off by PAI_FAST_CUDA_SM90=0."""
    return (
        _C is not None
        and not _emulated()
        and getattr(_C, "sm90_max_d", lambda: -1)() >= 0
        and os.environ.get("PAI_FAST_CUDA_SM90", "1") != "0"
    )


def _sm90_bytes(lib, dt: int, weight: torch.Tensor, v: torch.Tensor | None, d: int) -> int:
    key = (weight.device, dt, tuple(weight.shape), d)
    nbytes = _PACK_BYTES.get(key)
    if nbytes is None:
        nbytes = int(lib.linear_packed_bytes(dt, _t(weight), _t(v)))
        _PACK_BYTES[key] = nbytes
    return nbytes


def _sm90_x_ok(x2d: torch.Tensor) -> bool:
    return (x2d.stride(1) == 1 or x2d.shape[1] == 1) and x2d.stride(0) % 8 == 0 and x2d.data_ptr() % 16 == 0


def _packed(lib, dt: int, weight: torch.Tensor, v: torch.Tensor | None, d: int, nbytes: int, stream: int):
    capturing = torch.cuda.is_current_stream_capturing()
    key = (weight.device, weight.data_ptr(), 0 if v is None else v.data_ptr(), tuple(weight.shape), d, dt)
    versions = (weight._version, 0 if v is None else v._version)
    hit = None if capturing else _PACKS.get(key)
    if hit is not None and hit[:2] == versions:
        _PACKS.move_to_end(key)
        return hit[2]
    packed = torch.empty(nbytes, dtype=torch.uint8, device=weight.device)
    lib.linear_pack(dt, _t(weight), _t(v), packed.data_ptr(), nbytes, stream)
    if not capturing:
        _PACKS[key] = (*versions, packed)
        _PACKS.move_to_end(key)
        while len(_PACKS) > _MAX_PACKS:
            _PACKS.popitem(last=False)
    return packed


def clear_packed_weights() -> None:
    """Drop the cached Hopper weight packs (they are rebuilt on the next forward)."""
    _PACKS.clear()


# ---------------------------------------------------------------------------------------------- Linear
def linear_fwd(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    activation: str,
    save_for_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y [M,N] and, when save_for_backward, h = activated dendrite outputs [M,D,N] (else an empty tensor)."""
    lib = _lib()
    dt, act = _dtype_code(x2d), _act_code(activation)
    _check_same(
        x2d,
        weight=weight,
        bias=bias,
        dendrite_weight=dendrite_weight,
        dendrite_bias=dendrite_bias,
        gate=gate,
        cascade=cascade,
    )
    m, n, d = x2d.shape[0], weight.shape[0], _d_of(dendrite_weight)
    y = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    h = torch.empty((m, d, n) if save_for_backward else (0,), dtype=x2d.dtype, device=x2d.device)
    v, vb, g, c = _dendrite_args(d, dendrite_weight, dendrite_bias, gate, cascade)
    tensors = [_t(x2d), _t(weight), _t(bias), _t(v), _t(vb), _t(g), _t(c)]
    outs = [_t(y), _t(h) if (save_for_backward and d > 0) else None]
    stream = _stream(x2d)
    with _DeviceGuard(x2d):
        nbytes = 0
        if x2d.dtype in (torch.float16, torch.bfloat16) and sm90_enabled() and _sm90_x_ok(x2d):
            nbytes = _sm90_bytes(lib, dt, weight, v, d)
        if nbytes:
            packed = _packed(lib, dt, weight, v, d, nbytes, stream)
            lib.linear_forward_packed(dt, act, *tensors, packed.data_ptr(), nbytes, *outs, stream)
        else:
            lib.linear_forward(dt, act, _allow_tf32(x2d), *tensors, *outs, stream)
    return y, h


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _run_planned(fn, plan, args: list, x: torch.Tensor) -> None:
    """Call a _C backward (``fn(*args, workspace, workspace_bytes, stream)``) on x's device and current stream with the
    workspace it needs: the size is asked of _C once per plan (a call with workspace None launches nothing) and kept
    in plan.nbytes, since the plan's signature fixes it."""
    with _DeviceGuard(x):
        if plan.nbytes is None:
            plan.nbytes = int(fn(*args, None, 0, 0))
        ws = torch.empty(plan.nbytes, dtype=torch.uint8, device=x.device)
        fn(*args, ws.data_ptr(), plan.nbytes, _stream(x))


class _LinearBwd:
    """What a Linear backward's call signature (shapes, strides, dtypes, devices, pointer alignment, activation,
    bias, TF32) fixes, found once (pai_fast._plans): the dtype and activation codes after the checks, D, and each C
    argument as (source, byte offset, sizes, strides) so that a call only adds data pointers. Sources: 0-6 the
    inputs (grad_y, x, weight, dendrite_weight, gate, cascade, h), 7-9 the outputs of _grad_bases (dx, dwcat,
    dsmall); the gradient views' offsets come from laying the buffers out on the meta device. The workspace size is
    asked of _C at the first call (it depends on the same signature)."""

    __slots__ = ("dt", "act", "d", "slots", "nbytes")

    def __init__(self, grad_y, x2d, weight, dendrite_weight, gate, cascade, h, activation, has_bias):
        self.dt, self.act = _dtype_code(x2d), _act_code(activation)
        _check_same(x2d, grad_y=grad_y, weight=weight, dendrite_weight=dendrite_weight, gate=gate, cascade=cascade)
        self.d = d = _d_of(dendrite_weight)
        if d > 0:
            _check_same(x2d, h=h)
        meta = torch.empty_strided(x2d.shape, x2d.stride(), dtype=x2d.dtype, device="meta")
        (dx, _, _), (dw, ddw, dbias, ddb, dg, dc) = _grad_buffers(meta, weight, gate, d, has_bias)

        def slot(src: int, t: torch.Tensor | None) -> tuple | None:
            # An input's pointer is its own data_ptr(); an output view's is its buffer's plus the view's offset.
            if t is None:
                return None
            off = t.storage_offset() * t.element_size() if src >= 7 else 0
            return src, off, tuple(t.shape), t.stride()

        dend = d > 0
        self.slots = (
            slot(0, grad_y),
            slot(1, x2d),
            slot(2, weight),
            *(slot(i, t if dend else None) for i, t in ((3, dendrite_weight), (4, gate), (5, cascade), (6, h))),
            slot(7, dx),
            slot(8, dw),
            slot(9, dbias if has_bias else None),
            slot(8, ddw if dend else None),
            slot(9, ddb if has_bias and dend else None),
            slot(9, dg if dend else None),
            slot(9, dc if dend else None),
        )
        self.nbytes: int | None = None


_linear_bwd_plans = PlanCache(strides=True)


def linear_bwd_packed(
    grad_y: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor,
    dendrite_weight: torch.Tensor,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    h: torch.Tensor,
    activation: str,
    has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dwcat, dsmall) as pai_fast._layout packs them (what the pai_fast::dendritic_linear_bwd op returns).
    Small layers are host-bound: the checks and the argument layout run once per call signature (_LinearBwd)."""
    lib = _lib()
    ins = (grad_y, x2d, weight, dendrite_weight, gate, cascade, h)
    tf32 = _allow_tf32(x2d)
    # The extension (tests swap in the emulated one) and PAI_FAST_CUDA_BACKWARD (a path forced for tests, read by _C)
    # are in the key: the workspace size follows the path.
    key = (lib, activation, has_bias, tf32, aligned16(ins), os.environ.get("PAI_FAST_CUDA_BACKWARD"))
    plan = _linear_bwd_plans.get(ins, key, lambda: _LinearBwd(*ins, activation, has_bias))
    dx, dwcat, dsmall = _grad_bases(x2d, weight, gate, plan.d, has_bias)
    ptrs = [_ptr(t) for t in (*ins, dx, dwcat, dsmall)]
    args = [None if s is None else (ptrs[s[0]] + s[1], s[2], s[3]) for s in plan.slots]
    _run_planned(lib.linear_backward, plan, [plan.dt, plan.act, tf32, *args], x2d)
    return dx, dwcat, dsmall


linear_bwd = seven_grads(linear_bwd_packed)


# ---------------------------------------------------------------------------------------------- Conv
def _geom(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> tuple[int, list, list, list]:
    nd = weight.dim() - 2
    if x.dim() != nd + 2:
        raise ValueError(
            f"x: expected a batched input with {nd + 2} dims [B, Cin, *spatial], got shape {list(x.shape)}"
        )

    def tup(v, name):
        v = [v] * nd if isinstance(v, int) else list(v)
        if len(v) != nd or not all(isinstance(i, int) for i in v):
            raise ValueError(f"{name}: expected an int or {nd} ints, got {v!r}")
        return v

    return nd, tup(stride, "stride"), tup(padding, "padding"), tup(dilation, "dilation")


def conv_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dendrite_weight: torch.Tensor,
    dendrite_bias: torch.Tensor | None,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    activation: str,
    save_for_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y [B,Cout,*out] and h [B,D,Cout,*out] (or an empty tensor) for a groups=1 conv with zero padding."""
    lib = _lib()
    dt, act = _dtype_code(x), _act_code(activation)
    _check_same(
        x,
        weight=weight,
        bias=bias,
        dendrite_weight=dendrite_weight,
        dendrite_bias=dendrite_bias,
        gate=gate,
        cascade=cascade,
    )
    nd, st, pad, dil = _geom(x, weight, stride, padding, dilation)
    d = _d_of(dendrite_weight)
    out_sp = [(x.shape[2 + i] + 2 * pad[i] - dil[i] * (weight.shape[2 + i] - 1) - 1) // st[i] + 1 for i in range(nd)]
    if any(o < 1 for o in out_sp):
        raise ValueError(
            f"x: spatial size {list(x.shape[2:])} with padding {pad} is smaller than the dilated kernel "
            f"{[dil[i] * (weight.shape[2 + i] - 1) + 1 for i in range(nd)]}"
        )
    b, cout = x.shape[0], weight.shape[0]
    # Outputs keep x's memory format (channels_last in, channels_last out), as the op's fake kernel promises.
    y = conv_empty(x, (b, cout), out_sp)
    h = conv_empty(x, (b, d, cout), out_sp) if save_for_backward else x.new_empty((0,))
    v, vb, g, c = _dendrite_args(d, dendrite_weight, dendrite_bias, gate, cascade)
    # Re-laid-out copies are held in locals until the launch is enqueued: a temporary freed inside the argument
    # list goes back to the caching allocator, and the next copy could overwrite it before the kernel reads it.
    wf = _flat_weight(weight, 0)
    vf = None if v is None else _flat_weight(v, 1)
    with _DeviceGuard(x):
        lib.conv_forward(
            dt,
            act,
            _allow_tf32(x),
            nd,
            st,
            pad,
            dil,
            _t(x),
            _t(wf),
            _t(bias),
            _t(vf),
            _t(vb),
            _t(g),
            _t(c),
            _t(y),
            _t(h) if (save_for_backward and d > 0) else None,
            _stream(x),
        )
    return y, h


class _ConvBwd:
    """What a conv backward's call signature (shapes, strides, dtypes, devices, pointer alignment, geometry,
    activation, bias, TF32) fixes, found once (pai_fast._plans): the dtype and activation codes after the checks,
    D, the geometry, and the workspace size, asked of _C at the first call (the Linear backward's _LinearBwd keeps
    it the same way)."""

    __slots__ = ("dt", "act", "d", "geom", "nbytes")

    def __init__(self, grad_y, x, weight, dendrite_weight, gate, cascade, h, stride, padding, dilation, activation):
        self.dt, self.act = _dtype_code(x), _act_code(activation)
        _check_same(x, grad_y=grad_y, weight=weight, dendrite_weight=dendrite_weight, gate=gate, cascade=cascade)
        self.geom = _geom(x, weight, stride, padding, dilation)
        self.d = _d_of(dendrite_weight)
        if self.d > 0:
            _check_same(x, h=h)
        self.nbytes: int | None = None


_conv_bwd_plans = PlanCache(strides=True)


def _hashable(v):
    return v if isinstance(v, int) else tuple(v)


def conv_bwd_packed(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dendrite_weight: torch.Tensor,
    gate: torch.Tensor,
    cascade: torch.Tensor,
    h: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    activation: str,
    has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dwcat, dsmall) as pai_fast._layout packs them (what the pai_fast::dendritic_conv_bwd op returns)."""
    lib = _lib()
    ins = (grad_y, x, weight, dendrite_weight, gate, cascade, h)
    tf32 = _allow_tf32(x)
    geom = (_hashable(stride), _hashable(padding), _hashable(dilation))
    key = (lib, activation, has_bias, tf32, aligned16(ins), *geom)
    plan = _conv_bwd_plans.get(ins, key, lambda: _ConvBwd(*ins, stride, padding, dilation, activation))
    nd, st, pad, dil = plan.geom
    d = plan.d
    out, (dw, ddw, dbias, ddb, dg, dc) = _grad_buffers(x, weight, gate, d, has_bias)
    v, _, g, c = _dendrite_args(d, dendrite_weight, None, gate, cascade)
    # Held until the launch (see conv_fwd): temporaries inside the argument list could be overwritten first.
    gyf, wf = _flat_spatial(grad_y, 2), _flat_weight(weight, 0)
    vf = None if v is None else _flat_weight(v, 1)
    hf = _flat_spatial(h, 3) if d > 0 else None
    args = [
        plan.dt,
        plan.act,
        tf32,
        nd,
        st,
        pad,
        dil,
        _t(gyf),
        _t(x),
        _t(wf),
        _t(vf),
        _t(g),
        _t(c),
        _t(hf),
        _t(out[0]),
        _t(dw),
        _t(dbias) if has_bias else None,
        _t(ddw) if d > 0 else None,
        _t(ddb) if (has_bias and d > 0) else None,
        _t(dg) if d > 0 else None,
        _t(dc) if d > 0 else None,
    ]
    _run_planned(lib.conv_backward, plan, args, x)
    return out[0], weight_rows_like(out[1], weight), out[2]


conv_bwd = seven_grads(conv_bwd_packed)


# ---------------------------------------------------------------------------------------------- supports
def supports(kind: str, x: torch.Tensor, weight: torch.Tensor, D: int, activation: str) -> list[str]:
    """Reasons why this backend cannot run op ``kind`` ("linear" or "conv") on these inputs; [] = it can."""
    reasons: list[str] = []
    if _C is None:
        reasons.append(f"the CUDA extension pai_fast._C is not available ({_IMPORT_ERROR})")
    elif not _emulated() and not torch.cuda.is_available():  # torch's query: traceable by torch.compile
        reasons.append("pai_fast._C sees no CUDA GPU (no device or no driver)")
    if kind not in ("linear", "conv", "conv1d", "conv2d", "conv3d"):
        reasons.append(f"kind: expected 'linear' or 'conv', got {kind!r}")
    if x.device.type != "cuda" and not _emulated():
        reasons.append(f"needs CUDA tensors, got x on {x.device}")
    if weight.device != x.device:
        reasons.append(f"weight is on {weight.device}, x on {x.device}")
    if x.dtype not in _DTYPES:
        reasons.append(f"dtype must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if weight.dtype != x.dtype:
        reasons.append(f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if activation not in _ACTS:
        reasons.append(f"activation must be one of {sorted(_ACTS)}, got {activation!r}")
    if not 0 <= int(D) <= MAX_DENDRITES:
        reasons.append(f"the fused CUDA kernels take 0..{MAX_DENDRITES} dendrites, got D={D}")
    if kind.startswith("conv"):
        nd = weight.dim() - 2
        if not 1 <= nd <= 3:
            reasons.append(f"conv weight must have 3..5 dims, got {weight.dim()}")
        elif x.dim() != nd + 2:
            reasons.append(f"conv input must be batched with {nd + 2} dims, got {x.dim()}")
        elif x.shape[1] != weight.shape[1]:
            reasons.append(f"groups must be 1 (x has {x.shape[1]} channels, weight expects {weight.shape[1]})")
    elif kind == "linear" and (weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[-1]):
        reasons.append(f"linear expects x [..., K] and weight [N, K], got {list(x.shape)} and {list(weight.shape)}")
    if x.device.type == "cuda" and torch.cuda.is_available():
        cap = device_capability(x.device)
        if cap < (8, 0):
            reasons.append(f"needs compute capability >= 8.0 (sm_80), got {cap[0]}.{cap[1]}")
    return reasons
