"""Study files: the paper's whole experiment as one YAML file, checked without loading a model.

A study composes every editor with every compressor (each with its own strength grid), in
every order, on every dataset, for every replicate; an entry may also compose several steps
at once with one varied field. Every mistake is one :class:`StudyError` whose message starts
with the key path (``compressors[2].vary: unknown field 'sparsty' (did you mean
'sparsity'?)``) and says the fix. See docs/studies.md for the format.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from lmcompose._limits import MAX_GPUS_PER_TASK, MAX_THREADS
from lmcompose.api import EditRecord, config_fields
from lmcompose.api.config import (
    Check,
    bounds_text,
    check_field,
    check_value,
    expected,
    not_one_of,
    out_of_range,
    setting,
)
from lmcompose.engine.plan import Cell, GridFactor, Group, Plan, PlanCounts, check_grid_size
from lmcompose.engine.policy import EDIT_KIND, UNLEARN_KIND
from lmcompose.errors import ConfigError, UsageError, describe_value
from lmcompose.settings import (
    CellOutputSettings,
    DataSettings,
    GridSettings,
    ModelSettings,
    StepsSettings,
    TopKSettings,
)
from lmcompose.steps import StepSpec, build_intervention, build_metrics, parse_step
from lmcompose.sweep import Vary, count_orders, make_vary, parse_orders, sweep_cells

if TYPE_CHECKING:
    from collections.abc import Callable

    from lmcompose.api import Context, EditDataset, TextCorpus
    from lmcompose.registry import Entry as RegistryEntry

TOP_KEYS = (
    "name",
    "model",
    "datasets",
    "editors",
    "unlearners",
    "compressors",
    "orders",
    "replicates",
    "edits",
    "seed",
    "metrics",
    "metric_options",
    "budgets",
    "policy",
    "snapshots",
    "topk",
    "topk_edit",
    "device",
    "dtype",
    "skip_invalid",
    "resources",
    "protocol",
    "reseed",
    "noise_floor",
    "deterministic",
)
ENTRY_KEYS = ("name", "step", "steps", "vary", "orders", "family")
DATASET_KEYS = ("name", "source")
EDITOR_KEYS = ("name", "step")
UNLEARNER_KEYS = ("name", "step", "vary")
BUDGET_KEYS = (
    "ppl_tokens",
    "ppl_seqlen",
    "calibration_samples",
    "calibration_seqlen",
    "ppl_corpus",
    "calibration_corpus",
)
RESOURCE_KEYS = ("cpus_per_task", "gpus_per_task")
NOISE_KEYS = ("cells", "seeds", "threads")
RESEED = ("none", "calibration")
ROLES = ("editor", "compressor", "unlearner")
STUDY_MARKERS = frozenset(
    {"compressors", "editors", "unlearners", "datasets"}
)  # keys that make a YAML file a study file
#: a study's name is part of its folder's name (runs/study-NAME-ID): one path component
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")

__all__ = ["Budgets", "DatasetSpec", "EditorSpec", "Entry", "Study", "StudyError", "UnlearnerSpec", "load_study"]


class StudyError(ConfigError):
    """A mistake in a study file; the message starts with the key path."""


def _fail(path: str, message: str) -> StudyError:
    return StudyError(f"{path}: {message}" if path else message)


def _unknown(path: str, what: str, name: object, choices: Sequence[str], owner: str = "") -> StudyError:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    valid = f"{owner}'s {what}s" if owner else "valid"
    return _fail(path, f"unknown {what} {name!r}{hint}; {valid}: {', '.join(choices)}")


@dataclass
class StudyKeys:
    """A study's keys that no run or sweep has, declared as settings fields are (checked by
    the same mechanism, with the same messages)."""

    topk_edit: int = setting(0, minimum=0, example="0")
    reseed: str = setting("none", choices=RESEED)


def _int(value: object) -> int:
    assert isinstance(value, int)  # a checked whole number
    return value


def _study(exc: ConfigError) -> StudyError:
    """A message of the one set (lmcompose.api.config) as a study's error."""
    return exc if isinstance(exc, StudyError) else StudyError(str(exc))


def _checked(value: object, tp: object, check: Check, path: str) -> None:
    """``value`` checked as a settings field of annotation ``tp`` and ``check`` would be."""
    try:
        check_value(value, tp, check, path)
    except ConfigError as exc:
        raise _study(exc) from None


def _setting(settings_cls: type, key: str, value: object, path: str | None = None) -> object:
    """``value`` checked as field ``key`` of ``settings_cls`` (lmcompose.settings: the run's
    and sweep's own field, so a study's key says what the same setting says anywhere)."""
    try:
        return check_field(settings_cls, key, value, path or key)
    except ConfigError as exc:
        raise _study(exc) from None


