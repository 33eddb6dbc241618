"""Running a study: on this machine, on a Ray cluster, or as one shard of N; merging shards.

All three write through one :class:`~lmcompose.engine.RunFolder` (results.jsonl, config.yaml,
a lock) and walk one plan (:meth:`Study.plan`), so a study resumes exactly after a kill
whichever way it ran, and a merge of shard folders is the study a single run would write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmcompose.api import Context, EditRecord, Metric, Progress
from lmcompose.composability import row_numbers
from lmcompose.engine.plan import MAX_CELLS, Group, Plan, PlanCounts
from lmcompose.engine.progress import ProgressEvent, StateProgress
from lmcompose.engine.ray_executor import TaskFailure, check_task_resources
from lmcompose.engine.run_folder import NUMERICS_KEY, RunFolder, describe_changes, row_cell_id
from lmcompose.engine.saving import SaveTargets
from lmcompose.engine.threads import check_threads
from lmcompose.errors import ConfigError, DataError, UsageError, describe_value
from lmcompose.studies.spec import Study, folder_slug, load_study

if TYPE_CHECKING:
    from lmcompose.models.handle import LM

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS", "StudyResult", "StudyWork", "merge_studies", "parse_shard", "run_study"]


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` or ``(I, N)`` (1-based: shard 1/2 and 2/2 together are the study) as (I, N),
    checked: 1 <= I <= N, and N no more than the cells a plan holds."""
    if text is None:
        return None
    if isinstance(text, tuple | list):
        if len(text) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in text):
            raise UsageError(f"--shard {text!r}: give I/N, e.g. '1/4' or (1, 4) (the first of four shards)")
        i, n = text
    else:
        left, slash, right = str(text).partition("/")
        if not slash or not left.strip().isdigit() or not right.strip().isdigit():
            raise UsageError(f"--shard {text!r}: write I/N, e.g. 1/4 (the first of four shards)")
        i, n = int(left), int(right)
    if not 1 <= n <= MAX_CELLS:
        raise UsageError(f"--shard {text!r}: N must be from 1 to {MAX_CELLS:,}, the most cells a plan holds (got {n})")
    if not 1 <= i <= n:
        raise UsageError(f"--shard {text!r}: I must be between 1 and N (got {i} of {n})")
    return i, n


@dataclass
class StudyResult:
    """What :func:`run_study` did: where, how much, and what is left."""

    folder: Path
    study: Study
    rows: int
    counts: dict[str, PlanCounts]
    executed: PlanCounts
    references: int = 0
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)
    failures: list[TaskFailure] = field(default_factory=list)
    report: Any = None

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class StudyWork:
    """A study's work as a Ray worker rebuilds it: the validated file's mapping and where
    to run (pickles; everything else is loaded in the worker)."""

    data: dict[str, Any]
    name: str
    device: str
    data_dir: Path | None = None

    def study(self) -> Study:
        study = Study.from_mapping(self.data, name=self.name)
        study.device = self.device
        study.data_dir = self.data_dir
        return study

    def prepare(
        self, threads: int, deterministic: bool = False
    ) -> tuple[Plan, Any, Context, list[Metric], dict[Group, list[EditRecord]], dict[str, Any]]:
        from lmcompose.engine.numerics import set_deterministic
        from lmcompose.engine.threads import set_threads
        from lmcompose.models.loading import load_model

        set_threads(threads)
        set_deterministic(deterministic)
        study = self.study()
        ctx = study_context(study, Progress())
        edits = study.load_edits(ctx)
        lm = load_model(study.model, dtype=study.dtype, device=study.device, progress=ctx.progress)
        metrics = study_metrics(study)
        return study.plan(), lm, ctx, metrics, edits, {"snapshots": study.snapshots, "topk": study.topk}

    def inputs(self, lm: LM, edits: Mapping[Group, list[EditRecord]]) -> dict[str, Any]:
        from lmcompose.engine.run_folder import run_inputs

        return run_inputs(lm, edits, study_context(self.study(), Progress()))

    def numerics(self, threads: int, deterministic: bool) -> dict[str, Any]:
        from lmcompose.engine.numerics import record_numerics

        return record_numerics(threads, deterministic, study_metrics(self.study()))


