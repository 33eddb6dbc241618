"""Run, sweep and study settings, declared once and grouped by concern.

Each group is a dataclass whose fields say what they take (their annotation and a
:class:`~lmcompose.api.config.Check`, through :func:`~lmcompose.api.config.setting`):

- :class:`ModelSettings` (model): which model, on which device, in which dtype, how many threads;
- :class:`DataSettings` (data): the edit requests, the seed, the data folder, the corpora;
- :class:`StepsSettings` (grid): the steps, the constraint policy, the protocol;
- :class:`EvaluationSettings` (evaluation): which metrics, with which options;
- :class:`OutputSettings` (output): the run folder, a saved model;

and, for a sweep, :class:`GridSettings` (what it varies, in which orders, how many
replicates), :class:`TopKSettings` (evaluation), :class:`CalibrationSettings` (data) and
:class:`CellOutputSettings` (output). :class:`~lmcompose.compose.RunSettings` and
:class:`~lmcompose.sweep.SweepSettings` are made of these groups (their fields stay flat:
``settings.seed``, as config.yaml holds them); a study checks each of its keys against the
same fields (:func:`~lmcompose.api.config.check_field`). The checks and their messages are the
ones every step config gets (:mod:`lmcompose.api.config`); nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from lmcompose._limits import MAX_SEED, MAX_THREADS, MAX_TOPK
from lmcompose.api.config import expected, setting
from lmcompose.engine.executor import SNAPSHOT_MODES
from lmcompose.engine.policy import POLICIES
from lmcompose.errors import ConfigError
from lmcompose.models.loading import DTYPES
from lmcompose.steps import StepSpec

__all__ = [
    "CONCERNS",
    "CalibrationSettings",
    "CellOutputSettings",
    "DataSettings",
    "GROUPS",
    "EvaluationSettings",
    "GridSettings",
    "ModelSettings",
    "SettingsGroup",
    "Orders",
    "OutputSettings",
    "STEPS_EXPECTED",
    "StepSetting",
    "StepsSettings",
    "TopKSettings",
    "concern_of",
    "concerns",
]

#: the concerns settings are grouped by, in the order help and docs list them
CONCERNS = ("model", "data", "grid", "evaluation", "output")
#: a step as settings hold it: ``name:field=value`` text, a mapping, or a parsed StepSpec
StepSetting: TypeAlias = str | Mapping[str, object] | StepSpec
#: a sweep's orders as settings hold them: ``all``, ``"a,b;b,a"`` or a list of orders
Orders: TypeAlias = str | list[list[str]] | list[str] | None
STEPS_EXPECTED = "a list of steps, e.g. [magnitude:sparsity=0.5, rtn:bits=4] or [{magnitude: {sparsity: 0.5}}]"
ORDERS_EXPECTED = "all, 'a,b;b,a' or a list of orders such as [[a, b], [b, a]]"
NAME_OR_PATH = "a name or path"


# --------------------------------------------------------------------------------------
# Shapes an annotation cannot say (each raises through the one set of messages)
# --------------------------------------------------------------------------------------


def _steps_shape(value: object, path: str) -> None:
    if isinstance(value, str):
        return  # "magnitude rtn:bits=4": split where it is read
    # a file's or the CLI's steps: text or mappings (a StepSpec enters through the Python API's step_list)
    if not isinstance(value, list) or not all(isinstance(s, str | Mapping) for s in value):
        raise expected(path, STEPS_EXPECTED, value)


def _metrics_shape(value: object, path: str) -> None:
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise expected(path, "a list of metric names, e.g. [edit, perplexity]", value)
    if not [x for x in names if x.strip()]:
        raise ConfigError(f"{path}: empty; name at least one metric, or leave it out for every metric")


def _metric_options_shape(value: object, path: str) -> None:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in value.items()
    ):
        raise expected(path, "a mapping of metric name to its fields, e.g. {perplexity: {max_tokens: 4096}}", value)


def _corpus_shape(value: object, path: str) -> None:
    from lmcompose.corpora import parse_corpus

    parse_corpus(value, path)


def _orders_shape(value: object, path: str) -> None:
    if isinstance(value, str):
        return
    if not (
        isinstance(value, list)
        and all(isinstance(o, str) or (isinstance(o, list) and all(isinstance(x, str) for x in o)) for o in value)
    ):
        raise expected(path, ORDERS_EXPECTED, value)


# --------------------------------------------------------------------------------------
# The groups
# --------------------------------------------------------------------------------------


class SettingsGroup:
    """A group of settings of one concern (a dataclass subclassing this names its ``concern``)."""

    concern: ClassVar[str]


@dataclass
class ModelSettings(SettingsGroup):
    """The model, and where and how it runs."""

    concern: ClassVar[str] = "model"

    model: str = setting(
        "", blank=True, what="a model name (a named model, a folder, a .gguf file or a hub id)", example="smollm2-135m"
    )
    device: str = setting("cpu", what="a device name: cpu, cuda or cuda:N")
    #: None: lmcompose.models.loading.default_dtype(device)
    dtype: str | None = setting(None, choices=DTYPES)
    device_map: str | None = setting(None, what=NAME_OR_PATH)
    max_memory: str | None = setting(None, what=NAME_OR_PATH)
    revision: str | None = setting(None, what=NAME_OR_PATH)
    #: torch threads (None: torch's current pool; 1 under ``deterministic``); recorded under
    #: config.yaml's ``numerics:`` and checked on resume, not part of the run id
    threads: int | None = setting(None, unit="threads", minimum=1, maximum=MAX_THREADS)
    #: torch.use_deterministic_algorithms(True) for the run; recorded and checked like ``threads``
    deterministic: bool = setting(False)


@dataclass
class DataSettings(SettingsGroup):
    """The edit requests, the seed that samples them, and where data comes from."""

    concern: ClassVar[str] = "data"

    dataset: str | None = setting(None, what=NAME_OR_PATH)
    dataset_source: str | None = setting(None, what=NAME_OR_PATH)
    edits: int | None = setting(None, minimum=1, example="50")
    skip_invalid: bool = setting(False)
    seed: int = setting(0, minimum=0, maximum=MAX_SEED, example="0")
    data_dir: str | None = setting(None, what=NAME_OR_PATH)
    ppl_corpus: str | None = setting(None, shape=_corpus_shape)
    calibration_corpus: str | None = setting(None, shape=_corpus_shape)


@dataclass
class StepsSettings(SettingsGroup):
    """The steps, and the rules that compose them."""

    concern: ClassVar[str] = "grid"

    steps: list[StepSetting] = setting([], shape=_steps_shape)
    policy: str = setting("project", choices=POLICIES)
    protocol: str = setting("default", what="a protocol name", example="paper")


@dataclass
class EvaluationSettings(SettingsGroup):
    """What is measured after every step."""

    concern: ClassVar[str] = "evaluation"

    metrics: list[str] | None = setting(None, shape=_metrics_shape)
    metric_options: dict[str, dict[str, object]] = setting({}, shape=_metric_options_shape)


@dataclass
class OutputSettings(SettingsGroup):
    """Where the results go."""

    concern: ClassVar[str] = "output"

    out: str | None = setting(None, what=NAME_OR_PATH)
    save_model: str | None = setting(None, what=NAME_OR_PATH)
    overwrite: bool = setting(False)


@dataclass
class GridSettings(SettingsGroup):
    """A sweep's grid: the field it varies, the orders, the replicates."""

    concern: ClassVar[str] = "grid"

    vary: str | None = setting(None, what="STEP.FIELD=v1,v2,...", example="wanda.sparsity=0.25,0.5")
    orders: Orders = setting("all", shape=_orders_shape)
    replicates: int = setting(1, minimum=1, example="2")


