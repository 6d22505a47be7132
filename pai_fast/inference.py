"""Fast in-process inference: ``optimize(model, example_inputs)`` -> a callable module.

On a CUDA GPU the returned module

* runs an inference copy of the model (eval mode, ``requires_grad=False``, under ``torch.no_grad``; the input
  model is not modified), in which every dendritic layer calls the fused forward op directly
  (``pai_fast::dendritic_linear_fwd`` / ``dendritic_conv_fwd`` with ``save_for_backward=False``: no autograd
  node, no saved dendrite activations) through the ``auto`` backend (Triton, else CUDA C++, else torch with one
  warning); layers the fused kernels do not cover (0 dendrites, custom activation callables, grouped or
  string-padded convs) run their folded plain-torch form (pai_fast.exporting.fold_layer);
* captures the whole forward in a CUDA graph per input signature (shapes, dtypes) and replays it: each call
  copies the inputs into the graph's static input buffers, replays, and returns a clone of the static outputs
  (``clone_outputs=False`` returns the static buffers themselves, which the next call overwrites). The graph for
  ``example_inputs`` is captured up front (after warm-up runs on a side stream, which also compile/tune the Triton
  kernels); other shapes are captured on first use, up to ``max_graphs``; beyond that they run eagerly.

On a CPU it returns ``pai_fast.fold(model)`` (cast to ``dtype``): standard torch ops, no graphs, no warnings.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from .activations import FUSED_CODES, activation_name
from .backends import CHOICES
from .exporting import _check_inputs, _check_model, fold, fold_layer
from .functional import dendritic_conv1d, dendritic_conv2d, dendritic_conv3d, dendritic_linear
from .nn import DendriteMixin

__all__ = ["CUDAGraphInference", "optimize"]

_CONV = {1: dendritic_conv1d, 2: dendritic_conv2d, 3: dendritic_conv3d}


def _frozen(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False)


class _FusedLinear(nn.Module):
    """A DendriticLinear for inference: the fused op with an explicit backend, no autograd."""

    def __init__(self, layer: nn.Module, backend: str | None) -> None:
        super().__init__()
        d = int(layer.num_dendrites)
        self.weight = _frozen(layer.weight)
        self.bias = _frozen(layer.bias)
        self.dendrite_weight = _frozen(layer.dendrite_weight[:d])
        self.dendrite_bias = _frozen(None if layer.dendrite_bias is None else layer.dendrite_bias[:d])
        self.dendrite_gate = _frozen(layer.dendrite_gate[:d])
        self.dendrite_cascade = _frozen(layer.dendrite_cascade[:d, :d])
        self.activation = activation_name(layer.activation)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dendritic_linear(
            x,
            self.weight,
            self.bias,
            self.dendrite_weight,
            self.dendrite_bias,
            self.dendrite_gate,
            self.dendrite_cascade,
            activation=self.activation,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"dendrites={self.dendrite_weight.shape[0]}, activation={self.activation}, backend={self.backend}"


class _FusedConv(_FusedLinear):
    """A DendriticConvNd for inference: the fused op with an explicit backend, no autograd."""

    def __init__(self, layer: nn.Module, backend: str | None) -> None:
        super().__init__(layer, backend)
        self.nd = layer.weight.dim() - 2
        self.stride = layer.stride
        self.padding = layer.padding
        self.dilation = layer.dilation
        self.padding_mode = layer.padding_mode
        self.reversed_padding = tuple(layer._reversed_padding_repeated_twice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            padding = 0
        # Unbatched input runs on the torch backend (the fused conv takes batched input only).
        backend = self.backend if x.dim() == self.nd + 2 else "torch"
        return _CONV[self.nd](
            x,
            self.weight,
            self.bias,
            self.dendrite_weight,
            self.dendrite_bias,
            self.dendrite_gate,
            self.dendrite_cascade,
            self.stride,
            padding,
            self.dilation,
            1,
            activation=self.activation,
            backend=backend,
        )


def _inference_layer(layer: nn.Module, path: str, backend: str | None, fused_convs: bool = True) -> nn.Module:
    name = activation_name(layer.activation)
    fused = int(layer.num_dendrites) > 0 and name in FUSED_CODES and backend != "torch"
    if fused and isinstance(layer, nn.Linear):
        return _FusedLinear(layer, backend)
    if (
        fused
        and fused_convs
        and isinstance(layer, nn.modules.conv._ConvNd)
        and not layer.transposed
        and layer.groups == 1
        and not isinstance(layer.padding, str)
    ):
        return _FusedConv(layer, backend)
    return fold_layer(layer, path)  # the best plain-torch form (cuBLAS/cuDNN over the stacked weight)


def _inference_copy(model: nn.Module, backend: str | None, fused_convs: bool = True) -> nn.Module:
    memo: dict[int, Any] = {}
    for path, m in model.named_modules():
        if isinstance(m, DendriteMixin) and id(m) not in memo:
            memo[id(m)] = _inference_layer(m, path, backend, fused_convs)
    out = memo[id(model)] if id(model) in memo else copy.deepcopy(model, memo)
    out.eval()
    out.requires_grad_(False)
    return out


class _Graph:
    __slots__ = ("graph", "static_inputs", "static_output")

    def __init__(self, graph, static_inputs, static_output) -> None:
        self.graph = graph
        self.static_inputs = static_inputs
        self.static_output = static_output


def _signature(inputs: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in inputs)


class CUDAGraphInference(nn.Module):
    """Inference module returned by ``optimize`` on a GPU (see the module docstring)."""

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        dtype: torch.dtype | None,
        cuda_graph: bool,
        clone_outputs: bool,
        max_graphs: int,
        warmup: int,
    ) -> None:
        super().__init__()
        self.module = module
        self.device = device
        self.dtype = dtype
        self.cuda_graph = cuda_graph
        self.clone_outputs = clone_outputs
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: dict[tuple, _Graph] = {}

    def _prepare(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype if (self.dtype is not None and t.is_floating_point()) else t.dtype
        return t.to(device=self.device, dtype=dtype)

    @torch.no_grad()
    def capture(self, inputs: tuple[torch.Tensor, ...]) -> _Graph:
        """Warm up and capture the forward for the signature of ``inputs`` (normally called for you)."""
        static = tuple(self._prepare(t).clone() for t in inputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # compiles/tunes kernels and sets up cuBLAS workspaces outside the capture
                self.module(*static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = self.module(*static)
        except Exception as exc:
            raise RuntimeError(
                f"optimize: CUDA graph capture failed for inputs {[list(t.shape) for t in static]} "
                f"({type(exc).__name__}: {exc}); the model probably synchronises with the host (.item(), "
                "data-dependent shapes, CPU tensors): use optimize(..., cuda_graph=False)"
            ) from exc
        entry = _Graph(graph, static, out)
        self._graphs[_signature(static)] = entry
        return entry

    @torch.no_grad()
    def forward(self, *inputs: torch.Tensor):
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"inputs[{i}]: expected a torch.Tensor, got {type(t).__name__}")
        if not self.cuda_graph:
            return self.module(*(self._prepare(t) for t in inputs))
        key = tuple(
            (
                tuple(t.shape),
                self.dtype if (self.dtype is not None and t.is_floating_point()) else t.dtype,
            )
            for t in inputs
        )
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.module(*(self._prepare(t) for t in inputs))
            entry = self.capture(inputs)
        for dst, src in zip(entry.static_inputs, inputs):
            dst.copy_(src)  # same stream as the replay: ordered; converts device/dtype if needed
        entry.graph.replay()
        if not self.clone_outputs:
            return entry.static_output
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, entry.static_output)

    def extra_repr(self) -> str:
        return (
            f"device={self.device}, dtype={self.dtype}, cuda_graph={self.cuda_graph}, "
            f"graphs={len(self._graphs)}/{self.max_graphs}"
        )


def _model_device(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return inputs[0].device


def optimize(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    cuda_graph: bool = True,
    dtype: torch.dtype | None = None,
    backend: str | None = "auto",
    clone_outputs: bool = True,
    max_graphs: int = 8,
    warmup: int = 3,
    fused_convs: bool = False,
) -> nn.Module:
    """A callable module for fast inference of ``model`` on the device of its parameters.

    Args:
        model: an nn.Module with pai_fast dendritic layers (or none); not modified.
        example_inputs: tuple of tensors (the positional inputs); on a GPU the CUDA graph for their shapes is
            captured now.
        cuda_graph: capture/replay CUDA graphs (GPU only; ignored on CPU).
        dtype: cast the inference copy (and floating inputs) to this dtype, e.g. torch.bfloat16.
        backend: backend of the fused dendritic ops ("auto" picks the fastest fused kernel; None follows
            ``pai_fast.set_backend`` / ``PAI_FAST_BACKEND``; "torch" runs the folded plain-torch layers).
        clone_outputs: return copies of the graph's output buffers (safe); False returns the buffers themselves,
            valid until the next call.
        max_graphs: graphs kept for different input shapes; further shapes run eagerly.
        warmup: eager runs before each capture.
        fused_convs: run dendritic convs through the fused conv op too. Off by default: when this was chosen
            (benchmarks/results/h100_conv_bf16.json) cuDNN's conv over the stacked weight (the folded form) was 3-9x
            faster than the fused Triton conv, and inside a CUDA graph the folded form's extra epilogue ops cost
            little. Since then the fused forward on Hopper (x and weight tiles by TMA) runs at 0.99-1.25x cuDNN's
            conv of width (1+D)·Cout in device time (h200_probe_conv_c619357); the default stays until the
            inference benchmark has measured both forms again.

    Returns:
        On a CUDA device a ``CUDAGraphInference`` module; on a CPU ``pai_fast.fold(model)``.
    """
    model = _check_model(model)
    inputs = _check_inputs(example_inputs)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch.dtype or None, got {dtype!r}")
    if backend is not None and backend not in CHOICES:
        raise ValueError(f"backend: expected one of {list(CHOICES)} or None, got {backend!r}")
    if not isinstance(max_graphs, int) or max_graphs < 1:
        raise ValueError(f"max_graphs: expected a positive int, got {max_graphs!r}")
    if not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"warmup: expected a positive int, got {warmup!r}")
    device = _model_device(model, inputs)
    if device.type != "cuda":
        folded = fold(model)
        return folded.to(dtype) if dtype is not None else folded
    module = _inference_copy(model, backend, fused_convs)
    if dtype is not None:
        module = module.to(dtype)
    wrapped = CUDAGraphInference(module, device, dtype, cuda_graph, clone_outputs, max_graphs, warmup)
    prepared = tuple(wrapped._prepare(t) for t in inputs)
    try:
        with torch.no_grad():
            module(*prepared)
    except Exception as exc:
        raise ValueError(
            f"example_inputs: the model cannot run on inputs of shapes {[list(t.shape) for t in prepared]} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if cuda_graph:
        wrapped.capture(inputs)
    return wrapped
