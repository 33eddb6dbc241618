"""Narrowing helpers for values read from JSON, YAML or a config, typed ``object`` until used."""

from __future__ import annotations

from typing import SupportsFloat, SupportsIndex, SupportsInt

__all__ = ["number_or_none", "to_float", "to_int"]

_FLOATABLE = (str, bytes, bytearray, SupportsFloat, SupportsIndex)
_INTABLE = (str, bytes, bytearray, SupportsInt, SupportsIndex)


def to_float(value: object) -> float:
    """``float(value)`` for a value typed ``object``: the same result, or the same TypeError
    or ValueError that ``float`` raises."""
    if isinstance(value, _FLOATABLE):
        return float(value)
    raise TypeError(f"float() argument must be a string or a real number, not {type(value).__name__!r}")


def number_or_none(value: object) -> float | None:
    """``value`` as a float, None for None (a metric not measured, or not finite when written)."""
    return None if value is None else to_float(value)


def to_int(value: object) -> int:
    """``int(value)`` for a value typed ``object``: the same result, or the same TypeError or
    ValueError that ``int`` raises."""
    if isinstance(value, _INTABLE):
        return int(value)
    raise TypeError(f"int() argument must be a string or a real number, not {type(value).__name__!r}")
