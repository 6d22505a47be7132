"""Drop-in for the old camelCase ``perforatedai.pb_globals`` (PBG).

Settings are module attributes in this API and assignments take effect: ``PBG.testingDendriteCapacity = False``,
``PBG.nEpochsToSwitch = 10``, ``PBG.inputDimensions = [-1, 0, -1, -1]`` (now ``output_dimensions``),
``PBG.moduleNamesToConvert`` (now ``module_names_to_perforate``) ... each sets the current knob on ``pc``.
``PBG.pbTracker`` is the current tracker (made on first use for the old ``convertNetwork`` +
``pbTracker.initialize(...)`` sequence).
"""

from __future__ import annotations

import sys

from ..tracker import _runtime
from ..tracker.config import pc
from ..tracker.generic import PAISequential
from ..tracker.tracker import PAINeuronModuleTracker
from ._modules import ConfigModule

PBSequential = PAISequential
doingSwitchEveryTime = pc.DOING_SWITCH_EVERY_TIME  # noqa: N816
doingHistory = pc.DOING_HISTORY  # noqa: N816
doingFixedSwitch = pc.DOING_FIXED_SWITCH  # noqa: N816
doingNoSwitch = pc.DOING_NO_SWITCH  # noqa: N816


class _PBGlobals(ConfigModule):
    _tracker_names = ("pbTracker", "pb_tracker", "pai_tracker")
    _warn_on_knob_assignment = False

    def _missing_tracker(self):
        tracker = PAINeuronModuleTracker(save_name=pc.get_save_name() or "PB")
        _runtime.set_current_tracker(tracker)
        return tracker


sys.modules[__name__].__class__ = _PBGlobals
