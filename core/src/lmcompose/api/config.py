"""Config parsing shared by every intervention, metric and setting: dataclass fields coerced
from strings (the CLI's ``name:field=value``) and checked, strength knobs, and a config's
identity.

One mechanism checks every value lmcompose is given: a step's config (:func:`build_config`,
values coerced from text), a run's, sweep's or study's settings (:func:`check_fields` and
:func:`check_field`, values as a file or a Python call gives them). A field says what it
takes by its annotation and, where that is not enough, a :class:`Check` in its metadata (see
:func:`setting`); every mistake gets one of the messages of :func:`expected`, :func:`below`,
:func:`above`, :func:`out_of_range` and :func:`not_one_of`, naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lmcompose.api._values import to_float
from lmcompose.errors import ConfigError, UnknownNameError, describe_value

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: a config class (a dataclass)
C = TypeVar("C")

__all__ = [
    "Check",
    "StrengthKnob",
    "above",
    "below",
    "build_config",
    "check_field",
    "check_fields",
    "config_fields",
    "config_to_dict",
    "expected",
    "field_help",
    "not_one_of",
    "out_of_range",
    "setting",
    "unreadable",
]


# --------------------------------------------------------------------------------------
# The one set of messages: "PATH: expected WHAT, e.g. EXAMPLE; got VALUE", "PATH: V is below
# LOW; give WHAT", "PATH: V is above HIGH; give WHAT", "PATH: V is out of range; use a value
# in [LOW, HIGH]", "PATH: VALUE is not one of A, B". PATH names the key (``seed``, ``c.yaml: seed``,
# ``noise_floor.seeds[0]``, ``compose(): out``).
# --------------------------------------------------------------------------------------


def _num(x: float) -> str:
    """A bound as a message writes it: ``4294967295``, ``0.5``."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _eg(example: str | None) -> str:
    return f", e.g. {example}" if example else ""


def expected(path: str, what: str, value: object, example: str | None = None) -> ConfigError:
    """A value of the wrong kind: what the key takes, and what it got."""
    return ConfigError(f"{path}: expected {what}{_eg(example)}; got {describe_value(value)}")


def below(path: str, value: object, low: float, what: str, example: str | None = None) -> ConfigError:
    """A number under the key's least value."""
    return ConfigError(f"{path}: {value} is below {_num(low)}; give {what}{_eg(example)}")


def above(path: str, value: object, high: float, what: str, example: str | None = None) -> ConfigError:
    """A number over the key's largest value."""
    return ConfigError(f"{path}: {value} is above {_num(high)}; give {what}{_eg(example)}")


def out_of_range(
    path: str, value: object, bounds: str, example: str | None = None, *, named: bool = False
) -> ConfigError:
    """A real number outside its range (``bounds`` as :func:`bounds_text` writes it);
    ``named``: the path ends in the field's name, written ``field=value`` (a strength)."""
    subject = f"{path}={value!r}" if named else f"{path}: {value!r}"
    return ConfigError(f"{subject} is out of range; use a value {bounds}{_eg(example)}")


def not_one_of(path: str, value: object, choices: Sequence[object]) -> ConfigError:
    """A value that is not one of the key's choices."""
    return ConfigError(f"{path}: {describe_value(value)} is not one of {', '.join(map(str, choices))}")


def unreadable(path: str, value: object, what: str) -> ConfigError:
    """Text (a CLI's ``name:field=value``) that does not read as what the field takes."""
    return ConfigError(f"{path}: {value!r} is not {what}")


