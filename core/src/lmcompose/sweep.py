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

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmcompose.api import (
    Context,
    EditRecord,
    Intervention,
    Metric,
    Progress,
    config_fields,
    config_to_dict,
)
from lmcompose.api.config import check_field
from lmcompose.compose import (
    RunSettings,
    StepSetting,
    call_settings,
    check_arguments,
    check_context,
    check_edit_records,
    check_lm,
    metric_names,
    prepare,
    resolve_metrics,
    step_list,
)
from lmcompose.engine.driver import Loaded, Outcome, RayOptions, check_executor, execute, parse_shard
from lmcompose.engine.executor import replicate_edits, topk_next_tokens
from lmcompose.engine.plan import (
    MAX_CELLS,
    Cell,
    GridFactor,
    Group,
    Plan,
    PlannedStep,
    canonical_key,
    check_grid_size,
)
from lmcompose.engine.policy import EDIT_KIND
from lmcompose.engine.run_folder import RunFolder, RunInputs, edits_digest, run_inputs
from lmcompose.engine.schema import normalized_strength
from lmcompose.engine.threads import current_threads
from lmcompose.errors import ConfigError, StepFailedError, UnknownNameError, UsageError, describe_value
from lmcompose.plugins import get_interventions
from lmcompose.settings import CalibrationSettings, CellOutputSettings, DataSettings, GridSettings, TopKSettings
from lmcompose.steps import StepSpec, build_intervention, parse_step

if TYPE_CHECKING:
    from lmcompose.engine.executor import Row
    from lmcompose.engine.ray_executor import Prepared
    from lmcompose.models.handle import LM

#: ``--orders`` as the Python API takes it: all (None or "all"), ``"a,b;b,a"``, or a list of
#: orders (each a list or tuple of step names, or ``"a,b"``)
Orders = str | Sequence[Sequence[str]] | None

#: the context's own values (a budget equal to its default is one not given)
CONTEXT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Context)}
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
    values: tuple[object, ...]
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


def make_vary(steps: Sequence[StepSpec], index: int, field_name: str, raw: Sequence[object], where: str) -> Vary:
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


def parse_orders(orders: object, steps: Sequence[StepSpec]) -> list[tuple[int, ...]]:
    """``all`` (every permutation of the sequence), or ``"a,b;b,a"`` / a list of name lists
    (:data:`Orders`; anything else is one ConfigError). Each order is a permutation of the
    sequence's step names; returns step indices."""
    names = [s.name for s in steps]
    n = len(names)
    if orders is not None and not isinstance(orders, str | list | tuple):
        raise ConfigError(
            f"--orders {describe_value(orders)}: give 'all', 'a,b;b,a' or a list of orders such as [[a, b], [b, a]]"
        )
    if orders is None or _all_orders(orders):
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


def _all_orders(orders: object) -> bool:
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


def count_orders(orders: object, names: Sequence[str]) -> int:
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


