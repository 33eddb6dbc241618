"""Composability of a sweep (docs/sweeps.md; the paper's Appendix B): A, P, OI and MCE.

Each criterion ℓ is normalized to [0, 1], higher = better, and read on the **final** model
of each cell (after every step of the order, and after recompress re-runs):

* ``edit_success``, ``generalization``, ``locality`` — already in [0, 1] (whatever scorer the
  edit metric used); clipped to [0, 1].
* ``perplexity`` — ``exp(general_nll_base − general_nll)`` = base perplexity / perplexity,
  clipped to [0, 1], where the base is the unmodified model of the same replicate. 1 = no
  loss in language modelling; 0.5 = perplexity doubled; an infinite perplexity gives 0.
* ``forget_accuracy``, ``retain_accuracy`` (the unlearn plugin's four-way questions) — in
  [0, 1] and read in the direction their metric declares (``Metric.higher_is_better``):
  retain accuracy as it is, forget accuracy as ``1 − forget_accuracy`` (lower is better),
  so MCE = 1 − max over orders of ℓ is the lower order's forget accuracy and OI the two
  orders' difference: the ICLR paper's E_OF and E_OS for WMDP.

The x-axis (``x=``) is one declared scale:

* ``compression`` (the default): ``x = 1 − avg_bits / base_bits`` of the final model at each
  strength (mean over orders and replicates), with ``base_bits`` the unmodified model's
  average bits (16): 0 is the uncompressed model, and every compressor — pruning or
  quantization, on any grid — sits on the same absolute scale, so A and P compare across
  methods;
* ``strength``: the varied field's normalized strength (its knob's range mapped to [0, 1]),
  min–max rescaled over the sweep's own grid (the only axis when average bits do not change,
  e.g. a varied edit count);
* ``avg_bits``: average bits rescaled over the sweep's own grid (0 = most bits, 1 = fewest);
* ``paper``: raw average bits, as the paper's notebook integrates (``np.trapz(|y1 − y2|, x)``
  with x = average bits), so its Table 1 magnitudes (above 1) can be reproduced.

Over the x values and the set of orders O, with the trapezoid rule:

* ``A = ∫ (max_o ℓ_o − min_o ℓ_o) dx`` (for two orders, ∫ |ℓ(A→B) − ℓ(B→A)| dx) — how much
  the order matters (0 = not at all);
* ``P = ∫ (1 − max_o ℓ_o) dx`` — what even the better order loses (0 = nothing); on an axis
  spanning [0, 1] this is the paper's ``1 − ∫ max_o ℓ_o dx``;
* per strength, ``OI = max_o ℓ_o − min_o ℓ_o`` and ``MCE = 1 − max_o ℓ_o``.

A and P are in units of x: at most the interval's width. ``P ÷ width``
(:meth:`Composability.P_normalized`, :func:`per_width`) is P on the paper's [0, 1] scale
(its Appendix B integrates over a strength γ in [0, 1]); the reports print it beside the raw
area. Every result records the interval integrated over. A and P need two strengths: a grid of
one gives OI and MCE only (never reported as A and P). :func:`common_interval` compares
methods on different grids: each method's curves are interpolated linearly onto the interval
where all of them have data, and A and P are integrated there. A and P are computed per
replicate, then reported as the mean and the sample standard deviation over replicates (0
with one replicate); likewise OI and MCE.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar

from lmcompose.api._values import number_or_none, to_float, to_int
from lmcompose.errors import DataError

#: A row of results.jsonl as read back (JSON data: its declared keys are
#: :mod:`lmcompose.engine.schema`'s, plus one key per metric value).
Row = Mapping[str, object]
#: A cell of a sweep: (order, varied value, replicate).
CellKey = tuple[tuple[str, ...], Hashable, int]
K = TypeVar("K", bound=Hashable)

CRITERIA = ("edit_success", "generalization", "locality", "perplexity", "forget_accuracy", "retain_accuracy")
X_AXES = ("compression", "strength", "avg_bits", "paper")
DEFAULT_AXIS = "compression"
AXIS_LABELS = {
    "compression": "compression x = 1 − avg_bits / base_bits (0 = uncompressed)",
    "strength": "normalized strength, rescaled over the sweep's grid (0 = weakest)",
    "avg_bits": "average bits, rescaled over the sweep's grid (0 = most bits, 1 = fewest)",
    "paper": "average bits per weight (raw, as the paper's notebook)",
}


def trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    """∫ y dx by the trapezoid rule (x ascending); one point gives y[0] (a unit-width grid)."""
    if len(x) != len(y) or not x:
        raise ValueError("x and y must be non-empty and of equal length")
    if len(x) == 1:
        return float(y[0])
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


class AreaMetrics(TypedDict):
    """What :func:`area_metrics` returns: A and P (None with one point), OI and MCE per x."""

    A: float | None
    P: float | None
    OI: list[float]
    MCE: list[float]


def area_metrics(x: Sequence[float], curves: Mapping[tuple[str, ...], Sequence[float]]) -> AreaMetrics:
    """A, P, and per-point OI and MCE for criterion curves ``{order: [ℓ at each x]}``.

    ``x`` must be ascending; every curve has one value per x. With one point, A and P are
    None (an area needs an interval) and only OI and MCE are given."""
    if not curves:
        raise ValueError("no curves")
    cols = list(zip(*curves.values(), strict=True))
    hi = [max(c) for c in cols]
    lo = [min(c) for c in cols]
    oi = [h - low for h, low in zip(hi, lo, strict=True)]
    mce = [1.0 - h for h in hi]
    if len(x) < 2:
        return {"A": None, "P": None, "OI": oi, "MCE": mce}
    return {"A": trapezoid(x, oi), "P": trapezoid(x, mce), "OI": oi, "MCE": mce}


def segment(x: Sequence[float], at: float) -> tuple[int, float | None]:
    """Where ``at`` falls on the ascending grid ``x``: (i, t) for y[i] + t (y[i+1] − y[i]),
    or (i, None) for y[i] itself (``at`` at or beyond an end)."""
    if at <= x[0]:
        return 0, None
    for i in range(len(x) - 1):
        if at <= x[i + 1]:
            return i, ((at - x[i]) / (x[i + 1] - x[i]) if x[i + 1] > x[i] else 0.0)
    return len(x) - 1, None


def interpolate(x: Sequence[float], y: Sequence[float], at: float) -> float:
    """y at ``at`` on the piecewise-linear curve through (x, y) (x ascending, ``at`` inside)."""
    i, t = segment(x, at)
    return float(y[i]) if t is None else float(y[i] + t * (y[i + 1] - y[i]))


def higher_is_better(key: str) -> bool:
    """The direction of result key ``key`` as the registered metric that returns it declares
    (``Metric.higher_is_better``); True when no metric declares it lower-is-better."""
    from lmcompose.plugins import get_metrics

    registry = get_metrics()
    for name in registry.names():
        try:
            cls = registry.get(name)
        except Exception:  # noqa: BLE001 - a plugin that fails to import declares nothing
            continue
        if key in getattr(cls, "keys", ()):
            return (getattr(cls, "higher_is_better", {}) or {}).get(key) is not False
    return True


def nonfinite_flags(row: Row) -> Mapping[str, object]:
    """The row's ``nonfinite`` flags (metric key -> ``nan``, ``inf`` or ``-inf``); empty when none."""
    flags = row.get("nonfinite") or {}
    if not isinstance(flags, Mapping):
        raise DataError(f"a row's nonfinite field is {flags!r}, not a mapping of metric key to nan/inf/-inf")
    return flags