def bounds_text(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """``in (0, 1024]``, ``>= 0``, ...: a range as a message gives it."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return "of any size"


def whole_number(unit: str = "", minimum: int | None = None, maximum: int | None = None) -> str:
    """``a whole number of threads from 1 to 1024``: how a message names a bounded integer."""
    noun = f"a whole number of {unit}" if unit else "a whole number"
    if minimum is not None and maximum is not None:
        return f"{noun} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{noun} >= {minimum}"
    return noun


# --------------------------------------------------------------------------------------
# What a field takes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """What a field takes beyond its annotation, for its messages and its bounds.

    ``what`` names the value in a message ("a name or path"; whole numbers get theirs from
    ``unit`` and the bounds); ``example`` is shown after it; ``minimum`` / ``maximum`` bound a
    number; ``choices`` list the values a name may take; ``blank`` lets a string be empty (a
    later check says what is missing); ``shape`` checks a value the annotation cannot
    describe (a list of steps, a corpus), raising a ConfigError through these messages.
    """

    what: str = ""
    example: str | None = None
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    blank: bool = False
    shape: Callable[[object, str], None] | None = None

    def phrase(self, tp: object) -> str:
        if self.what:
            return self.what
        base = _non_none(tp)
        if base is int:
            lo = None if self.minimum is None else int(self.minimum)
            hi = None if self.maximum is None else int(self.maximum)
            return whole_number(self.unit, lo, hi)
        if base is float:
            return f"a number {bounds_text(self.minimum, self.maximum)}"  # "a number in [0, 1]"
        if base is bool:
            return "true or false"
        return "a name"


def setting(default: object = dataclasses.MISSING, *, help: str = "", **check: Any) -> Any:
    """A settings field: ``default`` (a list or mapping default is copied per instance), its
    ``help`` and a :class:`Check` made of ``check`` (what, example, unit, minimum, ...).
    Typed ``Any`` like :func:`dataclasses.field`, so it stands for a value of any field type."""
    metadata = {"check": Check(**check), "help": help}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=functools.partial(type(default), default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _non_none(tp: object) -> object:
    """``int`` for ``int | None``; the annotation itself otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _allows_none(tp: object) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def check_value(value: object, tp: object, check: Check, path: str) -> None:
    """``value`` (as a file or a Python call gives it, not text) checked against annotation
    ``tp`` and ``check``: one ConfigError naming ``path``, or None."""
    if value is None and _allows_none(tp):
        return
    if check.shape is not None:
        check.shape(value, path)
        return
    what, base = check.phrase(tp), _non_none(tp)
    if check.choices:
        if not isinstance(value, str) or value not in check.choices:
            raise not_one_of(path, value, check.choices)
        return
    if base is bool:
        if not isinstance(value, bool):
            raise expected(path, what, value, check.example)
        return
    if base is int or base is float:
        real = isinstance(value, int | float) and not isinstance(value, bool)
        if not real or (base is int and not isinstance(value, int)) or value != value:
            raise expected(path, what, value, check.example)
        assert isinstance(value, int | float)
        if base is float and (
            (check.minimum is not None and value < check.minimum)
            or (check.maximum is not None and value > check.maximum)
        ):
            raise out_of_range(path, value, bounds_text(check.minimum, check.maximum), check.example)
        if check.minimum is not None and value < check.minimum:
            raise below(path, value, check.minimum, what, check.example)
        if check.maximum is not None and value > check.maximum:
            raise above(path, value, check.maximum, what, check.example)
        return
    if base is str:
        if not isinstance(value, str) or not (check.blank or value.strip()):
            raise expected(path, what, value, check.example)
        if "\x00" in value:  # no file, folder or model name holds one; os calls raise deep inside
            raise ConfigError(f"{path}: {value!r} holds a NUL character; write the name without it")
        return
    raise TypeError(f"{path}: no check for annotation {tp!r}; give the field a Check(shape=...)")


def _check_of(f: dataclasses.Field[object]) -> Check:
    check = f.metadata.get("check")
    return check if isinstance(check, Check) else Check()


def check_fields(settings: DataclassInstance, where: str) -> None:
    """Every field of ``settings`` (a settings dataclass) checked by its annotation and its
    :class:`Check`: the first mistake as one ConfigError ``WHERE: KEY: ...``."""
    hints = _field_types(type(settings))
    for f in dataclasses.fields(settings):
        check_value(getattr(settings, f.name), hints[f.name], _check_of(f), f"{where}: {f.name}")


def check_field(settings_cls: type, name: str, value: object, path: str) -> object:
    """``value`` checked as field ``name`` of ``settings_cls`` would be (a study's key, a flag
    of the Python API), with ``path`` naming it; the value, when it passes."""
    f = config_fields(settings_cls)[name]
    check_value(value, _field_types(settings_cls)[name], _check_of(f), path)
    return value


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
        path = f"{where}: {self.field}"
        bounds = f"in {self.describe()}"
        try:
            v = to_float(value)
        except (TypeError, ValueError):
            raise expected(path, f"a number {bounds}", value) from None
        lo_ok = v >= self.low if self.low_inclusive else v > self.low
        hi_ok = v <= self.high if self.high_inclusive else v < self.high
        if math.isnan(v) or not (lo_ok and hi_ok):
            raise out_of_range(path, value, bounds, named=True)
        if self.integer and v != int(v):
            raise expected(path, whole_number("", int(self.low), int(self.high)), value)

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
        raise not_one_of(where, value, choices)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
            return True
        if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
            return False
        raise unreadable(where, value, "a boolean (use true or false)")
    if tp is int:
        if isinstance(value, bool):
            raise unreadable(where, value, "an integer")
        try:
            f = to_float(value)
        except (TypeError, ValueError):
            raise unreadable(where, value, "an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise unreadable(where, value, "an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise unreadable(where, value, "a number")
        try:
            f = to_float(value)
        except (TypeError, ValueError):
            raise unreadable(where, value, "a number") from None
        if math.isnan(f):
            raise unreadable(where, value, "a number")
        return f
    if tp is str:
        if isinstance(value, str | int | float):
            return str(value)
        raise unreadable(where, value, "a string")
    if origin in (list, tuple) or tp in (list, tuple):
        items = value
        if isinstance(value, str):
            items = [v for v in value.split("+") if v]
        if not isinstance(items, list | tuple):
            raise unreadable(where, value, "a list")
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
            raise not_one_of(loc, value, list(meta["choices"]))
        if "range" in meta and value is not None:
            lo, hi = meta["range"]
            if not (lo <= value <= hi):
                raise out_of_range(loc, value, bounds_text(lo, hi))
        if "check" in meta:
            check_value(value, hints.get(key, object), meta["check"], loc)
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
