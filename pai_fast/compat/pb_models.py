"""Drop-in for the old camelCase ``perforatedai.pb_models`` (PBM): PBSequential and processors."""

from __future__ import annotations

from ..tracker import processors as _processors
from ..tracker.generic import PAISequential
from ..tracker.processors import *  # noqa: F403 (the old module served every processor too)
from ..tracker.processors import MultiOutputProcessor
from .library_perforatedai import ResNetPAI, ResNetPAIPreFC

PBSequential = PAISequential
multiOutputProcesser = MultiOutputProcessor  # noqa: N816 (the old spelling)
multiOutputProcessor = MultiOutputProcessor  # noqa: N816
ResNetPB = ResNetPAI
ResNetPBPreFC = ResNetPAIPreFC

__all__ = [
    *_processors.__all__,
    "PBSequential",
    "ResNetPB",
    "ResNetPBPreFC",
    "multiOutputProcesser",
]
