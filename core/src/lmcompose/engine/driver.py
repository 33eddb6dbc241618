"""The driver: the one sequence every command that writes results goes through.

``run``, ``sweep`` and ``study`` only turn their settings into a :class:`~lmcompose.engine.Plan`
(a run is a one-cell plan, a sweep one grid, a study many) and the inputs it needs; then
:func:`execute` does the rest, the same way for all three:

1. the run's id is a hash of its identity (:func:`run_id`: its settings, without those that
   say where it runs, with its edit requests by their digests), so the same run started from
   the CLI or from Python has the same id and resumes in the same folder;
2. the run folder (:class:`~lmcompose.engine.RunFolder`, optional for the Python API) is
   opened, its config.yaml written — or, on a resume, checked against the numerics and inputs
   this process computes with;
3. the plan is marked with what is left (the folder's rows, a shard's cells, the models to
   save);
4. an executor walks what is left — in this process (:class:`~lmcompose.engine.Executor`), or
   as Ray tasks (:func:`~lmcompose.engine.ray_executor.run_on_ray`) — and every row it yields
   is appended to the folder.

Importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from lmcompose.engine.plan import MAX_CELLS, Group, Plan, PlanCounts
from lmcompose.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from lmcompose.api import Context, EditRecord, Intervention, Metric
    from lmcompose.engine.executor import Row
    from lmcompose.engine.plan import Action, Node
    from lmcompose.engine.progress import ProgressEvent
    from lmcompose.engine.ray_executor import RayWork, StateItem, TaskFailure
    from lmcompose.engine.run_folder import RunFolder, RunInputs
    from lmcompose.engine.saving import SaveTargets
    from lmcompose.models.handle import LM

#: Settings that say where or how a run computes, not what: never part of its id.
WHERE_KEYS = frozenset({"out", "device", "data_dir", "device_map", "max_memory", "snapshots", "resources"})
#: Where a plan's work runs: this process, or Ray tasks.
EXECUTORS = ("local", "ray")

__all__ = [
    "EXECUTORS",
    "WHERE_KEYS",
    "Loaded",
    "Outcome",
    "RayOptions",
    "check_executor",
    "execute",
    "missing_cells",
    "parse_shard",
    "run_id",
]


def run_id(identity: Mapping[str, object]) -> str:
    """The id of the run whose resolved settings are ``identity``: the first 12 hex digits
    of the SHA-1 of its JSON (sorted keys), leaving out :data:`WHERE_KEYS`. The one recipe
    of every run, sweep and study id."""
    key = {k: v for k, v in identity.items() if k not in WHERE_KEYS}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` or ``(I, N)`` (1-based: shard 1/2 and 2/2 together are the whole plan) as
    (I, N), checked: 1 <= I <= N, and N no more than the cells a plan holds."""
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
class RayOptions:
    """Run the plan as Ray tasks: ``work`` rebuilds the plan, model and data in a worker
    (it pickles), each task asks for ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs."""

    work: RayWork
    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0


def check_executor(
    executor: str,
    ray_address: str | None,
    cpus_per_task: float | None,
    gpus_per_task: float | None,
    device: str,
    resources: Mapping[str, float] | None = None,
    what: str = "study",
) -> tuple[float, float]:
    """Check how a run is asked to execute, before anything is written or a cluster starts:
    the executor's name, the Ray flags only with ``--executor ray`` (Ray installed, the
    cluster answering), GPUs only on a CUDA device (``what``: the study or sweep). Returns the
    CPUs and GPUs per task (``resources``: the defaults, a study's ``resources:``)."""
    from lmcompose.engine.ray_executor import check_task_resources

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    defaults = dict(resources or {})
    cpus = cpus_per_task if cpus_per_task is not None else defaults.get("cpus_per_task", 1.0)
    gpus = gpus_per_task if gpus_per_task is not None else defaults.get("gpus_per_task", 0.0)
    check_task_resources(cpus, gpus)
    if executor == "local" and (cpus_per_task is not None or gpus_per_task is not None or ray_address is not None):
        raise UsageError("--cpus-per-task, --gpus-per-task and --ray-address are for --executor ray")
    if executor == "ray":
        from lmcompose.engine.ray_executor import check_address, check_ray

        check_ray()
        if ray_address:
            check_address(ray_address)
    if gpus > 0 and not str(device).startswith("cuda"):
        raise UsageError(
            f"--gpus-per-task {gpus:g} asks for GPUs but the {what} runs on device {device!r}; "
            "set device: cuda (or --device cuda)"
        )
    return cpus, gpus


