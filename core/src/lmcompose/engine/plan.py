"""The plan: every cell of a run, sweep or study, and the prefix tree of model states they share.

A **cell** is one composed sequence on one edit batch: an order of steps, the varied value,
and its **group** — the (dataset, replicate) whose edit requests the editors apply and the
edit metrics score. It writes one row per position (0 = the base model). A **node** of the
tree is the model after a prefix of a cell's actions; two cells share a node when their
prefixes are the same actions with the same resolved configs and — once an ``edit`` action
is in the prefix — the same group. So the edited dense model is one node per group, and a
compressed model is one node per compressor config, serving every dataset and replicate.

A plan is built from settings alone (no model, no data): the executor walks it, the run
folder tells it which rows are already written (:meth:`Plan.mark_needed`), and
:meth:`Plan.tasks` cuts it into independent subtrees for Ray tasks and shards.

Assumption: a step whose kind is not ``edit`` does not read the edit requests (compressors
calibrate on text), so its result does not depend on the group.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypedDict

from lmcompose.engine.policy import EDIT_KIND, rerun_after
from lmcompose.errors import ConfigError

#: The most cells one plan holds; a larger grid is refused before anything is enumerated.
MAX_CELLS = 100_000


def check_cell_count(count: int, where: str) -> None:
    """Refuse a grid too large to plan (a typo such as ``replicates: 1000000000000``)."""
    if count > MAX_CELLS:
        raise ConfigError(
            f"{where}: this asks for {count:,} cells, more than the {MAX_CELLS:,} one plan holds; "
            "give fewer replicates, values or orders"
        )


@dataclass(frozen=True)
class GridFactor:
    """One factor of a grid's size, by the setting that gives it: ``key`` (as the user
    wrote it: ``replicates``, ``compressors[0].vary.sparsity``), how many, and of what."""

    key: str
    count: int
    what: str


def check_grid_size(parts: Sequence[Sequence[GridFactor]], prefix: str = "") -> int:
    """The cells of a grid that is the sum of ``parts``, each the product of its factors
    (a sweep is one part; a study one per compressor entry), counted from the settings'
    sizes alone, before any cell or step is built. Over :data:`MAX_CELLS`, one ConfigError
    that names the setting making it large (the largest factor of the largest part), the
    product, and ``prefix`` (the file)."""
    sizes = [_product(f.count for f in part) for part in parts]
    total = sum(sizes)
    if total <= MAX_CELLS:
        return total
    largest = max(range(len(parts)), key=lambda i: sizes[i])
    blamed = max(parts[largest], key=lambda f: f.count)  # the first of equals: the order the caller lists
    breakdown = " × ".join(f"{f.count:,} {f.what}" for f in parts[largest])
    if len(parts) > 1:
        breakdown = f"the largest of {len(parts)} parts: {breakdown} = {sizes[largest]:,}"
    raise ConfigError(
        f"{prefix}{blamed.key}: this asks for {total:,} cells, more than the {MAX_CELLS:,} one plan holds "
        f"({breakdown}); give fewer {blamed.what}"
    )


def _product(counts: Iterable[int]) -> int:
    out = 1
    for c in counts:
        out *= c
    return out


Group = tuple[str | None, int]  # (dataset, replicate); dataset None for runs and sweeps
#: a node's key: (its group, the tree keys of its actions), or ``("root",)`` for the base model
NodeKey = tuple[Group | None, tuple[str, ...]] | tuple[str]

__all__ = [
    "Action",
    "Cell",
    "GridFactor",
    "Group",
    "Node",
    "Plan",
    "PlanCounts",
    "PlannedStep",
    "Task",
    "canonical_key",
]


def canonical_key(name: str, config: Mapping[str, object]) -> str:
    """A step's identity in the tree: its name and fully resolved config (so ``wanda`` and
    ``wanda:structure=unstructured`` are the same state)."""
    return name + json.dumps(dict(config), sort_keys=True, default=str)


@dataclass(frozen=True, eq=False)
class Action:
    """One step of a cell's path: a sequence step, or a compressor's re-run (recompress).

    ``index`` is the step's place in the cell's sequence (as written, before ordering);
    ``key`` its canonical identity. ``variant`` runs the step under other numerical
    conditions — ``calibration_seed`` (the seed of its calibration windows, instead of the
    run's seed) and ``threads`` (torch's thread count while it is applied and its state
    evaluated) — as a study's ``reseed: calibration`` and ``noise_floor`` ask; a variant is a
    state of its own in the tree (empty: the plain step, with the ids it always had)."""

    name: str
    overrides: Mapping[str, object]
    kind: str
    key: str
    index: int
    again: bool = False
    variant: tuple[tuple[str, int], ...] = ()

    @property
    def tree_key(self) -> str:
        text = ("again:" if self.again else "") + self.key
        return text + ("@" + json.dumps(dict(self.variant), sort_keys=True) if self.variant else "")

    def varied(self, **variant: int | None) -> Action:
        """This action under ``variant`` (merged over its own; None values are dropped)."""
        merged = {**dict(self.variant), **variant}
        return replace(self, variant=tuple(sorted((k, v) for k, v in merged.items() if v is not None)))


@dataclass(frozen=True)
class PlannedStep:
    """One step of a sequence as a plan needs it: its name, the fields it sets (``overrides``),
    its kind, its canonical identity (``key``, :func:`canonical_key`) and whether the
    ``recompress`` policy re-runs it (:meth:`lmcompose.Intervention.reruns_on_recompress`)."""

    name: str
    overrides: Mapping[str, object]
    kind: str
    key: str
    reruns_on_recompress: bool


@dataclass(eq=False)
class Cell:
    """One composed sequence: ``actions`` in order, on group ``group``; ``value`` is the varied
    field's value (None for a run). ``labels`` are constant row fields of a study (dataset,
    entry, ...)."""

    id: str
    names: tuple[str, ...]
    value: object
    group: Group
    actions: tuple[Action, ...]
    labels: dict[str, str | None] = field(default_factory=dict)
    vary_label: str | None = None
    vary_field: str | None = None
    strength_normalized: float | None = None

    @property
    def replicate(self) -> int:
        return self.group[1]

    @property
    def positions(self) -> range:
        return range(len(self.actions) + 1)


@dataclass(eq=False)
class Node:
    key: NodeKey
    action: Action | None
    depth: int
    group: Group | None  # the group this state depends on; None = shared by every group
    children: dict[NodeKey, Node] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    pending: list[Cell] = field(default_factory=list)
    needed: bool = False
    label: str = "base model"

    @property
    def id(self) -> str:
        """A stable name of this state (the same in every process that builds the plan)."""
        key = self.key
        if self.action is None or len(key) != 2:  # the root: ("root",)
            return "root"
        group, prefix = key
        text = json.dumps([list(group) if group else None, list(prefix)], default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def walk(self) -> Iterator[Node]:
        yield self
        for c in self.children.values():
            yield from c.walk()


class CountsRecord(TypedDict):
    """:class:`PlanCounts` as config.yaml and reports hold it."""

    states: dict[str, int]
    edits: int
    compressions: int
    evaluations: int


@dataclass(frozen=True)
class PlanCounts:
    """Model states computed (by step kind) and evaluations made."""

    states: dict[str, int]
    evaluations: int

    @property
    def edits(self) -> int:
        return self.states.get(EDIT_KIND, 0)

    @property
    def compressions(self) -> int:
        return sum(n for k, n in self.states.items() if k != EDIT_KIND)

    def as_dict(self) -> CountsRecord:
        return {
            "states": dict(self.states),
            "edits": self.edits,
            "compressions": self.compressions,
            "evaluations": self.evaluations,
        }


@dataclass(frozen=True)
class Task:
    """An independent part of a plan: the base model's rows (``root``) and/or the subtrees
    under some first-step nodes (``nodes``: their ids). ``cells``: the ids of the cells whose
    rows it writes (to name them when it fails)."""

    id: str
    root: bool
    nodes: tuple[str, ...]
    cells: tuple[str, ...]
    cost: int


class Plan:
    """The cells of a run, sweep or study and their prefix tree (the shape of each cell's
    rows is the row schema's, :func:`lmcompose.engine.schema.make_row`)."""

    def __init__(self, cells: Sequence[Cell], *, run_id: str, policy: str):
        ids = [c.id for c in cells]
        if len(set(ids)) != len(ids):
            dup = next(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"two cells of the plan have the id {dup!r}")
        self.cells = list(cells)
        self.run_id = run_id
        self.policy = policy
        self.root = _build_tree(self.cells)
        self._nodes = {n.id: n for n in self.root.walk()}

    # -- building --------------------------------------------------------------------
    @staticmethod
    def actions(order: Sequence[int], steps: Sequence[PlannedStep], policy: str) -> tuple[Action, ...]:
        """A cell's actions: the ``steps`` of its sequence in ``order`` (indices into
        ``steps``), then the re-runs the policy asks for."""
        acts = [Action(steps[i].name, steps[i].overrides, steps[i].kind, steps[i].key, i) for i in order]
        again = rerun_after([steps[i].kind for i in order], [steps[i].reruns_on_recompress for i in order], policy)
        return (*acts, *(replace(acts[j], again=True) for j in again))

    # -- resume ----------------------------------------------------------------------
    def mark_needed(
        self, done: set[tuple[str, int]], only: set[str] | None = None, force: set[str] | None = None
    ) -> bool:
        """Mark the rows still to write (cells in ``only``, when given, minus ``done``
        (cell id, position) pairs) and the states in ``force`` (node ids: models to save,
        computed even when their rows are written); True if anything is left."""
        return _mark(self.root, done, only, force or set())

    def node(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def groups(self, nodes: Iterable[Node]) -> list[Group]:
        """The groups whose rows are pending in ``nodes`` and below them."""
        seen = {c.group for n in nodes for m in n.walk() for c in m.pending}
        return sorted(seen, key=lambda g: (g[0] or "", g[1]))

    # -- partition -------------------------------------------------------------------
    def tasks(self) -> list[Task]:
        """The needed work as independent tasks: one for the base model's pending rows, one
        per needed first-step subtree. No model state is in two tasks; every task starts
        from the base model. Call after :meth:`mark_needed`."""
        out = []
        if self.root.pending:
            out.append(Task("root", True, (), tuple(c.id for c in self.root.pending), 1))
        for child in self.root.children.values():
            if not child.needed:
                continue
            cells = tuple(dict.fromkeys(c.id for n in child.walk() for c in n.pending))
            cost = sum(1 + len({c.group for c in n.pending}) for n in child.walk() if n.needed)
            out.append(Task(child.id, False, (child.id,), cells, cost))
        return out

    def shard_cells(self, index: int, count: int) -> set[str]:
        """The cells of shard ``index`` of ``count`` (0-based): whole first-step subtrees,
        dealt out largest first to the least loaded shard (deterministic: by cost, then id).
        A cell belongs to the shard of its first step's subtree."""
        loads = [0] * count
        owner: dict[str, int] = {}
        subtrees = sorted(
            self.root.children.values(),
            key=lambda n: (-sum(1 + len({c.group for c in m.cells}) for m in n.walk()), n.id),
        )
        for child in subtrees:
            k = min(range(count), key=lambda j: (loads[j], j))
            loads[k] += sum(1 + len({c.group for c in m.cells}) for m in child.walk())
            for c in child.cells:
                owner[c.id] = k
        return {c.id for c in self.cells if owner.get(c.id, 0) == index}

    # -- counting --------------------------------------------------------------------
    def counts(self, edit_metrics: bool = True, shared_metrics: bool = True) -> PlanCounts:
        """Distinct model states (by kind) and evaluations of the whole plan: each state's
        edit-free metrics once, its edit metrics once per group evaluated there."""
        states: Counter[str] = Counter()
        evals = 0
        for node in self.root.walk():
            if node.action is not None:
                states[node.action.kind] += 1
            evals += int(shared_metrics) + (len({c.group for c in node.cells}) if edit_metrics else 0)
        return PlanCounts(dict(states), evals)

    @staticmethod
    def independent_counts(cells: Sequence[Cell], edit_metrics: bool = True, shared_metrics: bool = True) -> PlanCounts:
        """What running every cell on its own would compute (no sharing at all)."""
        states: Counter[str] = Counter()
        evals = 0
        for c in cells:
            for a in c.actions:
                states[a.kind] += 1
            evals += len(c.positions) * (int(shared_metrics) + int(edit_metrics))
        return PlanCounts(dict(states), evals)


def _build_tree(cells: Sequence[Cell]) -> Node:
    root = Node(("root",), None, 0, None, cells=list(cells))
    for cell in cells:
        node: Node = root
        prefix: tuple[str, ...] = ()
        group: Group | None = None
        for depth, action in enumerate(cell.actions, start=1):
            prefix = (*prefix, action.tree_key)
            if action.kind == EDIT_KIND:
                group = cell.group
            key: NodeKey = (group, prefix)
            if key not in node.children:
                step = _step_text(action)
                label = step if node.action is None else f"{node.label.split(' [')[0]} → {step}"
                if group is not None:
                    label += f" [{group[0] + ' ' if group[0] else ''}r{group[1]}]"
                node.children[key] = Node(key, action, depth, group, label=label)
            node = node.children[key]
            node.cells.append(cell)
    return root


def _step_text(action: Action) -> str:
    text = action.name + (":" + ",".join(f"{k}={v}" for k, v in action.overrides.items()) if action.overrides else "")
    return text + (" (again)" if action.again else "")


def _mark(node: Node, done: set[tuple[str, int]], only: set[str] | None, force: set[str]) -> bool:
    node.pending = [c for c in node.cells if (c.id, node.depth) not in done and (only is None or c.id in only)]
    child_needed = [_mark(c, done, only, force) for c in list(node.children.values())]
    node.needed = bool(node.pending) or any(child_needed) or (node.action is not None and node.id in force)
    return node.needed
