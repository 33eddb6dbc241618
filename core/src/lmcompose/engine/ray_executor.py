"""The Ray executor: the plan's independent subtrees as Ray tasks, rows (each with its
per-edit scores) streamed back to the driver, which alone appends them to the run folder.

The driver cuts the plan with :meth:`Plan.tasks` (the base model's rows, and one task per
needed first-step subtree, so no model state is computed twice), submits each with the CPU
and GPU request asked for (fractional GPUs let several small-model tasks share one GPU), and
appends the rows of each model state as its task yields them. A task that raises (or whose
worker dies) is submitted once more with the rows written so far marked done; a second
failure is reported with the cells it leaves unwritten, and every other task's rows are kept.
A killed driver loses nothing: rerunning resumes from results.jsonl like a local run.

The edit metrics' base-model references (one teacher-forced pass of the unedited model per
edit batch) are computed once for the whole study: the probe task, which loads the model
anyway, computes those the run folder does not hold yet; the driver stores them in the run
folder (``references/``) and hands every task all of them, so no task passes the base
model again. What the partition gives up: each task loads the base model itself.

Ray is an optional extra (``pip install 'lmcompose[ray]'``); nothing here imports it until a
run asks for it.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, TypedDict

from lmcompose._limits import MAX_GPUS_PER_TASK, MAX_THREADS
from lmcompose.engine.numerics import run_threads
from lmcompose.engine.plan import Group, Node, Plan, Task
from lmcompose.engine.run_folder import RunFolder, RunInputs
from lmcompose.engine.saving import SaveTargets
from lmcompose.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from lmcompose.api import Context, EditRecord, Metric
    from lmcompose.engine.executor import Row
    from lmcompose.engine.schema import PerEditLine
    from lmcompose.models.handle import LM

# environment a worker needs to find the same data, caches and plugins as the driver
FORWARDED_ENV = (
    "LMCOMPOSE_DATA_DIR",
    "LMCOMPOSE_CACHE_DIR",
    "LMCOMPOSE_LOAD_PLUGINS",
    "LMCOMPOSE_BLOCK_PLUGINS",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "TOKENIZERS_PARALLELISM",
    "TRANSFORMERS_OFFLINE",
)
CONNECT_TIMEOUT_S = 5.0

__all__ = [
    "ExecutorOptions",
    "Prepared",
    "RayOutcome",
    "RayWork",
    "StateItem",
    "TaskFailure",
    "check_address",
    "check_ray",
    "check_task_resources",
    "run_on_ray",
]


class ExecutorOptions(TypedDict, total=False):
    """The keyword arguments of :class:`~lmcompose.engine.executor.Executor` a worker's
    :meth:`RayWork.prepare` gives (``unedited``: the control records of each group)."""

    snapshots: str
    topk: int
    topk_edit: int
    unedited: Mapping[Group, list[EditRecord]] | None


#: what :meth:`RayWork.prepare` rebuilds in a worker
Prepared = tuple["Plan", "LM", "Context", "list[Metric]", "dict[Group, list[EditRecord]]", ExecutorOptions]


class StateItem(TypedDict):
    """What a task yields per model state it reached: the node's id, its rows and their
    per-edit lines, the seconds it took, the kind of step computed there (None where nothing
    was computed), the evaluations made since the last item and the references computed so far."""

    node: str
    rows: list[Row]
    per_edit: list[PerEditLine | None]
    seconds: float
    kind: str | None
    evaluations: int
    references: int


class RayWork(Protocol):
    """What a worker needs to rebuild its part of the run (must pickle)."""

    def prepare(self, threads: int, deterministic: bool = False) -> Prepared:
        """(plan, lm, ctx, metrics, edits, executor keyword arguments), in the worker, with
        torch's thread count and deterministic mode set for the task."""

    def inputs(
        self,
        lm: LM,
        edits: Mapping[Group, list[EditRecord]],
        unedited: Mapping[Group, list[EditRecord]] | None = None,
    ) -> RunInputs:
        """What the run's numbers depend on (checked by the run folder); ``unedited``: the
        control records ``prepare`` gave (its keyword arguments' ``unedited``)."""

    def numerics(self, threads: int, deterministic: bool) -> dict[str, object]:
        """The ``numerics:`` record of a task in this worker (checked by the run folder)."""


@dataclass
class RayOutcome:
    """What the tasks computed (summed over tasks, retries included) and what failed."""

    failures: list[TaskFailure]
    states: dict[str, int]
    evaluations: int
    references: int