def normalized_criterion(name: str, row: Row, base: Row | None) -> float | None:
    """Criterion ``name`` of ``row`` in [0, 1], higher = better (None when not measured): a
    value in [0, 1] whose metric declares lower-is-better enters as 1 − value."""
    if name == "perplexity":
        if base is None:
            return None
        nll, nll0 = number_or_none(row.get("general_nll")), number_or_none(base.get("general_nll"))
        if nll0 is not None and "general_nll" in row:
            if nll is None:  # not finite when written (JSON has no inf): infinite is the worst, NaN is unknown
                return None if nonfinite_flags(row).get("general_nll") == "nan" else 0.0
            return math.exp(min(0.0, nll0 - nll))
        ppl, ppl0 = number_or_none(row.get("perplexity")), number_or_none(base.get("perplexity"))
        if ppl0 is None or ppl is None:
            return None
        return min(1.0, max(0.0, ppl0 / ppl)) if ppl > 0 else None
    value = number_or_none(row.get(name))
    if value is None:
        return None
    v = min(1.0, max(0.0, value))
    return v if higher_is_better(name) else 1.0 - v


def per_width(area: float | None, interval: tuple[float, float]) -> float | None:
    """An area (or its spread, or an end of its interval) over ``interval`` ÷ the interval's
    width: the integrand's mean height. For P this is the paper's definition (Appendix B:
    ``P = 1 − ∫ max_o ℓ_o dγ`` with the strength γ spanning [0, 1]) on the interval rescaled
    to [0, 1], so it lies in [0, 1] whatever axis and grid the area was integrated on:
    P = 0.37 over compression x in [0.234, 0.703] is 0.37 / 0.469 = 0.79, the better order
    losing 79% of the criterion on average over that interval. None for a zero-width
    interval (one strength: no area)."""
    lo, hi = interval
    if area is None or hi - lo <= 0:
        return None
    return area / (hi - lo)


