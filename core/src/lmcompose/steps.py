"""Steps as written (``name[:field=value,...]`` or a YAML mapping) and the objects they build.

Every command reads steps through :func:`parse_step` and builds them through
:func:`build_intervention` / :func:`build_metrics`, so a step means the same thing in a run,
a sweep and a study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from lmcompose.api import Intervention, Metric
from lmcompose.errors import ConfigError, UnknownNameError
from lmcompose.plugins import get_interventions, get_metrics

__all__ = ["StepLike", "StepSpec", "build_intervention", "build_metrics", "parse_step"]


@dataclass
class StepSpec:
    """One step of a sequence: an intervention name and field overrides."""

    name: str
    overrides: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.overrides:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.overrides.items())


#: A step as written: ``"name:field=value,..."``, a YAML mapping, or a parsed :class:`StepSpec`.
StepLike: TypeAlias = str | Mapping[str, object] | StepSpec


def _fmt(v: object) -> str:
    if isinstance(v, list | tuple):
        return "+".join(map(str, v))
    return str(v).lower() if isinstance(v, bool) else str(v)


def parse_step(step: StepLike) -> StepSpec:
    """``"name:field=value,field=value"`` (split on the first colon only, so ``structure=2:4``
    works) or a YAML mapping ``{name: ..., field: value}`` / ``{name: {field: value}}``."""
    if isinstance(step, StepSpec):
        return step
    if isinstance(step, Mapping):
        if "name" in step:
            return StepSpec(str(step["name"]), {k: v for k, v in step.items() if k != "name"})
        if len(step) == 1:
            ((name, fields),) = step.items()
            if fields is None or isinstance(fields, Mapping):
                return StepSpec(str(name), dict(fields or {}))
        raise ConfigError(
            f"step {dict(step)!r}: write a step as 'name:field=value,...', {{name: x, field: value}} or "
            f"{{x: {{field: value}}}}"
        )
    if not isinstance(step, str) or not step.strip():
        raise ConfigError(f"step {step!r}: expected 'name[:field=value,...]'")
    name, sep, rest = step.strip().partition(":")
    overrides: dict[str, object] = {}
    if sep and rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"step {step!r}: {part!r} is not field=value (fields are separated by commas)")
            if key.strip() in overrides:
                raise ConfigError(f"step {step!r}: field {key.strip()!r} is given twice")
            overrides[key.strip()] = value.strip()
    elif sep:
        raise ConfigError(f"step {step!r}: nothing after ':'; write {name}:field=value or just {name}")
    return StepSpec(name.strip(), overrides)


def build_intervention(spec: StepSpec) -> Intervention:
    cls = get_interventions().get(spec.name)
    return cls.from_overrides(spec.overrides)


def build_metrics(names: Sequence[str] | None, options: Mapping[str, Mapping[str, object]] | None) -> list[Metric]:
    registry = get_metrics()
    options = dict(options or {})
    for key in options:
        if key not in registry:
            raise UnknownNameError("metric (in metric options)", key, registry.names())
    # no names: every metric registered as a default one (an opt-in metric, such as lm-eval's
    # tasks, registers with default=False and runs only when named)
    chosen = list(names) if names else [n for n in registry.names() if registry.entry(n).extra.get("default", True)]
    return [registry.get(n).from_overrides(options.get(n, {})) for n in chosen]