def study_context(study: Study, progress: Progress) -> Context:
    ctx = Context(seed=study.seed, device=study.device, dtype=study.dtype, progress=progress, data_dir=study.data_dir)
    if "calibration_samples" in study.budgets:
        ctx.calibration_samples = study.budgets["calibration_samples"]
    if "calibration_seqlen" in study.budgets:
        ctx.calibration_seqlen = study.budgets["calibration_seqlen"]
    ctx.ppl_corpus = study.budgets.get("ppl_corpus")
    ctx.calibration_corpus = study.budgets.get("calibration_corpus")
    return ctx


def study_metrics(study: Study) -> list[Metric]:
    from lmcompose.steps import build_metrics

    return build_metrics(study.metrics, study.resolved_metric_options)


def default_out(study: Study) -> Path:
    """``runs/study-NAME-ID``, one folder inside runs/ whatever the name (a name from a
    file's stem or the API is made one path component)."""
    return Path("runs") / f"study-{folder_slug(study.name)}-{study.id}"


def _missing(plan: Plan, done: set[tuple[str, int]], only: set[str] | None) -> list[str]:
    return [
        c.id for c in plan.cells if (only is None or c.id in only) and any((c.id, p) not in done for p in c.positions)
    ]


def run_study(
    study: Study | str | Path,
    *,
    out: str | Path | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    cpus_per_task: float | None = None,
    gpus_per_task: float | None = None,
    threads: int | None = None,
    deterministic: bool | None = None,
    shard: str | tuple[int, int] | None = None,
    device: str | None = None,
    data_dir: str | Path | None = None,
    progress: Progress | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    report: bool = True,
    plots: bool = True,
    save_cells: str | None = None,
) -> StudyResult:
    """Run (or resume) a study into ``out``; return what was done.

    ``executor``: ``local`` (this process, torch threads = the cores it may use, or
    ``threads``) or ``ray`` (``ray_address``, or a local cluster; each task asks for
    ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs, default from the study's
    ``resources``, and uses ``threads``, else its CPU request, as torch threads).
    ``deterministic`` (None: the study file's ``deterministic:``): torch's deterministic
    algorithms for the run, and 1 thread unless ``threads`` says otherwise. The thread
    count, deterministic mode, library versions and batch sizes are recorded in config.yaml
    (``numerics:``) and a resume with other values is refused. ``shard="I/N"`` runs part I
    of N of the plan (whole first-step subtrees; ``merge_studies`` combines the shard
    folders). ``on_progress`` is called with a :class:`ProgressEvent` after every model
    state. The report (Table 1, figures, flat table) is written when the run leaves the
    study complete. ``save_cells`` (``all`` or globs over cell ids) saves those cells' final
    models into ``out/models/`` (:mod:`lmcompose.engine.saving`). ``data_dir``: the data
    folder (default LMCOMPOSE_DATA_DIR), passed to every step and worker through the context.
    """
    from lmcompose.compose import check_arguments
    from lmcompose.engine.run_folder import versions
    from lmcompose.sweep import SweepSettings

    where = "run_study()"
    if not isinstance(study, Study | str | os.PathLike):
        raise ConfigError(
            f"{where}: study: expected a study file or lmcompose.load_study(FILE); got {describe_value(study)}"
        )
    check_arguments(
        where,
        SweepSettings,
        out=out,
        threads=threads,
        deterministic=bool(deterministic) if deterministic is None else deterministic,
        data_dir=data_dir,
        save_cells=save_cells,
        **({"device": device} if device is not None else {}),
    )
    if ray_address is not None and not isinstance(ray_address, str):
        raise ConfigError(
            f"{where}: ray_address: expected host:port, ray://host:port or auto; got {describe_value(ray_address)}"
        )
    if not isinstance(study, Study):
        study = load_study(study)
    if deterministic is None:
        deterministic = study.deterministic
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    if data_dir is not None:
        folder_path = Path(data_dir).expanduser()
        if not folder_path.is_dir():
            raise ConfigError(f"data folder {str(data_dir)!r} does not exist; name a folder laid out like shared/data")
        study.data_dir = folder_path.resolve()
    if device is not None:
        study.device = device
        if "dtype" not in study.data:
            from lmcompose.models.loading import default_dtype

            study.dtype = default_dtype(device)
    shard_t = parse_shard(shard)
    if threads is not None:
        check_threads(threads)  # on every executor, before a cluster starts or a folder is written
    cpus = cpus_per_task if cpus_per_task is not None else study.resources.get("cpus_per_task", 1.0)
    gpus = gpus_per_task if gpus_per_task is not None else study.resources.get("gpus_per_task", 0.0)
    check_task_resources(cpus, gpus)
    if executor == "local" and (cpus_per_task is not None or gpus_per_task is not None or ray_address is not None):
        raise UsageError("--cpus-per-task, --gpus-per-task and --ray-address are for --executor ray")
    if executor == "ray":
        from lmcompose.engine.ray_executor import check_address, check_ray

        check_ray()  # before anything is written
        if ray_address:
            check_address(ray_address)
    study.check_inputs(model=False)  # the datasets' sources, the corpora: as `validate` does
    if gpus > 0 and not str(study.device).startswith("cuda"):
        raise UsageError(
            f"--gpus-per-task {gpus:g} asks for GPUs but the study runs on device {study.device!r}; "
            "set device: cuda (or --device cuda)"
        )
    numerics = None
    if executor == "local":
        from lmcompose.engine.numerics import record_numerics, run_threads
        from lmcompose.models.loading import resolve_device

        resolve_device(study.device)  # before anything is written
        threads = run_threads(threads, deterministic, None)
        numerics = record_numerics(threads, deterministic, study_metrics(study))  # checked before loading
    from lmcompose.corpora import check_corpora

    check_corpora(
        study.budgets.get("ppl_corpus"), study.budgets.get("calibration_corpus"), study_context(study, Progress())
    )
    progress = progress or Progress()
    out_dir = Path(out) if out is not None else default_out(study)
    plan = study.plan()
    counts = study.counts(cells=plan.cells)
    resolved = study.resolved()
    config = {
        **resolved,
        "study": study.data,
        "shard": f"{shard_t[0]}/{shard_t[1]}" if shard_t else None,
        "executor": executor,
    }
    only = plan.shard_cells(shard_t[0] - 1, shard_t[1]) if shard_t else None
    save = None
    if save_cells is not None:
        from lmcompose.engine.saving import MODELS_FOLDER, SaveTargets

        save = SaveTargets.for_study(plan, save_cells, out_dir / MODELS_FOLDER, extra={"model": study.model}, only=only)
    start = time.perf_counter()
    extra = {"cells": len(plan.cells), "counts": {k: v.as_dict() for k, v in counts.items()}, "versions": versions()}
    outcome = _Outcome()
    folder = RunFolder(out_dir, study.id, "study", config, numerics)
    # everything that can refuse is checked before the folder is written: the folder itself,
    # then the edits and (on this machine) the model; Ray's workers load them as the driver did
    folder.check()
    ctx = study_context(study, progress)
    edits = study.load_edits(ctx)
    study.check_model()
    lm = None
    if executor == "local":
        from lmcompose.models.loading import load_model

        lm = load_model(study.model, dtype=study.dtype, device=study.device, progress=progress)
    with folder:
        if save is not None:
            save.clean_stale()
        if executor == "local":
            _run_local(
                study, plan, folder, only, threads, deterministic, (ctx, edits, lm), on_progress, extra, outcome, save
            )
        else:
            _run_ray(
                study,
                plan,
                folder,
                only,
                ray_address,
                cpus,
                gpus,
                threads,
                deterministic,
                on_progress,
                extra,
                outcome,
                save,
            )
        missing = _missing(plan, folder.done(), only)
        folder.status = "finished" if not missing else "incomplete"
    result = StudyResult(
        out_dir,
        study,
        outcome.rows,
        counts,
        outcome.executed,
        outcome.references,
        time.perf_counter() - start,
        missing,
        outcome.failures,
    )
    if report and not missing and shard_t is None:
        from lmcompose.studies.report import write_study_report

        result.report = write_study_report(out_dir, plots=plots)
    return result


