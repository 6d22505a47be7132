"""The dendrite tracker: decides from validation scores when to add dendrites, revert, retry and stop.

Semantics are those of perforatedai 3.2.9's ``PAINeuronModuleTracker`` (spec §5), checked call by call against
the real package (tests/test_tracker_differential.py). One ``add_validation_score(score, model)`` call:

1. records the score and the optimizer's LR; running score ``r <- r (1 - 1/L) + s / L`` (a plain mean during the
   ``initial_history_after_switches`` grace epochs);
2. best check: ``r`` beats the cycle best (or the cycle best is still 0) -> new cycle best; if it also beats the
   global best (or that is 0) -> new global best and the state is remembered as ``best_model``. "Beats" is
   ``r(1 -+ t) >/< best and r -+ t_raw >/< best`` with ``t = improvement_threshold`` indexed by the dendrite
   count. The first call is never an improvement but is remembered as ``best_model``;
3. switch decision (patience ``n_epochs_to_switch`` since the last cycle-best improvement, or every time /
   fixed / never), blocked while the learning-rate sweep of ``setup_optimizer`` + scheduler has not committed;
4. on a switch: capacity test done after 3 dendrites -> ``(model, False, True)``; if the dendrites added last did
   not set a global best -> revert to ``best_model`` and redraw them while ``tries < max_dendrite_tries - 1``,
   else revert and ``(model, True, True)``; if ``max_dendrites`` is reached or ``doing_pai`` is False -> revert and
   ``(model, True, True)``; otherwise revert to ``best_model`` (weights AND tracker history, so
   ``num_epochs_run`` rewinds) and add one dendrite to every dendritic module -> ``restructured = 1``;
5. otherwise, with a scheduler from ``setup_optimizer``, step it and run the LR sweep (§5.7), which may reload
   the state right after the last addition (``restructured = 1`` without a new dendrite).

Returns ``(model, restructured, training_complete)`` with ``restructured`` the int 0/1 on normal calls and a bool
on the early exits (as in perforatedai). ``model`` is the same object, its dendritic parameters re-created:
rebuild the optimizer (and scheduler) whenever ``restructured`` is truthy.

Differences from perforatedai, on purpose: states to revert to are kept in memory (state_dict copies on
``snapshot_device``, default CPU) instead of being re-read from files; files are written only through the
``outputs`` hook; messages go to the ``pai_fast.tracker`` logger; errors are typed exceptions (no pdb/exit);
capacity-test overrides live in the tracker instead of mutating the global config; ``total_epochs_run`` (the
attribute) counts every validation call and never rewinds (``member_vars["total_epochs_run"]`` keeps
perforatedai's value); every LR-sweep reload happens even with ``test_saves=False``.
"""

from __future__ import annotations

import copy
import io
import logging
import time
import warnings
from dataclasses import dataclass
from datetime import datetime

import torch
from torch import nn

from ._legacy import CamelCaseTrackerAPI
from .config import (
    DOING_FIXED_SWITCH,
    DOING_HISTORY,
    DOING_NO_SWITCH,
    DOING_SWITCH_EVERY_TIME,
    PARAM_VALS_BY_NEURON_EPOCH_START,
    PARAM_VALS_BY_TOTAL_EPOCH,
    PARAM_VALS_BY_UPDATE_EPOCH,
    PAIConfig,
    pc,
)
from .errors import PAIConfigurationError, PAIError, PAIOptimizerError
from .outputs import TrackerOutputs, make_outputs
from .walk import count_params, dendritic_modules, grow, set_num_dendrites

logger = logging.getLogger("pai_fast.tracker")

NO_MODEL_UPDATE = 0
NETWORK_RESTRUCTURED = 1
TRAINING_COMPLETE = 2

_SWITCH_NAMES = {
    DOING_SWITCH_EVERY_TIME: "DOING_SWITCH_EVERY_TIME",
    DOING_HISTORY: "DOING_HISTORY",
    DOING_FIXED_SWITCH: "DOING_FIXED_SWITCH",
    DOING_NO_SWITCH: "DOING_NO_SWITCH",
}

# perforatedai's member variables, their initial values and their types in its tracker_string format (§6.2).
_MEMBER_VARS: list[tuple[str, object, str]] = [
    ("doing_pai", True, "bool"),
    ("num_dendrites_added", 0, "int"),
    ("num_dendrites_integrated", 0, "int"),
    ("num_cycles", 0, "int"),
    ("mode", "n", "string"),
    ("num_epochs_run", -1, "int"),
    ("total_epochs_run", -1, "int"),
    ("epoch_last_improved", 0, "int"),
    ("running_accuracy", 0, "float"),
    ("maximizing_score", True, "bool"),
    ("switch_mode", DOING_HISTORY, "int"),
    ("last_switch", 0, "int"),
    ("current_best_validation_score", 0, "float"),
    ("initial_lr_test_epoch_count", -1, "int"),
    ("global_best_validation_score", 0, "float"),
    ("switch_epochs", [], "int array"),
    ("param_counts", [], "int array"),
    ("n_switch_epochs", [], "int array"),
    ("p_switch_epochs", [], "int array"),
    ("accuracies", [], "float array"),
    ("last_improved_accuracies", [], "int array"),
    ("test_accuracies", [], "float array"),
    ("n_accuracies", [], "float array"),
    ("p_accuracies", [], "float array"),
    ("running_accuracies", [], "float array"),
    ("extra_scores", {}, "float array dictionary"),
    ("extra_scores_without_graphing", {}, "float array dictionary"),
    ("test_scores", [], "float array"),
    ("n_extra_scores", {}, "float array dictionary"),
    ("training_loss", [], "float array"),
    ("training_learning_rates", [], "float array"),
    ("best_scores", [], "float array array"),
    ("current_scores", [], "float array array"),
    ("n_epoch_times", [], "float array"),
    ("p_epoch_times", [], "float array"),
    ("n_train_times", [], "float array"),
    ("p_train_times", [], "float array"),
    ("n_val_times", [], "float array"),
    ("p_val_times", [], "float array"),
    ("manual_train_switch", False, "bool"),
    ("overwritten_extras", [], "float array dictionary array"),
    ("overwritten_vals", [], "float array array"),
    ("overwritten_epochs", 0, "int"),
    ("param_vals_setting", PARAM_VALS_BY_UPDATE_EPOCH, "int"),
    ("optimizer", None, "type"),
    ("scheduler", None, "type"),
    ("optimizer_instance", None, "empty array"),
    ("scheduler_instance", None, "empty array"),
    ("step_status", 0, "int"),
    ("current_n_learning_rate_initial_skip_steps", 0, "int"),
    ("last_max_learning_rate_steps", 0, "int"),
    ("last_max_learning_rate_value", -1, "float"),
    ("current_cycle_lr_max_scores", [], "float array"),
    ("current_step_count", 0, "int"),
    ("committed_to_initial_rate", True, "bool"),
    ("best_mean_score_improved_this_epoch", 0, "int"),
    ("current_n_set_global_best", True, "bool"),
    ("num_dendrite_tries", 0, "int"),
]
MEMBER_VAR_TYPES = {name: kind for name, _, kind in _MEMBER_VARS}
_INSTANCES = ("optimizer_instance", "scheduler_instance")
_TYPES = ("optimizer", "scheduler")
_MAX_SCHEDULER_TICKS = 1_000_000


