"""Runs: one sequence of steps applied in order to one model, every metric evaluated on the
base model and after every step (``lmcompose run``, :func:`compose`).

A run is the one-cell case of the engine that sweeps and studies share
(:mod:`lmcompose.engine`): a plan with one path, the executor that walks it, and the run folder
that writes its rows. The constraint policies (``--keep-compressed``: ``none``, ``project``,
``recompress``) are defined once, in :mod:`lmcompose.engine.policy`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from lmcompose.api import (
    Context,
    EditDataset,
    EditRecord,
    Intervention,
    Metric,
    Progress,
    config_to_dict,
)
from lmcompose.api.config import Check, check_field, check_fields, check_value, expected
from lmcompose.engine.driver import Loaded, execute
from lmcompose.engine.driver import run_id as engine_run_id
from lmcompose.engine.executor import evaluate
from lmcompose.engine.numerics import record_numerics, run_threads
from lmcompose.engine.plan import Action, Cell, Group, Plan, PlannedStep
from lmcompose.engine.policy import EDIT_KIND, POLICIES
from lmcompose.engine.run_folder import RunFolder, edit_digests, edits_digest, versions
from lmcompose.engine.threads import current_threads
from lmcompose.errors import ConfigError, UnknownNameError, UsageError, describe_value
from lmcompose.plugins import get_datasets, get_interventions
from lmcompose.results import read_yaml
from lmcompose.settings import (
    STEPS_EXPECTED,
    DataSettings,
    EvaluationSettings,
    ModelSettings,
    OutputSettings,
    StepSetting,
    StepsSettings,
)
from lmcompose.steps import StepSpec, build_intervention, build_metrics, parse_step

if TYPE_CHECKING:
    from typing_extensions import Self

    from lmcompose.engine.executor import Row
    from lmcompose.models.handle import LM

__all__ = [
    "EDIT_KIND",
    "POLICIES",
    "RunSettings",
    "StepSpec",
    "build_intervention",
    "build_metrics",
    "compose",
    "evaluate",
    "load_edits",
    "load_unedited",
    "parse_step",
    "prepare",
    "resolve_metrics",
    "run",
    "versions",
]

# --------------------------------------------------------------------------------------
# Run settings (what `lmcompose run` and config.yaml hold)
# --------------------------------------------------------------------------------------

#: Settings that change the last digits, not what is computed: config.yaml's ``numerics:``
#: records them (lmcompose.engine.numerics) and a resume must match; not part of the run id.
NUMERICS_SETTINGS = ("threads", "deterministic")
#: Settings left out of config.yaml and the run id while unset, so runs from before they existed keep their ids.
OPTIONAL_SETTINGS = ("ppl_corpus", "calibration_corpus", "device_map", "max_memory", "revision")
#: a step as the Python API takes it: a setting, or an intervention already built
StepInput = StepSetting | Intervention


@dataclass
class RunSettings(OutputSettings, EvaluationSettings, DataSettings, StepsSettings, ModelSettings):
    """Everything that defines a run, grouped by concern (:mod:`lmcompose.settings`: model,
    grid, data, evaluation, output). ``-c config.yaml`` holds these keys; flags override."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], where: str = "config") -> Self:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise UnknownNameError(f"setting in {where}", key, names)
        # a file's values, any shape: check_shapes names each one that is not what its field says
        unchecked: dict[str, Any] = dict(data)
        settings = cls(**unchecked)
        settings.check_shapes(where)
        if isinstance(settings.steps, str):
            settings.steps = settings.steps.split()
        if isinstance(settings.metrics, str):
            settings.metrics = [m.strip() for m in settings.metrics.split(",") if m.strip()]
        return settings

    def check_shapes(self, where: str = "settings") -> None:
        """Every setting has the shape its field declares (a list where a list belongs, a whole
        number in its range where one belongs, ...): one ConfigError naming the key, never a
        TypeError later. The same checks, with the same messages, as a step's config and a
        study's keys (:func:`lmcompose.api.config.check_fields`)."""
        check_fields(self, where)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        return cls.from_mapping(read_yaml(Path(path)), where=str(path))

    def merged(self, **overrides: Any) -> Self:
        """A copy with every override that is not None applied (CLI flags over the file)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def varied_fields(self) -> list[tuple[str, str]]:
        """(step, field) pairs a sweep varies (a protocol leaves them alone); none in a run."""
        return []

    def with_protocol(self) -> Self:
        """These settings with their protocol applied (lmcompose.protocols): its step fields
        where a step does not set them, its policy, its metric options where not given."""
        from lmcompose.protocols import get_protocol

        proto = get_protocol(self.protocol)
        if proto.name == "default":
            return self
        return dataclasses.replace(
            self,
            steps=proto.steps(self.steps, self.varied_fields()),
            policy=proto.policy or self.policy,
            metric_options=proto.options(self.metric_options),
        )

    def validate(self) -> tuple[list[Intervention], list[Metric]]:
        """Check everything that can be checked without loading a model; never imports torch."""
        self.check_shapes()
        from lmcompose.protocols import get_protocol

        get_protocol(self.protocol)
        if not self.model:
            raise ConfigError(
                "no model given: pass MODEL (a named model such as smollm2-135m, a folder, or a .gguf file)"
            )
        if not self.steps:
            raise ConfigError("no steps given: pass at least one STEP such as magnitude:sparsity=0.5")
        from lmcompose.models.loading import (
            check_device_map,
            check_device_name,
            parse_max_memory,
        )

        check_device_name(self.device)
        if self.device_map is not None:
            check_device_map(self.device_map)
        if self.max_memory is not None:
            if self.device_map is None:
                raise ConfigError("max_memory needs device_map (auto, balanced or sequential) to place layers by it")
            parse_max_memory(self.max_memory)
        steps = [build_intervention(parse_step(s)) for s in self.steps]
        metrics = build_metrics(self.metrics, self.metric_options)
        if self.dataset is not None:
            edit_dataset_class(self.dataset)
        if self.save_model is not None and self.out is not None:
            from lmcompose.engine.saving import check_apart_from_run

            check_apart_from_run(self.save_model, self.out, "--save-model", f"the run folder {self.out} (--out)")
        return steps, metrics

    def check_inputs(self) -> None:
        """The files these settings name, checked without reading or loading them (nor
        importing torch): the model (a path that exists, a saved model's folder, a revision
        only for a hub model), the data folder, the dataset's source and the corpora.
        `validate` runs it, and every command before anything is written."""
        from lmcompose.corpora import check_corpus_files
        from lmcompose.models.loading import check_model
        from lmcompose.paths import data_dir

        check_model(self.model, self.revision)
        if self.data_dir:
            if not Path(self.data_dir).expanduser().is_dir():
                raise ConfigError(
                    f"data folder {self.data_dir!r} does not exist; name a folder laid out like shared/data"
                )
        else:
            data_dir()  # LMCOMPOSE_DATA_DIR, when set, is a folder
        if self.dataset_source is not None:
            check_dataset_source(self.dataset or "records", self.dataset_source)
        check_corpus_files(self.ppl_corpus, self.calibration_corpus)

    def resolved(self) -> dict[str, object]:
        d: dict[str, object] = dataclasses.asdict(self)
        d["steps"] = [str(parse_step(s)) for s in self.steps]
        if d["protocol"] == "default":
            del d["protocol"]  # so run ids written before protocols existed stay the same
        for key in ("save_model", "overwrite"):  # where a copy of the model goes is not part of the run
            d.pop(key, None)
        for key in NUMERICS_SETTINGS:  # recorded under numerics: and checked on resume instead
            d.pop(key, None)
        for key in OPTIONAL_SETTINGS:
            if d.get(key) is None:
                d.pop(key, None)
        if d.get("dtype") is None:
            from lmcompose.models.loading import default_dtype

            d["dtype"] = default_dtype(self.device)
        return d

    @property
    def effective_dtype(self) -> str:
        """``dtype``, or the device's default when unset (auto on a GPU, float32 on a CPU)."""
        from lmcompose.models.loading import default_dtype

        return self.dtype or default_dtype(self.device)

    def load_model(self, progress: Progress | None = None) -> LM:
        """The model these settings name, loaded with their dtype, device and placement."""
        from lmcompose.models.loading import load_model

        return load_model(
            self.model,
            dtype=self.effective_dtype,
            device=self.device,
            progress=progress,
            device_map=self.device_map,
            max_memory=self.max_memory,
            revision=self.revision,
        )

    def context(self, progress: Progress | None = None) -> Context:
        """The Context these settings give a run: seed, device, dtype, corpora, data folder."""
        return Context(
            seed=self.seed,
            device=self.device,
            dtype=self.effective_dtype,
            progress=progress or Progress(),
            ppl_corpus=self.ppl_corpus,
            calibration_corpus=self.calibration_corpus,
            data_dir=Path(self.data_dir).expanduser().resolve() if self.data_dir else None,
        )

    def numerics(self, metrics: Sequence[Metric]) -> dict[str, object]:
        """The ``numerics:`` a run of these settings evaluating ``metrics`` records in this process."""
        threads = run_threads(self.threads, self.deterministic, current_threads())
        return record_numerics(threads, self.deterministic, metrics)

    def identity(
        self, edits: Mapping[Group, Sequence[EditRecord]] | None = None, digests: Mapping[str, str] | None = None
    ) -> dict[str, object]:
        """What makes this run the run it is (its id is a hash of it, :func:`~lmcompose.engine.driver.run_id`):
        the resolved settings, with the edit requests given by their digests (``edits``: each
        group's batch, as loaded; or ``digests``, as config.yaml's ``inputs.edits`` records
        them) in place of the settings that load them (dataset, source, count, skip_invalid) —
        so a run given its edits in Python is the run the CLI loads them for. Without edits
        those settings are left unset."""
        d = self.resolved()
        if edits is not None:
            digests = edit_digests(edits)
        empty = edits_digest([])  # a group without edits (config.yaml records it too) is no edit
        kept = {group: digest for group, digest in (digests or {}).items() if digest != empty}
        d.update(dataset=None, dataset_source=None, skip_invalid=False, edits=kept or None)
        return d

    def run_id(
        self, edits: Mapping[Group, Sequence[EditRecord]] | None = None, digests: Mapping[str, str] | None = None
    ) -> str:
        """The id of the run of these settings on ``edits`` (each group's edit requests) or on
        the edits of ``digests``."""
        return engine_run_id(self.identity(edits, digests))

    def load_edits(self, ctx: Context, replicates: int = 1) -> list[list[EditRecord]] | None:
        """The edit requests these settings ask for, one batch per replicate (None when no
        dataset is named and no step edits: then none are loaded); the bundled sample when a
        step edits and no dataset is named, with a note."""
        needs_edits = any(get_interventions().get(parse_step(s).name).kind == EDIT_KIND for s in self.steps)
        if not (self.dataset or self.edits or needs_edits):
            return None
        name = self.dataset or "records"
        if self.dataset is None:
            ctx.note("no --dataset given: using the bundled sample edits (dataset 'records')")
        return [
            load_edits(
                name, self.dataset_source, self.edits, self.seed, replicate=r, skip_invalid=self.skip_invalid, ctx=ctx
            )
            for r in range(replicates)
        ]


