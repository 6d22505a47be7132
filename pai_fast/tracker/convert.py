"""``perforate_model``: make a model dendritic in place and start the tracker (spec §1 step 2, §3).

Which modules get dendrites follows perforatedai's selection lists on ``pc`` (spec §3.1-3.2), per child:

1. path in ``module_ids_to_track`` -> tracked (left as is: no dendrites);
2. path in ``module_ids_to_perforate`` -> perforated;
3. an alias of a module already visited, or a path in ``module_names_to_not_save`` -> skipped;
4. type in ``modules_to_replace`` -> replaced by ``replacement_modules[k](module)`` first;
5. type (or type name) in the track lists -> tracked (tracking wins over perforating);
6. type (or type name) in the perforate lists (default: PAISequential, Conv1d/2d/3d, Linear) -> perforated;
7. otherwise its children are visited.

"Perforated" means: a plain ``nn.Linear`` / ``nn.Conv1d/2d/3d`` becomes ``DendriticLinear`` /
``DendriticConv*d`` with the same weights (fused kernels, no wrapper, same state-dict keys plus the dendrite
parameters); anything else (PAISequential blocks, RNNs, user blocks, modules with a processor) is wrapped in
:class:`~pai_fast.tracker.generic.DendriticModule`. Modules that are already dendritic are kept and tracked.
Tracked modules are not wrapped (perforatedai wraps them only for its closed-source training mode).
"""

from __future__ import annotations

import logging
import warnings

from torch import nn

from ..nn import DendriticConv1d, DendriticConv2d, DendriticConv3d, DendriticLinear
from . import _runtime
from .config import PAIConfig, pc
from .errors import PAIConfigurationError, PAIConfigWarning
from .generic import DendriticModule, is_norm_layer
from .tracker import PAINeuronModuleTracker
from .walk import DENDRITIC_TYPES, dendritic_modules

logger = logging.getLogger("pai_fast.tracker")

_NATIVE = {
    nn.Linear: DendriticLinear,
    nn.Conv1d: DendriticConv1d,
    nn.Conv2d: DendriticConv2d,
    nn.Conv3d: DendriticConv3d,
}


def _processor_class(module: nn.Module, config: PAIConfig):
    types = config.get_modules_with_processing()
    if type(module) in types:
        return config.get_modules_processing_classes()[types.index(type(module))]
    names = config.get_module_names_with_processing()
    if type(module).__name__ in names:
        return config.get_module_by_name_processing_classes()[names.index(type(module).__name__)]
    return None


def perforate_module(module: nn.Module, name: str = "", config: PAIConfig | None = None) -> nn.Module:
    """The dendritic version of one module (weights kept): a fused layer or a generic wrapper."""
    config = config if config is not None else pc
    if isinstance(module, DENDRITIC_TYPES):
        return module
    activation = config.get_pai_forward_function()
    processor = _processor_class(module, config)
    native = _NATIVE.get(type(module))
    if native is not None and processor is None:
        new = native.from_module(module, activation=activation)
    else:
        new = DendriticModule(
            module,
            name,
            activation=activation,
            processor_class=processor,
            output_dimensions=config.get_output_dimensions(),
            init_multiplier=config.get_candidate_weight_initialization_multiplier(),
            init_by_main=config.get_candidate_weight_init_by_main(),
        )
    dims = config.module_settings_for(name, type(module).__name__).get("output_dimensions")
    if dims is not None:
        new.set_this_output_dimensions(dims)
    return new


def _replace(module: nn.Module, config: PAIConfig) -> nn.Module:
    k = config.get_modules_to_replace().index(type(module))
    replacements = config.get_replacement_modules()
    if k >= len(replacements):
        raise PAIConfigurationError(
            f"modules_to_replace has {type(module).__name__} at index {k} but replacement_modules has only "
            f"{len(replacements)} entries (the two lists are parallel)"
        )
    return replacements[k](module)


class _Walk:
    def __init__(self, config: PAIConfig) -> None:
        self.config = config
        self.seen: dict[int, str] = {}
        self.tracked: list[str] = []
        self.perforated: list[str] = []
        self.skipped: list[str] = []
        self.bare_norms: list[str] = []

    def _tracks(self, module: nn.Module) -> bool:
        c = self.config
        return type(module) in c.get_modules_to_track() or type(module).__name__ in c.get_module_names_to_track()

    def _perforates(self, module: nn.Module) -> bool:
        c = self.config
        return (
            type(module) in c.get_modules_to_perforate() or type(module).__name__ in c.get_module_names_to_perforate()
        )

    def visit(self, parent: nn.Module, prefix: str) -> None:
        c = self.config
        for attr, child in list(parent.named_children()):
            if child is None or child is parent:
                continue
            path = f"{prefix}.{attr}"
            if id(child) in self.seen:
                self.skipped.append(path)
                logger.info("Skipping duplicate pointer %s (keeping %s)", path, self.seen[id(child)])
                continue
            self.seen[id(child)] = path
            if path in c.get_module_ids_to_track():
                self.tracked.append(path)
                continue
            if path in c.get_module_ids_to_perforate():
                self._perforate(parent, attr, child, path)
                continue
            if path in c.get_module_names_to_not_save():
                self.skipped.append(path)
                continue
            if type(child) in c.get_modules_to_replace():
                child = _replace(child, c)
                setattr(parent, attr, child)
            if isinstance(child, DENDRITIC_TYPES):
                self.perforated.append(path)
            elif self._tracks(child):
                self.tracked.append(path)
            elif self._perforates(child):
                self._perforate(parent, attr, child, path)
            else:
                if is_norm_layer(child):
                    self.bare_norms.append(path)
                self.visit(child, path)

    def _perforate(self, parent: nn.Module, attr: str, child: nn.Module, path: str) -> None:
        if is_norm_layer(child):
            warnings.warn(
                f"{path}: a normalization layer gets its own dendrites; usually it belongs in a PAISequential with "
                "the layer before it",
                PAIConfigWarning,
                stacklevel=4,
            )
        setattr(parent, attr, perforate_module(child, path, self.config))
        self.perforated.append(path)