def _mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    return _spread(xs) if xs else (None, None)


def _spread(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value) of values ``xs`` (at least one)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


@dataclass
class CriterionResult:
    criterion: str
    A: list[float] = field(default_factory=list)  # one per replicate used (empty with one strength)
    P: list[float] = field(default_factory=list)
    OI: list[list[float]] = field(default_factory=list)  # per replicate, per strength
    MCE: list[list[float]] = field(default_factory=list)
    replicates: list[int] = field(default_factory=list)
    curves: dict[int, dict[tuple[str, ...], list[float]]] = field(default_factory=dict)  # replicate -> order -> ℓ at x

    @property
    def A_mean(self) -> float | None:
        return _mean_std(self.A)[0]

    @property
    def A_std(self) -> float | None:
        return _mean_std(self.A)[1]

    @property
    def P_mean(self) -> float | None:
        return _mean_std(self.P)[0]

    @property
    def P_std(self) -> float | None:
        return _mean_std(self.P)[1]

    def per_strength(self, j: int, what: str) -> tuple[float | None, float | None]:
        """Mean and std over replicates of ``what`` (``OI`` or ``MCE``) at strength ``j``."""
        per_replicate = {"OI": self.OI, "MCE": self.MCE}[what]
        return _mean_std([r[j] for r in per_replicate])


@dataclass
class SweepData:
    """The sweep rows of one run folder, indexed: cells, final rows, base rows."""

    rows: list[dict[str, object]]
    run_id: str
    vary: str
    orders: list[tuple[str, ...]]
    values: list[Hashable]  # sorted by normalized strength (weakest first)
    replicates: list[int]
    final: dict[CellKey, dict[str, object]]
    base: dict[int, dict[str, object]]
    by_cell: dict[CellKey, list[dict[str, object]]]
    model: str = ""
    policy: str = ""
    notes: list[str] = field(default_factory=list)  # lines skipped, conflicting duplicates, NaN metrics

    @property
    def complete(self) -> bool:
        return all((o, v, r) in self.final for o in self.orders for v in self.values for r in self.replicates)


def _text(value: object) -> str:
    """A row's label (``vary``, ``model``, ``policy``); "" where it has none."""
    return value if isinstance(value, str) else ""


def row_order(row: Row) -> tuple[str, ...]:
    """The row's ``order`` (its steps' names) as a tuple."""
    order = row["order"]
    if not isinstance(order, list | tuple) or not all(isinstance(name, str) for name in order):
        raise DataError(f"a row's order is {order!r}, not a list of step names")
    return tuple(order)


def row_position(row: Row) -> int:
    """The row's ``position`` (0 = the base model)."""
    position = row["position"]
    if not isinstance(position, int):
        raise DataError(f"a row's position is {position!r}, not a whole number")
    return position


def row_step(row: Row) -> Mapping[str, object] | None:
    """The row's ``step`` column (name, kind, config, ...); None for the base model."""
    step = row.get("step")
    if step is None or isinstance(step, Mapping):
        return step or None
    raise DataError(f"a row's step is {step!r}, not a mapping of the step's name, kind and config")


def measured(rows: Iterable[Row], key: str) -> list[float]:
    """``key`` of each of ``rows`` that measured it (not None)."""
    values = (number_or_none(r.get(key)) for r in rows)
    return [v for v in values if v is not None]


def row_strength(row: Row) -> Hashable:
    """The row's ``strength`` as a dict key (a list, e.g. ``[2, 4]``, becomes a tuple)."""
    return _hashable(row["strength"])


