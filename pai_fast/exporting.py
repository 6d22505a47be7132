"""Fold dendritic layers into plain-torch inference modules, and export models for edge runtimes.

Folding (the math of pai_fast.reference, spec §2.3). A layer with main weight W [N, K], bias b and D dendrites
V_i, c_i becomes ONE matmul (conv) over the stacked weight and bias

    W_cat = [W; V_0; ...; V_{D-1}]   [(1+D)*N, K]        b_cat = [b; c_0; ...; c_{D-1}]

(conv with groups > 1: group-major rows [g, 1+D, N/g], as in reference.dendritic_conv_ref, so that each group of
the big conv still reads only its own input channels), followed by

    z = x W_cat^T + b_cat ;   s_i = z_{1+i} + sum_{j<i} B[i, j] * a_j ;   a_i = act(s_i) ;   y = z_0 + sum_i G[i] * a_i

as a loop over Python ints (D is a constant of the folded module), so the traced graph has static shapes and
only standard ops: torch.export, the ONNX exporter, ExecuTorch and AOTInductor need nothing from pai_fast at run
time. Layers with D = 0 become plain ``nn.Linear`` / ``nn.ConvNd``. Folding keeps nothing for training: no
autograd (requires_grad=False), eval mode, no dendrite-growth state.

Export: ``export(model, example_inputs, path, format=...)`` folds, traces once with ``torch.export`` (dynamic
batch dim), writes ``.onnx`` (torch.onnx dynamo exporter, opset 18 by default: the newest one that every
onnxruntime >= 1.14 and most edge runtimes read), ``.pt2`` (torch.export.save, or an AOTInductor package with
``aoti=True``) or ``.pte`` (ExecuTorch with the XNNPACK delegate), then runs the artefact in its own runtime on
the example inputs and compares with the original model (``ExportCheckError`` past the tolerance).

CLI: ``pai-fast export --model module:factory [--checkpoint PATH] --input-shape 1,64 --format onnx --out m.onnx``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from .activations import ActivationLike, activation_name
from .checkpoint import _unwrap as _check_model  # type check + DataParallel/DDP/compile unwrapping
from .nn import DendriteMixin, DendriticConv1d, DendriticConv2d, DendriticConv3d, DendriticLinear
from .nn.conv import conv_init_args

__all__ = [
    "FORMATS",
    "ExportCheckError",
    "ExportError",
    "ExportResult",
    "FoldedDendriticConv",
    "FoldedDendriticLinear",
    "UnfoldableModuleError",
    "export",
    "fold",
    "fold_layer",
    "main",
]

FORMATS = ("onnx", "pt2", "executorch")
DEFAULT_OPSET = 18
MIN_OPSET = 18  # the torch.export-based ONNX exporter emits opset >= 18 only
DEFAULT_EXECUTORCH_MAX_BATCH = 64  # ExecuTorch plans memory for the largest batch: it needs an upper bound
EXECUTORCH_HINT = "pip install pai-fast[executorch]"


class UnfoldableModuleError(TypeError):
    """A dendritic module that fold() cannot turn into standard ops (the message names its path)."""


class ExportError(RuntimeError):
    """Tracing or lowering the folded model failed (the message names the format and the step)."""


class ExportCheckError(RuntimeError):
    """The exported artefact's outputs differ from the original model's by more than the tolerance."""

    def __init__(self, message: str, max_abs_error: float, tol: float, path: str) -> None:
        super().__init__(message)
        self.max_abs_error = max_abs_error
        self.tol = tol
        self.path = path


@dataclass(frozen=True)
class ExportResult:
    """What export() wrote and measured (``max_abs_error``/``latency_ms`` are None when check=False)."""

    path: str
    format: str
    size_bytes: int
    max_abs_error: float | None
    latency_ms: float | None


# ---------------------------------------------------------------------------------------------------------------
# Folded modules


def _apply_activation(activation, s: torch.Tensor) -> torch.Tensor:
    # Names are dispatched here (not stored as functions) so that folded modules pickle and deep-copy cleanly.
    if activation == "sigmoid":
        return torch.sigmoid(s)
    if activation == "tanh":
        return torch.tanh(s)
    if activation == "relu":
        return torch.relu(s)
    if activation == "identity":
        return s
    return activation(s)


def _canonical_activation(activation: ActivationLike) -> ActivationLike:
    name = activation_name(activation)
    return name if name is not None else activation


class _FoldedBase(nn.Module):
    dendrites: int
    activation: ActivationLike

    def _set_tensors(self, weight, bias, gate, cascade) -> None:
        # Parameters without gradients: they move with .to()/.half() and show up in parameters() and state_dict().
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.gate = nn.Parameter(gate, requires_grad=False)
        self.cascade = nn.Parameter(cascade, requires_grad=False)

    def _combine(self, y: torch.Tensor, branch: Callable[[int], torch.Tensor]) -> torch.Tensor:
        acts: list[torch.Tensor] = []
        for i in range(self.dendrites):
            s = branch(i)
            for j in range(i):
                s = s + self.cascade[i, j] * acts[j]
            a = _apply_activation(self.activation, s)
            acts.append(a)
            y = y + self.gate[i] * a
        return y

    def _act_repr(self) -> str:
        name = self.activation if isinstance(self.activation, str) else getattr(self.activation, "__name__", "callable")
        return f"dendrites={self.dendrites}, activation={name}"


class FoldedDendriticLinear(_FoldedBase):
    """Inference form of a DendriticLinear: one ``F.linear`` over the stacked weight [(1+D)*N, K], then the
    cascade, activation and gated sum (standard ops, static shapes). Every leading dim of the input is batch."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        gate: torch.Tensor,
        cascade: torch.Tensor,
        activation: ActivationLike = "sigmoid",
    ) -> None:
        super().__init__()
        d, n = gate.shape
        if weight.dim() != 2 or weight.shape[0] != (1 + d) * n:
            raise ValueError(f"weight: expected shape [(1+D)*N, K] = [{(1 + d) * n}, K], got {list(weight.shape)}")
        self.in_features = weight.shape[1]
        self.out_features = n
        self.dendrites = d
        self.activation = _canonical_activation(activation)
        self._set_tensors(weight, bias, gate, cascade)

    @classmethod
    def from_layer(cls, layer: nn.Module) -> FoldedDendriticLinear:
        d = int(layer.num_dendrites)
        n, k = layer.weight.shape
        with torch.no_grad():
            w = torch.cat([layer.weight.unsqueeze(0), layer.dendrite_weight[:d]], 0).reshape((1 + d) * n, k)
            b = None
            if layer.bias is not None:
                b = torch.cat([layer.bias.unsqueeze(0), layer.dendrite_bias[:d]], 0).reshape(-1)
            gate = layer.dendrite_gate[:d].clone()
            cascade = layer.dendrite_cascade[:d, :d].clone()
        return cls(w.detach().clone(), None if b is None else b.detach().clone(), gate, cascade, layer.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.out_features
        z = F.linear(x, self.weight, self.bias)
        return self._combine(z.narrow(-1, 0, n), lambda i: z.narrow(-1, (1 + i) * n, n))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            + self._act_repr()
        )


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class FoldedDendriticConv(_FoldedBase):
    """Inference form of a DendriticConv1d/2d/3d: one convolution over the stacked weight [(1+D)*C_out, ...]
    (group-major for groups > 1), then the cascade, activation and gated sum per output channel.
    ``padding_mode`` other than "zeros" pads with ``F.pad`` first, as ``nn.ConvNd`` does."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        gate: torch.Tensor,
        cascade: torch.Tensor,
        *,
        stride,
        padding,
        dilation,
        groups: int = 1,
        padding_mode: str = "zeros",
        reversed_padding: Sequence[int] = (),
        activation: ActivationLike = "sigmoid",
    ) -> None:
        super().__init__()
        d, c_out = gate.shape
        nd = weight.dim() - 2
        if nd not in _CONV_FN or weight.shape[0] != (1 + d) * c_out:
            raise ValueError(
                f"weight: expected shape [(1+D)*C_out, C_in/groups, *kernel] with (1+D)*C_out = {(1 + d) * c_out} "
                f"and 1 to 3 kernel dims, got {list(weight.shape)}"
            )
        self.nd = nd
        self.in_channels = weight.shape[1] * groups
        self.out_channels = c_out
        self.kernel_size = tuple(weight.shape[2:])
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self.reversed_padding = tuple(int(p) for p in reversed_padding)
        self.dendrites = d
        self.activation = _canonical_activation(activation)
        # Gate and cascade pre-shaped [.., C_out, 1, ..., 1] to broadcast over the spatial dims.
        ones = (1,) * nd
        self._set_tensors(weight, bias, gate.reshape(d, c_out, *ones), cascade.reshape(d, d, c_out, *ones))

    @classmethod
    def from_layer(cls, layer: nn.Module) -> FoldedDendriticConv:
        d = int(layer.num_dendrites)
        c_out, groups = layer.weight.shape[0], layer.groups
        with torch.no_grad():
            w = torch.cat([layer.weight.unsqueeze(0), layer.dendrite_weight[:d]], 0)  # [1+D, C_out, C_in/g, *k]
            b = None
            if layer.bias is not None:
                b = torch.cat([layer.bias.unsqueeze(0), layer.dendrite_bias[:d]], 0)  # [1+D, C_out]
            if groups > 1:
                w = w.unflatten(1, (groups, c_out // groups)).transpose(0, 1)
                b = None if b is None else b.unflatten(1, (groups, c_out // groups)).transpose(0, 1)
            w = w.reshape((1 + d) * c_out, *layer.weight.shape[1:]).clone()
            b = None if b is None else b.reshape(-1).clone()
            gate = layer.dendrite_gate[:d].clone()
            cascade = layer.dendrite_cascade[:d, :d].clone()
        return cls(
            w.detach(),
            None if b is None else b.detach(),
            gate,
            cascade,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=groups,
            padding_mode=layer.padding_mode,
            reversed_padding=getattr(layer, "_reversed_padding_repeated_twice", ()),
            activation=layer.activation,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            padding = 0
        unbatched = x.dim() == self.nd + 1
        if unbatched:
            x = x.unsqueeze(0)
        z = _CONV_FN[self.nd](x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        c, d, g = self.out_channels, self.dendrites, self.groups
        if g == 1:
            y = self._combine(z.narrow(1, 0, c), lambda i: z.narrow(1, (1 + i) * c, c))
        else:
            zg = z.unflatten(1, (g, 1 + d, c // g))  # group-major channel order

            def branch(k: int) -> torch.Tensor:
                return zg.select(2, k).flatten(1, 2)

            y = self._combine(branch(0), lambda i: branch(1 + i))
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + ", " + self._act_repr()


_PLAIN_CONV = ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3))


def _plain_layer(layer: nn.Module) -> nn.Module:
    """The torch layer a D=0 dendritic layer computes (weights copied, no gradients)."""
    w = layer.weight
    with torch.device("meta"):
        if isinstance(layer, nn.Linear):
            plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None, dtype=w.dtype)
        else:
            cls = next(c for c, nd in _PLAIN_CONV if w.dim() == nd + 2)
            plain = cls(*conv_init_args(layer), dtype=w.dtype)
    state = {"weight": nn.Parameter(w.detach().clone(), requires_grad=False)}
    if layer.bias is not None:
        state["bias"] = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    plain.load_state_dict(state, assign=True)
    return plain


def fold_layer(layer: nn.Module, path: str = "") -> nn.Module:
    """The inference module of one dendritic layer (a DendriteMixin Linear or Conv1d/2d/3d)."""
    where = f"module {path!r}" if path else f"the {type(layer).__name__}"
    if not isinstance(layer, DendriteMixin):
        raise UnfoldableModuleError(f"{where}: expected a pai_fast dendritic layer, got {type(layer).__name__}")
    if getattr(layer, "weight", None) is None or getattr(layer, "dendrite_weight", None) is None:
        raise UnfoldableModuleError(f"{where}: a {type(layer).__name__} without weight/dendrite_weight")
    if isinstance(layer, nn.Linear):
        kind = "linear"
    elif isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed and 3 <= layer.weight.dim() <= 5:
        kind = "conv"
    else:
        raise UnfoldableModuleError(
            f"{where}: fold() handles dendritic nn.Linear and nn.Conv1d/2d/3d layers, got a {type(layer).__name__} "
            "(transposed convs and other layer types have no folded form)"
        )
    try:
        activation_name(layer.activation)
    except (TypeError, ValueError) as exc:
        raise UnfoldableModuleError(f"{where}: {exc}") from exc
    if int(layer.num_dendrites) == 0:
        return _plain_layer(layer)
    if kind == "linear":
        return FoldedDendriticLinear.from_layer(layer)
    return FoldedDendriticConv.from_layer(layer)


def fold(model: nn.Module) -> nn.Module:
    """An inference deep copy of ``model`` with every dendritic layer folded into standard torch ops.

    Every module that is a ``pai_fast.nn.DendriteMixin`` (DendriticLinear, DendriticConv1d/2d/3d, and any tracker
    or user subclass of them) becomes a ``FoldedDendriticLinear`` / ``FoldedDendriticConv`` (or, with 0
    dendrites, a plain ``nn.Linear`` / ``nn.ConvNd``); the rest of the model is deep-copied. A model still wrapped
    by perforatedai is converted first (``pai_fast.convert.from_perforatedai``). DataParallel / DDP /
    torch.compile wrappers are removed. The copy is in eval mode with ``requires_grad=False`` everywhere; the input
    model is not modified. Layers shared between several places stay shared.
    """
    model = _check_model(model)
    if any(type(m).__name__ == "PAINeuronModule" for m in model.modules()):
        from .convert import from_perforatedai

        model = from_perforatedai(model)
    memo: dict[int, Any] = {}
    for path, m in model.named_modules():
        if isinstance(m, DendriteMixin) and id(m) not in memo:
            memo[id(m)] = fold_layer(m, path)
    folded = memo[id(model)] if id(model) in memo else copy.deepcopy(model, memo)
    folded.eval()
    folded.requires_grad_(False)
    return folded


# ---------------------------------------------------------------------------------------------------------------
# Argument checks


def _check_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(
            f"example_inputs: expected a tuple of tensors (the model's positional inputs), got "
            f"{type(example_inputs).__name__}"
        )
    if len(example_inputs) == 0:
        raise ValueError("example_inputs: expected at least one tensor, got an empty tuple")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"example_inputs[{i}]: expected a torch.Tensor, got {type(t).__name__}")
    return tuple(example_inputs)


def _check_format(format: Any) -> str:
    if not isinstance(format, str) or format.lower() not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {format!r}")
    return format.lower()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(exc: BaseException) -> str:
    """An exception's message without terminal colour codes (the ONNX exporter adds them)."""
    return f"{type(exc).__name__}: {_ANSI.sub('', str(exc))}"