def check_sweep_size(vary: object, orders: object, names: Sequence[str], replicates: object) -> None:
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
class SweepSettings(CellOutputSettings, CalibrationSettings, TopKSettings, GridSettings, RunSettings):
    """A run's settings plus the sweep's (:mod:`lmcompose.settings`: its grid, top-k record,
    calibration budget and kept cells). ``edits`` is the batch size of each replicate."""

    def check_shapes(self, where: str = "settings") -> None:
        super().check_shapes(where)
        if self.save_model is not None:
            raise ConfigError(
                f"{where}: save_model is for a run; a sweep saves the final models of the cells "
                "--save-cells PATTERN names (all, or globs such as 'memit>*') into OUT/models/"
            )

    def validate(self) -> tuple[list[Intervention], list[Metric]]:
        steps, metrics = super().validate()
        check_sweep_size(self.vary, self.orders, [s.name for s in steps], self.replicates)
        if self.replicates > 1 and self.edits is None:
            raise ConfigError(
                f"replicates={self.replicates} needs --edits N, the number of edit requests in each "
                "replicate's batch: without it every replicate would be the same cells"
            )
        if self.save_cells is not None:
            from lmcompose.engine.saving import match_cells

            match_cells(self.cells(), self.save_cells)
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

    def cells(self) -> list[Cell]:
        """The sweep's cells: every order × varied value × replicate."""
        specs, vary, orders = self.plan()
        return sweep_cells(specs, vary, orders, [(None, r) for r in range(self.replicates)], self.policy)

    def context(self, progress: Progress | None = None) -> Context:
        """The run's context with the sweep's calibration budget (where given)."""
        ctx = super().context(progress)
        if self.calibration_samples:
            ctx.calibration_samples = self.calibration_samples
        if self.calibration_seqlen:
            ctx.calibration_seqlen = self.calibration_seqlen
        return ctx

    def identity(
        self, edits: Mapping[Group, Sequence[EditRecord]] | None = None, digests: Mapping[str, str] | None = None
    ) -> dict[str, object]:
        """:meth:`RunSettings.identity`, with a calibration budget equal to the context's
        default left unset (as a Python context holds it whether given or not)."""
        d = super().identity(edits, digests)
        for key in ("calibration_samples", "calibration_seqlen"):
            if d.get(key) == CONTEXT_DEFAULTS[key]:
                d[key] = None
        return d

    def resolved(self) -> dict[str, object]:
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
    labels: Mapping[str, str | None] | None = None,
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
    knob = protos[vary.index].strength if vary.is_strength else None
    memo = keys_memo if keys_memo is not None else {}

    def resolved_key(name: str, overrides: Mapping[str, object]) -> str:
        text = name + json.dumps(overrides, sort_keys=True, default=repr)
        if text not in memo:
            memo[text] = canonical_key(name, config_to_dict(build_intervention(StepSpec(name, dict(overrides))).config))
        return memo[text]

    per_value = []
    for value in vary.values:
        overrides = [dict(s.overrides) for s in specs]
        overrides[vary.index] = {**overrides[vary.index], vary.field: value}
        per_value.append(
            [
                PlannedStep(n, ov, p.kind, resolved_key(n, ov), p.reruns_on_recompress())
                for n, ov, p in zip(names, overrides, protos, strict=True)
            ]
        )
    cells = []
    for o in orders:
        for value, planned in zip(vary.values, per_value, strict=True):
            actions = Plan.actions(o, planned, policy)
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
                        normalized_strength(knob, value),
                    )
                )
    return cells


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


def sweep(
    lm: LM,
    steps: Sequence[StepSetting],
    *,
    vary: str,
    orders: Orders = "all",
    edits: Sequence[EditRecord] | Sequence[Sequence[EditRecord]] | None = None,
    replicates: int = 1,
    out: str | Path | None = None,
    policy: str = "project",
    metrics: Sequence[str] | Sequence[Metric] | None = None,
    metric_options: Mapping[str, Mapping[str, object]] | None = None,
    seed: int = 0,
    ctx: Context | None = None,
    snapshots: str = "memory",
    topk: int = 5,
    run_id: str | None = None,
    config: Mapping[str, object] | None = None,
    save_cells: str | None = None,
    threads: int | None = None,
    deterministic: bool = False,
    shard: str | tuple[int, int] | None = None,
) -> list[Row]:
    """Run every order of ``steps`` at every value of ``vary`` (``"STEP.FIELD=v1,v2,..."``)
    for every replicate; return the new rows (also appended to ``out/results.jsonl``).
    ``save_cells`` (``all`` or globs over cell ids) saves those cells' final models into
    ``out/models/`` (:mod:`lmcompose.engine.saving`). ``shard`` (``"I/N"``): only part I of N
    of the cells (whole first-step subtrees, as a study's; ``lmcompose merge`` combines the
    shard folders).

    ``edits``: a flat list, split into ``replicates`` disjoint equal batches, or one list per
    replicate. ``orders``: ``"all"``, ``"a,b;b,a"`` or a list of name lists. Rows already in
    ``out/results.jsonl`` under the same ``run_id`` are skipped (resume); a resume with other
    numerics (``threads``, ``deterministic``, library versions, batch sizes) is refused.
    ``threads`` and ``deterministic`` as in :func:`~lmcompose.compose.compose`.
    """
    where = "sweep()"
    check_lm(lm, where)
    given = step_list(steps, where)
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
    shard_t = parse_shard(shard)
    if any(isinstance(s, Intervention) for s in given):
        raise ConfigError(f"{where}: steps: give each step by name (e.g. 'magnitude:sparsity=0.5'), not built")
    specs = [parse_step(s) for s in given if not isinstance(s, Intervention)]
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
    check_field(DataSettings, "seed", ctx.seed, f"{where}: ctx.seed")
    edits_by_group: dict[Group, list[EditRecord]] = {(None, r): batch for r, batch in enumerate(batches)}
    settings = call_settings(
        SweepSettings,
        lm,
        specs,
        ctx,
        out,
        seed,
        policy,
        metric_objs if metrics else None,
        metric_options,
        vary=vary,
        orders=[list(o) for o in orders] if isinstance(orders, list | tuple) else orders,
        replicates=replicates,
        snapshots=snapshots,
        topk=topk,
        calibration_samples=ctx.calibration_samples,
        calibration_seqlen=ctx.calibration_seqlen,
        save_cells=save_cells,
        threads=threads,
        deterministic=deterministic,
    )
    run_id = run_id or settings.run_id(edits_by_group if any(batches) else None)
    plan = Plan(sweep_cells(specs, v, order_list, list(edits_by_group), policy), run_id=run_id, policy=policy)
    if save_cells is not None and out is None:
        raise UsageError("save_cells needs a run folder (out=...): the models go to OUT/models/")
    if config is None:
        config = {**settings.resolved(), **({"shard": f"{shard_t[0]}/{shard_t[1]}"} if shard_t else {})}
    folder = RunFolder(out, run_id, "sweep", config) if out else None
    outcome = _execute_sweep(plan, settings, folder, metric_objs, batches, Loaded(lm, ctx, edits_by_group), shard_t)
    return outcome.rows