@dataclass
class Snapshot:
    """A state the tracker may revert to: dendrite counts, model weights and tracker history."""

    structure: dict[str, int]
    state: dict[str, torch.Tensor]
    member_vars: dict


def _timestamp() -> str:
    return datetime.now().strftime("_%d.%m.%Y.%H.%M.%S")


def _last_lr(optimizer) -> float:
    lr = None
    for group in optimizer.param_groups:
        lr = group["lr"]
    return lr


def _as_number(value, what: str):
    if isinstance(value, (float, int)):
        return value
    try:
        return value.item()
    except (AttributeError, RuntimeError, ValueError) as exc:
        raise TypeError(f"{what}: expected a float, int or one-element tensor, got {type(value).__name__}") from exc


class PAINeuronModuleTracker(CamelCaseTrackerAPI):
    """Tracks validation scores and grows dendrites (perforatedai's ``GPA.pai_tracker``)."""

    def __init__(
        self,
        doing_pai: bool = True,
        save_name: str = "PAI",
        making_graphs: bool = True,
        param_vals_setting: int = -1,
        values_per_train_epoch: int = -1,
        values_per_val_epoch: int = -1,
        *,
        config: PAIConfig | None = None,
        snapshot_device: str | torch.device | None = "cpu",
        outputs: TrackerOutputs | None = None,
    ) -> None:
        self.pc = config if config is not None else pc
        self.member_var_types = dict(MEMBER_VAR_TYPES)
        self.member_vars: dict = {name: copy.deepcopy(init) for name, init, _ in _MEMBER_VARS}
        self.member_vars["doing_pai"] = bool(doing_pai)
        self.member_vars["switch_mode"] = self.pc.value("switch_mode", 0)
        self.member_vars["param_vals_setting"] = self.pc.value("param_vals_setting", 0)
        self.neuron_module_vector: list[nn.Module] = []
        self.tracked_neuron_module_vector: list[nn.Module] = []
        self.tracked_module_names: list[str] = []
        self.skipped_module_names: list[str] = []
        self.loaded = False
        self.values_per_train_epoch = values_per_train_epoch
        self.values_per_val_epoch = values_per_val_epoch
        self.save_name = save_name
        self.making_graphs = making_graphs
        self.zooming_graph = True
        self.snapshot_device = snapshot_device
        self.snapshots: dict[str, Snapshot] = {}
        self._overrides: dict = {}
        self._validation_calls = 0
        self.start_time = time.time()
        self.saved_time = 0.0
        self.outputs = outputs if outputs is not None else make_outputs(self)
        self.start_epoch(internal_call=True)

    # ------------------------------------------------------------------------------------------- helpers
    def _cfg(self, name: str):
        if name in self._overrides:
            return self._overrides[name]
        return self.pc.value(name, self.member_vars["num_dendrites_added"])

    def _log(self, level: int, msg: str, *args) -> None:
        if level < logging.WARNING and self.pc.value("silent", 0):
            return
        logger.log(level, msg, *args)

    @property
    def num_epochs_run(self) -> int:
        """perforatedai's epoch counter: rewinds when the tracker reverts to the best state."""
        return self.member_vars["num_epochs_run"]

    @property
    def total_epochs_run(self) -> int:
        """Number of ``add_validation_score`` calls so far: never rewinds (the index of the next epoch)."""
        return self._validation_calls

    @property
    def num_dendrites(self) -> int:
        return self.member_vars["num_dendrites_added"]

    @property
    def testing_dendrite_capacity(self) -> bool:
        return bool(self._cfg("testing_dendrite_capacity"))

    def _refresh_modules(self, net: nn.Module) -> None:
        self.neuron_module_vector = [m for _, m in dendritic_modules(net)]

    # ------------------------------------------------------------------------------------------- setup
    def initialize(
        self,
        model: nn.Module | None = None,
        doing_pai: bool = True,
        save_name: str = "PAI",
        making_graphs: bool = True,
        maximizing_score: bool = True,
        num_classes: float = 10000,
        values_per_train_epoch: int = -1,
        values_per_val_epoch: int = -1,
        zooming_graph: bool = True,
        **legacy,
    ):
        """Convert ``model`` (if given), record the run settings, apply the capacity-test overrides."""
        names = {
            "doingPB": "doing_pai",
            "doingPAI": "doing_pai",
            "saveName": "save_name",
            "makingGraphs": "making_graphs",
            "maximizingScore": "maximizing_score",
            "zoomingGraph": "zooming_graph",
        }
        local = {
            "doing_pai": doing_pai,
            "save_name": save_name,
            "making_graphs": making_graphs,
            "maximizing_score": maximizing_score,
            "zooming_graph": zooming_graph,
        }
        for key, val in legacy.items():
            if key not in names:
                raise TypeError(f"initialize() got an unexpected keyword argument {key!r}")
            local[names[key]] = val
        if model is not None:
            from .convert import convert_network

            model = convert_network(model, tracker=self)
            self._refresh_modules(model)
        self.member_vars["doing_pai"] = bool(local["doing_pai"])
        self.member_vars["maximizing_score"] = bool(local["maximizing_score"])
        self.save_name = local["save_name"]
        self.zooming_graph = local["zooming_graph"]
        self.making_graphs = local["making_graphs"]
        if not self.loaded:
            self.member_vars["running_accuracy"] = (1.0 / num_classes) * 100
        self.values_per_train_epoch = values_per_train_epoch
        self.values_per_val_epoch = values_per_val_epoch
        testing = bool(self.pc.value("testing_dendrite_capacity", 0))
        self._overrides["testing_dendrite_capacity"] = testing
        if testing:
            self._log(logging.INFO, "Running a test of Dendrite Capacity.")
            self.member_vars["switch_mode"] = DOING_SWITCH_EVERY_TIME
            self._overrides.update(retain_all_dendrites=True, max_dendrite_tries=1000, max_dendrites=1000)
        else:
            self._log(logging.INFO, "Running Dendrite Experiment")
        return model

    # ------------------------------------------------------------------------------------------ optimizers
    def set_optimizer_instance(self, optimizer_instance, additional_optimizers=()) -> None:
        """Register the optimizer the user built (the tracker reads its LR; no scheduler handling)."""
        optimizer_instance.zero_grad()
        if not self.pc.value("weight_decay_accepted", 0):
            for group in optimizer_instance.param_groups:
                if group.get("weight_decay", 0) > 0:
                    self._log(
                        logging.WARNING, "For PAI training it is recommended to not use weight decay in your optimizer"
                    )
                    break
        self.member_vars["optimizer_instance"] = optimizer_instance

    def set_optimizer(self, optimizer) -> None:
        """Optimizer class for ``setup_optimizer``."""
        self.member_vars["optimizer"] = optimizer

    def set_scheduler(self, scheduler) -> None:
        """Scheduler class for ``setup_optimizer``; the tracker then steps it (remove your scheduler.step())."""
        if scheduler is not torch.optim.lr_scheduler.ReduceLROnPlateau:
            self._log(logging.DEBUG, "Not using ReduceLROnPlateau, this is not recommended")
        self.member_vars["scheduler"] = scheduler

    def clear_optimizer_and_scheduler(self) -> None:
        self.member_vars["optimizer_instance"] = None
        self.member_vars["scheduler_instance"] = None

    def steps_after_switch(self) -> int:
        mv = self.member_vars
        setting = mv["param_vals_setting"]
        if setting == PARAM_VALS_BY_TOTAL_EPOCH:
            return mv["num_epochs_run"]
        if setting == PARAM_VALS_BY_UPDATE_EPOCH:
            return mv["num_epochs_run"] - mv["last_switch"]
        if setting == PARAM_VALS_BY_NEURON_EPOCH_START:
            return mv["num_epochs_run"] - mv["last_switch"] if mv["mode"] == "p" else mv["num_epochs_run"]
        raise PAIConfigurationError(f"param_vals_setting: {setting} is not one of 0, 1, 2 (PARAM_VALS_BY_*)")

    def increment_scheduler(self, num_ticks: int, mode: str):
        """Step the registered scheduler: until the LR changed ``num_ticks`` times ("step_learning_rate") or
        ``num_ticks`` times ("increment_epoch_count"); returns (LR changes, final LR)."""
        mv = self.member_vars
        sched = mv["scheduler_instance"]
        lr1 = _last_lr(mv["optimizer_instance"])
        with warnings.catch_warnings():
            # The replay steps a fresh scheduler before any optimizer step, on purpose.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            return self._replay(sched, num_ticks, mode, lr1)

    def _replay(self, sched, num_ticks: int, mode: str, lr1):
        mv = self.member_vars
        changes = 0
        ticker = 0
        iterations = 0
        while ticker < num_ticks:
            iterations += 1
            if iterations > _MAX_SCHEDULER_TICKS:
                raise PAIConfigurationError(
                    f"scheduler {type(sched).__name__} did not lower the learning rate {num_ticks} times in "
                    f"{_MAX_SCHEDULER_TICKS} steps (min_lr reached?); the LR sweep needs a scheduler that keeps "
                    "lowering the rate, or pc.set_find_best_lr(False)"
                )
            if type(sched) is torch.optim.lr_scheduler.ReduceLROnPlateau:
                # Replays the plateau counter with the recorded epochs of last improvement as the metric
                # (perforatedai's replay; it mimics the counter for mode='max').
                improved = mv["last_improved_accuracies"]
                if mode == "step_learning_rate":
                    sched.step(metrics=improved[self.steps_after_switch() - 1])
                elif mode == "increment_epoch_count":
                    sched.step(metrics=improved[-((num_ticks - 1) - ticker) - 1])
            else:
                sched.step()
            lr2 = _last_lr(mv["optimizer_instance"])
            if lr2 != lr1:
                changes += 1
                lr1 = lr2
                if mode == "step_learning_rate":
                    ticker += 1
            if mode == "increment_epoch_count":
                ticker += 1
        return changes, lr1

    def setup_optimizer(self, net: nn.Module, opt_args: dict, sched_args: dict | None = None, parameters=None):
        """Build the optimizer (class from ``set_optimizer``) and scheduler (``set_scheduler``), register both and
        replay the scheduler to where this cycle stands; returns ``(optimizer, scheduler or None)``."""
        mv = self.member_vars
        if mv["optimizer"] is None:
            raise PAIOptimizerError("setup_optimizer: call set_optimizer(torch.optim.<Class>) first")
        opt_args = dict(opt_args)
        if "weight_decay" in opt_args and not self.pc.value("weight_decay_accepted", 0):
            self._log(logging.WARNING, "For PAI training it is recommended to not use weight decay in your optimizer")
        if "model" not in opt_args and "params" not in opt_args:
            self._log(
                logging.INFO, "setup_optimizer: pass 'params' in opt_args; using the model's trainable parameters"
            )
            opt_args["params"] = (
                parameters if parameters is not None else [p for p in net.parameters() if p.requires_grad]
            )
        elif "params" in opt_args:
            params = opt_args["params"]
            if isinstance(params, list) and params and isinstance(params[0], dict):
                groups = []
                for group in params:
                    kept = [p for p in group["params"] if p.requires_grad]
                    if kept:
                        groups.append({**group, "params": kept})
                opt_args["params"] = groups
            elif hasattr(params, "__iter__"):
                opt_args["params"] = [p for p in params if p.requires_grad]
        optimizer = mv["optimizer"](**opt_args)
        self.set_optimizer_instance(optimizer)
        if mv["scheduler"] is None:
            return optimizer, None
        sched_args = dict(sched_args or {})
        if mv["scheduler"] is torch.optim.lr_scheduler.SequentialLR:
            schedulers = [cls(optimizer, **kw) for cls, kw in sched_args.get("schedulers", [])]
            mv["scheduler_instance"] = torch.optim.lr_scheduler.SequentialLR(
                optimizer, schedulers=schedulers, milestones=sched_args.get("milestones", [])
            )
        else:
            mv["scheduler_instance"] = mv["scheduler"](optimizer, **sched_args)
        steps = 0
        if mv["current_n_learning_rate_initial_skip_steps"] != 0:
            # LR sweep: this trial starts `skip` learning-rate drops lower.
            more, _ = self.increment_scheduler(mv["current_n_learning_rate_initial_skip_steps"], "step_learning_rate")
            steps += more
        initial = (
            self._cfg("initial_history_after_switches")
            if (mv["mode"] == "n" or self._cfg("learn_dendrites_live"))
            else 0
        )
        since = self.steps_after_switch()
        if since > initial:
            # Resume the schedule of this cycle (minus one: setup runs after the epoch counter advanced).
            more, _ = self.increment_scheduler(since - initial - 1, "increment_epoch_count")
            steps += more
        mv["current_step_count"] = steps
        return optimizer, mv["scheduler_instance"]

    # ---------------------------------------------------------------------------------------- bookkeeping
    def add_loss(self, loss) -> None:
        self.member_vars["training_loss"].append(_as_number(loss, "loss"))

    def add_learning_rate(self, learning_rate) -> None:
        self.member_vars["training_learning_rates"].append(_as_number(learning_rate, "learning_rate"))

    def add_extra_score(self, score, extra_score_name: str) -> None:
        """A score drawn next to the validation score (call before ``add_validation_score``)."""
        score = _as_number(score, "score")
        mv = self.member_vars
        mv["extra_scores"].setdefault(extra_score_name, []).append(score)
        if mv["mode"] == "n":
            mv["n_extra_scores"].setdefault(extra_score_name, []).append(score)

    def add_extra_score_without_graphing(self, score, extra_score_name: str) -> None:
        score = _as_number(score, "score")
        self.member_vars["extra_scores_without_graphing"].setdefault(extra_score_name, []).append(score)

    def add_test_score(self, score, extra_score_name: str) -> None:
        """An extra score that is also recorded as the test score."""
        self.add_extra_score(score, extra_score_name)
        self.member_vars["test_scores"].append(_as_number(score, "score"))

    def start_epoch(self, internal_call: bool = False) -> None:
        """Start of a training epoch; calling it yourself switches to train/validation timing (spec §5.9)."""
        mv = self.member_vars
        if mv["manual_train_switch"] and internal_call:
            return
        if not internal_call and not mv["manual_train_switch"]:
            mv["manual_train_switch"] = True
            self.saved_time = 0
            mv["num_epochs_run"] = -1
            mv["total_epochs_run"] = -1
        end = time.time()
        if mv["manual_train_switch"] and self.saved_time != 0:
            mv["p_val_times" if mv["mode"] == "p" else "n_val_times"].append(end - self.saved_time)
        mv["num_epochs_run"] += 1
        mv["total_epochs_run"] = mv["num_epochs_run"] + mv["overwritten_epochs"]
        self.saved_time = end

    def stop_epoch(self, internal_call: bool = False) -> None:
        """End of a training epoch (manual timing mode)."""
        mv = self.member_vars
        end = time.time()
        if mv["manual_train_switch"] and internal_call:
            return
        kind = "train_times" if mv["manual_train_switch"] else "epoch_times"
        mv[("p_" if mv["mode"] == "p" else "n_") + kind].append(end - self.saved_time)
        self.saved_time = end

    def save_graphs(self, extra_string: str = "") -> None:
        """Graphs and CSVs through the outputs hook (nothing is drawn with ``making_graphs=False``)."""
        if self.making_graphs:
            self.outputs.on_graphs(self, extra_string)

    def save_tracker_settings(self) -> None:
        """perforatedai's DataParallel helper; not needed here (channel counts are known at conversion)."""

    def initialize_tracker_settings(self) -> None:
        """perforatedai's DataParallel helper; not needed here."""

    def clear_all_processors(self) -> None:
        for module in self.neuron_module_vector:
            clear = getattr(module, "clear_processors", None)
            if clear is not None:
                clear()

    def set_create_dendrite_global(self, fn) -> None:
        """Custom dendrite factory ``fn(main_module) -> module`` for every generic dendritic wrapper."""
        for module in self.neuron_module_vector:
            if hasattr(module, "set_create_dendrite"):
                module.set_create_dendrite(fn)
            else:
                self._log(
                    logging.WARNING,
                    "set_create_dendrite_global: %s is a fused dendritic layer; its dendrites "
                    "are always copies of the layer",
                    type(module).__name__,
                )

    # ------------------------------------------------------------------------------------------ snapshots
    def _member_vars_copy(self) -> dict:
        return {
            k: (None if k in _INSTANCES else v if k in _TYPES else copy.deepcopy(v))
            for k, v in self.member_vars.items()
        }

    def save_snapshot(self, net: nn.Module, name: str) -> None:
        """Remember the model and the tracker state as ``name`` (perforatedai's ``save_system``)."""
        structure = {path: int(m.num_dendrites) for path, m in dendritic_modules(net)}
        dev = self.snapshot_device
        state = {
            k: v.detach().to(dev, copy=True) if dev is not None else v.detach().clone()
            for k, v in net.state_dict().items()
        }
        # Only the newest post-insertion state and this dendrite count's sweep states are ever reloaded.
        for prefix in ("switch_", "PBCount_"):
            if name.startswith(prefix):
                for old in [k for k in self.snapshots if k.startswith(prefix) and k != name]:
                    if prefix == "switch_" or not old.startswith(name.rsplit("_startSteps_", 1)[0] + "_"):
                        del self.snapshots[old]
        self.snapshots[name] = Snapshot(structure, state, self._member_vars_copy())
        self.outputs.on_save(self, net, name)

    def load_snapshot(
        self,
        net: nn.Module,
        name: str,
        load_from_restart: bool = False,
        switch_call: bool = False,
        load_from_manual_save: bool = False,
    ) -> nn.Module:
        """Revert the model (structure and weights) and the tracker history to ``name`` (``load_system``)."""
        snap = self.snapshots.get(name)
        if snap is None:
            raise PAIError(f"no remembered state named {name!r} (have {sorted(self.snapshots)})")
        modules = dict(dendritic_modules(net))
        missing = sorted(set(snap.structure) - set(modules))
        if missing:
            raise PAIError(f"cannot restore {name!r}: the model has no dendritic modules {missing}")
        for path, d in snap.structure.items():
            set_num_dendrites(modules[path], d)
        net.load_state_dict(snap.state)
        self._refresh_modules(net)
        self._restore_member_vars(snap.member_vars)
        self._after_load(switch_call, load_from_manual_save)
        return net

    def _restore_member_vars(self, member_vars: dict) -> None:
        mv = self.member_vars
        for key, val in member_vars.items():
            if key in mv and key not in _TYPES:  # registered optimizer/scheduler classes are kept
                mv[key] = None if key in _INSTANCES else copy.deepcopy(val)

    def _after_load(self, switch_call: bool, load_from_manual_save: bool) -> None:
        mv = self.member_vars
        self.saved_time = time.time()
        self.loaded = True
        mv["current_best_validation_score"] = 0
        mv["epoch_last_improved"] = mv["num_epochs_run"]
        if not switch_call and not load_from_manual_save:
            # Saves happen before the epoch counter advances: advance it now.
            self.start_epoch(internal_call=True)

    def load_tracker_state(
        self, net: nn.Module, state: dict, switch_call: bool = False, load_from_manual_save: bool = False
    ) -> None:
        """Resume from ``to_dict()`` output saved with a checkpoint (perforatedai's ``load_system`` semantics)."""
        self.from_dict(state)
        self._refresh_modules(net)
        self._after_load(switch_call, load_from_manual_save)

    # ------------------------------------------------------------------------------------------- modes
    def reset_vals_for_score_reset(self) -> None:
        mv = self.member_vars
        if self._cfg("find_best_lr"):
            mv["committed_to_initial_rate"] = False
            self._log(logging.DEBUG, "Resetting committed to initial rate to False")
        if self._cfg("retain_all_dendrites"):
            # Retained dendrites always count as having set a global best.
            mv["current_n_set_global_best"] = True
            mv["global_best_validation_score"] = 0
        else:
            mv["current_n_set_global_best"] = False
        mv["current_best_validation_score"] = 0
        mv["initial_lr_test_epoch_count"] = -1

    def set_dendrite_training(self) -> None:
        mv = self.member_vars
        mv["mode"] = "p"
        mv["current_n_learning_rate_initial_skip_steps"] = 0
        if self._cfg("learn_dendrites_live"):
            self.reset_vals_for_score_reset()
        mv["last_max_learning_rate_steps"] = mv["current_step_count"]
        mv["current_cycle_lr_max_scores"] = []
        mv["num_cycles"] += 1

    def _check_growable(self) -> None:
        """Fail before reverting anything if a module cannot take a dendrite (perforatedai stops in pdb)."""
        unknown = [
            getattr(m, "name", "") or type(m.main_module).__name__
            for m in self.neuron_module_vector
            if getattr(m, "num_channels", 0) is None
        ]
        if unknown:
            raise PAIConfigurationError(
                f"modules {unknown} never ran a forward pass, so their channel count is unknown: train at least "
                "one batch before the first add_validation_score, and check that every perforated module is used"
            )

    def set_neuron_training(self) -> None:
        """Add one dendrite to every dendritic module and start a new neuron-training cycle."""
        mv = self.member_vars
        mult = self._cfg("candidate_weight_initialization_multiplier")
        by_main = bool(self._cfg("candidate_weight_init_by_main"))
        for module in self.neuron_module_vector:
            grow(module, 1, mult, by_main)
            self._log(
                logging.DEBUG, "Module %s now has %d dendrites", getattr(module, "name", ""), module.num_dendrites
            )
        mv["mode"] = "n"
        mv["num_dendrites_added"] += 1
        mv["current_n_learning_rate_initial_skip_steps"] = 0
        self.reset_vals_for_score_reset()
        mv["current_cycle_lr_max_scores"] = []
        if self._cfg("learn_dendrites_live"):
            mv["last_max_learning_rate_steps"] = mv["current_step_count"]
        mv["num_cycles"] += 1
        if self._cfg("reset_best_score_on_switch"):
            mv["current_best_validation_score"] = 0
            mv["running_accuracy"] = 0

    def change_learning_modes(self, net: nn.Module, name: str = "best_model", doing_pai: bool | None = None):
        """Revert to ``name`` and add a dendrite everywhere (n -> p -> n inside one call, spec §4)."""
        mv = self.member_vars
        if doing_pai is None:
            doing_pai = mv["doing_pai"]
        if doing_pai is False:
            mv["switch_epochs"].append(mv["num_epochs_run"])
            mv["last_switch"] = mv["switch_epochs"][-1]
            self.reset_vals_for_score_reset()
            return net
        if mv["mode"] == "n":
            self._check_growable()
            current_epoch = mv["num_epochs_run"]
            overwritten_epochs = mv["overwritten_epochs"]
            overwritten_extra = mv["extra_scores"]
            overwritten_val = mv["accuracies"] if self._cfg("drawing_pai") else mv["n_accuracies"]
            self._log(logging.INFO, "Importing best Model for switch to PA...")
            net = self.load_snapshot(net, name, switch_call=True)
            self.set_dendrite_training()
            mv["overwritten_epochs"] = overwritten_epochs + (current_epoch - mv["num_epochs_run"])
            mv["total_epochs_run"] = mv["num_epochs_run"] + mv["overwritten_epochs"]
            if self._cfg("save_old_graph_scores"):
                mv["overwritten_extras"].append(overwritten_extra)
                mv["overwritten_vals"].append(overwritten_val)
            else:
                mv["overwritten_extras"] = [overwritten_extra]
                mv["overwritten_vals"] = [overwritten_val]
            if self._cfg("drawing_pai") or not mv["switch_epochs"]:
                mv["n_switch_epochs"].append(mv["num_epochs_run"])
            else:
                mv["n_switch_epochs"].append(mv["n_switch_epochs"][-1] + mv["num_epochs_run"] - mv["switch_epochs"][-1])
            mv["switch_epochs"].append(mv["num_epochs_run"])
            mv["last_switch"] = mv["switch_epochs"][-1]
            # Open-source dendrites train by gradient descent: go straight back to neuron training.
            net = self.change_learning_modes(net, name, doing_pai)
        else:
            self._log(logging.INFO, "Switching back to N...")
            set_best = mv["current_n_set_global_best"]
            self.set_neuron_training()
            if not mv["p_switch_epochs"]:
                mv["p_switch_epochs"].append(mv["num_epochs_run"] - 1 - mv["switch_epochs"][-1])
            else:
                mv["p_switch_epochs"].append(mv["p_switch_epochs"][-1] + mv["num_epochs_run"] - mv["switch_epochs"][-1])
            mv["switch_epochs"].append(mv["num_epochs_run"])
            mv["last_switch"] = mv["switch_epochs"][-1]
            if self._cfg("retain_all_dendrites") or (self._cfg("learn_dendrites_live") and set_best):
                self._log(
                    logging.INFO,
                    "Saving model before starting normal training to retain PBNodes regardless of next N Phase results",
                )
                self.save_snapshot(net, name)
        mv["param_counts"].append(count_params(net))
        return net

    # -------------------------------------------------------------------------------------------- scores
    def _beats(self, new, old) -> bool:
        t = self._cfg("improvement_threshold")
        raw = self._cfg("improvement_threshold_raw")
        if self.member_vars["maximizing_score"]:
            return new * (1.0 - t) > old and new - raw > old
        return new * (1.0 + t) < old and new + raw < old

    def _update_running_accuracy(self, score, since_switch: int) -> None:
        mv = self.member_vars
        live = self._cfg("learn_dendrites_live")
        if mv["mode"] == "n" or live:
            if since_switch < self._cfg("initial_history_after_switches"):
                if since_switch <= 0:
                    mv["running_accuracy"] = score
                else:
                    k = 1.0 / (since_switch + 1)
                    mv["running_accuracy"] = mv["running_accuracy"] * (1 - k) + score * k
            else:
                lookback = self._cfg("history_lookback")
                mv["running_accuracy"] = mv["running_accuracy"] * (1.0 - 1.0 / lookback) + score * (1.0 / lookback)
        mv["accuracies"].append(score)
        if mv["mode"] == "n":
            mv["n_accuracies"].append(score)
        if self._cfg("drawing_pai") or mv["mode"] == "n" or live:
            mv["running_accuracies"].append(mv["running_accuracy"])

    def _check_new_best(self, net: nn.Module, since_switch: int) -> None:
        mv = self.member_vars
        improved = self._beats(mv["running_accuracy"], mv["current_best_validation_score"])
        enough_time = (
            since_switch > self._cfg("initial_history_after_switches") or mv["switch_mode"] == DOING_SWITCH_EVERY_TIME
        )
        if (improved or mv["current_best_validation_score"] == 0) and enough_time:
            mv["current_best_validation_score"] = mv["running_accuracy"]
            mv["epoch_last_improved"] = mv["num_epochs_run"]
            mv["last_improved_accuracies"].append(mv["epoch_last_improved"])
            if self._beats(mv["current_best_validation_score"], mv["global_best_validation_score"]) or (
                mv["global_best_validation_score"] == 0
            ):
                mv["global_best_validation_score"] = mv["current_best_validation_score"]
                mv["current_n_set_global_best"] = True
                self.save_snapshot(net, "best_model")
        else:
            mv["last_improved_accuracies"].append(mv["epoch_last_improved"])
            if len(mv["accuracies"]) == 1:
                self.save_snapshot(net, "best_model")  # the first epoch is the best so far

    def switch_time(self) -> bool:
        """Whether this call adds dendrites (spec §5.3 step 7)."""
        mv = self.member_vars
        mode = mv["switch_mode"]
        if mode not in _SWITCH_NAMES:
            raise PAIConfigurationError(f"switch_mode: {mode!r} is not one of pc.DOING_* (0..3)")
        number = self._cfg("fixed_switch_num") if mode == DOING_FIXED_SWITCH else self._cfg("n_epochs_to_switch")
        self._log(
            logging.DEBUG,
            "Checking PAI switch with mode %s, switch mode %s, epoch %s, last improved epoch %s, "
            "total epochs %s, n: %s, num_cycles: %s",
            mv["mode"],
            _SWITCH_NAMES[mode],
            mv["num_epochs_run"],
            mv["epoch_last_improved"],
            mv["total_epochs_run"],
            number,
            mv["num_cycles"],
        )
        self._log(
            logging.DEBUG,
            "  Score tracking: current_n_set_global_best=%s, global_best=%.4f, current_best=%.4f",
            mv["current_n_set_global_best"],
            mv["global_best_validation_score"],
            mv["current_best_validation_score"],
        )
        if mode == DOING_NO_SWITCH:
            self._log(logging.DEBUG, "Returning False - doing no switch mode")
            return False
        if mode == DOING_SWITCH_EVERY_TIME:
            self._log(logging.DEBUG, "Returning True - switching every time")
            return True
        if (
            (mv["mode"] == "n" or self._cfg("learn_dendrites_live"))
            and mv["committed_to_initial_rate"] is False
            and self._cfg("dont_give_up_unless_learning_rate_lowered")
            and mv["current_n_learning_rate_initial_skip_steps"] <= mv["last_max_learning_rate_steps"]
            and mv["scheduler"] is not None
        ):
            self._log(
                logging.DEBUG,
                "Returning False - learning rate optimization in progress. Not committed yet. "
                "Comparing initial %s to last max %s",
                mv["current_n_learning_rate_initial_skip_steps"],
                mv["last_max_learning_rate_steps"],
            )
            return False
        this_count = mv["num_epochs_run"] - mv["switch_epochs"][-1] if mv["switch_epochs"] else mv["num_epochs_run"]
        n_switch = self._cfg("n_epochs_to_switch")
        if (
            mode == DOING_HISTORY
            and mv["mode"] == "n"
            and mv["num_epochs_run"] - mv["epoch_last_improved"] >= n_switch
            and this_count >= self._cfg("initial_history_after_switches") + n_switch
        ):
            self._log(logging.DEBUG, "Returning True - History and last improved is hit")
            return True
        fixed = self._cfg("fixed_switch_num")
        if (
            mode == DOING_FIXED_SWITCH
            and mv["total_epochs_run"] % fixed == fixed - 1
            and mv["num_epochs_run"] >= self._cfg("first_fixed_switch_num") - 1
        ):
            self._log(logging.DEBUG, "Returning True - Fixed switch number is hit")
            return True
        self._log(logging.DEBUG, "Returning False - no triggers to switch have been hit")
        return False

    def _process_no_improvement(self, net: nn.Module):
        mv = self.member_vars
        self.save_graphs(f"{_timestamp()}_noImprove_lr_{mv['current_n_learning_rate_initial_skip_steps']}")
        max_tries = self._cfg("max_dendrite_tries")
        if mv["num_dendrite_tries"] < max_tries - 1:
            self._log(
                logging.INFO,
                "The newest added dendrites did not improve but current tries %d is less than "
                "max tries %d so loading last switch and trying new Dendrites.",
                mv["num_dendrite_tries"] + 1,
                max_tries,
            )
            old_tries = mv["num_dendrite_tries"]
            net = self.change_learning_modes(net, "best_model", mv["doing_pai"])
            mv["num_dendrite_tries"] = old_tries + 1
            self.outputs.on_switch(self, net, "dendrites_redrawn")
            return NETWORK_RESTRUCTURED, net
        self._log(
            logging.INFO,
            "The newest added dendrites did not improve system and %d > %d so returning training_complete.",
            mv["num_dendrite_tries"] + 1,
            max_tries,
        )
        self._log(
            logging.INFO, "You should now exit your training loop and best_model will be your final model for inference"
        )
        net = self.load_snapshot(net, "best_model", switch_call=True)
        self.save_graphs()
        self.outputs.on_complete(self, net, "no_improvement")
        return TRAINING_COMPLETE, net

    def _process_final_network(self, net: nn.Module) -> nn.Module:
        if self.member_vars["doing_pai"]:
            self._log(logging.INFO, "Last Dendrites were good and this hit the max of %s", self._cfg("max_dendrites"))
        else:
            self._log(
                logging.INFO,
                "No improvement for %s epochs: early stopping with the best model",
                self._cfg("n_epochs_to_switch"),
            )
        self.save_graphs("before_final")
        net = self.load_snapshot(net, "best_model", switch_call=True)
        self.save_graphs()
        return net

    def _commit_sweep_rate(self, net: nn.Module, d: int, lr: float) -> None:
        """End the LR sweep on the current trial: keep its state as PICKED and commit to its starting rate."""
        mv = self.member_vars
        skip = mv["current_n_learning_rate_initial_skip_steps"]
        self.save_graphs(f"{_timestamp()}_PBCount_{d}_startSteps_{skip}PICKED")
        self.save_snapshot(net, f"PBCount_{d}_startSteps_{skip}")
        mv["committed_to_initial_rate"] = True
        mv["last_max_learning_rate_steps"] = mv["current_step_count"]
        mv["last_max_learning_rate_value"] = lr

    def _process_scheduler_update(self, net: nn.Module, score, since_switch: int):
        """Step the scheduler and run the learning-rate sweep after a dendrite addition (spec §5.7)."""
        mv = self.member_vars
        restructured = False
        lr1 = _last_lr(mv["optimizer_instance"])
        sched = mv["scheduler_instance"]
        if sched is None:
            raise PAIOptimizerError(
                "a scheduler class is registered (set_scheduler) but no scheduler instance: rebuild the optimizer "
                "and scheduler with setup_optimizer(...) after every restructure"
            )
        initial = self._cfg("initial_history_after_switches")
        if since_switch > initial or mv["mode"] == "p":
            if type(sched) is torch.optim.lr_scheduler.ReduceLROnPlateau:
                sched.step(metrics=score)
            else:
                sched.step()
        lr2 = _last_lr(mv["optimizer_instance"])
        stepped = False
        trials = mv["current_cycle_lr_max_scores"]
        test_len = mv["initial_lr_test_epoch_count"]
        at_last = (not trials and since_switch == test_len * 2) or (len(trials) == 1 and since_switch == test_len)
        if lr1 != lr2:
            stepped = True
            mv["current_step_count"] += 1
            if (
                mv["current_step_count"] == mv["last_max_learning_rate_steps"]
                and mv["current_step_count"] - mv["current_n_learning_rate_initial_skip_steps"] == 1
            ):
                mv["initial_lr_test_epoch_count"] = since_switch
        if (
            mv["scheduler"] is not None
            and (mv["mode"] == "n" or self._cfg("learn_dendrites_live"))
            and (stepped or at_last)
        ):
            if mv["last_max_learning_rate_steps"] == 0:
                # The previous best came before any LR drop: nothing to sweep.
                mv["committed_to_initial_rate"] = True
                mv["last_max_learning_rate_steps"] = mv["current_step_count"]
                mv["last_max_learning_rate_value"] = lr2
            if not mv["committed_to_initial_rate"]:
                best_so_far = mv["global_best_validation_score"]
                d = mv["num_dendrites_added"]
                if not mv["current_cycle_lr_max_scores"] and (
                    mv["current_step_count"] - mv["current_n_learning_rate_initial_skip_steps"] == 2 or at_last
                ):
                    # Trial `skip` is over: remember it, restart from right after the insertion one LR step lower.
                    restructured = True
                    self.clear_optimizer_and_scheduler()
                    old_global = mv["global_best_validation_score"]
                    old_best = mv["current_best_validation_score"]
                    old_counts = mv["initial_lr_test_epoch_count"]
                    skip = mv["current_n_learning_rate_initial_skip_steps"]
                    self.save_graphs(f"{_timestamp()}_PBCount_{d}_startSteps_{skip}")
                    self.save_snapshot(net, f"PBCount_{d}_startSteps_{skip}")
                    net = self.load_snapshot(net, f"switch_{len(mv['switch_epochs'])}", switch_call=True)
                    mv["current_n_learning_rate_initial_skip_steps"] = skip + 1
                    mv["current_cycle_lr_max_scores"].append(old_best)
                    mv["global_best_validation_score"] = old_global
                    mv["initial_lr_test_epoch_count"] = old_counts
                elif len(mv["current_cycle_lr_max_scores"]) == 1:
                    trials = mv["current_cycle_lr_max_scores"]
                    trials.append(mv["current_best_validation_score"])
                    worse = trials[0] > trials[1] if mv["maximizing_score"] else trials[0] < trials[1]
                    if worse:
                        # The previous (higher) starting LR did better: go back to the end of that trial.
                        restructured = True
                        self.clear_optimizer_and_scheduler()
                        prior_best = trials[0]
                        skip = mv["current_n_learning_rate_initial_skip_steps"]
                        self.save_graphs(f"{_timestamp()}_PBCount_{d}_startSteps_{skip}")
                        self.save_snapshot(net, f"PBCount_{d}_startSteps_{skip}")
                        net = self.load_snapshot(net, f"PBCount_{d}_startSteps_{skip - 1}", switch_call=True)
                        self._commit_sweep_rate(net, d, lr2)
                        mv["current_best_validation_score"] = prior_best
                    elif at_last:
                        restructured = True
                        self.clear_optimizer_and_scheduler()
                        self._commit_sweep_rate(net, d, lr2)
                    mv["current_cycle_lr_max_scores"] = []
                elif len(mv["current_cycle_lr_max_scores"]) == 2:  # pragma: no cover - unreachable in perforatedai
                    self._log(logging.ERROR, "LR sweep: two trial scores without a decision; continuing")
                mv["global_best_validation_score"] = best_so_far
            else:
                mv["last_max_learning_rate_steps"] += 1
                mv["last_max_learning_rate_value"] = lr2
        if restructured:
            self.outputs.on_switch(self, net, "lr_sweep_reload")
            return NETWORK_RESTRUCTURED, net
        return NO_MODEL_UPDATE, net

    def add_validation_score(self, accuracy, net: nn.Module, force_switch: bool = False):
        """Record this epoch's validation score; returns ``(model, restructured, training_complete)``."""
        mv = self.member_vars
        if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise PAIConfigurationError(
                "add_validation_score: pass the wrapped model (model.module), not the DataParallel/DDP wrapper"
            )
        accuracy = _as_number(accuracy, "add_validation_score score")
        self._log(logging.DEBUG, "Adding validation score %.8f", accuracy)
        optimizer = mv["optimizer_instance"]
        if optimizer is None or not hasattr(optimizer, "param_groups"):
            raise PAIOptimizerError(
                "add_validation_score: no optimizer is registered. Call "
                "tracker.set_optimizer_instance(optimizer) (or setup_optimizer) before the first score and again "
                "after every call that returned restructured=True (the model's dendrite parameters are new)."
            )
        self._validation_calls += 1
        self._refresh_modules(net)
        self.add_learning_rate(_last_lr(optimizer))
        if not mv["param_counts"]:
            mv["param_counts"].append(count_params(net))
        since_switch = mv["num_epochs_run"] - mv["switch_epochs"][-1] if mv["switch_epochs"] else mv["num_epochs_run"]
        self._update_running_accuracy(accuracy, since_switch)
        self.stop_epoch(internal_call=True)
        if mv["mode"] == "n" or self._cfg("learn_dendrites_live"):
            self._check_new_best(net, since_switch)
        self.outputs.on_save(self, net, "latest")

        status = NO_MODEL_UPDATE
        if self.switch_time() or force_switch:
            if mv["mode"] == "n" and mv["num_dendrites_added"] > 2 and self._cfg("testing_dendrite_capacity"):
                self.save_graphs()
                self._log(
                    logging.WARNING,
                    "Successfully added 3 dendrites with "
                    "GPA.pc.set_testing_dendrite_capacity(True) (default). You may now set that to False and "
                    "run a real experiment.",
                )
                self.outputs.on_complete(self, net, "capacity_test")
                self.outputs.on_epoch(self, net, score=accuracy, restructured=False, training_complete=True)
                return net, False, True
            if (mv["mode"] == "n" or self._cfg("learn_dendrites_live")) and mv["current_n_set_global_best"] is False:
                new_status, net = self._process_no_improvement(net)
                if new_status == TRAINING_COMPLETE:
                    self.outputs.on_epoch(self, net, score=accuracy, restructured=True, training_complete=True)
                    return net, True, True
                status = NETWORK_RESTRUCTURED
            else:
                if (mv["mode"] == "n" and self._cfg("max_dendrites") == mv["num_dendrites_added"]) or (
                    mv["doing_pai"] is False
                ):
                    net = self._process_final_network(net)
                    if mv["num_dendrites_added"] > 0:
                        mv["num_dendrites_integrated"] += 1
                        self._log(
                            logging.INFO,
                            "Final dendrites successfully integrated! Total integrated: %d",
                            mv["num_dendrites_integrated"],
                        )
                    reason = "max_dendrites" if mv["doing_pai"] else "early_stopping"
                    self.outputs.on_complete(self, net, reason)
                    self.outputs.on_epoch(self, net, score=accuracy, restructured=True, training_complete=True)
                    return net, True, True
                integrate = False
                if mv["mode"] == "n":
                    mv["num_dendrite_tries"] = 0
                    integrate = mv["num_dendrites_added"] > 0
                n = len(mv["switch_epochs"])
                self.save_graphs(f"_beforeSwitch_{n}")
                self.outputs.on_save(self, net, f"beforeSwitch_{n}")
                self.outputs.on_copy(self, "best_model", f"best_model_beforeSwitch_{n}")
                net = self.change_learning_modes(net, "best_model", mv["doing_pai"])
                status = NETWORK_RESTRUCTURED
                if integrate:
                    mv["num_dendrites_integrated"] += 1
                    self._log(
                        logging.INFO,
                        "Dendrites successfully integrated! Total integrated: %d",
                        mv["num_dendrites_integrated"],
                    )
                self.outputs.on_switch(self, net, "dendrites_added")
            self.clear_optimizer_and_scheduler()
            self.save_snapshot(net, f"switch_{len(mv['switch_epochs'])}")
            self._log(logging.INFO, "Restructured: %d dendrites per module", mv["num_dendrites_added"])
        elif mv["scheduler"] is not None:
            new_status, net = self._process_scheduler_update(net, accuracy, since_switch)
            if new_status in (NETWORK_RESTRUCTURED, TRAINING_COMPLETE):
                status = NETWORK_RESTRUCTURED
        self.start_epoch(internal_call=True)
        self.save_graphs()
        if status == NETWORK_RESTRUCTURED:
            mv["epoch_last_improved"] = mv["num_epochs_run"]
        self.outputs.on_epoch(self, net, score=accuracy, restructured=status, training_complete=False)
        return net, status, False

    # -------------------------------------------------------------------------------------------- state
    def to_dict(self) -> dict:
        """JSON-serialisable tracker state (no model weights; remembered states are in ``snapshots``)."""
        mv = {}
        for key, val in self.member_vars.items():
            if key in _INSTANCES:
                mv[key] = None
            elif key in _TYPES:
                mv[key] = None if val is None else f"{val.__module__}.{val.__qualname__}"
            else:
                mv[key] = copy.deepcopy(val)
        return {
            "format": "pai_fast.tracker/1",
            "member_vars": mv,
            "total_epochs_run": self._validation_calls,
            "overrides": copy.deepcopy(self._overrides),
            "save_name": self.save_name,
            "making_graphs": self.making_graphs,
            "zooming_graph": self.zooming_graph,
        }

    def from_dict(self, state: dict) -> None:
        """Restore ``to_dict``'s output (optimizer/scheduler classes stay as registered; instances are cleared)."""
        self._restore_member_vars(state["member_vars"])
        self._validation_calls = int(state.get("total_epochs_run", self._validation_calls))
        self._overrides = dict(state.get("overrides", {}))
        self.save_name = state.get("save_name", self.save_name)
        self.making_graphs = state.get("making_graphs", self.making_graphs)
        self.zooming_graph = state.get("zooming_graph", self.zooming_graph)
        self.loaded = True

    def to_string(self) -> str:
        """The state in perforatedai's ``tracker_string`` text format (spec §6.2)."""
        lines = []
        for key, val in self.member_vars.items():
            kind = self.member_var_types.get(key)
            if val is None:
                lines.append(f"{key},None")
            elif kind in ("bool", "int", "float", "string", "type"):
                lines.append(f"{key},{val}")
            elif kind == "empty array":
                lines.append(f"{key},[]")
            elif kind in ("int array", "float array"):
                lines += [f"{key},", ",".join(str(v) for v in val)]
            elif kind == "float array dictionary":
                lines.append(f"{key},")
                lines += [",".join([name, *map(str, vals)]) for name, vals in val.items()]
                lines.append("end")
            elif kind == "float array array":
                lines.append(f"{key},")
                lines += [",".join(map(str, arr)) for arr in val]
                lines.append("end")
            elif kind == "float array dictionary array":
                lines.append(f"{key},")
                for entry in val:
                    lines += [",".join([name, *map(str, vals)]) for name, vals in entry.items()]
                    lines.append("endkey")
                lines.append("endarray")
        return "\n".join(lines) + "\n"

    def from_string(self, string: str) -> None:
        """Restore a perforatedai ``tracker_string`` (unknown variables are skipped)."""
        f = io.StringIO(string)
        mv = self.member_vars

        def num(s: str, kind: str):
            return int(s) if kind == "int" else float(s)

        while True:
            line = f.readline()
            if not line:
                break
            key, _, rest = line.rstrip("\n").partition(",")
            kind = self.member_var_types.get(key)
            if kind is None:
                continue
            if kind in ("bool", "int", "float", "string"):
                if rest == "None":
                    mv[key] = None
                elif kind == "bool":
                    mv[key] = {"True": True, "False": False, "1": 1, "0": 0}[rest]
                elif kind == "string":
                    mv[key] = rest
                else:
                    mv[key] = num(rest, kind) if kind == "int" else float(rest)
            elif kind == "empty array":
                mv[key] = None
            elif kind in ("int array", "float array"):
                vals = f.readline().rstrip("\n")
                mv[key] = [num(v, kind.split()[0]) for v in vals.split(",")] if vals else []
            elif kind == "float array dictionary":
                out = {}
                for row in iter(lambda: f.readline().rstrip("\n"), "end"):
                    name, *vals = row.split(",")
                    out[name] = [float(v) for v in vals]
                mv[key] = out
            elif kind == "float array array":
                mv[key] = [
                    [float(v) for v in row.split(",")] if row else []
                    for row in iter(lambda: f.readline().rstrip("\n"), "end")
                ]
            elif kind == "float array dictionary array":
                entries = []
                row = f.readline().rstrip("\n")
                while row != "endarray":
                    entry = {}
                    while row != "endkey":
                        name, *vals = row.split(",")
                        entry[name] = [float(v) for v in vals]
                        row = f.readline().rstrip("\n")
                    entries.append(entry)
                    row = f.readline().rstrip("\n")
                mv[key] = entries

    def __repr__(self) -> str:
        mv = self.member_vars
        return (
            f"PAINeuronModuleTracker(dendrites={mv['num_dendrites_added']}, mode={mv['mode']!r}, "
            f"epoch={mv['num_epochs_run']}, total_epochs_run={self._validation_calls}, "
            f"global_best={mv['global_best_validation_score']})"
        )


DendriteTracker = PAINeuronModuleTracker
