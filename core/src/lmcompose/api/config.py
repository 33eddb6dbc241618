"""Config parsing shared by every intervention, metric and setting: dataclass fields coerced
from strings (the CLI's ``name:field=value``) and checked, strength knobs, and a config's
identity."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from lmcompose.api._values import to_float
from lmcompose.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: a config class (a dataclass)
C = TypeVar("C")

__all__ = ["StrengthKnob", "build_config", "config_fields", "config_to_dict", "field_help"]


@dataclass(frozen=True)
class StrengthKnob:
    """Which config field is an intervention's strength (the paper's γ) and its range.

    ``normalize`` maps a value to [0, 1], 0 = weakest, 1 = strongest, over
    [``low``, ``high``]; ``increasing=False`` means smaller values are stronger (bits).
    """

    field: str
    low: float
    high: float
    low_inclusive: bool = True
    high_inclusive: bool = True
    increasing: bool = True
    integer: bool = False

    def check(self, value: object, where: str) -> None:
        if value is None:
            return
        try:
            v = to_float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {self.field}={value!r} is not a number") from None
        lo_ok = v >= self.low if self.low_inclusive else v > self.low
        hi_ok = v <= self.high if self.high_inclusive else v < self.high
        if math.isnan(v) or not (lo_ok and hi_ok):
            raise ConfigError(f"{where}: {self.field}={value!r} is out of range; use a value in {self.describe()}")
        if self.integer and v != int(v):
            raise ConfigError(f"{where}: {self.field}={value!r} must be a whole number in {self.describe()}")

    def describe(self) -> str:
        lo = "[" if self.low_inclusive else "("
        hi = "]" if self.high_inclusive else ")"
        fmt = (lambda x: str(int(x))) if self.integer else (lambda x: f"{x:g}")
        return f"{lo}{fmt(self.low)}, {fmt(self.high)}{hi}"

    def normalize(self, value: object) -> float:
        span = self.high - self.low
        t = (to_float(value) - self.low) / span if span else 0.0
        t = min(1.0, max(0.0, t))
        return t if self.increasing else 1.0 - t


def config_fields(config_cls: type) -> dict[str, dataclasses.Field[object]]:
    """The fields of config class ``config_cls`` (a dataclass) that its constructor takes."""
    return {f.name: f for f in dataclasses.fields(config_cls) if f.init}


def field_help(f: dataclasses.Field[object]) -> str:
    return str(f.metadata.get("help", ""))


def _coerce(value: object, tp: object, where: str) -> object:
    """``value`` as annotation ``tp`` asks; an annotation it does not know (``object``,
    ``Any``, a class) takes the value as it is."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin is typing.Literal:
        choices = list(args)
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value):
                return c
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
            return True
        if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
            return False
        raise ConfigError(f"{where}: {value!r} is not a boolean (use true or false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        try:
            f = to_float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not a number")
        try:
            f = to_float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not a number") from None
        if math.isnan(f):
            raise ConfigError(f"{where}: {value!r} is not a number (NaN); give a value")
        return f
    if tp is str:
        if isinstance(value, str | int | float):
            return str(value)
        raise ConfigError(f"{where}: {value!r} is not a string")
    if origin in (list, tuple) or tp in (list, tuple):
        items = value
        if isinstance(value, str):
            items = [v for v in value.split("+") if v]
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: {value!r} is not a list")
        inner = args[0] if args else object
        out = [_coerce(v, inner, where) for v in items]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    return value


@functools.lru_cache(maxsize=1024)
def _field_types(config_cls: type) -> dict[str, object]:
    """``typing.get_type_hints(config_cls)``, once per class: it evaluates every annotation
    string again on each call (about 1 ms), and a large grid builds a config per cell."""
    return typing.get_type_hints(config_cls)


def build_config(config_cls: type[C], overrides: Mapping[str, object], where: str) -> C:
    """Make ``config_cls(**overrides)`` with values coerced from strings and checked.

    Unknown fields get "did you mean"; values are coerced by the field's annotation;
    ``metadata={"range": (lo, hi)}`` or ``{"choices": [...]}`` are enforced; errors raised by
    the dataclass's ``__post_init__`` become :class:`ConfigError` naming ``where``.
    """
    cls: type = config_cls
    fields = config_fields(cls)
    hints = _field_types(cls)
    kwargs: dict[str, object] = {}
    for key, raw in overrides.items():
        if key not in fields:
            raise UnknownNameError(f"field of {where}", key, fields, "")
        loc = f"{where}: field {key!r}"
        value = _coerce(raw, hints.get(key, object), loc)
        meta = fields[key].metadata
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{loc}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
        if "range" in meta and value is not None:
            lo, hi = meta["range"]
            if not (lo <= value <= hi):
                raise ConfigError(f"{loc}: {value!r} is out of range; use a value in [{lo}, {hi}]")
        kwargs[key] = value
    try:
        return config_cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def config_to_dict(config: DataclassInstance) -> dict[str, object]:
    """A config's identity (run ids, state keys, reports): every field, except a field added
    to an existing method (``metadata={"since": version}``) while it holds its default, so
    the results recorded before the field existed keep their identity (and their resume)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if "since" in f.metadata and f.default is not dataclasses.MISSING and v == f.default:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
