"""The rows of ``results.jsonl`` and the lines of ``per_edit.jsonl``: their one declared schema.

Every row the executor yields is built here, by :func:`make_row`, and has one of two shapes:

* a **run row** (:class:`RunRow`), written by a cell that varies nothing (``lmcompose run``,
  :func:`lmcompose.compose`): ``strength`` is the strength of the step at this position;
* a **cell row** (:class:`SweepRow`), written by a cell of a grid (a sweep, or a study,
  whose rows add their cell's labels, :class:`StudyRow`): ``strength`` is the cell's varied
  value, the same in every row of the cell, and the step's own strength is in ``step``.

Besides the keys declared here a row holds one key per metric value (``edit_success``,
``perplexity``, ``avg_bits``, …: docs/metrics.md) — whatever the metrics of the run return.
docs/sweeps.md (*The rows of results.jsonl*) describes every declared key; a test checks that
description against these types.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, SupportsFloat, TypedDict, cast

from lmcompose.api import config_to_dict

if TYPE_CHECKING:
    from lmcompose.api import Intervention, StrengthKnob
    from lmcompose.engine.plan import Cell

__all__ = [
    "CELL_KEYS",
    "PerEditLine",
    "ROW_KINDS",
    "RunRow",
    "StepColumn",
    "StudyLabels",
    "StudyRow",
    "SweepRow",
    "TargetToken",
    "TopK",
    "TopLogits",
    "make_row",
    "normalized_strength",
    "row_keys",
    "step_column",
]

#: how many case ids of a cell's edit batch its rows keep (``edit_ids``)
EDIT_IDS_KEPT = 50


#: a value a row keeps from a step's report (``step_details``): scalars only
Scalar = int | float | str | bool | None


class _StepKeys(TypedDict):
    name: str
    kind: str
    config: dict[str, object]


class StepColumn(_StepKeys, total=False):
    """``step``: the step that made this position's model (None at position 0, the base
    model): its name, kind and resolved config; in cell rows also its own ``strength`` and
    ``strength_field``; ``recompress`` (true) on a compressor's re-run under ``recompress``."""

    strength: object
    strength_field: str | None
    recompress: bool


class _TopKKeys(TypedDict):
    prompt: str
    tokens: list[str]
    token_ids: list[int]
    probs: list[float]
    logits: list[float]


class TargetToken(TypedDict):
    """The first token of a target after the prompt, among the next-token logits."""

    text: str
    token_id: int
    token: str
    logit: float
    prob: float
    rank: int


class TopLogits(TypedDict):
    """The highest next-token logits (Figure 3 of the paper draws 30)."""

    token_ids: list[int]
    tokens: list[str]
    logits: list[float]


class TopK(_TopKKeys, total=False):
    """``topk``: the top-k next tokens of one prompt of the cell's batch (docs/sweeps.md)."""

    targets: dict[str, TargetToken | None]
    top_logits: TopLogits
    target_new: str
    target_true: str | None
    edit_index: int
    case_id: str


class _RowKeys(TypedDict):
    run_id: str
    model: str
    base_format: str
    order: list[str]
    replicate: int
    policy: str
    position: int
    step: StepColumn | None
    strength: object
    strength_field: str | None
    strength_normalized: float | None
    elapsed_s: float
    step_details: dict[str, Scalar]
    eval_s: float
    notes: list[str]
    timestamp: float


class _EvaluationKeys(TypedDict, total=False):
    nonfinite: dict[str, str]
    warnings: list[str]


class RunRow(_RowKeys, _EvaluationKeys):
    """One model state of a run: position 0 is the base model, position i the model after
    the i-th step. Metric values are further keys (docs/metrics.md)."""


class _CellKeys(TypedDict):
    sweep: Literal[True]
    cell: str
    last_position: int
    vary: str | None
    shared_by_cells: int
    edit_ids: list[str]


class _TopKKey(TypedDict, total=False):
    topk: TopK


class SweepRow(RunRow, _CellKeys, _TopKKey):
    """One model state of one cell of a grid (order × varied value × replicate)."""


class _StudyLabelKeys(TypedDict):
    study: str
    dataset: str
    entry: str
    editor: str | None
    compressor: str | None
    family: str


class StudyLabels(_StudyLabelKeys, total=False):
    """The constant fields of a study's cell (docs/studies.md); ``noise`` on the noise
    floor's repetitions; ``unlearner`` on the cells of an unlearner's entries."""

    noise: str
    unlearner: str


class StudyRow(SweepRow, StudyLabels):
    """A sweep row with its study cell's labels."""


class PerEditLine(TypedDict):
    """One line of ``per_edit.jsonl``: the per-edit scores of the row with the same key."""

    run_id: str
    cell: str
    position: int
    dataset: str | None
    replicate: int
    case_ids: list[str]
    scores: dict[str, list[float | None]]


