"""Sweeps: every order of a sequence, at every strength of one varied field, for every
replicate (a disjoint seeded batch of edits), evaluating every metric after every step.

A sweep is a set of **cells** (order, strength, replicate); a cell is one composed run and
writes one row per position (0 = base model) to ``results.jsonl``, as ``compose`` does.

Work is shared through the engine's prefix tree of model states (:mod:`lmcompose.engine`):
for edit→compress the edited model is computed once per replicate and every strength starts
from it; for compress→edit the compressed model is computed once per strength and every
replicate starts from it. Metrics that do not need edits (perplexity, average bits, FLOPs)
are evaluated once per model state; edit metrics once per replicate at it.

Resume: every row carries the sweep's ``run_id`` and its ``cell`` id. Rerunning the same
sweep into the same folder skips the rows already there, recomputes only the model states
that unfinished rows need, and gives the same numbers (every step is deterministic under the
seed; the edit metrics' base-model references are recorded again before the first step).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmcompose._limits import MAX_TOPK, check_seed, check_topk
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
    RunSettings,
    check_arguments,
    check_context,
    check_edit_records,
    check_lm,
    load_edits,
    metric_names,
    prepare,
    resolve_metrics,
    step_list,
)
from lmcompose.engine.executor import SNAPSHOT_MODES, Executor, replicate_edits, topk_next_tokens
from lmcompose.engine.numerics import numerics_for
from lmcompose.engine.plan import (
    MAX_CELLS,
    Cell,
    GridFactor,
    Group,
    Plan,
    canonical_key,
    check_grid_size,
)
from lmcompose.engine.policy import EDIT_KIND, check_policy
from lmcompose.engine.run_folder import RunFolder, edits_digest, run_inputs
from lmcompose.engine.threads import current_threads
from lmcompose.errors import ConfigError, UnknownNameError, UsageError, describe_value
from lmcompose.plugins import get_interventions
from lmcompose.steps import StepSpec, build_intervention, parse_step

if TYPE_CHECKING:
    from lmcompose.models.handle import LM

SWEEP_KEYS = frozenset(
    {"vary", "orders", "replicates", "snapshots", "topk", "calibration_samples", "calibration_seqlen"}
)

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
        raise ConfigError(
            f"--vary {text!r}: step {step_name!r} appears {len(hits)} times in the sequence; vary a step that "
            f"appears once"
        )
    index = hits[0]
    cls = get_interventions().get(step_name)
    fields = config_fields(cls.Config)
    if field_name not in fields:
        raise UnknownNameError(f"field of step {step_name!r}", field_name, fields, f"(in --vary {text!r})")
    raw = [v.strip() for v in rhs.split(",")]
    if not rhs.strip() or any(not v for v in raw):
        raise ConfigError(f"--vary {text!r}: give comma-separated values after '=', e.g. {lhs.strip()}=0.25,0.5,0.75")
    return make_vary(steps, index, field_name, raw, f"--vary {text!r}")


def make_vary(steps: Sequence[StepSpec], index: int, field_name: str, raw: Sequence[Any], where: str) -> Vary:
    """The :class:`Vary` of ``field_name`` of ``steps[index]`` over the ``raw`` values: each
    value is checked by building the step with it (wrong type, out of range), none may repeat,
    and a field that is not the step's strength must be numeric (it becomes the x-axis). A
    field the step sets itself is refused: the varied values would silently replace it."""
    step_name = steps[index].name
    if field_name in steps[index].overrides:
        raise ConfigError(
            f"{where} varies {field_name!r}, which the step also sets ({steps[index]}); "
            f"drop one of them (the step's value would be ignored)"
        )
    cls = get_interventions().get(step_name)
    values = []
    for v in raw:
        inst = build_intervention(StepSpec(step_name, {**steps[index].overrides, field_name: v}))
        values.append(getattr(inst.config, field_name))
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: a value is given twice")
    knob = cls.strength
    is_strength = knob is not None and knob.field == field_name
    if not is_strength and not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ConfigError(
            f"{where}: {field_name!r} is not {step_name}'s strength ({knob.field if knob else 'none'}) "
            "and not numeric, so it cannot be an x-axis; vary the strength field or a numeric field"
        )
    return Vary(step_name, index, field_name, tuple(values), is_strength)


def parse_orders(orders: str | Sequence[Sequence[str]] | None, steps: Sequence[StepSpec]) -> list[tuple[int, ...]]:
    """``all`` (every permutation of the sequence), or ``"a,b;b,a"`` / a list of name lists.
    Each order is a permutation of the sequence's step names; returns step indices."""
    names = [s.name for s in steps]
    n = len(names)
    if orders is not None and not isinstance(orders, str | list | tuple):
        raise ConfigError(
            f"--orders {describe_value(orders)}: give 'all', 'a,b;b,a' or a list of orders such as [[a, b], [b, a]]"
        )
    if _all_orders(orders):
        count = count_orders(orders, names)
        if count > MAX_CELLS:  # refused before the orders fill the memory
            raise ConfigError(
                f"--orders all: {n} steps have {count:,} orders, more than the {MAX_CELLS:,} cells one "
                "plan holds; list the orders to run, e.g. 'a,b,c;c,b,a'"
            )
        return list(_distinct_orders(names))
    if isinstance(orders, str):
        parts = orders.split(";")
        if any(not g.strip() for g in parts):
            raise ConfigError(
                f"--orders {orders!r}: an order is empty (a stray ';'?); give 'all' or orders like 'a,b;b,a'"
            )
        groups = [[x.strip() for x in g.split(",")] for g in parts]
    else:
        for g in orders:
            if not isinstance(g, str | list | tuple):
                raise ConfigError(
                    f"--orders: {describe_value(g)} is not an order; give step names, e.g. [a, b] or 'a,b'"
                )
            for x in [] if isinstance(g, str) else g:
                if not isinstance(x, str):
                    raise ConfigError(f"--orders: order {list(g)!r}: {describe_value(x)} is not a step name")
        groups = [[x.strip() for x in (g.split(",") if isinstance(g, str) else g)] for g in orders]
    if not groups:
        raise ConfigError(f"--orders {orders!r}: give 'all' or orders like 'a,b;b,a'")
    result: list[tuple[int, ...]] = []
    for g in groups:
        where = f"--orders: order {','.join(g)!r}"
        for x in g:
            if x not in names:
                raise UnknownNameError("step", x, names, f"(in {where}; each order lists the sweep's steps by name)")
        if sorted(g) != sorted(names):
            raise ConfigError(
                f"{where} is not a permutation of the steps {','.join(names)}; list each step exactly once"
            )
        pool = {name: [i for i, m in enumerate(names) if m == name] for name in set(names)}
        idx = tuple(pool[x].pop(0) for x in g)
        if idx in result:
            raise ConfigError(f"{where} is given twice")
        result.append(idx)
    return result


