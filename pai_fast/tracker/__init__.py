"""The dendrite tracker: perforatedai 3.2.9's growth schedule over pai_fast's dendritic layers.

    import pai_fast
    from pai_fast.tracker import pc, current_tracker

    pc.set_testing_dendrite_capacity(False)
    model = pai_fast.perforate_model(model, save_name="run1", maximizing_score=True)
    tracker = current_tracker()
    tracker.set_optimizer_instance(optimizer)
    while True:
        train(...)
        model, restructured, training_complete = tracker.add_validation_score(score, model)
        if training_complete:
            break
        if restructured:
            optimizer = make_optimizer(model)
            tracker.set_optimizer_instance(optimizer)

Drop-in modules with perforatedai's import paths are in :mod:`pai_fast.compat`.
"""

from ._runtime import current_tracker
from .config import PAIConfig, pc
from .convert import convert_network, perforate_model, perforate_module
from .errors import PAIConfigurationError, PAIConfigWarning, PAIError, PAIOptimizerError
from .files import FileOutputs, file_outputs
from .generic import DendriticModule, PAISequential
from .outputs import TrackerOutputs, set_default_outputs
from .processors import (
    GRUCellProcessor,
    GRUProcessor,
    LSTMCellProcessor,
    LSTMProcessor,
    LSTMProcessorLastHidden,
    MultiOutputProcessor,
    PAIProcessor,
)
from .tracker import DendriteTracker, PAINeuronModuleTracker, Snapshot
from .walk import count_params, dendritic_modules

# Trackers write perforatedai's files (graphs, CSVs, checkpoints) unless set_default_outputs(None) is called.
set_default_outputs(file_outputs)

__all__ = [
    "DendriteTracker",
    "DendriticModule",
    "FileOutputs",
    "GRUCellProcessor",
    "GRUProcessor",
    "LSTMCellProcessor",
    "LSTMProcessor",
    "LSTMProcessorLastHidden",
    "MultiOutputProcessor",
    "PAIConfig",
    "PAIConfigWarning",
    "PAIConfigurationError",
    "PAIError",
    "PAINeuronModuleTracker",
    "PAIOptimizerError",
    "PAIProcessor",
    "PAISequential",
    "Snapshot",
    "TrackerOutputs",
    "convert_network",
    "count_params",
    "current_tracker",
    "dendritic_modules",
    "pc",
    "perforate_model",
    "perforate_module",
    "set_default_outputs",
]
