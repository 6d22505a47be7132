"""Dendrites for any module: a generic wrapper (PAISequential blocks, RNNs, user blocks), and PAISequential.

``DendriticModule(block)`` computes, for dendrites h_i that are copies of ``block`` fed the block's own inputs:

    y = block(x) + sum_i G[i] * act(h_i(x) + sum_{j<i} B[i, j] * a_j)      (pai_fast.reference.dendritic_combine)

with ``G = dendrite_gate [D, C]`` and ``B = dendrite_cascade [D, D, C]`` per output channel, broadcast over every
other dim, exactly like DendriticLinear/DendriticConv*d. A new dendrite is a deep copy of the block with every
parameter redrawn N(0, m^2) (m = ``candidate_weight_initialization_multiplier``, times the block's mean |param|
with ``candidate_weight_init_by_main``) and its buffers reset to the block's buffers at wrap time; its gate row
and cascade entries are zero, so growth does not change the output (spec §2.4).

The channel dim (perforatedai's node dim): by default the last dim for blocks starting with a Linear (any number
of leading batch/time dims), dim 1 for blocks starting with a conv, else ``pc.get_output_dimensions()``; set it
with ``set_this_output_dimensions([-1, -1, 0])``. The channel count C is read from the first forward output.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..reference import dendritic_combine
from .errors import PAIConfigurationError

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm)


class PAISequential(nn.Sequential):
    """A block of layers that gets dendrites as one unit (e.g. ``PAISequential([conv, bn])``)."""

    def __init__(self, layer_array) -> None:
        super().__init__()
        self.model = nn.Sequential(*layer_array)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def _first_leaf(module: nn.Module) -> nn.Module:
    if isinstance(module, PAISequential):
        return _first_leaf(module.model)
    if isinstance(module, nn.Sequential) and len(module) > 0:
        return _first_leaf(module[0])
    return module


def validate_output_dimensions(dims) -> list[int]:
    """A node-dimension vector as a list of ints with exactly one 0 (spec §2.2)."""
    if torch.is_tensor(dims):
        dims = dims.tolist()
    try:
        dims = [int(d) for d in dims]
    except (TypeError, ValueError) as exc:
        raise PAIConfigurationError(
            f"output dimensions: expected a list of ints like [-1, 0, -1], got {dims!r}"
        ) from exc
    if dims.count(0) != 1:
        raise PAIConfigurationError(
            f"output dimensions: need exactly one 0 (the channel/node dim), got {dims}; e.g. [-1, 0] for "
            "[batch, features], [-1, -1, 0] for [batch, time, features], [-1, 0, -1, -1] for NCHW"
        )
    if any(d < -1 for d in dims):
        raise PAIConfigurationError(f"output dimensions: entries are -1, 0, 1 or a size, got {dims}")
    return dims


class DendriticModule(nn.Module):
    """Dendrites around an arbitrary module (see the module docstring)."""

    def __init__(
        self,
        module: nn.Module,
        name: str = "",
        *,
        activation: Callable | str = torch.sigmoid,
        processor_class: type | None = None,
        output_dimensions=None,
        init_multiplier: float = 0.01,
        init_by_main: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        self.main_module = module
        self.dendrites = nn.ModuleList()
        self.name = name
        self.activation = activation
        self.init_multiplier = init_multiplier
        self.init_by_main = init_by_main
        self._processor_class = processor_class
        self.processor = processor_class() if processor_class is not None else None
        self.dendrite_processors: list = []
        self._create_dendrite_fn: Callable | None = None
        # Buffers a new dendrite starts from (perforatedai copies them from a wrap-time copy of the block).
        self._template_buffers = {k: b.detach().clone() for k, b in module.named_buffers()}
        first = _first_leaf(module)
        if isinstance(first, nn.Linear):
            self._default_channel_dim: int | None = -1
        elif isinstance(first, nn.modules.conv._ConvNd):
            self._default_channel_dim = 1
        else:
            self._default_channel_dim = None
        self._output_dimensions: list[int] | None = None
        self._fallback_dimensions = validate_output_dimensions(
            output_dimensions if output_dimensions is not None else [-1, 0, -1, -1]
        )
        self.num_channels: int | None = None
        p = next((t for t in module.parameters() if t.is_floating_point()), None)
        kw = {
            "dtype": p.dtype if p is not None else torch.get_default_dtype(),
            "device": p.device if p is not None else None,
        }
        self.dendrite_gate = nn.Parameter(torch.empty((0, 0), **kw))
        self.dendrite_cascade = nn.Parameter(torch.empty((0, 0, 0), **kw))

    # ------------------------------------------------------------------------------------------ attributes
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("main_module", "_modules", "_parameters", "_buffers"):
                raise
            return getattr(self.main_module, name)

    def __getitem__(self, index):
        return self.main_module[index]

    @property
    def num_dendrites(self) -> int:
        return len(self.dendrites)

    @property
    def dendrite_modules_added(self) -> int:
        """perforatedai's name for the number of dendrites."""
        return len(self.dendrites)

    @property
    def this_output_dimensions(self) -> list[int]:
        if self._output_dimensions is not None:
            return list(self._output_dimensions)
        return list(self._fallback_dimensions)

    def set_this_output_dimensions(self, new_output_dimensions) -> None:
        """Which output dim holds the channels: a list with one 0 (the channel dim) and -1 elsewhere."""
        self._output_dimensions = validate_output_dimensions(new_output_dimensions)

    def set_create_dendrite(self, fn: Callable[[nn.Module], nn.Module] | None) -> None:
        """Build new dendrites with ``fn(main_module)`` instead of a copy of the block (its params are redrawn)."""
        self._create_dendrite_fn = fn

    def clear_processors(self) -> None:
        for proc in [self.processor, *self.dendrite_processors]:
            if proc is not None and hasattr(proc, "clear_processor"):
                proc.clear_processor()

    # --------------------------------------------------------------------------------------------- forward
    def _channel_dim(self, y: torch.Tensor) -> int:
        dims = self._output_dimensions
        if dims is None and self._default_channel_dim is not None:
            return self._default_channel_dim
        if dims is None:
            dims = self._fallback_dimensions
        nd = y.dim()
        if len(dims) < nd or any(d != -1 for d in dims[nd:]):
            raise PAIConfigurationError(
                f"module {self.name or type(self.main_module).__name__}: its output has shape {tuple(y.shape)} but "
                f"the output dimensions are {dims}; call model{self.name}.set_this_output_dimensions(...) with one "
                f"0 at the channel dim and -1 elsewhere, e.g. {[-1] * (nd - 1) + [0]}"
            )
        for i, d in enumerate(dims[:nd]):
            if d > 1 and y.shape[i] != d:
                raise PAIConfigurationError(
                    f"module {self.name}: output dim {i} has size {y.shape[i]}, the output dimensions say {d}"
                )
        return dims.index(0)

    def _learn_channels(self, c: int) -> None:
        if self.num_channels is None:
            self.num_channels = c
            if self.num_dendrites == 0:
                kw = {"dtype": self.dendrite_gate.dtype, "device": self.dendrite_gate.device}
                self.dendrite_gate = nn.Parameter(torch.empty((0, c), **kw))
                self.dendrite_cascade = nn.Parameter(torch.empty((0, 0, c), **kw))
        elif c != self.num_channels:
            raise PAIConfigurationError(
                f"module {self.name}: output has {c} channels at the channel dim, earlier calls had "
                f"{self.num_channels}; set the right dim with set_this_output_dimensions"
            )

    def forward(self, *args, **kwargs):
        out = self.main_module(*args, **kwargs)
        proc = self.processor
        y0 = proc.post_n1(out) if proc is not None else out
        if not torch.is_tensor(y0):
            raise PAIConfigurationError(
                f"module {self.name or type(self.main_module).__name__} returns a {type(out).__name__}, not one "
                "tensor: register a processor for its type, e.g. pc.append_modules_with_processing([nn.LSTM]) and "
                "pc.append_modules_processing_classes([pai_fast.tracker.LSTMProcessor]) "
                "(or MultiOutputProcessor for tuples whose first element gets the dendrites)"
            )
        cdim = self._channel_dim(y0)
        self._learn_channels(y0.shape[cdim])
        if not self.dendrites:
            return proc.post_n2(y0) if proc is not None else y0
        branches = []
        for i, dendrite in enumerate(self.dendrites):
            if proc is not None:
                d_args, d_kwargs = self.dendrite_processors[i].pre_d(*args, **kwargs)
                u = self.dendrite_processors[i].post_d(dendrite(*d_args, **d_kwargs))
            else:
                u = dendrite(*args, **kwargs)
            branches.append(u)
        y = dendritic_combine(y0, branches, self.dendrite_gate, self.dendrite_cascade, self.activation, cdim)
        return proc.post_n2(y) if proc is not None else y

    # ---------------------------------------------------------------------------------------------- growth
    def _new_dendrite(self) -> nn.Module:
        if self._create_dendrite_fn is not None:
            new = self._create_dendrite_fn(self.main_module)
        else:
            new = copy.deepcopy(self.main_module)
        scale = self.init_multiplier
        if self.init_by_main:
            params = list(self.main_module.parameters())
            total = sum(p.numel() for p in params)
            scale *= (sum(p.detach().abs().sum().item() for p in params) / total) if total else 1.0
        with torch.no_grad():
            for p in new.parameters():
                if p.dtype == torch.uint8:
                    p.copy_(torch.randint(0, 256, p.shape, dtype=torch.uint8, device=p.device))
                else:
                    p.copy_(torch.randn(p.shape, dtype=p.dtype, device=p.device) * scale)
                p.grad = None
            for name, b in new.named_buffers():
                src = self._template_buffers.get(name)
                if src is not None and src.shape == b.shape:
                    b.copy_(src)
        new.train(self.main_module.training)
        return new

    @torch.no_grad()
    def add_dendrite(self, n: int = 1) -> None:
        """Add ``n`` dendrites; the output does not change (new gate rows and cascade entries are zero)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        c = self.num_channels
        if c is None:
            raise PAIConfigurationError(
                f"module {self.name or type(self.main_module).__name__} has never run: run at least one forward pass "
                "(one training batch) before dendrites are added, so its channel count is known"
            )
        d = self.num_dendrites
        for _ in range(n):
            self.dendrites.append(self._new_dendrite())
            if self._processor_class is not None:
                self.dendrite_processors.append(self._processor_class())
        kw = {"dtype": self.dendrite_gate.dtype, "device": self.dendrite_gate.device}
        self.dendrite_gate = nn.Parameter(torch.cat([self.dendrite_gate, torch.zeros((n, c), **kw)], 0))
        cascade = torch.zeros((d + n, d + n, c), **kw)
        cascade[:d, :d] = self.dendrite_cascade
        self.dendrite_cascade = nn.Parameter(cascade)

    @torch.no_grad()
    def _set_num_dendrites(self, d: int) -> None:
        """Resize to ``d`` dendrites (new ones are placeholders); used before loading a state dict."""
        if d > self.num_dendrites:
            self.add_dendrite(d - self.num_dendrites)
        elif d < self.num_dendrites:
            del self.dendrites[d:]
            del self.dendrite_processors[d:]
            self.dendrite_gate = nn.Parameter(self.dendrite_gate[:d].clone())
            self.dendrite_cascade = nn.Parameter(self.dendrite_cascade[:d, :d].clone())

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # The channel count travels with the gate; an unrun module learns it from a checkpoint.
        key = prefix + "dendrite_gate"
        if key in state_dict and self.num_channels is None and state_dict[key].dim() == 2:
            c = state_dict[key].shape[1]
            if state_dict[key].shape[0] > 0 or c > 0:
                self._learn_channels(c)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"dendrites={self.num_dendrites}, channels={self.num_channels}"


def is_norm_layer(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES)
