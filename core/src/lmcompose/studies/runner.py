"""Running a study: on this machine, on a Ray cluster, or as one shard of N; merging shards.

A study turns its file into one plan (:meth:`Study.plan`) and hands it to the driver
(:func:`lmcompose.engine.driver.execute`), as a run and a sweep do: one run folder writes its
rows whichever way it ran, so a study resumes exactly after a kill, and a merge of shard
folders (of a study or a sweep) is what a single run would write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lmcompose.api import Context, EditRecord, Metric, Progress
from lmcompose.api.config import expected
from lmcompose.composability import row_numbers
from lmcompose.engine.driver import EXECUTORS, Loaded, RayOptions, check_executor, execute, missing_cells, parse_shard
from lmcompose.engine.plan import Group, Plan, PlanCounts
from lmcompose.engine.progress import ProgressEvent
from lmcompose.engine.ray_executor import TaskFailure
from lmcompose.engine.run_folder import NUMERICS_KEY, RunFolder, describe_changes, row_cell_id
from lmcompose.engine.threads import check_threads
from lmcompose.errors import ConfigError, DataError, UsageError, describe_value
from lmcompose.studies.spec import Study, folder_slug, load_study

if TYPE_CHECKING:
    from lmcompose.engine.ray_executor import ExecutorOptions, Prepared
    from lmcompose.engine.run_folder import RunInputs
    from lmcompose.models.handle import LM
    from lmcompose.reports import Report, StudyReport

__all__ = ["EXECUTORS", "StudyResult", "StudyWork", "merge_studies", "parse_shard", "run_study"]


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
    report: StudyReport | None = None

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class StudyWork:
    """A study's work as a Ray worker rebuilds it: the validated file's mapping and where
    to run (pickles; everything else is loaded in the worker)."""

    data: dict[str, object]
    name: str
    device: str
    data_dir: Path | None = None

    def study(self) -> Study:
        study = Study.from_mapping(self.data, name=self.name)
        study.device = self.device
        study.data_dir = self.data_dir
        return study

    def prepare(self, threads: int, deterministic: bool = False) -> Prepared:
        from lmcompose.engine.numerics import set_deterministic
        from lmcompose.engine.threads import set_threads
        from lmcompose.models.loading import load_model

        set_threads(threads)
        set_deterministic(deterministic)
        study = self.study()
        ctx = study_context(study, Progress())
        edits = study.load_edits(ctx)
        metrics = study_metrics(study)
        unedited = study_controls(study, ctx, edits, metrics)
        lm = load_model(study.model, dtype=study.dtype, device=study.device, progress=ctx.progress)
        kwargs: ExecutorOptions = {
            "snapshots": study.snapshots,
            "topk": study.topk,
            "topk_edit": study.topk_edit,
            "unedited": unedited,
        }
        return study.plan(), lm, ctx, metrics, edits, kwargs

    def inputs(
        self,
        lm: LM,
        edits: Mapping[Group, list[EditRecord]],
        unedited: Mapping[Group, list[EditRecord]] | None = None,
    ) -> RunInputs:
        from lmcompose.engine.run_folder import run_inputs

        return run_inputs(lm, edits, study_context(self.study(), Progress()), unedited)

    def numerics(self, threads: int, deterministic: bool) -> dict[str, object]:
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


def _check_multi_hop_prompts(study: Study, edits: Mapping[Group, list[EditRecord]]) -> None:
    """Edits with multi-hop questions (MQuAKE) and an edit metric that asks them after a
    few-shot prompt file: the file is in the study's data folder (one DataError naming it)."""
    if not any(r.multi_hop is not None for batch in edits.values() for r in batch):
        return
    from lmcompose.metrics._multi_hop import load_protocol

    for metric in study_metrics(study):
        protocol = getattr(getattr(metric, "config", None), "multi_hop", None)
        if metric.requires_edits and isinstance(protocol, str):
            load_protocol(protocol, study.data_dir)


def study_metrics(study: Study) -> list[Metric]:
    from lmcompose.steps import build_metrics

    return build_metrics(study.metrics, study.resolved_metric_options)


def study_controls(
    study: Study, ctx: Context, edits: Mapping[Group, list[EditRecord]], metrics: list[Metric]
) -> dict[Group, list[EditRecord]]:
    """Each group's control records (``unedited_nll``), when an edit metric is evaluated."""
    if not any(m.requires_edits for m in metrics):
        return {}
    return study.load_unedited(ctx, edits)