@dataclass
class TaskFailure:
    """A task that failed twice: its id, the cells it leaves unwritten, the error."""

    task: str
    cells: list[str]
    error: str

    def line(self) -> str:
        shown = ", ".join(self.cells[:6]) + (f" and {len(self.cells) - 6} more" if len(self.cells) > 6 else "")
        return f"task {self.task} failed twice ({self.error}); cells left unwritten: {shown}"


def check_task_resources(cpus_per_task: float, gpus_per_task: float) -> None:
    """What one Ray task asks for: CPUs above 0 and at most MAX_THREADS (they are its torch
    threads too), GPUs from 0 to MAX_GPUS_PER_TASK (fractions share one GPU); NaN and
    infinity refused. One ConfigError giving the range, before a cluster starts."""
    for flag, value, low, high, what in (
        ("--cpus-per-task", cpus_per_task, 0.0, MAX_THREADS, "a number of CPUs above 0"),
        ("--gpus-per-task", gpus_per_task, 0.0, MAX_GPUS_PER_TASK, "a number of GPUs from 0 (fractions share one GPU)"),
    ):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < low or value > high or (flag == "--cpus-per-task" and value == low):
            raise ConfigError(f"{flag} {value!r}: give {what} to {high:g}")


def _ray() -> ModuleType:
    check_ray()
    import ray

    return ray


