"""The executor: walks (part of) a plan on a loaded model, applies the steps, evaluates every
metric, and yields the rows of each model state it reaches.

The tree is walked depth first. A node with more than one needed child is snapshotted
before its first child and restored before each other child (in memory, or as safetensors on
disk with ``snapshots="disk"``). At a node, the edit-free metrics (perplexity, average bits,
FLOPs) are evaluated once, the edit metrics once per group (dataset, replicate) with rows
pending there. Before the first step, every edit metric records its base-model reference for
every group the walk evaluates (:meth:`lmcompose.Metric.reference`) in ``ctx.references``:
held already (read from the run folder, or handed to a Ray task), it is not computed again,
so a resumed run, or one task of a partitioned study, compares against the same base model
as one uninterrupted walk without another pass of it; every other metric records its own
once (e.g. the facts an unlearning metric asks about, in ``ctx.state``). The control records
of a group (``unedited``: records of its dataset no edit batch holds) are set on
``ctx.unedited`` while its edit metrics are evaluated.

The executor writes nothing: the caller (a run folder, a Ray driver) stores the rows.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from lmcompose.api import PER_EDIT_KEY, Context, EditRecord, Intervention, Metric, References
from lmcompose.engine.numerics import nondeterministic_error
from lmcompose.engine.plan import Action, Cell, Group, Node, Plan, PlanCounts
from lmcompose.engine.policy import project_earlier
from lmcompose.engine.schema import PerEditLine, RunRow, Scalar, SweepRow, TargetToken, TopK, make_row
from lmcompose.engine.threads import threads_for
from lmcompose.errors import LMComposeError, StepFailedError
from lmcompose.results import refuse_link
from lmcompose.steps import StepSpec, build_intervention

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lmcompose.engine.saving import SaveTargets
    from lmcompose.models.handle import LM

TOPK_PROMPT = "The capital of France is"  # the top-k record's prompt when a cell has no edits
TOP_LOGITS = 30  # the highest logits the top-k record keeps for Figure 3
SNAPSHOT_MODES = ("memory", "disk")
Row = RunRow | SweepRow  # a row of results.jsonl (lmcompose.engine.schema)
#: a model state to come back to: a state-dict copy (LM.state_copy) or a safetensors folder
Snapshot = Mapping[str, object] | Path

__all__ = [
    "Evaluation",
    "Executor",
    "SNAPSHOT_MODES",
    "SnapshotStore",
    "StateResult",
    "TOP_LOGITS",
    "check_topk_edit",
    "evaluate",
    "evaluate_metrics",
    "provider",
    "record_references",
    "replicate_edits",
    "step_warnings",
    "topk_next_tokens",
]


def provider(kind: str, name: str) -> str:
    """The distribution that registered step or metric ``name`` (for error messages)."""
    from lmcompose.plugins import get_interventions, get_metrics

    registry = get_interventions() if kind == "step" else get_metrics()
    try:
        return registry.entry(name).distribution
    except LMComposeError:
        return "not registered"


def _fail(kind: str, name: str, where: str, exc: Exception) -> LMComposeError:
    """The error for a step or metric that raised: an op without a deterministic kernel in
    deterministic mode is the user's choice to change (a UsageError naming the op), anything
    else a StepFailedError."""
    who = f"{kind} {name!r} (from {provider(kind, name)})"
    return nondeterministic_error(exc, f"{who} {where}") or StepFailedError(
        f"{who} failed {where}: {type(exc).__name__}: {exc}. Rerun with --debug for the traceback"
    )


@dataclass
class Evaluation:
    """What :func:`evaluate_metrics` measured: the row's ``values``, and each edit's scores
    (``per_edit``: score key -> one value per record of ``ctx.edits``; empty when no metric
    scored edits one by one)."""

    values: dict[str, object]
    per_edit: dict[str, list[float | None]]


def evaluate_metrics(lm: LM, metrics: Sequence[Metric], ctx: Context, where: str) -> Evaluation:
    """Every metric of ``metrics`` on ``lm`` (edit metrics only when ``ctx.edits``), plus
    ``eval_s``. A value that is not finite is kept out of the numbers and flagged:
    ``nonfinite`` maps its key to ``nan`` (stored as null, never averaged in) or ``inf`` /
    ``-inf`` (a diverged model: JSON has no infinity, the flag keeps the direction). A metric
    that raises is a :class:`StepFailedError` naming it and its distribution. Per-record
    scores a metric returns under ``PER_EDIT_KEY`` go to ``per_edit``, never to the values."""
    values: dict[str, object] = {}
    per_edit: dict[str, list[float | None]] = {}
    nonfinite: dict[str, str] = {}
    start = time.perf_counter()
    for metric in metrics:
        if metric.requires_edits and not ctx.edits:
            continue
        try:
            got = metric.compute(lm, ctx)
        except (LMComposeError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's metric may raise anything
            raise _fail("metric", metric.name, where, exc) from exc
        for key, v in got.items():
            if key == PER_EDIT_KEY:
                per_edit.update(_per_edit_scores(metric.name, v, len(ctx.edits)))
                continue
            if isinstance(v, float) and not math.isfinite(v):
                nonfinite[key] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
                if math.isnan(v):
                    v = None
            values[key] = v
    if nonfinite:
        values["nonfinite"] = nonfinite
    values["eval_s"] = time.perf_counter() - start
    return Evaluation(values, per_edit)


def evaluate(lm: LM, metrics: Sequence[Metric], ctx: Context, where: str) -> dict[str, object]:
    """The row values of :func:`evaluate_metrics` (per-edit scores left out)."""
    return evaluate_metrics(lm, metrics, ctx, where).values


def _per_edit_scores(metric: str, scores: object, n: int) -> dict[str, list[float | None]]:
    """A metric's per-record scores, checked: one list of numbers (or None) per key, one
    value per edit record."""
    if not isinstance(scores, Mapping):
        raise StepFailedError(
            f"metric {metric!r} (from {provider('metric', metric)}) returned {PER_EDIT_KEY!r} as a "
            f"{type(scores).__name__}; it must map each score key to a list with one value per edit record"
        )
    out: dict[str, list[float | None]] = {}
    for key, values in scores.items():
        if not isinstance(values, list | tuple) or len(values) != n:
            got = len(values) if isinstance(values, list | tuple) else type(values).__name__
            raise StepFailedError(
                f"metric {metric!r} (from {provider('metric', metric)}) returned per-edit scores {key!r} "
                f"with {got} values for {n} edit records; give one value (or None) per record"
            )
        out[str(key)] = [None if v is None else float(v) for v in values]
    return out


def step_warnings(name: str, lm: LM, details: Mapping[str, object]) -> list[str]:
    """What a finished step left that makes later numbers meaningless: non-finite weights,
    non-finite values in its report (e.g. MEMIT's v* loss)."""
    out = []
    bad = lm.nonfinite_count()
    if bad:
        out.append(f"{name} left {bad:,} non-finite weights (NaN/inf): the numbers after it are not meaningful")
    odd = [k for k, v in details.items() if isinstance(v, float) and not math.isfinite(v)]
    if odd:
        out.append(f"{name} reported non-finite {', '.join(odd)}")
    return out


def topk_next_tokens(
    lm: LM,
    prompt: str,
    k: int,
    targets: Mapping[str, str | None] | None = None,
    top_logits: int = 0,
) -> TopK:
    """The ``k`` most likely next tokens after ``prompt`` and their probabilities (every
    token when the vocabulary has fewer than ``k``).

    ``targets`` (name -> target text, e.g. ``{"target_new": ..., "target_true": ...}``) adds
    ``targets``: per name, the target's first token as it is tokenized after the prompt
    (:func:`lmcompose.metrics.edits.target_text`) with its logit, probability and rank (1 = the
    most likely next token; ties ranked by the tokens strictly above); a name whose text is
    None maps to None. ``top_logits`` > 0 adds ``top_logits``: the ids, tokens and logits of
    the that many highest logits (Figure 3 of the paper draws 30)."""
    import torch

    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(lm.device)
    with torch.inference_mode():
        logits = lm.model(ids).logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    top = torch.topk(probs, min(k, probs.shape[-1]))
    record: TopK = {
        "prompt": prompt,
        "tokens": [str(lm.tokenizer.decode([int(i)])) for i in top.indices],
        "token_ids": [int(i) for i in top.indices],
        "probs": [float(p) for p in top.values],
        "logits": [float(logits[int(i)]) for i in top.indices],
    }
    if targets is not None:
        record["targets"] = {
            name: None if text is None else _target_token(lm, prompt, text, logits, probs)
            for name, text in targets.items()
        }
    if top_logits > 0:
        most = torch.topk(logits, min(top_logits, logits.shape[-1]))
        record["top_logits"] = {
            "token_ids": [int(i) for i in most.indices],
            "tokens": [str(lm.tokenizer.decode([int(i)])) for i in most.indices],
            "logits": [float(v) for v in most.values],
        }
    return record


def _target_token(lm: LM, prompt: str, text: str, logits: torch.Tensor, probs: torch.Tensor) -> TargetToken | None:
    """The first token of ``text`` after ``prompt``: id, token, logit, probability and rank
    among the next-token logits (None for a target that tokenizes to nothing)."""
    from lmcompose.metrics.edits import target_text

    ids = lm.tokenizer(target_text(prompt, text), add_special_tokens=False).input_ids
    if not ids:
        return None
    first = int(ids[0])
    logit = float(logits[first])
    return {
        "text": text,
        "token_id": first,
        "token": str(lm.tokenizer.decode([first])),
        "logit": logit,
        "prob": float(probs[first]),
        "rank": int((logits > logits[first]).sum()) + 1,
    }


def check_topk_edit(index: int, batches: Mapping[Group, Sequence[EditRecord]]) -> None:
    """The top-k record reads edit ``index`` of every batch: one UsageError naming the index,
    the batch and its number of edits when a batch is shorter (a batch without edits reads
    the fixed prompt and needs none)."""
    from lmcompose.errors import UsageError

    for (dataset, replicate), records in batches.items():
        if records and index >= len(records):
            raise UsageError(
                f"topk_edit {index}: {dataset or 'the edits'} replicate {replicate} has {len(records)} edits "
                f"(indices 0 to {len(records) - 1}); give an index below {len(records)}"
            )


def check_lengths(lm: LM, batches: Mapping[Group, Sequence[EditRecord]]) -> None:
    """Refuse an edit request whose prompt and target do not fit in the model's positions
    (beyond them a model runs on positions it was never trained on, or crashes): one
    DataError naming the record, its length and the limit."""
    from lmcompose.errors import DataError
    from lmcompose.metrics.edits import multi_hop_prompt, target_text

    limit = lm.max_positions
    tok = lm.tokenizer

    def length(prompt: str, target: str) -> int:
        return len(tok(prompt).input_ids) + len(tok(target_text(prompt, target), add_special_tokens=False).input_ids)

    for group, records in batches.items():
        for r in records:
            pairs = [
                (r.prompt, r.target_new),
                *((p, r.target_new) for p in r.rephrases),
                *((lp.prompt, lp.answer) for lp in r.locality),
            ]
            if r.target_true:
                pairs.append((r.prompt, r.target_true))
            if r.multi_hop is not None:
                pairs += [(multi_hop_prompt(q), r.multi_hop.new_answer) for q in r.multi_hop.questions]
            for prompt, target in pairs:
                n = length(prompt, target)
                if n > limit:
                    raise DataError(
                        f"edit request {r.case_id!r} of {group[0] or 'the edits'}: {prompt[:60]!r}... with its "
                        f"target is {n} tokens, beyond the model's {limit} positions; shorten the record "
                        "or leave it out of the dataset file"
                    )


def fitting_controls(
    lm: LM, unedited: Mapping[Group, Sequence[EditRecord]], ctx: Context
) -> dict[Group, list[EditRecord]]:
    """The control records of each group that fit in the model's positions with their true
    target (they are measured, never asked for: one that does not fit is left out, with a
    note, where an edit request would be refused)."""
    from lmcompose.metrics.edits import target_text

    limit = lm.max_positions
    tok = lm.tokenizer
    out: dict[Group, list[EditRecord]] = {}
    for group, records in unedited.items():
        kept = [
            r
            for r in records
            if r.target_true
            and len(tok(r.prompt).input_ids)
            + len(tok(target_text(r.prompt, r.target_true), add_special_tokens=False).input_ids)
            <= limit
        ]
        if len(kept) < len([r for r in records if r.target_true]):
            ctx.note(
                f"unedited_nll of {group[0] or 'the edits'} replicate {group[1]}: control records beyond the "
                f"model's {limit} positions left out"
            )
        out[group] = kept
    return out


def record_references(lm: LM, ctx: Context, metrics: Sequence[Metric], batches: Sequence[list[EditRecord]]) -> int:
    """Every edit metric's base-model reference (:meth:`Metric.reference`) of each batch, on
    ``lm`` (the unmodified base model) into ``ctx.references``; returns how many were computed
    (a reference held already is read, not computed)."""
    before = ctx.references.computed
    kept = ctx.edits
    try:
        for batch in batches:
            ctx.edits = list(batch)
            if ctx.edits:
                for m in metrics:
                    if m.requires_edits:
                        m.reference(lm, ctx)
    finally:
        ctx.edits = kept
    return ctx.references.computed - before


class SnapshotStore:
    """Model states to come back to: in memory (state-dict copies) or on disk (safetensors)."""

    def __init__(self, mode: str, folder: Path | None):
        self.mode = mode
        self.folder = folder
        self._tmp: str | None = None
        self._n = 0
        self._made: list[Path] = []
        if mode == "disk" and folder is not None and folder.is_dir():
            # left by a process that was killed; the run folder's lock says none is in use
            for stale in folder.glob("snapshot-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def save(self, lm: LM) -> Snapshot:
        if self.mode == "memory":
            return lm.state_copy()
        from safetensors.torch import save_model

        from lmcompose.models.handle import save_compression

        if self.folder is None:
            self._tmp = self._tmp or tempfile.mkdtemp(prefix="lmcompose-snapshots-")
            self.folder = Path(self._tmp)
        self._n += 1
        path = self.folder / f"snapshot-{self._n}"
        refuse_link(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._made.append(path)
            if lm.offloaded:  # the weights live in accelerate's store: snapshot those
                from safetensors.torch import save_file

                from lmcompose.models.offload import stored_tensors

                save_file(
                    {k: v.contiguous() for k, v in stored_tensors(lm.model).items()}, str(path / "model.safetensors")
                )
            else:
                save_model(lm.model, str(path / "model.safetensors"))
            save_compression(lm.compression, path)
        except OSError as exc:
            self.drop(path)
            raise LMComposeError(
                f"cannot write a model snapshot to {path}: {exc.strerror or exc}. Free disk space "
                "there, or use --snapshots memory; rerun the same command to resume"
            ) from None
        return path

    def restore(self, lm: LM, snap: Snapshot | None) -> None:
        if snap is None:  # pragma: no cover - a node with several children always has one
            raise ValueError("no snapshot to restore")
        if not isinstance(snap, Path):  # the snapshot stays as it is for the next child: restore a copy
            held = snap["compression"]
            if not isinstance(held, Mapping):  # pragma: no cover - LM.state_copy keeps it by layer
                raise TypeError(f"a memory snapshot's compression is {type(held).__name__}, not a mapping")
            weights = snap["weights"]
            if not isinstance(weights, dict):  # pragma: no cover - LM.state_copy keeps them by name
                raise TypeError(f"a memory snapshot's weights are {type(weights).__name__}, not a dict")
            comp = {k: v.clone() for k, v in held.items()}
            lm.restore({"weights": weights, "compression": comp})
            return
        from safetensors.torch import load_model

        from lmcompose.models.handle import load_compression

        if lm.offloaded:
            from safetensors.torch import load_file

            from lmcompose.models.offload import restore_tensors

            restore_tensors(lm.model, load_file(str(snap / "model.safetensors")))
        else:
            load_model(lm.model, str(snap / "model.safetensors"))
        lm.compression = load_compression(snap)

    def drop(self, snap: Snapshot | None) -> None:
        if isinstance(snap, Path):
            shutil.rmtree(snap, ignore_errors=True)
            if snap in self._made:
                self._made.remove(snap)

    def close(self) -> None:
        """Remove every snapshot this store made (after an error too: a resume recomputes
        what it needs) and the folder when it is left empty."""
        for snap in list(self._made):
            self.drop(snap)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif (
            self.mode == "disk" and self.folder is not None and self.folder.exists() and not any(self.folder.iterdir())
        ):
            self.folder.rmdir()


@dataclass
class StateResult:
    """A model state the walk reached: its node, the rows written there (may be none: a
    state only its children need), and the seconds its step and evaluation took.
    ``per_edit`` holds, beside each row, its per-edit line (the scores of each edit of the
    row's group, :meth:`Executor.per_edit_line`), or None where no metric scored edits."""

    node: Node
    rows: list[Row]
    seconds: float
    computed: bool = True
    per_edit: list[PerEditLine | None] = field(default_factory=list)

    def rows_with_scores(self) -> Iterator[tuple[Row, PerEditLine | None]]:
        """Each row with its per-edit line (None where it has none)."""
        return zip(self.rows, self.per_edit or [None] * len(self.rows), strict=True)


def _seconds(values: Mapping[str, object]) -> float:
    """The ``eval_s`` of an evaluation's values (0 when it evaluated nothing)."""
    seconds = values.get("eval_s", 0.0)
    return float(seconds) if isinstance(seconds, int | float) else 0.0


def _flags(values: Mapping[str, object]) -> dict[str, str]:
    """The ``nonfinite`` flags of an evaluation's values."""
    flags = values.get("nonfinite")
    return {str(k): str(v) for k, v in flags.items()} if isinstance(flags, Mapping) else {}


def _scalar_details(details: Mapping[str, object]) -> dict[str, Scalar]:
    return {k: x for k, x in details.items() if isinstance(x, int | float | str | bool) or x is None}


@contextmanager
def under_variant(ctx: Context, variant: Sequence[tuple[str, int]]) -> Iterator[None]:
    """Apply an action's variant (:attr:`Action.variant`) for a block: its calibration seed
    on ``ctx`` and its thread count on torch's pool, both restored after."""
    values = dict(variant)
    before = ctx.calibration_seed
    seed = values.get("calibration_seed")
    if seed is not None:
        ctx.calibration_seed = int(seed)
    threads = values.get("threads")
    try:
        with threads_for(int(threads)) if threads is not None else nullcontext():
            yield
    finally:
        ctx.calibration_seed = before


class Executor:
    """Walks ``plan`` on ``lm`` (the base model), yielding a :class:`StateResult` per state.

    ``edits`` maps each group to its edit requests, ``unedited`` to its control records (the
    true targets of records no edit batch holds: ``unedited_nll``); ``build`` makes the
    intervention of an action (default: from the registry by name and overrides); ``topk`` > 0
    records in sweep rows the top-k next tokens of edit ``topk_edit``'s prompt of each group
    (default: the first edit), with its targets' first tokens and the top :data:`TOP_LOGITS`
    logits; ``save`` writes the states it names to their folders once they are computed
    (:mod:`lmcompose.engine.saving`); ``references`` (a run folder's,
    :meth:`lmcompose.engine.run_folder.RunFolder.references`) holds the base-model references
    while the walk runs (default: ``ctx.references``).
    """

    def __init__(
        self,
        plan: Plan,
        lm: LM,
        ctx: Context,
        metrics: Sequence[Metric],
        edits: Mapping[Group, list[EditRecord]],
        *,
        snapshots: str = "memory",
        snapshot_dir: Path | None = None,
        topk: int = 0,
        topk_edit: int = 0,
        build: Callable[[Action], Intervention] | None = None,
        save: SaveTargets | None = None,
        unedited: Mapping[Group, list[EditRecord]] | None = None,
        references: References | None = None,
    ):
        self.plan = plan
        self.lm = lm
        self.base_format = lm.checkpoint_format()  # every row records the base checkpoint's precision
        self.ctx = ctx
        self.shared_metrics = [m for m in metrics if not m.requires_edits]
        self.edit_metrics = [m for m in metrics if m.requires_edits]
        self.edits = edits
        self.store = SnapshotStore(snapshots, snapshot_dir)
        self.topk = topk
        self.topk_edit = topk_edit
        self.build = build or (lambda a: build_intervention(StepSpec(a.name, dict(a.overrides))))
        self.save = save
        self.states: Counter[str] = Counter()
        self.evaluations = 0
        self.unedited = dict(unedited or {})
        self.reference_store = references
        self.references = 0  # base-model references computed (Metric.reference); those held already are read

    @property
    def counts(self) -> PlanCounts:
        """What this executor computed so far."""
        return PlanCounts(dict(self.states), self.evaluations)

    def batch(self, group: Group | None) -> list[EditRecord]:
        return list(self.edits.get(group, [])) if group is not None else []

    def run(self, nodes: Sequence[str] | None = None, root: bool = True) -> Iterator[StateResult]:
        """Walk the plan (after :meth:`Plan.mark_needed`): the base model's pending rows when
        ``root``, then the subtrees under the first-step nodes ``nodes`` (ids; None = all)."""
        top = self.plan.root
        kids = [c for c in top.children.values() if c.needed and (nodes is None or c.id in nodes)]
        scope = ([top] if root else []) + kids
        check_lengths(self.lm, {g: self.batch(g) for g in self.plan.groups(scope)})
        if self.topk > 0:
            check_topk_edit(self.topk_edit, {g: self.batch(g) for g in self.plan.groups(scope)})
        self.unedited = fitting_controls(self.lm, self.unedited, self.ctx)
        if self.ctx.base_model is None and self._needs_base_model(kids):
            import copy

            self.ctx.base_model = copy.deepcopy(self.lm)  # before any step changes it
        held = self.ctx.references
        if self.reference_store is not None:
            self.ctx.references = self.reference_store
        try:
            self.ctx.edits = []
            for m in self.shared_metrics:  # e.g. the facts the unmodified model knows (unlearning)
                m.reference(self.lm, self.ctx)
            self.references += record_references(
                self.lm, self.ctx, self.edit_metrics, [self.batch(g) for g in self.plan.groups(scope)]
            )
            if root and top.pending:
                start = time.perf_counter()
                rows, per_edit = self._evaluate(top, [], 0.0, {}, False, [])
                yield StateResult(top, rows, time.perf_counter() - start, computed=False, per_edit=per_edit)
            yield from self._visit(top, kids, [])
        finally:
            self.store.close()
            self.ctx.references = held
            self.ctx.unedited = []

    def _needs_base_model(self, kids: list[Node]) -> bool:
        seen: set[str] = set()
        for kid in kids:
            for node in kid.walk():
                if node.needed and node.action is not None and node.action.tree_key not in seen:
                    seen.add(node.action.tree_key)
                    if getattr(self.build(node.action), "needs_base_model", False):
                        return True
        return False

    def _visit(self, node: Node, kids: list[Node], instances: list[Intervention]) -> Iterator[StateResult]:
        snap = self.store.save(self.lm) if len(kids) > 1 else None
        for i, child in enumerate(kids):
            if i > 0:
                self.store.restore(self.lm, snap)
                if i == len(kids) - 1:
                    self.store.drop(snap)
                    snap = None
            action = child.action
            assert action is not None
            start = time.perf_counter()
            inst = self.build(action)
            self.ctx.edits = self.batch(child.group)
            with under_variant(self.ctx, action.variant):
                try:
                    report = inst.apply(self.lm, self.ctx)
                except (LMComposeError, MemoryError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a plugin's step may raise anything
                    raise _fail("step", action.name, f"on {child.label}", exc) from exc
                self.states[action.kind] += 1
                elapsed = report.elapsed_s
                if not action.again:
                    elapsed += project_earlier(self.plan.policy, instances, self.lm)
                warnings = step_warnings(action.name, self.lm, report.details)
                rows, per_edit = (
                    self._evaluate(child, [*instances, inst], elapsed, report.details, action.again, warnings)
                    if child.pending
                    else ([], [])
                )
            if self.save is not None:
                self.save.save(child.id, self.lm)
            yield StateResult(child, rows, time.perf_counter() - start, per_edit=per_edit)
            path = instances if action.again else [*instances, inst]
            yield from self._visit(child, [c for c in child.children.values() if c.needed], path)
        if snap is not None:
            self.store.drop(snap)

    def _topk(self, group: Group) -> TopK | None:
        if self.topk <= 0:
            return None
        batch = self.batch(group)
        if not batch:
            return topk_next_tokens(self.lm, TOPK_PROMPT, self.topk, top_logits=TOP_LOGITS)
        chosen = batch[self.topk_edit]
        record = topk_next_tokens(
            self.lm,
            chosen.prompt,
            self.topk,
            targets={"target_new": chosen.target_new, "target_true": chosen.target_true},
            top_logits=TOP_LOGITS,
        )
        record["target_new"] = chosen.target_new
        record["target_true"] = chosen.target_true
        record["edit_index"] = self.topk_edit
        record["case_id"] = chosen.case_id
        return record

    def _evaluate(
        self,
        node: Node,
        shown: list[Intervention],
        elapsed: float,
        details: Mapping[str, object],
        again: bool,
        warnings: list[str],
    ) -> tuple[list[Row], list[PerEditLine | None]]:
        """The rows of ``node``'s pending cells and, beside each, its per-edit line."""
        if not shown:
            where = "on the base model"
        elif again:
            where = f"after re-running {shown[-1].name}"
        else:
            where = f"after {' then '.join(i.name for i in shown)}"
        groups = sorted({c.group for c in node.pending}, key=lambda g: (g[0] or "", g[1]))
        ctx = self.ctx
        ctx.edits = self.batch(groups[0])
        shared = evaluate(self.lm, self.shared_metrics, ctx, where)
        self.evaluations += 1
        per_group: dict[Group, dict[str, object]] = {}
        scores: dict[Group, dict[str, list[float | None]]] = {}
        for g in groups:
            ctx.edits = self.batch(g)
            ctx.unedited = list(self.unedited.get(g, []))
            values: dict[str, object] = {}
            if self.edit_metrics and ctx.edits:
                measured = evaluate_metrics(self.lm, self.edit_metrics, ctx, where)
                values, scores[g] = measured.values, measured.per_edit
                self.evaluations += 1
            values["eval_s"] = _seconds(shared) + _seconds(values)
            tk = self._topk(g)
            if tk is not None:
                values["topk"] = tk
            per_group[g] = values
        last = shown[-1] if shown else None
        shared = {k: x for k, x in shared.items() if k != "eval_s"}
        rows: list[Row] = []
        per_edit: list[PerEditLine | None] = []
        for cell in node.pending:
            values = {**shared, **per_group[cell.group]}
            flags = {**_flags(shared), **_flags(per_group[cell.group])}
            values.pop("nonfinite", None)
            if flags:
                values["nonfinite"] = flags
            if warnings:
                values["warnings"] = list(warnings)
            rows.append(
                make_row(
                    cell,
                    node.depth,
                    last,
                    again,
                    run_id=self.plan.run_id,
                    model=self.lm.name,
                    base_format=self.base_format,
                    policy=self.plan.policy,
                    elapsed=elapsed,
                    details=_scalar_details(details),
                    values=values,
                    shared_by_cells=len(node.cells),
                    edit_ids=[e.case_id for e in self.batch(cell.group)],
                    notes=self.ctx.notes,
                )
            )
            per_edit.append(self.per_edit_line(cell, node, scores[cell.group]) if scores.get(cell.group) else None)
        return rows, per_edit

    def per_edit_line(self, cell: Cell, node: Node, scores: Mapping[str, list[float | None]]) -> PerEditLine:
        """The per_edit.jsonl line of ``cell``'s row at ``node``: keyed as the row is (run id,
        cell, position), with its dataset, replicate and the case id of each edit; edit i is
        (i, ``case_ids[i]``), and ``scores[key][i]`` is its score."""
        return {
            "run_id": self.plan.run_id,
            "cell": cell.id,
            "position": node.depth,
            "dataset": cell.group[0],
            "replicate": cell.replicate,
            "case_ids": [e.case_id for e in self.batch(cell.group)],
            "scores": dict(scores),
        }


def replicate_edits(
    edits: Sequence[EditRecord] | Sequence[Sequence[EditRecord]] | None, replicates: int
) -> list[list[EditRecord]]:
    """``edits`` as one batch per replicate: a flat list split into ``replicates`` disjoint
    equal batches, or already one list per replicate."""
    from lmcompose.errors import UsageError

    if not edits:
        return [[] for _ in range(replicates)]
    if all(isinstance(e, list | tuple) for e in edits):
        if len(edits) != replicates:
            raise UsageError(
                f"{len(edits)} edit batches given for {replicates} replicates; give one batch per replicate"
            )
        return [list(cast("Sequence[EditRecord]", e)) for e in edits]
    flat = cast("Sequence[EditRecord]", edits)
    size = len(edits) // replicates
    if size < 1:
        raise UsageError(
            f"{len(edits)} edits cannot make {replicates} disjoint replicates; give more edits or fewer replicates"
        )
    return [list(flat[r * size : (r + 1) * size]) for r in range(replicates)]