class _RowType(Protocol):
    """A row's TypedDict class, as :func:`row_keys` reads it."""

    __required_keys__: frozenset[str]
    __optional_keys__: frozenset[str]


#: the row types by the kind of run folder that writes them
ROW_KINDS: dict[str, _RowType] = {"run": RunRow, "sweep": SweepRow, "study": StudyRow}
#: the keys of a cell row that a run row does not have
CELL_KEYS = frozenset(_CellKeys.__required_keys__) | {"topk"}


def row_keys(kind: str, required: bool = False) -> frozenset[str]:
    """Every declared key of a row written by a run folder of ``kind`` (run, sweep, study);
    ``required``: only those every such row holds."""
    cls = ROW_KINDS[kind]
    keys = set(cls.__required_keys__)
    return frozenset(keys if required else keys | cls.__optional_keys__)


def normalized_strength(knob: StrengthKnob | None, value: object) -> float | None:
    """``value`` of a strength field on its knob's 0-1 scale (None without a knob or a value)."""
    if knob is None or value is None:
        return None
    if not isinstance(value, str | SupportsFloat):
        raise TypeError(f"strength {value!r} of field {knob.field!r} is not a number")
    return knob.normalize(float(value))


def step_column(step: Intervention | None, again: bool, own_strength: bool) -> StepColumn | None:
    """The ``step`` of a row: name, kind and resolved config (``own_strength``: with the
    step's own strength, as cell rows hold it); ``recompress`` on a re-run."""
    if step is None:
        return None
    column: StepColumn = {"name": step.name, "kind": step.kind, "config": config_to_dict(step.config)}
    if own_strength:
        knob = step.strength
        column["strength"] = step.strength_value
        column["strength_field"] = knob.field if knob else None
    if again:
        column["recompress"] = True
    return column


#: where a row's labels (a study cell's) and metric values go in its key order
LABELS, VALUES = "<labels>", "<values>"
#: the key order of a run row and of a cell row (rows are written in this order)
RUN_LAYOUT = (
    *("run_id", "model", "base_format", "order", "replicate", "policy", "position", "step", "strength"),
    *("strength_field", "strength_normalized", "elapsed_s", "step_details", VALUES, "notes", "timestamp"),
)
CELL_LAYOUT = (
    *("run_id", "sweep", "cell", LABELS, "model", "base_format", "order", "replicate", "policy", "position"),
    *("last_position", "vary", "strength", "strength_field", "strength_normalized", "step", "elapsed_s"),
    *("shared_by_cells", "step_details", VALUES, "edit_ids", "notes", "timestamp"),
)


def make_row(
    cell: Cell,
    position: int,
    step: Intervention | None,
    again: bool,
    *,
    run_id: str,
    model: str,
    base_format: str,
    policy: str,
    elapsed: float,
    details: Mapping[str, Scalar],
    values: Mapping[str, object],
    shared_by_cells: int,
    edit_ids: Sequence[str],
    notes: Sequence[str],
) -> RunRow | SweepRow:
    """The row of ``cell`` at ``position`` (``step``: the step that made it, None for the base
    model; ``values``: the metric values, ``eval_s`` and the flags of this evaluation). A cell
    that varies nothing writes a :class:`RunRow` (:data:`RUN_LAYOUT`), a cell of a grid a
    :class:`SweepRow` with its labels (:data:`CELL_LAYOUT`)."""
    of_grid = cell.vary_label is not None
    knob = step.strength if step is not None else None
    own = step.strength_value if step is not None else None
    fields: dict[str, object] = {
        "run_id": run_id,
        "sweep": True,
        "cell": cell.id,
        "model": model,
        "base_format": base_format,
        "order": list(cell.names),
        "replicate": cell.replicate,
        "policy": policy,
        "position": position,
        "last_position": len(cell.actions),
        "vary": cell.vary_label,
        "strength": cell.value if of_grid else own,
        "strength_field": cell.vary_field if of_grid else (knob.field if knob else None),
        "strength_normalized": cell.strength_normalized if of_grid else normalized_strength(knob, own),
        "step": step_column(step, again, own_strength=of_grid),
        "elapsed_s": elapsed,
        "shared_by_cells": shared_by_cells,
        "step_details": dict(details),
        "edit_ids": list(edit_ids)[:EDIT_IDS_KEPT],
        "notes": list(notes),
        "timestamp": time.time(),
    }
    row: dict[str, object] = {}
    for key in CELL_LAYOUT if of_grid else RUN_LAYOUT:
        if key == LABELS:
            row.update(cell.labels)
        elif key == VALUES:
            row.update(values)
        else:
            row[key] = fields[key]
    return cast("SweepRow", row) if of_grid else cast("RunRow", row)
