"""Drop-in for the old camelCase ``perforatedai.pb_models`` (PBM): PBSequential and processors."""

from __future__ import annotations

from ..tracker.generic import PAISequential
from ..tracker.processors import (
    GRUCellProcessor,
    GRUProcessor,
    LSTMCellProcessor,
    LSTMProcessor,
    LSTMProcessorLastHidden,
    MultiOutputProcessor,
    PAIProcessor,
)
from .library_perforatedai import ResNetPAI, ResNetPAIPreFC

PBSequential = PAISequential
multiOutputProcesser = MultiOutputProcessor  # noqa: N816 (the old spelling)
multiOutputProcessor = MultiOutputProcessor  # noqa: N816
ResNetPB = ResNetPAI
ResNetPBPreFC = ResNetPAIPreFC

__all__ = [
    "GRUCellProcessor",
    "GRUProcessor",
    "LSTMCellProcessor",
    "LSTMProcessor",
    "LSTMProcessorLastHidden",
    "MultiOutputProcessor",
    "PAIProcessor",
    "PBSequential",
    "ResNetPB",
    "ResNetPBPreFC",
    "multiOutputProcesser",
]
