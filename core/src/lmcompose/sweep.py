"""Sweeps: every order of a sequence, at every strength of one varied field, for every
replicate (a disjoint seeded batch of edits), evaluating every metric after every step.

A sweep is a set of **cells** (order, strength, replicate); a cell is one composed run and
writes one row per position (0 = base model) to ``results.jsonl``, as ``compose`` does.

Work is shared through a prefix tree of model states. A node is the model after a prefix of
a cell's steps; two cells share a node when their prefixes are the same steps with the same
configs and — when the prefix contains an ``edit`` step — the same replicate. So for
edit→compress the edited model is computed once per replicate and every strength starts from
it; for compress→edit the compressed model is computed once per strength and every replicate
starts from it. The tree is walked depth first; a node with more than one child is
snapshotted (in memory, or as safetensors on disk with ``snapshots="disk"``) and restored
before each further child. Metrics that do not need edits (perplexity, average bits, FLOPs)
are evaluated once per node; edit metrics once per replicate at the node.

Assumption: a step whose kind is not ``edit`` does not read ``ctx.edits`` (compressors
calibrate on text), so its result does not depend on the replicate.

Resume: every row carries the sweep's ``run_id`` and its ``cell`` id. Rerunning the same
sweep into the same folder skips the rows already there, recomputes only the model states
that unfinished rows need, and gives the same numbers (every step is deterministic under the
seed). The base model's edit metrics of a replicate are always evaluated first, so
locality drift keeps its base-model reference.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcompose.api import (
    Context,
    EditRecord,
    Intervention,
    Metric,
    Progress,
    config_fields,
    config_to_dict,
)
from lmcompose.compose import (
    EDIT_KIND,
    POLICIES,
    RunSettings,
    StepSpec,
    build_intervention,
    build_metrics,
    evaluate,
    load_edits,
    parse_step,
    versions,
)
from lmcompose.errors import ConfigError, UnknownNameError, UsageError
from lmcompose.plugins import get_interventions
from lmcompose.results import (
    CONFIG_FILE,
    RESULTS_FILE,
    append_row,
    read_rows,
    read_yaml,
    write_yaml_atomic,
)

SNAPSHOT_MODES = ("memory", "disk")
SWEEP_KEYS = frozenset({"vary", "orders", "replicates", "snapshots", "topk", "calibration_samples", "calibration_seqlen"})
TOPK_PROMPT = "The capital of France is"  # used for the top-k record when a sweep has no edits

# --------------------------------------------------------------------------------------
# --vary and --orders
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vary:
    """``STEP.FIELD=v1,v2,...``: which step of the sequence (its index), which field, which values."""

    step: str
    index: int
    field: str
    values: tuple[Any, ...]
    is_strength: bool

    def __str__(self) -> str:
        return f"{self.step}.{self.field}=" + ",".join(str(v) for v in self.values)

    @property
    def label(self) -> str:
        return f"{self.step}.{self.field}"


def parse_vary(text: str, steps: Sequence[StepSpec]) -> Vary:
    """Parse ``STEP.FIELD=v1,v2,...`` against the sequence ``steps``; every value is checked by
    building the step with it (unknown field, wrong type or out-of-range values are errors)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("--vary is empty: write STEP.FIELD=v1,v2,... (e.g. wanda.sparsity=0.25,0.5,0.75)")
    lhs, eq, rhs = text.strip().partition("=")
    step_name, dot, field_name = lhs.strip().partition(".")
    if not eq or not dot or not step_name or not field_name:
        raise ConfigError(f"--vary {text!r}: write STEP.FIELD=v1,v2,... (e.g. wanda.sparsity=0.25,0.5,0.75)")
    names = [s.name for s in steps]
    hits = [i for i, n in enumerate(names) if n == step_name]
    if not hits:
        raise UnknownNameError("step", step_name, names, f"(in --vary {text!r}; name one of the sweep's steps)")
    if len(hits) > 1:
        raise ConfigError(f"--vary {text!r}: step {step_name!r} appears {len(hits)} times in the sequence; vary a step that appears once")
    index = hits[0]
    cls = get_interventions().get(step_name)
    fields = config_fields(cls.Config)
    if field_name not in fields:
        raise UnknownNameError(f"field of step {step_name!r}", field_name, fields, f"(in --vary {text!r})")
    raw = [v.strip() for v in rhs.split(",")]
    if not rhs.strip() or any(not v for v in raw):
        raise ConfigError(f"--vary {text!r}: give comma-separated values after '=', e.g. {lhs.strip()}=0.25,0.5,0.75")
    values = []
    for v in raw:
        inst = build_intervention(StepSpec(step_name, {**steps[index].overrides, field_name: v}))
        values.append(getattr(inst.config, field_name))
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"--vary {text!r}: a value is given twice")
    knob = cls.strength
    is_strength = knob is not None and knob.field == field_name
    if not is_strength and not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"--vary {text!r}: {field_name!r} is not {step_name}'s strength ({knob.field if knob else 'none'}) "
                          "and not numeric, so it cannot be an x-axis; vary the strength field or a numeric field")
    return Vary(step_name, index, field_name, tuple(values), is_strength)


