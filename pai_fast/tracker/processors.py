"""Processors: adapters for modules whose forward is not "one tensor in, one tensor out" (spec §3.4).

A processor class is registered with ``pc.append_modules_with_processing([type])`` +
``pc.append_modules_processing_classes([cls])`` (or by type name with ``append_module_names_with_processing`` +
``append_module_by_name_processing_classes``). The dendritic wrapper makes one instance for the neuron and
one per dendrite and calls:

* ``post_n1(out)``: the one tensor of the neuron's output that dendrites add to (stash the rest);
* ``post_n2(combined)``: rebuild the module's return structure around the combined tensor;
* ``pre_d(*args, **kwargs) -> (args, kwargs)``: the inputs of this dendrite (e.g. its own recurrent state);
* ``post_d(out)``: the one tensor of the dendrite's output to combine (stash the rest);
* ``clear_processor()``: drop stashed tensors (before deep copies and saves).

Unlike perforatedai 3.2.9 (which feeds dendrite c the arguments returned by dendrite c-1's ``pre_d``), every
dendrite's ``pre_d`` receives the module's own call arguments.
"""

from __future__ import annotations

import torch


class PAIProcessor:
    """Base class: pass-through for everything; subclasses override what they need."""

    def post_n1(self, *args, **kwargs):
        return args[0]

    def post_n2(self, *args, **kwargs):
        return args[0]

    def pre_d(self, *args, **kwargs):
        return args, kwargs

    def post_d(self, *args, **kwargs):
        return args[0]

    def clear_processor(self) -> None:
        for name in list(vars(self)):
            delattr(self, name)


class MultiOutputProcessor(PAIProcessor):
    """Tuple outputs: dendrites add to element 0; the other elements come from the neuron."""

    def post_n1(self, *args, **kwargs):
        out = args[0]
        self.extra_out = tuple(out[1:])
        return out[0]

    def post_n2(self, *args, **kwargs):
        return (args[0],) + self.extra_out

    def post_d(self, *args, **kwargs):
        return args[0][0]


class LSTMProcessor(PAIProcessor):
    """``nn.LSTM``/``nn.GRU`` ``(output, hidden)``: dendrites add to ``output``; the neuron's hidden state is kept."""

    def post_n1(self, *args, **kwargs):
        output, hidden = args[0]
        self.hidden_n = hidden
        return output

    def post_n2(self, *args, **kwargs):
        return args[0], self.hidden_n

    def post_d(self, *args, **kwargs):
        return args[0][0]


GRUProcessor = LSTMProcessor  # same (output, h_n) structure; the old API's name


class LSTMProcessorLastHidden(PAIProcessor):
    """``nn.LSTM``/``nn.GRU``: dendrites add to the last layer's final hidden state; returns ``(None, h)``."""

    @staticmethod
    def _last_hidden(out):
        hidden = out[1]
        if isinstance(hidden, tuple):  # LSTM: (h_n, c_n)
            hidden = hidden[0]
        return hidden[-1]

    def post_n1(self, *args, **kwargs):
        return self._last_hidden(args[0])

    def post_n2(self, *args, **kwargs):
        return None, args[0]

    def post_d(self, *args, **kwargs):
        return self._last_hidden(args[0])


class LSTMCellProcessor(PAIProcessor):
    """``nn.LSTMCell`` ``(h, c)``: dendrites add to ``h``; each dendrite carries its own state between steps.

    On a step whose incoming state is all zeros (the first step) or absent, dendrites get the caller's input
    unchanged; afterwards each dendrite is fed the ``(h, c)`` it produced at the previous step.
    """

    def post_n1(self, *args, **kwargs):
        h, c = args[0]
        self.c_n = c
        return h

    def post_n2(self, *args, **kwargs):
        return args[0], self.c_n

    def pre_d(self, *args, **kwargs):
        if len(args) < 2 or args[1] is None or not hasattr(self, "h_d") or _all_zero(args[1][0]):
            return args, kwargs
        return (args[0], (self.h_d, self.c_d)) + tuple(args[2:]), kwargs

    def post_d(self, *args, **kwargs):
        self.h_d, self.c_d = args[0]
        return self.h_d


class GRUCellProcessor(PAIProcessor):
    """``nn.GRUCell``: one tensor out, but each dendrite carries its own hidden state between steps."""

    def pre_d(self, *args, **kwargs):
        if len(args) < 2 or args[1] is None or not hasattr(self, "h_d") or _all_zero(args[1]):
            return args, kwargs
        return (args[0], self.h_d) + tuple(args[2:]), kwargs

    def post_d(self, *args, **kwargs):
        self.h_d = args[0]
        return self.h_d


def _all_zero(t) -> bool:
    return bool(torch.is_tensor(t) and not t.any())


# Names of the old camelCase API.
multiOutputProcesser = MultiOutputProcessor  # noqa: N816 (old spelling)
multiOutputProcessor = MultiOutputProcessor  # noqa: N816

__all__ = [
    "GRUCellProcessor",
    "GRUProcessor",
    "LSTMCellProcessor",
    "LSTMProcessor",
    "LSTMProcessorLastHidden",
    "MultiOutputProcessor",
    "PAIProcessor",
]
