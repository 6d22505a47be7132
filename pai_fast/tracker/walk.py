"""Finding, counting, growing and resizing the dendritic modules of a model (shared by convert and tracker)."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import DendriteMixin
from .errors import PAIConfigurationError
from .generic import DendriticModule, validate_output_dimensions

DENDRITIC_TYPES = (DendriteMixin, DendriticModule)


def dendritic_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(".path", module)]`` of every dendritic layer/wrapper, outermost only, each module once."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def visit(module: nn.Module, path: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, DENDRITIC_TYPES):
            found.append((path, module))
            return  # dendrite copies inside a wrapper are not separate dendritic modules
        for name, child in module.named_children():
            visit(child, f"{path}.{name}")

    visit(net, "")
    return found


def num_dendrites(module: nn.Module) -> int:
    return int(module.num_dendrites)


def set_num_dendrites(module: nn.Module, d: int) -> None:
    """Resize a dendritic module to ``d`` dendrites (values are placeholders until a state dict is loaded)."""
    if module.num_dendrites == d:
        return
    resize = getattr(module, "_set_num_dendrites", None)
    if resize is not None:
        resize(d)
        return
    if d > module.num_dendrites:  # pragma: no cover - every pai_fast module has _set_num_dendrites
        module.add_dendrite(d - module.num_dendrites)
    else:  # pragma: no cover
        raise PAIConfigurationError(f"{type(module).__name__} cannot drop dendrites")


@torch.no_grad()
def grow(module: nn.Module, n: int, init_multiplier: float = 0.01, init_by_main: bool = False) -> None:
    """Add ``n`` dendrites drawn N(0, m^2) (m scaled by the mean |param| of the layer with ``init_by_main``)."""
    if isinstance(module, DendriticModule):
        module.init_multiplier = init_multiplier
        module.init_by_main = init_by_main
        module.add_dendrite(n)
        return
    module.add_dendrite(n)
    # DendriticLinear/Conv draw N(0, 0.01^2); rescale the new rows for other settings of the two knobs.
    scale = init_multiplier / 0.01
    if init_by_main:
        params = [module.weight] + ([module.bias] if module.bias is not None else [])
        total = sum(p.numel() for p in params)
        scale *= (sum(p.abs().sum().item() for p in params) / total) if total else 1.0
    if scale != 1.0:
        module.dendrite_weight[-n:] *= scale
        if module.dendrite_bias is not None:
            module.dendrite_bias[-n:] *= scale


def count_params(net: nn.Module) -> int:
    """Parameters a dendritic model needs, each shared tensor once.

    For a layer with P parameters and C output channels with D dendrites this is ``P(1+D) + C(D + D(D-1)/2)``
    (spec §2.7 "actually needed for inference"): the cascade ``[D, D, C]`` is stored square but only its
    ``D(D-1)/2`` strictly-lower entries per channel are used. perforatedai's ``count_params`` reports
    ``P(1+D) + C(D^2 + D - 1)`` for the same network because it also counts stale output-weight copies and
    unused candidate scaffolding; ``sum(p.numel() for p in model.parameters())`` here counts the full cascade.
    """
    total = 0
    seen: set[int] = set()
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            key = id(p)
            if key in seen:
                continue
            seen.add(key)
            if name == "dendrite_cascade" and isinstance(module, DENDRITIC_TYPES) and p.dim() == 3:
                d, _, c = p.shape
                total += c * d * (d - 1) // 2
            else:
                total += p.numel()
    return total


def set_this_output_dimensions(layer: nn.Module, new_output_dimensions) -> None:
    """perforatedai's ``set_this_output_dimensions`` for DendriticLinear / DendriticConv*d (validation only).

    A DendriticLinear treats every leading dim as batch, so any vector whose 0 is the last entry
    (``[-1, 0]``, ``[-1, -1, 0]``, ...) is right. A DendriticConv*d has its channels at dim 1.
    """
    dims = validate_output_dimensions(new_output_dimensions)
    if isinstance(layer, nn.Linear):
        if dims.index(0) != len(dims) - 1:
            raise PAIConfigurationError(
                f"{type(layer).__name__}: its channels are always the last dim of the output, so the 0 must be the "
                f"last entry (e.g. [-1, -1, 0]); got {dims}. For other layouts wrap the layer in a PAISequential."
            )
    elif isinstance(layer, nn.modules.conv._ConvNd):
        nd = layer.weight.dim() - 2
        if dims.index(0) != 1 or any(d != -1 for d in dims[2:]) or len(dims) > nd + 2:
            raise PAIConfigurationError(
                f"{type(layer).__name__}: output channels are dim 1 ({[-1, 0] + [-1] * nd}); got {dims}"
            )
    layer._pai_output_dimensions = dims


if not hasattr(DendriteMixin, "set_this_output_dimensions"):
    # perforatedai users call model.fc.set_this_output_dimensions([...]) on converted layers.
    DendriteMixin.set_this_output_dimensions = set_this_output_dimensions  # type: ignore[attr-defined]
