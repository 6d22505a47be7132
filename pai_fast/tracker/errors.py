"""Typed errors and warnings of the tracker (perforatedai stops in pdb or sys.exit where these are raised)."""

from __future__ import annotations


class PAIError(RuntimeError):
    """Base class of every tracker error."""


class PAIConfigurationError(PAIError, ValueError):
    """A setting, a model layout or a call sequence the tracker cannot work with (message says how to fix it)."""


class PAIOptimizerError(PAIError):
    """No optimizer is registered with the tracker (register one, and again after every restructure)."""


class PAIConfigWarning(UserWarning):
    """A legacy, unknown or ignored configuration name (the message names the current one)."""
