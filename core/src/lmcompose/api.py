"""Core concepts: EditRecord, StepReport, Context, and the Intervention / Metric / dataset
base classes, plus config parsing shared by all of them.

Nothing here imports torch at module import time: listing plugins and validating configs
must stay cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lmcompose.errors import ConfigError, DataError, UnknownNameError, describe_value

if TYPE_CHECKING:
    from lmcompose.models.handle import LM

__all__ = [
    "Context",
    "EditDataset",
    "EditRecord",
    "Intervention",
    "LocalityPrompt",
    "Metric",
    "MultiHop",
    "NoConfig",
    "PER_EDIT_KEY",
    "Progress",
    "References",
    "StepReport",
    "StrengthKnob",
    "TextCorpus",
    "build_config",
    "config_fields",
    "config_to_dict",
    "field_help",
]

# --------------------------------------------------------------------------------------
# Edit records
# --------------------------------------------------------------------------------------


@dataclass
class LocalityPrompt:
    """A prompt whose answer an edit should leave alone."""

    prompt: str
    answer: str


@dataclass
class MultiHop:
    """MQuAKE-style multi-hop questions; any question answered correctly counts."""

    questions: list[str]
    answer: str
    new_answer: str
    answer_aliases: list[str] = field(default_factory=list)
    new_answer_aliases: list[str] = field(default_factory=list)


def _check_multi_hop(mh: MultiHop, where: str) -> None:
    """What multi-hop scoring reads: at least one question, the answers before and after
    editing, and their aliases, all non-empty strings; one DataError naming the field."""
    if not mh.questions:
        raise DataError(f"{where}: multi_hop.questions is empty; give the multi-hop questions (any one may be right)")
    for k, q in enumerate(mh.questions):
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}: multi_hop.questions[{k}] must be a non-empty string, got {describe_value(q)}")
    for key in ("answer", "new_answer"):
        value = getattr(mh, key)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: multi_hop.{key} must be a non-empty string, got {describe_value(value)}")
    for key in ("answer_aliases", "new_answer_aliases"):
        value = getattr(mh, key)
        if not isinstance(value, list | tuple):
            raise DataError(f"{where}: multi_hop.{key} must be a list of strings, got {describe_value(value)}")
        for k, a in enumerate(value):
            if not isinstance(a, str):
                raise DataError(f"{where}: multi_hop.{key}[{k}] must be a string, got {describe_value(a)}")


@dataclass
class EditRecord:
    """One edit request in the normalized schema shared by all edit datasets.

    ``prompt`` has the subject filled in; ``template`` gives it back with ``{}`` in the
    subject's place (the form MEMIT/ROME need). ``raw`` keeps the dataset's own record.
    """

    case_id: str
    subject: str
    prompt: str
    target_new: str
    target_true: str | None = None
    rephrases: list[str] = field(default_factory=list)
    locality: list[LocalityPrompt] = field(default_factory=list)
    multi_hop: MultiHop | None = None
    source: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        where = f"edit record {self.case_id!r}"
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise DataError(f"{where}: empty prompt")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise DataError(f"{where}: empty target_new")
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise DataError(f"{where}: empty subject")
        if self.subject not in self.prompt:
            raise DataError(f"{where}: subject {self.subject!r} does not occur in prompt {self.prompt!r}")
        if self.target_true is not None and not isinstance(self.target_true, str):
            raise DataError(f"{where}: target_true must be a string or null, got {type(self.target_true).__name__}")
        for key in ("rephrases", "locality"):
            value = getattr(self, key)
            if not isinstance(value, list | tuple):
                raise DataError(
                    f'{where}: {key} must be a list, got {type(value).__name__} (a single prompt? write ["..."])'
                )
        if not all(isinstance(r, str) and r.strip() for r in self.rephrases):
            raise DataError(f"{where}: every rephrase must be a non-empty string")
        if not all(isinstance(lp, LocalityPrompt | Mapping) for lp in self.locality):
            raise DataError(f"{where}: every locality item must be {{prompt, answer}}")
        try:
            self.locality = [lp if isinstance(lp, LocalityPrompt) else LocalityPrompt(**lp) for lp in self.locality]
            if isinstance(self.multi_hop, Mapping):
                self.multi_hop = MultiHop(**self.multi_hop)
        except TypeError as exc:
            raise DataError(
                f"{where}: {exc} (locality items are {{prompt, answer}}; multi_hop is "
                "{questions, answer, new_answer})"
            ) from None
        for lp in self.locality:
            if not isinstance(lp.prompt, str) or not isinstance(lp.answer, str):
                raise DataError(f"{where}: a locality item's prompt and answer must be strings")
        if self.multi_hop is not None and (
            not isinstance(self.multi_hop, MultiHop)
            or isinstance(self.multi_hop.questions, str)
            or not isinstance(self.multi_hop.questions, list)
        ):
            raise DataError(f"{where}: multi_hop must be {{questions: [...], answer, new_answer}}")
        if self.multi_hop is not None:
            _check_multi_hop(self.multi_hop, where)

    @property
    def template(self) -> str:
        """The prompt with the (first occurrence of the) subject replaced by ``{}``."""
        i = self.prompt.index(self.subject)
        escaped = [
            s.replace("{", "{{").replace("}", "}}") for s in (self.prompt[:i], self.prompt[i + len(self.subject) :])
        ]
        return escaped[0] + "{}" + escaped[1]

    def to_dict(self, with_raw: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_raw:
            d.pop("raw")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EditRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DataError(f"edit record has unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        missing = {"case_id", "subject", "prompt", "target_new"} - set(d)
        if missing:
            raise DataError(f"edit record {d.get('case_id', '?')!r} is missing {sorted(missing)}")
        d = dict(d)
        d["case_id"] = str(d["case_id"])
        return cls(**d)


# --------------------------------------------------------------------------------------
# Strength knobs and config parsing
# --------------------------------------------------------------------------------------


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

    def check(self, value: Any, where: str) -> None:
        if value is None:
            return
        try:
            v = float(value)
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

    def normalize(self, value: float) -> float:
        span = self.high - self.low
        t = (float(value) - self.low) / span if span else 0.0
        t = min(1.0, max(0.0, t))
        return t if self.increasing else 1.0 - t


def config_fields(config_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_cls) if f.init}


def field_help(f: dataclasses.Field) -> str:
    return str(f.metadata.get("help", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
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
    if tp is Any:
        return value
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
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not a number")
        try:
            f = float(value)
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
        inner = args[0] if args else Any
        out = [_coerce(v, inner, where) for v in items]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    return value


@functools.lru_cache(maxsize=1024)
def _field_types(config_cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(config_cls)``, once per class: it evaluates every annotation
    string again on each call (about 1 ms), and a large grid builds a config per cell."""
    return typing.get_type_hints(config_cls)