def parse_orders(orders: str | Sequence[Sequence[str]] | None, steps: Sequence[StepSpec]) -> list[tuple[int, ...]]:
    """``all`` (every permutation of the sequence), or ``"a,b;b,a"`` / a list of name lists.
    Each order is a permutation of the sequence's step names; returns step indices."""
    names = [s.name for s in steps]
    n = len(names)
    if orders is None or (isinstance(orders, str) and orders.strip().lower() in {"all", ""}):
        out = list(dict.fromkeys(itertools.permutations(range(n))))
        # steps with the same name: permutations that only swap them are the same order
        seen, unique = set(), []
        for p in out:
            key = tuple(names[i] for i in p)
            if key not in seen:
                seen.add(key)
                unique.append(p)
        return unique
    if isinstance(orders, str):
        groups = [[x.strip() for x in g.split(",")] for g in orders.split(";") if g.strip()]
    else:
        groups = [[str(x).strip() for x in (g.split(",") if isinstance(g, str) else g)] for g in orders]
    if not groups:
        raise ConfigError(f"--orders {orders!r}: give 'all' or orders like 'a,b;b,a'")
    result: list[tuple[int, ...]] = []
    for g in groups:
        where = f"--orders: order {','.join(g)!r}"
        for x in g:
            if x not in names:
                raise UnknownNameError("step", x, names, f"(in {where}; each order lists the sweep's steps by name)")
        if sorted(g) != sorted(names):
            raise ConfigError(f"{where} is not a permutation of the steps {','.join(names)}; list each step exactly once")
        pool = {name: [i for i, m in enumerate(names) if m == name] for name in set(names)}
        idx = tuple(pool[x].pop(0) for x in g)
        if idx in result:
            raise ConfigError(f"{where} is given twice")
        result.append(idx)
    return result


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


