"""The plugin base classes: Intervention, Metric, EditDataset and TextCorpus, and the
StepReport an intervention returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from lmcompose.api.config import StrengthKnob, build_config, config_to_dict
from lmcompose.api.context import Context
from lmcompose.api.records import EditRecord

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from typing_extensions import Self

    from lmcompose.models.handle import LM

__all__ = ["PER_EDIT_KEY", "EditDataset", "Intervention", "Metric", "NoConfig", "StepReport", "TextCorpus"]


#: A method's config class: a dataclass (``Intervention.Config``, ``Metric.Config``).
ConfigT = TypeVar("ConfigT", bound="DataclassInstance")


@dataclass
class StepReport:
    """What one ``apply`` did: time, memory, and method-specific details."""

    name: str
    config: dict[str, object]
    elapsed_s: float = 0.0
    peak_memory_bytes: int | None = None
    details: dict[str, object] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


@dataclass
class NoConfig:
    """An empty config."""


class Intervention(Generic[ConfigT]):
    """An operator Θ→Θ that changes a model in place.

    Subclasses set ``name``, ``kind`` (``edit``, ``prune``, ``quantize``, ``unlearn``, ...; an
    ``edit`` or ``unlearn`` step trains weights, so the ``recompress`` policy re-runs a
    compressor that came before it), ``Config`` (a
    dataclass whose fields all have defaults and ``metadata={"help": ...}``) and ``strength``
    (a :class:`StrengthKnob`, or None), and implement ``apply``. Compressors also implement
    ``project`` to re-impose their constraint after later steps without recalibrating.
    A step that needs the unmodified base model (e.g. statistics computed on it, whatever
    came before) sets ``needs_base_model``; the engine then keeps a copy in
    ``ctx.base_model``. A subclass names its config class for the type checker too:
    ``class GPTQ(Intervention[GPTQConfig])`` types ``self.config``.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    strength: ClassVar[StrengthKnob | None] = None
    needs_base_model: bool = False
    config: ConfigT

    def __init__(self, config: ConfigT | None = None):
        self.config = config if config is not None else self.Config()
        where = f"step {self.name!r}"
        if self.strength is not None:
            self.strength.check(self.strength_value, where)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise ConfigError. Called on construction."""

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, object]) -> Self:
        return cls(build_config(cls.Config, overrides, f"step {cls.name!r}"))

    @property
    def strength_value(self) -> object:
        return getattr(self.config, self.strength.field) if self.strength else None

    def apply(self, lm: LM, ctx: Context) -> StepReport:  # pragma: no cover - abstract
        raise NotImplementedError

    def project(self, lm: LM) -> None:
        """Re-impose this step's constraint on ``lm``. Default: no constraint."""

    @classmethod
    def has_project(cls) -> bool:
        return cls.project is not Intervention.project

    def reruns_on_recompress(self) -> bool:
        """Whether policy ``recompress`` runs this step again (fresh calibration) after a later
        edit: every compressor with a ``project()`` unless it says otherwise (AWQ's
        ``recompress=false``, the paper's code)."""
        return self.has_project()

    def report(self, **details: object) -> StepReport:
        return StepReport(self.name, config_to_dict(self.config), details=details)


PER_EDIT_KEY = "per_edit"


class Metric(Generic[ConfigT]):
    """A measurement taken on the base model and after every step.

    ``keys`` lists the result keys ``compute`` returns (all floats; None where not
    applicable); ``higher_is_better`` maps each key to its direction.

    A metric that scores each edit request may also return, under ``PER_EDIT_KEY``
    (``"per_edit"``), its per-record scores: ``{key: [one value per record of ctx.edits,
    None where a record has none]}``, each list's mean over its non-None values being the
    key's value. The engine keeps them out of the row and stores them in the run folder's
    ``per_edit.jsonl``, from which reports compute bootstrap intervals (docs/studies.md).
    """

    name: ClassVar[str] = ""
    keys: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[Mapping[str, bool | None]] = {}
    requires_edits: ClassVar[bool] = False
    Config: ClassVar[type] = NoConfig
    config: ConfigT

    def __init__(self, config: ConfigT | None = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, object]) -> Self:
        return cls(build_config(cls.Config, overrides, f"metric {cls.name!r}"))

    def compute(self, lm: LM, ctx: Context) -> dict[str, float | None]:  # pragma: no cover
        raise NotImplementedError

    def reference(self, lm: LM, ctx: Context) -> None:
        """Record on the base model what later evaluations compare against. The engine calls
        it on the unmodified model before the first step: an edit metric (``requires_edits``)
        with ``ctx.edits`` set, for every edit batch it will evaluate, records in
        ``ctx.references`` (:class:`References`: kept in the run folder, so it is computed once
        per edit batch for a whole run or study; a reference already held,
        ``ctx.references.get``, is not computed again); any other metric once, with
        ``ctx.edits`` empty, in ``ctx.state``. So a process that resumes a run, or runs one
        part of a study, compares against the same references as one that evaluated the base
        model itself. Default: nothing to record."""


class EditDataset:
    """An edit dataset: ``load(source, limit, seed, replicate, skip_invalid) -> list[EditRecord]``.

    ``limit`` records of a seeded permutation (``seed=None``: file order); replicate k of
    size ``limit`` never overlaps replicate j; ``skip_invalid`` skips malformed records
    instead of raising. Messages for the user (sample data used, records skipped) go to
    ``self.notes``. ``data_dir`` is the data folder to look in: the engine sets it from the
    run's ``Context.data_dir``; None means LMCOMPOSE_DATA_DIR.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "edits"
    notes: list[str]
    data_dir: Path | None = None

    def load(
        self,
        source: str | Path | None = None,
        limit: int | None = None,
        seed: int | None = 0,
        replicate: int = 0,
        skip_invalid: bool = False,
    ) -> list[EditRecord]:  # pragma: no cover
        raise NotImplementedError


class TextCorpus:
    """A text corpus for perplexity and calibration: ``load_text(split, source) -> str``
    (``data_dir`` as for :class:`EditDataset`)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "text"
    splits: ClassVar[tuple[str, ...]] = ()
    data_dir: Path | None = None

    def load_text(self, split: str, source: str | Path | None = None) -> str:  # pragma: no cover
        raise NotImplementedError