@dataclass
class Loaded:
    """A plan's inputs loaded in this process: the base model, the context, each group's edit
    requests and (when the run measures them) its control records."""

    lm: LM
    ctx: Context
    edits: dict[Group, list[EditRecord]]
    unedited: dict[Group, list[EditRecord]] = field(default_factory=dict)


@dataclass
class Outcome:
    """What :func:`execute` did: the rows it wrote (kept when asked), how many, the model
    states and evaluations computed, the base-model references computed, the Ray tasks that
    failed twice, and the cells still missing rows (those of a shard: ``only``)."""

    rows: list[Row] = field(default_factory=list)
    written: int = 0
    executed: PlanCounts = field(default_factory=lambda: PlanCounts({}, 0))
    references: int = 0
    failures: list[TaskFailure] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class _ExecutorArgs(TypedDict):
    """What :func:`execute` hands the executor of this process."""

    snapshots: str
    topk: int
    topk_edit: int
    build: Callable[[Action], Intervention] | None
    save: SaveTargets | None


def missing_cells(plan: Plan, done: set[tuple[str, int]], only: set[str] | None = None) -> list[str]:
    """The ids of the cells (in ``only``, when given) with a row not in ``done``."""
    return [
        c.id for c in plan.cells if (only is None or c.id in only) and any((c.id, p) not in done for p in c.positions)
    ]


def execute(
    plan: Plan,
    folder: RunFolder | None,
    metrics: Sequence[Metric],
    loaded: Loaded | None = None,
    *,
    ray: RayOptions | None = None,
    threads: int | None = None,
    deterministic: bool = False,
    default_threads: int | None = None,
    snapshots: str = "memory",
    topk: int = 0,
    topk_edit: int = 0,
    build: Callable[[Action], Intervention] | None = None,
    save: SaveTargets | None = None,
    only: set[str] | None = None,
    record: Mapping[str, object] | None = None,
    bar: str | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    keep_rows: bool = True,
) -> Outcome:
    """Walk what is left of ``plan`` and write its rows to ``folder`` (None: only return them).

    The work runs in this process on ``loaded`` (the model, context and edits), or as Ray
    tasks (``ray``; then nothing is loaded here). ``threads`` and ``deterministic`` set torch
    for the walk (:func:`~lmcompose.engine.numerics.numerics_for`; ``default_threads`` when
    ``threads`` is None and not deterministic: None = the cores this process may use).
    ``snapshots``, ``topk``, ``topk_edit`` and ``build`` go to the executor; ``save`` names the
    states to write to model folders; ``only`` the cells to run (a shard). ``record``: what
    config.yaml holds beside the settings, the inputs and the numerics (written on the first
    run into the folder; a resume checks the numerics and inputs instead). ``bar``: the label
    of a progress bar over the states with rows; ``on_progress``: called after every state."""
    outcome = Outcome()
    record = dict(record or {})
    with folder if folder is not None else nullcontext():
        if save is not None:
            save.clean_stale()
        if ray is not None:
            if folder is None:
                raise UsageError("--executor ray needs a run folder (--out) for the tasks' rows")
            show = (None, on_progress, keep_rows)
            _execute_on_ray(plan, folder, ray, (threads, deterministic), save, only, record, show, outcome, metrics)
        elif loaded is None:
            raise ValueError("execute() needs the loaded model and data, or Ray options")
        else:
            _execute_here(
                plan,
                folder,
                metrics,
                loaded,
                (threads, deterministic, default_threads),
                {"snapshots": snapshots, "topk": topk, "topk_edit": topk_edit, "build": build, "save": save},
                only,
                record,
                (bar, on_progress, keep_rows),
                outcome,
            )
        if folder is not None:
            outcome.missing = missing_cells(plan, folder.done(), only)
            folder.status = "finished" if not outcome.missing else "incomplete"
    return outcome