def build_config(config_cls: type, overrides: Mapping[str, Any], where: str) -> Any:
    """Make ``config_cls(**overrides)`` with values coerced from strings and checked.

    Unknown fields get "did you mean"; values are coerced by the field's annotation;
    ``metadata={"range": (lo, hi)}`` or ``{"choices": [...]}`` are enforced; errors raised by
    the dataclass's ``__post_init__`` become :class:`ConfigError` naming ``where``.
    """
    fields = config_fields(config_cls)
    hints = _field_types(config_cls)
    kwargs: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            raise UnknownNameError(f"field of {where}", key, fields, "")
        loc = f"{where}: field {key!r}"
        value = _coerce(raw, hints.get(key, Any), loc)
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


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config's identity (run ids, state keys, reports): every field, except a field added
    to an existing method (``metadata={"since": version}``) while it holds its default, so
    the results recorded before the field existed keep their identity (and their resume)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if "since" in f.metadata and f.default is not dataclasses.MISSING and v == f.default:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


# --------------------------------------------------------------------------------------
# Step reports and the run context
# --------------------------------------------------------------------------------------


@dataclass
class StepReport:
    """What one ``apply`` did: time, memory, and method-specific details."""

    name: str
    config: dict[str, Any]
    elapsed_s: float = 0.0
    peak_memory_bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


class Progress:
    """A progress reporter; the CLI passes one that draws rich progress bars."""

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def note(self, message: str) -> None:
        pass


class References:
    """Measurements of the unmodified base model that later evaluations compare against (the
    locality prompts' answer-position argmaxes, for locality preservation), each kept under
    what it is computed from: its ``kind``, a digest of its ``content`` (e.g. the prompts
    and answers) and the base model's identity (``model``: the run's model fingerprint).

    This one keeps them in memory, for one process. A run folder's
    (:meth:`lmcompose.engine.run_folder.RunFolder.references`) also stores each in the
    folder, so a resumed run and every Ray task of a study read it instead of computing it
    again. Values must be JSON data (lists, numbers, strings)."""

    def __init__(self, model: str | None = None, records: Mapping[str, Mapping[str, Any]] | None = None):
        self.model = model
        self._records: dict[str, dict[str, Any]] = {}
        self.computed = 0  # references put here by this process (passes of the base model it made)
        for record in (records or {}).values():
            self.adopt(record)

    def key(self, kind: str, content: str) -> str:
        """The name a reference is kept under: a digest of its kind, content and base model."""
        text = json.dumps([kind, content, self.model])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def record(self, kind: str, content: str, value: Any) -> dict[str, Any]:
        return {"key": self.key(kind, content), "kind": kind, "content": content, "model": self.model, "value": value}

    def get(self, kind: str, content: str) -> Any | None:
        """The reference of ``kind`` computed from ``content`` on this base model, or None."""
        got = self._records.get(self.key(kind, content)) or self._read(self.key(kind, content))
        if got is None or (got.get("kind"), got.get("content"), got.get("model")) != (kind, content, self.model):
            return None
        self._records[got["key"]] = got
        return got["value"]

    def put(self, kind: str, content: str, value: Any) -> None:
        """Keep a reference just computed on the base model."""
        record = self.record(kind, content, value)
        self._records[record["key"]] = record
        self.computed += 1
        self._write(record)

    def adopt(self, record: Mapping[str, Any]) -> None:
        """Hold a reference computed elsewhere (another process, a stored file), as it is."""
        if isinstance(record, Mapping) and isinstance(record.get("key"), str) and "value" in record:
            self._records[record["key"]] = dict(record)

    def records(self) -> dict[str, dict[str, Any]]:
        """Every reference held, by key (to hand to another process)."""
        return dict(self._records)

    def _read(self, key: str) -> dict[str, Any] | None:
        return None

    def _write(self, record: dict[str, Any]) -> None:
        pass