def default_out(study: Study) -> Path:
    """``runs/study-NAME-ID``, one folder inside runs/ whatever the name (a name from a
    file's stem or the API is made one path component)."""
    return Path("runs") / f"study-{folder_slug(study.name)}-{study.id}"


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
        raise expected(f"{where}: study", "a study file or lmcompose.load_study(FILE)", study)
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
        raise expected(f"{where}: ray_address", "host:port, ray://host:port or auto", ray_address)
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
    cpus, gpus = check_executor(executor, ray_address, cpus_per_task, gpus_per_task, study.device, study.resources)
    study.check_inputs(model=False)  # the datasets' sources, the corpora: as `validate` does
    metrics = study_metrics(study)
    numerics = None
    if executor == "local":
        from lmcompose.engine.numerics import record_numerics, run_threads
        from lmcompose.models.loading import resolve_device

        resolve_device(study.device)  # before anything is written
        threads = run_threads(threads, deterministic, None)
        numerics = record_numerics(threads, deterministic, metrics)  # checked before loading
    from lmcompose.corpora import check_corpora

    check_corpora(
        study.budgets.get("ppl_corpus"), study.budgets.get("calibration_corpus"), study_context(study, Progress())
    )
    progress = progress or Progress()
    out_dir = Path(out) if out is not None else default_out(study)
    plan = study.plan()
    counts = study.counts(cells=plan.cells)
    config = {
        **study.resolved(),
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
    record = {"cells": len(plan.cells), "counts": {k: v.as_dict() for k, v in counts.items()}, "versions": versions()}
    folder = RunFolder(out_dir, study.id, "study", config, numerics)
    # everything that can refuse is checked before the folder is written: the folder itself,
    # then the edits and (on this machine) the model; Ray's workers load them as the driver did
    folder.check()
    ctx = study_context(study, progress)
    edits = study.load_edits(ctx)
    if study.topk > 0:
        from lmcompose.engine.executor import check_topk_edit

        check_topk_edit(study.topk_edit, edits)  # the edit the top-k record reads is in every batch
    _check_multi_hop_prompts(study, edits)
    study.check_model()
    loaded = None
    if executor == "local":
        from lmcompose.models.loading import load_model

        lm = load_model(study.model, dtype=study.dtype, device=study.device, progress=progress)
        loaded = Loaded(lm, ctx, edits, study_controls(study, ctx, edits, metrics))
    work = StudyWork(study.data, study.name, study.device, study.data_dir)
    outcome = execute(
        plan,
        folder,
        metrics,
        loaded,
        ray=RayOptions(work, ray_address, cpus, gpus) if executor == "ray" else None,
        threads=threads,
        deterministic=deterministic,
        snapshots=study.snapshots,
        topk=study.topk,
        topk_edit=study.topk_edit,
        save=save,
        only=only,
        record=record,
        on_progress=on_progress,
        keep_rows=False,
    )
    result = StudyResult(
        out_dir,
        study,
        outcome.written,
        counts,
        outcome.executed,
        outcome.references,
        time.perf_counter() - start,
        outcome.missing,
        outcome.failures,
    )
    if report and not outcome.missing and shard_t is None:
        from lmcompose.reports.study import write_study_report

        result.report = write_study_report(out_dir, plots=plots)
    return result


def _check_shard_counts(configs: Sequence[tuple[Path, Mapping[str, object], object]]) -> None:
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


#: the kinds of run folder a ``--shard I/N`` writes, and ``merge`` combines
MERGEABLE = ("study", "sweep")


def merge_studies(
    sources: Sequence[str | Path], out: str | Path, *, report: bool = True, plots: bool = True
) -> tuple[int, list[str], Report | StudyReport | None]:
    """Combine the shard folders of one study or sweep into ``out`` (created, or resumed if
    it holds the same one), each row with its per-edit scores. Refuses folders of different
    studies or sweeps or inputs, a results.jsonl with a line that cannot be read as a row
    (before anything is merged), and rows that disagree. Returns (rows added, cells still
    missing, the report or None)."""
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
                f"{path} is not a run folder (no config.yaml): give the --out folders of `lmcompose study --shard` "
                "(or `lmcompose sweep --shard`)"
            )
        data = read_yaml(cfg)
        if data.get("kind") not in MERGEABLE:
            raise DataError(
                f"{path} holds a {data.get('kind', 'run')!r}, not a study or sweep: merge combines the shards of "
                "one study or sweep"
            )
        rows, problems = read_rows_checked(path / "results.jsonl")
        if problems:
            raise DataError(
                f"{path}: {problems[0]}; nothing was merged: fix or remove that line (or rerun the shard into a new "
                "folder)"
            )
        configs.append((path, data, rows))
    first_path, first, _ = configs[0]
    kind = str(first["kind"])
    for path, data, _ in configs[1:]:
        if data.get("run_id") != first.get("run_id"):
            changes = describe_changes(first, data)
            raise UsageError(
                f"{path} holds {data.get('kind')} {data.get('name', '')!r} (id {data.get('run_id')}) and {first_path} "
                f"holds {first.get('name', '')!r} (id {first.get('run_id')}): merge combines shards of one {kind}"
                + ("; they differ in " + "; ".join(changes) if changes else "")
            )
        changed = describe_changes(
            _recorded(first, "inputs", first_path), _recorded(data, "inputs", path), ignore=frozenset()
        )
        if changed:
            raise UsageError(
                f"{path} and {first_path} ran on different inputs ({'; '.join(changed)}): their rows cannot be one "
                f"{kind}"
            )
        _check_shard_numerics(first_path, first, path, data)
    _check_shard_counts(configs)
    plan = _recorded_plan(first_path, first)
    config = {k: v for k, v in first.items() if k not in {"run_id", "kind", "created", "shard", "inputs"}}
    config["merged_from"] = [str(p) for p, _, _ in configs]
    folder = RunFolder(out, plan.run_id, kind, config)
    added = 0
    with folder:
        folder.write_config(
            inputs=_recorded(first, "inputs", first_path), numerics=_recorded(first, NUMERICS_KEY, first_path)
        )
        have = {(row_cell_id(r), _position(r)): r for r in folder.rows()}
        for path, _, rows in configs:
            per_edit = read_per_edit(path, plan.run_id)
            for row in rows:
                if row.get("run_id") != plan.run_id or "position" not in row:
                    continue
                key = (row_cell_id(row), _position(row))
                if key in have:
                    if row_numbers(have[key]) != row_numbers(row):
                        raise DataError(
                            f"{path}: cell {key[0]} position {key[1]} disagrees with another shard's row "
                            f"(the shards did not run the same {kind}): nothing more was merged"
                        )
                    continue
                folder.append(row, per_edit.get(key))
                have[key] = row
                added += 1
        missing = missing_cells(plan, set(have))
        folder.status = "finished" if not missing else "incomplete"
    rep = None
    if report and not missing:
        from lmcompose.reports import write_report

        rep = write_report(out, plots=plots)
    return added, missing, rep


