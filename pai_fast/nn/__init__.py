"""Dendritic layers: drop-in replacements for nn.Linear and nn.Conv1d/2d/3d."""

from ._dendrites import DendriteMismatchError, DendriteMixin
from .conv import DendriticConv1d, DendriticConv2d, DendriticConv3d
from .linear import DendriticLinear

__all__ = [
    "DendriteMismatchError",
    "DendriteMixin",
    "DendriticConv1d",
    "DendriticConv2d",
    "DendriticConv3d",
    "DendriticLinear",
]