# --------------------------------------------------------------------------------------
# The Python API's arguments: checked by the settings' own shapes, so a wrong type gets the
# message the CLI gives for the same setting (prefixed by the function's name)
# --------------------------------------------------------------------------------------


def check_arguments(where: str, settings: type[RunSettings] = RunSettings, **values: Any) -> None:
    """``values`` (settings' fields; a folder or file may be a ``Path``) checked by
    ``settings``'s :meth:`~RunSettings.check_shapes`: one ConfigError naming ``where`` and the key."""
    paths = {"out", "save_model", "data_dir", "dataset_source"}
    plain = {k: os.fspath(v) if k in paths and isinstance(v, os.PathLike) else v for k, v in values.items()}
    settings(**plain).check_shapes(where)


def step_list(steps: object, where: str) -> list[StepInput]:
    """The steps of a Python call as a list: a string is whitespace-separated steps (as
    ``steps:`` in a config file, so ``"magnitude:sparsity=0.5"`` is one step, never its
    characters); anything that is not a list of steps is one ConfigError."""
    if isinstance(steps, str):
        steps = steps.split()
    if (
        isinstance(steps, Mapping)
        or not isinstance(steps, list | tuple)
        or not all(isinstance(s, str | Mapping | StepSpec | Intervention) for s in steps)
    ):
        raise expected(f"{where}: steps", STEPS_EXPECTED, steps)
    return list(cast("list[StepInput] | tuple[StepInput, ...]", steps))


