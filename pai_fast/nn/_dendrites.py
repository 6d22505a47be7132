"""Dendrite parameters shared by DendriticLinear and DendriticConv*d.

A layer with out-channel count N and weight shape S holds, besides the torch layer's own ``weight`` and
``bias``: ``dendrite_weight`` [D, *S], ``dendrite_bias`` [D, N] (iff bias), ``dendrite_gate`` [D, N] and
``dendrite_cascade`` [D, D, N]. Growth (perforatedai spec §2.4): new dendrite weights and biases are drawn
N(0, 0.01^2); the new gate row and every new cascade entry are zero, so the output does not change.
Growth re-creates these Parameters (shapes change): optimizers must be rebuilt, as in perforatedai.
"""

from __future__ import annotations

import torch
from torch import nn

from .._layout import stacked_strides, stacked_view
from ..activations import ActivationLike, activation_name

INIT_STD = 0.01  # perforatedai's candidate_weight_initialization_multiplier


class DendriteMismatchError(ValueError):
    """A state dict or checkpoint holds a different number of dendrites than the layer."""


class DendriteMixin:
    """Adds dendrite parameters to a torch layer that has ``weight`` [N, ...] and maybe ``bias``."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_dendrites(self, dendrites: int, activation: ActivationLike) -> None:
        if not isinstance(dendrites, int) or isinstance(dendrites, bool) or dendrites < 0:
            raise ValueError(f"dendrites: expected a non-negative int, got {dendrites!r}")
        activation_name(activation)  # validates
        self.activation = activation
        w = self.weight
        n = w.shape[0]
        kw = {"device": w.device, "dtype": w.dtype}
        self.dendrite_weight = nn.Parameter(torch.empty((0, *w.shape), **kw))
        if self.bias is not None:
            self.dendrite_bias = nn.Parameter(torch.empty((0, n), **kw))
        else:
            self.register_parameter("dendrite_bias", None)
        self.dendrite_gate = nn.Parameter(torch.empty((0, n), **kw))
        self.dendrite_cascade = nn.Parameter(torch.empty((0, 0, n), **kw))
        if dendrites:
            self.add_dendrite(dendrites)

    @property
    def num_dendrites(self) -> int:
        """Number of dendrites D."""
        return self.dendrite_weight.shape[0]

    @property
    def activation_name(self) -> str:
        """Name of the dendrite activation ("callable" for a custom function)."""
        return activation_name(self.activation) or getattr(self.activation, "__name__", "callable")

    @torch.no_grad()
    def add_dendrite(self, n: int = 1, generator: torch.Generator | None = None) -> None:
        """Add ``n`` dendrites; the layer's output is unchanged (new gate rows and cascade entries are zero)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        w = self.dendrite_weight
        d, c = w.shape[0], self.weight.shape[0]
        kw = {"device": w.device, "dtype": w.dtype}

        def randn(*shape):
            t = torch.randn(
                shape,
                generator=generator,
                device="cpu" if generator is not None else w.device,
                dtype=torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype,
            )
            return (t * INIT_STD).to(**kw)

        self.dendrite_weight = nn.Parameter(torch.cat([w, randn(n, *self.weight.shape)], 0))
        if self.dendrite_bias is not None:
            self.dendrite_bias = nn.Parameter(torch.cat([self.dendrite_bias, randn(n, c)], 0))
        self.dendrite_gate = nn.Parameter(torch.cat([self.dendrite_gate, torch.zeros((n, c), **kw)], 0))
        cascade = torch.zeros((d + n, d + n, c), **kw)
        cascade[:d, :d] = self.dendrite_cascade
        self.dendrite_cascade = nn.Parameter(cascade)
        self._pack_weights()

    @torch.no_grad()
    def _set_num_dendrites(self, d: int) -> None:
        """Resize to ``d`` dendrites (values are placeholders); used before loading a state dict."""
        if d > self.num_dendrites:
            self.add_dendrite(d - self.num_dendrites)
        elif d < self.num_dendrites:
            self.dendrite_weight = nn.Parameter(self.dendrite_weight[:d].clone())
            if self.dendrite_bias is not None:
                self.dendrite_bias = nn.Parameter(self.dendrite_bias[:d].clone())
            self.dendrite_gate = nn.Parameter(self.dendrite_gate[:d].clone())
            self.dendrite_cascade = nn.Parameter(self.dendrite_cascade[:d, :d].clone())
            self._pack_weights()

    @torch.no_grad()
    def _pack_weights(self) -> None:
        """Keep ``weight`` and ``dendrite_weight`` back to back in one storage, i.e. views of one stacked
        Wcat [1 + D, *S]: the fused forward then reads the stacked weight through one TMA descriptor and the
        backward's dX is one GEMM. Only ``.data`` moves (the Parameter objects, hence optimizers and hooks, stay);
        weights that end up apart anyway (FSDP, ``load_state_dict(assign=True)``) run on the general path."""
        w, v = self.weight, self.dendrite_weight
        d = v.shape[0]
        if d == 0 or not isinstance(w, nn.Parameter) or w.is_meta or w.dtype != v.dtype or w.device != v.device:
            return
        if stacked_view(w, v) is not None:
            return
        # The stacked buffer keeps weight's memory format (channels_last after module.to(memory_format=...)):
        # the fused conv reads its weight tiles channels-innermost, so it then runs with no per-call re-layout.
        strides = stacked_strides(w) or torch.empty((1 + d, *w.shape), device="meta").stride()
        buf = torch.empty_strided((1 + d, *w.shape), strides, dtype=w.dtype, device=w.device)
        buf[0].copy_(w)
        buf[1:].copy_(v)
        w.data = buf[0]
        v.data = buf[1:]

    def _apply(self, fn, recurse=True):
        # A dendrite weight [D, *S] is D weights of shape S: it converts as one weight [D * N, *S[1:]], so that a
        # conversion meant for S applies to it too (module.to(memory_format=torch.channels_last) refuses a 5-D
        # tensor; a Conv2d's dendrite weight is one).
        shape = self.dendrite_weight.shape

        def convert(t):
            if t.dim() >= 3 and t.shape == shape:
                return fn(t.flatten(0, 1)).unflatten(0, tuple(shape[:2]))
            return fn(t)

        if recurse:
            for child in self.children():  # type: ignore[attr-defined]
                child._apply(fn)
        out = super()._apply(convert, recurse=False)  # type: ignore[misc]
        # .to()/.cuda()/.half() give every parameter a storage of its own: stack the weights again.
        self._pack_weights()
        return out

    def dendrite_args(self) -> tuple:
        return self.dendrite_weight, self.dendrite_bias, self.dendrite_gate, self.dendrite_cascade

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "dendrite_weight"
        if key in state_dict and state_dict[key].shape[0] != self.num_dendrites:
            raise DendriteMismatchError(
                f"layer {prefix.rstrip('.') or type(self).__name__!r}: the state dict has "
                f"{state_dict[key].shape[0]} dendrites, the layer has {self.num_dendrites}; grow the layer first "
                "(add_dendrite) or load with pai_fast.load_checkpoint, which rebuilds the structure"
            )
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _dendrite_repr(self) -> str:
        return f", dendrites={self.num_dendrites}, activation={self.activation_name}"