def _execute_here(
    plan: Plan,
    folder: RunFolder | None,
    metrics: Sequence[Metric],
    loaded: Loaded,
    numerics_args: tuple[int | None, bool, int | None],
    executor_args: _ExecutorArgs,
    only: set[str] | None,
    record: dict[str, object],
    show: tuple[str | None, Callable[[ProgressEvent], None] | None, bool],
    outcome: Outcome,
) -> None:
    """This process: record the inputs of ``loaded``, walk the needed part of the plan."""
    from lmcompose.engine.executor import Executor
    from lmcompose.engine.numerics import numerics_for
    from lmcompose.engine.progress import StateProgress
    from lmcompose.engine.run_folder import run_inputs

    lm, ctx = loaded.lm, loaded.ctx
    save = executor_args["save"]
    bar, on_progress, keep_rows = show
    with numerics_for(*numerics_args[:2], metrics, numerics_args[2]) as numerics:
        references = None
        done: set[tuple[str, int]] = set()
        if folder is not None:
            inputs = _used(run_inputs(lm, loaded.edits, ctx, loaded.unedited), plan, metrics)
            references = folder.references(inputs["model_fingerprint"])
            folder.write_config(
                inputs=inputs,
                numerics=numerics,
                model_fingerprint=inputs["model_fingerprint"],
                model_source=lm.source,
                **{"versions": inputs["versions"], **record},
            )
            done = folder.done()
        if not plan.mark_needed(done, only, force=save.missing() if save is not None else None):
            return
        snapshot_dir = None
        if folder is not None and executor_args["snapshots"] == "disk":
            snapshot_dir = folder.path / ".snapshots"
            snapshot_dir.mkdir(exist_ok=True)
        tracker = StateProgress(plan, on_progress)
        executor = Executor(
            plan,
            lm,
            ctx,
            metrics,
            loaded.edits,
            snapshot_dir=snapshot_dir,
            unedited=loaded.unedited,
            references=references,
            **executor_args,
        )
        states = sum(1 for n in plan.root.walk() if n.pending)
        with ctx.progress.task(bar, states) if bar else nullcontext(lambda _n: None) as advance:
            for state in executor.run():
                for row, per_edit in state.rows_with_scores():
                    if folder is not None:
                        folder.append(row, per_edit)
                    if keep_rows:
                        outcome.rows.append(row)
                outcome.written += len(state.rows)
                tracker.update(state.node, state.seconds, len(state.rows))
                if state.rows:
                    advance(1)
        outcome.executed, outcome.references = executor.counts, executor.references


def _used(inputs: RunInputs, plan: Plan, metrics: Sequence[Metric]) -> RunInputs:
    """``inputs`` with its versions cut to the distributions ``plan`` and ``metrics`` use
    (:func:`lmcompose.engine.run_folder.used_versions`)."""
    from lmcompose.engine.run_folder import used_versions

    if not isinstance(inputs.get("versions"), Mapping):
        return inputs
    steps = {a.name for c in plan.cells for a in c.actions}
    datasets = {c.group[0] for c in plan.cells}
    return {**inputs, "versions": used_versions(inputs["versions"], steps, [m.name for m in metrics], datasets)}


def _execute_on_ray(
    plan: Plan,
    folder: RunFolder,
    ray: RayOptions,
    numerics_args: tuple[int | None, bool],
    save: SaveTargets | None,
    only: set[str] | None,
    record: dict[str, object],
    show: tuple[str | None, Callable[[ProgressEvent], None] | None, bool],
    outcome: Outcome,
    metrics: Sequence[Metric],
) -> None:
    """Ray tasks: a probe reads the inputs and numerics on a worker, then the subtrees run as tasks."""
    from lmcompose.engine.progress import StateProgress
    from lmcompose.engine.ray_executor import run_on_ray

    _bar, on_progress, keep_rows = show
    trackers: list[StateProgress] = []

    def write_config(inputs: RunInputs, numerics: dict[str, object]) -> None:
        inputs = _used(inputs, plan, metrics)
        folder.write_config(
            inputs=inputs,
            numerics=numerics,
            model_fingerprint=inputs["model_fingerprint"],
            **{"versions": inputs["versions"], **record},
        )

    def on_state(node: Node, item: StateItem) -> None:
        if not trackers:  # the plan is marked (done rows known) only once the probe has run
            trackers.append(StateProgress(plan, on_progress))
        outcome.written += len(item["rows"])
        if keep_rows:
            outcome.rows.extend(item["rows"])
        trackers[0].update(node, item["seconds"], len(item["rows"]))

    result = run_on_ray(
        ray.work,
        plan,
        folder,
        address=ray.address,
        cpus_per_task=ray.cpus_per_task,
        gpus_per_task=ray.gpus_per_task,
        threads=numerics_args[0],
        deterministic=numerics_args[1],
        only=only,
        on_state=on_state,
        write_config=write_config,
        save=save,
    )
    outcome.failures = result.failures
    outcome.executed = PlanCounts(result.states, result.evaluations)
    outcome.references = result.references