def check_lm(lm: object, where: str) -> None:
    """``lm`` is a loaded model (an :class:`~lmcompose.models.handle.LM`), not its name."""
    from lmcompose.models.handle import LM

    if not isinstance(lm, LM):
        hint = f"lmcompose.load_model({lm!r})" if isinstance(lm, str | os.PathLike) else "lmcompose.load_model(NAME)"
        raise expected(f"{where}: lm", f"a loaded model ({hint})", lm)


def check_edit_records(edits: object, where: str, nested: bool = False) -> None:
    """``edits`` is None or a list of EditRecords (``nested``: or a list of such lists, one
    per replicate), e.g. what :func:`load_edits` returns."""
    if edits is None:
        return
    batches = (
        edits
        if nested and isinstance(edits, list | tuple) and edits and not isinstance(edits[0], EditRecord)
        else [edits]
    )
    if not all(isinstance(b, list | tuple) and all(isinstance(e, EditRecord) for e in b) for b in batches):
        raise ConfigError(
            f"{where}: edits: expected a list of edit requests, as lmcompose.load_edits(DATASET, limit=N) returns; "
            f"got {describe_value(edits)}"
        )


def check_context(ctx: object, where: str) -> None:
    if ctx is not None and not isinstance(ctx, Context):
        raise expected(f"{where}: ctx", "an lmcompose.Context or None", ctx)