def _all_orders(orders: Any) -> bool:
    return orders is None or (isinstance(orders, str) and orders.strip().lower() in {"all", ""})


def _distinct_orders(names: Sequence[str]) -> Iterator[tuple[int, ...]]:
    """Every order of the steps ``names`` (as step indices, in lexicographic order), once:
    two steps with the same name are the same step, so an order that only swaps them is
    not another order (the first of them always comes first). Only distinct orders are
    visited, so steps with repeated names do not cost n! permutations."""
    pools: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        pools.setdefault(name, []).append(i)
    used = dict.fromkeys(pools, 0)
    prefix: list[int] = []

    def walk() -> Iterator[tuple[int, ...]]:
        if len(prefix) == len(names):
            yield tuple(prefix)
            return
        for i in sorted(pool[used[name]] for name, pool in pools.items() if used[name] < len(pool)):
            used[names[i]] += 1
            prefix.append(i)
            yield from walk()
            prefix.pop()
            used[names[i]] -= 1

    return walk()


def count_orders(orders: Any, names: Sequence[str]) -> int:
    """How many orders ``orders`` asks for of the steps ``names``, from its shape alone (no
    order is built): ``all`` gives the distinct permutations; a malformed value counts one
    (:func:`parse_orders` says what is wrong with it)."""
    if _all_orders(orders):
        total = math.factorial(len(names))
        for repeats in Counter(names).values():
            total //= math.factorial(repeats)
        return total
    if isinstance(orders, str):
        return len(orders.split(";"))
    return len(orders) if isinstance(orders, list | tuple) and orders else 1