def load_sweep(source: str | Path | Sequence[Row]) -> SweepData:
    """Sweep rows from a run folder, a results.jsonl path, or a list of rows."""
    from lmcompose.results import RESULTS_FILE, read_rows_checked

    notes: list[str] = []
    rows: list[dict[str, object]]
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            path = path / RESULTS_FILE
        if not path.exists():
            raise DataError(f"{path} does not exist: give a sweep's run folder (the one holding results.jsonl)")
        rows, notes = read_rows_checked(path)
        where = str(path)
    else:
        from lmcompose.results import flag_nonfinite, nonfinite_note

        rows = [dict(r) for r in source]
        where = "the rows given"
        for i, r in enumerate(rows):
            flagged = flag_nonfinite(r)
            if flagged:
                notes.append(nonfinite_note(f"row {i}", flagged))
    rows = [r for r in rows if r.get("sweep")]
    if not rows:
        raise DataError(f"{where} holds no sweep rows: `lmcompose report` needs the folder of an `lmcompose sweep`")
    ids = list(dict.fromkeys(str(r["run_id"]) for r in rows))
    if len(ids) > 1:
        raise DataError(f"{where} mixes sweeps {', '.join(ids)}; keep one sweep per folder")
    orders = list(dict.fromkeys(row_order(r) for r in rows))
    raw_values = list(dict.fromkeys(row_strength(r) for r in rows))
    norm: dict[Hashable, float | None] = {}
    for r in rows:
        norm[row_strength(r)] = number_or_none(r.get("strength_normalized"))

    def weakest_first(v: Hashable) -> float:
        n = norm[v]
        return n if n is not None else _as_float(v)

    values = sorted(raw_values, key=weakest_first)
    replicates = sorted({to_int(r["replicate"]) for r in rows})
    by_cell: dict[CellKey, list[dict[str, object]]] = {}
    seen: dict[tuple[object, object], dict[str, object]] = {}
    for r in rows:
        key = (r["cell"], r["position"])
        if key in seen:  # a duplicate can only come from copying files by hand; keep the first
            if row_numbers(seen[key]) != row_numbers(r):
                notes.append(f"cell {key[0]} position {key[1]} has two rows that disagree; the first is used")
            continue
        seen[key] = r
        nan = sorted(k for k, v in nonfinite_flags(r).items() if v == "nan")
        if nan:
            notes.append(f"cell {key[0]} position {key[1]}: {', '.join(nan)} NaN (flagged, not averaged in)")
        by_cell.setdefault((row_order(r), row_strength(r), to_int(r["replicate"])), []).append(r)
    final: dict[CellKey, dict[str, object]] = {}
    base: dict[int, dict[str, object]] = {}
    for cell, cell_rows in by_cell.items():
        cell_rows.sort(key=row_position)
        last = cell_rows[-1]
        if last["position"] == last.get("last_position", last["position"]):
            final[cell] = last
        if cell_rows[0]["position"] == 0:
            base.setdefault(cell[2], cell_rows[0])
    return SweepData(
        rows,
        ids[0],
        _text(rows[0].get("vary", "")),
        orders,
        values,
        replicates,
        final,
        base,
        by_cell,
        _text(rows[0].get("model", "")),
        _text(rows[0].get("policy", "")),
        notes,
    )


_NOT_NUMBERS = frozenset({"timestamp", "notes", "shared_by_cells", "seconds", "elapsed", "cached"})


def _bookkeeping(key: object) -> bool:
    """Whether a row field (at any depth) records how or when a number was computed rather
    than a number: a duration (``*_s``: eval_s, MEMIT's stats_s/vstar_s/update_s; seconds,
    elapsed), whether a cache served it (``*cached``), when (``*timestamp*``), the notes
    printed, how many cells shared the state. Two computations of the same numbers differ
    in exactly these."""
    return isinstance(key, str) and (
        key in _NOT_NUMBERS or key.endswith(("_s", "cached")) or "timestamp" in key or "elapsed" in key
    )


def _numbers(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: _numbers(v) for k, v in value.items() if not _bookkeeping(k)}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def row_numbers(row: Row) -> dict[str, object]:
    """A row without the fields that differ between two computations of the same numbers
    (:func:`_bookkeeping`, at every depth: ``step_details`` holds a step's own timings)."""
    return {k: _numbers(v) for k, v in row.items() if not _bookkeeping(k)}


def _hashable(v: object) -> Hashable:
    if isinstance(v, list):
        return tuple(v)
    if not isinstance(v, Hashable):
        raise DataError(f"a row's strength is {v!r}: give a number, a string or a list")
    return v


def _as_float(v: object) -> float:
    try:
        return to_float(v)
    except (TypeError, ValueError):
        return 0.0


