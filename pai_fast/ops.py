"""The fused ops as ``torch.library`` operators, and the autograd Functions that call them.

``pai_fast::dendritic_linear_fwd/_bwd`` and ``pai_fast::dendritic_conv_fwd/_bwd`` dispatch to a fused
backend (``triton`` or ``cuda``) named by a string argument. Each op has a fake (meta) kernel, so
``torch.compile(fullgraph=True)`` traces through ``DendriticLinearFunction`` / ``DendriticConvFunction``
with no graph break and ``torch.export`` keeps the ops in the graph.

Registration uses ``Library.define`` + ``impl`` rather than ``torch.library.custom_op``: the latter
costs 15-25 µs of Python dispatch per call, which dominates small layers (background/ecosystem.md §1.4).

The backward ops return (dx, dwcat, dsmall): the parameter gradients packed into two tensors
(pai_fast._layout), split into views in the autograd backward.

Saved for backward: x, the weights, gate, cascade and h = the activated dendrite outputs a_i [M, D, N]
in the input dtype (never the forward GEMM's pre-activations: the backward recomputes nothing).
"""

from __future__ import annotations

import torch

from . import backends
from ._layout import conv_empty, small_rows, unpack_grads, weight_rows_like

_lib = torch.library.Library("pai_fast", "DEF")  # noqa: TOR901 (the namespace is ours)
_lib.define(
    "dendritic_linear_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor dendrite_weight, Tensor? dendrite_bias, "
    "Tensor gate, Tensor cascade, str activation, str backend, bool save_for_backward) -> (Tensor, Tensor)"
)
_lib.define(
    "dendritic_linear_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor dendrite_weight, Tensor gate, "
    "Tensor cascade, Tensor h, str activation, str backend, bool has_bias) -> (Tensor, Tensor, Tensor)"
)
_lib.define(
    "dendritic_conv_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor dendrite_weight, Tensor? dendrite_bias, "
    "Tensor gate, Tensor cascade, int[] stride, int[] padding, int[] dilation, str activation, str backend, "
    "bool save_for_backward) -> (Tensor, Tensor)"
)
_lib.define(
    "dendritic_conv_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor dendrite_weight, Tensor gate, "
    "Tensor cascade, Tensor h, int[] stride, int[] padding, int[] dilation, str activation, str backend, "
    "bool has_bias) -> (Tensor, Tensor, Tensor)"
)


def _linear_fwd(x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation, backend, save):
    if dendrite_weight.shape[0] == 0 and x.is_cuda and weight.dtype == x.dtype:
        # No dendrites: the layer is nn.Linear, and cuBLAS is the fastest GEMM for it, whatever the backend.
        y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias.to(x.dtype), x, weight.t())
        return y, x.new_empty((x.shape[0], 0, weight.shape[0]) if save else (0,))
    return backends.backend_module(backend).linear_fwd(
        x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation, save
    )


def _linear_bwd(grad_y, x, weight, dendrite_weight, gate, cascade, h, activation, backend, has_bias):
    return backends.backend_module(backend).linear_bwd_packed(
        grad_y, x, weight, dendrite_weight, gate, cascade, h, activation, has_bias
    )


def _conv_fwd(
    x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, stride, padding, dilation, activation, backend, save
):
    return backends.backend_module(backend).conv_fwd(
        x,
        weight,
        bias,
        dendrite_weight,
        dendrite_bias,
        gate,
        cascade,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        activation,
        save,
    )


def _conv_bwd(
    grad_y, x, weight, dendrite_weight, gate, cascade, h, stride, padding, dilation, activation, backend, has_bias
):
    return backends.backend_module(backend).conv_bwd_packed(
        grad_y,
        x,
        weight,
        dendrite_weight,
        gate,
        cascade,
        h,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        activation,
        has_bias,
    )


# CPU kernels exist so that CI can run the Triton kernels under TRITON_INTERPRET=1.
for _key in ("CUDA", "CPU"):
    _lib.impl("dendritic_linear_fwd", _linear_fwd, _key)
    _lib.impl("dendritic_linear_bwd", _linear_bwd, _key)
    _lib.impl("dendritic_conv_fwd", _conv_fwd, _key)
    _lib.impl("dendritic_conv_bwd", _conv_bwd, _key)


