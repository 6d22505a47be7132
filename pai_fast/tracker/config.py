"""PAIConfig-compatible configuration: ``pc.get_x()``, ``pc.set_x(v)``, ``pc.append_x(list)`` for every knob.

Same knobs and defaults as perforatedai 3.2.9 (spec §5.1). Differences, all deliberate (spec §9.3, §11.7):

* A scalar knob that holds a list is a schedule over the number of dendrites: ``get_x()`` returns element
  ``min(len - 1, num_dendrites_added)`` (``improvement_threshold`` is ``[1e-3, 1e-4, 0.0]`` by default). Before
  any tracker exists the index is 0 (perforatedai raises there).
* Attribute access works too: ``pc.n_epochs_to_switch = 3`` sets the knob, ``pc.n_epochs_to_switch`` reads
  the stored value (perforatedai silently ignores the assignment).
* Legacy names (``set_input_dimensions``, ``module_names_to_convert``, camelCase ``nEpochsToSwitch`` ...) are
  mapped to the current knob with a :class:`PAIConfigWarning` naming it; unknown names warn and are ignored;
  names of the closed-source Perforated Backpropagation build warn and are ignored.
* No silent reuse of a previous run's JSON: perforate_model saves ``./{save_name}/{save_name}_config.json`` for
  the record, but a JSON file is only read when given explicitly (``config_file=`` / ``set_config_file``).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
import logging
import os
import re
import warnings
from typing import Any

import torch

from . import _runtime
from .errors import PAIConfigurationError, PAIConfigWarning

logger = logging.getLogger("pai_fast.tracker")

# Switch modes and scheduler-replay settings (constants on ``pc`` in perforatedai).
DOING_SWITCH_EVERY_TIME = 0
DOING_HISTORY = 1
DOING_FIXED_SWITCH = 2
DOING_NO_SWITCH = 3
PARAM_VALS_BY_TOTAL_EPOCH = 0
PARAM_VALS_BY_UPDATE_EPOCH = 1
PARAM_VALS_BY_NEURON_EPOCH_START = 2

CONSTANTS = {
    "DOING_SWITCH_EVERY_TIME": DOING_SWITCH_EVERY_TIME,
    "DOING_HISTORY": DOING_HISTORY,
    "DOING_FIXED_SWITCH": DOING_FIXED_SWITCH,
    "DOING_NO_SWITCH": DOING_NO_SWITCH,
    "PARAM_VALS_BY_TOTAL_EPOCH": PARAM_VALS_BY_TOTAL_EPOCH,
    "PARAM_VALS_BY_UPDATE_EPOCH": PARAM_VALS_BY_UPDATE_EPOCH,
    "PARAM_VALS_BY_NEURON_EPOCH_START": PARAM_VALS_BY_NEURON_EPOCH_START,
}


def _defaults() -> dict[str, Any]:
    """Every knob of perforatedai 3.2.9 with its default (read at runtime from the real package)."""
    cuda = torch.cuda.is_available()
    return {
        "use_cuda": cuda,
        "device": torch.device("cuda" if cuda else "cpu"),
        "save_name": "",
        "config_file": None,
        "debugging_output_dimensions": 0,
        "confirm_correct_sizes": False,
        "unwrapped_modules_confirmed": False,
        "weight_decay_accepted": True,
        "checked_skipped_modules": False,
        "configuration_confirmed": False,
        "save_old_graph_scores": True,
        "testing_dendrite_capacity": True,
        "using_safe_tensors": True,
        "strict_loading": True,
        "drawing_pai": True,
        "drawing_extra_graphs": True,
        "test_saves": True,
        "pai_saves": False,
        "improvement_threshold": [0.001, 0.0001, 0.0],
        "improvement_threshold_raw": 1e-5,
        "n_epochs_to_switch": 10,
        "history_lookback": 1,
        "initial_history_after_switches": 0,
        "fixed_switch_num": 250,
        "first_fixed_switch_num": -1,
        "switch_mode": DOING_HISTORY,
        "reset_best_score_on_switch": True,
        "learn_dendrites_live": False,
        "no_extra_n_modes": True,
        "d_type": torch.float32,
        "find_best_lr": True,
        "dont_give_up_unless_learning_rate_lowered": True,
        "maximizing_score": True,
        "max_dendrite_tries": 2,
        "param_vals_setting": PARAM_VALS_BY_UPDATE_EPOCH,
        "modules_to_perforate": [],
        "module_names_to_perforate": ["PAISequential", "Conv1d", "Conv2d", "Conv3d", "Linear"],
        "module_ids_to_perforate": [],
        "modules_to_track": [],
        "module_names_to_track": [],
        "module_ids_to_track": [],
        "parameter_ids_to_track": [],
        "modules_to_replace": [],
        "replacement_modules": [],
        "modules_with_processing": [],
        "modules_processing_classes": [],
        "module_names_with_processing": [],
        "module_by_name_processing_classes": [],
        "module_names_to_not_save": [".base_model"],
        "perforated_backpropagation": False,
        "weight_tying_experimental": False,
        "dashboard_events_enabled": False,
        "dashboard_url": "http://localhost:3002",
        "dashboard_debug": False,
        "library_validation_score": "",
        "library_extra_scores": [],
        "library_extra_scores_without_graphing": [],
        "output_dimensions": [-1, 0, -1, -1],
        "verbose": False,
        "extra_verbose": False,
        "silent": False,
        "global_candidates": 1,
        "candidate_weight_initialization_multiplier": 0.01,
        "candidate_weight_init_by_main": False,
        "retain_all_dendrites": False,
        "max_dendrites": 100,
        "pai_forward_function": torch.sigmoid,
    }


KNOBS: tuple[str, ...] = tuple(_defaults())

# Knobs whose value IS a list (get_x returns the whole list); every other knob holding a list is a schedule.
LIST_KNOBS = frozenset(
    {
        "modules_to_perforate",
        "module_names_to_perforate",
        "module_ids_to_perforate",
        "modules_to_track",
        "module_names_to_track",
        "module_ids_to_track",
        "parameter_ids_to_track",
        "modules_to_replace",
        "replacement_modules",
        "modules_with_processing",
        "modules_processing_classes",
        "module_names_with_processing",
        "module_by_name_processing_classes",
        "module_names_to_not_save",
        "library_extra_scores",
        "library_extra_scores_without_graphing",
        "output_dimensions",
    }
)
_ID_KNOBS = frozenset({"module_ids_to_track", "module_ids_to_perforate", "parameter_ids_to_track"})
_CLASS_LIST_KNOBS = frozenset(
    {
        "modules_to_perforate",
        "modules_to_track",
        "modules_to_replace",
        "replacement_modules",
        "modules_with_processing",
        "modules_processing_classes",
        "module_by_name_processing_classes",
    }
)

# Old names with a clear current equivalent (transitional snake_case and camelCase after conversion).
LEGACY_NAMES = {
    "input_dimensions": "output_dimensions",
    "debugging_input_dimensions": "debugging_output_dimensions",
    "modules_to_convert": "modules_to_perforate",
    "module_names_to_convert": "module_names_to_perforate",
    "module_ids_to_convert": "module_ids_to_perforate",
    "module_names_to_skip": "module_names_to_not_save",
    "module_processing_classes": "modules_processing_classes",
    "retain_all_pb": "retain_all_dendrites",
    "retain_all_pai": "retain_all_dendrites",
    "learn_pb_live": "learn_dendrites_live",
    "learn_pai_live": "learn_dendrites_live",
    "pb_forward_function": "pai_forward_function",
    "drawing_pb": "drawing_pai",
    "pb_saves": "pai_saves",
    "checked_skipped_layers": "checked_skipped_modules",
}
# Knobs of the closed-source Perforated Backpropagation build: meaningless here.
PB_ONLY_NAMES = frozenset(
    {
        "p_epochs_to_switch",
        "cap_at_n",
        "dendrite_improvement_threshold",
        "dendrite_improvement_threshold_raw",
        "dendrite_update_mode",
        "initial_correlation_batches",
        "candidate_graph_mode",
    }
)
LEGACY_CONSTANTS = {
    "doing_switch_every_time": "DOING_SWITCH_EVERY_TIME",
    "doing_history": "DOING_HISTORY",
    "doing_fixed_switch": "DOING_FIXED_SWITCH",
    "doing_no_switch": "DOING_NO_SWITCH",
    "param_vals_by_total_epoch": "PARAM_VALS_BY_TOTAL_EPOCH",
    "param_vals_by_update_epoch": "PARAM_VALS_BY_UPDATE_EPOCH",
    "param_vals_by_neuron_epoch_start": "PARAM_VALS_BY_NEURON_EPOCH_START",
}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def camel_to_snake(name: str) -> str:
    """``nEpochsToSwitch`` -> ``n_epochs_to_switch``, ``moduleIDsToTrack`` -> ``module_ids_to_track``."""
    if "_" in name and name.lower() == name:
        return name
    snake = _CAMEL.sub("_", name).lower()
    return snake.replace("i_ds", "ids")


def resolve_name(name: str) -> tuple[str, str]:
    """(canonical name, kind) with kind in knob / legacy / constant / pb_only / unknown."""
    if name in KNOBS:
        return name, "knob"
    if name in CONSTANTS:
        return name, "constant"
    snake = camel_to_snake(name)
    if snake in KNOBS:
        return snake, "legacy"
    if snake in LEGACY_NAMES:
        return LEGACY_NAMES[snake], "legacy"
    if snake in LEGACY_CONSTANTS:
        return LEGACY_CONSTANTS[snake], "constant"
    if snake in PB_ONLY_NAMES:
        return snake, "pb_only"
    return name, "unknown"


def _validate_module_ids(name: str, ids) -> None:
    for module_id in ids:
        if not isinstance(module_id, str) or not module_id.startswith("."):
            raise PAIConfigurationError(
                f"{name}: module ids are dotted paths starting with '.', e.g. '.layer1.0.conv1'; got {module_id!r}"
            )
        if "[" in module_id or "]" in module_id:
            raise PAIConfigurationError(
                f"{name}: write indices with dots ('.layers.1.fc'), not brackets; got {module_id!r}"
            )


# ----------------------------------------------------------------------------------------------- JSON values
def _qualname(obj) -> str:
    mod = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{mod}.{name}" if mod else name


def _serialize(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_serialize(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _serialize(v) for k, v in value.items()}
    if value in (torch.sigmoid, torch.tanh, torch.relu):
        return f"torch.{value.__name__}"
    if isinstance(value, type) or callable(value):
        return _qualname(value)
    return str(value)


def _resolve_dotted(name: str):
    if name in ("sigmoid", "tanh", "relu"):
        return getattr(torch, name)
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _deserialize(name: str, value):
    if value is None:
        return None
    if name == "device":
        return torch.device(str(value))
    if name == "d_type":
        dt = getattr(torch, str(value).split(".")[-1], None)
        return dt if isinstance(dt, torch.dtype) else value
    if name == "pai_forward_function" and isinstance(value, str):
        fn = _resolve_dotted(value)
        if fn is None or not callable(fn):
            raise PAIConfigurationError(f"pai_forward_function: cannot import {value!r}")
        return fn
    if name in _CLASS_LIST_KNOBS:
        out = []
        for v in value or []:
            obj = _resolve_dotted(v) if isinstance(v, str) else v
            if obj is None:
                raise PAIConfigurationError(f"{name}: cannot import {v!r}")
            out.append(obj)
        return out
    return value


# -------------------------------------------------------------------------------------------------- PAIConfig
class PAIConfig:
    """Configuration of the dendrite tracker (drop-in for perforatedai's ``GPA.pc``)."""

    DOING_SWITCH_EVERY_TIME = DOING_SWITCH_EVERY_TIME
    DOING_HISTORY = DOING_HISTORY
    DOING_FIXED_SWITCH = DOING_FIXED_SWITCH
    DOING_NO_SWITCH = DOING_NO_SWITCH
    PARAM_VALS_BY_TOTAL_EPOCH = PARAM_VALS_BY_TOTAL_EPOCH
    PARAM_VALS_BY_UPDATE_EPOCH = PARAM_VALS_BY_UPDATE_EPOCH
    PARAM_VALS_BY_NEURON_EPOCH_START = PARAM_VALS_BY_NEURON_EPOCH_START

    def __init__(self, module_name: str | None = None, module_type: str | None = None) -> None:
        object.__setattr__(self, "_values", _defaults())
        object.__setattr__(self, "_manually_set_keys", set())
        object.__setattr__(self, "_module_settings", {})
        object.__setattr__(self, "_module_name", module_name)
        object.__setattr__(self, "_module_type", module_type)

    # ---------------------------------------------------------------------------------------- core access
    def reset(self) -> None:
        """Back to the defaults of perforatedai 3.2.9 (forgets hand-set keys and module settings)."""
        self._values.clear()
        self._values.update(_defaults())
        self._manually_set_keys.clear()
        self._module_settings.clear()

    def raw(self, name: str):
        """The stored value of a knob (a schedule list stays a list)."""
        canonical, kind = self._canonical(name, "get")
        return self._values[canonical]

    def value(self, name: str, num_dendrites: int | None = None):
        """``get_<name>()``: a list-valued scalar knob is indexed by ``min(len - 1, num_dendrites)``."""
        canonical, _ = self._canonical(name, "get")
        return self._indexed(canonical, num_dendrites)

    def _indexed(self, canonical: str, num_dendrites: int | None = None):
        v = self._values[canonical]
        if isinstance(v, list) and canonical not in LIST_KNOBS:
            if not v:
                raise PAIConfigurationError(f"{canonical}: an empty list is not a valid schedule")
            n = _runtime.dendrites_added() if num_dendrites is None else num_dendrites
            return v[min(len(v) - 1, n)]
        return v

    def set(self, name: str, value, *, _manual: bool = True) -> None:
        """``set_<name>(value)``."""
        canonical, kind = self._canonical(name, "set")
        if kind in ("unknown", "pb_only", "constant"):
            return
        if self._module_name is not None or self._module_type is not None:
            raise PAIConfigurationError(
                "per-module configs are read-only: set values on the global pc (or in a JSON config file)"
            )
        if canonical in _ID_KNOBS:
            _validate_module_ids(canonical, value)
        if canonical == "perforated_backpropagation" and value:
            warnings.warn(
                "perforated_backpropagation needs the closed-source perforatedbp package; pai_fast trains "
                "dendrites jointly with gradient descent (the open-source behaviour). Ignoring.",
                PAIConfigWarning,
                stacklevel=3,
            )
            return
        if canonical == "global_candidates" and value != 1:
            warnings.warn(
                "global_candidates > 1 is not supported (as in perforatedai); keeping 1", PAIConfigWarning, stacklevel=3
            )
            return
        if canonical in LIST_KNOBS and isinstance(value, tuple):
            value = list(value)
        self._values[canonical] = value
        if _manual:
            self._manually_set_keys.add(canonical)
            if canonical == "config_file" and value is not None:
                self.sync_config_sources()

    def append(self, name: str, values) -> None:
        """``append_<name>(list)``: extends a list knob."""
        canonical, kind = self._canonical(name, "append")
        if kind in ("unknown", "pb_only", "constant"):
            return
        current = self._values[canonical]
        if not isinstance(current, list):
            raise PAIConfigurationError(f"append_{canonical}: {canonical} holds {current!r}, not a list")
        if not isinstance(values, (list, tuple)):
            raise PAIConfigurationError(
                f"append_{canonical}: expected a list of values, got {type(values).__name__} "
                f"(write append_{canonical}([x]))"
            )
        if canonical in _ID_KNOBS:
            _validate_module_ids(canonical, values)
        self._values[canonical] = current + list(values)
        self._manually_set_keys.add(canonical)
        logger.debug('New list value of "%s": %s', canonical, self._values[canonical])

    def _canonical(self, name: str, action: str) -> tuple[str, str]:
        canonical, kind = resolve_name(name)
        if kind == "legacy":
            warnings.warn(
                f"pc: '{name}' is an old name; use '{canonical}' ({action}_{canonical}). Applied to {canonical}.",
                PAIConfigWarning,
                stacklevel=4,
            )
        elif kind == "pb_only":
            if action == "get":
                raise AttributeError(f"'{canonical}' exists only in the closed-source Perforated Backpropagation build")
            warnings.warn(
                f"pc: '{canonical}' is a Perforated Backpropagation (closed-source) setting; pai_fast ignores it.",
                PAIConfigWarning,
                stacklevel=4,
            )
        elif kind == "constant" and action != "get":
            warnings.warn(f"pc: {canonical} is a constant; ignoring the {action}.", PAIConfigWarning, stacklevel=4)
        elif kind == "unknown":
            if action == "get":
                raise AttributeError(f"PAIConfig has no setting '{name}'")
            close = difflib.get_close_matches(camel_to_snake(name), KNOBS, n=3)
            hint = f" Did you mean {' / '.join(close)}?" if close else " See dir(pc) for the settings."
            warnings.warn(
                f"pc: setting '{name}' does not exist; ignoring the {action}.{hint}",
                PAIConfigWarning,
                stacklevel=4,
            )
        return canonical, kind

    # ----------------------------------------------------------------------------- get_/set_/append_ + attrs
    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        for prefix, fn in (("get_", None), ("set_", self.set), ("append_", self.append)):
            if name.startswith(prefix):
                knob = name[len(prefix) :]
                if prefix == "get_":
                    canonical, kind = self._canonical(knob, "get")
                    if kind == "constant":
                        return lambda: CONSTANTS[canonical]
                    return lambda: self._indexed(canonical)
                return lambda value: fn(knob, value)
        camel_prefix = re.match(r"^(get|set|append)(?=[A-Z])", name)
        if camel_prefix:
            return getattr(self, camel_prefix.group(1) + "_" + camel_to_snake(name[len(camel_prefix.group(1)) :]))
        canonical, kind = self._canonical(name, "get")
        if kind == "constant":
            return CONSTANTS[canonical]
        return self._values[canonical]

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self.set(name, value)

    def __dir__(self):
        names = list(super().__dir__()) + list(KNOBS)
        for k in KNOBS:
            names += [f"get_{k}", f"set_{k}", f"append_{k}"]
        return sorted(set(names))

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._values.items() if k in self._manually_set_keys}
        return f"PAIConfig(changed={changed!r})"

    def __deepcopy__(self, memo):
        new = PAIConfig(self._module_name, self._module_type)
        new._values.update(copy.deepcopy(self._values, memo))
        new._manually_set_keys.update(self._manually_set_keys)
        new._module_settings.update(copy.deepcopy(self._module_settings, memo))
        return new

    def __getstate__(self):
        return {
            "_values": self._values,
            "_manually_set_keys": self._manually_set_keys,
            "_module_settings": self._module_settings,
            "_module_name": self._module_name,
            "_module_type": self._module_type,
        }

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    # ----------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        """JSON-serialisable dict of every knob and constant (perforatedai's config JSON layout)."""
        out = {k: _serialize(v) for k, v in sorted(self._values.items()) if k != "config_file"}
        out.update(CONSTANTS)
        out["module_settings"] = copy.deepcopy(self._module_settings)
        return out

    def save_config(self, filename: str) -> None:
        """Write every knob to ``filename`` as JSON."""
        directory = os.path.dirname(filename)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(filename, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        logger.info("[PAI Config] Saved %d variables -> %s", len(self.to_dict()), filename)

    def load_config(
        self, filename: str, module_name: str | None = None, module_type: str | None = None, skip_keys=None
    ):
        """Read knobs from a JSON file; keys in ``skip_keys`` (default: keys set by hand in this process) are kept.

        With ``module_name``/``module_type`` it only returns that module's ``module_settings`` entry (or {}).
        """
        with open(filename) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise PAIConfigurationError(f"config file {filename}: expected a JSON object, got {type(data).__name__}")
        settings = data.get("module_settings", {}) or {}
        if module_name is not None or module_type is not None:
            return dict(settings.get(module_name) or settings.get(module_type) or {})
        skip = set(self._manually_set_keys if skip_keys is None else skip_keys)
        loaded = 0
        for key, val in data.items():
            if key in ("config_file", "module_settings", "module_name", "module_type") or key.startswith("_"):
                continue
            if key in CONSTANTS or key in skip:
                continue
            canonical, kind = resolve_name(key)
            if kind not in ("knob", "legacy"):
                warnings.warn(
                    f"config file {filename}: unknown setting '{key}' ignored", PAIConfigWarning, stacklevel=2
                )
                continue
            if canonical in skip:
                continue
            self.set(canonical, _deserialize(canonical, val), _manual=False)
            loaded += 1
        self._module_settings.update(settings)
        logger.info("[PAI Config] Loaded %d variables from %s", loaded, filename)
        return None

    def module_settings_for(self, name: str, type_name: str) -> dict:
        """Per-module overrides from an explicit config file (only ``output_dimensions`` is used)."""
        return dict(self._module_settings.get(name) or self._module_settings.get(type_name) or {})

    def get_run_config_path(self) -> str | None:
        save_name = self._values.get("save_name")
        if not save_name:
            return None
        return os.path.join(os.getcwd(), save_name, f"{save_name}_config.json")

    def sync_config_sources(self) -> None:
        """Load the explicit ``config_file`` (never the previous run's JSON: see the module docstring)."""
        config_file = self._values.get("config_file")
        if config_file:
            if not os.path.exists(config_file):
                raise PAIConfigurationError(f"config_file: {config_file!r} does not exist")
            self.load_config(config_file)

    def persist_config_outputs(self, overwrite_config_file: bool = False) -> None:
        """Save the run's config JSON for the record (and to ``config_file`` if asked)."""
        run_config = self.get_run_config_path()
        if run_config:
            self.save_config(run_config)
        if overwrite_config_file and self._values.get("config_file"):
            self.save_config(self._values["config_file"])


pc = PAIConfig()
"""The global configuration (perforatedai's ``GPA.pc``)."""
