"""Drop-in names of ``perforatedai.modules_perforatedai``.

``PAINeuronModule(module, name)`` returns the dendritic version of ``module`` (a fused DendriticLinear/Conv*d
for plain Linear/Conv layers, else a generic ``DendriticModule``), and ``isinstance(m, PAINeuronModule)`` is
true for every dendritic module. ``TrackedNeuronModule`` is a pass-through wrapper.
"""

from __future__ import annotations

from torch import nn

from ..nn import DendriteMixin, DendriticConv1d, DendriticConv2d, DendriticConv3d, DendriticLinear
from ..tracker.generic import DendriticModule

__all__ = [
    "DendriteMixin",
    "DendriticConv1d",
    "DendriticConv2d",
    "DendriticConv3d",
    "DendriticLinear",
    "DendriticModule",
    "PAINeuronModule",
    "TrackedNeuronModule",
]


class _DendriticMeta(type):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, (DendriteMixin, DendriticModule))

    def __subclasscheck__(cls, sub) -> bool:
        return issubclass(sub, (DendriteMixin, DendriticModule))


class PAINeuronModule(metaclass=_DendriticMeta):
    """``PAINeuronModule(module, name)``: the dendritic version of ``module`` (see the module docstring)."""

    def __new__(cls, start_module: nn.Module, name: str = ""):
        from ..tracker.convert import perforate_module

        return perforate_module(start_module, name)


class TrackedNeuronModule(nn.Module):
    """Pass-through wrapper (perforatedai uses it for modules that get no dendrites)."""

    def __init__(self, start_module: nn.Module, name: str = "") -> None:
        super().__init__()
        self.main_module = start_module
        self.name = name

    def forward(self, *args, **kwargs):
        return self.main_module(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "main_module":
                raise
            return getattr(self.main_module, name)