def check_sweep_size(vary: Any, orders: Any, names: Sequence[str], replicates: Any) -> None:
    """Refuse a sweep over the cell cap from the sizes of ``--vary``, ``--orders`` and
    ``--replicates`` alone, before any value is built, naming the one that makes it large."""
    values = vary.partition("=")[2].count(",") + 1 if isinstance(vary, str) else 1
    reps = replicates if isinstance(replicates, int) and not isinstance(replicates, bool) and replicates > 0 else 1
    check_grid_size(
        [
            [
                GridFactor("vary", values, "values"),
                GridFactor("orders", count_orders(orders, names), "orders"),
                GridFactor("replicates", reps, "replicates"),
            ]
        ]
    )


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
    save_cells: str | None = None

    def check_shapes(self, where: str = "settings") -> None:
        super().check_shapes(where)
        if self.save_cells is not None and (not isinstance(self.save_cells, str) or not self.save_cells.strip()):
            raise ConfigError(
                f"{where}: save_cells: expected all or globs over cell ids such as 'memit>*'; "
                f"got {describe_value(self.save_cells)}"
            )
        if self.save_model is not None:
            raise ConfigError(
                f"{where}: save_model is for a run; a sweep saves the final models of the cells "
                "--save-cells PATTERN names (all, or globs such as 'memit>*') into OUT/models/"
            )

        def whole(key: str, minimum: int, optional: bool = False, maximum: int | None = None) -> None:
            v = getattr(self, key)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ConfigError(f"{where}: {key}: expected a whole number >= {minimum}; got {describe_value(v)}")
            if maximum is not None and v > maximum:
                raise ConfigError(
                    f"{where}: {key}: {v} is above {maximum}; give a whole number from {minimum} to {maximum}"
                )

        if self.vary is not None and not isinstance(self.vary, str):
            raise ConfigError(
                f"{where}: vary: expected STEP.FIELD=v1,v2,... (e.g. wanda.sparsity=0.25,0.5); "
                f"got {describe_value(self.vary)}"
            )
        orders = self.orders
        if (
            orders is not None
            and not isinstance(orders, str)
            and not (
                isinstance(orders, list)
                and all(
                    isinstance(o, str) or (isinstance(o, list) and all(isinstance(x, str) for x in o)) for o in orders
                )
            )
        ):
            raise ConfigError(
                f"{where}: orders: expected all, 'a,b;b,a' or a list of orders such as [[a, b], [b, a]]; "
                f"got {describe_value(orders)}"
            )
        whole("replicates", 1)
        whole("topk", 0, maximum=MAX_TOPK)
        whole("calibration_samples", 1, optional=True)
        whole("calibration_seqlen", 8, optional=True)
        if not isinstance(self.snapshots, str):
            raise ConfigError(f"{where}: snapshots: expected memory or disk; got {describe_value(self.snapshots)}")

    def validate(self) -> tuple[list[Intervention], list[Metric]]:  # type: ignore[override]
        steps, metrics = super().validate()
        check_sweep_size(self.vary, self.orders, [s.name for s in steps], self.replicates)
        if self.snapshots not in SNAPSHOT_MODES:
            raise ConfigError(f"snapshots {self.snapshots!r} is not one of {', '.join(SNAPSHOT_MODES)}")
        if self.replicates > 1 and self.edits is None:
            raise ConfigError(
                f"replicates={self.replicates} needs --edits N, the number of edit requests in each "
                "replicate's batch: without it every replicate would be the same cells"
            )
        if self.save_cells is not None:
            from lmcompose.engine.saving import match_cells

            specs, vary, orders = self.plan()
            groups: list[Group] = [(None, r) for r in range(self.replicates)]
            match_cells(sweep_cells(specs, vary, orders, groups, self.policy), self.save_cells)
        return steps, metrics

    def varied_fields(self) -> list[tuple[str, str]]:
        lhs = self.vary.partition("=")[0].strip() if isinstance(self.vary, str) else ""
        step, dot, name = lhs.partition(".")
        return [(step, name)] if dot else []

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
        d.pop("save_cells", None)
        specs, vary, orders = self.plan()
        d["vary"] = str(vary)
        d["orders"] = [[specs[i].name for i in o] for o in orders]
        return d