def _recorded_plan(path: Path, config: Mapping[str, object]) -> Plan:
    """The plan of the study or sweep a config.yaml records, checked to have its run id."""
    if config.get("kind") == "study":
        name = config.get("name")
        study = Study.from_mapping(_study_mapping(config), name=name if isinstance(name, str) else None)
        if study.id != config.get("run_id"):
            raise DataError(f"{path}/config.yaml does not describe study {config.get('run_id')} (edited by hand?)")
        return study.plan()
    from lmcompose.sweep import SweepSettings

    fields = SweepSettings.__dataclass_fields__
    settings = SweepSettings.from_mapping({k: v for k, v in config.items() if k in fields}, where=f"{path}/config.yaml")
    digests = _recorded(config, "inputs", path).get("edits")
    run_id = settings.run_id(digests=digests if isinstance(digests, Mapping) else None)
    if run_id != config.get("run_id"):
        raise DataError(f"{path}/config.yaml does not describe sweep {config.get('run_id')} (edited by hand?)")
    return Plan(settings.cells(), run_id=run_id, policy=settings.policy)


def _check_shard_numerics(
    first_path: Path, first: Mapping[str, object], path: Path, data: Mapping[str, object]
) -> None:
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


def _recorded(config: Mapping[str, object], key: str, path: Path) -> Mapping[str, object]:
    """The mapping a config.yaml records under ``key`` (inputs, numerics; {} when absent)."""
    value = config.get(key) or {}
    if not isinstance(value, Mapping):
        raise DataError(f"{path}/config.yaml: {key} is {describe_value(value)}, not a mapping (edited by hand?)")
    return value


def _position(row: Mapping[str, object]) -> int:
    """A row's position (read_rows keeps only rows whose position is a whole number)."""
    position = row["position"]
    if not isinstance(position, int):  # pragma: no cover - read_rows skips such a row
        raise DataError(f"a row of cell {row_cell_id(row)} has position {position!r}, not a whole number")
    return position


def _study_mapping(config: Mapping[str, object]) -> dict[str, object]:
    """The study file's mapping back from a config.yaml (the ``study`` key holds it)."""
    data = config.get("study")
    if not isinstance(data, Mapping):
        raise DataError("config.yaml holds no study mapping (written by an older lmcompose?): rerun the shards")
    return dict(data)