@dataclass
class Composability:
    """A, P (per replicate, mean, spread) and per-strength OI and MCE for each criterion, on
    axis ``x_axis`` over ``interval``; ``single`` when the grid has one strength (no A, P)."""

    x_axis: str
    values: list[Hashable]
    x: list[float]
    orders: list[tuple[str, ...]]
    criteria: dict[str, CriterionResult]
    curves: dict[str, dict[tuple[str, ...], list[tuple[float, float]]]]  # mean, std per x
    notes: list[str] = field(default_factory=list)
    interval: tuple[float, float] = (0.0, 0.0)

    @property
    def single(self) -> bool:
        return len(self.x) < 2

    @property
    def width(self) -> float:
        """The width of the x interval A and P are integrated over."""
        return self.interval[1] - self.interval[0]

    def P_normalized(self, criterion: str) -> tuple[float | None, float | None]:
        """P of ``criterion`` ÷ the interval's width, mean and sample std over replicates
        (:func:`per_width`): the paper's P on [0, 1]."""
        c = self.criteria.get(criterion)
        if c is None:
            return None, None
        return per_width(c.P_mean, self.interval), per_width(c.P_std, self.interval)

    def as_dict(self) -> dict[str, object]:
        criteria: dict[str, dict[str, object]] = {}
        out: dict[str, object] = {
            "x_axis": self.x_axis,
            "interval": list(self.interval),
            "width": self.width,
            "values": self.values,
            "x": self.x,
            "orders": [list(o) for o in self.orders],
            "criteria": criteria,
            "notes": self.notes,
        }
        for name, c in self.criteria.items():
            criteria[name] = {
                "A": c.A_mean,
                "A_std": c.A_std,
                "P": c.P_mean,
                "P_std": c.P_std,
                "P_normalized": self.P_normalized(name)[0],
                "P_normalized_std": self.P_normalized(name)[1],
                "A_per_replicate": c.A,
                "P_per_replicate": c.P,
                "replicates": c.replicates,
                "OI": [c.per_strength(j, "OI")[0] for j in range(len(self.x))],
                "OI_std": [c.per_strength(j, "OI")[1] for j in range(len(self.x))],
                "MCE": [c.per_strength(j, "MCE")[0] for j in range(len(self.x))],
                "MCE_std": [c.per_strength(j, "MCE")[1] for j in range(len(self.x))],
            }
        return out


def _final_bits(data: SweepData) -> list[float] | None:
    """Mean average bits of the final models at each value (None if any is missing)."""
    bits = []
    for v in data.values:
        measured = [number_or_none(row.get("avg_bits")) for (o, val, _r), row in data.final.items() if val == v]
        got = [b for b in measured if b is not None]
        if not got:
            return None
        bits.append(statistics.fmean(got))
    return bits


def x_positions(data: SweepData, x_axis: str = DEFAULT_AXIS) -> list[float] | None:
    """x of each of ``data.values`` on ``x_axis`` (None when the axis is not available)."""
    if x_axis not in X_AXES:
        raise DataError(f"x axis {x_axis!r} is not one of {', '.join(X_AXES)}")
    if x_axis == "strength":
        raw = []
        for v in data.values:
            n = next((r.get("strength_normalized") for r in data.rows if row_strength(r) == v), None)
            raw.append(to_float(n) if n is not None else _as_float(v))
        lo, hi = min(raw), max(raw)
        return [(r - lo) / (hi - lo) if hi > lo else 0.0 for r in raw]
    bits = _final_bits(data)
    if bits is None:
        return None
    lo, hi = min(bits), max(bits)
    flat = hi - lo < 1e-9
    if flat and len(bits) > 1:  # every strength has the same bits: no axis
        return None
    if x_axis == "paper":
        return bits
    if x_axis == "compression":
        base = [b for b in (number_or_none(r.get("avg_bits")) for r in data.base.values()) if b is not None]
        if not base:
            return None
        b0 = statistics.fmean(base)
        return [1.0 - b / b0 for b in bits]
    return None if flat else [(hi - b) / (hi - lo) for b in bits]  # avg_bits: rescaled over the grid


def available_axes(data: SweepData) -> list[str]:
    """The axes a sweep's rows support: compression (when average bits change) and strength."""
    return [a for a in ("compression", "strength") if x_positions(data, a) is not None]