@dataclass
class _Outcome:
    rows: int = 0
    executed: PlanCounts = field(default_factory=lambda: PlanCounts({}, 0))
    references: int = 0
    failures: list[TaskFailure] = field(default_factory=list)


def _run_local(
    study: Study,
    plan: Plan,
    folder: RunFolder,
    only: set[str] | None,
    threads: int | None,
    deterministic: bool,
    loaded: tuple[Context, dict[Group, list[EditRecord]], LM],
    on_progress: Callable[[ProgressEvent], None] | None,
    extra: dict[str, Any],
    outcome: _Outcome,
    save: SaveTargets | None = None,
) -> None:
    """This process: record the inputs of the ``loaded`` (context, edits, model), walk the
    needed part of the plan."""
    from lmcompose.engine.executor import Executor
    from lmcompose.engine.numerics import numerics_for
    from lmcompose.engine.run_folder import run_inputs

    metrics = study_metrics(study)
    ctx, edits, lm = loaded
    with numerics_for(threads, deterministic, metrics) as numerics:
        inputs = run_inputs(lm, edits, ctx)
        folder.write_config(
            inputs=inputs,
            numerics=numerics,
            model_fingerprint=inputs["model_fingerprint"],
            model_source=lm.source,
            **extra,
        )
        if not plan.mark_needed(folder.done(), only, force=save.missing() if save is not None else None):
            return
        tracker = StateProgress(plan, on_progress)
        snapshot_dir = None
        if study.snapshots == "disk":
            snapshot_dir = folder.path / ".snapshots"
            snapshot_dir.mkdir(exist_ok=True)
        ex = Executor(
            plan,
            lm,
            ctx,
            metrics,
            edits,
            snapshots=study.snapshots,
            snapshot_dir=snapshot_dir,
            topk=study.topk,
            save=save,
        )
        for state in ex.run():
            for row, per_edit in state.rows_with_scores():
                folder.append(row, per_edit)
            outcome.rows += len(state.rows)
            tracker.update(state.node, state.seconds, len(state.rows))
        outcome.executed, outcome.references = ex.counts, ex.references