@torch.library.register_fake("pai_fast::dendritic_linear_fwd")
def _linear_fwd_fake(x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation, backend, save):
    m, n, d = x.shape[0], weight.shape[0], dendrite_weight.shape[0]
    h = x.new_empty((m, d, n)) if save else x.new_empty((0,))
    return x.new_empty((m, n)), h


@torch.library.register_fake("pai_fast::dendritic_linear_bwd")
def _linear_bwd_fake(grad_y, x, weight, dendrite_weight, gate, cascade, h, activation, backend, has_bias):
    return _packed_grads_fake(x, weight, dendrite_weight, gate)


def _packed_grads_fake(x, weight, dendrite_weight, gate):
    """(dx, dwcat, dsmall) of pai_fast._layout."""
    n, d = weight.shape[0], dendrite_weight.shape[0]
    return (
        torch.empty_like(x),
        weight_rows_like(x.new_empty(((1 + d) * n, *weight.shape[1:])), weight),
        gate.new_empty((small_rows(d), n)),
    )


def conv_out_size(size: int, k: int, s: int, p: int, dil: int) -> int:
    return (size + 2 * p - dil * (k - 1) - 1) // s + 1


@torch.library.register_fake("pai_fast::dendritic_conv_fwd")
def _conv_fwd_fake(
    x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, stride, padding, dilation, activation, backend, save
):
    ks = weight.shape[2:]
    sp = [conv_out_size(x.shape[2 + i], ks[i], stride[i], padding[i], dilation[i]) for i in range(len(ks))]
    b, c, d = x.shape[0], weight.shape[0], dendrite_weight.shape[0]
    h = conv_empty(x, (b, d, c), sp) if save else x.new_empty((0,))
    return conv_empty(x, (b, c), sp), h


@torch.library.register_fake("pai_fast::dendritic_conv_bwd")
def _conv_bwd_fake(
    grad_y, x, weight, dendrite_weight, gate, cascade, h, stride, padding, dilation, activation, backend, has_bias
):
    return _packed_grads_fake(x, weight, dendrite_weight, gate)


try:  # a tensor left over from a torch.func transform (a "dead wrapper"): Function.apply unwraps it
    from torch._C._functorch import is_functorch_wrapped_tensor as _functorch_wrapped
except ImportError:  # pragma: no cover

    def _functorch_wrapped(t) -> bool:
        return False


def _direct(*tensors) -> bool:
    """Whether to call the registered kernels themselves rather than through the dispatcher: nothing traces or
    intercepts this call (no torch.compile / export / jit trace, no dispatch or function mode such as fake tensors,
    only plain tensors). Both reach the same Python function; the direct call skips the dispatcher's round trip
    into Python (~10 µs of host time per op, which small layers feel)."""
    return (
        not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
        and not torch.jit.is_tracing()
        and all(t is None or (type(t) is torch.Tensor and not _functorch_wrapped(t)) for t in tensors)
    )