def composability(
    source: str | Path | Sequence[Row] | SweepData,
    x: str | None = None,
    criteria: Sequence[str] = CRITERIA,
) -> Composability:
    """A, P, OI and MCE of a sweep (a run folder, a results.jsonl, rows, or loaded data) on
    axis ``x`` (default: compression when the sweep's average bits change, else strength)."""
    data = source if isinstance(source, SweepData) else load_sweep(source)
    notes: list[str] = []
    if x is None:
        x = DEFAULT_AXIS if x_positions(data, DEFAULT_AXIS) is not None else "strength"
        if x != DEFAULT_AXIS:
            notes.append("average bits do not change over this sweep's strengths: x is the normalized strength")
    xs = x_positions(data, x)
    if xs is None:
        raise DataError(
            f"x axis {x!r} is not available for this sweep: average bits do not change over its strengths "
            "(or were not measured: add the avg_bits metric)"
        )
    pts = sorted(range(len(data.values)), key=lambda j: xs[j])
    values = [data.values[j] for j in pts]
    xv = [xs[j] for j in pts]
    if len(values) == 1:
        notes.append("one strength only: OI and MCE at that strength; A and P need two strengths or more")
    result: dict[str, CriterionResult] = {}
    curves: dict[str, dict[tuple[str, ...], list[tuple[float, float]]]] = {}
    for name in criteria:
        cr = CriterionResult(name)
        for r in data.replicates:
            base = data.base.get(r)
            cur: dict[tuple[str, ...], list[float]] = {}
            ok = True
            for o in data.orders:
                ys = []
                for v in values:
                    row = data.final.get((o, v, r))
                    y = normalized_criterion(name, row, base) if row is not None else None
                    if y is None:
                        ok = False
                        break
                    ys.append(y)
                if not ok:
                    break
                cur[o] = ys
            if not ok:
                continue
            _add_replicate(cr, r, xv, cur)
        if not cr.replicates:
            continue
        missing = [r for r in data.replicates if r not in cr.replicates]
        if missing:
            notes.append(f"{name}: replicate(s) {missing} incomplete, left out")
        result[name] = cr
        curves[name] = _mean_curves(cr, data.orders, len(values))
    return Composability(x, values, xv, data.orders, result, curves, notes, (xv[0], xv[-1]))


def _add_replicate(cr: CriterionResult, r: int, x: Sequence[float], cur: dict[tuple[str, ...], list[float]]) -> None:
    m = area_metrics(x, cur)
    if m["A"] is not None and m["P"] is not None:  # both, or neither (one strength)
        cr.A.append(m["A"])
        cr.P.append(m["P"])
    cr.OI.append(m["OI"])
    cr.MCE.append(m["MCE"])
    cr.replicates.append(r)
    cr.curves[r] = cur


def _mean_curves(
    cr: CriterionResult, orders: Sequence[tuple[str, ...]], n: int
) -> dict[tuple[str, ...], list[tuple[float, float]]]:
    # every criterion kept has a replicate (composability() leaves out one without)
    return {o: [_spread([cr.curves[r][o][j] for r in cr.replicates]) for j in range(n)] for o in orders}


def common_interval(comps: Mapping[K, Composability]) -> tuple[dict[K, Composability], tuple[float, float] | None]:
    """The same A and P, each method on the interval where every one of ``comps`` (methods on
    one axis, e.g. the compressors of a study on one dataset) has data: each replicate's
    curves are interpolated linearly onto the union of the methods' x values inside it.
    Returns the new results and the interval (None when the methods' intervals do not
    overlap, or a method has one strength)."""
    usable = {k: c for k, c in comps.items() if not c.single}
    if len(usable) < 2 or len({c.x_axis for c in usable.values()}) != 1:
        return {}, None
    lo = max(c.interval[0] for c in usable.values())
    hi = min(c.interval[1] for c in usable.values())
    if hi - lo <= 1e-12:
        return {}, None
    grid = sorted({lo, hi, *(x for c in usable.values() for x in c.x if lo < x < hi)})
    out: dict[K, Composability] = {}
    for key, c in usable.items():
        criteria: dict[str, CriterionResult] = {}
        curves = {}
        for name, cr in c.criteria.items():
            new = CriterionResult(name)
            for r in cr.replicates:
                cur = {o: [interpolate(c.x, ys, g) for g in grid] for o, ys in cr.curves[r].items()}
                _add_replicate(new, r, grid, cur)
            criteria[name] = new
            curves[name] = _mean_curves(new, c.orders, len(grid))
        out[key] = Composability(
            c.x_axis,
            [],
            grid,
            c.orders,
            criteria,
            curves,
            [f"interpolated onto the common interval [{lo:.4g}, {hi:.4g}]"],
            (lo, hi),
        )
    return out, (lo, hi)