def _execute_sweep(
    plan: Plan,
    settings: SweepSettings,
    folder: RunFolder | None,
    metrics: list[Metric],
    batches: Sequence[Sequence[EditRecord]],
    loaded: Loaded | None,
    shard: tuple[int, int] | None,
    ray: RayOptions | None = None,
) -> Outcome:
    """The sweep's plan handed to the driver, in this process (``loaded``) or on Ray."""
    only = plan.shard_cells(shard[0] - 1, shard[1]) if shard else None
    save = None
    if settings.save_cells is not None and folder is not None:
        from lmcompose.engine.saving import MODELS_FOLDER, SaveTargets

        root = folder.path / MODELS_FOLDER
        save = SaveTargets.for_study(plan, settings.save_cells, root, extra={"model": settings.model}, only=only)
    return execute(
        plan,
        folder,
        metrics,
        loaded,
        ray=ray,
        threads=settings.threads,
        deterministic=settings.deterministic,
        default_threads=current_threads(),
        snapshots=settings.snapshots,
        topk=settings.topk,
        save=save,
        only=only,
        record=sweep_record(plan, settings, batches),
        bar=f"sweep: {len(plan.cells)} cells",
    )


def sweep_record(plan: Plan, settings: SweepSettings, batches: Sequence[Sequence[EditRecord]]) -> dict[str, object]:
    """What a sweep's config.yaml holds beside its settings, inputs and numerics."""
    specs, vary, orders = settings.plan()
    return {
        "steps_resolved": [str(s) for s in specs],
        "vary": str(vary),
        "orders": [[specs[i].name for i in o] for o in orders],
        "replicates": settings.replicates,
        "policy": settings.policy,
        "seed": settings.seed,
        "snapshots": settings.snapshots,
        "cells": len(plan.cells),
        "edit_batches": [[e.case_id for e in b] for b in batches],
    }


