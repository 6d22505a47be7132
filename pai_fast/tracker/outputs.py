"""The tracker's output hook: graphs, CSVs and checkpoint files are written by an ``TrackerOutputs`` object.

The tracker calls these methods at the points where perforatedai writes files (spec §6.1, §7); this base class
does nothing. A recorder that writes PNG/CSV/checkpoints subclasses it and is installed with
``set_default_outputs(factory)`` (used by every later ``perforate_model``) or per tracker with
``tracker.outputs = recorder``. Decisions never depend on files: the tracker keeps the states it may revert to
in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TrackerOutputs:
    """No-op recorder; every hook receives the tracker (``tracker.member_vars`` holds the history)."""

    def on_start(self, tracker: Any, model: Any) -> None:
        """After ``perforate_model`` converted the model."""

    def on_epoch(
        self, tracker: Any, model: Any, *, score: float, restructured: int | bool, training_complete: bool
    ) -> None:
        """End of every ``add_validation_score`` call (perforatedai renders its graphs and CSVs here)."""

    def on_graphs(self, tracker: Any, suffix: str = "") -> None:
        """``save_graphs(extra_string)``: a snapshot of graphs/CSVs (suffix as in spec §7.2, '' = live files)."""

    def on_save(self, tracker: Any, model: Any, name: str) -> None:
        """A named checkpoint: best_model, latest, beforeSwitch_N, switch_N, PBCount_D_startSteps_k."""

    def on_copy(self, tracker: Any, src: str, dst: str) -> None:
        """perforatedai copies ``best_model.pt`` to ``best_model_beforeSwitch_N.pt`` before a switch."""

    def on_switch(self, tracker: Any, model: Any, event: str) -> None:
        """After a restructure: 'dendrites_added', 'dendrites_redrawn' or 'lr_sweep_reload'."""

    def on_complete(self, tracker: Any, model: Any, reason: str) -> None:
        """Training complete: 'capacity_test', 'no_improvement', 'max_dendrites' or 'early_stopping'."""


_default_factory: Callable[[Any], TrackerOutputs] | None = None


def set_default_outputs(factory: Callable[[Any], TrackerOutputs] | None) -> None:
    """Recorder factory ``factory(tracker) -> TrackerOutputs`` for trackers made from now on (None: no-op)."""
    global _default_factory
    _default_factory = factory


def make_outputs(tracker: Any) -> TrackerOutputs:
    return _default_factory(tracker) if _default_factory is not None else TrackerOutputs()
