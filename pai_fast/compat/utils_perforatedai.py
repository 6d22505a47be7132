"""Drop-in for ``perforatedai.utils_perforatedai`` (UPA): perforate_model, save/load, introspection.

Checkpoints are pai_fast checkpoints (:mod:`pai_fast.checkpoint`: safetensors with the dendrite structure and
the tracker state), written to ``{folder}/{name}.pt`` like perforatedai's ``save_system``; ``load_system`` also
reads files written by perforatedai (through ``pai_fast.convert.from_perforatedai``).

``count_params(net)`` counts what the model needs: ``P(1+D) + C(D + D(D-1)/2)`` for a layer with P parameters,
C output channels and D dendrites (spec §2.7 "actually needed"); perforatedai's own ``count_params`` reports
``P(1+D) + C(D^2 + D - 1)`` for the same network because of its stale output-weight copies and candidate
scaffolding, and ``sum(p.numel() for p in model.parameters())`` there adds a wrap-time copy of every layer.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn

from ..tracker import _runtime
from ..tracker.config import pc
from ..tracker.convert import convert_network as _convert_network
from ..tracker.convert import perforate_model, perforate_module
from ..tracker.errors import PAIConfigurationError, PAIConfigWarning
from ..tracker.tracker import PAINeuronModuleTracker
from ..tracker.walk import count_params, dendritic_modules

__all__ = [
    "change_learning_modes",
    "convert_network",
    "count_params",
    "deep_copy_pai",
    "get_pai_module_params",
    "get_pai_modules",
    "get_pai_network_params",
    "get_tracked_modules",
    "initialize_pai",
    "load_net",
    "load_pretrained_model",
    "load_system",
    "pai_save_net",
    "pai_save_system",
    "perforate_model",
    "perforate_module",
    "prepare_final_model",
    "save_net",
    "save_system",
    "string_from_tensor",
    "string_to_tensor",
]


def _tracker(create: bool = False) -> PAINeuronModuleTracker | None:
    tracker = _runtime.current_tracker()
    if tracker is None and create:
        tracker = PAINeuronModuleTracker(save_name=pc.get_save_name() or "PAI")
        _runtime.set_current_tracker(tracker)
    return tracker


def initialize_pai(
    model: nn.Module,
    doing_pai: bool = True,
    save_name: str = "PAI",
    making_graphs: bool = True,
    maximizing_score: bool = True,
    num_classes: float = 1e10,
    values_per_train_epoch: int = -1,
    values_per_val_epoch: int = -1,
    zooming_graph: bool = True,
) -> nn.Module:
    """Old name of ``perforate_model`` (removed in perforatedai 3.2.9; kept here with a warning)."""
    warnings.warn("initialize_pai is the old name of perforate_model", PAIConfigWarning, stacklevel=2)
    return perforate_model(
        model,
        doing_pai,
        save_name,
        making_graphs,
        maximizing_score,
        num_classes,
        values_per_train_epoch,
        values_per_val_epoch,
        zooming_graph,
    )


def convert_network(net: nn.Module, layer_name: str = "") -> nn.Module:
    """Make ``net`` dendritic in place (no new tracker; one is made if none exists yet, for the old 2-step API)."""
    tracker = _tracker(create=True)
    net = _convert_network(net, layer_name, tracker=tracker)
    tracker._refresh_modules(net)
    return net


def get_pai_modules(net: nn.Module, depth: int = 0) -> list[nn.Module]:
    """Every dendritic module (fused layers and generic wrappers)."""
    return [m for _, m in dendritic_modules(net)]


def get_tracked_modules(net: nn.Module, depth: int = 0) -> list[nn.Module]:
    """Modules selected for tracking (they are left unwrapped here)."""
    tracker = _tracker()
    names = tracker.tracked_module_names if tracker is not None else []
    return [net.get_submodule(n.lstrip(".")) for n in names if _has(net, n)]


def _has(net: nn.Module, path: str) -> bool:
    try:
        net.get_submodule(path.lstrip("."))
    except AttributeError:
        return False
    return True


def get_pai_module_params(net: nn.Module, depth: int = 0) -> list[nn.Parameter]:
    """Trainable parameters of the dendritic modules."""
    out, seen = [], set()
    for m in get_pai_modules(net):
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def get_pai_network_params(net: nn.Module) -> list[nn.Parameter]:
    return get_pai_module_params(net, 0)


def string_to_tensor(string: str) -> torch.Tensor:
    return torch.tensor(list(map(ord, string)), dtype=torch.uint8)


def string_from_tensor(string_tensor: torch.Tensor) -> str:
    return "".join(map(chr, string_tensor.tolist()))


def _path(folder: str, name: str) -> str:
    return os.path.join(folder, f"{name}.pt")


def save_net(net: nn.Module, folder: str, name: str) -> str:
    """Weights and dendrite structure to ``{folder}/{name}.pt`` (no tracker state)."""
    from ..checkpoint import save_checkpoint

    os.makedirs(folder, exist_ok=True)
    return save_checkpoint(net, _path(folder, name))


def save_system(net: nn.Module, folder: str, name: str) -> str:
    """Weights, dendrite structure and tracker state to ``{folder}/{name}.pt``."""
    from ..checkpoint import save_checkpoint

    os.makedirs(folder, exist_ok=True)
    tracker = _tracker()
    return save_checkpoint(net, _path(folder, name), tracker_state=tracker.to_dict() if tracker else None)


def load_net(net: nn.Module, folder: str, name: str) -> nn.Module:
    from ..checkpoint import load_checkpoint

    load_checkpoint(net, _path(folder, name))
    return net


def load_system(
    net: nn.Module,
    folder: str,
    name: str,
    load_from_restart: bool = False,
    switch_call: bool = False,
    load_from_manual_save: bool = False,
) -> nn.Module:
    """Load weights, dendrite structure and tracker state (resume: ``load_system(model, save_name, 'latest', True)``).

    ``net`` must be converted the same way as when it was saved (same ``perforate_model`` setup). As in
    perforatedai the tracker's cycle best is reset and, unless ``switch_call``/``load_from_manual_save``, its
    epoch counter advances by one.
    """
    from ..checkpoint import load_checkpoint

    info = load_checkpoint(net, _path(folder, name))
    tracker = _tracker()
    state = info.get("tracker_state")
    if tracker is not None and state:
        tracker.load_tracker_state(net, state, switch_call=switch_call, load_from_manual_save=load_from_manual_save)
    elif tracker is not None:
        tracker._refresh_modules(net)
    return net


def load_pretrained_model(net: nn.Module, folder: str, name: str, remove_dendrite_scaffolding: bool = False):
    """Load a trained dendritic model and start a fresh tracker history on it (dendrites kept)."""
    net = load_system(net, folder, name, load_from_manual_save=True)
    tracker = _tracker()
    if tracker is not None:
        fresh = PAINeuronModuleTracker(
            doing_pai=tracker.member_vars["doing_pai"],
            save_name=tracker.save_name,
            making_graphs=tracker.making_graphs,
            outputs=tracker.outputs,
        )
        keep = {k: tracker.member_vars[k] for k in ("maximizing_score", "switch_mode", "optimizer", "scheduler")}
        fresh.member_vars.update(keep)
        fresh._overrides = dict(tracker._overrides)
        fresh._refresh_modules(net)
        _runtime.set_current_tracker(fresh)
    return net


def deep_copy_pai(net: nn.Module) -> nn.Module:
    """A deep copy without gradients or processor stashes (safe to save or evaluate separately)."""
    for p in net.parameters():
        p.grad = None
    for m in get_pai_modules(net):
        clear = getattr(m, "clear_processors", None)
        if clear is not None:
            clear()
    return copy.deepcopy(net)


def prepare_final_model(net: nn.Module) -> nn.Module:
    """Inference copy (pai_fast models carry no training scaffolding; see pai_fast.fold/export for more)."""
    return deep_copy_pai(net).eval()


def pai_save_system(net: nn.Module, folder: str, name: str) -> None:
    """No-op, as in open-source perforatedai (it needs the closed-source build)."""


def pai_save_net(net: nn.Module, folder: str, name: str) -> None:
    """No-op, as in open-source perforatedai."""


def change_learning_modes(net: nn.Module, folder: str, name: str, doing_pai: bool) -> nn.Module:
    """Revert to the remembered state ``name`` and add a dendrite to every dendritic module."""
    tracker = _tracker()
    if tracker is None:
        raise PAIConfigurationError("change_learning_modes: call perforate_model first")
    return tracker.change_learning_modes(net, name, doing_pai)