@dataclass
class SweepWork:
    """A sweep's work as a Ray worker rebuilds it from the settings (they pickle; the model and
    the edits are loaded in the worker)."""

    settings: SweepSettings
    run_id: str

    def prepare(self, threads: int, deterministic: bool = False) -> Prepared:
        from lmcompose.engine.numerics import set_deterministic
        from lmcompose.engine.threads import set_threads

        set_threads(threads)
        set_deterministic(deterministic)
        settings = self.settings
        ctx = settings.context(Progress())
        batches = settings.load_edits(ctx, settings.replicates) or [[] for _ in range(settings.replicates)]
        lm = settings.load_model(ctx.progress)
        plan = Plan(settings.cells(), run_id=self.run_id, policy=settings.policy)
        edits: dict[Group, list[EditRecord]] = {(None, r): list(b) for r, b in enumerate(batches)}
        return plan, lm, ctx, self.metrics(), edits, {"snapshots": settings.snapshots, "topk": settings.topk}

    def metrics(self) -> list[Metric]:
        from lmcompose.steps import build_metrics

        return build_metrics(self.settings.metrics, self.settings.metric_options)

    def inputs(
        self, lm: LM, edits: Mapping[Group, list[EditRecord]], unedited: Mapping[Group, list[EditRecord]] | None = None
    ) -> RunInputs:
        return run_inputs(lm, edits, self.settings.context(Progress()), unedited)

    def numerics(self, threads: int, deterministic: bool) -> dict[str, object]:
        from lmcompose.engine.numerics import record_numerics

        return record_numerics(threads, deterministic, self.metrics())


def run_sweep(
    settings: SweepSettings,
    progress: Progress | None = None,
    *,
    executor: str = "local",
    ray_address: str | None = None,
    cpus_per_task: float | None = None,
    gpus_per_task: float | None = None,
    shard: str | tuple[int, int] | None = None,
) -> tuple[list[Row], Context]:
    """Validate, load each replicate's edits, check the run folder, load the model and sweep
    (`lmcompose sweep`). ``executor``, ``ray_address``, ``cpus_per_task``, ``gpus_per_task`` and
    ``shard`` as for a study (:func:`lmcompose.studies.runner.run_study`): with ``ray`` the
    model is loaded by each task, not here; a shard runs part I of N of the cells
    (``lmcompose merge`` combines the shard folders)."""
    shard_t = parse_shard(shard)
    cpus, gpus = check_executor(executor, ray_address, cpus_per_task, gpus_per_task, settings.device, what="sweep")
    settings, (_steps, metrics) = prepare(settings)
    ctx = settings.context(progress)
    batches = settings.load_edits(ctx, settings.replicates)
    edits_by_group: dict[Group, list[EditRecord]] = {(None, r): list(b) for r, b in enumerate(batches or [])}
    run_id = settings.run_id(edits_by_group if batches else None)
    out = settings.out or f"runs/sweep-{run_id}"
    if settings.save_cells is not None:
        from lmcompose.engine.saving import models_folder

        models_folder(out)  # before loading
    config = {**settings.resolved(), "out": out}
    if shard_t is not None or executor != "local":  # recorded only when used, so other sweeps keep their config
        config.update(shard=f"{shard_t[0]}/{shard_t[1]}" if shard_t else None, executor=executor)
    numerics = settings.numerics(metrics) if executor == "local" else None
    # refuse another run's folder, or a resume with other numerics, before loading
    RunFolder(out, run_id, "sweep", config, numerics).check()
    settings.out = out
    if executor == "ray":
        folder = RunFolder(out, run_id, "sweep", config)
        plan = Plan(settings.cells(), run_id=run_id, policy=settings.policy)
        ray = RayOptions(SweepWork(settings, run_id), ray_address, cpus, gpus)
        replicates = batches or [[] for _ in range(settings.replicates)]
        outcome = _execute_sweep(plan, settings, folder, metrics, replicates, None, shard_t, ray)
        if outcome.failures:
            raise StepFailedError("; ".join(f.line() for f in outcome.failures))
        return outcome.rows, ctx
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
        config=config,
        save_cells=settings.save_cells,
        threads=settings.threads,
        deterministic=settings.deterministic,
        shard=shard_t,
    )
    return rows, ctx


__all__ = [
    "Cell",
    "StepSpec",
    "SweepSettings",
    "SweepWork",
    "Vary",
    "edits_digest",
    "make_vary",
    "parse_orders",
    "parse_vary",
    "run_inputs",
    "run_sweep",
    "sweep",
    "sweep_cells",
    "topk_next_tokens",
]
