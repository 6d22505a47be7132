"""The process-wide current tracker (perforatedai keeps exactly one, in ``GPA.pai_tracker``)."""

from __future__ import annotations

from typing import Any

_current: Any = None


def current_tracker() -> Any:
    """The tracker made by the last ``perforate_model`` call, or None."""
    return _current


def set_current_tracker(tracker: Any) -> None:
    global _current
    _current = tracker


def dendrites_added() -> int:
    """``num_dendrites_added`` of the current tracker (0 before ``perforate_model``)."""
    if _current is None:
        return 0
    return int(_current.member_vars.get("num_dendrites_added", 0))