def check_replicate(replicate: object, where: str) -> None:
    """``replicate`` (which replicate's batch, 0 = the first) is a whole number >= 0."""
    check_value(replicate, int, Check(minimum=0, example="0"), f"{where}: replicate")


def metric_names(metrics: object) -> object:
    """``metrics`` for the shape check: names as given, metric objects left out (they are built)."""
    if isinstance(metrics, list | tuple) and metrics and all(isinstance(m, Metric) for m in metrics):
        return None
    return list(metrics) if isinstance(metrics, tuple) else metrics


# --------------------------------------------------------------------------------------
# Evaluation and composition
# --------------------------------------------------------------------------------------


def compose(
    lm: LM,
    steps: Sequence[StepInput],
    *,
    edits: Sequence[EditRecord] | None = None,
    out: str | Path | None = None,
    policy: str = "project",
    metrics: Sequence[str] | Sequence[Metric] | None = None,
    metric_options: Mapping[str, Mapping[str, object]] | None = None,
    seed: int = 0,
    ctx: Context | None = None,
    run_id: str | None = None,
    replicate: int = 0,
    config: Mapping[str, object] | None = None,
    save_model: str | Path | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    deterministic: bool = False,
) -> list[Row]:
    """Apply ``steps`` to ``lm`` in order, evaluating every metric on the base model and after
    each step; return the rows (also appended to ``out/results.jsonl`` when ``out`` is set).
    ``steps`` and ``metrics`` read as in a config file (a string of steps is split on spaces,
    of metrics on commas); an argument of the wrong type is one ConfigError, before anything
    is written.
    ``save_model``: a folder for the final model (:mod:`lmcompose.engine.saving`; an existing,
    non-empty folder only with ``overwrite``).

    ``config`` (optional) is written to ``out/config.yaml`` together with versions, the
    base model's fingerprint and the numerics (:mod:`lmcompose.engine.numerics`). Rerunning
    into the same folder with the same run id skips the evaluations already recorded there;
    a folder of another run is refused, and so is a resume with other numerics.

    ``threads``: torch's thread count for the run (None: its current pool; 1 when
    ``deterministic``). ``deterministic``: ``torch.use_deterministic_algorithms(True)`` for
    the run (restored after); an op without a deterministic kernel is one UsageError naming it.
    """
    where = "compose()"
    check_lm(lm, where)
    steps = step_list(steps, where)
    check_edit_records(edits, where)
    check_context(ctx, where)
    check_arguments(
        where,
        out=out,
        policy=policy,
        metrics=metric_names(metrics),
        metric_options=metric_options or {},
        seed=seed,
        save_model=save_model,
        overwrite=overwrite,
        threads=threads,
        deterministic=deterministic,
    )
    check_replicate(replicate, where)
    interventions = [s if isinstance(s, Intervention) else build_intervention(parse_step(s)) for s in steps]
    metric_objs = resolve_metrics(metrics, metric_options)
    ctx = ctx or Context(seed=seed)
    check_field(DataSettings, "seed", ctx.seed, f"{where}: ctx.seed")
    if edits is not None:
        ctx.edits = list(edits)
    if any(s.kind == EDIT_KIND for s in interventions) and not ctx.edits:
        raise UsageError("an edit step needs edit requests: pass --dataset NAME and --edits N (or edits= in Python)")
    group: Group = (None, replicate)
    batches = {group: list(ctx.edits)} if ctx.edits else {}
    settings = call_settings(
        RunSettings, lm, steps, ctx, out, seed, policy, metric_objs if metrics else None, metric_options
    )
    identity = settings.identity(batches)
    if replicate:
        identity["replicate"] = replicate  # another cell of the same settings
    run_id = run_id or engine_run_id(identity)
    planned = [
        PlannedStep(s.name, {}, s.kind, f"{i}:{s.name}", s.reruns_on_recompress()) for i, s in enumerate(interventions)
    ]
    actions = Plan.actions(range(len(planned)), planned, policy)
    order = [s.name for s in interventions]
    plan = Plan([Cell(f"run|r{replicate}", tuple(order), None, group, actions)], run_id=run_id, policy=policy)

    def build(action: Action) -> Intervention:
        step = interventions[action.index]
        return type(step)(step.config) if action.again else step

    save = None
    if save_model is not None:
        from lmcompose.engine.saving import SaveTargets, check_apart_from_run, check_save_folder

        if out is not None:
            check_apart_from_run(save_model, out, "save_model", f"the run folder {out} (out)")
        target = check_save_folder(save_model, overwrite)
        save = SaveTargets.for_cells(
            plan, plan.cells, {plan.cells[0].id: target}, overwrite=overwrite, extra={"model": lm.name}
        )
    folder = RunFolder(out, run_id, "run", settings.resolved() if config is None else config) if out else None
    record = {
        "order": order,
        "steps_resolved": [{"name": s.name, "kind": s.kind, "config": config_to_dict(s.config)} for s in interventions],
        "policy": policy,
        "seed": seed,
        "notes": ctx.notes,
    }
    outcome = execute(
        plan,
        folder,
        metric_objs,
        Loaded(lm, ctx, {group: list(ctx.edits)}),
        threads=threads,
        deterministic=deterministic,
        default_threads=current_threads(),
        build=build,
        save=save,
        record=record,
    )
    return outcome.rows