def _mapping(value: object, path: str, example: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise _study(expected(path, "a mapping", value, example))
    for k in value:
        if not isinstance(k, str):
            raise _fail(path, f"keys must be names; got {describe_value(k)}")
    return value


def _keys(value: Mapping[str, object], path: str, allowed: Sequence[str]) -> None:
    for k in value:
        if k not in allowed:
            raise _unknown(path, "key", k, allowed)


def _list(value: object, path: str, example: str, nonempty: bool = True) -> list[object]:
    if not isinstance(value, list):
        raise _study(expected(path, "a list", value, example))
    if nonempty and not value:
        raise _fail(path, f"the list is empty; give at least one item, e.g. {example}")
    return value


def _string(value: object, path: str, example: str) -> str:
    _checked(value, str, Check(what="a name", example=example), path)
    assert isinstance(value, str)
    return value.strip()


def _study_name(value: object, path: str) -> str:
    """A study's name: one safe path component (it names the default run folder), so a
    ``/``, a ``..``, a NUL or a control character never reaches a path."""
    if isinstance(value, str) and value.strip() and NAME_PATTERN.fullmatch(value.strip()) is None:
        raise _fail(
            path,
            f"{value.strip()!r} cannot name the study's folder; use letters, digits and . _ + - (starting with a "
            "letter or digit, at most 100 characters), e.g. paper-v2",
        )
    return _string(value, path, "paper")


def folder_slug(name: str) -> str:
    """``name`` made safe inside one path component (``study-NAME-ID``): each run of path
    separators and control characters becomes ``-``. A name from a file's stem or from the
    API is not held to :data:`NAME_PATTERN`, so a stem such as ``my study`` keeps its folder."""
    return re.sub(r"[/\\\x00-\x1f\x7f]+", "-", name)[:200] or "study"


def _integer(value: object, path: str, minimum: int, example: str, maximum: int | None = None) -> int:
    _checked(value, int, Check(minimum=minimum, maximum=maximum, example=example), path)
    assert isinstance(value, int)
    return value


def _number(
    value: object, path: str, minimum: float, example: str, strict: bool = False, maximum: float | None = None
) -> float:
    _checked(value, float, Check(what="a number", example=example), path)
    assert isinstance(value, int | float)
    if value < minimum or (strict and value == minimum) or (maximum is not None and value > maximum):
        raise _study(out_of_range(path, value, bounds_text(minimum, maximum, low_open=strict), example))
    return float(value)


def _noise_floor(value: object, seed: int) -> NoiseFloor:
    example = "{cells: [gptq], seeds: [1, 2]}"
    raw = _mapping(value, "noise_floor", example)
    _keys(raw, "noise_floor", NOISE_KEYS)
    if "cells" not in raw:
        raise _fail("noise_floor", f"missing cells: name the cells to repeat, e.g. {example}")
    cells = tuple(
        _string(c, f"noise_floor.cells[{i}]", "gptq")
        for i, c in enumerate(_list(raw["cells"], "noise_floor.cells", "[gptq]"))
    )
    seeds = tuple(
        _int(_setting(DataSettings, "seed", s, f"noise_floor.seeds[{i}]"))
        for i, s in enumerate(_list(raw.get("seeds", []), "noise_floor.seeds", "[1, 2]", nonempty=False))
    )
    seen: set[int] = set()
    for i, s in enumerate(seeds):
        if s == seed or s in seen:
            why = "the study's own seed" if s == seed else "listed twice"
            raise _fail(f"noise_floor.seeds[{i}]", f"{s} is {why}; give calibration seeds the study does not use")
        seen.add(s)
    threads = (
        None
        if raw.get("threads") is None
        else _int(_setting(ModelSettings, "threads", raw["threads"], "noise_floor.threads"))
    )
    if not seeds and threads is None:
        raise _fail("noise_floor", f"give seeds, threads or both, e.g. {example}")
    return NoiseFloor(cells, seeds, threads)


def _step(value: object, path: str) -> StepSpec:
    """A step as in a sweep (``name:field=value`` or a mapping), built to check it."""
    if isinstance(value, list | tuple):
        raise _study(expected(path, "one step", value, "'wanda:sparsity=0.5'"))
    if not isinstance(value, str | Mapping | StepSpec):  # what parse_step says of any other value
        raise _fail(path, f"step {value!r}: expected 'name[:field=value,...]'")
    try:
        spec = parse_step(value)
        build_intervention(spec)
    except UsageError as exc:
        raise _fail(path, str(exc)) from None
    return spec


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str | None = None


@dataclass(frozen=True)
class EditorSpec:
    label: str
    step: StepSpec


@dataclass
class UnlearnerSpec:
    """An unlearner of the study: paired with every compressor at its own fields and, where
    ``vary`` gives its strength grid, with every editor over that grid (``vary`` as written;
    checked when the entries are built)."""

    label: str
    step: StepSpec
    vary: Mapping[str, object] | None = None


@dataclass(frozen=True)
class NoiseFloor:
    """Cells repeated under other numerical conditions, so a report can say how far A and P
    move for reasons that are not the experiment: each chosen cell once per calibration seed
    in ``seeds`` (the seed of every compressor's calibration windows) and, with ``threads``,
    once with that thread count for every step and evaluation. ``cells`` are selectors: an
    entry's name (all its cells), ``dataset|entry``, or one cell's id."""

    cells: tuple[str, ...]
    seeds: tuple[int, ...] = ()
    threads: int | None = None

    def variants(self) -> list[tuple[str, dict[str, int]]]:
        """(label, variant) per repetition: ``seed=S`` for each seed, ``threads=T``."""
        out: list[tuple[str, dict[str, int]]] = [(f"seed={s}", {"calibration_seed": s}) for s in self.seeds]
        if self.threads is not None:
            out.append((f"threads={self.threads}", {"threads": self.threads}))
        return out

    def resolved(self) -> dict[str, object]:
        return {"cells": list(self.cells), "seeds": list(self.seeds), "threads": self.threads}


@dataclass
class Entry:
    """One sweep of the study, run on every dataset: a compressor paired with an editor
    (``editor`` and ``compressor`` set) or with an unlearner (``unlearner`` and
    ``compressor``), an editor paired with an unlearner over the unlearner's grid (``editor``
    and ``unlearner``), or several steps composed at once."""

    label: str
    steps: list[StepSpec]
    vary: Vary
    orders: list[tuple[int, ...]]
    editor: str | None = None
    compressor: str | None = None
    family: str | None = None
    unlearner: str | None = None

    @property
    def labels(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {
            "entry": self.label,
            "editor": self.editor,
            "compressor": self.compressor,
            "family": self.family,
        }
        if self.unlearner is not None:  # rows of two-category studies keep the keys they had
            out["unlearner"] = self.unlearner
        return out


@dataclass
class Study:
    """A validated study (see :func:`load_study`)."""

    name: str
    model: str
    datasets: list[DatasetSpec]
    editors: list[EditorSpec]
    entries: list[Entry]
    replicates: int = 1
    edits: int | None = None
    seed: int = 0
    metrics: list[str] | None = None
    metric_options: dict[str, dict[str, object]] = field(default_factory=dict)
    budgets: Budgets = field(default_factory=lambda: Budgets())
    policy: str = "project"
    snapshots: str = "memory"
    topk: int = 5
    device: str = "cpu"
    dtype: str = "float32"
    skip_invalid: bool = False
    resources: dict[str, float] = field(default_factory=dict)
    protocol: str = "default"
    #: ``calibration``: each replicate's compressors calibrate on their own windows (seed +
    #: replicate), so the replicate spread includes the compressor's sampling; ``none``: one set
    reseed: str = "none"
    noise_floor: NoiseFloor | None = None
    #: torch.use_deterministic_algorithms(True) and one thread unless --threads says otherwise;
    #: recorded under config.yaml's numerics: and checked on resume, not part of the study's id
    deterministic: bool = False
    data: dict[str, object] = field(
        default_factory=dict
    )  # the file's mapping, as validated (Ray workers rebuild from it)
    #: where this machine keeps the data (run_study's ``data_dir``; None = LMCOMPOSE_DATA_DIR);
    #: not part of the study's identity
    data_dir: Path | None = None
    #: which edit of each batch the top-k record (and Figure 3) reads: its index (0 = the first)
    topk_edit: int = 0
    unlearners: list[UnlearnerSpec] = field(default_factory=list)

    # -- reading ---------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, object], where: str = "study", name: str | None = None) -> Study:
        """Validate ``data`` (a study file's mapping); every mistake is one StudyError."""
        data = _mapping(data, "", "{model: smollm2-135m, datasets: [counterfact], ...}")
        _keys(data, "(top level)", TOP_KEYS)
        for required in ("model", "datasets", "compressors"):
            if required not in data:
                raise _fail(
                    required, f"missing; a study needs model, datasets and compressors (see docs/studies.md) in {where}"
                )
        _check_size(data)  # from the lists' lengths, before a step of a huge grid is built
        study_name = _study_name(data["name"], "name") if "name" in data else _string(name or "study", "name", "paper")
        model = _string(_setting(ModelSettings, "model", data["model"]), "model", "smollm2-135m")
        datasets = _datasets(data["datasets"])
        editors = _editors(data.get("editors", []))
        unlearners = _unlearners(data.get("unlearners", []))
        entries = _entries(data["compressors"], editors, unlearners, data.get("orders", "all"))
        replicates = _int(_setting(GridSettings, "replicates", data.get("replicates", 1)))
        edits = None if data.get("edits") is None else _int(_setting(DataSettings, "edits", data["edits"]))
        if edits is None and editors:
            raise _fail("edits", "missing; the editors need the number of edit requests per replicate, e.g. edits: 50")
        seed = _int(_setting(DataSettings, "seed", data.get("seed", 0)))
        metrics = None
        if data.get("metrics") is not None:
            metrics = [
                _string(m, f"metrics[{i}]", "perplexity")
                for i, m in enumerate(_list(data["metrics"], "metrics", "[edit, perplexity, avg_bits]"))
            ]
        options: dict[str, dict[str, object]] = {}
        for key, value in _mapping(data.get("metric_options", {}), "metric_options", "{edit: {scorer: prob}}").items():
            options[key] = dict(_mapping(value, f"metric_options.{key}", "{scorer: prob}"))
        budgets = _budgets(data.get("budgets", {}))
        merged = _merge_budgets(options, budgets)
        try:
            build_metrics(metrics, merged)
        except UsageError as exc:
            raise _fail("metrics" if metrics else "metric_options", str(exc)) from None
        policy = str(_setting(StepsSettings, "policy", data.get("policy", "project")))
        snapshots = str(_setting(CellOutputSettings, "snapshots", data.get("snapshots", "memory")))
        topk = _int(_setting(TopKSettings, "topk", data.get("topk", 5)))
        topk_edit = _int(_setting(StudyKeys, "topk_edit", data.get("topk_edit", 0)))
        if topk_edit and not topk:
            raise _fail("topk_edit", "picks the prompt of the top-k record, and topk is 0 (off); set topk: 5 or more")
        if topk_edit and not editors:
            raise _fail("topk_edit", "picks an edit's prompt, and the study has no editors (no edits)")
        device = _string(_setting(ModelSettings, "device", data.get("device", "cpu")), "device", "cpu")
        from lmcompose.models.loading import check_device_name

        try:
            check_device_name(device)
        except UsageError as exc:
            raise _fail("device", str(exc)) from None
        from lmcompose.models.loading import DTYPES, default_dtype

        dtype = data.get("dtype", default_dtype(device))
        if dtype is None:  # the study's dtype is always named: None is not "the device's default"
            raise _study(not_one_of("dtype", dtype, DTYPES))
        dtype = str(_setting(ModelSettings, "dtype", dtype))
        skip_invalid = _setting(DataSettings, "skip_invalid", data.get("skip_invalid", False)) is True
        deterministic = _setting(ModelSettings, "deterministic", data.get("deterministic", False)) is True
        resources: dict[str, float] = {}
        raw_res = _mapping(data.get("resources", {}), "resources", "{cpus_per_task: 1, gpus_per_task: 0.25}")
        _keys(raw_res, "resources", RESOURCE_KEYS)
        if "cpus_per_task" in raw_res:
            resources["cpus_per_task"] = _number(
                raw_res["cpus_per_task"], "resources.cpus_per_task", 0, "1", strict=True, maximum=MAX_THREADS
            )
        if "gpus_per_task" in raw_res:
            resources["gpus_per_task"] = _number(
                raw_res["gpus_per_task"], "resources.gpus_per_task", 0, "0.25", maximum=MAX_GPUS_PER_TASK
            )
        from lmcompose.protocols import get_protocol

        try:
            protocol = get_protocol(data.get("protocol", "default"))
        except UsageError as exc:
            raise _fail("protocol", str(exc)) from None
        if protocol.name != "default":  # the protocol's fields fill what the file leaves unset
            editors = [EditorSpec(e.label, protocol.steps([e.step])[0]) for e in editors]
            unlearners = [UnlearnerSpec(u.label, protocol.steps([u.step])[0], u.vary) for u in unlearners]
            for entry in entries:
                entry.steps = protocol.steps(entry.steps, [(entry.vary.step, entry.vary.field)])
                for spec in entry.steps:  # a filled field the installed plugin does not know is named here
                    _step(spec, f"protocol ({protocol.name}, entry {entry.label})")
            options = protocol.options(options)
            policy = protocol.policy or policy
        reseed = str(_setting(StudyKeys, "reseed", data.get("reseed", "none")))
        noise = _noise_floor(data["noise_floor"], seed) if data.get("noise_floor") is not None else None
        study = cls(
            study_name,
            model,
            datasets,
            editors,
            entries,
            replicates,
            edits,
            seed,
            metrics,
            options,
            budgets,
            policy,
            snapshots,
            topk,
            device,
            dtype,
            skip_invalid,
            resources,
            protocol.name,
            reseed,
            noise,
            deterministic,
            data=dict(data),
        )
        study.topk_edit = topk_edit
        study.unlearners = unlearners
        if noise is not None:
            study.noise_cells()  # checks the selectors against the cells
        return study

    # -- what it runs ----------------------------------------------------------------
    @property
    def groups(self) -> list[Group]:
        return [(d.name, r) for d in self.datasets for r in range(self.replicates)]

    @property
    def resolved_metric_options(self) -> dict[str, dict[str, object]]:
        return _merge_budgets(self.metric_options, self.budgets)

    def cells(self) -> list[Cell]:
        """Every cell: entry × dataset × order × value × replicate, then the noise floor's
        repetitions."""
        main = self._main_cells()
        return main + self.noise_cells(main)

    def _main_cells(self) -> list[Cell]:
        out: list[Cell] = []
        keys_memo: dict[str, str] = {}  # each distinct step is built once for every dataset
        for entry in self.entries:
            for ds in self.datasets:
                groups = [(ds.name, r) for r in range(self.replicates)]
                out += sweep_cells(
                    entry.steps,
                    entry.vary,
                    entry.orders,
                    groups,
                    self.policy,
                    labels={"study": self.name, "dataset": ds.name, **entry.labels},
                    id_prefix=f"{ds.name}|{entry.label}|",
                    keys_memo=keys_memo,
                )
        if self.reseed == "calibration":
            out = [self._calibrated_with(c, self.seed) for c in out]
        return out

    def _calibrated_with(self, cell: Cell, seed: int) -> Cell:
        """``cell`` with every compressor step calibrating on seed ``seed`` (+ the replicate
        under ``reseed: calibration``)."""
        s = seed + (cell.replicate if self.reseed == "calibration" else 0)
        actions = tuple(a.varied(calibration_seed=s) if a.kind != EDIT_KIND else a for a in cell.actions)
        return replace(cell, actions=actions)

    def noise_cells(self, main: list[Cell] | None = None) -> list[Cell]:
        """The repetitions ``noise_floor`` asks for (none without it): each chosen cell per
        variant, with the id ``<cell id>|noise:<label>`` and the row label ``noise``
        (``main``: the study's other cells, when already built)."""
        if self.noise_floor is None:
            return []
        main = self._main_cells() if main is None else main
        by_selector: dict[str | None, list[Cell]] = {}
        for c in main:
            for key in {c.id, c.labels.get("entry"), f"{c.labels.get('dataset')}|{c.labels.get('entry')}"}:
                by_selector.setdefault(key, []).append(c)
        chosen: dict[str, Cell] = {}
        for i, sel in enumerate(self.noise_floor.cells):
            hits = by_selector.get(sel, [])
            if not hits:
                entries = list(dict.fromkeys(str(c.labels.get("entry")) for c in main))
                pairs = list(dict.fromkeys(f"{c.labels.get('dataset')}|{c.labels.get('entry')}" for c in main))
                examples = [c.id for c in main[:3]]
                raise _fail(
                    f"noise_floor.cells[{i}]",
                    f"no cell matches {sel!r}; give an entry ({', '.join(entries)}), a dataset|entry pair "
                    f"({', '.join(pairs)}) or a cell id (e.g. {', '.join(examples)}; `lmcompose study FILE --plan` "
                    "lists them all)",
                )
            chosen.update((c.id, c) for c in hits)
        variants = self.noise_floor.variants()
        try:
            check_grid_size(
                [
                    [GridFactor("compressors", len(main), "cells")],
                    [
                        GridFactor("noise_floor.cells", len(chosen), "cells"),
                        GridFactor("noise_floor.seeds", len(variants), "repetitions"),
                    ],
                ]
            )
        except ConfigError as exc:
            raise StudyError(str(exc)) from None
        out = []
        for label, variant in variants:
            for cell in chosen.values():
                if "calibration_seed" in variant:
                    varied = self._calibrated_with(cell, int(variant["calibration_seed"]))
                else:
                    varied = replace(cell, actions=tuple(a.varied(**variant) for a in cell.actions))
                out.append(replace(varied, id=f"{cell.id}|noise:{label}", labels={**cell.labels, "noise": label}))
        return out

    def plan(self) -> Plan:
        return Plan(self.cells(), run_id=self.id, policy=self.policy)

    def counts(self, edit_metrics: bool | None = None, cells: Sequence[Cell] | None = None) -> dict[str, PlanCounts]:
        """Model states and evaluations: the study's plan, the same work as one sweep per
        (entry, dataset) (no sharing between sweeps), and every cell on its own
        (``cells``: the study's cells, when already built)."""
        if edit_metrics is None:
            from lmcompose.plugins import get_metrics

            names = self.metrics or get_metrics().names()
            edit_metrics = self.edits is not None and any(get_metrics().get(n).requires_edits for n in names)
        cells = list(self.cells() if cells is None else cells)
        study = Plan(cells, run_id=self.id, policy=self.policy).counts(edit_metrics)
        by_sweep: dict[tuple[str | None, str | None], list[Cell]] = {}
        for c in cells:
            by_sweep.setdefault((c.labels["entry"], c.labels["dataset"]), []).append(c)
        states: dict[str, int] = {}
        evals = 0
        for part in by_sweep.values():
            pc = Plan(part, run_id=self.id, policy=self.policy).counts(edit_metrics)
            evals += pc.evaluations
            for k, n in pc.states.items():
                states[k] = states.get(k, 0) + n
        return {
            "study": study,
            "separate_sweeps": PlanCounts(states, evals),
            "independent_cells": Plan.independent_counts(cells, edit_metrics),
        }

    def resolved(self) -> dict[str, object]:
        """The study in canonical form (config.yaml; its id is a hash of this)."""
        return {
            "name": self.name,
            "model": self.model,
            "datasets": [{"name": d.name, "source": d.source} for d in self.datasets],
            "editors": [{"name": e.label, "step": str(e.step)} for e in self.editors],
            # a study without unlearners resolves as before: its id does not change
            **(
                {"unlearners": [{"name": u.label, "step": str(u.step)} for u in self.unlearners]}
                if self.unlearners
                else {}
            ),
            "compressors": [
                {
                    "name": e.label,
                    "steps": [str(s) for s in e.steps],
                    "vary": str(e.vary),
                    "orders": [[e.steps[i].name for i in o] for o in e.orders],
                    "editor": e.editor,
                    "compressor": e.compressor,
                    "family": e.family,
                    **({"unlearner": e.unlearner} if e.unlearner is not None else {}),
                }
                for e in self.entries
            ],
            "replicates": self.replicates,
            "edits": self.edits,
            "seed": self.seed,
            "metrics": self.metrics,
            "metric_options": self.resolved_metric_options,
            "budgets": self.budgets,
            "policy": self.policy,
            "snapshots": self.snapshots,
            "topk": self.topk,
            **({"topk_edit": self.topk_edit} if self.topk_edit else {}),
            "device": self.device,
            "dtype": self.dtype,
            "skip_invalid": self.skip_invalid,
            "resources": self.resources,
            # only when set, so the ids of studies written before protocols existed stay the same
            **({"protocol": self.protocol} if self.protocol != "default" else {}),
            **({"reseed": self.reseed} if self.reseed != "none" else {}),
            **({"noise_floor": self.noise_floor.resolved()} if self.noise_floor is not None else {}),
        }

    @property
    def id(self) -> str:
        from lmcompose.engine.driver import run_id

        return run_id(self.resolved())  # without device, snapshots and resources: where it runs

    # -- data ------------------------------------------------------------------------
    def check_inputs(self, model: bool = True) -> None:
        """The files the study names, checked without reading or loading them (nor importing
        torch): the model (unless ``model`` is false: `study` checks it after the edits load,
        so a wrong edit count is said first), each dataset's source, the corpora and the data
        folder (``data_dir``, else LMCOMPOSE_DATA_DIR). `validate` runs it, and `study` before
        anything is written; every mistake is one StudyError naming its key."""
        from lmcompose.compose import check_dataset_source
        from lmcompose.corpora import check_corpus_files
        from lmcompose.models.loading import check_model
        from lmcompose.paths import data_dir

        checks: list[tuple[str, Callable[[], object]]] = [
            *([("model", lambda: check_model(self.model))] if model else []),
            ("", lambda: data_dir(self.data_dir)),
            *(
                (f"datasets[{i}].source", lambda d=d: check_dataset_source(d.name, d.source))
                for i, d in enumerate(self.datasets)
            ),
            (
                "budgets",
                lambda: check_corpus_files(self.budgets.get("ppl_corpus"), self.budgets.get("calibration_corpus")),
            ),
        ]
        for key, check in checks:
            try:
                check()
            except UsageError as exc:
                raise _fail(key, str(exc)) from None

    def check_model(self) -> None:
        """The model the study names exists (a named model, a folder or a hub id), without
        loading it: one StudyError naming ``model``."""
        from lmcompose.models.loading import check_model

        try:
            check_model(self.model)
        except UsageError as exc:
            raise _fail("model", str(exc)) from None

    def load_edits(self, ctx: Context | None = None) -> dict[Group, list[EditRecord]]:
        """Every group's edit requests (seeded, disjoint replicates of each dataset)."""
        from lmcompose.compose import load_edits

        out: dict[Group, list[EditRecord]] = {}
        for d in self.datasets:
            for r in range(self.replicates):
                out[(d.name, r)] = (
                    load_edits(
                        d.name, d.source, self.edits, self.seed, replicate=r, skip_invalid=self.skip_invalid, ctx=ctx
                    )
                    if self.edits
                    else []
                )
        return out

    def load_unedited(
        self, ctx: Context | None, edits: Mapping[Group, list[EditRecord]]
    ) -> dict[Group, list[EditRecord]]:
        """Every group's control records (:func:`lmcompose.compose.load_unedited`): records of
        its dataset that no replicate edits, as many as its edits, chosen from the seed."""
        from lmcompose.compose import load_unedited

        out: dict[Group, list[EditRecord]] = {}
        for d in self.datasets:
            batches = [list(edits.get((d.name, r), [])) for r in range(self.replicates)]
            if not any(batches):
                continue
            controls = load_unedited(d.name, batches, d.source, self.seed, self.skip_invalid, ctx)
            out.update({(d.name, r): c for r, c in enumerate(controls)})
        return out


def _merge_budgets(options: Mapping[str, Mapping[str, object]], budgets: Budgets) -> dict[str, dict[str, object]]:
    merged = {k: dict(v) for k, v in options.items()}
    ppl: dict[str, object] = {}
    if "ppl_tokens" in budgets:
        ppl["max_tokens"] = 0 if budgets["ppl_tokens"] == "all" else budgets["ppl_tokens"]
    if "ppl_seqlen" in budgets:
        ppl["seqlen"] = budgets["ppl_seqlen"]
    if ppl:
        merged["perplexity"] = {**merged.get("perplexity", {}), **ppl}
    return merged


class Budgets(TypedDict, total=False):
    """A study's ``budgets:`` as validated (docs/studies.md): ``ppl_tokens`` a count or ``all``."""

    ppl_tokens: int | str
    ppl_seqlen: int
    calibration_samples: int
    calibration_seqlen: int
    ppl_corpus: str
    calibration_corpus: str


def _budgets(value: object) -> Budgets:
    raw = _mapping(value, "budgets", "{ppl_tokens: 4096, calibration_samples: 32}")
    _keys(raw, "budgets", BUDGET_KEYS)
    out: Budgets = {}
    if "ppl_tokens" in raw:
        v = raw["ppl_tokens"]
        out["ppl_tokens"] = "all" if v == "all" else _integer(v, "budgets.ppl_tokens", 1, "4096 (or all)")
    if "ppl_seqlen" in raw:
        out["ppl_seqlen"] = _integer(raw["ppl_seqlen"], "budgets.ppl_seqlen", 8, "1024")
    if "calibration_samples" in raw:
        out["calibration_samples"] = _integer(raw["calibration_samples"], "budgets.calibration_samples", 1, "32")
    if "calibration_seqlen" in raw:
        out["calibration_seqlen"] = _integer(raw["calibration_seqlen"], "budgets.calibration_seqlen", 1, "512")
    from lmcompose.corpora import parse_corpus

    if "ppl_corpus" in raw:
        out["ppl_corpus"] = str(parse_corpus(raw["ppl_corpus"], "budgets.ppl_corpus"))
    if "calibration_corpus" in raw:
        out["calibration_corpus"] = str(parse_corpus(raw["calibration_corpus"], "budgets.calibration_corpus"))
    return out


def _is_edit_dataset(entry: RegistryEntry[type[EditDataset] | type[TextCorpus]]) -> bool:
    """Whether a registry entry loads an EditDataset subclass (what it is, not its registration's kind)."""
    from lmcompose.api import EditDataset

    try:
        cls = entry.load()
    except Exception:  # noqa: BLE001 - a plugin that fails to load is reported by `lmcompose plugins`
        return False
    return isinstance(cls, type) and issubclass(cls, EditDataset)


def _datasets(value: object) -> list[DatasetSpec]:
    from lmcompose.plugins import get_datasets

    registry = get_datasets()
    edit_names = [n for n in registry.names() if _is_edit_dataset(registry.entry(n))]
    out: list[DatasetSpec] = []
    for i, item in enumerate(_list(value, "datasets", "[counterfact, zsre]")):
        path = f"datasets[{i}]"
        if isinstance(item, Mapping):
            _keys(_mapping(item, path, "{name: zsre, source: data/zsre.json}"), path, DATASET_KEYS)
            if "name" not in item:
                raise _fail(path, "missing name; write {name: zsre, source: FILE}")
            name = _string(item["name"], f"{path}.name", "counterfact")
            source = None if item.get("source") is None else _string(item["source"], f"{path}.source", "data/cf.json")
        else:
            name, source = _string(item, path, "counterfact"), None
        if name not in edit_names:
            raise _unknown(path, "edit dataset", name, edit_names)
        if any(d.name == name for d in out):
            raise _fail(path, f"dataset {name!r} is listed twice; list each dataset once")
        out.append(DatasetSpec(name, source))
    return out


def _step_item(
    item: object, path: str, keys: Sequence[str], example: str
) -> tuple[StepSpec, str | None, Mapping[str, object]]:
    """An editor's or unlearner's item: a step, or ``{step: ..., name: ...}`` with ``keys``;
    (the step, its name or None, the item's mapping or an empty one)."""
    if isinstance(item, Mapping) and "step" in item:
        _keys(item, path, keys)
        spec = _step(item["step"], f"{path}.step")
        return spec, (_string(item["name"], f"{path}.name", example) if "name" in item else None), item
    return _step(item, path), None, {}


def _editors(value: object) -> list[EditorSpec]:
    out: list[EditorSpec] = []
    for i, item in enumerate(_list(value, "editors", "[memit]", nonempty=False)):
        path = f"editors[{i}]"
        spec, label, _ = _step_item(item, path, EDITOR_KEYS, "memit-small")
        kind = build_intervention(spec).kind
        if kind != EDIT_KIND:
            raise _fail(path, f"{spec.name!r} is a {kind} step, not an editor (kind edit); list it under compressors")
        label = label or spec.name
        if any(e.label == label for e in out):
            raise _fail(path, f"two editors are named {label!r}; give each its own name: {{step: {spec}, name: LABEL}}")
        out.append(EditorSpec(label, spec))
    return out


def _vary_one(value: object, path: str, steps: list[StepSpec], composite: bool) -> Vary:
    example = "{wanda.sparsity: [0.25, 0.5]}" if composite else "{sparsity: [0.25, 0.5, 0.75]}"
    raw = _mapping(value, path, example)
    if len(raw) != 1:
        raise _fail(path, f"vary exactly one field, e.g. {example}; got {len(raw)}: {', '.join(raw) or 'none'}")
    ((key, values),) = raw.items()
    if composite:
        step_name, dot, field_name = key.partition(".")
        names = [s.name for s in steps]
        if not dot or not field_name:
            raise _fail(path, f"{key!r}: name the step and its field, e.g. {example}")
        if step_name not in names:
            raise _unknown(path, "step", step_name, names)
        if names.count(step_name) > 1:
            raise _fail(
                path, f"step {step_name!r} appears {names.count(step_name)} times; vary a step that appears once"
            )
        index = names.index(step_name)
    else:
        index, field_name = len(steps) - 1, key
    from lmcompose.plugins import get_interventions

    fields = list(config_fields(get_interventions().get(steps[index].name).Config))
    if field_name not in fields:
        raise _unknown(path, "field", field_name, fields, owner=steps[index].name)
    vpath = f"{path}.{key}"
    items = _list(values, vpath, f"[{', '.join(['0.25', '0.5'])}]")
    for j, v in enumerate(items):
        if isinstance(v, list | tuple | Mapping) or v is None:
            raise _study(expected(f"{vpath}[{j}]", "one value", v))
    try:
        return make_vary(steps, index, field_name, items, vpath)
    except UsageError as exc:
        msg = str(exc)
        raise (StudyError(msg) if msg.startswith(vpath) else _fail(vpath, msg)) from None


def _check_size(data: Mapping[str, object]) -> None:
    """Refuse a study over the cell cap from its lists' lengths alone (a grid of 100,000
    values would otherwise build 100,000 steps first), naming the key that makes it large.
    A key of the wrong shape counts as one here: its own check says what is wrong with it."""

    def length(value: object, default: int = 1) -> int:
        return len(value) if isinstance(value, list) and value else default

    replicates = data.get("replicates", 1)
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        replicates = 1
    shared = [
        GridFactor("datasets", length(data.get("datasets")), "datasets"),
        GridFactor("replicates", replicates, "replicates"),
    ]
    top_orders = data.get("orders", "all")
    parts = []
    entries = data.get("compressors")
    for i, raw in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(raw, Mapping):
            continue
        path = f"compressors[{i}]"
        vary = raw.get("vary")
        field_name, values = next(iter(vary.items())) if isinstance(vary, Mapping) and len(vary) == 1 else ("", None)
        factors = [GridFactor(f"{path}.vary.{field_name}", length(values), "values")]
        if "steps" in raw:
            steps = raw["steps"] if isinstance(raw["steps"], list) else []
            names = []
            for j, step in enumerate(steps):
                try:
                    names.append(parse_step(step).name if isinstance(step, str | Mapping | StepSpec) else f"#{j}")
                except (UsageError, TypeError, ValueError):
                    names.append(f"#{j}")
            factors.append(GridFactor(f"{path}.orders", count_orders(raw.get("orders", "all"), names), "orders"))
        else:
            orders = 2 if top_orders == "all" else length(top_orders)
            partners = length(data.get("editors"), 0) + length(data.get("unlearners"), 0)
            factors += [
                GridFactor("orders", orders, "orders"),
                GridFactor("editors", partners, "editors and unlearners"),
            ]
        parts.append(factors + shared)
    unlearners = data.get("unlearners")
    for i, raw in enumerate(unlearners if isinstance(unlearners, list) else []):
        vary = raw.get("vary") if isinstance(raw, Mapping) else None
        if not isinstance(vary, Mapping) or len(vary) != 1:
            continue
        values = next(iter(vary.values()))
        orders = 2 if top_orders == "all" else length(top_orders)
        factors = [
            GridFactor(f"unlearners[{i}].vary", length(values), "values"),
            GridFactor("orders", orders, "orders"),
            GridFactor("editors", length(data.get("editors"), 0), "editors"),
        ]
        parts.append(factors + shared)
    noise = data.get("noise_floor")
    if isinstance(noise, Mapping) and isinstance(noise.get("seeds"), list):  # each seed repeats a cell at least
        parts.append([GridFactor("noise_floor.seeds", len(noise["seeds"]), "repetitions")])
    try:
        check_grid_size(parts)
    except ConfigError as exc:
        raise StudyError(str(exc)) from None


def _unlearners(value: object) -> list[UnlearnerSpec]:
    out: list[UnlearnerSpec] = []
    for i, item in enumerate(_list(value, "unlearners", "[rmu]", nonempty=False)):
        path = f"unlearners[{i}]"
        spec, label, raw = _step_item(item, path, UNLEARNER_KEYS, "rmu-strong")
        vary = _mapping(raw["vary"], f"{path}.vary", "{alpha: [100, 1200]}") if "vary" in raw else None
        kind = build_intervention(spec).kind
        if kind != UNLEARN_KIND:
            where = "editors" if kind == EDIT_KIND else "compressors"
            raise _fail(
                path, f"{spec.name!r} is {_article(kind)} step, not an unlearner (kind unlearn); list it under {where}"
            )
        label = label or spec.name
        if any(u.label == label for u in out):
            raise _fail(
                path, f"two unlearners are named {label!r}; give each its own name: {{step: {spec}, name: LABEL}}"
            )
        out.append(UnlearnerSpec(label, spec, vary))
    return out


def _role_orders(value: object, path: str) -> list[tuple[str, str]] | None:
    """Orders of a pair, by role: ``all`` (None: both orders of every pair) or e.g.
    ``[[editor, compressor], [compressor, unlearner]]``."""
    if value == "all":
        return None
    out: list[tuple[str, str]] = []
    for i, order in enumerate(_list(value, path, "all, or [[editor, compressor], [compressor, editor]]")):
        opath = f"{path}[{i}]"
        items = _list(order, opath, "[editor, compressor]")
        for x in items:
            if x not in ROLES:
                raise _unknown(opath, "role", x, ROLES)
        if len(items) != 2 or items[0] == items[1]:
            raise _fail(
                opath,
                "an order lists editor and compressor once each (or an unlearner with either), "
                "e.g. [compressor, editor]",
            )
        pair = (str(items[0]), str(items[1]))
        if pair in out:
            raise _fail(opath, "this order is given twice")
        out.append(pair)
    return out


def _pair_orders(orders: list[tuple[str, str]] | None, roles: tuple[str, str]) -> list[tuple[int, ...]]:
    """The orders of a pair whose steps are ``roles`` (in that order), as step indices."""
    if orders is None:
        return [(0, 1), (1, 0)]
    got = [tuple(roles.index(x) for x in o) for o in orders if set(o) == set(roles)]
    if not got:
        a, b = roles
        raise _fail(
            "orders",
            f"no order for the {a}-{b} pairs; add [{a}, {b}], [{b}, {a}] or both, or give orders: all",
        )
    return got


def _entries(value: object, editors: list[EditorSpec], unlearners: list[UnlearnerSpec], orders: object) -> list[Entry]:
    role_orders = _role_orders(orders, "orders")
    partners = [(e.label, e.step, "editor") for e in editors] + [(u.label, u.step, "unlearner") for u in unlearners]
    out: list[Entry] = []
    for i, item in enumerate(_list(value, "compressors", "[{step: wanda, vary: {sparsity: [0.25, 0.5]}}]")):
        path = f"compressors[{i}]"
        raw = _mapping(item, path, "{step: sparsegpt, vary: {sparsity: [0.25, 0.5, 0.75]}}")
        _keys(raw, path, ENTRY_KEYS)
        if ("step" in raw) == ("steps" in raw):
            raise _fail(
                path,
                "give either step: (a compressor, paired with every editor) or steps: (a sequence "
                "composed as it is), not " + ("both" if "step" in raw else "neither"),
            )
        if "vary" not in raw:
            raise _fail(path, "missing vary; give the strength grid, e.g. vary: {sparsity: [0.25, 0.5, 0.75]}")
        family = None if raw.get("family") is None else _string(raw["family"], f"{path}.family", "prune")
        if "step" in raw:
            spec = _step(raw["step"], f"{path}.step")
            kind = build_intervention(spec).kind
            if kind == EDIT_KIND:
                raise _fail(f"{path}.step", f"{spec.name!r} is an editor (kind edit); list it under editors")
            if kind == UNLEARN_KIND:
                raise _fail(f"{path}.step", f"{spec.name!r} is an unlearner (kind unlearn); list it under unlearners")
            if not partners:
                raise _fail(
                    path,
                    "a compressor entry is paired with every editor and unlearner, and editors is empty "
                    "(and there are no unlearners); "
                    "add editors: [memit] (or unlearners: [rmu]), or compose a sequence with steps: [...]",
                )
            if "orders" in raw:
                raise _fail(
                    f"{path}.orders", "orders of a paired compressor are the study's orders (top-level orders:)"
                )
            label = _string(raw.get("name", spec.name), f"{path}.name", "sparsegpt")
            for p_label, p_step, role in partners:
                steps = [p_step, spec]
                vary = _vary_one(raw["vary"], f"{path}.vary", steps, composite=False)
                entry_label = label if len(partners) == 1 else f"{p_label}+{label}"
                pair_orders = _pair_orders(role_orders, (role, "compressor"))
                editor = p_label if role == "editor" else None
                unlearner = p_label if role == "unlearner" else None
                out.append(Entry(entry_label, steps, vary, pair_orders, editor, label, family or kind, unlearner))
        else:
            steps = [
                _step(s, f"{path}.steps[{j}]")
                for j, s in enumerate(_list(raw["steps"], f"{path}.steps", "[memit, wanda, gptq]"))
            ]
            vary = _vary_one(raw["vary"], f"{path}.vary", steps, composite=True)
            try:
                entry_orders = parse_orders(raw.get("orders", "all"), steps)
            except UsageError as exc:
                raise _fail(f"{path}.orders", str(exc)) from None
            label = _string(raw.get("name", "+".join(s.name for s in steps)), f"{path}.name", "memit+wanda+gptq")
            kinds = [build_intervention(s).kind for s in steps]
            out.append(Entry(label, steps, vary, entry_orders, None, None, family or "+".join(dict.fromkeys(kinds))))
        _check_unique(out, path)
    for i, u in enumerate(unlearners):  # an unlearner with a grid: paired with every editor over it
        if u.vary is None:
            continue
        path = f"unlearners[{i}]"
        if not editors:
            raise _fail(
                f"{path}.vary",
                "varies the unlearner paired with every editor, and editors is empty; add editors: [memit], "
                "or remove vary (an unlearner is paired with every compressor at its own fields)",
            )
        for ed in editors:
            steps = [ed.step, u.step]
            vary = _vary_one(u.vary, f"{path}.vary", steps, composite=False)
            pair_orders = _pair_orders(role_orders, ("editor", "unlearner"))
            out.append(Entry(f"{ed.label}+{u.label}", steps, vary, pair_orders, ed.label, None, UNLEARN_KIND, u.label))
            _check_unique(out, path)
    roles = [{"editor": e.editor, "compressor": e.compressor, "unlearner": e.unlearner} for e in out]
    for i, order in enumerate(role_orders or []):
        if "unlearner" in order and not any(all(r[x] is not None for x in order) for r in roles):
            raise _fail(
                f"orders[{i}]", f"no entry pairs {_article(order[0])} with {_article(order[1])}; remove this order"
            )
    return out


def _article(role: str) -> str:
    return ("an " if role[0] in "aeiou" else "a ") + role


def _check_unique(entries: list[Entry], path: str) -> None:
    seen: set[str] = set()
    for e in entries:
        if e.label in seen:
            raise _fail(path, f"two entries are named {e.label!r}; give this one its own name: NAME")
        seen.add(e.label)


def load_study(path: str | Path, data: Mapping[str, object] | None = None) -> Study:
    """Read and validate a study file (no model, no data, no torch); ``data``: its mapping,
    when the caller has already read it."""
    from lmcompose.results import read_yaml

    p = Path(path)
    data = read_yaml(p) if data is None else data
    try:
        return Study.from_mapping(data, where=str(p), name=p.stem)
    except StudyError as exc:
        raise StudyError(f"{p}: {exc}") from None