# --------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------


def sweep_cells(
    specs: Sequence[StepSpec],
    vary: Vary,
    orders: Sequence[tuple[int, ...]],
    groups: Sequence[Group],
    policy: str,
    *,
    labels: Mapping[str, Any] | None = None,
    id_prefix: str = "",
    keys_memo: dict[str, str] | None = None,
) -> list[Cell]:
    """The cells of one sweep: every order × varied value × group, each with its actions
    (resolved step configs, the policy's re-runs). Studies call this once per entry and
    dataset, with ``labels`` and an ``id_prefix`` that keep their cells apart, and one
    ``keys_memo`` (resolved step keys by step text) for all of them: each distinct step is
    built once, not once per cell (a large grid is planned in seconds)."""
    protos = [build_intervention(s) for s in specs]
    names = [s.name for s in specs]
    kinds = [p.kind for p in protos]
    has_project = [p.reruns_on_recompress() for p in protos]
    knob = protos[vary.index].strength if vary.is_strength else None
    memo = keys_memo if keys_memo is not None else {}

    def resolved_key(name: str, overrides: Mapping[str, Any]) -> str:
        text = name + json.dumps(overrides, sort_keys=True, default=repr)
        if text not in memo:
            memo[text] = canonical_key(name, config_to_dict(build_intervention(StepSpec(name, dict(overrides))).config))
        return memo[text]

    per_value = []
    for value in vary.values:
        overrides = [dict(s.overrides) for s in specs]
        overrides[vary.index] = {**overrides[vary.index], vary.field: value}
        per_value.append((overrides, [resolved_key(n, ov) for n, ov in zip(names, overrides, strict=True)]))
    cells = []
    for o in orders:
        for value, (overrides, keys) in zip(vary.values, per_value, strict=True):
            actions = Plan.actions(o, names, overrides, kinds, keys, has_project, policy)
            order_names = tuple(names[i] for i in o)
            for g in groups:
                cells.append(
                    Cell(
                        f"{id_prefix}{'>'.join(order_names)}|{value}|r{g[1]}",
                        order_names,
                        value,
                        g,
                        actions,
                        dict(labels or {}),
                        vary.label,
                        vary.field,
                        knob.normalize(value) if knob is not None else None,
                    )
                )
    return cells


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