def step_setting(step: StepInput) -> StepSpec:
    """A step as the settings hold it (the CLI's ``name:field=value``); a built intervention
    with its whole config."""
    if isinstance(step, Intervention):
        return StepSpec(step.name, config_to_dict(step.config))
    return parse_step(step)


def call_settings(
    cls: type[_Settings],
    lm: LM,
    steps: Sequence[StepInput],
    ctx: Context,
    out: str | os.PathLike[str] | None,
    seed: int,
    policy: str,
    metrics: Sequence[Metric] | None,
    metric_options: Mapping[str, Mapping[str, object]] | None,
    **more: Any,  # the settings' own fields (a sweep's vary, orders, ...), checked by their check_shapes
) -> _Settings:
    """The settings a Python call stands for: what the CLI resolves for the same run (so its
    id is the CLI's), from the call's arguments and what its context carries (the corpora,
    dtype, device and data folder :meth:`RunSettings.context` would give it)."""
    return cls(
        model=lm.name,
        steps=[step_setting(s) for s in steps],
        out=os.fspath(out) if out is not None else None,
        seed=seed,
        policy=policy,
        metrics=[m.name for m in metrics] if metrics else None,
        metric_options={k: dict(v) for k, v in (metric_options or {}).items()},
        device=ctx.device,
        dtype=ctx.dtype,
        ppl_corpus=ctx.ppl_corpus,
        calibration_corpus=ctx.calibration_corpus,
        data_dir=os.fspath(ctx.data_dir) if ctx.data_dir is not None else None,
        **more,
    )


