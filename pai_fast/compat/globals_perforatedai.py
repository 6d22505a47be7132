"""Drop-in for ``perforatedai.globals_perforatedai`` (GPA): ``pc``, ``pai_tracker``, ``PAISequential``.

``GPA.pai_tracker`` is the tracker made by the last ``perforate_model`` call (``[]`` before). Assigning a setting
as a module attribute (``GPA.testing_dendrite_capacity = False``, from early snake_case examples) sets it on
``pc`` with a warning instead of being ignored.
"""

from __future__ import annotations

import sys

from ..tracker.config import PAIConfig, pc
from ..tracker.generic import PAISequential
from ._modules import ConfigModule

pai_scaler = None

__all__ = ["PAIConfig", "PAISequential", "pai_tracker", "pc"]  # noqa: F822 (pai_tracker is live)

sys.modules[__name__].__class__ = ConfigModule