@dataclass
class Context:
    """Everything a step or a metric may use. Steps never load data or models themselves.

    ``edits`` are this run's edit requests; ``unedited`` the control records of the batch
    being evaluated (records of the same dataset that no edit batch holds; their true
    targets' NLL is ``unedited_nll``); ``calibration_batches()`` gives token windows for
    calibration (lazy, cached); ``references`` keeps the base model's reference
    measurements (:class:`References`); ``state`` is a scratch dict for anything else a
    step or metric caches; ``notes`` collects messages for the user.
    """

    edits: list[EditRecord] = field(default_factory=list)
    unedited: list[EditRecord] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    data_dir: Path | None = None
    cache_dir: Path | None = None
    calibration_samples: int = 128
    calibration_seqlen: int = 512
    #: The seed of the calibration windows; None = ``seed``. The engine sets it while a step
    #: runs under a ``calibration_seed`` variant (a study's ``reseed`` or ``noise_floor``).
    calibration_seed: int | None = None
    #: Corpus specs (:mod:`lmcompose.corpora`): None = wikitext-2, or the bundled sample with a note.
    ppl_corpus: str | None = None
    calibration_corpus: str | None = None
    metric_options: dict[str, Any] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    references: References = field(default_factory=References)
    state: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: The unmodified base model (an LM), kept by the engine when a step of the plan sets
    #: ``Intervention.needs_base_model``; None otherwise.
    base_model: Any = None

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            self.progress.note(message)

    def calibration_batches(self, lm: LM, n_samples: int | None = None, seqlen: int | None = None) -> Any:
        """``n_samples`` random windows of ``seqlen`` tokens (a LongTensor, n x seqlen) drawn,
        seeded, from the calibration text (wikitext-2 train prefix + validation when the data
        folder has them, else the bundled sample text)."""
        from lmcompose.data import calibration_windows

        n = n_samples or self.calibration_samples
        s = seqlen or self.calibration_seqlen
        if s > lm.max_positions:
            self.note(
                f"calibration windows of {s} tokens are longer than the model's {lm.max_positions} positions: "
                f"cut to {lm.max_positions}"
            )
            s = lm.max_positions
        seed = self.seed if self.calibration_seed is None else self.calibration_seed
        key = ("calibration", id(lm.tokenizer), n, s, seed)
        if key not in self.state:
            self.state[key] = calibration_windows(lm.tokenizer, n, s, seed, self)
        return self.state[key]

    def stats_dir(self) -> Path:
        from lmcompose.paths import cache_dir

        d = (self.cache_dir or cache_dir()) / "stats"
        d.mkdir(parents=True, exist_ok=True)
        return d


# --------------------------------------------------------------------------------------
# Plugin base classes
# --------------------------------------------------------------------------------------


@dataclass
class NoConfig:
    """An empty config."""


class Intervention:
    """An operator Θ→Θ that changes a model in place.

    Subclasses set ``name``, ``kind`` (``edit``, ``prune``, ``quantize``, ``unlearn``, ...; an
    ``edit`` or ``unlearn`` step trains weights, so the ``recompress`` policy re-runs a
    compressor that came before it), ``Config`` (a
    dataclass whose fields all have defaults and ``metadata={"help": ...}``) and ``strength``
    (a :class:`StrengthKnob`, or None), and implement ``apply``. Compressors also implement
    ``project`` to re-impose their constraint after later steps without recalibrating.
    A step that needs the unmodified base model (e.g. statistics computed on it, whatever
    came before) sets ``needs_base_model``; the engine then keeps a copy in
    ``ctx.base_model``.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    strength: ClassVar[StrengthKnob | None] = None
    needs_base_model: bool = False

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()
        where = f"step {self.name!r}"
        if self.strength is not None:
            self.strength.check(self.strength_value, where)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise ConfigError. Called on construction."""

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> Intervention:
        return cls(build_config(cls.Config, overrides, f"step {cls.name!r}"))

    @property
    def strength_value(self) -> Any:
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

    def report(self, **details: Any) -> StepReport:
        return StepReport(self.name, config_to_dict(self.config), details=details)


PER_EDIT_KEY = "per_edit"


class Metric:
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

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> Metric:
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