def convert_network(
    net: nn.Module,
    layer_name: str = "",
    *,
    tracker: PAINeuronModuleTracker | None = None,
    config: PAIConfig | None = None,
) -> nn.Module:
    """Make ``net`` dendritic in place (the root itself is replaced when it matches the lists)."""
    config = config if config is not None else pc
    walk = _Walk(config)
    if type(net) in config.get_modules_to_replace():
        net = _replace(net, config)
    if isinstance(net, DENDRITIC_TYPES):
        pass
    elif walk._perforates(net) or layer_name in config.get_module_ids_to_perforate():
        net = perforate_module(net, layer_name, config)
        walk.perforated.append(layer_name)
    else:
        walk.visit(net, "")
    for path, module in dendritic_modules(net):
        if isinstance(module, DendriticModule) and not module.name:
            module.name = path
    if tracker is not None:
        tracker.tracked_module_names = list(walk.tracked)
        tracker.skipped_module_names = list(walk.skipped)
    _report_unwrapped(net, walk, config)
    return net


def _report_unwrapped(net: nn.Module, walk: _Walk, config: PAIConfig) -> None:
    if config.get_unwrapped_modules_confirmed():
        return
    covered = set()
    for path in walk.tracked + [p for p, _ in dendritic_modules(net)]:
        prefix = path.lstrip(".")
        module = net.get_submodule(prefix) if prefix else net
        covered.update(id(p) for p in module.parameters())
    param_ids = set(config.get_parameter_ids_to_track())
    missed = [f".{n}" for n, p in net.named_parameters() if id(p) not in covered and f".{n}" not in param_ids]
    if not missed and not walk.bare_norms:
        return
    lines = []
    if missed:
        lines.append("parameters outside any dendritic or tracked module (they get no dendrites): " + ", ".join(missed))
    if walk.bare_norms:
        lines.append(
            "normalization layers not inside a dendritic block: "
            + ", ".join(walk.bare_norms)
            + " (wrap each with the layer before it: PAISequential([conv, bn]))"
        )
    warnings.warn(
        "perforate_model: " + "; ".join(lines) + ". Add their types to pc.append_module_names_to_perforate / "
        "append_module_names_to_track, or pc.set_unwrapped_modules_confirmed(True) to silence this.",
        PAIConfigWarning,
        stacklevel=3,
    )


def _sanitize_save_name(save_name: str | None, config: PAIConfig) -> str:
    if not save_name:
        save_name = config.get_save_name() or "PAI"
    if "/" in save_name:
        raise PAIConfigurationError(
            f"save_name: {save_name!r} contains '/'; give a plain name (outputs go to ./<save_name>/)"
        )
    clean = "".join(ch for ch in save_name if ch.isalnum() or ch in "_-.")
    if clean != save_name:
        warnings.warn(
            f"save_name {save_name!r} has special characters; using {clean or 'PAI'!r}", PAIConfigWarning, stacklevel=3
        )
    return clean or "PAI"


def perforate_model(
    model: nn.Module,
    doing_pai: bool = True,
    save_name: str | None = None,
    making_graphs: bool = True,
    maximizing_score: bool | None = None,
    num_classes: float = 1e10,
    values_per_train_epoch: int = -1,
    values_per_val_epoch: int = -1,
    zooming_graph: bool = True,
    config_file: str | None = None,
) -> nn.Module:
    """Make ``model`` dendritic in place and create the process-wide tracker (perforatedai's entry point).

    Converts the selected layers (module docstring), creates a new tracker (``pai_fast.tracker.current_tracker()``,
    also ``GPA.pai_tracker`` in the compat API) and returns the model. ``save_name`` (default
    ``pc.get_save_name()`` or ``'PAI'``) names the output folder; the run's config is saved there as JSON for
    the record (except in the capacity test); a JSON config is read only from ``config_file``.
    """
    config = pc
    save_name = _sanitize_save_name(save_name, config)
    if config_file is not None:
        config.set_config_file(config_file)
    config.set("save_name", save_name, _manual=False)
    if maximizing_score is None:
        maximizing_score = config.get_maximizing_score()
    else:
        config.set("maximizing_score", bool(maximizing_score), _manual=False)
    tracker = PAINeuronModuleTracker(
        doing_pai=doing_pai, save_name=save_name, making_graphs=making_graphs, config=config
    )
    _runtime.set_current_tracker(tracker)
    model = tracker.initialize(
        model,
        doing_pai=doing_pai,
        save_name=save_name,
        making_graphs=making_graphs,
        maximizing_score=maximizing_score,
        num_classes=num_classes,
        values_per_train_epoch=values_per_train_epoch,
        values_per_val_epoch=values_per_val_epoch,
        zooming_graph=zooming_graph,
    )
    if not tracker.testing_dendrite_capacity and making_graphs:
        config.persist_config_outputs()
    tracker.outputs.on_start(tracker, model)
    return model