def _run_ray(
    study: Study,
    plan: Plan,
    folder: RunFolder,
    only: set[str] | None,
    address: str | None,
    cpus: float,
    gpus: float,
    threads: int | None,
    deterministic: bool,
    on_progress: Callable[[ProgressEvent], None] | None,
    extra: dict[str, Any],
    outcome: _Outcome,
    save: SaveTargets | None = None,
) -> None:
    """Ray tasks: a probe reads the inputs and numerics on a worker, then the subtrees run as tasks."""
    from lmcompose.engine.ray_executor import run_on_ray

    trackers: list[StateProgress] = []

    def write_config(inputs: dict[str, Any], numerics: dict[str, Any]) -> None:
        folder.write_config(inputs=inputs, numerics=numerics, model_fingerprint=inputs["model_fingerprint"], **extra)

    def on_state(node: Any, item: dict[str, Any]) -> None:
        if not trackers:  # the plan is marked (done rows known) only once the probe has run
            trackers.append(StateProgress(plan, on_progress))
        outcome.rows += len(item["rows"])
        trackers[0].update(node, item["seconds"], len(item["rows"]))

    work = StudyWork(study.data, study.name, study.device, study.data_dir)
    ray_outcome = run_on_ray(
        work,
        plan,
        folder,
        address=address,
        cpus_per_task=cpus,
        gpus_per_task=gpus,
        threads=threads,
        deterministic=deterministic,
        only=only,
        on_state=on_state,
        write_config=write_config,
        save=save,
    )
    outcome.failures = ray_outcome.failures
    outcome.executed = PlanCounts(ray_outcome.states, ray_outcome.evaluations)
    outcome.references = ray_outcome.references


def _check_shard_counts(configs: Sequence[tuple[Path, Mapping[str, Any], Any]]) -> None:
    """Shard folders to merge were cut with one ``--shard I/N`` count: parts of two splits
    overlap in some cells and leave others to neither, so merging them hides the gaps. A
    folder of the whole study (no shard) goes with any."""
    split = [(path, str(data["shard"])) for path, data, *_rows in configs if data.get("shard")]
    counts = {shard.partition("/")[2] for _path, shard in split}
    if len(counts) > 1:
        listed = "; ".join(f"{path}: shard {shard}" for path, shard in split)
        raise UsageError(
            f"the shards to merge were cut with different counts ({listed}): merge the parts of one "
            "--shard I/N split (the same N), or rerun the missing parts with that N"
        )


