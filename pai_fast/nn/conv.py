"""DendriticConv1d/2d/3d: ``nn.Conv*d`` plus dendrites (math in pai_fast.reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import ActivationLike
from ..functional import dendritic_conv1d, dendritic_conv2d, dendritic_conv3d
from ._dendrites import DendriteMixin


def conv_init_args(layer: nn.modules.conv._ConvNd) -> tuple:
    """The positional constructor arguments that rebuild ``layer``'s geometry as another nn.ConvNd-like class."""
    return (
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        layer.bias is not None,
        layer.padding_mode,
    )


class _DendriticConvNd(DendriteMixin):
    _functional = None  # set by subclasses
    _torch_conv: type[nn.modules.conv._ConvNd]

    @classmethod
    def from_module(
        cls, layer: nn.modules.conv._ConvNd, *, dendrites: int = 0, activation: ActivationLike | None = None
    ):
        """A dendritic conv holding ``layer``'s weights (copied; dendrites of a dendritic conv are kept)."""
        if not isinstance(layer, cls._torch_conv):
            raise TypeError(f"layer: expected an nn.{cls._torch_conv.__name__}, got {type(layer).__name__}")
        act = activation if activation is not None else getattr(layer, "activation", "sigmoid")
        w = layer.weight
        with torch.device("meta"):
            new = cls(*conv_init_args(layer), dtype=w.dtype, activation=act)
        new = new.to_empty(device=w.device)
        if isinstance(layer, DendriteMixin):
            new._set_num_dendrites(layer.num_dendrites)
        new.load_state_dict(layer.state_dict(), strict=isinstance(layer, DendriteMixin))
        if dendrites:
            new.add_dendrite(dendrites)
        new.train(layer.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            # Same as torch's _ConvNd: pad explicitly, then convolve without padding.
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return self._functional(
            input,
            self.weight,
            self.bias,
            *self.dendrite_args(),
            self.stride,
            padding,
            self.dilation,
            self.groups,
            activation=self.activation,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._dendrite_repr()


class DendriticConv1d(_DendriticConvNd, nn.Conv1d):
    """A Conv1d with D dendrites (copies of the conv) gated per output channel.

    Takes every argument of ``nn.Conv1d`` (same names, defaults and initialisation) plus ``dendrites`` and
    ``activation``; with ``dendrites=0`` it computes exactly ``nn.Conv1d``.
    """

    _functional = staticmethod(dendritic_conv1d)
    _torch_conv = nn.Conv1d

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        dendrites: int = 0,
        activation: ActivationLike = "sigmoid",
    ) -> None:
        nn.Conv1d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self._init_dendrites(dendrites, activation)


class DendriticConv2d(_DendriticConvNd, nn.Conv2d):
    """A Conv2d with D dendrites (copies of the conv) gated per output channel.

    Takes every argument of ``nn.Conv2d`` (same names, defaults and initialisation) plus ``dendrites`` and
    ``activation``; with ``dendrites=0`` it computes exactly ``nn.Conv2d``. NCHW and channels_last inputs.
    """

    _functional = staticmethod(dendritic_conv2d)
    _torch_conv = nn.Conv2d

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        dendrites: int = 0,
        activation: ActivationLike = "sigmoid",
    ) -> None:
        nn.Conv2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self._init_dendrites(dendrites, activation)


class DendriticConv3d(_DendriticConvNd, nn.Conv3d):
    """A Conv3d with D dendrites (copies of the conv) gated per output channel.

    Takes every argument of ``nn.Conv3d`` (same names, defaults and initialisation) plus ``dendrites`` and
    ``activation``; with ``dendrites=0`` it computes exactly ``nn.Conv3d``.
    """

    _functional = staticmethod(dendritic_conv3d)
    _torch_conv = nn.Conv3d

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        dendrites: int = 0,
        activation: ActivationLike = "sigmoid",
    ) -> None:
        nn.Conv3d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self._init_dendrites(dendrites, activation)