class DendriticLinearFunction(torch.autograd.Function):
    """y = dendritic_linear(x, ...) through a fused backend; leading dims of x are batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation, backend, direct=False):
        # 2-D x skips the reshapes: every torch call costs host time that small layers feel.
        flat = x.dim() == 2
        x2 = x if flat else x.reshape(-1, weight.shape[1])
        args = (x2, weight, bias, dendrite_weight, dendrite_bias, gate, cascade)
        op = _linear_fwd if direct else torch.ops.pai_fast.dendritic_linear_fwd
        y, h = op(*args, activation, backend, True)
        ctx.save_for_backward(x2, weight, dendrite_weight, gate, cascade, h)
        ctx.meta = (None if flat else x.shape, activation, backend, bias is not None)
        return y if flat else y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x2, weight, dendrite_weight, gate, cascade, h = ctx.saved_tensors
        x_shape, activation, backend, has_bias = ctx.meta
        args = (
            grad_y if x_shape is None else grad_y.reshape(-1, weight.shape[0]),
            x2,
            weight,
            dendrite_weight,
            gate,
            cascade,
            h,
        )
        op = _linear_bwd if _direct(*args) else torch.ops.pai_fast.dendritic_linear_bwd
        dx, dwcat, dsmall = op(*args, activation, backend, has_bias)
        dx, dw, db, ddw, ddb, dg, dc = unpack_grads(dx, dwcat, dsmall, weight, dendrite_weight.shape[0])
        if not has_bias:
            db = ddb = None
        return dx if x_shape is None else dx.reshape(x_shape), dw, db, ddw, ddb, dg, dc, None, None, None


class DendriticConvFunction(torch.autograd.Function):
    """y = dendritic_conv(x, ...) through a fused backend (batched x, groups=1, explicit zero padding)."""

    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        dendrite_weight,
        dendrite_bias,
        gate,
        cascade,
        stride,
        padding,
        dilation,
        activation,
        backend,
        direct=False,
    ):
        args = (x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade)
        op = _conv_fwd if direct else torch.ops.pai_fast.dendritic_conv_fwd
        y, h = op(*args, stride, padding, dilation, activation, backend, True)
        ctx.save_for_backward(x, weight, dendrite_weight, gate, cascade, h)
        ctx.meta = (stride, padding, dilation, activation, backend, bias is not None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, dendrite_weight, gate, cascade, h = ctx.saved_tensors
        stride, padding, dilation, activation, backend, has_bias = ctx.meta
        args = (grad_y, x, weight, dendrite_weight, gate, cascade, h)
        op = _conv_bwd if _direct(*args) else torch.ops.pai_fast.dendritic_conv_bwd
        dx, dwcat, dsmall = op(*args, stride, padding, dilation, activation, backend, has_bias)
        dx, dw, db, ddw, ddb, dg, dc = unpack_grads(dx, dwcat, dsmall, weight, dendrite_weight.shape[0])
        if not has_bias:
            db = ddb = None
        return dx, dw, db, ddw, ddb, dg, dc, None, None, None, None, None, None


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _c_apply(cls):
    """cls.apply without Function.apply's Python layer (setup_context binding, which these Functions do not use,
    and functorch's dead-wrapper unwrap, a no-op for the plain tensors _direct admits): ~5 µs per call. Used only
    for direct calls (nothing traces, no functorch-wrapped tensor) outside functorch transforms."""
    c_apply = getattr(torch._C._FunctionBase, "__dict__", {}).get("apply")
    return c_apply.__get__(None, cls) if c_apply is not None else cls.apply


_linear_apply = _c_apply(DendriticLinearFunction)
_conv_apply = _c_apply(DendriticConvFunction)


def linear_fused(x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, activation: str, backend: str):
    args = (x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade)
    direct = _direct(*args)
    if _needs_grad(*args):
        if direct and not torch._C._are_functorch_transforms_active():
            return _linear_apply(*args, activation, backend, True)
        return DendriticLinearFunction.apply(*args, activation, backend, direct)
    # Inference: no autograd node, no saved activations.
    flat = x.dim() == 2
    if not flat:
        args = (x.reshape(-1, weight.shape[1]), *args[1:])
    op = _linear_fwd if direct else torch.ops.pai_fast.dendritic_linear_fwd
    y, _ = op(*args, activation, backend, False)
    return y if flat else y.reshape(*x.shape[:-1], weight.shape[0])


def conv_fused(
    x,
    weight,
    bias,
    dendrite_weight,
    dendrite_bias,
    gate,
    cascade,
    stride,
    padding,
    dilation,
    activation: str,
    backend: str,
):
    args = (x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade)
    direct = _direct(*args)
    if _needs_grad(*args):
        if direct and not torch._C._are_functorch_transforms_active():
            return _conv_apply(*args, stride, padding, dilation, activation, backend, True)
        return DendriticConvFunction.apply(*args, stride, padding, dilation, activation, backend, direct)
    op = _conv_fwd if direct else torch.ops.pai_fast.dendritic_conv_fwd
    y, _ = op(*args, stride, padding, dilation, activation, backend, False)
    return y