def merge_studies(
    sources: Sequence[str | Path], out: str | Path, *, report: bool = True, plots: bool = True
) -> tuple[int, list[str], Any]:
    """Combine the shard folders of one study into ``out`` (created, or resumed if it holds
    the same study), each row with its per-edit scores. Refuses folders of different studies
    or inputs, a results.jsonl with a line that cannot be read as a row (before anything is
    merged), and rows that disagree. Returns (rows added, cells still missing, the report or
    None)."""
    from lmcompose.results import read_per_edit, read_rows_checked, read_yaml

    if (
        isinstance(sources, str | os.PathLike)
        or not isinstance(sources, Sequence)
        or not all(isinstance(s, str | os.PathLike) for s in sources)
    ):
        raise UsageError(f"merge_studies(): sources: expected a list of shard folders; got {describe_value(sources)}")
    if not isinstance(out, str | os.PathLike):
        raise UsageError(f"merge_studies(): out: expected a folder path; got {describe_value(out)}")
    if not sources:
        raise UsageError("merge needs at least one shard folder")
    configs = []
    for src in sources:
        path = Path(src)
        cfg = path / "config.yaml"
        if not cfg.exists():
            raise DataError(
                f"{path} is not a run folder (no config.yaml): give the --out folders of `lmcompose study --shard`"
            )
        data = read_yaml(cfg)
        if data.get("kind") != "study":
            raise DataError(
                f"{path} holds a {data.get('kind', 'run')!r}, not a study: merge combines shards of one study"
            )
        rows, problems = read_rows_checked(path / "results.jsonl")
        if problems:
            raise DataError(
                f"{path}: {problems[0]}; nothing was merged: fix or remove that line (or rerun the shard into a new "
                "folder)"
            )
        configs.append((path, data, rows))
    first_path, first, _ = configs[0]
    for path, data, _ in configs[1:]:
        if data.get("run_id") != first.get("run_id"):
            changes = describe_changes(first, data)
            raise UsageError(
                f"{path} holds study {data.get('name')!r} (id {data.get('run_id')}) and {first_path} holds "
                f"{first.get('name')!r} (id {first.get('run_id')}): merge combines shards of one study"
                + ("; they differ in " + "; ".join(changes) if changes else "")
            )
        changed = describe_changes(first.get("inputs") or {}, data.get("inputs") or {}, ignore=frozenset())
        if changed:
            raise UsageError(
                f"{path} and {first_path} ran on different inputs ({'; '.join(changed)}): their rows cannot be one "
                f"study"
            )
        _check_shard_numerics(first_path, first, path, data)
    _check_shard_counts(configs)
    study = Study.from_mapping(_study_mapping(first), name=first.get("name"))
    if study.id != first.get("run_id"):
        raise DataError(f"{first_path}/config.yaml does not describe study {first.get('run_id')} (edited by hand?)")
    config = {k: v for k, v in first.items() if k not in {"run_id", "kind", "created", "shard", "inputs"}}
    config["merged_from"] = [str(p) for p, _, _ in configs]
    folder = RunFolder(out, study.id, "study", config)
    added = 0
    with folder:
        folder.write_config(inputs=first.get("inputs"), numerics=first.get(NUMERICS_KEY))
        have = {(row_cell_id(r), int(r["position"])): r for r in folder.rows()}
        for path, _, rows in configs:
            per_edit = read_per_edit(path, study.id)
            for row in rows:
                if row.get("run_id") != study.id or "position" not in row:
                    continue
                key = (row_cell_id(row), int(row["position"]))
                if key in have:
                    if row_numbers(have[key]) != row_numbers(row):
                        raise DataError(
                            f"{path}: cell {key[0]} position {key[1]} disagrees with another shard's row "
                            "(the shards did not run the same study): nothing more was merged"
                        )
                    continue
                folder.append(row, per_edit.get(key))
                have[key] = row
                added += 1
        missing = _missing(study.plan(), set(have), None)
        folder.status = "finished" if not missing else "incomplete"
    rep = None
    if report and not missing:
        from lmcompose.studies.report import write_study_report

        rep = write_study_report(out, plots=plots)
    return added, missing, rep


def _check_shard_numerics(first_path: Path, first: Mapping[str, Any], path: Path, data: Mapping[str, Any]) -> None:
    """Refuse shards computed with other numerics (each value both record): their rows differ
    in the last digits, so together they are not the study one run would write."""
    from lmcompose.engine.numerics import numerics_changes

    a, b = first.get(NUMERICS_KEY), data.get(NUMERICS_KEY)
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return
    changes = numerics_changes({k: v for k, v in a.items() if k in b}, b)
    if changes:
        what = "; ".join(f"{key}: {old} in {first_path}, {new} in {path}" for key, old, new in changes)
        raise UsageError(
            f"{path} and {first_path} were computed with other numerics ({what}): their rows would not match "
            "the ones one run writes; rerun the shards with the same --threads, --deterministic and software"
        )


def _study_mapping(config: Mapping[str, Any]) -> dict[str, Any]:
    """The study file's mapping back from a config.yaml (the ``study`` key holds it)."""
    data = config.get("study")
    if not isinstance(data, Mapping):
        raise DataError("config.yaml holds no study mapping (written by an older lmcompose?): rerun the shards")
    return dict(data)