def check_ray() -> None:
    """Refuse ``--executor ray`` where Ray is not installed (without importing it)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UsageError("--executor ray needs Ray: pip install 'lmcompose[ray]' (make install installs it)")


def check_address(address: str) -> str:
    """Check that a Ray cluster answers at ``address`` (``host:port``, ``ray://host:port`` or
    ``auto``) within a few seconds: ``ray.init`` would otherwise wait minutes for an address
    that is wrong. Returns the address to pass to ``ray.init``."""
    if address == "auto":
        return address
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r}: give host:port (e.g. 10.0.0.5:6379), ray://host:10001, or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UsageError(
            f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
            "start one with `ray start --head`, or check the address"
        ) from None
    return address


def _init(ray: ModuleType, address: str | None) -> bool:
    """Connect (or start a local cluster); True if this call started Ray."""
    if address:
        address = check_address(address)
    if ray.is_initialized():
        return False
    kwargs: dict[str, object] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UsageError(f"--ray-address {address}: could not connect to Ray ({exc})") from None
    return True


def _worker_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _probe(
    work: RayWork, threads: int, deterministic: bool, env: dict[str, str]
) -> tuple[RunInputs, dict[str, object]]:
    """(inputs, numerics) as a worker sees them."""
    os.environ.update(env)
    _plan, lm, _ctx, _metrics, edits, kw = work.prepare(threads, deterministic)
    return work.inputs(lm, edits, kw.get("unedited")), work.numerics(threads, deterministic)


def _probe_and_reference(
    work: RayWork,
    threads: int,
    deterministic: bool,
    env: dict[str, str],
    done: set[tuple[str, int]],
    only: set[str] | None,
    stored: Mapping[str, Mapping[str, object]],
) -> tuple[RunInputs, dict[str, object], dict[str, dict[str, object]]]:
    """(inputs, numerics, references) as a worker sees them: the references are the base-model
    references (:meth:`lmcompose.Metric.reference`) of every edit batch with rows pending
    (``done``, ``only``) that ``stored`` (the run folder's) does not hold, computed here on the
    model this probe loaded anyway."""
    from lmcompose.api import References
    from lmcompose.engine.executor import record_references

    os.environ.update(env)
    plan, lm, ctx, metrics, edits, kw = work.prepare(threads, deterministic)
    inputs = work.inputs(lm, edits, kw.get("unedited"))
    ctx.references = References(inputs.get("model_fingerprint"), stored)
    plan.mark_needed(done, only)
    record_references(lm, ctx, metrics, [list(edits.get(g, [])) for g in plan.groups([plan.root])])
    new = {k: r for k, r in ctx.references.records().items() if k not in stored}
    return inputs, work.numerics(threads, deterministic), new


def _task(
    work: RayWork,
    task: Task,
    done: set[tuple[str, int]],
    only: set[str] | None,
    threads: int,
    deterministic: bool,
    fingerprint: str | None,
    env: dict[str, str],
    save: SaveTargets | None = None,
    references: Mapping[str, Mapping[str, object]] | None = None,
) -> Iterator[StateItem]:
    os.environ.update(env)
    from lmcompose.api import References
    from lmcompose.engine.executor import Executor

    plan, lm, ctx, metrics, edits, kwargs = work.prepare(threads, deterministic)
    if fingerprint is not None and lm.fingerprint() != fingerprint:
        raise RuntimeError(
            f"the model loaded on {socket.gethostname()} differs from the driver's probe "
            f"(fingerprint {lm.fingerprint()} != {fingerprint}); every node needs the same model files"
        )
    plan.mark_needed(done, only, force=save.missing() if save is not None else None)
    # the study's base-model references, from the run folder and the probe: none computed here
    held = References(fingerprint, references)
    executor = Executor(plan, lm, ctx, metrics, edits, save=save, references=held, **kwargs)
    evaluations = 0
    for state in executor.run(nodes=task.nodes, root=task.root):
        kind = state.node.action.kind if state.computed and state.node.action is not None else None
        yield {
            "node": state.node.id,
            "rows": state.rows,
            "per_edit": state.per_edit,
            "seconds": state.seconds,
            "kind": kind,
            "evaluations": executor.evaluations - evaluations,
            "references": executor.references,
        }
        evaluations = executor.evaluations


def run_on_ray(
    work: RayWork,
    plan: Plan,
    folder: RunFolder,
    *,
    address: str | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
    threads: int | None = None,
    deterministic: bool = False,
    only: set[str] | None = None,
    on_state: Callable[[Node, StateItem], None] | None = None,
    write_config: Callable[[RunInputs, dict[str, object]], None] | None = None,
    save: SaveTargets | None = None,
) -> RayOutcome:
    """Run the needed part of ``plan`` as Ray tasks; the rows go to ``folder`` (this process
    is the only writer). Each task sets torch's thread count (``threads``, else 1 when
    ``deterministic``, else its CPU request) and deterministic mode itself.
    ``write_config(inputs, numerics)`` records what a probe task reads on a worker (the
    inputs, and the numerics a task computes with there); ``on_state(node, item)`` is called
    after each model state's rows are written;
    ``save``: the states the tasks write to model folders (a path every node can reach).
    The probe computes the base-model references ``folder`` does not hold yet; they are
    stored there and handed to every task. Returns what the tasks computed (the references:
    the probe's and any a task had to compute itself) and the tasks that failed twice."""
    check_task_resources(cpus_per_task, gpus_per_task)
    ray = _ray()
    started = _init(ray, address)
    try:
        n_threads = run_threads(threads, deterministic, max(1, math.ceil(cpus_per_task)))
        env = _worker_env()
        opts = {"num_cpus": cpus_per_task, "num_gpus": gpus_per_task, "max_retries": 0}
        probe = ray.remote(_probe_and_reference).options(**opts)
        stored = folder.reference_records()
        inputs, numerics, computed = ray.get(
            probe.remote(work, n_threads, deterministic, env, folder.done(), only, stored)
        )
        if write_config is not None:
            write_config(inputs, numerics)
        folder.write_references(computed)
        held = {**stored, **computed}
        plan.mark_needed(folder.done(), only, force=save.missing() if save is not None else None)
        remote = ray.remote(_task).options(**opts)

        def submit(task: Task) -> object:  # a Ray ObjectRefGenerator
            fingerprint = inputs.get("model_fingerprint")
            return remote.remote(
                work, task, folder.done(), only, n_threads, deterministic, fingerprint, env, save, held
            )

        running: dict[object, tuple[Task, int]] = {submit(t): (t, 0) for t in plan.tasks()}
        failures: list[TaskFailure] = []
        states: dict[str, int] = {}
        evaluations = 0
        references: dict[object, int] = {}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            gen = ready[0]
            task, attempt = running[gen]
            try:
                item: StateItem = ray.get(next(gen))
            except StopIteration:
                del running[gen]
                continue
            except Exception as exc:  # noqa: BLE001 - a task may fail in any way; report it
                del running[gen]
                if attempt == 0:
                    running[submit(task)] = (task, 1)
                else:
                    done = folder.done()
                    wanted = set(task.cells)
                    left = [
                        c.id
                        for c in plan.cells
                        if c.id in wanted
                        and any((c.id, p) not in done for p in ([0] if task.root else c.positions[1:]))
                    ]
                    failures.append(TaskFailure(task.id, left, _describe(exc)))
                continue
            for row, per_edit in zip(item["rows"], item.get("per_edit") or [None] * len(item["rows"]), strict=True):
                folder.append(row, per_edit)
            if item["kind"] is not None:
                states[item["kind"]] = states.get(item["kind"], 0) + 1
            evaluations += item["evaluations"]
            references[gen] = item["references"]
            if on_state is not None:
                on_state(plan.node(item["node"]), item)
        return RayOutcome(failures, states, evaluations, len(computed) + sum(references.values()))
    finally:
        if started:
            ray.shutdown()


def _describe(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