def resolve_metrics(
    metrics: Sequence[str] | Sequence[Metric] | None, options: Mapping[str, Mapping[str, object]] | None
) -> list[Metric]:
    """Metric objects as given, or built by name with their options (None: every metric; a
    string is comma-separated names, as ``metrics:`` in a config file)."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if metrics and all(isinstance(m, Metric) for m in metrics):
        return list(metrics)  # type: ignore[arg-type]
    return build_metrics(metrics, options)  # type: ignore[arg-type]


class _LoadArguments(TypedDict, total=False):
    """The arguments of :meth:`EditDataset.load` a call passes (``replicate`` and
    ``skip_invalid`` only when set, so a dataset written before them still loads)."""

    source: str | Path | None
    limit: int | None
    seed: int | None
    replicate: int
    skip_invalid: bool


def load_edits(
    dataset: str,
    source: str | Path | None = None,
    limit: int | None = None,
    seed: int | None = 0,
    replicate: int = 0,
    skip_invalid: bool = False,
    ctx: Context | None = None,
) -> list[EditRecord]:
    """Load edit requests from a registered edit dataset (``limit`` records, replicate
    ``replicate`` of a seeded permutation), from ``ctx.data_dir`` (else LMCOMPOSE_DATA_DIR).
    Notes (sample data used, records skipped) go to ``ctx`` when given."""
    where = "load_edits()"

    if not isinstance(dataset, str) or not dataset.strip():
        raise ConfigError(
            f"{where}: dataset: expected an edit dataset's name (`lmcompose list datasets`); "
            f"got {describe_value(dataset)}"
        )
    if source is not None and not isinstance(source, str | os.PathLike):
        raise expected(f"{where}: source", "a file, URL, hub:ID or sample", source)
    check_field(DataSettings, "edits", limit, f"{where}: limit (the number of edit requests, --edits)")
    if seed is not None:
        check_field(DataSettings, "seed", seed, f"{where}: seed")
    check_replicate(replicate, where)
    check_field(DataSettings, "skip_invalid", skip_invalid, f"{where}: skip_invalid")
    check_context(ctx, where)
    ds = edit_dataset_class(dataset)()
    if ctx is not None and ctx.data_dir is not None:
        ds.data_dir = ctx.data_dir
    kwargs: _LoadArguments = {"source": source, "limit": limit, "seed": seed}
    if replicate:
        kwargs["replicate"] = replicate
    if skip_invalid:
        kwargs["skip_invalid"] = True
    records = ds.load(**kwargs)
    if ctx is not None:
        for note in getattr(ds, "notes", []):
            ctx.note(note)
    return records


def load_unedited(
    dataset: str,
    batches: Sequence[Sequence[EditRecord]],
    source: str | Path | None = None,
    seed: int | None = 0,
    skip_invalid: bool = False,
    ctx: Context | None = None,
) -> list[list[EditRecord]]:
    """The control records of each edit batch (``batches``: one per replicate, in order): the
    records of ``dataset`` that no batch edits (none shares a prompt with an edit request) and
    that have a true target, as many as the batch has, taken in turn from the seeded
    permutation the batches were drawn from (``seed``) — so replicate r's controls follow
    replicate r-1's and no two replicates share one while the dataset has enough. Their true
    targets' NLL is the control of Figure 5 (``unedited_nll``). A dataset with too few such
    records gives fewer (shared between replicates when it must), with a note in ``ctx``."""
    ds = edit_dataset_class(dataset)()
    if ctx is not None and ctx.data_dir is not None:
        ds.data_dir = ctx.data_dir
    kwargs: _LoadArguments = {"source": source, "limit": None, "seed": seed}
    if skip_invalid:
        kwargs["skip_invalid"] = True
    everything = ds.load(**kwargs)
    edited = {r.prompt for b in batches for r in b}
    rest = [r for r in everything if r.target_true and r.prompt not in edited]
    out: list[list[EditRecord]] = []
    start = 0
    for batch in batches:
        n = min(len(batch), len(rest))
        out.append([rest[(start + i) % len(rest)] for i in range(n)] if rest else [])
        start += len(batch)
    wanted = sum(len(b) for b in batches)
    if ctx is not None and len(rest) < wanted:
        ctx.note(
            f"{dataset}: {len(rest)} record(s) with a true target are left beside the {wanted} edit requests, "
            + (
                "so no unedited_nll (the control of Figure 5) is measured"
                if not rest
                else "so the control records of unedited_nll are fewer than the edits or shared between replicates"
            )
        )
    return out


def edit_dataset_class(name: str) -> type[EditDataset]:
    """The class registered as dataset ``name``, checked to be an :class:`EditDataset` (what it
    is, not what its registration says): a text corpus or anything else is one ConfigError."""
    from lmcompose.api import TextCorpus

    entry = get_datasets().entry(name)
    cls = entry.load()
    if isinstance(cls, type) and issubclass(cls, EditDataset):
        return cls
    what = "a text corpus" if isinstance(cls, type) and issubclass(cls, TextCorpus) else f"{cls!r}"
    raise ConfigError(
        f"dataset {name!r} is {what}, not an edit dataset (a subclass of lmcompose.EditDataset); "
        "name an edit dataset (`lmcompose list datasets`)"
    )


def check_dataset_source(name: str, source: str | Path | None) -> None:
    """Refuse a ``source`` edit dataset ``name`` cannot read (a local file that is not there,
    a folder, a malformed URL or hub spec), without reading it; a dataset that is not a
    :class:`~lmcompose.edit_data.JsonEditDataset` reads its sources its own way, when it loads."""
    from lmcompose.edit_data import JsonEditDataset

    cls = edit_dataset_class(name)
    if issubclass(cls, JsonEditDataset):
        cls.check_source(source)


_Settings = TypeVar("_Settings", bound=RunSettings)


def prepare(settings: _Settings) -> tuple[_Settings, tuple[list[Intervention], list[Metric]]]:
    """What `run` and `sweep` do before anything is written: apply the protocol, validate,
    check the data folder, the device against this machine and the corpora asked for.
    Returns the effective settings and what validation built. The data folder reaches the
    run through its context (``settings.context()``); the environment is never written."""
    from lmcompose.models.loading import resolve_device, resolve_device_map

    settings = settings.with_protocol()
    checked = settings.validate()
    if settings.save_model:
        from lmcompose.engine.saving import check_save_folder

        check_save_folder(settings.save_model, settings.overwrite)  # the target first: it needs no model
    if getattr(settings, "save_cells", None) is not None and settings.out:
        from lmcompose.engine.saving import models_folder

        models_folder(settings.out)  # OUT/models must not lead back into the run folder
    settings.check_inputs()
    resolve_device(settings.device)
    if settings.device_map is not None:
        resolve_device_map(settings.device_map)
    from lmcompose.corpora import check_corpora

    check_corpora(settings.ppl_corpus, settings.calibration_corpus, settings.context())
    return settings, checked


def run(settings: RunSettings, progress: Progress | None = None) -> tuple[list[Row], Context]:
    """Validate, load the edits, check the run folder, load the model, and compose (the
    `lmcompose run` command)."""
    settings, (_steps, metrics) = prepare(settings)
    ctx = settings.context(progress)
    batches = settings.load_edits(ctx)
    edits = batches[0] if batches is not None else None
    run_id = settings.run_id({(None, 0): edits} if edits else None)
    if settings.out:  # refuse a folder of another run, or a resume with other numerics, before loading the model
        RunFolder(settings.out, run_id, "run", settings.resolved(), settings.numerics(metrics)).check()
    lm = settings.load_model(ctx.progress)
    rows = compose(
        lm,
        settings.steps,
        edits=edits,
        out=settings.out,
        policy=settings.policy,
        metrics=settings.metrics,
        metric_options=settings.metric_options,
        seed=settings.seed,
        ctx=ctx,
        run_id=run_id,
        config=settings.resolved(),
        save_model=settings.save_model,
        overwrite=settings.overwrite,
        threads=settings.threads,
        deterministic=settings.deterministic,
    )
    return rows, ctx