def sweep_id(resolved: Mapping[str, Any]) -> str:
    key = {k: v for k, v in resolved.items() if k not in {"out", "device", "data_dir", "snapshots"}}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def sweep(
    lm: LM,
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
    save_cells: str | None = None,
    threads: int | None = None,
    deterministic: bool = False,
) -> list[dict[str, Any]]:
    """Run every order of ``steps`` at every value of ``vary`` (``"STEP.FIELD=v1,v2,..."``)
    for every replicate; return the new rows (also appended to ``out/results.jsonl``).
    ``save_cells`` (``all`` or globs over cell ids) saves those cells' final models into
    ``out/models/`` (:mod:`lmcompose.engine.saving`).

    ``edits``: a flat list, split into ``replicates`` disjoint equal batches, or one list per
    replicate. ``orders``: ``"all"``, ``"a,b;b,a"`` or a list of name lists. Rows already in
    ``out/results.jsonl`` under the same ``run_id`` are skipped (resume); a resume with other
    numerics (``threads``, ``deterministic``, library versions, batch sizes) is refused.
    ``threads`` and ``deterministic`` as in :func:`~lmcompose.compose.compose`.
    """
    where = "sweep()"
    check_lm(lm, where)
    steps = step_list(steps, where)
    check_edit_records(edits, where, nested=True)
    check_context(ctx, where)
    check_arguments(
        where,
        SweepSettings,
        vary=vary,
        orders=[list(o) if isinstance(o, tuple) else o for o in orders] if isinstance(orders, list | tuple) else orders,
        replicates=replicates,
        out=out,
        policy=policy,
        metrics=metric_names(metrics),
        metric_options=metric_options or {},
        seed=seed,
        snapshots=snapshots,
        topk=topk,
        save_cells=save_cells,
        threads=threads,
        deterministic=deterministic,
    )
    check_policy(policy)
    if snapshots not in SNAPSHOT_MODES:
        raise ConfigError(f"snapshots {snapshots!r} is not one of {', '.join(SNAPSHOT_MODES)}")
    if not isinstance(replicates, int) or replicates < 1:
        raise ConfigError(f"replicates={replicates!r}: ask for at least 1 replicate")
    if any(isinstance(s, Intervention) for s in steps):
        raise ConfigError(f"{where}: steps: give each step by name (e.g. 'magnitude:sparsity=0.5'), not built")
    specs = [parse_step(s) for s in steps]
    if not specs:
        raise ConfigError("no steps given: a sweep needs at least one step")
    check_sweep_size(vary, orders, [s.name for s in specs], replicates)
    v = parse_vary(vary, specs)
    order_list = parse_orders(orders, specs)
    metric_objs = resolve_metrics(metrics, metric_options)
    if replicates > 1 and not edits:
        raise UsageError(
            f"replicates={replicates} without edit requests: every replicate would be the same cells; "
            "give edits (a batch per replicate), or replicates=1"
        )
    batches = replicate_edits(edits, replicates)
    if any(build_intervention(s).kind == EDIT_KIND for s in specs) and not all(batches):
        raise UsageError("an edit step needs edit requests: pass --dataset NAME and --edits N (or edits= in Python)")
    ctx = ctx or Context(seed=seed)
    check_seed(ctx.seed, "seed")
    check_topk(topk, "topk")
    names = [s.name for s in specs]
    edit_batches = [[e.case_id for e in b] for b in batches]
    run_id = (
        run_id
        or hashlib.sha1(
            json.dumps(
                [
                    [str(s) for s in specs],
                    str(v),
                    [list(o) for o in order_list],
                    replicates,
                    seed,
                    policy,
                    edit_batches,
                ],
                default=str,
            ).encode()
        ).hexdigest()[:12]
    )
    groups: list[Group] = [(None, r) for r in range(replicates)]
    plan = Plan(sweep_cells(specs, v, order_list, groups, policy), run_id=run_id, policy=policy)
    edits_by_group = {g: batches[g[1]] for g in groups}

    out_dir = Path(out) if out is not None else None
    save = None
    if save_cells is not None:
        from lmcompose.engine.saving import MODELS_FOLDER, SaveTargets

        if out_dir is None:
            raise UsageError("save_cells needs a run folder (out=...): the models go to OUT/models/")
        save = SaveTargets.for_study(plan, save_cells, out_dir / MODELS_FOLDER, extra={"model": lm.name})
    folder = RunFolder(out_dir, run_id, "sweep", config) if out_dir is not None else None
    inputs = run_inputs(lm, edits_by_group, ctx) if folder is not None else {}
    rows: list[dict[str, Any]] = []
    with numerics_for(threads, deterministic, metric_objs, current_threads()) as numerics, folder or nullcontext():
        done: set[tuple[str, int]] = set()
        if folder is not None:
            folder.write_config(
                inputs=inputs,
                numerics=numerics,
                steps_resolved=[str(s) for s in specs],
                vary=str(v),
                orders=[[names[i] for i in o] for o in order_list],
                replicates=replicates,
                policy=policy,
                seed=seed,
                snapshots=snapshots,
                cells=len(plan.cells),
                edit_batches=edit_batches,
                model_fingerprint=inputs["model_fingerprint"],
                model_source=lm.source,
                versions=inputs["versions"],
            )
            done = folder.done()
        if save is not None:
            save.clean_stale()
        if not plan.mark_needed(done, force=save.missing() if save is not None else None):
            return []
        n_eval = sum(1 for n in plan.root.walk() if n.pending)
        snapshot_dir = None
        if out_dir is not None and snapshots == "disk":
            snapshot_dir = out_dir / ".snapshots"
            snapshot_dir.mkdir(exist_ok=True)
        executor = Executor(
            plan,
            lm,
            ctx,
            metric_objs,
            edits_by_group,
            snapshots=snapshots,
            snapshot_dir=snapshot_dir,
            topk=topk,
            save=save,
        )
        with ctx.progress.task(f"sweep: {len(plan.cells)} cells", n_eval) as advance:
            for state in executor.run():
                for row, per_edit in state.rows_with_scores():
                    if folder is not None:
                        folder.append(row, per_edit)
                    rows.append(row)
                if state.rows:
                    advance(1)
    return rows


