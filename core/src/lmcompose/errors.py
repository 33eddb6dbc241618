"""Errors meant for people: each names the thing, the value and the fix.

Every error a user can cause derives from :class:`UsageError`; the CLI prints its message
(no traceback) and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DataError",
    "DuplicateNameError",
    "LMComposeError",
    "ModelLoadError",
    "NumericalError",
    "PluginLoadError",
    "StepFailedError",
    "UnknownNameError",
    "UsageError",
    "describe_value",
]


def describe_value(value: object) -> str:
    """How a message names a value of the wrong shape: "a list", "the string 'x'", ..."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


class LMComposeError(Exception):
    """Base class of all lmcompose errors."""


class UsageError(LMComposeError):
    """A mistake in what the user asked for (exit code 2 in the CLI)."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A name that is not registered; the message suggests the closest ones."""

    def __init__(self, kind: str, name: str, available: Iterable[str], hint: str = ""):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        super().__init__(self._message(hint))

    def _message(self, hint: str) -> str:
        msg = f"unknown {self.kind} {self.name!r}."
        close = difflib.get_close_matches(self.name, self.available, n=3, cutoff=0.5)
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        msg += " Available: " + (", ".join(self.available) if self.available else "(none)") + "."
        if hint:
            msg += " " + hint
        return msg

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DuplicateNameError(LMComposeError):
    """Two plugins registered the same name."""


class ConfigError(UsageError):
    """An intervention/metric config or a run config that cannot be used."""


class DataError(UsageError):
    """A data file that is missing or malformed."""


class ModelLoadError(UsageError):
    """A model that cannot be found or loaded."""


class PluginLoadError(LMComposeError):
    """A plugin failed to load (raised only in strict mode)."""


class NumericalError(LMComposeError):
    """A computation that cannot proceed (a matrix that is not positive definite, NaN)."""


class StepFailedError(LMComposeError):
    """A step or a metric raised while it ran: the message names it and the distribution
    that provides it (exit code 1; ``--debug`` shows the original traceback)."""
