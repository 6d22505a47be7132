"""Module objects whose attributes are live views of the tracker state and the configuration.

perforatedai scripts read and assign module attributes: ``GPA.pai_tracker`` (the current tracker, ``[]`` before
``perforate_model``), and in old scripts settings such as ``PBG.testingDendriteCapacity = False`` or
``GPA.n_epochs_to_switch = 3``. Swapping a module's class to :class:`ConfigModule` makes those reads and writes
go to the tracker and to ``pc`` (perforatedai 3.2.9 silently ignores such assignments).
"""

from __future__ import annotations

import types
import warnings

from ..tracker import _runtime
from ..tracker.config import CONSTANTS, pc, resolve_name
from ..tracker.errors import PAIConfigWarning


class ConfigModule(types.ModuleType):
    """A module whose unknown attributes are configuration knobs and whose tracker attribute is live."""

    _tracker_names: tuple[str, ...] = ("pai_tracker",)
    _warn_on_knob_assignment = True

    def __getattr__(self, name: str):
        if name in type(self)._tracker_names:
            tracker = _runtime.current_tracker()
            return tracker if tracker is not None else self._missing_tracker()
        if name.startswith("__"):
            raise AttributeError(name)
        canonical, kind = resolve_name(name)
        if kind == "constant":
            return CONSTANTS[canonical]
        if kind in ("knob", "legacy"):
            return pc.raw(canonical)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in type(self)._tracker_names:
            _runtime.set_current_tracker(None if isinstance(value, list) and not value else value)
            return
        if name in self.__dict__ or name.startswith("_"):
            super().__setattr__(name, value)
            return
        canonical, kind = resolve_name(name)
        if kind in ("knob", "legacy"):
            if type(self)._warn_on_knob_assignment:
                warnings.warn(
                    f"{self.__name__}.{name} = ... sets pc.{canonical}; write pc.set_{canonical}(...) instead",
                    PAIConfigWarning,
                    stacklevel=2,
                )
            pc.set(canonical, value)
            return
        if kind == "pb_only":
            pc.set(canonical, value)  # warns: closed-source setting, ignored
            return
        super().__setattr__(name, value)

    def _missing_tracker(self):
        return []