@dataclass
class SweepSettings(RunSettings):
    """A run's settings plus the sweep's. ``edits`` is the batch size of each replicate."""

    vary: str | None = None
    orders: Any = "all"
    replicates: int = 1
    snapshots: str = "memory"
    topk: int = 5
    calibration_samples: int | None = None
    calibration_seqlen: int | None = None

    def validate(self) -> tuple[list[Intervention], list[Metric]]:  # type: ignore[override]
        steps, metrics = super().validate()
        self.plan()
        if not isinstance(self.replicates, int) or isinstance(self.replicates, bool) or self.replicates < 1:
            raise ConfigError(f"replicates={self.replicates!r}: ask for at least 1 replicate")
        if self.snapshots not in SNAPSHOT_MODES:
            raise ConfigError(f"snapshots {self.snapshots!r} is not one of {', '.join(SNAPSHOT_MODES)}")
        if not isinstance(self.topk, int) or self.topk < 0:
            raise ConfigError(f"topk={self.topk!r}: give a number of tokens >= 0 (0 = no top-k record)")
        for key in ("calibration_samples", "calibration_seqlen"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{key}={v!r}: give a positive whole number")
        needs_edits = any(s.kind == EDIT_KIND for s in steps)
        if needs_edits and self.replicates > 1 and self.edits is None:
            raise ConfigError(f"replicates={self.replicates} needs --edits N, the number of edits in each replicate's batch")
        return steps, metrics

    def plan(self) -> tuple[list[StepSpec], Vary, list[tuple[int, ...]]]:
        specs = [parse_step(s) for s in self.steps]
        if self.vary is None:
            raise ConfigError("no --vary given: name the field to sweep, e.g. --vary wanda.sparsity=0.25,0.5,0.75")
        return specs, parse_vary(self.vary, specs), parse_orders(self.orders, specs)

    def cell_count(self) -> int:
        _specs, vary, orders = self.plan()
        return len(orders) * len(vary.values) * self.replicates

    def resolved(self) -> dict[str, Any]:
        d = super().resolved()
        specs, vary, orders = self.plan()
        d["vary"] = str(vary)
        d["orders"] = [[specs[i].name for i in o] for o in orders]
        return d


# --------------------------------------------------------------------------------------
# Cells and the prefix tree
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    order: tuple[int, ...]
    value: Any
    replicate: int
    names: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{'>'.join(self.names)}|{self.value}|r{self.replicate}"


@dataclass
class Action:
    """One step of a cell's path: a sequence step, or a compressor re-run (recompress)."""

    spec: StepSpec
    kind: str
    again: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return ("again" if self.again else "step", str(self.spec))


@dataclass
class Node:
    key: tuple[Any, ...]
    action: Action | None
    depth: int
    rep: int | None  # the replicate this state depends on; None = shared by all replicates
    children: dict[tuple[Any, ...], Node] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    pending: list[Cell] = field(default_factory=list)
    needed: bool = False

    def walk(self) -> Iterator[Node]:
        yield self
        for c in self.children.values():
            yield from c.walk()


def cell_actions(cell: Cell, specs: Sequence[StepSpec], kinds: Sequence[str], has_project: Sequence[bool],
                 vary: Vary, policy: str) -> list[Action]:
    def spec_for(i: int) -> StepSpec:
        s = specs[i]
        if i == vary.index:
            return StepSpec(s.name, {**s.overrides, vary.field: cell.value})
        return StepSpec(s.name, dict(s.overrides))

    actions = [Action(spec_for(i), kinds[i]) for i in cell.order]
    if policy == "recompress":
        for j, i in enumerate(cell.order):
            edited_later = any(kinds[k] == EDIT_KIND for k in cell.order[j + 1 :])
            if has_project[i] and kinds[i] != EDIT_KIND and edited_later:
                actions.append(Action(spec_for(i), kinds[i], again=True))
    return actions


def build_tree(cells: Sequence[Cell], paths: Mapping[Cell, list[Action]]) -> Node:
    root = Node(("root",), None, 0, None, cells=list(cells))
    for cell in cells:
        node, prefix, rep = root, (), None
        for depth, action in enumerate(paths[cell], start=1):
            prefix = (*prefix, action.key)
            if action.kind == EDIT_KIND:
                rep = cell.replicate
            key = (rep, prefix)
            if key not in node.children:
                node.children[key] = Node(key, action, depth, rep)
            node = node.children[key]
            node.cells.append(cell)
    return root


def mark_needed(node: Node, done: set[tuple[str, int]]) -> bool:
    node.pending = [c for c in node.cells if (c.id, node.depth) not in done]
    child_needed = [mark_needed(c, done) for c in list(node.children.values())]
    node.needed = bool(node.pending) or any(child_needed)
    return node.needed


# --------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------


class SnapshotStore:
    """Model states to come back to: in memory (state-dict copies) or on disk (safetensors)."""

    def __init__(self, mode: str, folder: Path | None):
        self.mode = mode
        self.folder = folder
        self._tmp: str | None = None
        self._n = 0

    def save(self, lm: Any) -> Any:
        if self.mode == "memory":
            return lm.state_copy()
        from safetensors.torch import save_model

        from lmcompose.models.handle import save_compression

        if self.folder is None:
            self._tmp = self._tmp or tempfile.mkdtemp(prefix="lmcompose-snapshots-")
            self.folder = Path(self._tmp)
        self._n += 1
        path = self.folder / f"snapshot-{self._n}"
        path.mkdir(parents=True, exist_ok=True)
        save_model(lm.model, str(path / "model.safetensors"))
        save_compression(lm.compression, path)
        return path

    def restore(self, lm: Any, snap: Any) -> None:
        from lmcompose.models.handle import LayerCompression
        from lmcompose.quant import QuantGrid

        if self.mode == "memory":
            comp = {
                k: LayerCompression(
                    None if v.keep_mask is None else v.keep_mask.clone(),
                    None if v.quant is None else QuantGrid(v.quant.bits, v.quant.group_size, v.quant.symmetric,
                                                           v.quant.scale.clone(), v.quant.zero.clone()),
                )
                for k, v in snap["compression"].items()
            }
            lm.restore({"weights": snap["weights"], "compression": comp})
            return
        from safetensors.torch import load_model

        from lmcompose.models.handle import load_compression

        load_model(lm.model, str(snap / "model.safetensors"))
        lm.compression = load_compression(snap)

    def drop(self, snap: Any) -> None:
        if self.mode == "disk" and snap is not None:
            shutil.rmtree(snap, ignore_errors=True)

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self.mode == "disk" and self.folder is not None and self.folder.exists() and not any(self.folder.iterdir()):
            self.folder.rmdir()


# --------------------------------------------------------------------------------------
# Top-k record (paper Fig. 3)
# --------------------------------------------------------------------------------------


def topk_next_tokens(lm: Any, prompt: str, k: int) -> dict[str, Any]:
    """The ``k`` most likely next tokens after ``prompt`` and their probabilities."""
    import torch

    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(lm.device)
    with torch.inference_mode():
        logits = lm.model(ids).logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    top = torch.topk(probs, k)
    return {
        "prompt": prompt,
        "tokens": [lm.tokenizer.decode([int(i)]) for i in top.indices],
        "token_ids": [int(i) for i in top.indices],
        "probs": [float(p) for p in top.values],
        "logits": [float(logits[int(i)]) for i in top.indices],
    }


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


def sweep_id(resolved: Mapping[str, Any]) -> str:
    key = {k: v for k, v in resolved.items() if k not in {"out", "device", "data_dir", "snapshots"}}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _split_edits(edits: Sequence[Any] | None, replicates: int) -> list[list[EditRecord]]:
    if not edits:
        return [[] for _ in range(replicates)]
    if all(isinstance(e, list | tuple) for e in edits):
        if len(edits) != replicates:
            raise UsageError(f"{len(edits)} edit batches given for {replicates} replicates; give one batch per replicate")
        return [list(e) for e in edits]
    size = len(edits) // replicates
    if size < 1:
        raise UsageError(f"{len(edits)} edits cannot make {replicates} disjoint replicates; give more edits or fewer replicates")
    return [list(edits[r * size : (r + 1) * size]) for r in range(replicates)]


def _strength_fields(inst: Intervention) -> dict[str, Any]:
    knob = inst.strength
    value = inst.strength_value
    return {
        "name": inst.name, "kind": inst.kind, "config": config_to_dict(inst.config),
        "strength": value, "strength_field": knob.field if knob else None,
    }


def sweep(
    lm: Any,
    steps: Sequence[str | Mapping[str, Any] | StepSpec],
    *,
    vary: str,
    orders: str | Sequence[Sequence[str]] | None = "all",
    edits: Sequence[Any] | None = None,
    replicates: int = 1,
    out: str | Path | None = None,
    policy: str = "project",
    metrics: Sequence[str] | Sequence[Metric] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    ctx: Context | None = None,
    snapshots: str = "memory",
    topk: int = 5,
    run_id: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run every order of ``steps`` at every value of ``vary`` (``"STEP.FIELD=v1,v2,..."``)
    for every replicate; return the new rows (also appended to ``out/results.jsonl``).

    ``edits``: a flat list, split into ``replicates`` disjoint equal batches, or one list per
    replicate. ``orders``: ``"all"``, ``"a,b;b,a"`` or a list of name lists. Rows already in
    ``out/results.jsonl`` under the same ``run_id`` are skipped (resume).
    """
    if policy not in POLICIES:
        raise ConfigError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
    if snapshots not in SNAPSHOT_MODES:
        raise ConfigError(f"snapshots {snapshots!r} is not one of {', '.join(SNAPSHOT_MODES)}")
    if not isinstance(replicates, int) or replicates < 1:
        raise ConfigError(f"replicates={replicates!r}: ask for at least 1 replicate")
    specs = [parse_step(s) for s in steps]
    if not specs:
        raise ConfigError("no steps given: a sweep needs at least one step")
    protos = [build_intervention(s) for s in specs]
    v = parse_vary(vary, specs)
    order_list = parse_orders(orders, specs)
    if metrics and all(isinstance(m, Metric) for m in metrics):
        metric_objs = list(metrics)  # type: ignore[arg-type]
    else:
        metric_objs = build_metrics(metrics, metric_options)  # type: ignore[arg-type]
    shared_metrics = [m for m in metric_objs if not m.requires_edits]
    edit_metrics = [m for m in metric_objs if m.requires_edits]
    batches = _split_edits(edits, replicates)
    kinds = [p.kind for p in protos]
    if any(k == EDIT_KIND for k in kinds) and not all(batches):
        raise UsageError("an edit step needs edit requests: pass --dataset NAME and --edits N (or edits= in Python)")
    ctx = ctx or Context(seed=seed)
    names = [s.name for s in specs]
    knob = protos[v.index].strength if v.is_strength else None

    cells = [Cell(o, value, r, tuple(names[i] for i in o)) for o in order_list for value in v.values for r in range(replicates)]
    has_project = [p.has_project() for p in protos]
    paths = {c: cell_actions(c, specs, kinds, has_project, v, policy) for c in cells}
    root = build_tree(cells, paths)

    resolved_vary = str(v)
    run_id = run_id or hashlib.sha1(json.dumps(
        [[str(s) for s in specs], resolved_vary, [list(o) for o in order_list], replicates, seed, policy,
         [[e.case_id for e in b] for b in batches]], default=str).encode()).hexdigest()[:12]

    results_path = None
    done: set[tuple[str, int]] = set()
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        results_path = out_dir / RESULTS_FILE
        done = {(r["cell"], r["position"]) for r in read_rows(results_path) if r.get("run_id") == run_id and "cell" in r}
        config_path = out_dir / CONFIG_FILE
        if config_path.exists():
            other = read_yaml(config_path).get("run_id")
            if other != run_id:
                raise UsageError(f"{out_dir} already holds another run (run_id {other}, this one is {run_id}); "
                                 "choose another --out, or delete that folder")
        else:
            resolved = dict(config or {})
            resolved.update({
                "run_id": run_id, "kind": "sweep", "steps_resolved": [str(s) for s in specs], "vary": resolved_vary,
                "orders": [[names[i] for i in o] for o in order_list], "replicates": replicates, "policy": policy,
                "seed": seed, "snapshots": snapshots, "cells": len(cells),
                "edit_batches": [[e.case_id for e in b] for b in batches],
                "model_fingerprint": lm.fingerprint(), "model_source": lm.source, "versions": versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            write_yaml_atomic(config_path, resolved)

    if not mark_needed(root, done):
        return []
    reps_needed = sorted({c.replicate for n in root.walk() for c in n.pending})
    rows: list[dict[str, Any]] = []
    n_eval = sum(1 for n in root.walk() if n.pending)
    store = SnapshotStore(snapshots, out_dir / ".snapshots" if out_dir is not None else None)

    def topk_for(rep: int) -> dict[str, Any] | None:
        if topk <= 0:
            return None
        if not batches[rep]:
            return topk_next_tokens(lm, TOPK_PROMPT, topk)
        first = batches[rep][0]
        record = topk_next_tokens(lm, first.prompt, topk)
        record.update({"target_new": first.target_new, "target_true": first.target_true})
        return record

    def evaluate_node(node: Node, instances: list[Intervention], elapsed: float, details: dict[str, Any]) -> None:
        where = "on the base model" if node.action is None else f"after {' then '.join(i.name for i in instances)}"
        reps = sorted({c.replicate for c in node.pending})
        if node.action is None:
            reps = reps_needed  # base-model references (locality drift) come first for every replicate
        if not reps:
            return
        shared: dict[str, Any] = {}
        if node.pending:
            ctx.edits = batches[reps[0]]
            shared = evaluate(lm, shared_metrics, ctx, where)
        per_rep: dict[int, dict[str, Any]] = {}
        for r in reps:
            ctx.edits = batches[r]
            values = evaluate(lm, edit_metrics, ctx, where) if edit_metrics and batches[r] else {}
            values["eval_s"] = shared.get("eval_s", 0.0) + values.get("eval_s", 0.0)
            tk = topk_for(r)
            if tk is not None:
                values["topk"] = tk
            per_rep[r] = values
        last = instances[-1] if instances else None
        for cell in node.pending:
            step = None
            if last is not None:
                step = _strength_fields(last)
                if node.action is not None and node.action.again:
                    step["recompress"] = True
            row = {
                "run_id": run_id, "sweep": True, "cell": cell.id, "model": lm.name, "order": list(cell.names),
                "replicate": cell.replicate, "policy": policy, "position": node.depth,
                "last_position": len(paths[cell]), "vary": v.label,
                "strength": cell.value, "strength_field": v.field,
                "strength_normalized": knob.normalize(cell.value) if knob is not None else None,
                "step": step, "elapsed_s": elapsed, "shared_by_cells": len(node.cells),
                "step_details": {k: x for k, x in details.items() if isinstance(x, int | float | str | bool) or x is None},
                **{k: x for k, x in shared.items() if k != "eval_s"}, **per_rep[cell.replicate],
                "edit_ids": [e.case_id for e in batches[cell.replicate]][:50],
                "notes": list(ctx.notes), "timestamp": time.time(),
            }
            if results_path is not None:
                append_row(results_path, row)
            rows.append(row)

    def visit(node: Node, instances: list[Intervention], advance: Any) -> None:
        kids = [c for c in node.children.values() if c.needed]
        snap = store.save(lm) if len(kids) > 1 else None
        for i, child in enumerate(kids):
            if i > 0:
                store.restore(lm, snap)
                if i == len(kids) - 1:
                    store.drop(snap)
                    snap = None
            action = child.action
            assert action is not None
            inst = build_intervention(action.spec)
            ctx.edits = batches[child.rep] if child.rep is not None else []
            report = inst.apply(lm, ctx)
            elapsed = report.elapsed_s
            path = instances if action.again else [*instances, inst]
            if policy == "project" and not action.again:
                start = time.perf_counter()
                for earlier in instances:
                    if earlier.has_project():
                        earlier.project(lm)
                elapsed += time.perf_counter() - start
            shown = [*instances, inst]
            if child.pending:
                evaluate_node(child, shown, elapsed, report.details)
                advance(1)
            visit(child, path, advance)
        if snap is not None:
            store.drop(snap)

    if out_dir is not None and snapshots == "disk":
        (out_dir / ".snapshots").mkdir(exist_ok=True)
    try:
        with ctx.progress.task(f"sweep: {len(cells)} cells", n_eval) as advance:
            if root.pending or reps_needed:
                evaluate_node(root, [], 0.0, {})
                if root.pending:
                    advance(1)
            visit(root, [], advance)
    finally:
        store.close()
    return rows


def run_sweep(settings: SweepSettings, progress: Progress | None = None) -> tuple[list[dict[str, Any]], Context]:
    """Validate, load the model and each replicate's edits, and sweep (`lmcompose sweep`)."""
    import os

    steps, _metrics = settings.validate()
    if settings.data_dir:
        if not Path(settings.data_dir).is_dir():
            raise ConfigError(f"data folder {settings.data_dir!r} does not exist")
        os.environ["LMCOMPOSE_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    resolved = settings.resolved()
    run_id = sweep_id(resolved)
    out = settings.out or f"runs/sweep-{run_id}"
    cfg = Path(out) / CONFIG_FILE
    if cfg.exists():
        other = read_yaml(cfg).get("run_id")
        if other != run_id:
            raise UsageError(f"{out} already holds another run (run_id {other}, this one is {run_id}); "
                             "choose another --out, or delete that folder")
    from lmcompose.models.loading import load_model

    ctx = Context(seed=settings.seed, device=settings.device, dtype=settings.dtype, progress=progress or Progress())
    if settings.calibration_samples:
        ctx.calibration_samples = settings.calibration_samples
    if settings.calibration_seqlen:
        ctx.calibration_seqlen = settings.calibration_seqlen
    needs_edits = any(s.kind == EDIT_KIND for s in steps)
    batches: list[list[EditRecord]] | None = None
    if settings.dataset or settings.edits or needs_edits:
        name = settings.dataset or "records"
        if settings.dataset is None:
            ctx.note("no --dataset given: using the bundled sample edits (dataset 'records')")
        batches = [
            load_edits(name, settings.dataset_source, settings.edits, settings.seed, replicate=r,
                       skip_invalid=settings.skip_invalid, ctx=ctx)
            for r in range(settings.replicates)
        ]
    lm = load_model(settings.model, dtype=settings.dtype, device=settings.device, progress=ctx.progress)
    rows = sweep(
        lm, settings.steps, vary=settings.vary or "", orders=settings.orders, edits=batches,
        replicates=settings.replicates, out=out, policy=settings.policy, metrics=settings.metrics,
        metric_options=settings.metric_options, seed=settings.seed, ctx=ctx, snapshots=settings.snapshots,
        topk=settings.topk, run_id=run_id, config={**resolved, "out": out},
    )
    settings.out = out
    return rows, ctx


__all__ = [
    "Cell", "SweepSettings", "Vary", "parse_orders", "parse_vary", "run_sweep", "sweep", "sweep_id", "topk_next_tokens",
]
