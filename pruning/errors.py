"""Exceptions with messages that name the offending thing (an FQN, a path, a value).

>>> raise PlanError("unknown FQN 'down_blocks.9.attentions.0'")
Traceback (most recent call last):
...
pruning.errors.PlanError: unknown FQN 'down_blocks.9.attentions.0'
"""

from __future__ import annotations


class PruningError(Exception):
    """Base class for every error this package raises on purpose."""


class ModelLoadError(PruningError, OSError):
    """A model source could not be loaded: unknown id, missing folder, offline Hub, unsupported class."""


class PlanError(PruningError, ValueError):
    """A plan does not fit a denoiser: unknown FQN, index out of range, family mismatch, bad value."""


class ExportError(PruningError, OSError):
    """An export folder is missing, corrupt, or does not match its plan; or an export cannot be written."""


class SettingsError(PruningError, ValueError):
    """A user-supplied value is out of range or of the wrong type (steps, seeds, prompts, paths...)."""


class UnknownName(SettingsError, KeyError):
    """A name no registry holds (a method, a model family, a reference model); the message lists the
    registered ones. One type for every registry: a ``SettingsError`` (so a ``ValueError``) and a
    ``KeyError``, as a lookup.

    >>> str(UnknownName("method must be one of ['a'], got 'b'"))
    "method must be one of ['a'], got 'b'"
    """

    def __str__(self) -> str:  # a KeyError would quote its message
        return str(self.args[0]) if self.args else ""


class StateMismatch(SettingsError):
    """A saved run state belongs to another run (another method, model or settings)."""


class RunStopped(PruningError):
    """A run was stopped (Stop, a cancelled or disconnected request, a time limit) before any result."""


class RunDiverged(PruningError):
    """An optimization produced a non-finite value; ``result`` holds the last finite state (or None)."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