def run_sweep(settings: SweepSettings, progress: Progress | None = None) -> tuple[list[dict[str, Any]], Context]:
    """Validate, load the model and each replicate's edits, and sweep (`lmcompose sweep`)."""
    settings, (steps, metrics) = prepare(settings)
    resolved = settings.resolved()
    run_id = sweep_id(resolved)
    out = settings.out or f"runs/sweep-{run_id}"
    if settings.save_cells is not None:
        from lmcompose.engine.saving import models_folder

        models_folder(out)  # before loading
    # refuse another run's folder, or a resume with other numerics, before loading
    RunFolder(out, run_id, "sweep", {**resolved, "out": out}, settings.numerics(metrics)).check()

    ctx = settings.context(progress)
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
            load_edits(
                name,
                settings.dataset_source,
                settings.edits,
                settings.seed,
                replicate=r,
                skip_invalid=settings.skip_invalid,
                ctx=ctx,
            )
            for r in range(settings.replicates)
        ]
    lm = settings.load_model(ctx.progress)
    rows = sweep(
        lm,
        settings.steps,
        vary=settings.vary or "",
        orders=settings.orders,
        edits=batches,
        replicates=settings.replicates,
        out=out,
        policy=settings.policy,
        metrics=settings.metrics,
        metric_options=settings.metric_options,
        seed=settings.seed,
        ctx=ctx,
        snapshots=settings.snapshots,
        topk=settings.topk,
        run_id=run_id,
        config={**resolved, "out": out},
        save_cells=settings.save_cells,
        threads=settings.threads,
        deterministic=settings.deterministic,
    )
    settings.out = out
    return rows, ctx


__all__ = [
    "Cell",
    "StepSpec",
    "SweepSettings",
    "Vary",
    "edits_digest",
    "make_vary",
    "parse_orders",
    "parse_vary",
    "run_inputs",
    "run_sweep",
    "sweep",
    "sweep_cells",
    "sweep_id",
    "topk_next_tokens",
]