def _describe(inputs: Sequence[torch.Tensor]) -> str:
    return ", ".join(f"{list(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}" for t in inputs)


def _flat_tensors(out: Any, what: str) -> list[torch.Tensor]:
    leaves, _ = pytree.tree_flatten(out)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    if not tensors:
        raise ExportError(f"{what}: the model returned no tensor (got {type(out).__name__})")
    return tensors


class _EvalMode:
    """Temporarily eval() a model and restore each submodule's training flag afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for m, flag in self.flags:
            m.training = flag


def _run_original(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The original model's outputs (eval mode, no autograd); a failure here is a problem of the inputs."""
    device = next((p.device for p in model.parameters()), None)
    args = inputs if device is None else tuple(t.to(device) for t in inputs)
    try:
        with torch.no_grad(), _EvalMode(model):
            out = model(*args)
    except Exception as exc:
        raise ValueError(
            f"example_inputs: the model cannot run on inputs of shapes {_describe(inputs)} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return [t.detach() for t in _flat_tensors(out, "model")]


def _batch_dynamic_shapes(inputs: tuple[torch.Tensor, ...], max_batch: int | None):
    """One shared dynamic dim 0 for every input whose dim 0 has the first input's size."""
    first = next((t for t in inputs if t.dim() > 0), None)
    if first is None:
        return None, inputs
    b = first.shape[0]
    dim = torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch", min=1)
    shapes = tuple({0: dim} if t.dim() > 0 and t.shape[0] == b else None for t in inputs)
    if b >= 2:
        return shapes, inputs
    # torch.export specialises sizes 0 and 1: trace at batch 2 (repeated rows, same values) and stay general.
    trace = tuple(
        (t.repeat(2, *([1] * (t.dim() - 1))) if b == 1 else torch.randn(2, *t.shape[1:]).to(t)) if s else t
        for t, s in zip(inputs, shapes)
    )
    return shapes, trace


# ---------------------------------------------------------------------------------------------------------------
# Writers and runners


def _torch_export(folded: nn.Module, trace_inputs, dynamic_shapes, fmt: str) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad():
            return torch.export.export(folded, trace_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise ExportError(
            f"format={fmt!r}: torch.export could not trace the folded model ({type(exc).__name__}: {exc}). "
            "Modules with data-dependent Python control flow or non-tensor outputs cannot be exported; "
            "with dynamic_batch=True the batch dim must not be used as a constant (try dynamic_batch=False)"
        ) from exc


def _write_onnx(ep, trace_inputs, path: str, opset: int, big: bool) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"format='onnx' needs the onnx and onnxscript packages ({exc}): pip install pai-fast[export]"
        ) from exc
    # The exporter logs one warning per torchvision op it cannot register when torchvision is absent: noise here.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                ep, trace_inputs, path, dynamo=True, opset_version=opset, external_data=big, verbose=False
            )
    except Exception as exc:
        raise ExportError(
            f"format='onnx': the ONNX exporter failed ({_plain(exc)}). A custom activation or module "
            "without an ONNX translation cannot go to ONNX; format='pt2' keeps every torch op"
        ) from exc
    finally:
        registry_log.setLevel(level)