@dataclass
class TopKSettings(SettingsGroup):
    """The top-k next tokens a sweep records per row."""

    concern: ClassVar[str] = "evaluation"

    topk: int = setting(5, minimum=0, maximum=MAX_TOPK, example="5")


@dataclass
class CalibrationSettings(SettingsGroup):
    """A sweep's calibration budget (None: the context's default)."""

    concern: ClassVar[str] = "data"

    calibration_samples: int | None = setting(None, minimum=1, example="128")
    calibration_seqlen: int | None = setting(None, minimum=8, example="512")


@dataclass
class CellOutputSettings(SettingsGroup):
    """Which of a sweep's models are kept, and where its intermediate states live."""

    concern: ClassVar[str] = "output"

    snapshots: str = setting("memory", choices=SNAPSHOT_MODES)
    save_cells: str | None = setting(None, what="all or globs over cell ids such as 'memit>*'")


#: every group, in :data:`CONCERNS` order
GROUPS: tuple[type[SettingsGroup], ...] = (
    ModelSettings,
    DataSettings,
    CalibrationSettings,
    StepsSettings,
    GridSettings,
    EvaluationSettings,
    TopKSettings,
    OutputSettings,
    CellOutputSettings,
)


def concern_of(name: str) -> str | None:
    """The concern of setting ``name`` (``seed`` -> ``data``); None for a name no group declares."""
    for group in GROUPS:
        if any(f.name == name for f in dataclasses.fields(group)):  # type: ignore[arg-type]  # groups are dataclasses
            return group.concern
    return None


def concerns(settings_cls: type) -> dict[str, list[str]]:
    """The fields of ``settings_cls`` (a settings dataclass) by concern, in :data:`CONCERNS`
    order: which group declares each."""
    out: dict[str, list[str]] = {c: [] for c in CONCERNS}
    for f in dataclasses.fields(settings_cls):
        owner = next(k for k in settings_cls.__mro__ if f.name in getattr(k, "__annotations__", {}))
        out[getattr(owner, "concern", "grid")].append(f.name)
    return {c: names for c, names in out.items() if names}