def _write_executorch(ep, path: str) -> None:
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise ImportError(f"format='executorch' needs the executorch package ({exc}): {EXECUTORCH_HINT}") from exc
    try:
        program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    except Exception as exc:
        raise ExportError(f"format='executorch': lowering to ExecuTorch failed ({type(exc).__name__}: {exc})") from exc
    with open(path, "wb") as f:
        program.write_to_file(f)


def _runner(fmt: str, path: str, aoti: bool) -> Callable[[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    """A function that runs the written artefact in its target runtime and returns its flat outputs."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(
                f"check=True for format='onnx' needs onnxruntime ({exc}): pip install pai-fast[export]"
            ) from exc
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def run_onnx(inputs):
            feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
            return [torch.from_numpy(o) for o in sess.run(None, feed)]

        return run_onnx
    if fmt == "pt2":
        if aoti:
            fn = torch._inductor.aoti_load_package(path)
        else:
            fn = torch.export.load(path).module()

        def run_pt2(inputs):
            with torch.no_grad():
                return _flat_tensors(fn(*inputs), "the .pt2 program")

        return run_pt2
    try:
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise ImportError(f"check=True for format='executorch' needs executorch ({exc}): {EXECUTORCH_HINT}") from exc
    method = Runtime.get().load_program(path).load_method("forward")

    def run_pte(inputs):
        return [t for t in method.execute([t.detach().cpu().contiguous() for t in inputs]) if torch.is_tensor(t)]

    return run_pte


def _default_tol(dtype: torch.dtype) -> float:
    return {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)


def _max_error(outs: list[torch.Tensor], refs: list[torch.Tensor], path: str, tol: float) -> tuple[float, float]:
    if len(outs) != len(refs):
        raise ExportCheckError(
            f"check: {path!r} returned {len(outs)} outputs, the model {len(refs)}", math.inf, tol, path
        )
    err, scale = 0.0, 1.0
    for i, (o, r) in enumerate(zip(outs, refs)):
        o = o.detach().cpu()
        r = r.detach().cpu()
        if tuple(o.shape) != tuple(r.shape):
            raise ExportCheckError(
                f"check: output {i} of {path!r} has shape {list(o.shape)}, the model's {list(r.shape)}",
                math.inf,
                tol,
                path,
            )
        if r.numel() == 0:
            continue
        if r.is_floating_point():
            err = max(err, (o.double() - r.double()).abs().max().item())
            scale = max(scale, r.double().abs().max().item())
        elif not torch.equal(o.to(r.dtype), r):
            err = math.inf
    return err, scale


def _time_ms(fn: Callable[[], Any], runs: int, sync: bool) -> float:
    for _ in range(min(3, runs)):
        fn()
    times = []
    for _ in range(runs):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _artefact_size(path: str) -> int:
    size = os.path.getsize(path)
    data = path + ".data"  # ONNX external data written next to the model for > 2 GB models
    if os.path.exists(data):
        size += os.path.getsize(data)
    return size


def export(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    format: str = "onnx",
    check: bool = True,
    dynamic_batch: bool = True,
    opset: int | None = None,
    *,
    tol: float | None = None,
    aoti: bool = False,
    max_batch: int | None = None,
    latency_runs: int = 20,
) -> ExportResult:
    """Fold ``model`` and export it for inference; optionally run the artefact in its runtime and compare.

    Args:
        model: any nn.Module with pai_fast dendritic layers (or none); it is not modified.
        example_inputs: tuple of tensors, the positional inputs of ``model`` (a single tensor is accepted).
        path: file to write (parent folders are created).
        format: "onnx" (runs in onnxruntime), "pt2" (``torch.export.save``; an AOTInductor package with
            ``aoti=True``) or "executorch" (``.pte`` with the XNNPACK delegate; needs ``pai-fast[executorch]``).
        check: run the artefact on ``example_inputs`` in its runtime (onnxruntime, ``torch.export.load`` /
            ``aoti_load_package``, ``executorch.runtime``), raise ``ExportCheckError`` if the max abs error to the
            original model exceeds ``tol * max(1, max|y|)``, and time it (median of ``latency_runs`` runs).
        dynamic_batch: make dim 0 of the inputs a dynamic batch dim (inputs whose dim 0 matches the first input's).
        opset: ONNX opset (default 18; >= 18). Only for format="onnx".
        tol: check tolerance; default 1e-5 (float32/float64), 1e-2 (float16), 5e-2 (bfloat16).
        aoti: with format="pt2", compile an AOTInductor package (``torch._inductor.aoti_compile_and_package``).
        max_batch: upper bound of the dynamic batch (default: none; 64 for ExecuTorch, which plans memory for it).
        latency_runs: timed runs for ``latency_ms``.

    ONNX and ExecuTorch artefacts are traced from a CPU copy (they target CPU runtimes); pt2 keeps the model's
    device. Returns an ``ExportResult(path, format, size_bytes, max_abs_error, latency_ms)``.
    """
    fmt = _check_format(format)
    model = _check_model(model)
    inputs = _check_inputs(example_inputs)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"path: expected a file name, got the existing folder {path!r}")
    if opset is not None and fmt != "onnx":
        raise ValueError(f"opset: only used with format='onnx', got opset={opset!r} with format={fmt!r}")
    if opset is None:
        opset = DEFAULT_OPSET
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < MIN_OPSET:
        raise ValueError(f"opset: expected an int >= {MIN_OPSET} (the torch.export ONNX exporter), got {opset!r}")
    if aoti and fmt != "pt2":
        raise ValueError(f"aoti: only used with format='pt2', got format={fmt!r}")
    if max_batch is not None and (not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1):
        raise ValueError(f"max_batch: expected a positive int or None, got {max_batch!r}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0):
        raise ValueError(f"tol: expected a positive number or None, got {tol!r}")
    if not isinstance(latency_runs, int) or latency_runs < 1:
        raise ValueError(f"latency_runs: expected a positive int, got {latency_runs!r}")
    if fmt == "executorch" and importlib.util.find_spec("executorch") is None:
        raise ImportError(
            f"format='executorch' needs the executorch package, which is not installed: {EXECUTORCH_HINT}"
        )

    refs = _run_original(model, inputs)  # also when check=False: bad example inputs get a clear message here
    batch = next((t.shape[0] for t in inputs if t.dim() > 0), None)
    if dynamic_batch and max_batch is not None and batch is not None and max_batch < batch:
        raise ValueError(f"max_batch: {max_batch} is smaller than the example batch {batch}")
    folded = fold(model)
    if fmt in ("onnx", "executorch"):
        folded = folded.to("cpu")
        inputs = tuple(t.detach().cpu() for t in inputs)
    else:
        device = next((p.device for p in folded.parameters()), None)
        inputs = tuple(t.detach() if device is None else t.detach().to(device) for t in inputs)
    if fmt == "executorch" and dynamic_batch and max_batch is None:
        max_batch = max(DEFAULT_EXECUTORCH_MAX_BATCH, max((t.shape[0] for t in inputs if t.dim()), default=1))
    shapes, trace = _batch_dynamic_shapes(inputs, max_batch) if dynamic_batch else (None, inputs)
    ep = _torch_export(folded, trace, shapes, fmt)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "onnx":
        n_bytes = sum(p.numel() * p.element_size() for p in folded.parameters())
        _write_onnx(ep, trace, path, opset, big=n_bytes > 1_800_000_000)  # protobuf's 2 GB limit
    elif fmt == "pt2":
        try:
            if aoti:
                torch._inductor.aoti_compile_and_package(ep, package_path=path)
            else:
                torch.export.save(ep, path)
        except Exception as exc:
            raise ExportError(f"format='pt2': writing {path!r} failed ({type(exc).__name__}: {exc})") from exc
    else:
        _write_executorch(ep, path)
    size = _artefact_size(path)
    if not check:
        return ExportResult(path, fmt, size, None, None)

    run = _runner(fmt, path, aoti)
    outs = run(inputs)
    err, scale = _max_error(outs, refs, path, 0.0)
    limit = (tol if tol is not None else _default_tol(refs[0].dtype)) * scale
    if not err <= limit:
        raise ExportCheckError(
            f"check: {fmt} artefact {path!r} differs from the model by max |error| = {err:.3g} on inputs "
            f"{_describe(inputs)}, above the tolerance {limit:.3g} (tol x max(1, max|y|)); the file was kept for "
            "inspection",
            err,
            limit,
            path,
        )
    sync = fmt == "pt2" and any(t.is_cuda for t in inputs)
    latency = _time_ms(lambda: run(inputs), latency_runs, sync)
    return ExportResult(path, fmt, size, err, latency)


# ---------------------------------------------------------------------------------------------------------------
# CLI: pai-fast export


def _load_factory(spec: str) -> Callable[[], Any]:
    if ":" not in spec:
        raise ValueError(f"--model: expected 'module:factory' or 'path/to/file.py:factory', got {spec!r}")
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise ValueError(f"--model: expected 'module:factory' or 'path/to/file.py:factory', got {spec!r}")
    if mod_name.endswith(".py"):
        if not os.path.isfile(mod_name):
            raise ValueError(f"--model: no such file {mod_name!r}")
        name = "_pai_fast_export_" + os.path.splitext(os.path.basename(mod_name))[0]
        module_spec = importlib.util.spec_from_file_location(name, mod_name)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # a module next to the user, as `python -m` would find it
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ValueError(f"--model: cannot import module {mod_name!r} ({exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--model: {spec!r} is a {type(obj).__name__}, expected a callable returning the model")
    return obj


def _parse_shapes(text: str) -> list[tuple[int, ...]]:
    shapes = []
    for part in text.split(";"):
        try:
            shape = tuple(int(s) for s in part.split(",") if s.strip())
        except ValueError:
            shape = ()
        if not shape or any(s < 0 for s in shape):
            raise ValueError(
                f"--input-shape: expected comma-separated sizes like 1,64 (';' between inputs), got {text!r}"
            )
        shapes.append(shape)
    return shapes


_DENDRITIC_FOR = {nn.Linear: DendriticLinear, nn.Conv1d: DendriticConv1d, nn.Conv2d: DendriticConv2d}
_DENDRITIC_FOR[nn.Conv3d] = DendriticConv3d


def _grow_to_state(
    model: nn.Module, sd: dict[str, torch.Tensor], activation: str, activations: dict[str, str] | None = None
) -> nn.Module:
    """Resize (or make dendritic, with ``activations[path]`` if recorded, else ``activation``) the layers named by
    ``*.dendrite_weight`` keys to the saved dendrite counts. A plain state dict records no activation: pai_fast
    layers keep theirs."""
    for key, t in sd.items():
        if not key.endswith("dendrite_weight"):
            continue
        prefix = key[: -len("dendrite_weight")].rstrip(".")
        try:
            layer = model.get_submodule(prefix)
        except AttributeError as exc:
            raise ValueError(f"--checkpoint: key {key!r} names no module of the model") from exc
        d = int(t.shape[0])
        if isinstance(layer, DendriteMixin):
            layer._set_num_dendrites(d)
            continue
        cls = _DENDRITIC_FOR.get(type(layer))
        if cls is None:
            raise ValueError(f"--checkpoint: key {key!r} holds dendrites for a {type(layer).__name__}")
        new = cls.from_module(layer, dendrites=d, activation=(activations or {}).get(prefix, activation))
        if prefix:
            parent_name, _, child = prefix.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
        else:
            model = new
    return model


def _load_weights(model: nn.Module, path: str, activation: str = "sigmoid") -> nn.Module:
    """Load a pai_fast checkpoint, a perforatedai checkpoint or a plain state dict (.pt / .safetensors)."""
    if not os.path.isfile(path):
        raise ValueError(f"--checkpoint: no such file {path!r}")
    with open(path, "rb") as f:
        head = f.read(8)
    metadata: dict[str, str] = {}
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"--checkpoint: {path!r} holds a {type(sd).__name__}, expected a state dict")
    else:
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise ValueError(f"--checkpoint: {path!r} is neither a torch.save file nor safetensors ({exc})") from exc
    perforatedai = any(".main_module." in k or "dendrites_to_top" in k or k == "tracker_string" for k in sd)
    has_pai_fast_layers = any(isinstance(m, DendriteMixin) for m in model.modules())
    if "pai_fast.format_version" in metadata or (perforatedai and has_pai_fast_layers):
        from .checkpoint import load_checkpoint

        if "pai_fast.format_version" in metadata:
            # A model built by a plain factory: make the checkpoint's dendritic layers dendritic first.
            acts = json.loads(metadata.get("pai_fast.activations") or "{}")
            model = _grow_to_state(model, sd, activation, acts)
        load_checkpoint(model, path)
        return model
    if perforatedai:
        from .convert import from_perforatedai

        return from_perforatedai(sd, model=model, activation=activation)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}  # saved from DataParallel/DDP
    model = _grow_to_state(model, sd, activation)
    model.load_state_dict(sd)
    return model


def main(argv: list[str] | None = None) -> int:
    """``pai-fast export``: build a model from a factory, load weights, fold, export, check and time it."""
    p = argparse.ArgumentParser(prog="pai-fast export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="module:factory or file.py:factory, a callable returning the model")
    p.add_argument(
        "--checkpoint", help="pai_fast checkpoint, perforatedai checkpoint, or a state dict (.pt / .safetensors)"
    )
    p.add_argument(
        "--activation",
        default="sigmoid",
        choices=["sigmoid", "tanh", "relu", "identity"],
        help="dendrite activation for layers that get their dendrites from a plain state dict or a perforatedai "
        "checkpoint (these files do not record it; default sigmoid, perforatedai's default)",
    )
    p.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,64 (';' between inputs)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--format", default="onnx", choices=list(FORMATS))
    p.add_argument("--out", required=True, help="output file (.onnx, .pt2, .pte)")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--static-batch", action="store_true", help="do not make the batch dim dynamic")
    p.add_argument("--aoti", action="store_true", help="with --format pt2: compile an AOTInductor package")
    p.add_argument("--no-check", action="store_true", help="do not run the artefact in its runtime")
    args = p.parse_args(argv)

    try:
        factory = _load_factory(args.model)
        model = factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"--model: {args.model!r} returned a {type(model).__name__}, expected an nn.Module")
        if args.checkpoint:
            model = _load_weights(model, args.checkpoint, args.activation)
        dtype = getattr(torch, args.dtype)
        inputs = tuple(torch.randn(s, dtype=dtype) for s in _parse_shapes(args.input_shape))
        model = model.to(dtype)
        result = export(
            model,
            inputs,
            args.out,
            args.format,
            check=not args.no_check,
            dynamic_batch=not args.static_batch,
            opset=args.opset,
            aoti=args.aoti,
        )
    except (ValueError, TypeError, ImportError, ExportError, ExportCheckError) as exc:
        print(f"pai-fast export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote      {result.path} ({result.format})")
    print(f"size       {result.size_bytes} bytes ({result.size_bytes / 1e6:.3f} MB)")
    if result.max_abs_error is not None:
        print(f"check      max abs error {result.max_abs_error:.3g} vs the original model")
        runtime = {"onnx": "onnxruntime", "pt2": "AOTInductor" if args.aoti else "torch.export.load"}.get(
            result.format, "executorch.runtime"
        )
        print(f"latency    {result.latency_ms:.3f} ms (median of 20 runs, input {args.input_shape}, {runtime})")
    else:
        print("check      skipped (--no-check)")
    return 0
